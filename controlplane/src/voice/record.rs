//! `<Record>`'s audio: G.711 payloads from the dataplane's recording tap placed by RTP
//! timestamp (reordered packets land where they belong, lost ones leave silence), speech
//! detection for the silence timeout, trimming, and the WAV file.

use voxedge_dataplane::g711::Law;
use voxedge_dataplane::recorder::RecFrame;

use super::audio::RATE;

/// RMS level of a 20 ms frame above which the caller is taken to be speaking (about −40 dBFS).
pub const SPEECH_RMS: f64 = 330.0;
/// Samples per RMS window.
const WINDOW: usize = 160;

/// Audio of one recording as it arrives.
#[derive(Debug)]
pub struct Capture {
    samples: Vec<i16>,
    base_ts: Option<u32>,
    max_samples: usize,
    /// Samples of speech heard so far.
    pub speech_samples: usize,
    /// Frames not placed: another payload type, or beyond the length limit.
    pub ignored: u64,
}

impl Capture {
    /// A capture of at most `max_secs` seconds.
    pub fn new(max_secs: u32) -> Capture {
        Capture {
            samples: Vec::new(),
            base_ts: None,
            max_samples: max_secs as usize * RATE as usize,
            speech_samples: 0,
            ignored: 0,
        }
    }

    /// Places one frame of a stream that began `elapsed_samples` after the recording did
    /// (only the first frame's arrival anchors the stream; later ones go by timestamp), so two
    /// legs recorded together line up.
    pub fn push_at(&mut self, f: &RecFrame, elapsed_samples: usize) -> bool {
        if self.base_ts.is_none() && matches!(f.payload_type, 0 | 8) {
            let lead = u32::try_from(elapsed_samples.min(self.max_samples)).unwrap_or(0);
            self.base_ts = Some(f.ts.wrapping_sub(lead));
        }
        self.push(f)
    }

    /// Places one frame; true when it held speech.
    pub fn push(&mut self, f: &RecFrame) -> bool {
        let Some(law) = Law::from_payload_type(f.payload_type) else {
            self.ignored += 1;
            return false;
        };
        let base = *self.base_ts.get_or_insert(f.ts);
        let offset = f.ts.wrapping_sub(base);
        // A timestamp before the first frame (reordering at the start) or absurdly far ahead.
        if offset > u32::MAX / 2 || offset as usize >= self.max_samples {
            self.ignored += 1;
            return false;
        }
        let at = offset as usize;
        let payload = f.payload();
        let end = (at + payload.len()).min(self.max_samples);
        if self.samples.len() < end {
            self.samples.resize(end, 0);
        }
        let mut energy = 0f64;
        for (slot, b) in self.samples[at..end].iter_mut().zip(payload) {
            *slot = law.decode(*b);
            energy += f64::from(*slot) * f64::from(*slot);
        }
        let n = end - at;
        let speech = n > 0 && (energy / n as f64).sqrt() >= SPEECH_RMS;
        if speech {
            self.speech_samples += n;
        }
        speech
    }

    /// Seconds held so far.
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(RATE)
    }

    /// Whether the length limit is reached.
    pub fn full(&self) -> bool {
        self.samples.len() >= self.max_samples
    }

    /// The audio, with leading and trailing silence removed when `trim` (a 20 ms window is
    /// silence below [`SPEECH_RMS`]). Empty when nothing but silence was heard.
    pub fn finish(self, trim: bool) -> Vec<i16> {
        let mut s = self.samples;
        if self.speech_samples == 0 {
            return Vec::new();
        }
        if trim {
            let (first, end) = speech_bounds(&s);
            s.truncate(end);
            s.drain(..first);
        }
        s
    }
}

/// The sample range from the first to the end of the last 20 ms window with speech.
fn speech_bounds(s: &[i16]) -> (usize, usize) {
    let loud = |w: &[i16]| {
        let e: f64 = w.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
        (e / w.len().max(1) as f64).sqrt() >= SPEECH_RMS
    };
    let windows: Vec<bool> = s.chunks(WINDOW).map(loud).collect();
    let first = windows.iter().position(|l| *l).unwrap_or(0);
    let last = windows.iter().rposition(|l| *l).unwrap_or(0);
    (first * WINDOW, ((last + 1) * WINDOW).min(s.len()))
}

/// A bridged call's two legs as one recording: mixed to mono, or `dual` (interleaved stereo,
/// the caller first); trimmed on the mix. Returns the samples and the channel count; empty
/// when neither leg said anything.
pub fn mix(a: Capture, b: Capture, dual: bool, trim: bool) -> (Vec<i16>, u16) {
    let speech = a.speech_samples + b.speech_samples;
    let (mut a, mut b) = (a.samples, b.samples);
    if speech == 0 {
        return (Vec::new(), if dual { 2 } else { 1 });
    }
    let n = a.len().max(b.len());
    a.resize(n, 0);
    b.resize(n, 0);
    let mono: Vec<i16> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| x.saturating_add(*y))
        .collect();
    let (first, end) = if trim { speech_bounds(&mono) } else { (0, n) };
    if dual {
        let mut out = Vec::with_capacity((end - first) * 2);
        for i in first..end {
            out.push(a[i]);
            out.push(b[i]);
        }
        (out, 2)
    } else {
        (mono[first..end].to_vec(), 1)
    }
}

/// A RIFF/WAVE file: 16-bit PCM, mono, `rate` Hz.
pub fn wav(samples: &[i16], rate: u32) -> Vec<u8> {
    wav_channels(samples, rate, 1)
}

/// A RIFF/WAVE file: 16-bit PCM, `channels` interleaved, `rate` Hz.
pub fn wav_channels(samples: &[i16], rate: u32, channels: u16) -> Vec<u8> {
    let data = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX - 36);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(&wav_header(data, rate, channels));
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// The 44-byte header of a 16-bit PCM RIFF/WAVE file of `data_bytes` of audio, `channels`
/// interleaved at `rate` Hz.
pub fn wav_header(data_bytes: u32, rate: u32, channels: u16) -> [u8; 44] {
    let channels = channels.max(1);
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_bytes.saturating_add(36).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&rate.to_le_bytes());
    h[28..32].copy_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
    h[32..34].copy_from_slice(&(2 * channels).to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::audio::{decode_wav, ulaw};

    fn frame(ts: u32, pt: u8, level: i16) -> RecFrame {
        let mut data = [0u8; 160];
        for (i, b) in data.iter_mut().enumerate() {
            let v = if i % 2 == 0 { level } else { -level };
            *b = if pt == 0 {
                ulaw(v)
            } else {
                crate::voice::audio::alaw(v)
            };
        }
        RecFrame::new(0, ts, pt, &data).expect("160 bytes fit")
    }

    #[test]
    fn frames_land_by_timestamp_and_silence_is_trimmed() {
        let mut c = Capture::new(10);
        assert!(!c.push(&frame(1000, 0, 0)), "silence");
        // Reordered: the third frame before the second; a lost fourth.
        assert!(c.push(&frame(1000 + 320, 0, 8000)));
        assert!(c.push(&frame(1000 + 160, 8, 8000)));
        assert!(c.push(&frame(1000 + 640, 0, 8000)));
        assert!(!c.push(&frame(1000 + 800, 0, 0)));
        assert!(
            !c.push(&frame(1000 + 960, 101, 0)),
            "other payload types ignored"
        );
        assert_eq!(c.ignored, 1);
        assert!(!c.push(&frame(500, 0, 8000)), "before the first frame");
        assert_eq!(c.seconds(), 960.0 / 8000.0);
        let untrimmed = Capture {
            samples: c.samples.clone(),
            base_ts: c.base_ts,
            max_samples: c.max_samples,
            speech_samples: c.speech_samples,
            ignored: 0,
        }
        .finish(false);
        assert_eq!(untrimmed.len(), 960);
        let trimmed = c.finish(true);
        // Leading silent frame and trailing silent frame gone; the lost frame stays (silence
        // inside speech).
        assert_eq!(trimmed.len(), 640);
        assert!(trimmed[..160].iter().all(|v| v.abs() > 7000));
        assert!(
            trimmed[320..480].iter().all(|v| *v == 0),
            "lost frame is silence"
        );
    }

    #[test]
    fn only_silence_is_nothing_and_the_limit_holds() {
        let mut c = Capture::new(1);
        for i in 0..100 {
            c.push(&frame(i * 160, 0, 0));
        }
        assert!(c.full());
        assert_eq!(c.seconds(), 1.0);
        assert!(c.finish(true).is_empty());
        // Wrapping timestamps keep counting.
        let mut c = Capture::new(1);
        c.push(&frame(u32::MAX - 159, 0, 8000));
        c.push(&frame(0, 0, 8000));
        assert_eq!(c.seconds(), 320.0 / 8000.0);
    }

    #[test]
    fn two_legs_line_up_by_arrival_and_mix() {
        // The caller from the start; the callee's first frame arrives 40 ms in.
        let mut a = Capture::new(10);
        let mut b = Capture::new(10);
        a.push_at(&frame(5000, 0, 4000), 0);
        a.push_at(&frame(5160, 0, 4000), 160);
        b.push_at(&frame(90_000, 8, 3000), 320);
        b.push_at(&frame(90_160, 8, 3000), 480);
        let (mono, ch) = mix(a_clone(&a), a_clone(&b), false, false);
        assert_eq!((ch, mono.len()), (1, 640));
        assert!(
            mono[..320].iter().all(|v| (3500..4500).contains(&v.abs())),
            "caller alone"
        );
        assert!(
            mono[320..].iter().all(|v| (2500..3500).contains(&v.abs())),
            "then the callee, 40 ms in"
        );
        let (dual, ch) = mix(a, b, true, false);
        assert_eq!((ch, dual.len()), (2, 1280));
        assert!(
            dual[640].abs() < 10 && dual[641].abs() > 2500,
            "callee on channel 2"
        );
        // Nothing said on either leg: nothing.
        let (none, _) = mix(Capture::new(1), Capture::new(1), true, true);
        assert!(none.is_empty());
    }

    fn a_clone(c: &Capture) -> Capture {
        Capture {
            samples: c.samples.clone(),
            base_ts: c.base_ts,
            max_samples: c.max_samples,
            speech_samples: c.speech_samples,
            ignored: c.ignored,
        }
    }

    #[test]
    fn wav_round_trips() {
        let s: Vec<i16> = (0..800).map(|i| (i * 40 - 16000) as i16).collect();
        let p = decode_wav(&wav(&s, 8000)).expect("valid");
        assert_eq!((p.rate, p.samples), (8000, s.clone()));
        // Stereo: mixed down by the reader, the header says two channels.
        let st = wav_channels(&s, 8000, 2);
        assert_eq!(u16::from_le_bytes([st[22], st[23]]), 2);
        assert_eq!(decode_wav(&st).expect("valid").samples.len(), 400);
    }
}
