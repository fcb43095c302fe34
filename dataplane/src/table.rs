//! The stream table a worker owns: a slab of streams plus a port-handle index.
//!
//! A *stream* is one local port (RTP, or RTCP on its own port) of one leg. A *relay* joins the
//! streams of two legs: what arrives on leg A's port leaves through leg B's port towards B's
//! remote, and the reverse. Lookup per packet is two array indexings, no hashing (recording
//! taps, few, sit in a map consulted only for streams flagged as recording).

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::BURST_SIZE_MAX;
use crate::ids::{Component, PortHandle, RelayId, Side, StreamIdx};
use crate::memhint::{advise_huge_pages, prefetch};
use crate::mixer::MixRef;
use crate::recorder::RecordTap;
use crate::rewrite::EgressRewrite;
use crate::stats::{RtpReceiveStats, StreamCounters, StreamDrops};

/// `Stream::dtmf_pt` of a stream without telephone events: RTP payload types have seven bits,
/// so no packet's type equals it.
pub const NO_DTMF_PT: u8 = 0xff;

/// How many packets ahead of the one being processed [`StreamTable::for_each_prefetched`]
/// fetches the egress stream (its index is on the ingress stream's line 0, requested before
/// the burst's first packet).
pub const EGRESS_AHEAD: usize = 8;

/// A burst whose streams are being fetched into cache: the ingress stream index of each of
/// its packets as [`StreamTable::stage_ingress`] found it (`u32::MAX`: none).
#[derive(Debug, Clone, Copy)]
pub struct Staged {
    idx: [u32; BURST_SIZE_MAX],
    n: usize,
}

impl Staged {
    /// Packets in the burst.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// How a stream treats the source address of what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourcePolicy {
    /// Drop packets from any address but the stream's remote (given or latched).
    pub strict: bool,
    /// Re-latch the remote to every new source address (RFC 4961 symmetric, roaming peers).
    pub handover: bool,
}

/// One local port of one leg.
///
/// Laid out for the packet path (`repr(C)`, cache-line aligned) so that a forwarded packet
/// touches two lines of each stream it crosses: line 0 holds what both the ingress and the
/// egress stream read (remote, links, flags, last activity); line 1 what only the ingress
/// stream writes (receive counters and RTP receive statistics); line 2 what only the egress
/// stream writes (send counters and the SSRC/seq/ts rewrite state); line 3 what control,
/// RTCP and drops use. `hot_fields_share_their_cache_lines` checks the placement.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
pub struct Stream {
    /// Where packets leaving through this port go: this leg's endpoint.
    pub remote: Option<SocketAddr>,
    /// Stream whose port transmits what arrives here (same component, other leg).
    pub peer: StreamIdx,
    pub port: PortHandle,
    pub clock_rate_hz: u32,
    pub policy: SourcePolicy,
    /// Rewrite SSRC/seq/ts of RTP leaving through this port.
    pub rewrite: bool,
    /// Media arriving here is not relayed to the other leg (conference members still reach
    /// their conference).
    pub blocked: bool,
    /// A player is sending on this stream's port; forwarded RTP towards it is held back.
    pub playing: bool,
    pub timed_out: bool,
    /// The table holds a recording tap for this stream (see [`StreamTable::set_tap`]); a flag
    /// on line 0, so streams not recording cost nothing more.
    pub recording: bool,
    pub component: Component,
    /// RFC 4733 payload type reported as DTMF events, or [`NO_DTMF_PT`] (one byte, not an
    /// `Option`: line 0 has no byte to spare).
    pub dtmf_pt: u8,
    /// The stream is a conference member: its packets go to the mixer (or, in a two-member
    /// conference, to the other member) and its relay partner is not heard; the mixer
    /// restores `peer` when it leaves. On line 0: the forward path tests it on both streams.
    pub in_conference: bool,
    /// Datagrams arriving here are forwarded as they are, not parsed as RTP/RTCP (T.38 UDPTL).
    pub opaque: bool,
    /// The table's slot holds this stream (false: a vacant slot). Kept by the table on line 0,
    /// so telling a live slot from a vacant one reads a line the packet path reads anyway
    /// (`Option<Stream>` put its niche on line 3: a third line per stream per packet).
    live: bool,
    pub last_rx_ns: u64,
    // Line 1: written by packets arriving here.
    /// Packets received on this stream's local port.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Of those, packets handed to the other leg's port (or the mixer).
    pub packets_forwarded: u64,
    pub rx: RtpReceiveStats,
    // Line 2: written by packets leaving here.
    /// Packets handed to this stream's port for sending.
    pub packets_out: u64,
    pub bytes_out: u64,
    pub egress: EgressRewrite,
    // Line 3 (and the end of line 2): RTCP, drops and control.
    /// RTCP packets among `packets_in`.
    pub rtcp_in: u64,
    /// Packets received here and not forwarded, by reason (`tx_failed` on the sending stream).
    pub drops: StreamDrops,
    /// Stream whose port transmits RTCP arriving here (differs from `peer` with rtcp-mux on
    /// one leg only).
    pub rtcp_peer: StreamIdx,
    /// The RTP stream of this leg (itself for RTP streams); RTCP egress uses its SSRC map.
    pub rtp_sibling: StreamIdx,
    pub relay: RelayId,
    pub side: Side,
    pub last_dtmf_ts: Option<u32>,
    /// The member's place in the worker's mixer (read only for members' packets).
    pub mix: MixRef,
}

impl Stream {
    /// A stream not yet linked to a peer (links are set by [`StreamTable::link`]).
    pub fn new(
        port: PortHandle,
        relay: RelayId,
        side: Side,
        component: Component,
        now_ns: u64,
    ) -> Self {
        Stream {
            port,
            peer: StreamIdx(u32::MAX),
            rtcp_peer: StreamIdx(u32::MAX),
            rtp_sibling: StreamIdx(u32::MAX),
            remote: None,
            policy: SourcePolicy::default(),
            rewrite: false,
            blocked: false,
            playing: false,
            timed_out: false,
            recording: false,
            component,
            relay,
            side,
            clock_rate_hz: 8000,
            dtmf_pt: NO_DTMF_PT,
            last_dtmf_ts: None,
            egress: EgressRewrite::default(),
            in_conference: false,
            opaque: false,
            live: false,
            mix: MixRef::default(),
            packets_in: 0,
            bytes_in: 0,
            packets_forwarded: 0,
            rx: RtpReceiveStats::default(),
            packets_out: 0,
            bytes_out: 0,
            rtcp_in: 0,
            drops: StreamDrops::default(),
            last_rx_ns: now_ns,
        }
    }

    /// The stream's counters as reported to the control plane.
    pub fn counters(&self) -> StreamCounters {
        StreamCounters {
            packets_in: self.packets_in,
            bytes_in: self.bytes_in,
            rtcp_in: self.rtcp_in,
            packets_forwarded: self.packets_forwarded,
            packets_out: self.packets_out,
            bytes_out: self.bytes_out,
            drops: self.drops,
        }
    }
}

/// Slab of streams with a dense port-handle index. Capacity is bounded by the caller.
#[derive(Debug, Default)]
pub struct StreamTable {
    /// Live and vacant slots (`Stream::live`); vacant ones are on `free`.
    streams: Vec<Stream>,
    free: Vec<u32>,
    /// `by_port[handle] = stream index + 1`, 0 = no stream.
    by_port: Vec<u32>,
    live: usize,
    /// Recording taps by stream index (few: only streams being recorded).
    taps: HashMap<u32, RecordTap>,
}

impl StreamTable {
    pub fn with_capacity(streams: usize) -> Self {
        let t = StreamTable {
            streams: Vec::with_capacity(streams),
            free: Vec::new(),
            by_port: Vec::with_capacity(streams),
            live: 0,
            taps: HashMap::new(),
        };
        advise_huge_pages(&t.streams);
        advise_huge_pages(&t.by_port);
        t
    }

    /// Starts (`Some`) or stops recording what stream `idx` receives.
    pub fn set_tap(&mut self, idx: StreamIdx, tap: Option<RecordTap>) {
        let Some(s) = self.get_mut(idx) else {
            return;
        };
        s.recording = tap.is_some();
        match tap {
            Some(t) => {
                self.taps.insert(idx.0, t);
            }
            None => {
                self.taps.remove(&idx.0);
            }
        }
    }

    /// A stream and the recording taps (disjoint borrows for the packet path).
    #[inline]
    pub fn get_mut_with_taps(
        &mut self,
        idx: StreamIdx,
    ) -> Option<(&mut Stream, &HashMap<u32, RecordTap>)> {
        let s = self.streams.get_mut(idx.0 as usize).filter(|s| s.live)?;
        Some((s, &self.taps))
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Upper bound of stream indices ever used (for sweeps).
    pub fn slots(&self) -> usize {
        self.streams.len()
    }

    /// Inserts a stream and indexes it by its port.
    pub fn insert(&mut self, mut stream: Stream) -> StreamIdx {
        let port = stream.port.0 as usize;
        stream.live = true;
        let idx = match self.free.pop() {
            Some(i) => {
                self.streams[i as usize] = stream;
                i
            }
            None => {
                reserve_advised(&mut self.streams, 1);
                self.streams.push(stream);
                (self.streams.len() - 1) as u32
            }
        };
        if self.by_port.len() <= port {
            let more = port + 1 - self.by_port.len();
            reserve_advised(&mut self.by_port, more);
            self.by_port.resize(port + 1, 0);
        }
        self.by_port[port] = idx + 1;
        self.live += 1;
        StreamIdx(idx)
    }

    /// Removes a stream, returning it. Its peers must be removed too (relays go as a whole).
    pub fn remove(&mut self, idx: StreamIdx) -> Option<Stream> {
        let slot = self.get_mut_slot(idx)?;
        let vacant = Stream::new(
            PortHandle(u32::MAX),
            slot.relay,
            slot.side,
            slot.component,
            0,
        );
        let mut s = std::mem::replace(slot, vacant);
        s.live = false;
        if let Some(slot) = self.by_port.get_mut(s.port.0 as usize) {
            if *slot == idx.0 + 1 {
                *slot = 0;
            }
        }
        self.free.push(idx.0);
        self.live -= 1;
        self.taps.remove(&idx.0);
        Some(s)
    }

    /// Processes a burst of packets that arrived on `ports`, calling `f(table, i)` for each
    /// in order, with the cache lines packet `i + k` will use prefetched while packet `i` is
    /// processed: lines 0 and 1 of its ingress stream, lines 0 and 2 of its egress stream.
    ///
    /// The lines are found in three dependent steps (port index, ingress stream, its `peer`),
    /// so they are fetched in three waves: every packet's port-index entry first
    /// ([`StreamTable::stage_ports`]); then every packet's ingress stream, all before the
    /// first packet ([`StreamTable::stage_ingress`]; a burst's ingress lines, 64 lines or
    /// 4 KiB, stay in L1 until their turn, and requested together their misses overlap;
    /// eight packets ahead left each burst's first packets waiting: at 1M streams 4.7–6.5 M
    /// packets/s per core against 4.05, see docs/capacity.md); then, from [`EGRESS_AHEAD`]
    /// packets ahead, the egress stream, whose index the ingress stream's line 0 (fetched by
    /// then) gives ([`StreamTable::stage_egress`], [`StreamTable::for_each_staged`]). A table
    /// larger than the caches costs about one memory latency per burst rather than three per
    /// packet, and the misses overlap with work.
    ///
    /// Run back to back as here, each wave waits for the one before. The worker can instead
    /// run a burst's waves between the steps of the burst before it (see `Worker`), so that
    /// the waits overlap with work too.
    #[inline]
    pub fn for_each_prefetched(
        &mut self,
        ports: &[PortHandle],
        f: impl FnMut(&mut StreamTable, usize),
    ) {
        self.stage_ports(ports);
        let staged = self.stage_ingress(ports);
        self.stage_egress(&staged);
        self.for_each_staged(&staged, 0..staged.len(), f);
    }

    /// First wave of a burst: requests every packet's port-index entry.
    #[inline]
    pub fn stage_ports(&self, ports: &[PortHandle]) {
        let n = ports.len().min(BURST_SIZE_MAX);
        for &p in &ports[..n] {
            if let Some(e) = self.by_port.get(p.0 as usize) {
                prefetch(e);
            }
        }
    }

    /// Second wave: reads every packet's port-index entry (requested by
    /// [`StreamTable::stage_ports`]) and requests its ingress stream's lines 0 and 1. The
    /// indices it returns are hints for the later waves only: a command applied in between
    /// may change the table, and processing looks every packet up again.
    #[inline]
    pub fn stage_ingress(&self, ports: &[PortHandle]) -> Staged {
        let n = ports.len().min(BURST_SIZE_MAX);
        let mut staged = Staged {
            idx: [u32::MAX; BURST_SIZE_MAX],
            n,
        };
        for (i, &p) in staged.idx.iter_mut().zip(&ports[..n]) {
            *i = self.prefetch_ingress(p);
        }
        staged
    }

    /// Third wave, its first part: requests the egress streams of the burst's first
    /// [`EGRESS_AHEAD`] packets (their `peer` is on the ingress line 0 that
    /// [`StreamTable::stage_ingress`] requested).
    #[inline]
    pub fn stage_egress(&self, staged: &Staged) {
        for &i in &staged.idx[..staged.n.min(EGRESS_AHEAD)] {
            self.prefetch_egress(i);
        }
    }

    /// Calls `f(table, i)` for each packet `i` of `range` (of a staged burst) in order,
    /// requesting the egress stream of packet `i + EGRESS_AHEAD` before packet `i` (the rest
    /// of the third wave). A burst may be processed in consecutive ranges.
    #[inline]
    pub fn for_each_staged(
        &mut self,
        staged: &Staged,
        range: std::ops::Range<usize>,
        mut f: impl FnMut(&mut StreamTable, usize),
    ) {
        let n = staged.n.min(BURST_SIZE_MAX);
        for i in range.start..range.end.min(n) {
            if i + EGRESS_AHEAD < n {
                self.prefetch_egress(staged.idx[i + EGRESS_AHEAD]);
            }
            f(self, i);
        }
    }

    /// Reads `port`'s index entry and prefetches the ingress stream's lines 0 and 1; returns
    /// the stream's index, or `u32::MAX` for none.
    #[inline]
    fn prefetch_ingress(&self, port: PortHandle) -> u32 {
        let i = self
            .by_port
            .get(port.0 as usize)
            .map_or(u32::MAX, |&v| v.wrapping_sub(1));
        if let Some(s) = self.streams.get(i as usize) {
            prefetch(&s.remote);
            prefetch(&s.packets_in);
        }
        i
    }

    /// Reads stream `idx`'s `peer` (line 0) and prefetches the peer's lines 0 and 2. A vacant
    /// slot's peer is `u32::MAX` (see [`Stream::new`]), which prefetches nothing.
    #[inline]
    fn prefetch_egress(&self, idx: u32) {
        let Some(s) = self.streams.get(idx as usize) else {
            return;
        };
        if let Some(o) = self.streams.get(s.peer.0 as usize) {
            prefetch(&o.remote);
            prefetch(&o.packets_out);
        }
    }

    #[inline]
    pub fn by_port(&self, port: PortHandle) -> Option<StreamIdx> {
        match self.by_port.get(port.0 as usize) {
            Some(&v) if v != 0 => Some(StreamIdx(v - 1)),
            _ => None,
        }
    }

    #[inline]
    pub fn get(&self, idx: StreamIdx) -> Option<&Stream> {
        self.streams.get(idx.0 as usize).filter(|s| s.live)
    }

    #[inline]
    pub fn get_mut(&mut self, idx: StreamIdx) -> Option<&mut Stream> {
        self.get_mut_slot(idx)
    }

    #[inline]
    fn get_mut_slot(&mut self, idx: StreamIdx) -> Option<&mut Stream> {
        self.streams.get_mut(idx.0 as usize).filter(|s| s.live)
    }

    /// Two distinct streams mutably at once.
    #[inline]
    pub fn pair_mut(&mut self, a: StreamIdx, b: StreamIdx) -> Option<(&mut Stream, &mut Stream)> {
        let (ai, bi) = (a.0 as usize, b.0 as usize);
        if ai == bi || ai >= self.streams.len() || bi >= self.streams.len() {
            return None;
        }
        let (x, y) = if ai < bi {
            let (lo, hi) = self.streams.split_at_mut(bi);
            (&mut lo[ai], &mut hi[0])
        } else {
            let (lo, hi) = self.streams.split_at_mut(ai);
            (&mut hi[0], &mut lo[bi])
        };
        (x.live && y.live).then_some((x, y))
    }

    /// Iterates live streams with their indices.
    pub fn iter(&self) -> impl Iterator<Item = (StreamIdx, &Stream)> {
        self.streams
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live)
            .map(|(i, s)| (StreamIdx(i as u32), s))
    }
}

/// Makes room for `more` elements in `v`. When that takes a new buffer, it is twice the
/// size (at least), advised to use huge pages before the elements are moved in, so the copy
/// touches its pages as huge ones (`Vec`'s own growth may move the old pages as they are).
fn reserve_advised<T>(v: &mut Vec<T>, more: usize) {
    let need = v.len().saturating_add(more);
    if need <= v.capacity() {
        return;
    }
    let mut bigger = Vec::with_capacity(need.max(v.capacity().saturating_mul(2)).max(64));
    advise_huge_pages(&bigger);
    bigger.append(v);
    *v = bigger;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(port: u32) -> Stream {
        Stream::new(PortHandle(port), RelayId(1), Side::A, Component::Rtp, 0)
    }

    #[test]
    fn insert_lookup_remove_reuse() {
        let mut t = StreamTable::default();
        let a = t.insert(s(5));
        let b = t.insert(s(2));
        assert_eq!(t.by_port(PortHandle(5)), Some(a));
        assert_eq!(t.by_port(PortHandle(2)), Some(b));
        assert_eq!(t.by_port(PortHandle(3)), None);
        assert_eq!(t.by_port(PortHandle(99)), None);
        assert!(t.remove(a).is_some());
        assert!(t.remove(a).is_none(), "double remove is harmless");
        assert_eq!(t.by_port(PortHandle(5)), None);
        let c = t.insert(s(7));
        assert_eq!(c, a, "slot reused");
        assert_eq!(t.len(), 2);
        let (x, y) = t.pair_mut(b, c).expect("two live streams");
        assert_eq!((x.port, y.port), (PortHandle(2), PortHandle(7)));
        assert!(t.pair_mut(b, b).is_none());
    }

    #[test]
    fn every_packet_of_a_burst_is_processed_once_in_order() {
        let mut t = StreamTable::with_capacity(64);
        for p in 0..40 {
            let i = t.insert(s(p));
            t.get_mut(i).expect("inserted").peer = StreamIdx(p ^ 1);
        }
        // Bursts shorter and longer than the look-ahead, unknown ports and ports past the
        // index among them; more ports than a burst holds are cut to a burst.
        for n in [
            0,
            1,
            EGRESS_AHEAD,
            EGRESS_AHEAD + 1,
            BURST_SIZE_MAX,
            BURST_SIZE_MAX + 1,
            40,
        ] {
            let ports: Vec<PortHandle> = (0..n as u32)
                .map(|i| PortHandle(if i % 5 == 4 { 1000 + i } else { i }))
                .collect();
            let mut seen = Vec::new();
            t.for_each_prefetched(&ports, |table, i| {
                let known = table.by_port(ports[i]).is_some();
                seen.push((i, known));
            });
            let want: Vec<(usize, bool)> = (0..n.min(BURST_SIZE_MAX))
                .map(|i| (i, i % 5 != 4))
                .collect();
            assert_eq!(seen, want, "burst of {n}");
            // The worker's way with overlapped bursts: the waves apart, and the burst in two
            // ranges (the second running past the burst's end) with a wave between them.
            let mut split = Vec::new();
            t.stage_ports(&ports);
            let staged = t.stage_ingress(&ports);
            t.stage_egress(&staged);
            let half = staged.len() / 2;
            t.for_each_staged(&staged, 0..half, |_, i| split.push(i));
            t.stage_ports(&ports);
            t.for_each_staged(&staged, half..BURST_SIZE_MAX + 5, |_, i| split.push(i));
            let order: Vec<usize> = want.iter().map(|&(i, _)| i).collect();
            assert_eq!(split, order, "burst of {n} in two ranges");
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn hot_fields_share_their_cache_lines() {
        assert_eq!(std::mem::align_of::<Stream>(), 64);
        assert_eq!(std::mem::size_of::<Stream>(), 256, "four cache lines");
        let s = Stream::new(PortHandle(1), RelayId(1), Side::A, Component::Rtp, 0);
        let base = std::ptr::addr_of!(s) as usize;
        // (first byte, one past the last byte) of a field, relative to the stream.
        let span = |at: usize, size: usize| (at - base, at - base + size);
        let line = |(start, end): (usize, usize)| {
            assert_eq!(
                start / 64,
                (end - 1) / 64,
                "field at {start}..{end} crosses a line"
            );
            start / 64
        };
        let rx_size = std::mem::size_of::<RtpReceiveStats>();
        let egress_size = std::mem::size_of::<EgressRewrite>();
        let expected = [
            // Line 0: read by both streams of a forwarded packet.
            (span(std::ptr::addr_of!(s.remote) as usize, 32), 0),
            (span(std::ptr::addr_of!(s.peer) as usize, 4), 0),
            (span(std::ptr::addr_of!(s.in_conference) as usize, 1), 0),
            (span(std::ptr::addr_of!(s.opaque) as usize, 1), 0),
            (span(std::ptr::addr_of!(s.live) as usize, 1), 0),
            (span(std::ptr::addr_of!(s.last_rx_ns) as usize, 8), 0),
            // Line 1: written by the ingress stream.
            (span(std::ptr::addr_of!(s.packets_in) as usize, 8), 1),
            (span(std::ptr::addr_of!(s.packets_forwarded) as usize, 8), 1),
            (span(std::ptr::addr_of!(s.rx) as usize, rx_size), 1),
            // Line 2: written by the egress stream.
            (span(std::ptr::addr_of!(s.packets_out) as usize, 8), 2),
            (span(std::ptr::addr_of!(s.bytes_out) as usize, 8), 2),
            (span(std::ptr::addr_of!(s.egress) as usize, egress_size), 2),
        ];
        for (field, want) in expected {
            assert_eq!(line(field), want, "field at {field:?}");
        }
    }
}
