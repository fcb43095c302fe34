//! The on-disk layout of prepared media: what the media cache writes once per (content,
//! encoding) and the player loads by path, so nothing on the packet path parses an audio
//! format. A 32-byte header, then the frames exactly as [`PlayMedia`] holds them:
//!
//! ```text
//! 0   8  magic "VXMEDIA" + version 1
//! 8   1  RTP payload type
//! 9   1  kind: 0 audio, 1 RFC 4733 telephone-events
//! 10  2  bytes per frame (big-endian)
//! 12  4  samples per frame (clock ticks)
//! 16  8  packet time in nanoseconds
//! 24  4  frame count
//! 28  4  reserved, zero
//! 32  …  frame count × bytes per frame
//! ```
//!
//! Files are written to a temporary name, synced and renamed, so a reader sees a whole file
//! or none.

use std::io::Write;
use std::path::Path;

use crate::player::{MediaKind, PlayMedia, PlayMediaError};

const MAGIC: &[u8; 8] = b"VXMEDIA\x01";
/// Bytes before the first frame.
pub const HEADER: usize = 32;

/// Why a media file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MediaFileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a VoxEdge media file (bad magic or version)")]
    Magic,
    #[error("media file is {got} bytes; its header says {want}")]
    Length { got: u64, want: u64 },
    #[error("unknown media kind {0}")]
    Kind(u8),
    #[error("media file holds unplayable media: {0}")]
    Media(#[from] PlayMediaError),
}

/// The header and frames of `media` as written to disk.
pub fn encode(media: &PlayMedia) -> Vec<u8> {
    let count = media.frame_count();
    let mut out = Vec::with_capacity(HEADER + count * media.frame_bytes);
    out.extend_from_slice(MAGIC);
    out.push(media.payload_type);
    out.push(match media.kind {
        MediaKind::Audio => 0,
        MediaKind::TelephoneEvent => 1,
    });
    out.extend_from_slice(&u16::try_from(media.frame_bytes).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&media.samples_per_frame.to_be_bytes());
    out.extend_from_slice(&media.ptime_ns.to_be_bytes());
    out.extend_from_slice(&u32::try_from(count).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&media.frames[..count * media.frame_bytes]);
    out
}

/// Parses a media file's bytes.
///
/// # Errors
/// A wrong magic or version, a length that disagrees with the header, or media that cannot be
/// played.
pub fn decode(b: &[u8]) -> Result<PlayMedia, MediaFileError> {
    let head = b.get(..HEADER).ok_or(MediaFileError::Length {
        got: b.len() as u64,
        want: HEADER as u64,
    })?;
    if &head[..8] != MAGIC {
        return Err(MediaFileError::Magic);
    }
    let be32 = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let kind = match head[9] {
        0 => MediaKind::Audio,
        1 => MediaKind::TelephoneEvent,
        k => return Err(MediaFileError::Kind(k)),
    };
    let frame_bytes = usize::from(u16::from_be_bytes([head[10], head[11]]));
    let mut ptime = [0u8; 8];
    ptime.copy_from_slice(&head[16..24]);
    let count = be32(24) as usize;
    let want = (HEADER as u64).saturating_add((count as u64).saturating_mul(frame_bytes as u64));
    if b.len() as u64 != want {
        return Err(MediaFileError::Length {
            got: b.len() as u64,
            want,
        });
    }
    let media = PlayMedia {
        payload_type: head[8],
        frame_bytes,
        samples_per_frame: be32(12),
        ptime_ns: u64::from_be_bytes(ptime),
        frames: b[HEADER..].to_vec(),
        kind,
    };
    media.validate()?;
    Ok(media)
}

/// Reads the media file at `path` (on a control thread, never a worker).
///
/// # Errors
/// The file cannot be read, or [`decode`] rejects it.
pub fn read(path: &Path) -> Result<PlayMedia, MediaFileError> {
    decode(&std::fs::read(path)?)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over `path` (and the directory synced), so a crash leaves the old file or the new
/// one, never a part.
///
/// # Errors
/// The directory is not writable or the disk is full.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("media");
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

static TMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    fn audio() -> PlayMedia {
        PlayMedia {
            payload_type: 8,
            frame_bytes: 160,
            samples_per_frame: 160,
            ptime_ns: 20_000_000,
            frames: (0..480).map(|i| i as u8).collect(),
            kind: MediaKind::Audio,
        }
    }

    #[test]
    fn round_trips_audio_and_events() {
        for m in [audio(), PlayMedia::telephone_events(101, "12#")] {
            let b = encode(&m);
            assert_eq!(b.len(), HEADER + m.frames.len());
            assert_eq!(decode(&b).expect("decodes"), m);
        }
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error() {
        let b = encode(&audio());
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "truncated to {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(decode(&long), Err(MediaFileError::Length { .. })));
        let mut magic = b.clone();
        magic[7] = 2;
        assert!(matches!(decode(&magic), Err(MediaFileError::Magic)));
        let mut kind = b.clone();
        kind[9] = 7;
        assert!(matches!(decode(&kind), Err(MediaFileError::Kind(7))));
        let mut pt = b.clone();
        pt[8] = 200;
        assert!(matches!(decode(&pt), Err(MediaFileError::Media(_))));
        // A frame count that would overflow the length computation is only a length error.
        let mut huge = b;
        huge[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        huge[10..12].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(decode(&huge), Err(MediaFileError::Length { .. })));
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = std::env::temp_dir().join(format!("voxedge-mediafile-{}", std::process::id()));
        let path = dir.join("ab").join("x.pcma");
        write_atomic(&path, &encode(&audio())).expect("writes");
        assert_eq!(read(&path).expect("reads"), audio());
        let other = PlayMedia::telephone_events(96, "9");
        write_atomic(&path, &encode(&other)).expect("replaces");
        assert_eq!(read(&path).expect("reads"), other);
        let left: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("lists")
            .collect();
        assert_eq!(left.len(), 1, "no temporary files left");
        let _ = std::fs::remove_dir_all(dir);
    }
}
