//! Counters: drop reasons, per-stream counts, and RFC 3550 receive statistics (loss, jitter).
//!
//! Everything here is plain integers owned by one worker; publishing to other threads happens
//! elsewhere (see [`crate::worker::WorkerShared`]).

use serde::Serialize;

use crate::wire::WireError;

/// Why a packet was not forwarded. Each reason is one bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The datagram is not a valid RTP packet (on an RTP stream, not muxed RTCP).
    RtpMalformed(WireError),
    /// The datagram is not a valid RTCP compound packet.
    RtcpMalformed(WireError),
    /// A raw frame failed Ethernet/IP/UDP validation (frame-level backends).
    FrameMalformed(WireError),
    /// STUN, DTLS or unrecognised bytes on a media port.
    UnsupportedPayload,
    /// A packet for a port with no stream (e.g. just deleted).
    UnknownStream,
    /// Strict source: the packet came from an address other than the stream's remote.
    SourceMismatch,
    /// The other leg has no remote address yet (not given and not latched).
    NoRemote,
    /// The datagram did not fit the receive buffer.
    Oversize,
    /// The backend could not transmit (e.g. kernel send buffer full).
    TxFailed,
    /// The relay is blocked by command.
    Blocked,
    /// The egress stream is playing media; what the other leg sends is held back.
    Superseded,
}

/// Number of distinct drop-reason slots (see [`DropReason::slot`]).
pub const DROP_SLOTS: usize = 3 * WireError::ALL.len() + 8;

impl DropReason {
    /// Dense index for counter arrays.
    pub fn slot(self) -> usize {
        let n = WireError::ALL.len();
        let wire = |e: WireError| WireError::ALL.iter().position(|x| *x == e).unwrap_or(0);
        match self {
            DropReason::RtpMalformed(e) => wire(e),
            DropReason::RtcpMalformed(e) => n + wire(e),
            DropReason::FrameMalformed(e) => 2 * n + wire(e),
            DropReason::UnsupportedPayload => 3 * n,
            DropReason::UnknownStream => 3 * n + 1,
            DropReason::SourceMismatch => 3 * n + 2,
            DropReason::NoRemote => 3 * n + 3,
            DropReason::Oversize => 3 * n + 4,
            DropReason::TxFailed => 3 * n + 5,
            DropReason::Blocked => 3 * n + 6,
            DropReason::Superseded => 3 * n + 7,
        }
    }

    /// Inverse of [`DropReason::slot`].
    pub fn from_slot(slot: usize) -> Option<DropReason> {
        let n = WireError::ALL.len();
        Some(match slot {
            s if s < n => DropReason::RtpMalformed(WireError::ALL[s]),
            s if s < 2 * n => DropReason::RtcpMalformed(WireError::ALL[s - n]),
            s if s < 3 * n => DropReason::FrameMalformed(WireError::ALL[s - 2 * n]),
            s => match s - 3 * n {
                0 => DropReason::UnsupportedPayload,
                1 => DropReason::UnknownStream,
                2 => DropReason::SourceMismatch,
                3 => DropReason::NoRemote,
                4 => DropReason::Oversize,
                5 => DropReason::TxFailed,
                6 => DropReason::Blocked,
                7 => DropReason::Superseded,
                _ => return None,
            },
        })
    }

    /// `(reason, detail)` metric labels; `detail` is the wire error for malformed packets.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            DropReason::RtpMalformed(e) => ("rtp_malformed", e.as_str()),
            DropReason::RtcpMalformed(e) => ("rtcp_malformed", e.as_str()),
            DropReason::FrameMalformed(e) => ("frame_malformed", e.as_str()),
            DropReason::UnsupportedPayload => ("unsupported_payload", ""),
            DropReason::UnknownStream => ("unknown_stream", ""),
            DropReason::SourceMismatch => ("source_mismatch", ""),
            DropReason::NoRemote => ("no_remote", ""),
            DropReason::Oversize => ("oversize", ""),
            DropReason::TxFailed => ("tx_failed", ""),
            DropReason::Blocked => ("blocked", ""),
            DropReason::Superseded => ("superseded", ""),
        }
    }
}

/// Drop counters indexed by [`DropReason::slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCounters(pub [u64; DROP_SLOTS]);

impl Default for DropCounters {
    fn default() -> Self {
        Self([0; DROP_SLOTS])
    }
}

impl DropCounters {
    #[inline]
    pub fn count(&mut self, reason: DropReason) {
        self.0[reason.slot()] += 1;
    }
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.slot()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// Non-zero reasons with their counts.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .filter_map(|(s, c)| DropReason::from_slot(s).map(|r| (r, *c)))
    }
}

const RTP_SEQ_MOD: u32 = 1 << 16;
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const MIN_SEQUENTIAL: u8 = 2;

/// RFC 3550 appendix A.1/A.3/A.8 receiver state for one source.
///
/// Sequence tracking with probation, cumulative loss (expected − received, may be negative
/// with duplicates) and interarrival jitter in timestamp units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpReceiveStats {
    ssrc: u32,
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u8,
    received: u64,
    /// Relative transit of the previous packet, in timestamp units (wrapping).
    transit: u32,
    /// Jitter estimate × 16, as in RFC 3550 A.8.
    jitter_q4: u32,
    have_transit: bool,
    started: bool,
}

impl RtpReceiveStats {
    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
    }

    /// Resets on a new SSRC: a new source starts new statistics (RFC 3550 §8.2 spirit).
    fn restart(&mut self, ssrc: u32, seq: u16) {
        *self = RtpReceiveStats {
            ssrc,
            started: true,
            ..Default::default()
        };
        self.init_seq(seq);
        self.max_seq = seq.wrapping_sub(1);
        self.probation = MIN_SEQUENTIAL;
    }

    /// Accounts one RTP packet. `arrival_ts` is the arrival time in the stream's RTP clock units.
    /// Returns false when the packet was judged a probation/misorder outlier (still relayed).
    pub fn update(&mut self, ssrc: u32, seq: u16, rtp_ts: u32, arrival_ts: u32) -> bool {
        if !self.started || ssrc != self.ssrc {
            self.restart(ssrc, seq);
        }
        let valid = self.update_seq(seq);
        if valid {
            let transit = arrival_ts.wrapping_sub(rtp_ts);
            if self.have_transit {
                let d = transit.wrapping_sub(self.transit) as i32;
                let d = d.unsigned_abs();
                // J += (|D| - J) / 16, kept scaled by 16 (A.8).
                let j = self.jitter_q4 as i64;
                let nj = j + i64::from(d) - ((j + 8) >> 4);
                self.jitter_q4 = nj.clamp(0, i64::from(u32::MAX)) as u32;
            }
            self.transit = transit;
            self.have_transit = true;
        }
        valid
    }

    /// RFC 3550 A.1 `update_seq`.
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        } else if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets after a big jump: the source restarted.
                self.init_seq(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        // else: duplicate or reordered packet, counted as received.
        self.received += 1;
        true
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Highest sequence number seen, extended with wrap cycles.
    pub fn extended_max_seq(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Expected − received since the source was validated (A.3); negative with duplicates.
    pub fn cumulative_lost(&self) -> i64 {
        if !self.started || self.probation > 0 {
            return 0;
        }
        let expected = i64::from(self.extended_max_seq()) - i64::from(self.base_seq) + 1;
        expected - self.received as i64
    }

    /// Interarrival jitter in timestamp units (A.8).
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }
}

/// Per-stream drops, by coarse reason (the worker keeps the fine-grained reasons).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StreamDrops {
    pub malformed: u32,
    pub unsupported: u32,
    pub source_mismatch: u32,
    pub no_remote: u32,
    /// Blocked by command, or held back while the egress stream plays media.
    pub blocked: u32,
    pub tx_failed: u32,
}

impl StreamDrops {
    #[inline]
    pub fn count(&mut self, reason: DropReason) {
        let slot = match reason {
            DropReason::RtpMalformed(_)
            | DropReason::RtcpMalformed(_)
            | DropReason::FrameMalformed(_)
            | DropReason::Oversize => &mut self.malformed,
            DropReason::UnsupportedPayload | DropReason::UnknownStream => &mut self.unsupported,
            DropReason::SourceMismatch => &mut self.source_mismatch,
            DropReason::NoRemote => &mut self.no_remote,
            DropReason::Blocked | DropReason::Superseded => &mut self.blocked,
            DropReason::TxFailed => &mut self.tx_failed,
        };
        *slot = slot.saturating_add(1);
    }

    pub fn total(&self) -> u64 {
        [
            self.malformed,
            self.unsupported,
            self.source_mismatch,
            self.no_remote,
            self.blocked,
            self.tx_failed,
        ]
        .iter()
        .map(|v| u64::from(*v))
        .sum()
    }
}

/// Per-stream counters as reported to the control plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StreamCounters {
    /// Packets received on this stream's local port.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Of those, RTCP packets.
    pub rtcp_in: u64,
    /// Packets that arrived here and were handed to the other leg's port for sending.
    pub packets_forwarded: u64,
    /// Packets handed to this stream's port for sending (from the other leg).
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Packets received here and not forwarded, by reason; `tx_failed` counts on the
    /// sending stream.
    pub drops: StreamDrops,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        for s in 0..DROP_SLOTS {
            let r = DropReason::from_slot(s).expect("slot in range");
            assert_eq!(r.slot(), s);
        }
        assert_eq!(DropReason::from_slot(DROP_SLOTS), None);
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut s = RtpReceiveStats::default();
        for i in 0..1000u32 {
            s.update(7, (65000u32 + i) as u16, i * 160, i * 160 + 5);
        }
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.jitter(), 0);
        assert!(s.extended_max_seq() > 65535, "wrap is extended");
    }

    #[test]
    fn loss_is_counted() {
        let mut s = RtpReceiveStats::default();
        for i in 0..100u32 {
            if i % 10 == 5 {
                continue;
            }
            s.update(1, i as u16, i * 160, i * 160);
        }
        assert_eq!(s.cumulative_lost(), 10);
    }

    #[test]
    fn jitter_tracks_variation() {
        let mut s = RtpReceiveStats::default();
        for i in 0..2000u32 {
            let wobble = if i % 2 == 0 { 0 } else { 80 };
            s.update(1, i as u16, i * 160, i * 160 + wobble);
        }
        // |D| is 80 every packet; J converges to 80.
        assert!((75..=80).contains(&s.jitter()), "jitter {}", s.jitter());
    }

    #[test]
    fn new_ssrc_restarts() {
        let mut s = RtpReceiveStats::default();
        for i in 0..10u32 {
            s.update(1, i as u16, i * 160, i * 160);
        }
        for i in 0..10u32 {
            s.update(2, (5000 + i) as u16, i * 160, i * 160);
        }
        assert_eq!(s.ssrc(), 2);
        assert_eq!(s.cumulative_lost(), 0);
    }
}
