//! Messages between the control plane and workers: [`MediaCommand`] in, [`MediaEvent`] out.
//!
//! Commands that need an answer carry a bounded(1) reply channel; the worker never blocks on it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crossbeam_channel::Sender;
use serde::Serialize;

use crate::ids::{Component, RelayId, Side};
use crate::mixer::{Beep, ConfId, ConfOptions, MemberSpec, MemberUpdate, MixError};
use crate::player::{PlayMedia, PlayMediaError};
use crate::stats::StreamCounters;
use crate::table::SourcePolicy;

/// One leg of a relay as the worker should build it. Ports are chosen by the control plane's
/// allocator from the worker's own range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegSpec {
    /// Local address of the leg's ports (one of the dataplane's media addresses).
    pub local_ip: IpAddr,
    pub rtp_port: u16,
    /// `None` with rtcp-mux (RTCP shares the RTP port, RFC 5761).
    pub rtcp_port: Option<u16>,
    /// The leg's endpoint; `None` latches it from the first packet.
    pub remote: Option<SocketAddr>,
    /// RTCP endpoint; defaults to the RTP remote's port + 1 (or the RTP remote with mux).
    pub rtcp_remote: Option<SocketAddr>,
    pub clock_rate_hz: u32,
    pub dtmf_pt: Option<u8>,
    /// The leg's media is not RTP (T.38 UDPTL): see [`crate::LegRequest::opaque`].
    pub opaque: bool,
}

/// A relay joining two legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySpec {
    pub id: RelayId,
    pub legs: [LegSpec; 2],
    pub policy: SourcePolicy,
    /// Rewrite SSRC/seq/ts on egress so each far end sees one continuous stream.
    pub rewrite: bool,
    /// Each leg sends what it receives back to its own remote (a loopback test target); the
    /// legs are not joined.
    pub echo: bool,
}

/// Changes to a live leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LegUpdate {
    pub remote: Option<SocketAddr>,
    pub rtcp_remote: Option<SocketAddr>,
    pub blocked: Option<bool>,
    /// `Some(true)`: what the leg sends comes back to it (the legs are no longer joined);
    /// `Some(false)`: joined to the other leg again.
    pub echo: Option<bool>,
    /// RFC 4733 payload type reported as DTMF on this leg (the one its SDP negotiated).
    pub dtmf_pt: Option<u8>,
    /// Switch the leg's RTP port between RTP and opaque datagrams (T.38 re-INVITE and back).
    pub opaque: Option<bool>,
}

/// Why a worker refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("relay {0:?} already exists")]
    Exists(RelayId),
    #[error("relay {0:?} not found")]
    NotFound(RelayId),
    #[error("cannot open media port {addr}: {reason}")]
    Open {
        addr: SocketAddr,
        reason: String,
        /// Another program holds the address (another port may well be free).
        in_use: bool,
    },
    #[error("worker stream table is full ({0} streams)")]
    Full(usize),
    #[error("{0}")]
    BadMedia(#[from] PlayMediaError),
    #[error("the {0} backend cannot generate packets (media playback)")]
    Unsupported(&'static str),
    #[error("{0}")]
    Mix(#[from] MixError),
}

/// Snapshot of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StreamSnapshot {
    pub local_port: u16,
    pub remote: Option<SocketAddr>,
    pub counters: StreamCounters,
    /// Last RTP SSRC received.
    pub ssrc: u32,
    /// RFC 3550 cumulative packets lost (expected − received).
    pub cumulative_lost: i64,
    /// RFC 3550 interarrival jitter, in timestamp units.
    pub jitter: u32,
    pub extended_max_seq: u32,
    pub timed_out: bool,
    /// Milliseconds since the last packet arrived (or since creation).
    pub idle_ms: u64,
}

/// Snapshot of one leg: its RTP stream and, without mux, its RTCP stream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LegSnapshot {
    pub rtp: StreamSnapshot,
    pub rtcp: Option<StreamSnapshot>,
}

/// Snapshot of a relay, legs in [A, B] order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RelaySnapshot {
    pub id: RelayId,
    pub legs: [LegSnapshot; 2],
}

/// Control plane → worker.
#[derive(Debug)]
pub enum MediaCommand {
    CreateRelay {
        spec: RelaySpec,
        reply: Sender<Result<(), CommandError>>,
    },
    UpdateLeg {
        relay: RelayId,
        side: Side,
        update: LegUpdate,
        reply: Sender<Result<(), CommandError>>,
    },
    QueryRelay {
        relay: RelayId,
        reply: Sender<Result<RelaySnapshot, CommandError>>,
    },
    /// Removes the relay and closes its ports; replies with final statistics.
    DeleteRelay {
        relay: RelayId,
        reply: Sender<Result<RelaySnapshot, CommandError>>,
    },
    /// Plays media out of a leg's RTP port to its remote, replacing (and replacing any earlier
    /// playback on that leg) what the other leg sends, `loops` times (0: until stopped).
    /// A [`MediaEvent::PlayDone`] with `id` follows when the media ran out.
    Play {
        relay: RelayId,
        side: Side,
        media: Arc<PlayMedia>,
        loops: u32,
        id: u64,
        reply: Sender<Result<(), CommandError>>,
    },
    /// Stops playback on a leg (forwarding resumes); replies whether something was playing.
    /// No `PlayDone` follows.
    StopPlay {
        relay: RelayId,
        side: Side,
        reply: Sender<Result<bool, CommandError>>,
    },
    /// Starts (a tap) or stops (`None`) recording what a leg's RTP port receives from its
    /// endpoint (telephone-events excepted).
    Record {
        relay: RelayId,
        side: Side,
        tap: Option<crate::recorder::RecordTap>,
        reply: Sender<Result<(), CommandError>>,
    },
    /// A conference operation on the worker that owns the conference and the leg.
    Conference {
        conf: ConfId,
        op: ConfOp,
        reply: Sender<Result<ConfReply, CommandError>>,
    },
    /// Stops the worker loop after draining nothing further.
    Shutdown,
}

/// What to do to a conference.
#[derive(Debug)]
pub enum ConfOp {
    /// Adds a relay's leg (`options` apply if the conference is new).
    Join {
        member: MemberSpec,
        options: ConfOptions,
    },
    Update {
        relay: RelayId,
        side: Side,
        update: MemberUpdate,
    },
    /// Takes the leg out; it is joined to its relay's other leg again.
    Leave {
        relay: RelayId,
        side: Side,
    },
    /// Records the full mix (`None` stops).
    Record(Option<crate::recorder::RecordTap>),
    Beep(Beep),
    /// Lists the members.
    Roster,
}

/// A conference operation's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfReply {
    Done,
    /// The last member left: the conference is gone.
    Ended,
    Roster(Vec<crate::mixer::MemberInfo>),
}

/// Worker → control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MediaEvent {
    /// An RFC 4733 digit ended.
    Dtmf {
        relay: RelayId,
        side: Side,
        digit: char,
        duration: u16,
    },
    /// A stream learned (or, with handover, changed) its remote address.
    SourceLatched {
        relay: RelayId,
        side: Side,
        component: Component,
        addr: SocketAddr,
    },
    /// An RTP stream received nothing for the configured media timeout.
    MediaTimeout { relay: RelayId, side: Side },
    /// Playback `id` on a leg sent its last frame.
    PlayDone { relay: RelayId, side: Side, id: u64 },
    /// A conference member started or stopped talking.
    Talking {
        conf: ConfId,
        relay: RelayId,
        side: Side,
        talking: bool,
    },
}
