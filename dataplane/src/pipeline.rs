//! The per-packet pipeline: plain functions over a datagram and the worker's stream table,
//! returning a [`Verdict`]. No I/O, no clock (time is an argument), no allocation, no locks.
//!
//! Steps for a datagram that arrived on a port:
//! 1. find the stream by port handle (array index);
//! 2. check or latch the source address (strict-source, handover);
//! 3. demultiplex RTP / RTCP (RFC 5761, RFC 7983) and validate the header;
//! 4. account RFC 3550 receive statistics; report RFC 4733 digits as events;
//! 5. pick the egress stream (other leg), rewrite SSRC/seq/ts if asked, and forward to its remote
//!    — or, for a conference member, hand the packet to the worker's mixer.

use std::net::SocketAddr;

use crate::command::MediaEvent;
use crate::ids::{Component, PortHandle, StreamIdx};
use crate::mixer::{MixRef, TO_MIXER};
use crate::stats::DropReason;
use crate::table::{Stream, StreamTable};
use crate::wire::dtmf::{digit_char, TelephoneEvent};
use crate::wire::rtcp::{rewrite_sender_ssrc, validate_compound};
use crate::wire::rtp::RtpPacket;
use crate::wire::{classify, PayloadKind};

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (possibly rewritten) datagram out of `port` to `dst`; `out` is the egress stream.
    Forward {
        out: StreamIdx,
        port: PortHandle,
        dst: SocketAddr,
    },
    /// Not forwarded; already counted on the stream (the caller counts the worker total).
    Drop(DropReason),
    /// A conference member's RTP: the caller hands the packet to its mixer.
    Mix(MixRef),
}

/// Receives events raised while processing packets (DTMF, latching).
pub trait EventSink {
    fn emit(&mut self, event: MediaEvent);
}

impl EventSink for Vec<MediaEvent> {
    fn emit(&mut self, event: MediaEvent) {
        self.push(event);
    }
}

/// Converts nanoseconds of worker time to RTP clock ticks (wrapping, as RTP timestamps do).
#[inline]
fn rtp_clock(now_ns: u64, clock_rate_hz: u32) -> u32 {
    ((now_ns / 1000).wrapping_mul(u64::from(clock_rate_hz)) / 1_000_000) as u32
}

/// Runs the pipeline for one datagram received on `port` from `src`.
///
/// `buf` is exactly the UDP payload and may be rewritten in place.
#[inline]
pub fn process<E: EventSink>(
    table: &mut StreamTable,
    port: PortHandle,
    src: SocketAddr,
    buf: &mut [u8],
    now_ns: u64,
    events: &mut E,
) -> Verdict {
    let Some(idx) = table.by_port(port) else {
        return Verdict::Drop(DropReason::UnknownStream);
    };
    let Some((s, taps)) = table.get_mut_with_taps(idx) else {
        return Verdict::Drop(DropReason::UnknownStream);
    };
    s.packets_in += 1;
    s.bytes_in += buf.len() as u64;
    s.last_rx_ns = now_ns;
    s.timed_out = false;

    // Source address: latch, validate or follow.
    match s.remote {
        None => latch(s, src, events),
        Some(r) if r != src => {
            if s.policy.strict {
                return drop(s, DropReason::SourceMismatch);
            }
            if s.policy.handover {
                latch(s, src, events);
            }
        }
        Some(_) => {}
    }

    if s.opaque {
        return process_opaque(table, idx, buf.len());
    }

    let is_rtcp = match s.component {
        Component::Rtcp => true,
        Component::Rtp => match classify(buf) {
            PayloadKind::Rtp => false,
            PayloadKind::Rtcp => true,
            PayloadKind::Stun | PayloadKind::Dtls | PayloadKind::Unknown => {
                return drop(s, DropReason::UnsupportedPayload);
            }
        },
    };
    if is_rtcp {
        return process_rtcp(table, idx, buf);
    }

    let len = buf.len();
    let mut p = match RtpPacket::new_checked(buf) {
        Ok(p) => p,
        Err(e) => return drop(s, DropReason::RtpMalformed(e)),
    };
    let (ssrc, seq, ts) = (p.ssrc(), p.sequence_number(), p.timestamp());
    s.rx.update(ssrc, seq, ts, rtp_clock(now_ns, s.clock_rate_hz));
    if s.dtmf_pt == p.payload_type() {
        report_dtmf(s, p.payload(), ts, events);
    } else if s.recording {
        if let Some(tap) = taps.get(&idx.0) {
            tap.push(seq, ts, p.payload_type(), p.payload());
        }
    }
    // Blocking stops media between a relay's legs; a conference member's media goes to its
    // conference (or, linked directly, to the one other member) all the same.
    if s.blocked && !s.in_conference {
        return drop(s, DropReason::Blocked);
    }
    let out_idx = s.peer;
    if out_idx == idx {
        return echo(s, idx, len);
    }
    if out_idx == TO_MIXER {
        s.packets_forwarded += 1;
        return Verdict::Mix(s.mix);
    }
    let Some((s, out)) = table.pair_mut(idx, out_idx) else {
        return Verdict::Drop(DropReason::UnknownStream);
    };
    // Towards a stream that is playing, or a conference member from its relay partner (the
    // member hears the conference, also when two members are linked directly).
    if out.playing || (out.in_conference && !s.in_conference) {
        return drop(s, DropReason::Superseded);
    }
    let Some(dst) = out.remote else {
        return drop(s, DropReason::NoRemote);
    };
    if out.rewrite {
        let w = out.egress.map(ssrc, seq, ts, now_ns, out.clock_rate_hz);
        p.set_ssrc(w.ssrc);
        p.set_sequence_number(w.seq);
        p.set_timestamp(w.ts);
    }
    forwarded(s, out, out_idx, dst, len)
}

/// A datagram of a leg that does not carry RTP (T.38 UDPTL): forwarded to the other leg as it
/// is, or dropped when the leg is blocked, has no remote, or its partner plays or mixes (both
/// are RTP-only). Kept out of line: fax is rare, and the RTP path stays as compact as before.
#[cold]
#[inline(never)]
fn process_opaque(table: &mut StreamTable, idx: StreamIdx, len: usize) -> Verdict {
    let Some(s) = table.get_mut(idx) else {
        return Verdict::Drop(DropReason::UnknownStream);
    };
    if s.blocked {
        return drop(s, DropReason::Blocked);
    }
    let out_idx = s.peer;
    if out_idx == idx {
        return echo(s, idx, len);
    }
    if out_idx == TO_MIXER {
        return drop(s, DropReason::UnsupportedPayload);
    }
    let Some((s, out)) = table.pair_mut(idx, out_idx) else {
        return Verdict::Drop(DropReason::UnknownStream);
    };
    if out.playing || out.in_conference {
        return drop(s, DropReason::Superseded);
    }
    let Some(dst) = out.remote else {
        return drop(s, DropReason::NoRemote);
    };
    forwarded(s, out, out_idx, dst, len)
}

/// A stream linked to itself (echo relay): the packet goes back to where it came from.
fn echo(s: &mut Stream, idx: StreamIdx, len: usize) -> Verdict {
    let Some(dst) = s.remote else {
        return drop(s, DropReason::NoRemote);
    };
    s.packets_forwarded += 1;
    s.packets_out += 1;
    s.bytes_out += len as u64;
    Verdict::Forward {
        out: idx,
        port: s.port,
        dst,
    }
}

fn latch<E: EventSink>(s: &mut Stream, src: SocketAddr, events: &mut E) {
    s.remote = Some(src);
    events.emit(MediaEvent::SourceLatched {
        relay: s.relay,
        side: s.side,
        component: s.component,
        addr: src,
    });
}

#[inline]
fn drop(s: &mut Stream, reason: DropReason) -> Verdict {
    s.drops.count(reason);
    Verdict::Drop(reason)
}

fn report_dtmf<E: EventSink>(s: &mut Stream, payload: &[u8], ts: u32, events: &mut E) {
    let Ok(ev) = TelephoneEvent::new_checked(payload) else {
        return;
    };
    // RFC 4733 §2.5.1.4: the end packet is sent three times; report the event once.
    if ev.end() && s.last_dtmf_ts != Some(ts) {
        s.last_dtmf_ts = Some(ts);
        if let Some(digit) = digit_char(ev.event()) {
            events.emit(MediaEvent::Dtmf {
                relay: s.relay,
                side: s.side,
                digit,
                duration: ev.duration(),
            });
        }
    }
}

fn process_rtcp(table: &mut StreamTable, idx: StreamIdx, buf: &mut [u8]) -> Verdict {
    let Some(s) = table.get_mut(idx) else {
        return Verdict::Drop(DropReason::UnknownStream);
    };
    s.rtcp_in += 1;
    if let Err(e) = validate_compound(buf) {
        return drop(s, DropReason::RtcpMalformed(e));
    }
    if s.blocked {
        return drop(s, DropReason::Blocked);
    }
    let out_idx = s.rtcp_peer;
    // RTCP leaving a leg whose RTP is SSRC-rewritten must name the rewritten SSRC.
    let ssrc_map = table
        .get(out_idx)
        .and_then(|out| table.get(out.rtp_sibling))
        .filter(|rtp| rtp.rewrite)
        .and_then(|rtp| rtp.egress.ssrc_map());
    let Some((s, out)) = table.pair_mut(idx, out_idx) else {
        return Verdict::Drop(DropReason::UnknownStream);
    };
    let Some(dst) = out.remote else {
        return drop(s, DropReason::NoRemote);
    };
    if let Some((from, to)) = ssrc_map.filter(|(from, to)| from != to) {
        rewrite_sender_ssrc(buf, from, to);
    }
    forwarded(s, out, out_idx, dst, buf.len())
}

/// Counts a forward on the ingress and egress streams and builds the verdict.
#[inline]
fn forwarded(
    s: &mut Stream,
    out: &mut Stream,
    out_idx: StreamIdx,
    dst: SocketAddr,
    len: usize,
) -> Verdict {
    s.packets_forwarded += 1;
    out.packets_out += 1;
    out.bytes_out += len as u64;
    Verdict::Forward {
        out: out_idx,
        port: out.port,
        dst,
    }
}
