//! Turning fetched or synthesized audio into what calls play: decode (WAV, MP3, Ogg/Vorbis,
//! FLAC through symphonia; raw µ-law), mix down to mono, resample (rubato, FFT-based) to 8 kHz
//! for G.711 and to 16 kHz and 48 kHz for wideband legs, and encode: 20 ms G.711 frames in the
//! dataplane's media file layout ([`voxedge_dataplane::mediafile`]), and signed 16-bit
//! little-endian PCM for the wideband rates.

use std::io::Cursor;

use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;
use voxedge_dataplane::mediafile;

use crate::voice::audio::{self, Codec};

/// One prepared form of a piece of audio, stored as `<content>.<ext>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// G.711 µ-law frames (media file layout).
    Pcmu,
    /// G.711 A-law frames (media file layout).
    Pcma,
    /// 16 kHz signed 16-bit little-endian PCM.
    Wide16k,
    /// 48 kHz signed 16-bit little-endian PCM.
    Wide48k,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Pcmu,
        Variant::Pcma,
        Variant::Wide16k,
        Variant::Wide48k,
    ];

    pub fn ext(self) -> &'static str {
        match self {
            Variant::Pcmu => "pcmu",
            Variant::Pcma => "pcma",
            Variant::Wide16k => "s16le-16k",
            Variant::Wide48k => "s16le-48k",
        }
    }

    pub fn for_codec(c: Codec) -> Variant {
        match c {
            Codec::Pcmu => Variant::Pcmu,
            Codec::Pcma => Variant::Pcma,
        }
    }
}

/// Why audio could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a supported audio file ({0}); use WAV, MP3, Ogg/Vorbis or FLAC")]
    Format(String),
    #[error("the audio cannot be decoded: {0}")]
    Corrupt(String),
    #[error("the audio holds no sound")]
    Empty,
    #[error("the audio is longer than {0} seconds")]
    TooLong(u32),
    #[error("resampling failed: {0}")]
    Resample(String),
}

/// Decoded audio: mono samples in −1…1 at `rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mono {
    pub rate: u32,
    pub samples: Vec<f32>,
}

/// Every variant of one piece of audio, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub duration_ms: u64,
    pub files: Vec<(Variant, Vec<u8>)>,
}

impl Prepared {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, b)| b.len() as u64).sum()
    }

    pub fn file(&self, v: Variant) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(x, _)| *x == v)
            .map(|(_, b)| b.as_slice())
    }
}

/// Decodes an audio file of `content_type` (the URL's extension, when it has one, is a second
/// hint), stopping as soon as it runs over `seconds_max`.
///
/// # Errors
/// An unsupported or corrupt file, no sound, or too long.
pub fn decode(
    body: &[u8],
    content_type: &str,
    extension: Option<&str>,
    seconds_max: u32,
) -> Result<Mono, DecodeError> {
    let limit = |rate: u32| u64::from(rate) * u64::from(seconds_max);
    if matches!(content_type, "audio/basic" | "audio/x-mulaw" | "audio/pcmu") {
        // Headerless 8 kHz µ-law (Sun's .au without its header, as Twilio accepts it).
        if body.len() as u64 > limit(8000) {
            return Err(DecodeError::TooLong(seconds_max));
        }
        let samples: Vec<f32> = body
            .iter()
            .map(|b| f32::from(audio::ulaw_decode(*b)) / 32768.0)
            .collect();
        return nonempty(Mono {
            rate: 8000,
            samples,
        });
    }
    let mut hint = Hint::new();
    hint.mime_type(content_type);
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let source = MediaSourceStream::new(Box::new(Cursor::new(body.to_vec())), Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            source,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| DecodeError::Format(e.to_string()))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| DecodeError::Format("no audio track".into()))?;
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| DecodeError::Format(e.to_string()))?;
    let mut rate = track.codec_params.sample_rate.unwrap_or(0);
    let mut samples: Vec<f32> = Vec::new();
    let mut buf: Option<SampleBuffer<f32>> = None;
    let (mut good, mut bad) = (0u64, 0u64);
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => {
                if good == 0 {
                    return Err(DecodeError::Corrupt(e.to_string()));
                }
                // A damaged tail: keep what decoded.
                break;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymphoniaError::DecodeError(e)) => {
                bad += 1;
                if bad > 16 && bad > good {
                    return Err(DecodeError::Corrupt(e.to_string()));
                }
                continue;
            }
            Err(SymphoniaError::IoError(_)) => break,
            Err(e) => return Err(DecodeError::Corrupt(e.to_string())),
        };
        good += 1;
        let spec = *decoded.spec();
        if rate == 0 {
            rate = spec.rate;
        }
        let channels = spec.channels.count().max(1);
        let frames = decoded.frames();
        let sb = match &mut buf {
            Some(b) if b.capacity() >= decoded.capacity() * channels => b,
            _ => buf.insert(SampleBuffer::<f32>::new(decoded.capacity() as u64, spec)),
        };
        sb.copy_interleaved_ref(decoded);
        let inter = &sb.samples()[..frames * channels];
        if channels == 1 {
            samples.extend_from_slice(inter);
        } else {
            let scale = 1.0 / channels as f32;
            samples.extend(
                inter
                    .chunks_exact(channels)
                    .map(|f| f.iter().sum::<f32>() * scale),
            );
        }
        if rate > 0 && samples.len() as u64 > limit(rate) {
            return Err(DecodeError::TooLong(seconds_max));
        }
    }
    if rate == 0 {
        return Err(DecodeError::Format("no sample rate".into()));
    }
    nonempty(Mono { rate, samples })
}

fn nonempty(m: Mono) -> Result<Mono, DecodeError> {
    if m.samples.is_empty() {
        Err(DecodeError::Empty)
    } else {
        Ok(m)
    }
}

/// 16-bit PCM as [`Mono`].
pub fn from_i16(rate: u32, samples: &[i16]) -> Mono {
    Mono {
        rate,
        samples: samples.iter().map(|s| f32::from(*s) / 32768.0).collect(),
    }
}

/// Resamples mono audio from `from` Hz to `to` Hz (FFT-based, band-limited), delay-compensated
/// so the output lines up with the input and has `len × to / from` samples.
///
/// # Errors
/// Rates the resampler refuses.
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, DecodeError> {
    if from == to {
        return Ok(input.to_vec());
    }
    let err = |e: &dyn std::fmt::Display| DecodeError::Resample(e.to_string());
    let mut r =
        FftFixedIn::<f32>::new(from as usize, to as usize, 1024, 2, 1).map_err(|e| err(&e))?;
    let delay = r.output_delay();
    let want = usize::try_from(input.len() as u64 * u64::from(to) / u64::from(from))
        .map_err(|e| err(&e))?;
    let mut out = Vec::with_capacity(want + delay + 2048);
    let mut pos = 0;
    while input.len() - pos >= r.input_frames_next() {
        let n = r.input_frames_next();
        let o = r
            .process(&[&input[pos..pos + n]], None)
            .map_err(|e| err(&e))?;
        out.extend_from_slice(&o[0]);
        pos += n;
    }
    if pos < input.len() {
        let o = r
            .process_partial(Some(&[&input[pos..]]), None)
            .map_err(|e| err(&e))?;
        out.extend_from_slice(&o[0]);
    }
    while out.len() < want + delay {
        let o = r
            .process_partial(None::<&[&[f32]]>, None)
            .map_err(|e| err(&e))?;
        if o[0].is_empty() {
            break;
        }
        out.extend_from_slice(&o[0]);
    }
    out.drain(..delay.min(out.len()));
    out.resize(want, 0.0);
    Ok(out)
}

fn to_i16(s: f32) -> i16 {
    (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// `mono` at a call's 8 kHz, 16-bit: what G.711 encodes.
///
/// # Errors
/// Resampling failed.
pub fn to_8k(mono: &Mono) -> Result<Vec<i16>, DecodeError> {
    Ok(resample(&mono.samples, mono.rate, audio::RATE)?
        .into_iter()
        .map(to_i16)
        .collect())
}

/// Every variant of `mono`: G.711 µ-law and A-law frames at 8 kHz, 16 and 48 kHz PCM.
///
/// # Errors
/// Resampling failed.
pub fn prepare(mono: &Mono) -> Result<Prepared, DecodeError> {
    let narrow = to_8k(mono)?;
    let mut files = Vec::with_capacity(4);
    for codec in [Codec::Pcmu, Codec::Pcma] {
        let media = audio::encode(&narrow, codec);
        files.push((Variant::for_codec(codec), mediafile::encode(&media)));
    }
    for (variant, rate) in [(Variant::Wide16k, 16_000), (Variant::Wide48k, 48_000)] {
        let wide = resample(&mono.samples, mono.rate, rate)?;
        let mut bytes = Vec::with_capacity(wide.len() * 2);
        for s in wide {
            bytes.extend_from_slice(&to_i16(s).to_le_bytes());
        }
        files.push((variant, bytes));
    }
    Ok(Prepared {
        duration_ms: mono.samples.len() as u64 * 1000 / u64::from(mono.rate.max(1)),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, rate: u32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    #[test]
    fn resampling_keeps_length_level_and_removes_what_cannot_be_carried() {
        for (from, to) in [
            (44_100, 8000),
            (22_050, 8000),
            (8000, 48_000),
            (48_000, 16_000),
        ] {
            let input = tone(1000.0, from, 1.0);
            let out = resample(&input, from, to).expect("resamples");
            assert_eq!(out.len(), to as usize, "{from}→{to}");
            // The middle (clear of edge effects) keeps the tone's level.
            let mid = &out[out.len() / 4..out.len() * 3 / 4];
            assert!(
                (rms(mid) - 0.3536).abs() < 0.02,
                "{from}→{to}: {}",
                rms(mid)
            );
        }
        // 6 kHz cannot exist at 8 kHz: filtered out, not aliased down to 2 kHz.
        let out = resample(&tone(6000.0, 44_100, 1.0), 44_100, 8000).expect("resamples");
        assert!(rms(&out[2000..6000]) < 0.01, "{}", rms(&out[2000..6000]));
    }

    #[test]
    fn raw_mulaw_and_limits() {
        let body: Vec<u8> = tone(440.0, 8000, 0.5)
            .iter()
            .map(|s| audio::ulaw(to_i16(*s)))
            .collect();
        let m = decode(&body, "audio/basic", None, 60).expect("decodes");
        assert_eq!((m.rate, m.samples.len()), (8000, 4000));
        assert_eq!(
            decode(&body, "audio/basic", None, 0),
            Err(DecodeError::TooLong(0))
        );
        assert_eq!(
            decode(&[], "audio/basic", None, 10),
            Err(DecodeError::Empty)
        );
        assert!(matches!(
            decode(b"this is not audio at all", "audio/mpeg", Some("mp3"), 10),
            Err(DecodeError::Format(_) | DecodeError::Corrupt(_) | DecodeError::Empty)
        ));
    }

    #[test]
    fn prepared_variants_have_the_right_sizes() {
        let p = prepare(&Mono {
            rate: 44_100,
            samples: tone(440.0, 44_100, 1.0),
        })
        .expect("prepares");
        assert_eq!(p.duration_ms, 1000);
        let pcmu = mediafile::decode(p.file(Variant::Pcmu).expect("µ-law")).expect("valid");
        assert_eq!((pcmu.payload_type, pcmu.frame_count()), (0, 50));
        let pcma = mediafile::decode(p.file(Variant::Pcma).expect("A-law")).expect("valid");
        assert_eq!((pcma.payload_type, pcma.frame_count()), (8, 50));
        assert_eq!(p.file(Variant::Wide16k).map(<[u8]>::len), Some(32_000));
        assert_eq!(p.file(Variant::Wide48k).map(<[u8]>::len), Some(96_000));
    }
}
