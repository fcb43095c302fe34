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
//! Members speak G.711 (µ-law or A-law, 8 kHz) or, with the `opus` feature, Opus at 8, 16 or
//! 48 kHz ([`opus`]). A conference mixes at the highest rate among its members (8 kHz while all
//! are G.711): a member at a lower rate is resampled up on the way in and its mix down on the
//! way out ([`crate::resample`]). The shared mix is encoded once per distinct output (law, or
//! Opus rate); an Opus talker's own N−1 mix goes through the member's own encoder.
//!
//! A conference of two members with one codec, no recording, no coach, nobody muted, deaf or
//! amplified, and forwarding allowed is not mixed: the two streams are linked to each other
//! and packets are forwarded as in a relay.

pub mod jitter;
#[cfg(feature = "opus")]
pub mod opus;
#[cfg(not(feature = "opus"))]
#[path = "no_opus.rs"]
mod opus;

use std::collections::HashMap;
use std::time::Instant;

use hdrhistogram::Histogram;

use serde::Serialize;

use crate::g711::Law;
use crate::ids::{RelayId, Side, StreamIdx};
use crate::pipeline::EventSink;
use crate::player::splitmix;
use crate::recorder::RecordTap;
use crate::resample::{Resampler, RATES};
use crate::table::StreamTable;
use crate::wire::rtp::RtpPacket;
use jitter::{FrameKind, Jitter, Target, FRAME};
use opus::{OpusIn, OpusOut};

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
/// Samples of the longest frame (20 ms at 48 kHz).
pub const FRAME_MAX: usize = 960;
/// Largest encoded frame the mixer sends (Opus at the mixer's bit rate stays far below).
pub const ENCODED_MAX: usize = 400;
/// Longest mixed packet.
const PACKET: usize = 12 + ENCODED_MAX;
/// Distinct outputs a shared mix is encoded to: µ-law, A-law, Opus at 8, 16, 48 kHz.
const OUTPUTS: usize = 5;
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

/// What a member's audio is encoded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberCodec {
    G711(Law),
    /// Opus (RFC 7587) decoded and encoded at `rate`: 8, 16 or 48 kHz (the RTP clock is
    /// 48 kHz whatever the rate). Needs the `opus` feature.
    Opus {
        rate: u32,
    },
}

impl From<Law> for MemberCodec {
    fn from(law: Law) -> Self {
        MemberCodec::G711(law)
    }
}

impl MemberCodec {
    /// The audio's sample rate.
    pub fn rate(self) -> u32 {
        match self {
            MemberCodec::G711(_) => 8_000,
            MemberCodec::Opus { rate } => rate,
        }
    }

    /// RTP timestamp units per 20 ms frame.
    fn ts_per_frame(self) -> u32 {
        match self {
            MemberCodec::G711(_) => FRAME as u32,
            MemberCodec::Opus { .. } => 960,
        }
    }

    /// The static payload type, or the one usually negotiated for Opus.
    pub fn default_payload_type(self) -> u8 {
        match self {
            MemberCodec::G711(law) => law.payload_type(),
            MemberCodec::Opus { .. } => 111,
        }
    }

    /// Index of the shared mix's encoding this codec hears.
    fn output(self) -> usize {
        match self {
            MemberCodec::G711(Law::Mu) => 0,
            MemberCodec::G711(Law::A) => 1,
            MemberCodec::Opus { rate } => 2 + rate_index(rate),
        }
    }
}

/// Index of a supported rate in [`RATES`].
fn rate_index(rate: u32) -> usize {
    RATES.iter().position(|r| *r == rate).unwrap_or(0)
}

/// A member as the control plane asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSpec {
    pub relay: RelayId,
    pub side: Side,
    pub codec: MemberCodec,
    /// Payload type of the member's audio (the codec's usual type unless negotiated otherwise).
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
    pub fn new(relay: RelayId, side: Side, codec: impl Into<MemberCodec>) -> Self {
        let codec = codec.into();
        MemberSpec {
            relay,
            side,
            codec,
            payload_type: codec.default_payload_type(),
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
    #[error("codec: {0}")]
    Codec(String),
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
    fn apply(&mut self, x: &[i32], out: &mut [i16]) {
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

/// A member's incoming audio: a jitter buffer and, for Opus, the decoder behind it.
#[allow(
    clippy::large_enum_variant,
    reason = "the G.711 buffer is read every tick and stays inline; Opus state is boxed"
)]
enum Input {
    /// Decoded as packets arrive (8 kHz).
    G711(Jitter),
    Opus(Box<OpusIn>),
}

impl Input {
    fn stats(&self) -> JitterStats {
        match self {
            Input::G711(jb) => jb.stats,
            Input::Opus(o) => o.stats(),
        }
    }

    fn target_ms(&self) -> u32 {
        match self {
            Input::G711(jb) => jb.target() / 8,
            Input::Opus(o) => o.target_ms(),
        }
    }

    /// The next 20 ms at the member's rate into `out` (`out.len()` samples).
    fn read(&mut self, out: &mut [i16]) -> FrameKind {
        match self {
            Input::G711(jb) => match out.split_first_chunk_mut::<FRAME>() {
                Some((frame, _)) => jb.read(frame),
                None => FrameKind::Silent,
            },
            Input::Opus(o) => o.read(out),
        }
    }
}

struct Member {
    stream: StreamIdx,
    /// The stream's relay link before it joined (restored when it leaves).
    saved_peer: StreamIdx,
    relay: RelayId,
    side: Side,
    codec: MemberCodec,
    payload_type: u8,
    muted: bool,
    deaf: bool,
    /// Q16 linear gain.
    gain: u32,
    coach_of: Option<StreamIdx>,
    input: Input,
    /// Opus: the encoder of the member's own mix (while it talks or is coached).
    encoder: Option<Box<OpusOut>>,
    /// Member rate → conference rate (when lower).
    up: Option<Resampler>,
    /// Conference rate → member rate, for its own mix.
    down: Option<Resampler>,
    /// This tick's frame at the conference rate.
    pcm: [i16; FRAME_MAX],
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
    /// Mixing rate: the highest member rate (8 kHz with no member).
    rate: u32,
    members: Vec<Option<Member>>,
    /// Conference rate → each lower rate, for the shared mix (by [`rate_index`]).
    shared_down: [Option<Resampler>; 3],
    /// Encoders of the shared mix for Opus members, by rate.
    shared_opus: [Option<Box<OpusOut>>; 3],
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

    /// Samples per 20 ms frame at the conference rate.
    fn frame(&self) -> usize {
        (self.rate / 50) as usize
    }

    /// Sets the mixing rate to the highest member rate and builds the resamplers that rate
    /// needs (the command path: this allocates).
    fn retune(&mut self) {
        let rate = self
            .members
            .iter()
            .flatten()
            .map(|m| m.codec.rate())
            .max()
            .unwrap_or(8_000);
        let changed = rate != self.rate;
        self.rate = rate;
        for m in self.members.iter_mut().flatten() {
            let r = m.codec.rate();
            let fits = m.up.is_some() == (r < rate);
            if changed || !fits {
                m.up = (r < rate).then(|| Resampler::new(r, rate).ok()).flatten();
                m.down = (r < rate).then(|| Resampler::new(rate, r).ok()).flatten();
            }
        }
        if changed {
            for (k, r) in RATES.into_iter().enumerate() {
                self.shared_down[k] = (r < rate).then(|| Resampler::new(rate, r).ok()).flatten();
            }
        }
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
    total: [i32; FRAME_MAX],
    own: [i32; FRAME_MAX],
    pcm: [i16; FRAME_MAX],
    /// A frame at a member's rate (read from its buffer, or its mix resampled down).
    low: [i16; FRAME_MAX],
    /// The shared mix at the conference rate, then at each rate (`shared_at_ok`).
    shared_pcm: [i16; FRAME_MAX],
    shared_at: [[i16; FRAME_MAX]; 3],
    shared_at_ok: [bool; 3],
    /// The shared mix encoded per output this tick (length; `None` until a member needs it).
    shared_enc: [[u8; ENCODED_MAX]; OUTPUTS],
    shared_len: [Option<usize>; OUTPUTS],
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
                total: [0; FRAME_MAX],
                own: [0; FRAME_MAX],
                pcm: [0; FRAME_MAX],
                low: [0; FRAME_MAX],
                shared_pcm: [0; FRAME_MAX],
                shared_at: [[0; FRAME_MAX]; 3],
                shared_at_ok: [false; 3],
                shared_enc: [[0; ENCODED_MAX]; OUTPUTS],
                shared_len: [None; OUTPUTS],
                packet: [0; PACKET],
                coaches: Vec::with_capacity(16),
            }),
            seed,
            stats: MixStats::default(),
            // The worker's histogram bounds, so publishing is an `add` that cannot fail or
            // allocate; longer ticks saturate.
            tick_ns: crate::worker::new_histogram(),
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
        let (input, encoder) = match spec.codec {
            MemberCodec::G711(_) => (Input::G711(Jitter::new(spec.jitter)), None),
            MemberCodec::Opus { rate } => {
                let i = OpusIn::new(rate, spec.jitter).map_err(|e| MixError::Codec(e.0))?;
                let o = OpusOut::new(rate).map_err(|e| MixError::Codec(e.0))?;
                (Input::Opus(Box::new(i)), Some(Box::new(o)))
            }
        };
        let saved_peer = s.peer;
        let coach_of = spec
            .coach_of
            .map(|(relay, side)| self.find_stream(id, relay, side, table))
            .transpose()?;
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
        if let MemberCodec::Opus { rate } = spec.codec {
            let k = rate_index(rate);
            if conf.shared_opus[k].is_none() {
                let o = OpusOut::new(rate).map_err(|e| MixError::Codec(e.0))?;
                conf.shared_opus[k] = Some(Box::new(o));
            }
        }
        let member = Member {
            stream: idx,
            saved_peer,
            relay: spec.relay,
            side: spec.side,
            codec: spec.codec,
            payload_type: spec.payload_type,
            muted: spec.muted,
            deaf: spec.deaf,
            gain: db_to_q16(spec.gain_db),
            coach_of,
            input,
            encoder,
            up: None,
            down: None,
            pcm: [0; FRAME_MAX],
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
        conf.retune();
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
        conf.retune();
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
                jitter: m.input.stats(),
                target_ms: m.input.target_ms(),
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
            rate: 8_000,
            members: Vec::new(),
            shared_down: [None, None, None],
            shared_opus: [None, None, None],
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
        // Arrival in RTP clock units (8 or 48 kHz) for the jitter estimate.
        let result = match (&mut m.input, m.codec) {
            (Input::G711(jb), MemberCodec::G711(law)) => {
                let arrival = ((now_ns / 1000).wrapping_mul(8) / 1000) as u32;
                jb.push(law, p.ssrc(), p.timestamp(), p.payload(), arrival)
            }
            (Input::Opus(o), _) => {
                let arrival = ((now_ns / 1000).wrapping_mul(48) / 1000) as u32;
                o.push(p.ssrc(), p.timestamp(), p.payload(), arrival)
            }
            (Input::G711(_), MemberCodec::Opus { .. }) => Err(jitter::PushError::Size),
        };
        match result {
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
                    let sc = &mut self.scratch;
                    let st = &mut self.stats;
                    match conf.rate {
                        8_000 => tick::<160, E, O>(conf, sc, st, table, events, out, now_ns),
                        16_000 => tick::<320, E, O>(conf, sc, st, table, events, out, now_ns),
                        _ => tick::<960, E, O>(conf, sc, st, table, events, out, now_ns),
                    }
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
            && a.codec == b.codec
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

/// One conference tick at the rate whose 20 ms frame is `N` samples (a constant, so the
/// per-sample loops compile for their exact length).
fn tick<const N: usize, E: EventSink, O: MixOut>(
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
    let n = N;
    sc.total[..n].fill(0);
    sc.coaches.clear();
    // 1. Each member's frame at the conference rate: read, gain, talking, contribution.
    for (mi, slot) in conf.members.iter_mut().enumerate() {
        let Some(m) = slot.as_mut() else { continue };
        let concealed_before = m.input.stats().concealed_frames;
        let mn = (m.codec.rate() / 50) as usize;
        let kind = match m.up.as_mut() {
            Some(up) => {
                let kind = m.input.read(&mut sc.low[..mn]);
                up.process(&sc.low[..mn], &mut m.pcm[..n]);
                kind
            }
            // At the conference rate already (`n == mn`).
            None => m.input.read(&mut m.pcm[..mn.min(n)]),
        };
        stats.concealed_frames += m.input.stats().concealed_frames - concealed_before;
        let pcm = &mut m.pcm[..n];
        if m.gain != UNITY {
            for s in pcm.iter_mut() {
                *s = ((i64::from(*s) * i64::from(m.gain)) >> 16).clamp(-32_768, 32_767) as i16;
            }
        }
        let energy = if kind == FrameKind::Silent {
            0
        } else {
            pcm.iter()
                .map(|s| (i64::from(*s) * i64::from(*s)) as u64)
                .sum::<u64>()
                / n as u64
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
            for (t, s) in sc.total[..n].iter_mut().zip(pcm.iter()) {
                *t += i32::from(*s);
            }
        }
        if let Some(c) = m.coach_of.filter(|_| speaks) {
            sc.coaches.push((c, mi as u32));
        }
    }
    // 2. Tones for everyone.
    if let Some((beep, pos)) = conf.beep.as_mut() {
        if add_beep(*beep, pos, &mut sc.total[..n], conf.rate) {
            conf.beep = None;
            // Two plain members may go back to forwarding (from the next packet on).
            relink(conf, table);
        }
    }
    // 3. The shared mix (also what a recording of the conference gets, as 8 kHz µ-law).
    conf.shared.apply(&sc.total[..n], &mut sc.shared_pcm[..n]);
    sc.shared_len = [None; OUTPUTS];
    sc.shared_at_ok = [false; 3];
    if conf.rec.is_some() {
        let mu = MemberCodec::G711(Law::Mu);
        let len = shared_encoding(conf, sc, mu, stats);
        if let Some((tap, seq, ts)) = conf.rec.as_mut() {
            tap.push(*seq, *ts, Law::Mu.payload_type(), &sc.shared_enc[0][..len]);
            *seq = seq.wrapping_add(1);
            *ts = ts.wrapping_add(FRAME as u32);
        }
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
        let codec = m.codec;
        let coached_by = sc.coaches.iter().any(|(c, _)| *c == stream);
        let len = if m.contributes || coached_by {
            sc.own[..n].copy_from_slice(&sc.total[..n]);
            if m.contributes {
                for (o, s) in sc.own[..n].iter_mut().zip(m.pcm[..n].iter()) {
                    *o -= i32::from(*s);
                }
            }
            for (_, ci) in sc.coaches.iter().filter(|(c, _)| *c == stream) {
                if let Some(coach) = conf.members[*ci as usize].as_ref() {
                    for (o, s) in sc.own[..n].iter_mut().zip(coach.pcm[..n].iter()) {
                        *o += i32::from(*s);
                    }
                }
            }
            let Some(m) = conf.members[mi].as_mut() else {
                continue;
            };
            m.limiter.apply(&sc.own[..n], &mut sc.pcm[..n]);
            let mn = (codec.rate() / 50) as usize;
            match m.down.as_mut() {
                Some(down) => {
                    down.process(&sc.pcm[..n], &mut sc.low[..mn]);
                }
                None => {
                    let k = mn.min(n);
                    sc.low[..k].copy_from_slice(&sc.pcm[..k]);
                }
            }
            stats.encodes += 1;
            let payload = &mut sc.packet[12..];
            match (codec, m.encoder.as_mut()) {
                (MemberCodec::G711(law), _) => {
                    for (e, s) in payload[..mn].iter_mut().zip(sc.low[..mn].iter()) {
                        *e = law.encode(*s);
                    }
                    mn
                }
                (MemberCodec::Opus { .. }, Some(enc)) => enc
                    .encode(&sc.low[..mn], &mut payload[..ENCODED_MAX])
                    .unwrap_or(0),
                (MemberCodec::Opus { .. }, None) => 0,
            }
        } else {
            let len = shared_encoding(conf, sc, codec, stats);
            let v = codec.output();
            sc.packet[12..12 + len].copy_from_slice(&sc.shared_enc[v][..len]);
            len
        };
        if len == 0 {
            // The encoder refused the frame: nothing to send this tick.
            stats.bad += 1;
            continue;
        }
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
        m.first = false;
        m.seq = m.seq.wrapping_add(1);
        m.ts = m.ts.wrapping_add(codec.ts_per_frame());
        if out.send(table, stream, &sc.packet[..12 + len]) {
            stats.packets_out += 1;
        }
    }
}

/// The shared mix encoded for `codec` (once per tick and output) into
/// `sc.shared_enc[codec.output()]`; returns its length (0 if the encoder refused it).
fn shared_encoding(
    conf: &mut Conference,
    sc: &mut Scratch,
    codec: MemberCodec,
    stats: &mut MixStats,
) -> usize {
    let v = codec.output();
    if let Some(len) = sc.shared_len[v] {
        return len;
    }
    let n = conf.frame();
    let rate = codec.rate();
    let ri = rate_index(rate);
    let mn = (rate / 50) as usize;
    // The shared mix at the codec's rate (once per rate and tick).
    if !sc.shared_at_ok[ri] {
        match conf.shared_down[ri].as_mut() {
            // Present exactly for the rates below the conference's.
            Some(down) => {
                down.process(&sc.shared_pcm[..n], &mut sc.shared_at[ri][..mn]);
            }
            _ => {
                let k = mn.min(n);
                sc.shared_at[ri][..k].copy_from_slice(&sc.shared_pcm[..k]);
            }
        }
        sc.shared_at_ok[ri] = true;
    }
    let pcm = &sc.shared_at[ri][..mn];
    let enc = &mut sc.shared_enc[v];
    let len = match codec {
        MemberCodec::G711(law) => {
            for (b, s) in enc[..mn].iter_mut().zip(pcm.iter()) {
                *b = law.encode(*s);
            }
            mn
        }
        MemberCodec::Opus { .. } => match conf.shared_opus[ri].as_mut() {
            Some(o) => o.encode(pcm, &mut enc[..]).unwrap_or(0),
            None => 0,
        },
    };
    stats.encodes += 1;
    sc.shared_len[v] = Some(len);
    len
}

/// Adds the next frame of a beep (two 100 ms tones at −16 dBFS) at `rate`; true when it is
/// over.
fn add_beep(beep: Beep, pos: &mut u32, total: &mut [i32], rate: u32) -> bool {
    let tone = rate / 10;
    let (f1, f2) = match beep {
        Beep::Enter => (660.0, 880.0),
        Beep::Exit => (880.0, 660.0),
    };
    for t in total.iter_mut() {
        if *pos >= 2 * tone {
            return true;
        }
        let f = if *pos < tone { f1 } else { f2 };
        let x = f64::from(*pos) / f64::from(rate);
        *t += (5200.0 * (2.0 * std::f64::consts::PI * f * x).sin()) as i32;
        *pos += 1;
    }
    *pos >= 2 * tone
}

/// dB (clamped to ±24) to Q16 linear gain.
fn db_to_q16(db: i8) -> u32 {
    let db = f64::from(db.clamp(-24, 24));
    (10f64.powf(db / 20.0) * f64::from(UNITY)).round() as u32
}

#[cfg(all(test, feature = "opus"))]
mod opus_tests;
#[cfg(test)]
mod tests;
