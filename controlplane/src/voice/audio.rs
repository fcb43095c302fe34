//! Audio for the instruction engine: speech from espeak-ng, WAV decoding (lenient about the
//! lengths espeak-ng leaves unset), tones (DTMF, ringback, beep), and G.711 (µ-law / A-law)
//! encoding into frames the dataplane plays ([`PlayMedia`]). Other formats and resampling are
//! the media cache's ([`crate::media::decode`]).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use voxedge_dataplane::player::PlayMedia;

/// Sample rate of every call's audio (G.711).
pub const RATE: u32 = 8000;
/// Samples per 20 ms frame.
pub const FRAME: usize = 160;

/// G.711 variant of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    /// The G.711 law (the dataplane's, which the mixer decodes and encodes).
    pub fn law(self) -> Law {
        match self {
            Codec::Pcmu => Law::Mu,
            Codec::Pcma => Law::A,
        }
    }

    pub fn payload_type(self) -> u8 {
        self.law().payload_type()
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    fn encode(self, s: i16) -> u8 {
        self.law().encode(s)
    }
}

/// G.711 (the dataplane's, shared with the mixer).
pub use voxedge_dataplane::g711::{alaw, alaw_decode, ulaw, ulaw_decode, Law};

/// Why audio could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    #[error("not a WAV file: {0}")]
    Wav(&'static str),
    #[error("unsupported WAV encoding (format {0}); use 16-bit PCM, 8-bit PCM, µ-law or A-law")]
    WavFormat(u16),
    #[error("audio is longer than an hour")]
    TooLong,
    #[error("speech synthesis failed: {0}")]
    Synthesis(String),
}

/// Decoded audio: mono samples at `rate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcm {
    pub rate: u32,
    pub samples: Vec<i16>,
}

/// Decodes a RIFF/WAVE file: PCM 8/16-bit, µ-law or A-law, any channel count (mixed down).
///
/// # Errors
/// Not a WAV file, an encoding other than those, or over an hour long.
pub fn decode_wav(b: &[u8]) -> Result<Pcm, AudioError> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err(AudioError::Wav("no RIFF/WAVE header"));
    }
    let mut pos = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let size = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
        let body_start = pos + 8;
        // espeak-ng writes 0x7fffffff as the data size when streaming: take what is there.
        let body_end = body_start.saturating_add(size).min(b.len());
        let body = &b[body_start..body_end];
        if id == b"fmt " {
            if body.len() < 16 {
                return Err(AudioError::Wav("short fmt chunk"));
            }
            let le16 = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
            let mut format = le16(0);
            if format == 0xfffe && body.len() >= 26 {
                format = le16(24); // WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
            }
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            fmt = Some((format, le16(2), rate, le16(14)));
        } else if id == b"data" {
            let Some((format, channels, rate, bits)) = fmt else {
                return Err(AudioError::Wav("data before fmt"));
            };
            if channels == 0 || !(1000..=192_000).contains(&rate) {
                return Err(AudioError::Wav("bad channel count or sample rate"));
            }
            let width = match (format, bits) {
                (1, 16) => 2,
                (1, 8) | (6, 8) | (7, 8) => 1,
                _ => return Err(AudioError::WavFormat(format)),
            };
            let frame = width * usize::from(channels);
            let frames = body.len() / frame;
            if frames / (rate as usize).max(1) > 3600 {
                return Err(AudioError::TooLong);
            }
            let mut samples = Vec::with_capacity(frames);
            for f in body.chunks_exact(frame) {
                let mut sum = 0i32;
                for c in f.chunks_exact(width) {
                    sum += i32::from(match (format, width) {
                        (1, 2) => i16::from_le_bytes([c[0], c[1]]),
                        (1, _) => (i16::from(c[0]) - 128) << 8,
                        (6, _) => alaw_decode(c[0]),
                        _ => ulaw_decode(c[0]),
                    });
                }
                samples.push((sum / i32::from(channels)) as i16);
            }
            return Ok(Pcm { rate, samples });
        }
        pos = body_start.saturating_add(size + (size & 1));
    }
    Err(AudioError::Wav("no data chunk"))
}

/// In-band DTMF for `<Play digits>`: 100 ms tone, 100 ms gap per key; `w`/`W` is a
/// half-second pause. Keys outside `0-9*#A-D` are skipped (the parser refuses them).
pub fn dtmf_tones(digits: &str) -> Vec<i16> {
    dtmf_tones_timed(digits, 100, 100, 9)
}

/// In-band DTMF: each key a `tone_ms` dual tone with each frequency at −`level_dbm0` dBm0,
/// then `gap_ms` of silence; `w`/`W` is a half-second pause; other keys are skipped.
pub fn dtmf_tones_timed(digits: &str, tone_ms: u32, gap_ms: u32, level_dbm0: u8) -> Vec<i16> {
    // Peak of a 0 dBm0 sine in 16-bit linear G.711 (µ-law's full scale is +3.17 dBm0).
    const PEAK_0DBM0: f64 = 22_657.0;
    let peak = PEAK_0DBM0 * 10f64.powf(-f64::from(level_dbm0.min(63)) / 20.0);
    let per_ms = RATE as usize / 1000;
    let mut out = Vec::new();
    for c in digits.chars() {
        let (lo, hi) = match c.to_ascii_uppercase() {
            '1' => (697.0, 1209.0),
            '2' => (697.0, 1336.0),
            '3' => (697.0, 1477.0),
            'A' => (697.0, 1633.0),
            '4' => (770.0, 1209.0),
            '5' => (770.0, 1336.0),
            '6' => (770.0, 1477.0),
            'B' => (770.0, 1633.0),
            '7' => (852.0, 1209.0),
            '8' => (852.0, 1336.0),
            '9' => (852.0, 1477.0),
            'C' => (852.0, 1633.0),
            '*' => (941.0, 1209.0),
            '0' => (941.0, 1336.0),
            '#' => (941.0, 1477.0),
            'D' => (941.0, 1633.0),
            'W' => {
                out.extend(std::iter::repeat_n(0, RATE as usize / 2));
                continue;
            }
            _ => continue,
        };
        for i in 0..(tone_ms as usize * per_ms) {
            let t = i as f64 / f64::from(RATE);
            let v = ((2.0 * std::f64::consts::PI * lo * t).sin()
                + (2.0 * std::f64::consts::PI * hi * t).sin())
                * peak;
            out.push(v as i16);
        }
        out.extend(std::iter::repeat_n(0, gap_ms as usize * per_ms));
    }
    out
}

/// The beep before `<Record>`: 1 kHz for 400 ms at 8 kHz.
pub fn beep() -> Vec<i16> {
    (0..RATE as usize * 2 / 5)
        .map(|i| {
            let t = i as f64 / f64::from(RATE);
            ((2.0 * std::f64::consts::PI * 1000.0 * t).sin() * 8000.0) as i16
        })
        .collect()
}

/// One cadence of the North American ringback tone (ITU-T E.180: 440 + 480 Hz, 2 s on, 4 s
/// off), at 8 kHz: what a caller hears while a `<Dial>` rings, looped.
pub fn ringback() -> Vec<i16> {
    let on = RATE as usize * 2;
    let mut out: Vec<i16> = (0..on)
        .map(|i| {
            let t = i as f64 / f64::from(RATE);
            let v = ((2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + (2.0 * std::f64::consts::PI * 480.0 * t).sin())
                * 4000.0;
            v as i16
        })
        .collect();
    out.extend(std::iter::repeat_n(0, RATE as usize * 4));
    out
}

/// Encodes 8 kHz samples into 20 ms G.711 frames (the last one padded with silence).
pub fn encode(samples: &[i16], codec: Codec) -> Arc<PlayMedia> {
    let frames = samples.len().div_ceil(FRAME).max(1);
    let mut bytes = Vec::with_capacity(frames * FRAME);
    bytes.extend(samples.iter().map(|s| codec.encode(*s)));
    bytes.resize(frames * FRAME, codec.encode(0));
    Arc::new(PlayMedia {
        payload_type: codec.payload_type(),
        frame_bytes: FRAME,
        samples_per_frame: FRAME as u32,
        ptime_ns: 20_000_000,
        frames: bytes,
        kind: voxedge_dataplane::player::MediaKind::Audio,
    })
}

/// Speech synthesizer: espeak-ng, run per request with the text on stdin (never on the
/// command line), a time limit and an output cap.
#[derive(Debug, Clone)]
pub struct Synthesizer {
    pub program: String,
    pub timeout: Duration,
}

impl Default for Synthesizer {
    fn default() -> Self {
        Synthesizer {
            program: "espeak-ng".into(),
            timeout: Duration::from_secs(20),
        }
    }
}

/// espeak-ng voice for a Twilio `language` (`en-US`, `de-DE`, …); Twilio's voice names
/// (`alice`, `man`, `Polly.*`) choose a variant where espeak-ng has one.
pub fn espeak_voice(language: Option<&str>, voice: Option<&str>) -> String {
    let lang = language.unwrap_or("en-US").to_ascii_lowercase();
    let base = match lang.as_str() {
        "en-us" => "en-us".to_string(),
        "en-gb" => "en-gb".to_string(),
        "en-au" | "en-ca" | "en-in" => "en".to_string(),
        l => l
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(16)
            .collect(),
    };
    let variant = match voice.map(str::to_ascii_lowercase).as_deref() {
        Some("woman" | "alice") => "+f3",
        _ => "",
    };
    format!("{base}{variant}")
}

impl Synthesizer {
    /// Renders `text` to espeak-ng's WAV (22,050 Hz, 16-bit mono).
    ///
    /// # Errors
    /// espeak-ng missing, failing, timing out, or producing no audio.
    pub async fn speak_wav(&self, text: &str, voice: &str) -> Result<Vec<u8>, AudioError> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(["--stdout", "-v", voice])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AudioError::Synthesis(format!("cannot run {}: {e}", self.program)))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| AudioError::Synthesis("no stdin".into()))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| AudioError::Synthesis("no stdout".into()))?;
        let input = text.replace(['\n', '\r'], " ");
        let work = async {
            let write = async {
                let _ = stdin.write_all(input.as_bytes()).await;
                drop(stdin);
            };
            let mut wav = Vec::new();
            // 22,050 Hz × 2 bytes × one hour bounds the output.
            let mut limited = (&mut stdout).take(22_050 * 2 * 3600 + 1024);
            let read = limited.read_to_end(&mut wav);
            let ((), r) = tokio::join!(write, read);
            r.map_err(|e| AudioError::Synthesis(e.to_string()))?;
            let status = child
                .wait()
                .await
                .map_err(|e| AudioError::Synthesis(e.to_string()))?;
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                return Err(AudioError::Synthesis(format!(
                    "{} exited with {status}: {}",
                    self.program,
                    err.trim()
                )));
            }
            Ok(wav)
        };
        let wav = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| AudioError::Synthesis(format!("no audio within {:?}", self.timeout)))??;
        if decode_wav(&wav)?.samples.is_empty() {
            return Err(AudioError::Synthesis("no audio produced".into()));
        }
        Ok(wav)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_known_values_and_round_trip() {
        // Reference points of the G.711 tables.
        assert_eq!(ulaw(0), 0xff);
        assert_eq!(ulaw(-1), 0x7f);
        assert_eq!(ulaw(32767), 0x80);
        assert_eq!(ulaw(-32768), 0x00);
        assert_eq!(alaw(0), 0xd5);
        assert_eq!(alaw(-1), 0x55);
        assert_eq!(alaw(32767), 0xaa);
        assert_eq!(alaw(-32768), 0x2a);
        // Decoding then encoding every code gives it back (except µ-law's two zeros).
        for b in 0..=255u8 {
            let d = ulaw_decode(b);
            if b != 0x7f {
                assert_eq!(ulaw(d), b, "ulaw {b:#x} -> {d}");
            }
            assert_eq!(alaw(alaw_decode(b)), b, "alaw {b:#x}");
        }
        // Quantisation error stays within the segment's step.
        for s in (-32768i32..32768).step_by(97) {
            let s = s as i16;
            let e = (i32::from(ulaw_decode(ulaw(s))) - i32::from(s)).abs();
            assert!(e <= (i32::from(s).abs() / 16).max(8) + 132, "{s}: {e}");
        }
    }

    fn wav(format: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let mut b = b"RIFF\0\0\0\0WAVE".to_vec();
        b.extend_from_slice(b"fmt \x10\0\0\0");
        b.extend_from_slice(&format.to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * u32::from(bits / 8) * u32::from(channels)).to_le_bytes());
        b.extend_from_slice(&(bits / 8 * channels).to_le_bytes());
        b.extend_from_slice(&bits.to_le_bytes());
        b.extend_from_slice(b"LIST\x04\0\0\0abcd");
        b.extend_from_slice(b"data");
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn wav_variants() {
        let pcm16: Vec<u8> = [1000i16, -1000, 0]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(
            decode_wav(&wav(1, 1, 8000, 16, &pcm16)),
            Ok(Pcm {
                rate: 8000,
                samples: vec![1000, -1000, 0]
            })
        );
        // Stereo is mixed down.
        let st: Vec<u8> = [1000i16, 3000]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(
            decode_wav(&wav(1, 2, 16000, 16, &st)).map(|p| p.samples),
            Ok(vec![2000])
        );
        assert_eq!(
            decode_wav(&wav(7, 1, 8000, 8, &[0xff])).map(|p| p.samples),
            Ok(vec![0])
        );
        assert_eq!(
            decode_wav(&wav(6, 1, 8000, 8, &[0xd5])).map(|p| p.samples),
            Ok(vec![8])
        );
        assert_eq!(
            decode_wav(&wav(1, 1, 8000, 8, &[128])).map(|p| p.samples),
            Ok(vec![0])
        );
        assert_eq!(
            decode_wav(&wav(3, 1, 8000, 32, &[0; 4])),
            Err(AudioError::WavFormat(3))
        );
        for bad in [
            &b""[..],
            b"RIFF",
            b"RIFF\0\0\0\0WAVE",
            b"RIFF\0\0\0\0WAVEdata\x04\0\0\0abcd",
            b"ID3\x03mp3",
        ] {
            assert!(decode_wav(bad).is_err());
        }
        // A chunk size running past the end is clamped, never a panic.
        let mut t = wav(1, 1, 8000, 16, &pcm16);
        let n = t.len();
        t[n - 10..n - 6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_wav(&t).is_ok());
    }

    #[test]
    fn frames_and_tones() {
        let m = encode(&[0; 161], Codec::Pcma);
        assert_eq!((m.payload_type, m.frame_count()), (8, 2));
        assert!(m.frames.iter().all(|b| *b == 0xd5));
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(dtmf_tones("1w#").len(), 1600 + 4000 + 1600);
        assert_eq!(espeak_voice(Some("en-GB"), Some("alice")), "en-gb+f3");
        assert_eq!(espeak_voice(Some("de-DE; rm -rf"), None), "de-de");
    }
}
