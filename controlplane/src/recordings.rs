//! Recording files: one 8 kHz 16-bit mono WAV per recording SID under `[media]
//! recordings_dir`, written atomically, addressed by `RecordingUrl`
//! (`{public_url}/2010-04-01/Accounts/{AccountSid}/Recordings/{Sid}`, `.wav` or no extension
//! for the WAV, `.mp3` for an MP3 encoded when asked), removed with the recording.

use std::path::{Path, PathBuf};

/// Where recordings live and how they are addressed.
#[derive(Debug)]
pub struct Recordings {
    dir: PathBuf,
    base: String,
    pub require_auth: bool,
}

impl Recordings {
    /// # Errors
    /// The directory cannot be created.
    pub fn new(dir: &Path, base: String, require_auth: bool) -> std::io::Result<Recordings> {
        std::fs::create_dir_all(dir)?;
        Ok(Recordings {
            dir: dir.to_path_buf(),
            base,
            require_auth,
        })
    }

    /// The WAV file of recording `sid` (a SID: letters and digits only, so no path escapes).
    pub fn path(&self, sid: &str) -> Option<PathBuf> {
        crate::secret::is_sid(sid, "RE").then(|| self.dir.join(format!("{sid}.wav")))
    }

    /// `RecordingUrl` of a recording (without extension, as Twilio's).
    pub fn url(&self, account: &str, sid: &str) -> String {
        format!("{}{}", self.base, Self::path_of_url(account, sid))
    }

    /// Path of `url` as served (for the `uri`/`media_url` fields).
    pub fn path_of_url(account: &str, sid: &str) -> String {
        format!("/2010-04-01/Accounts/{account}/Recordings/{sid}")
    }

    /// Writes a recording's WAV file atomically.
    ///
    /// # Errors
    /// Disk full, directory gone.
    /// Stores `samples` (8 kHz, `channels` interleaved) as the WAV file of recording `sid`, on
    /// the blocking pool: the whole seconds it holds (rounded) and where it went.
    pub async fn save(
        self: &std::sync::Arc<Self>,
        sid: &str,
        samples: Vec<i16>,
        channels: u16,
    ) -> (u64, Result<PathBuf, String>) {
        let rate = crate::voice::audio::RATE;
        let per_sec = u64::from(rate) * u64::from(channels.max(1));
        let secs = (samples.len() as u64 + per_sec / 2) / per_sec;
        let (me, sid) = (self.clone(), sid.to_string());
        let written = tokio::task::spawn_blocking(move || {
            me.write(
                &sid,
                &crate::voice::record::wav_channels(&samples, rate, channels),
            )
        })
        .await;
        let path = match written {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        (secs, path)
    }

    pub fn write(&self, sid: &str, wav: &[u8]) -> std::io::Result<PathBuf> {
        let path = self
            .path(sid)
            .ok_or_else(|| std::io::Error::other(format!("{sid} is not a recording SID")))?;
        voxedge_dataplane::mediafile::write_atomic(&path, wav)?;
        Ok(path)
    }

    /// Removes a recording's file (a missing file is not an error).
    pub fn remove(&self, sid: &str) {
        if let Some(p) = self.path(sid) {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "recording file not removed");
                }
            }
        }
    }

    /// Reads a recording's WAV file.
    ///
    /// # Errors
    /// No such file.
    pub fn read(&self, sid: &str) -> std::io::Result<Vec<u8>> {
        let p = self
            .path(sid)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not a SID"))?;
        std::fs::read(p)
    }
}

/// MP3 of a recording's WAV (8 kHz mono → MPEG-2.5 Layer III, 32 kbit/s CBR), for
/// `RecordingUrl.mp3`. Pure Rust (`rusty_mp3`): no encoder to install.
///
/// # Errors
/// Not a WAV file this module wrote, or the encoder refused the audio.
pub fn wav_to_mp3(wav: &[u8]) -> Result<Vec<u8>, String> {
    let pcm = crate::voice::audio::decode_wav(wav).map_err(|e| e.to_string())?;
    let mut enc = rusty_mp3::Mp3Encoder::new(rusty_mp3::Mp3EncoderConfig {
        bitrate_kbps: 32,
        vbr_quality: None,
    });
    enc.push_pcm_s16(&pcm.samples, 1, pcm.rate)
        .map_err(|e| format!("MP3 encoding failed: {e}"))?;
    enc.finish();
    let mut out = Vec::with_capacity(pcm.samples.len() / 2);
    while let Ok(packet) = enc.next_packet() {
        out.extend_from_slice(&packet);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp3_of_a_recording_decodes_back_to_the_same_tone() {
        let samples: Vec<i16> = (0..16_000)
            .map(|i| {
                ((2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 8000.0).sin() * 8000.0) as i16
            })
            .collect();
        let mp3 = wav_to_mp3(&crate::voice::record::wav(&samples, 8000)).expect("encodes");
        assert!(
            mp3.len() > 4000 && mp3.len() < 16_000,
            "≈ 32 kbit/s for 2 s: {}",
            mp3.len()
        );
        let back =
            crate::media::decode::decode(&mp3, "audio/mpeg", Some("mp3"), 60).expect("decodes");
        assert_eq!(back.rate, 8000);
        let secs = back.samples.len() as f64 / 8000.0;
        assert!((1.9..2.3).contains(&secs), "{secs} s");
        // The tone is there: zero crossings over the middle second ≈ 880.
        let mid = &back.samples[4000..12_000];
        let crossings = mid
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!((840..920).contains(&crossings), "{crossings}");
    }

    #[test]
    fn paths_are_only_for_sids() {
        let dir = std::env::temp_dir().join(format!("voxedge-rec-{}", std::process::id()));
        let r = Recordings::new(&dir, "https://v.example".into(), true).expect("dir");
        assert!(r.path("../../etc/passwd").is_none());
        assert!(r.path("RE0123456789abcdef0123456789abcdef").is_some());
        assert_eq!(
            r.url("AC1", "RE2"),
            "https://v.example/2010-04-01/Accounts/AC1/Recordings/RE2"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
