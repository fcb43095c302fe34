//! Media playback: a worker sends prepared RTP payloads out of a stream's port, paced in real
//! time, in place of what the other leg would send (prompts, synthesized speech, hold music).
//!
//! The control plane encodes the media once ([`PlayMedia`]: whole frames of one payload type)
//! and shares it by `Arc`; the worker only copies one frame per packet into a transmit buffer
//! and writes a 12-byte RTP header. While a stream plays, packets the other leg sends towards
//! it are dropped (counted as [`crate::stats::DropReason::Superseded`]), so the far end hears
//! one source. With SSRC rewriting on, played packets go through the stream's egress map like
//! forwarded ones, so the far end sees one continuous RTP stream before, during and after.

use std::sync::Arc;

use crate::ids::{RelayId, Side, StreamIdx};
use crate::table::Stream;

/// Encoded media for playback: `frames.len() / frame_bytes` frames of `payload_type`, each
/// `samples_per_frame` samples of the stream's clock, sent every `ptime_ns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayMedia {
    pub payload_type: u8,
    pub frame_bytes: usize,
    pub samples_per_frame: u32,
    pub ptime_ns: u64,
    /// Concatenated frames (any trailing partial frame is never sent).
    pub frames: Vec<u8>,
    pub kind: MediaKind,
}

/// What the frames of a [`PlayMedia`] hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MediaKind {
    /// Audio: each frame is one packet's payload; timestamps advance by a frame each packet.
    #[default]
    Audio,
    /// RFC 4733 telephone-events: each 8-byte frame is one packet slot, the event's start
    /// (RTP timestamp offset from the media's start, big-endian `u32`; [`NO_PACKET`] for a
    /// silent slot) followed by the 4-byte event payload. Packets of one event share its start
    /// timestamp; the first carries the marker bit.
    TelephoneEvent,
}

/// Timestamp offset of a [`MediaKind::TelephoneEvent`] slot that sends nothing (a pause).
pub const NO_PACKET: u32 = u32::MAX;

/// Length of one telephone-event digit and of the gap after it.
pub const DIGIT_MS: u32 = 100;
/// Pause for `w` in a digit string (Twilio's half second).
pub const DIGIT_WAIT_MS: u32 = 500;
/// Copies of a telephone-event's end packet (RFC 4733 §2.5.1.4).
pub const END_COPIES: u32 = 3;
/// Volume of generated digits (−10 dBm0).
const DIGIT_VOLUME: u8 = 10;

/// Why a [`PlayMedia`] cannot be played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlayMediaError {
    #[error("payload type {0} is not a 7-bit RTP payload type")]
    PayloadType(u8),
    #[error("frame size {0} bytes is not between 1 and {1}")]
    FrameSize(usize, usize),
    #[error("packet time must be between 1 ms and 1 s")]
    Ptime,
    #[error("media has no whole frame")]
    Empty,
    #[error("telephone-event frames are 8 bytes, not {0}")]
    EventFrame(usize),
}

/// Largest payload of a played packet (fits every backend's buffer with headers).
pub const FRAME_BYTES_MAX: usize = 1200;
/// RTP fixed header written in front of each frame.
pub const RTP_HEADER: usize = 12;

impl PlayMedia {
    /// RFC 4733 telephone-events for `digits` (`0`–`9`, `*`, `#`, `A`–`D`; `w` waits half a
    /// second; anything else is skipped) on payload type `payload_type` of an 8 kHz clock,
    /// one packet per 20 ms: each digit lasts [`DIGIT_MS`] with growing durations, its end
    /// packet is sent [`END_COPIES`] times, and a gap of [`DIGIT_MS`] follows.
    pub fn telephone_events(payload_type: u8, digits: &str) -> PlayMedia {
        Self::telephone_events_timed(payload_type, digits, DIGIT_MS, DIGIT_MS, DIGIT_VOLUME)
    }

    /// As [`PlayMedia::telephone_events`], with each digit lasting `digit_ms` (100 ms to 5 s),
    /// followed by `gap_ms` (at least the end packet's copies, 40 ms; at most 5 s), at
    /// `volume` (−dBm0, 0–63, RFC 4733's volume field).
    pub fn telephone_events_timed(
        payload_type: u8,
        digits: &str,
        digit_ms: u32,
        gap_ms: u32,
        volume: u8,
    ) -> PlayMedia {
        const SLOT: u32 = 160;
        const SLOT_MS: u32 = 20;
        let volume = volume.min(63);
        let mut frames = Vec::new();
        let mut slot = 0u32;
        let push = |frames: &mut Vec<u8>, offset: u32, payload: [u8; 4]| {
            frames.extend_from_slice(&offset.to_be_bytes());
            frames.extend_from_slice(&payload);
        };
        for c in digits.chars() {
            let event = match c {
                '0'..='9' => c as u8 - b'0',
                '*' => 10,
                '#' => 11,
                'A'..='D' => c as u8 - b'A' + 12,
                'a'..='d' => c as u8 - b'a' + 12,
                'w' | 'W' => {
                    for _ in 0..DIGIT_WAIT_MS / SLOT_MS {
                        push(&mut frames, NO_PACKET, [0; 4]);
                        slot += 1;
                    }
                    continue;
                }
                _ => continue,
            };
            let start = slot * SLOT;
            let packets = digit_ms.clamp(100, 5000) / SLOT_MS;
            for i in 1..=packets {
                let end = if i == packets { 0x80 } else { 0 };
                let duration = u16::try_from(i * SLOT).unwrap_or(u16::MAX).to_be_bytes();
                let payload = [event, end | volume, duration[0], duration[1]];
                push(&mut frames, start, payload);
                slot += 1;
            }
            let end = u16::try_from(packets * SLOT)
                .unwrap_or(u16::MAX)
                .to_be_bytes();
            let gap = (gap_ms.min(5000) / SLOT_MS).max(END_COPIES - 1);
            for i in 0..gap {
                if i + 1 < END_COPIES {
                    push(&mut frames, start, [event, 0x80 | volume, end[0], end[1]]);
                } else {
                    push(&mut frames, NO_PACKET, [0; 4]);
                }
                slot += 1;
            }
        }
        PlayMedia {
            payload_type,
            frame_bytes: 8,
            samples_per_frame: SLOT,
            ptime_ns: u64::from(SLOT_MS) * 1_000_000,
            frames,
            kind: MediaKind::TelephoneEvent,
        }
    }

    /// Playing time of one pass, in nanoseconds.
    pub fn length_ns(&self) -> u64 {
        self.ptime_ns
            .saturating_mul(u64::try_from(self.frame_count()).unwrap_or(u64::MAX))
    }

    /// Checks the media can be played.
    ///
    /// # Errors
    /// A payload type over 127, a frame size of 0 or over [`FRAME_BYTES_MAX`], a packet time
    /// outside 1 ms–1 s, or no whole frame.
    pub fn validate(&self) -> Result<(), PlayMediaError> {
        if self.payload_type > 127 {
            return Err(PlayMediaError::PayloadType(self.payload_type));
        }
        if self.frame_bytes == 0 || self.frame_bytes > FRAME_BYTES_MAX {
            return Err(PlayMediaError::FrameSize(self.frame_bytes, FRAME_BYTES_MAX));
        }
        if !(1_000_000..=1_000_000_000).contains(&self.ptime_ns) {
            return Err(PlayMediaError::Ptime);
        }
        if self.frame_count() == 0 {
            return Err(PlayMediaError::Empty);
        }
        if self.kind == MediaKind::TelephoneEvent && self.frame_bytes != 8 {
            return Err(PlayMediaError::EventFrame(self.frame_bytes));
        }
        Ok(())
    }

    /// Whole frames in the media.
    pub fn frame_count(&self) -> usize {
        self.frames.len().checked_div(self.frame_bytes).unwrap_or(0)
    }

    fn frame(&self, i: usize) -> &[u8] {
        let start = i * self.frame_bytes;
        self.frames
            .get(start..start + self.frame_bytes)
            .unwrap_or(&[])
    }
}

/// How far behind schedule a player may fall before it skips ahead instead of sending a burst
/// to catch up (a stalled worker must not blast the far end's jitter buffer).
const CATCH_UP_NS: u64 = 60_000_000;

/// One playback in progress on a stream (worker-owned, plain data plus the shared media).
#[derive(Debug)]
pub struct Player {
    pub stream: StreamIdx,
    pub relay: RelayId,
    pub side: Side,
    pub id: u64,
    media: Arc<PlayMedia>,
    frame: usize,
    /// Further passes over the media after the current one; `u32::MAX` plays until stopped.
    loops_left: u32,
    pub next_due_ns: u64,
    ssrc: u32,
    seq: u16,
    ts: u32,
    /// Timestamp of the current pass's first frame (telephone-events count from it).
    pass_ts: u32,
    /// Start offset of the last telephone-event sent (a new one carries the marker bit).
    last_event: u32,
    first: bool,
}

/// What [`Player::next_packet`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A packet of this many bytes is in the buffer.
    Packet(usize),
    /// Nothing due yet.
    NotDue,
    /// The media ran out (all loops played).
    Finished,
}

impl Player {
    /// A player starting now. `loops` of 0 means until stopped. `seed` varies the SSRC and
    /// initial sequence number and timestamp between playbacks (RFC 3550 wants them random).
    pub fn new(
        stream: StreamIdx,
        s: &Stream,
        id: u64,
        media: Arc<PlayMedia>,
        loops: u32,
        now_ns: u64,
        seed: u64,
    ) -> Self {
        let mix = splitmix(seed ^ id.rotate_left(17) ^ s.relay.0);
        let ts = (mix >> 48) as u32 ^ (mix as u32).rotate_left(7);
        Player {
            stream,
            relay: s.relay,
            side: s.side,
            id,
            media,
            frame: 0,
            loops_left: if loops == 0 { u32::MAX } else { loops - 1 },
            next_due_ns: now_ns,
            ssrc: mix as u32,
            seq: (mix >> 32) as u16,
            ts,
            pass_ts: ts,
            last_event: NO_PACKET,
            first: true,
        }
    }

    /// Writes the next frame as an RTP packet into `buf` if it is due at `now_ns`.
    ///
    /// The stream's egress rewrite (when enabled) maps the player's SSRC/seq/ts so the far
    /// end sees a continuous stream.
    pub fn next_packet(&mut self, out: &mut Stream, buf: &mut [u8], now_ns: u64) -> Step {
        loop {
            if now_ns < self.next_due_ns {
                return Step::NotDue;
            }
            if self.frame >= self.media.frame_count() {
                if self.loops_left == 0 {
                    return Step::Finished;
                }
                if self.loops_left != u32::MAX {
                    self.loops_left -= 1;
                }
                self.frame = 0;
                self.pass_ts = self.ts;
                // A new pass starts new events: the first packet of each carries the marker.
                self.last_event = NO_PACKET;
            }
            let frame = self.media.frame(self.frame);
            let (payload, ts, marker) = match self.media.kind {
                MediaKind::Audio => (frame, self.ts, self.first),
                MediaKind::TelephoneEvent => {
                    let (offset, payload) = frame.split_at(4.min(frame.len()));
                    let offset = u32::from_be_bytes(offset.try_into().unwrap_or([0xff; 4]));
                    if offset == NO_PACKET {
                        // A pause: the slot passes without a packet.
                        self.advance(now_ns);
                        continue;
                    }
                    let marker = offset != self.last_event;
                    self.last_event = offset;
                    (payload, self.pass_ts.wrapping_add(offset), marker)
                }
            };
            let len = RTP_HEADER + payload.len();
            let Some(dst) = buf.get_mut(..len) else {
                return Step::Finished;
            };
            let (mut ssrc, mut seq, mut ts) = (self.ssrc, self.seq, ts);
            if out.rewrite {
                let w = out.egress.map(ssrc, seq, ts, now_ns, out.clock_rate_hz);
                (ssrc, seq, ts) = (w.ssrc, w.seq, w.ts);
            }
            dst[0] = 0x80;
            dst[1] = self.media.payload_type | if marker { 0x80 } else { 0 };
            dst[2..4].copy_from_slice(&seq.to_be_bytes());
            dst[4..8].copy_from_slice(&ts.to_be_bytes());
            dst[8..12].copy_from_slice(&ssrc.to_be_bytes());
            dst[RTP_HEADER..].copy_from_slice(payload);
            self.first = false;
            self.seq = self.seq.wrapping_add(1);
            self.advance(now_ns);
            return Step::Packet(len);
        }
    }

    /// Moves to the next frame slot: the timestamp counts media, the next one is due a packet
    /// time later.
    fn advance(&mut self, now_ns: u64) {
        self.frame += 1;
        self.ts = self.ts.wrapping_add(self.media.samples_per_frame);
        self.next_due_ns += self.media.ptime_ns;
        if now_ns.saturating_sub(self.next_due_ns) > CATCH_UP_NS {
            // Far behind (the worker stalled): resume the pace from now; the timestamp keeps
            // counting media, so the far end sees a gap in arrival only.
            self.next_due_ns = now_ns + self.media.ptime_ns;
        }
    }
}

/// SplitMix64 finaliser: spreads a seed into SSRCs and initial sequence numbers.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Component, PortHandle};

    fn media(frames: usize) -> Arc<PlayMedia> {
        Arc::new(PlayMedia {
            payload_type: 0,
            frame_bytes: 160,
            samples_per_frame: 160,
            ptime_ns: 20_000_000,
            frames: (0..frames * 160).map(|i| (i / 160) as u8).collect(),
            kind: MediaKind::Audio,
        })
    }

    fn stream() -> Stream {
        Stream::new(PortHandle(0), RelayId(1), Side::A, Component::Rtp, 0)
    }

    #[test]
    fn paces_frames_and_finishes() {
        let mut s = stream();
        let mut p = Player::new(StreamIdx(0), &stream(), 7, media(3), 1, 0, 1);
        let mut buf = [0u8; 2048];
        let mut headers = Vec::new();
        let mut t = 0;
        for _ in 0..10 {
            match p.next_packet(&mut s, &mut buf, t) {
                Step::Packet(n) => {
                    assert_eq!(n, 172);
                    assert_eq!(buf[0], 0x80);
                    headers.push((
                        buf[1],
                        u16::from_be_bytes([buf[2], buf[3]]),
                        u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                        buf[12],
                    ));
                    // Not due again until 20 ms later.
                    assert_eq!(
                        p.next_packet(&mut s, &mut buf, t + 19_999_999),
                        Step::NotDue
                    );
                }
                Step::Finished => break,
                Step::NotDue => unreachable!("always due at the pace"),
            }
            t += 20_000_000;
        }
        assert_eq!(headers.len(), 3);
        assert_eq!(headers[0].0, 0x80, "marker on the first packet");
        assert_eq!(headers[1].0, 0);
        for w in headers.windows(2) {
            assert_eq!(w[1].1, w[0].1.wrapping_add(1));
            assert_eq!(w[1].2, w[0].2.wrapping_add(160));
        }
        assert_eq!(
            headers.iter().map(|h| h.3).collect::<Vec<_>>(),
            [0, 1, 2],
            "frames in order"
        );
    }

    #[test]
    fn loops_and_forever() {
        let mut s = stream();
        let mut buf = [0u8; 2048];
        let count = |p: &mut Player, s: &mut Stream, buf: &mut [u8]| {
            let mut n = 0;
            for i in 0..100u64 {
                match p.next_packet(s, buf, i * 20_000_000) {
                    Step::Packet(_) => n += 1,
                    Step::Finished => break,
                    Step::NotDue => {}
                }
            }
            n
        };
        let mut p = Player::new(StreamIdx(0), &stream(), 1, media(2), 3, 0, 0);
        assert_eq!(count(&mut p, &mut s, &mut buf), 6);
        let mut p = Player::new(StreamIdx(0), &stream(), 1, media(2), 0, 0, 0);
        assert_eq!(
            count(&mut p, &mut s, &mut buf),
            100,
            "0 loops plays until stopped"
        );
    }

    #[test]
    fn stalled_worker_skips_ahead_instead_of_bursting() {
        let mut s = stream();
        let mut buf = [0u8; 2048];
        let mut p = Player::new(StreamIdx(0), &stream(), 1, media(50), 1, 0, 0);
        assert!(matches!(
            p.next_packet(&mut s, &mut buf, 0),
            Step::Packet(_)
        ));
        // One second late: one packet now, then the pace resumes from now.
        let late = 1_000_000_000;
        assert!(matches!(
            p.next_packet(&mut s, &mut buf, late),
            Step::Packet(_)
        ));
        assert_eq!(p.next_packet(&mut s, &mut buf, late + 1), Step::NotDue);
        assert!(matches!(
            p.next_packet(&mut s, &mut buf, late + 20_000_000),
            Step::Packet(_)
        ));
    }

    #[test]
    fn rewrite_keeps_the_far_end_stream_continuous() {
        let mut s = stream();
        s.rewrite = true;
        // A forwarded packet established the outgoing SSRC.
        let first = s.egress.map(0xabcd, 100, 1000, 0, 8000);
        let mut buf = [0u8; 2048];
        let mut p = Player::new(StreamIdx(0), &stream(), 1, media(2), 1, 20_000_000, 9);
        assert!(matches!(
            p.next_packet(&mut s, &mut buf, 20_000_000),
            Step::Packet(_)
        ));
        assert_eq!(
            u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            first.ssrc
        );
        assert_eq!(
            u16::from_be_bytes([buf[2], buf[3]]),
            first.seq.wrapping_add(1)
        );
    }

    #[test]
    fn validation() {
        let ok = PlayMedia {
            payload_type: 8,
            frame_bytes: 160,
            samples_per_frame: 160,
            ptime_ns: 20_000_000,
            frames: vec![0; 320],
            kind: MediaKind::Audio,
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            PlayMedia {
                payload_type: 128,
                ..ok.clone()
            },
            PlayMedia {
                frame_bytes: 0,
                ..ok.clone()
            },
            PlayMedia {
                frame_bytes: 5000,
                ..ok.clone()
            },
            PlayMedia {
                ptime_ns: 0,
                ..ok.clone()
            },
            PlayMedia {
                frames: vec![0; 159],
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }

    #[test]
    fn a_looped_digit_marks_the_first_packet_of_every_pass() {
        let media = Arc::new(PlayMedia::telephone_events(101, "5"));
        let mut s = stream();
        let mut p = Player::new(StreamIdx(0), &stream(), 3, media, 3, 0, 5);
        let mut buf = [0u8; 64];
        let (mut marked, mut t) = (0, 0u64);
        loop {
            match p.next_packet(&mut s, &mut buf, t) {
                Step::Packet(_) => marked += usize::from(buf[1] & 0x80 != 0),
                Step::NotDue => t += 20_000_000,
                Step::Finished => break,
            }
            assert!(t < 2_000_000_000, "bounded");
        }
        assert_eq!(marked, 3, "one marker per pass");
    }

    #[test]
    fn telephone_events_have_growing_durations_end_copies_and_one_timestamp_per_digit() {
        let media = Arc::new(PlayMedia::telephone_events(101, "1w#"));
        assert_eq!(media.validate(), Ok(()));
        // 1: 5 tone slots + 5 gap slots; w: 25 slots; #: 10 slots.
        assert_eq!(media.frame_count(), 45);
        assert_eq!(media.length_ns(), 900_000_000);
        let mut s = stream();
        let mut p = Player::new(StreamIdx(0), &stream(), 3, media, 1, 0, 5);
        let mut buf = [0u8; 64];
        let mut sent = Vec::new();
        let mut t = 0u64;
        loop {
            match p.next_packet(&mut s, &mut buf, t) {
                Step::Packet(n) => {
                    assert_eq!(n, 16);
                    sent.push((
                        t / 20_000_000,
                        buf[1],
                        u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                        [
                            buf[12],
                            buf[13],
                            u16::from_be_bytes([buf[14], buf[15]]) as u8,
                        ],
                        u16::from_be_bytes([buf[14], buf[15]]),
                    ));
                }
                Step::NotDue => t += 20_000_000,
                Step::Finished => break,
            }
            assert!(t < 2_000_000_000, "bounded");
        }
        // Per digit: 5 packets (the 5th ends the event) and 2 more copies of the end.
        assert_eq!(sent.len(), 14);
        let (one, hash) = sent.split_at(7);
        let ts1 = one[0].2;
        for (i, (slot, m_pt, ts, ev, dur)) in one.iter().enumerate() {
            assert_eq!(*slot, i as u64, "one packet per 20 ms");
            assert_eq!(
                *m_pt,
                if i == 0 { 0x80 | 101 } else { 101 },
                "marker on the first"
            );
            assert_eq!(*ts, ts1, "one timestamp for the event");
            assert_eq!(ev[0], 1);
            let ended = i >= 4;
            assert_eq!(ev[1] & 0x80 != 0, ended, "E bit from the 5th packet");
            assert_eq!(ev[1] & 0x3f, 10, "volume");
            assert_eq!(
                *dur,
                160 * (i.min(4) as u16 + 1),
                "duration grows, then stays"
            );
        }
        // `#` starts after the first digit (10 slots) and the half-second wait (25 slots).
        assert_eq!(hash[0].0, 35);
        assert_eq!(hash[0].1, 0x80 | 101);
        assert_eq!(hash[0].2, ts1.wrapping_add(35 * 160));
        assert!(hash.iter().all(|h| h.3[0] == 11 && h.2 == hash[0].2));
    }
}
