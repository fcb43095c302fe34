//! Conference mixing inside the worker that owns the members' streams.
//!
//! A conference is a set of members; a member is one leg's RTP stream whose packets, instead of
//! being forwarded, go to the member's [`Jitter`] buffer (decoded on arrival). Every 20 ms the
//! conference *ticks*: each member's next frame is read (gain applied, talking detected by
//! energy with a hangover), the frames of members who talk and are not muted are summed in
//! 32 bits, and every member who is not deaf receives the sum without its own voice:
//! - members who do not contribute (silent, muted) all hear the same mix, so it goes through one
//!   limiter and is encoded once per G.711 law and shared;
//! - each contributing member (and each member with a coach) gets its own N−1 mix, limiter
//!   and encoding.
//!
//! A coach is heard only by the member it coaches. The limiter is a gain that drops at once to
//! what keeps the frame's peak under full scale and recovers smoothly, so loud conferences are
//! scaled rather than clipped.
//!
//! Ticks are spread over the 20 ms period: a wheel of [`SLOTS`] one-millisecond slots, each
//! conference placed in the least loaded slot when it is created. Work per tick is bounded by
//! the conference's members; nothing on the tick or packet path allocates, locks or logs
//! (members' buffers are allocated when they join, on the command path).
//!
//! A conference of two members with one law, no recording, no coach, nobody muted, deaf or
//! amplified, and forwarding allowed is not mixed: the two streams are linked to each other
//! and packets are forwarded as in a relay.

pub mod jitter;

use std::collections::HashMap;
use std::time::Instant;

use hdrhistogram::Histogram;

use serde::Serialize;

use crate::g711::Law;
use crate::ids::{RelayId, Side, StreamIdx};
use crate::pipeline::EventSink;
use crate::player::splitmix;
use crate::recorder::RecordTap;
use crate::table::StreamTable;
use crate::wire::rtp::RtpPacket;
use jitter::{FrameKind, Jitter, Target, FRAME};

pub use jitter::JitterStats;

/// Nanoseconds between ticks of one conference.
pub const TICK_NS: u64 = 20_000_000;
/// Slots of the tick wheel (one per millisecond of the tick period).
pub const SLOTS: usize = 20;
const SLOT_NS: u64 = TICK_NS / SLOTS as u64;
/// How far behind the wheel may fall before it skips ahead instead of ticking in a burst.
const CATCH_UP_NS: u64 = 60_000_000;
/// Most members of one conference.
pub const MEMBERS_MAX: usize = 1000;
/// RTP payload of a mixed packet (one frame of G.711).
const PACKET: usize = 12 + FRAME;
/// `Stream::peer` of a stream whose packets go to the mixer.
pub const TO_MIXER: StreamIdx = StreamIdx(u32::MAX - 1);
/// Limiter ceiling: peaks are kept at or below this (−1 dBFS).
const CEILING: i64 = 29_204;
/// Unity gain in the limiter's and members' Q16 fixed point.
const UNITY: u32 = 1 << 16;
/// Mean square energy above which a frame is speech (RMS 300, about −41 dBFS).
const TALK_ENERGY: u64 = 300 * 300;
/// Frames below the threshold before a talker stops (300 ms).
const HANGOVER: u8 = 15;

/// A conference's identity (chosen by the control plane).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ConfId(pub u64);

/// Where a mixing stream's member lives: conference slab index and member slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MixRef {
    pub conf: u32,
    pub member: u32,
}

/// A member as the control plane asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSpec {
    pub relay: RelayId,
    pub side: Side,
    pub law: Law,
    /// Payload type of the member's audio (the law's static type unless negotiated otherwise).
    pub payload_type: u8,
    pub muted: bool,
    pub deaf: bool,
    /// Gain applied to what the member says, in dB (−24 to +24).
    pub gain_db: i8,
    /// The member (leg) this one coaches: only it hears this member.
    pub coach_of: Option<(RelayId, Side)>,
    pub jitter: Target,
}

impl MemberSpec {
    /// An unmuted, hearing member at unity gain with an adaptive jitter buffer.
    pub fn new(relay: RelayId, side: Side, law: Law) -> Self {
        MemberSpec {
            relay,
            side,
            law,
            payload_type: law.payload_type(),
            muted: false,
            deaf: false,
            gain_db: 0,
            coach_of: None,
            jitter: Target::Adaptive,
        }
    }
}

/// Changes to a member; `None` leaves a setting as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemberUpdate {
    pub muted: Option<bool>,
    pub deaf: Option<bool>,
    pub gain_db: Option<i8>,
    /// `Some(None)` ends coaching.
    pub coach_of: Option<Option<(RelayId, Side)>>,
}

/// Conference-wide settings, given when the first member joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfOptions {
    /// Two plain members may be linked directly instead of mixed (no talking events then).
    pub allow_forwarding: bool,
}

/// Tones mixed into what every member hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Beep {
    /// Someone joined: a rising pair of tones.
    Enter,
    /// Someone left: a falling pair.
    Exit,
}

/// Why the mixer refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    #[error("conference {0:?} not found")]
    NoConference(ConfId),
    #[error("the leg is not a member of conference {0:?}")]
    NotMember(ConfId),
    #[error("the leg is already in a conference")]
    AlreadyMember,
    #[error("conference {0:?} is full ({MEMBERS_MAX} members)")]
    Full(ConfId),
    #[error("the coached leg is not a member of conference {0:?}")]
    NoCoachee(ConfId),
}

/// A member as [`Mixer::roster`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    pub relay: RelayId,
    pub side: Side,
    pub muted: bool,
    pub deaf: bool,
    pub talking: bool,
    pub coaching: bool,
    pub jitter: JitterStats,
    /// Current playout delay target.
    pub target_ms: u32,
}

/// Mixer counters (cumulative), published with the worker's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixStats {
    /// Packets handed to the mixer by the pipeline.
    pub packets_in: u64,
    /// Of those, not audio of the member's payload type (telephone-events, comfort noise).
    pub ignored: u64,
    pub late: u64,
    pub bad: u64,
    pub concealed_frames: u64,
    /// Conference ticks run.
    pub ticks: u64,
    /// Mixed packets queued for sending (a failed send is counted as a `tx_failed` drop).
    pub packets_out: u64,
    /// Encodings done (shared mixes count once).
    pub encodes: u64,
}

/// Per-frame gain that keeps peaks under the ceiling: drops at once, recovers over ~300 ms.
#[derive(Debug, Clone, Copy)]
struct Limiter {
    gain: u32,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { gain: UNITY }
    }
}

impl Limiter {
    fn apply(&mut self, x: &[i32; FRAME], out: &mut [i16; FRAME]) {
        let peak = x.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
        let allowed = if peak == 0 {
            UNITY
        } else {
            ((CEILING << 16) / i64::from(peak)).min(i64::from(UNITY)) as u32
        };
        let released = self.gain + (UNITY - self.gain) / 16;
        self.gain = released.min(allowed);
        let g = i64::from(self.gain);
        for (o, v) in out.iter_mut().zip(x.iter()) {
            // |v·g| ≤ CEILING·2^16 by construction; the clamp only guards rounding.
            *o = ((i64::from(*v) * g) >> 16).clamp(-32_768, 32_767) as i16;
        }
    }
}

/// Energy detector with a hangover.
#[derive(Debug, Clone, Copy, Default)]
struct Vad {
    talking: bool,
    hang: u8,
}

impl Vad {
    /// Updates with a frame's mean square; returns whether the state changed.
    fn update(&mut self, energy: u64) -> bool {
        if energy >= TALK_ENERGY {
            self.hang = HANGOVER;
            if !self.talking {
                self.talking = true;
                return true;
            }
        } else if self.talking {
            self.hang = self.hang.saturating_sub(1);
            if self.hang == 0 {
                self.talking = false;
                return true;
            }
        }
        false
    }
}

struct Member {
    stream: StreamIdx,
    /// The stream's relay link before it joined (restored when it leaves).
    saved_peer: StreamIdx,
    relay: RelayId,
    side: Side,
    law: Law,
    payload_type: u8,
    muted: bool,
    deaf: bool,
    /// Q16 linear gain.
    gain: u32,
    coach_of: Option<StreamIdx>,
    jb: Jitter,
    pcm: [i16; FRAME],
    /// This tick: the member's frame is in the conference sum.
    contributes: bool,
    vad: Vad,
    limiter: Limiter,
    ssrc: u32,
    seq: u16,
    ts: u32,
    first: bool,
}

impl Member {
    fn plain(&self) -> bool {
        !self.muted && !self.deaf && self.gain == UNITY && self.coach_of.is_none()
    }
}

struct Conference {
    id: ConfId,
    options: ConfOptions,
    members: Vec<Option<Member>>,
    free: Vec<u32>,
    slot: usize,
    rec: Option<(RecordTap, u16, u32)>,
    shared: Limiter,
    beep: Option<(Beep, u32)>,
    /// The two members are linked directly (see the module documentation).
    forwarding: bool,
}

impl Conference {
    /// Members present (slots less the free ones).
    fn live(&self) -> usize {
        self.members.len() - self.free.len()
    }

    fn member_of(&self, stream: StreamIdx) -> Option<u32> {
        self.members
            .iter()
            .position(|m| m.as_ref().is_some_and(|m| m.stream == stream))
            .map(|i| i as u32)
    }
}

/// Scratch buffers for a tick (allocated once per mixer).
struct Scratch {
    total: [i32; FRAME],
    own: [i32; FRAME],
    pcm: [i16; FRAME],
    shared_pcm: [i16; FRAME],
    /// Shared mix encoded per law this tick (`None` until a member needs it).
    shared_enc: [Option<[u8; FRAME]>; 2],
    packet: [u8; PACKET],
    coaches: Vec<(StreamIdx, u32)>,
}

/// All conferences of one worker.
pub struct Mixer {
    confs: Vec<Option<Conference>>,
    free: Vec<u32>,
    by_id: HashMap<ConfId, u32>,
    wheel: [Vec<u32>; SLOTS],
    slot: usize,
    next_slot_ns: u64,
    scratch: Box<Scratch>,
    seed: u64,
    pub stats: MixStats,
    /// Time of each conference tick, nanoseconds (cumulative; the worker publishes it).
    pub tick_ns: Histogram<u64>,
}

impl Default for Mixer {
    fn default() -> Self {
        Mixer::new(0)
    }
}

/// Receives mixed packets: the RTP packet for the member's stream `idx` (its remote and port
/// are in `table`). Returns whether the packet was queued for sending.
pub trait MixOut {
    fn send(&mut self, table: &mut StreamTable, idx: StreamIdx, packet: &[u8]) -> bool;
}

impl Mixer {
    /// `seed` varies members' SSRCs and initial sequence numbers and timestamps.
    pub fn new(seed: u64) -> Self {
        Mixer {
            confs: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            wheel: std::array::from_fn(|_| Vec::new()),
            slot: 0,
            next_slot_ns: 0,
            scratch: Box::new(Scratch {
                total: [0; FRAME],
                own: [0; FRAME],
                pcm: [0; FRAME],
                shared_pcm: [0; FRAME],
                shared_enc: [None; 2],
                packet: [0; PACKET],
                coaches: Vec::with_capacity(16),
            }),
            seed,
            stats: MixStats::default(),
            // The worker's histogram bounds (1 ns to 10 ms, 2 digits), so publishing is an
            // `add` that cannot fail or allocate; longer ticks saturate.
            tick_ns: Histogram::new_with_bounds(1, 10_000_000, 2).expect("valid bounds"),
        }
    }

    /// Conferences in progress.
    pub fn conferences(&self) -> usize {
        self.by_id.len()
    }

    /// Members in all conferences.
    pub fn members(&self) -> usize {
        self.confs.iter().flatten().map(Conference::live).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// When the next tick is due (`u64::MAX` with no conference).
    pub fn next_due_ns(&self) -> u64 {
        if self.is_empty() {
            u64::MAX
        } else {
            self.next_slot_ns
        }
    }

    /// Adds the leg whose RTP stream is `idx` to conference `id` (created with `options` if
    /// new). Packets arriving on the stream go to the mixer from now on.
    pub fn join(
        &mut self,
        id: ConfId,
        options: ConfOptions,
        spec: &MemberSpec,
        idx: StreamIdx,
        table: &mut StreamTable,
        now_ns: u64,
    ) -> Result<(), MixError> {
        let Some(s) = table.get(idx) else {
            return Err(MixError::NotMember(id));
        };
        if s.in_conference {
            return Err(MixError::AlreadyMember);
        }
        let saved_peer = s.peer;
        let coach_of = match spec.coach_of {
            None => None,
            Some(_) if !self.by_id.contains_key(&id) => return Err(MixError::NoCoachee(id)),
            Some((relay, side)) => Some(self.find_stream(id, relay, side, table)?),
        };
        let ci = match self.by_id.get(&id) {
            Some(&ci) => ci,
            None => self.create(id, options, now_ns),
        };
        let seed = splitmix(self.seed ^ spec.relay.0.rotate_left(9) ^ now_ns);
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let Some(conf) = self.confs.get_mut(ci as usize).and_then(Option::as_mut) else {
            return Err(MixError::NoConference(id));
        };
        if conf.live() >= MEMBERS_MAX {
            return Err(MixError::Full(id));
        }
        let member = Member {
            stream: idx,
            saved_peer,
            relay: spec.relay,
            side: spec.side,
            law: spec.law,
            payload_type: spec.payload_type,
            muted: spec.muted,
            deaf: spec.deaf,
            gain: db_to_q16(spec.gain_db),
            coach_of,
            jb: Jitter::new(spec.jitter),
            pcm: [0; FRAME],
            contributes: false,
            vad: Vad::default(),
            limiter: Limiter::default(),
            ssrc: seed as u32,
            seq: (seed >> 32) as u16,
            ts: (seed >> 48) as u32 ^ (seed as u32).rotate_left(11),
            first: true,
        };
        let mi = match conf.free.pop() {
            Some(i) => {
                conf.members[i as usize] = Some(member);
                i
            }
            None => {
                conf.members.push(Some(member));
                (conf.members.len() - 1) as u32
            }
        };
        if let Some(s) = table.get_mut(idx) {
            s.in_conference = true;
            s.mix = MixRef {
                conf: ci,
                member: mi,
            };
        }
        relink(conf, table);
        Ok(())
    }

    /// Removes a member; the stream is linked back to its relay. The conference ends with its
    /// last member. Returns whether the conference ended.
    pub fn leave(
        &mut self,
        id: ConfId,
        idx: StreamIdx,
        table: &mut StreamTable,
    ) -> Result<bool, MixError> {
        let ci = *self.by_id.get(&id).ok_or(MixError::NoConference(id))?;
        let conf = self.confs[ci as usize]
            .as_mut()
            .ok_or(MixError::NoConference(id))?;
        let mi = conf.member_of(idx).ok_or(MixError::NotMember(id))?;
        let saved_peer = conf.members[mi as usize]
            .take()
            .map_or(StreamIdx(u32::MAX), |m| m.saved_peer);
        conf.free.push(mi);
        // Whoever this member coached is coached no more; whoever coached it neither.
        for m in conf.members.iter_mut().flatten() {
            if m.coach_of == Some(idx) {
                m.coach_of = None;
            }
        }
        if let Some(s) = table.get_mut(idx) {
            s.in_conference = false;
            s.peer = saved_peer;
        }
        if conf.live() == 0 {
            self.remove(ci);
            return Ok(true);
        }
        relink(conf, table);
        Ok(false)
    }

    /// Removes whatever conference membership stream `idx` has (its relay is going away).
    pub fn forget_stream(&mut self, idx: StreamIdx, table: &mut StreamTable) {
        let Some(s) = table.get(idx) else { return };
        if !s.in_conference {
            return;
        }
        let ci = s.mix.conf;
        let Some(id) = self
            .confs
            .get(ci as usize)
            .and_then(|c| c.as_ref())
            .map(|c| c.id)
        else {
            return;
        };
        let _ = self.leave(id, idx, table);
    }

    pub fn update(
        &mut self,
        id: ConfId,
        idx: StreamIdx,
        update: &MemberUpdate,
        table: &mut StreamTable,
    ) -> Result<(), MixError> {
        let coach_of = match update.coach_of {
            Some(Some((relay, side))) => Some(Some(self.find_stream(id, relay, side, table)?)),
            Some(None) => Some(None),
            None => None,
        };
        let ci = *self.by_id.get(&id).ok_or(MixError::NoConference(id))?;
        let conf = self.confs[ci as usize]
            .as_mut()
            .ok_or(MixError::NoConference(id))?;
        let mi = conf.member_of(idx).ok_or(MixError::NotMember(id))?;
        let Some(m) = conf.members[mi as usize].as_mut() else {
            return Err(MixError::NotMember(id));
        };
        if let Some(v) = update.muted {
            m.muted = v;
        }
        if let Some(v) = update.deaf {
            m.deaf = v;
        }
        if let Some(db) = update.gain_db {
            m.gain = db_to_q16(db);
        }
        if let Some(c) = coach_of {
            m.coach_of = c.filter(|c| *c != idx);
        }
        relink(conf, table);
        Ok(())
    }

    /// Starts (`Some`) or stops recording the conference's full mix.
    pub fn record(
        &mut self,
        id: ConfId,
        tap: Option<RecordTap>,
        table: &mut StreamTable,
    ) -> Result<(), MixError> {
        let conf = self.conf_mut(id)?;
        conf.rec = tap.map(|t| (t, 0, 0));
        relink(conf, table);
        Ok(())
    }

    /// Mixes a tone into what everyone hears.
    pub fn beep(
        &mut self,
        id: ConfId,
        beep: Beep,
        table: &mut StreamTable,
    ) -> Result<(), MixError> {
        let conf = self.conf_mut(id)?;
        conf.beep = Some((beep, 0));
        relink(conf, table);
        Ok(())
    }

    /// Members of a conference: (relay, side, muted, deaf, talking).
    pub fn roster(&self, id: ConfId) -> Result<Vec<MemberInfo>, MixError> {
        let ci = *self.by_id.get(&id).ok_or(MixError::NoConference(id))?;
        let conf = self.confs[ci as usize]
            .as_ref()
            .ok_or(MixError::NoConference(id))?;
        Ok(conf
            .members
            .iter()
            .flatten()
            .map(|m| MemberInfo {
                relay: m.relay,
                side: m.side,
                muted: m.muted,
                deaf: m.deaf,
                talking: m.vad.talking,
                coaching: m.coach_of.is_some(),
                jitter: m.jb.stats,
                target_ms: m.jb.target() / 8,
            })
            .collect())
    }

    fn conf_mut(&mut self, id: ConfId) -> Result<&mut Conference, MixError> {
        let ci = *self.by_id.get(&id).ok_or(MixError::NoConference(id))?;
        self.confs[ci as usize]
            .as_mut()
            .ok_or(MixError::NoConference(id))
    }

    fn find_stream(
        &self,
        id: ConfId,
        relay: RelayId,
        side: Side,
        table: &StreamTable,
    ) -> Result<StreamIdx, MixError> {
        let ci = *self.by_id.get(&id).ok_or(MixError::NoCoachee(id))?;
        let conf = self.confs[ci as usize]
            .as_ref()
            .ok_or(MixError::NoCoachee(id))?;
        conf.members
            .iter()
            .flatten()
            .find(|m| m.relay == relay && m.side == side)
            .map(|m| m.stream)
            .filter(|s| table.get(*s).is_some())
            .ok_or(MixError::NoCoachee(id))
    }

    fn create(&mut self, id: ConfId, options: ConfOptions, now_ns: u64) -> u32 {
        let slot = (0..SLOTS).min_by_key(|s| self.wheel[*s].len()).unwrap_or(0);
        let conf = Conference {
            id,
            options,
            members: Vec::new(),
            free: Vec::new(),
            slot,
            rec: None,
            shared: Limiter::default(),
            beep: None,
            forwarding: false,
        };
        let ci = match self.free.pop() {
            Some(i) => {
                self.confs[i as usize] = Some(conf);
                i
            }
            None => {
                self.confs.push(Some(conf));
                (self.confs.len() - 1) as u32
            }
        };
        if self.by_id.is_empty() {
            self.next_slot_ns = now_ns;
        }
        self.by_id.insert(id, ci);
        self.wheel[slot].push(ci);
        ci
    }

    fn remove(&mut self, ci: u32) {
        if let Some(conf) = self.confs[ci as usize].take() {
            self.by_id.remove(&conf.id);
            self.wheel[conf.slot].retain(|c| *c != ci);
            self.free.push(ci);
        }
    }

    /// Takes a packet the pipeline sent to the mixer (`buf` is the whole RTP packet; it was
    /// validated). `now_ns` is the worker clock.
    #[inline]
    pub fn push(&mut self, r: MixRef, buf: &[u8], now_ns: u64) {
        self.stats.packets_in += 1;
        let Some(m) = self
            .confs
            .get_mut(r.conf as usize)
            .and_then(Option::as_mut)
            .and_then(|c| c.members.get_mut(r.member as usize))
            .and_then(Option::as_mut)
        else {
            self.stats.bad += 1;
            return;
        };
        let Ok(p) = RtpPacket::new_checked(buf) else {
            self.stats.bad += 1;
            return;
        };
        if p.payload_type() != m.payload_type {
            self.stats.ignored += 1;
            return;
        }
        // Arrival in 8 kHz clock units for the jitter estimate.
        let arrival = ((now_ns / 1000).wrapping_mul(8) / 1000) as u32;
        match m
            .jb
            .push(m.law, p.ssrc(), p.timestamp(), p.payload(), arrival)
        {
            Ok(()) => {}
            Err(jitter::PushError::Late) => self.stats.late += 1,
            Err(jitter::PushError::Size) => self.stats.bad += 1,
        }
    }

    /// Runs every conference tick due at `now_ns`, sending mixed packets through `out`.
    pub fn run<E: EventSink, O: MixOut>(
        &mut self,
        now_ns: u64,
        table: &mut StreamTable,
        events: &mut E,
        out: &mut O,
    ) {
        if self.is_empty() {
            return;
        }
        if now_ns.saturating_sub(self.next_slot_ns) > CATCH_UP_NS {
            // The worker stalled: resume the pace from now rather than tick in a burst.
            self.next_slot_ns = now_ns;
        }
        while now_ns >= self.next_slot_ns {
            for k in 0..self.wheel[self.slot].len() {
                let ci = self.wheel[self.slot][k];
                if let Some(conf) = self.confs[ci as usize].as_mut() {
                    let t0 = Instant::now();
                    tick(
                        conf,
                        &mut self.scratch,
                        &mut self.stats,
                        table,
                        events,
                        out,
                        now_ns,
                    );
                    let ns = t0.elapsed().as_nanos() as u64;
                    self.tick_ns.saturating_record(ns.max(1));
                }
            }
            self.slot = (self.slot + 1) % SLOTS;
            self.next_slot_ns += SLOT_NS;
        }
    }
}

/// Links the streams for the conference's mode: to the mixer, or (two plain members) to each
/// other. No allocation (it also runs on the tick, when a beep ends).
fn relink(conf: &mut Conference, table: &mut StreamTable) {
    let mut live = conf.members.iter().flatten();
    let pair = match (live.next(), live.next(), live.next()) {
        (Some(a), Some(b), None) => Some((a, b)),
        _ => None,
    };
    let forward = pair.filter(|(a, b)| {
        conf.options.allow_forwarding
            && conf.rec.is_none()
            && conf.beep.is_none()
            && a.law == b.law
            && a.payload_type == b.payload_type
            && a.plain()
            && b.plain()
    });
    conf.forwarding = forward.is_some();
    if let Some((a, b)) = forward {
        for (x, y) in [(a.stream, b.stream), (b.stream, a.stream)] {
            if let Some(s) = table.get_mut(x) {
                s.peer = y;
            }
        }
        return;
    }
    for m in conf.members.iter().flatten() {
        if let Some(s) = table.get_mut(m.stream) {
            s.peer = TO_MIXER;
        }
    }
}

/// One conference tick.
fn tick<E: EventSink, O: MixOut>(
    conf: &mut Conference,
    sc: &mut Scratch,
    stats: &mut MixStats,
    table: &mut StreamTable,
    events: &mut E,
    out: &mut O,
    now_ns: u64,
) {
    if conf.forwarding {
        return;
    }
    stats.ticks += 1;
    sc.total = [0; FRAME];
    sc.coaches.clear();
    // 1. Each member's frame: read, gain, talking, contribution.
    for (mi, slot) in conf.members.iter_mut().enumerate() {
        let Some(m) = slot.as_mut() else { continue };
        let concealed_before = m.jb.stats.concealed_frames;
        let kind = m.jb.read(&mut m.pcm);
        stats.concealed_frames += m.jb.stats.concealed_frames - concealed_before;
        if m.gain != UNITY {
            for s in m.pcm.iter_mut() {
                *s = ((i64::from(*s) * i64::from(m.gain)) >> 16).clamp(-32_768, 32_767) as i16;
            }
        }
        let energy = if kind == FrameKind::Silent {
            0
        } else {
            m.pcm
                .iter()
                .map(|s| (i64::from(*s) * i64::from(*s)) as u64)
                .sum::<u64>()
                / FRAME as u64
        };
        if m.vad.update(energy) {
            events.emit(crate::command::MediaEvent::Talking {
                conf: conf.id,
                relay: m.relay,
                side: m.side,
                talking: m.vad.talking,
            });
        }
        let speaks = !m.muted && m.vad.talking && kind != FrameKind::Silent;
        m.contributes = speaks && m.coach_of.is_none();
        if m.contributes {
            for (t, s) in sc.total.iter_mut().zip(m.pcm.iter()) {
                *t += i32::from(*s);
            }
        }
        if let Some(c) = m.coach_of.filter(|_| speaks) {
            sc.coaches.push((c, mi as u32));
        }
    }
    // 2. Tones for everyone.
    if let Some((beep, pos)) = conf.beep.as_mut() {
        if add_beep(*beep, pos, &mut sc.total) {
            conf.beep = None;
            // Two plain members may go back to forwarding (from the next packet on).
            relink(conf, table);
        }
    }
    // 3. The shared mix (also what a recording of the conference gets).
    conf.shared.apply(&sc.total, &mut sc.shared_pcm);
    sc.shared_enc = [None, None];
    if let Some((tap, seq, ts)) = conf.rec.as_mut() {
        let enc = shared_encoding(sc, Law::Mu, stats);
        tap.push(*seq, *ts, Law::Mu.payload_type(), &enc);
        *seq = seq.wrapping_add(1);
        *ts = ts.wrapping_add(FRAME as u32);
    }
    // 4. What each member hears (nothing for the deaf, nor while a prompt or hold music plays
    // to the member: the player has the stream then).
    for mi in 0..conf.members.len() {
        let Some(m) = conf.members[mi].as_ref() else {
            continue;
        };
        let stream = m.stream;
        if m.deaf || table.get(stream).is_none_or(|s| s.playing) {
            continue;
        }
        let coached_by = sc.coaches.iter().any(|(c, _)| *c == stream);
        let payload: [u8; FRAME] = if m.contributes || coached_by {
            sc.own = sc.total;
            if m.contributes {
                for (o, s) in sc.own.iter_mut().zip(m.pcm.iter()) {
                    *o -= i32::from(*s);
                }
            }
            for (_, ci) in sc.coaches.iter().filter(|(c, _)| *c == stream) {
                if let Some(coach) = conf.members[*ci as usize].as_ref() {
                    for (o, s) in sc.own.iter_mut().zip(coach.pcm.iter()) {
                        *o += i32::from(*s);
                    }
                }
            }
            let Some(m) = conf.members[mi].as_mut() else {
                continue;
            };
            m.limiter.apply(&sc.own, &mut sc.pcm);
            stats.encodes += 1;
            let mut enc = [0u8; FRAME];
            for (e, s) in enc.iter_mut().zip(sc.pcm.iter()) {
                *e = m.law.encode(*s);
            }
            enc
        } else {
            let law = m.law;
            shared_encoding(sc, law, stats)
        };
        let (Some(m), Some(s)) = (conf.members[mi].as_mut(), table.get_mut(stream)) else {
            continue;
        };
        let (mut ssrc, mut seq, mut ts) = (m.ssrc, m.seq, m.ts);
        if s.rewrite {
            let w = s.egress.map(ssrc, seq, ts, now_ns, s.clock_rate_hz);
            (ssrc, seq, ts) = (w.ssrc, w.seq, w.ts);
        }
        let p = &mut sc.packet;
        p[0] = 0x80;
        p[1] = m.payload_type | if m.first { 0x80 } else { 0 };
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p[12..].copy_from_slice(&payload);
        m.first = false;
        m.seq = m.seq.wrapping_add(1);
        m.ts = m.ts.wrapping_add(FRAME as u32);
        if out.send(table, stream, &sc.packet[..]) {
            stats.packets_out += 1;
        }
    }
}

/// The shared mix encoded in `law`, once per tick.
fn shared_encoding(sc: &mut Scratch, law: Law, stats: &mut MixStats) -> [u8; FRAME] {
    let k = usize::from(law == Law::A);
    if let Some(e) = sc.shared_enc[k] {
        return e;
    }
    let mut e = [0u8; FRAME];
    for (b, s) in e.iter_mut().zip(sc.shared_pcm.iter()) {
        *b = law.encode(*s);
    }
    stats.encodes += 1;
    sc.shared_enc[k] = Some(e);
    e
}

/// Adds the next frame of a beep (two 100 ms tones at −16 dBFS); true when it is over.
fn add_beep(beep: Beep, pos: &mut u32, total: &mut [i32; FRAME]) -> bool {
    const TONE: u32 = 800;
    let (f1, f2) = match beep {
        Beep::Enter => (660.0, 880.0),
        Beep::Exit => (880.0, 660.0),
    };
    for t in total.iter_mut() {
        if *pos >= 2 * TONE {
            return true;
        }
        let f = if *pos < TONE { f1 } else { f2 };
        let x = f64::from(*pos) / 8000.0;
        *t += (5200.0 * (2.0 * std::f64::consts::PI * f * x).sin()) as i32;
        *pos += 1;
    }
    *pos >= 2 * TONE
}

/// dB (clamped to ±24) to Q16 linear gain.
fn db_to_q16(db: i8) -> u32 {
    let db = f64::from(db.clamp(-24, 24));
    (10f64.powf(db / 20.0) * f64::from(UNITY)).round() as u32
}

#[cfg(test)]
mod tests;
