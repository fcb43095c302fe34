//! Call recording for the ng protocol (`start recording`, `pause recording`, `stop recording`,
//! the `record-call` flag): both legs' received audio written to one stereo WAV per recording
//! (left: the `from-tag` party, right: the other party), 8 kHz 16-bit, under `[ng]
//! recording_dir`.
//!
//! The dataplane copies each leg's received G.711 payloads into a bounded recording tap (see
//! `voxedge_dataplane::recorder`). One recorder thread drains every tap five times a second,
//! places the audio by RTP timestamp (reordered packets land where they belong; gaps, other
//! codecs and paused stretches are silence), and appends to the file what is more than a second
//! old, so memory per recording stays bounded (about 11 s of audio per leg at most) however long
//! the call is, and the ng engine never waits on the disk. The file is `NAME.wav.part` while it
//! is written; stopping completes its header and renames it `NAME.wav`. After a crash the
//! `.part` file holds everything up to the last write (a WAV reader may need its sizes fixed).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use voxedge_dataplane::g711::Law;
use voxedge_dataplane::recorder::{RecFrame, RecReceiver};

use crate::voice::record::wav_header;

/// Samples per second (G.711).
const RATE: u64 = 8000;
/// Audio newer than this stays in memory (late packets can still be placed).
const JITTER: u64 = RATE;
/// Audio further ahead than this (or far before what was written) starts a new timeline for
/// the leg: the source changed.
const AHEAD_MAX: u64 = 10 * RATE;
/// How often taps are drained.
const TICK: Duration = Duration::from_millis(200);
/// WAV sizes are 32-bit: a recording stops growing before 4 GiB.
const DATA_BYTES_MAX: u64 = u32::MAX as u64 - 64;

/// Counters of the recorder (all recordings).
#[derive(Debug, Default)]
pub struct RecStats {
    /// Recordings being written.
    pub active: AtomicU64,
    /// Recordings completed (file renamed to `.wav`).
    pub completed: AtomicU64,
    /// Recordings that could not be written to the end (disk error, size limit).
    pub failed: AtomicU64,
    /// Frames not placed: another codec, too late, or while paused.
    pub frames_ignored: AtomicU64,
}

enum Cmd {
    Start {
        key: String,
        file: File,
        part: PathBuf,
        path: PathBuf,
        legs: [RecReceiver; 2],
    },
    Pause {
        key: String,
        paused: bool,
    },
    Stop {
        key: String,
    },
}

/// Handle of the recorder thread (dropping it finishes every recording).
pub struct Recorder {
    tx: Option<SyncSender<Cmd>>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
    pub stats: Arc<RecStats>,
    seq: u64,
}

/// Why a recording cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RecError {
    #[error("cannot create the recording file {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("the recorder has stopped")]
    Gone,
    #[error("the recorder is overloaded")]
    Busy,
}

impl Recorder {
    /// Starts the recorder thread; recordings go to `dir` (created when the first starts).
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(dir: &Path) -> std::io::Result<Recorder> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        let stats = Arc::new(RecStats::default());
        let thread = std::thread::Builder::new()
            .name("ng-recorder".into())
            .spawn({
                let stats = stats.clone();
                move || run(&rx, &stats)
            })?;
        Ok(Recorder {
            tx: Some(tx),
            thread: Some(thread),
            dir: dir.to_path_buf(),
            stats,
            seq: 0,
        })
    }

    /// Starts recording `legs` (leg A's tap, leg B's) as `key`; returns the file's final path.
    ///
    /// # Errors
    /// The file cannot be created, or the recorder is gone or overloaded.
    pub fn begin(&mut self, key: &str, legs: [RecReceiver; 2]) -> Result<PathBuf, RecError> {
        self.seq += 1;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("{}-{stamp}-{}", file_safe(key), self.seq);
        let path = self.dir.join(format!("{name}.wav"));
        let part = self.dir.join(format!("{name}.wav.part"));
        let created = std::fs::create_dir_all(&self.dir).and_then(|()| {
            let mut f = File::create(&part)?;
            f.write_all(&wav_header(0, RATE as u32, 2))?;
            Ok(f)
        });
        let file = created.map_err(|e| RecError::File(part.clone(), e))?;
        self.send(Cmd::Start {
            key: key.to_string(),
            file,
            part: part.clone(),
            path: path.clone(),
            legs,
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&part);
        })?;
        Ok(path)
    }

    /// Pauses (silence is written meanwhile) or resumes recording `key`.
    ///
    /// # Errors
    /// The recorder is gone or overloaded.
    pub fn pause(&self, key: &str, paused: bool) -> Result<(), RecError> {
        self.send(Cmd::Pause {
            key: key.to_string(),
            paused,
        })
    }

    /// Finishes recording `key`: what its taps still hold is written and the file completed.
    ///
    /// # Errors
    /// The recorder is gone or overloaded.
    pub fn finish(&self, key: &str) -> Result<(), RecError> {
        self.send(Cmd::Stop {
            key: key.to_string(),
        })
    }

    fn send(&self, cmd: Cmd) -> Result<(), RecError> {
        let tx = self.tx.as_ref().ok_or(RecError::Gone)?;
        tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => RecError::Busy,
            TrySendError::Disconnected(_) => RecError::Gone,
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Closing the channel makes the thread finish every recording and exit.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Call-ids are free text: only letters, digits, `-`, `_` and `.` reach a file name, at most 96.
fn file_safe(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "call".into()
    } else {
        s
    }
}

/// One leg's audio not yet written: `buf[0]` is sample number `written` of the recording.
#[derive(Default)]
struct Track {
    /// RTP timestamp of the recording's sample 0 on this leg's timeline.
    base_ts: Option<u32>,
    buf: VecDeque<i16>,
}

impl Track {
    /// Places one frame; false when it was not placed (codec, too late).
    fn place(&mut self, f: &RecFrame, elapsed: u64, written: u64) -> bool {
        let Some(law) = Law::from_payload_type(f.payload_type) else {
            return false;
        };
        let anchor = |ts: u32| ts.wrapping_sub(elapsed as u32);
        let base = *self.base_ts.get_or_insert_with(|| anchor(f.ts));
        let mut at = u64::from(f.ts.wrapping_sub(base));
        let new_timeline = at > elapsed + AHEAD_MAX || at + AHEAD_MAX < written;
        if new_timeline {
            self.base_ts = Some(anchor(f.ts));
            at = elapsed;
        }
        if at < written {
            return false;
        }
        let from = (at - written) as usize;
        let payload = f.payload();
        let end = from + payload.len();
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        for (slot, b) in self.buf.range_mut(from..end).zip(payload) {
            *slot = law.decode(*b);
        }
        true
    }
}

struct Recording {
    started: Instant,
    /// Samples per channel placed on the file's timeline so far.
    written: u64,
    /// Audio bytes in the file (less than `written` × 4 once a write failed).
    data_bytes: u64,
    paused: bool,
    failed: bool,
    out: BufWriter<File>,
    part: PathBuf,
    path: PathBuf,
    legs: [RecReceiver; 2],
    tracks: [Track; 2],
}

impl Recording {
    fn elapsed(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 * RATE / 1000
    }

    /// Places what the taps hold.
    fn drain(&mut self, stats: &RecStats) {
        let elapsed = self.elapsed();
        for (leg, track) in self.legs.iter().zip(self.tracks.iter_mut()) {
            for f in leg.try_iter() {
                if self.paused || !track.place(&f, elapsed, self.written) {
                    stats.frames_ignored.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Writes both channels up to sample `upto` (silence where a leg has nothing).
    fn write_upto(&mut self, upto: u64, stats: &RecStats) {
        let Some(n) = upto.checked_sub(self.written).filter(|n| *n > 0) else {
            return;
        };
        self.written = upto;
        if !self.failed && self.data_bytes + n * 4 > DATA_BYTES_MAX {
            tracing::warn!(file = %self.part.display(), "ng recording reached the WAV size limit (4 GiB); the rest is not written");
            self.fail(stats);
        }
        for _ in 0..n {
            let l = self.tracks[0].buf.pop_front().unwrap_or(0);
            let r = self.tracks[1].buf.pop_front().unwrap_or(0);
            if self.failed {
                continue;
            }
            let mut frame = [0u8; 4];
            frame[..2].copy_from_slice(&l.to_le_bytes());
            frame[2..].copy_from_slice(&r.to_le_bytes());
            match self.out.write_all(&frame) {
                Ok(()) => self.data_bytes += 4,
                Err(e) => {
                    tracing::warn!(file = %self.part.display(), error = %e, "ng recording cannot be written");
                    self.fail(stats);
                }
            }
        }
    }

    fn fail(&mut self, stats: &RecStats) {
        if !self.failed {
            self.failed = true;
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drains, writes everything placed, completes the header and renames the file.
    fn finish(mut self, stats: &RecStats) {
        self.drain(stats);
        let placed = self
            .tracks
            .iter()
            .map(|t| t.buf.len() as u64)
            .max()
            .unwrap_or(0);
        let end = self.elapsed().max(self.written + placed);
        self.write_upto(end, stats);
        let data = u32::try_from(self.data_bytes).unwrap_or(u32::MAX);
        let done = self.out.flush().and_then(|()| {
            let f = self.out.get_mut();
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&wav_header(data, RATE as u32, 2))?;
            f.sync_all()?;
            std::fs::rename(&self.part, &self.path)
        });
        stats.active.fetch_sub(1, Ordering::Relaxed);
        match done {
            Ok(()) if !self.failed => {
                stats.completed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = %self.path.display(), seconds = self.data_bytes / 4 / RATE, "ng recording completed");
            }
            Ok(()) => {
                tracing::warn!(file = %self.path.display(), "ng recording completed with missing audio (see the earlier warning)");
            }
            Err(e) => {
                self.fail(stats);
                tracing::warn!(file = %self.part.display(), error = %e, "ng recording cannot be completed");
            }
        }
    }
}

fn run(rx: &Receiver<Cmd>, stats: &RecStats) {
    let mut recs: HashMap<String, Recording> = HashMap::new();
    let mut next_tick = Instant::now() + TICK;
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Cmd::Start {
                key,
                file,
                part,
                path,
                legs,
            }) => {
                stats.active.fetch_add(1, Ordering::Relaxed);
                let rec = Recording {
                    started: Instant::now(),
                    written: 0,
                    data_bytes: 0,
                    paused: false,
                    failed: false,
                    out: BufWriter::with_capacity(64 * 1024, file),
                    part,
                    path,
                    legs,
                    tracks: [Track::default(), Track::default()],
                };
                // A second start of the same key replaces (and completes) the first.
                if let Some(old) = recs.insert(key, rec) {
                    old.finish(stats);
                }
            }
            Ok(Cmd::Pause { key, paused }) => {
                if let Some(r) = recs.get_mut(&key) {
                    r.drain(stats);
                    r.paused = paused;
                }
            }
            Ok(Cmd::Stop { key }) => {
                if let Some(r) = recs.remove(&key) {
                    r.finish(stats);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_tick {
            for r in recs.values_mut() {
                r.drain(stats);
                let upto = r.elapsed().saturating_sub(JITTER);
                r.write_upto(upto, stats);
            }
            next_tick = Instant::now() + TICK;
        }
    }
    for (_, r) in recs.drain() {
        r.finish(stats);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use voxedge_dataplane::recorder::RecordTap;

    fn frame(ts: u32, pt: u8, byte: u8) -> RecFrame {
        RecFrame::new(0, ts, pt, &[byte; 160]).unwrap()
    }

    #[test]
    fn frames_land_by_timestamp_and_a_new_source_starts_a_new_timeline() {
        let mut t = Track::default();
        // The first frame arrives 800 samples into the recording.
        assert!(t.place(&frame(10_000, 0, 0x80), 800, 0));
        assert_eq!(t.buf.len(), 960);
        assert!(t.buf.iter().take(800).all(|s| *s == 0));
        // Reordered: the frame after the next arrives first.
        assert!(t.place(&frame(10_320, 0, 0x81), 900, 0));
        assert!(t.place(&frame(10_160, 0, 0x82), 900, 0));
        assert_eq!(t.buf.len(), 1280);
        assert_eq!(t.buf[960], Law::Mu.decode(0x82));
        assert_eq!(t.buf[1120], Law::Mu.decode(0x81));
        // Telephone-events are not audio.
        assert!(!t.place(&frame(10_480, 101, 0x01), 1000, 0));
        // A new SSRC with an unrelated timestamp: placed at the time it arrives.
        assert!(t.place(&frame(3_000_000_000, 8, 0x55), 2000, 0));
        assert_eq!(t.buf.len(), 2160);
        assert_eq!(t.buf[2000], Law::A.decode(0x55));
        // Too late for what was written already.
        assert!(!t.place(&frame(3_000_000_000, 8, 0x55), 2100, 2100));
    }

    #[test]
    fn a_recording_is_a_stereo_wav_of_both_legs() {
        let dir = std::env::temp_dir().join(format!("voxedge-ngrec-{}", std::process::id()));
        let mut rec = Recorder::start(&dir).unwrap();
        let (tap_a, rx_a) = RecordTap::new(64);
        let (tap_b, rx_b) = RecordTap::new(64);
        let path = rec.begin("abc/../../x y@host", [rx_a, rx_b]).unwrap();
        assert_eq!(path.parent(), Some(dir.as_path()));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("abc_.._.._x_y_host-"), "{name}");
        for i in 0..10u32 {
            tap_a.push(0, 1000 + i * 160, 0, &[0x00; 160]);
            tap_b.push(0, 5000 + i * 160, 8, &[0xd5; 160]);
        }
        rec.finish("abc/../../x y@host").unwrap();
        drop(rec);
        let wav = std::fs::read(&path).unwrap();
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2, "stereo");
        let data = u32::from_le_bytes([wav[40], wav[41], wav[42], wav[43]]) as usize;
        assert_eq!(data, wav.len() - 44);
        let samples: Vec<(i16, i16)> = wav[44..]
            .chunks_exact(4)
            .map(|c| {
                (
                    i16::from_le_bytes([c[0], c[1]]),
                    i16::from_le_bytes([c[2], c[3]]),
                )
            })
            .collect();
        assert!(samples.len() >= 1600, "{} samples", samples.len());
        let left = samples
            .iter()
            .filter(|(l, _)| *l == Law::Mu.decode(0x00))
            .count();
        let right = samples
            .iter()
            .filter(|(_, r)| *r == Law::A.decode(0xd5))
            .count();
        assert_eq!((left, right), (1600, 1600));
        assert!(!dir.join(format!("{}.part", name)).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
