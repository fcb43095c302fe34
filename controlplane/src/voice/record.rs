//! `<Record>`'s audio: G.711 payloads from the dataplane's recording tap placed by RTP
//! timestamp (reordered packets land where they belong, lost ones leave silence), speech
//! detection for the silence timeout, trimming, and the WAV file.

use voxedge_dataplane::recorder::RecFrame;

use super::audio::{alaw_decode, ulaw_decode, RATE};

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

    /// Places one frame; true when it held speech.
    pub fn push(&mut self, f: &RecFrame) -> bool {
        let decode: fn(u8) -> i16 = match f.payload_type {
            0 => ulaw_decode,
            8 => alaw_decode,
            _ => {
                self.ignored += 1;
                return false;
            }
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
            *slot = decode(*b);
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
            let loud = |w: &[i16]| {
                let e: f64 = w.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
                (e / w.len().max(1) as f64).sqrt() >= SPEECH_RMS
            };
            let windows: Vec<bool> = s.chunks(WINDOW).map(loud).collect();
            let first = windows.iter().position(|l| *l).unwrap_or(0);
            let last = windows.iter().rposition(|l| *l).unwrap_or(0);
            let end = ((last + 1) * WINDOW).min(s.len());
            s.truncate(end);
            s.drain(..first * WINDOW);
        }
        s
    }
}

/// A RIFF/WAVE file: 16-bit PCM, mono, `rate` Hz.
pub fn wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let data = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX - 36);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::audio::{decode_wav, ulaw};
    use voxedge_dataplane::recorder::REC_PAYLOAD_MAX;

    fn frame(ts: u32, pt: u8, level: i16) -> RecFrame {
        let mut data = [0u8; REC_PAYLOAD_MAX];
        for (i, b) in data[..160].iter_mut().enumerate() {
            let v = if i % 2 == 0 { level } else { -level };
            *b = if pt == 0 {
                ulaw(v)
            } else {
                crate::voice::audio::alaw(v)
            };
        }
        RecFrame {
            seq: 0,
            ts,
            payload_type: pt,
            len: 160,
            data,
        }
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
    fn wav_round_trips() {
        let s: Vec<i16> = (0..800).map(|i| (i * 40 - 16000) as i16).collect();
        let p = decode_wav(&wav(&s, 8000)).expect("valid");
        assert_eq!((p.rate, p.samples), (8000, s));
    }
}
