//! A member's adaptive jitter buffer: decoded samples in a ring indexed by RTP timestamp, read
//! one 20 ms frame per mixer tick, with packet-loss concealment.
//!
//! Packets are decoded when they arrive (the work spreads over arrivals instead of piling up on
//! the tick) and written where their timestamp says, so reordering costs nothing and any packet
//! time that is a multiple of 2 ms works. Validity is kept per 16-sample block (a tag with the
//! block's timestamp), so a late or lost packet leaves exactly its blocks missing.
//!
//! Playout: the first packet (and any SSRC change or timestamp jump) resets the buffer with the
//! playout point at that packet; ticks then return silence, without moving, until `target`
//! samples are queued (start-up delay, not concealment). Then each tick reads `FRAME` samples:
//! - everything there → audio;
//! - some blocks missing but later audio has arrived → those blocks concealed (the last good
//!   frame, attenuated 6 dB per concealed frame, silent after three), playout advances;
//! - nothing there yet (the stream is late or paused) → concealment without advancing, so the
//!   delay grows by one frame instead of dropping what is about to arrive;
//! - after three concealed frames the member is silent (not counted as concealment);
//! - more than `target` + 40 ms queued for a second, or more than the cap at once → the
//!   playout point jumps forward to `target` (the delay shrinks back).
//!
//! `target` follows the RFC 3550 interarrival jitter: 20 ms + 3 × jitter + 10 ms, kept
//! between [`TARGET_MIN`] and [`TARGET_MAX`] (or fixed by the member's settings).

use crate::g711::Law;

/// Samples per mixer frame (20 ms at 8 kHz).
pub const FRAME: usize = 160;
/// Ring size in samples (256 ms at 8 kHz).
const RING: usize = 2048;
/// Samples per validity block.
const BLOCK: usize = 16;
const BLOCKS: usize = RING / BLOCK;
/// Least and most adaptive playout delay, in samples (20 and 60 ms).
pub const TARGET_MIN: u32 = 160;
pub const TARGET_MAX: u32 = 480;
/// Most audio held ahead of playout (200 ms); more and the playout point jumps forward.
pub const CAP: u32 = 1600;
/// Ticks with too much queued before the delay is trimmed (1 s).
const TRIM_TICKS: u32 = 50;
/// Largest payload accepted (120 ms of G.711).
pub const PAYLOAD_MAX: usize = 960;

/// What a tick's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Received audio (some blocks may be concealed).
    Audio,
    /// Nothing received for this frame: concealment of the last audio.
    Concealed,
    /// No audio (never started, or idle): the frame is zeros.
    Silent,
}

/// Why a packet did not enter the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Empty or larger than [`PAYLOAD_MAX`].
    Size,
    /// Its samples were due before the playout point.
    Late,
}

/// Buffer counters (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JitterStats {
    pub packets: u64,
    pub late: u64,
    pub bad_size: u64,
    pub resets: u64,
    pub concealed_frames: u64,
    pub trimmed_samples: u64,
}

/// Playout delay policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// Follow the measured jitter between 20 and 60 ms.
    #[default]
    Adaptive,
    /// A fixed delay in milliseconds (clamped to 20–200).
    Fixed(u16),
}

/// One member's jitter buffer (about 5 KB, allocated when the member joins).
pub struct Jitter {
    ring: Box<[i16; RING]>,
    tags: Box<[u32; BLOCKS]>,
    valid: [u64; BLOCKS / 64],
    last: [i16; FRAME],
    policy: Target,
    started: bool,
    /// Waiting for `target` samples before the first read.
    priming: bool,
    ssrc: u32,
    /// Timestamps of block starts are `phase` modulo [`BLOCK`] (the first packet's).
    phase: u32,
    /// Timestamp of the next sample to play.
    play: u32,
    /// One past the newest sample received.
    newest_end: u32,
    target: u32,
    /// RFC 3550 jitter estimate, in samples × 16.
    jitter16: u32,
    last_transit: Option<u32>,
    concealed_run: u32,
    over_ticks: u32,
    pub stats: JitterStats,
}

impl Jitter {
    pub fn new(policy: Target) -> Self {
        let mut j = Jitter {
            ring: Box::new([0; RING]),
            tags: Box::new([0; BLOCKS]),
            valid: [0; BLOCKS / 64],
            last: [0; FRAME],
            policy,
            started: false,
            priming: false,
            ssrc: 0,
            phase: 0,
            play: 0,
            newest_end: 0,
            target: TARGET_MIN,
            jitter16: 0,
            last_transit: None,
            concealed_run: 0,
            over_ticks: 0,
            stats: JitterStats::default(),
        };
        j.target = j.compute_target();
        j
    }

    /// The current playout delay target, in samples.
    pub fn target(&self) -> u32 {
        self.target
    }

    fn compute_target(&self) -> u32 {
        match self.policy {
            Target::Fixed(ms) => (u32::from(ms.clamp(20, 200)) * 8).min(CAP),
            Target::Adaptive => {
                let jitter = self.jitter16 / 16;
                (FRAME as u32 + 3 * jitter + 80)
                    .next_multiple_of(BLOCK as u32)
                    .clamp(TARGET_MIN, TARGET_MAX)
            }
        }
    }

    fn reset(&mut self, ssrc: u32, ts: u32, samples: u32) {
        self.started = true;
        self.ssrc = ssrc;
        self.phase = ts % BLOCK as u32;
        self.valid = [0; BLOCKS / 64];
        self.newest_end = ts.wrapping_add(samples);
        self.play = ts;
        self.priming = true;
        self.concealed_run = 0;
        self.over_ticks = 0;
        self.last_transit = None;
        self.stats.resets += 1;
    }

    /// Adds one packet's G.711 payload with RTP timestamp `ts`, arriving at `arrival` (RTP
    /// clock units of the receiver, for the jitter estimate).
    pub fn push(
        &mut self,
        law: Law,
        ssrc: u32,
        ts: u32,
        payload: &[u8],
        arrival: u32,
    ) -> Result<(), PushError> {
        let n = payload.len();
        if n == 0 || n > PAYLOAD_MAX {
            self.stats.bad_size += 1;
            return Err(PushError::Size);
        }
        let n32 = n as u32;
        if !self.started || ssrc != self.ssrc || ts.wrapping_sub(self.phase) % BLOCK as u32 != 0 {
            // New stream, or samples off the block grid (a timestamp discontinuity).
            self.reset(ssrc, ts, n32);
        }
        // Where the packet lies relative to playout.
        let ahead = ts.wrapping_sub(self.play) as i32;
        if ahead < 0 {
            if ahead > -(RING as i32) {
                self.stats.late += 1;
                return Err(PushError::Late);
            }
            // A jump far backwards: a new stream in all but SSRC.
            self.reset(ssrc, ts, n32);
        } else if ahead as u32 + n32 > (RING - FRAME) as u32 {
            // Too far ahead to hold: resynchronise on it.
            self.reset(ssrc, ts, n32);
        }
        // Jitter (RFC 3550 §6.4.1), in samples.
        let transit = arrival.wrapping_sub(ts);
        if let Some(prev) = self.last_transit {
            let d = (transit.wrapping_sub(prev) as i32).unsigned_abs().min(8000);
            // J += (|D| − J) / 16, kept ×16.
            self.jitter16 = (self.jitter16 + d).saturating_sub(self.jitter16 / 16);
        }
        self.last_transit = Some(transit);
        // Write samples where the timestamp says; the ring index is the timestamp modulo RING.
        for (k, b) in payload.iter().enumerate() {
            let t = ts.wrapping_add(k as u32);
            self.ring[t as usize % RING] = law.decode(*b);
        }
        // Mark each block the packet fills as valid (a trailing partial block stays invalid).
        let mut t = ts;
        let end = ts.wrapping_add(n32);
        while end.wrapping_sub(t) as i32 >= BLOCK as i32 {
            let b = self.block(t);
            self.tags[b] = t;
            self.valid[b / 64] |= 1 << (b % 64);
            t = t.wrapping_add(BLOCK as u32);
        }
        if end.wrapping_sub(self.newest_end) as i32 > 0 {
            self.newest_end = end;
        }
        self.stats.packets += 1;
        Ok(())
    }

    /// Start of the block holding sample `t`.
    #[inline]
    fn align(&self, t: u32) -> u32 {
        t.wrapping_sub(t.wrapping_sub(self.phase) % BLOCK as u32)
    }

    /// Index of the block starting at `t` (aligned). 2^32 is a multiple of the ring, so the
    /// index is continuous across timestamp wrap-around.
    #[inline]
    fn block(&self, aligned: u32) -> usize {
        (aligned.wrapping_sub(self.phase) as usize / BLOCK) % BLOCKS
    }

    fn block_ok(&self, aligned: u32) -> bool {
        let b = self.block(aligned);
        self.valid[b / 64] & (1 << (b % 64)) != 0 && self.tags[b] == aligned
    }

    fn clear_block(&mut self, aligned: u32) {
        let b = self.block(aligned);
        self.valid[b / 64] &= !(1 << (b % 64));
    }

    /// Reads the next frame into `out`.
    pub fn read(&mut self, out: &mut [i16; FRAME]) -> FrameKind {
        if !self.started {
            *out = [0; FRAME];
            return FrameKind::Silent;
        }
        self.target = self.compute_target();
        let depth = self.newest_end.wrapping_sub(self.play) as i32;
        if self.priming {
            if depth < self.target as i32 {
                *out = [0; FRAME];
                return FrameKind::Silent;
            }
            self.priming = false;
        }
        if depth > CAP as i32 {
            self.trim(depth as u32);
        } else if depth > (self.target + 2 * FRAME as u32) as i32 {
            self.over_ticks += 1;
            if self.over_ticks >= TRIM_TICKS {
                self.trim(depth as u32);
            }
        } else {
            self.over_ticks = 0;
        }
        // The playout point need not be on the block grid (a trim or reset may leave it off).
        let start = self.play;
        let mut any = false;
        let mut all = true;
        let mut k = 0;
        while k < FRAME {
            let t = start.wrapping_add(k as u32);
            let aligned = self.align(t);
            let span = (BLOCK - t.wrapping_sub(aligned) as usize).min(FRAME - k);
            if self.block_ok(aligned) {
                any = true;
                for i in 0..span {
                    out[k + i] = self.ring[(t as usize + i) % RING];
                }
                if t.wrapping_add(span as u32) == aligned.wrapping_add(BLOCK as u32) {
                    self.clear_block(aligned);
                }
            } else {
                all = false;
                let level = self.concealed_run + 1;
                for i in 0..span {
                    out[k + i] = conceal(self.last[k + i], level);
                }
            }
            k += span;
        }
        if any || depth > 0 {
            self.play = self.play.wrapping_add(FRAME as u32);
        } // else nothing has arrived for this frame: hold the playout point.
        if any {
            if all {
                self.concealed_run = 0;
            } else {
                self.stats.concealed_frames += 1;
            }
            self.last = *out;
            return FrameKind::Audio;
        }
        // Concealment (already in `out`, attenuated by the run length) for three frames, then
        // silence (`conceal` gives zeros from the fourth).
        self.concealed_run = self.concealed_run.saturating_add(1);
        if self.concealed_run > 3 {
            FrameKind::Silent
        } else {
            self.stats.concealed_frames += 1;
            FrameKind::Concealed
        }
    }

    /// Jumps the playout point forward so `target` samples remain queued. The blocks skipped
    /// need no clearing: a block's tag names its timestamp, and playout never goes back.
    fn trim(&mut self, depth: u32) {
        let skip = depth.saturating_sub(self.target);
        self.play = self.play.wrapping_add(skip);
        self.stats.trimmed_samples += u64::from(skip);
        self.over_ticks = 0;
    }
}

/// The last good sample attenuated 6 dB per concealed frame; silent after three.
#[inline]
fn conceal(s: i16, level: u32) -> i16 {
    if level > 3 {
        0
    } else {
        s >> level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ts: u32, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| {
                let t = f64::from(ts.wrapping_add(i as u32)) / 8000.0;
                Law::Mu.encode((8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16)
            })
            .collect()
    }

    fn silent(out: &[i16; FRAME]) -> bool {
        out.iter().all(|s| *s == 0)
    }

    /// Packets every 20 ms, ticks every 20 ms at every phase: after the start-up delay no frame
    /// is concealed or silent.
    #[test]
    fn on_time_packets_never_cause_inserted_silence() {
        for phase_ms in [0u32, 1, 5, 10, 15, 19] {
            let mut j = Jitter::new(Target::Adaptive);
            let ts0 = 1_000_000u32;
            let mut out = [0; FRAME];
            let mut kinds = Vec::new();
            // Time in ms; a packet at every multiple of 20, a tick at phase + multiples of 20.
            for ms in 0..2000u32 {
                if ms % 20 == 0 {
                    let ts = ts0 + ms * 8;
                    j.push(Law::Mu, 7, ts, &tone(ts, FRAME), ms * 8)
                        .expect("push");
                }
                if ms % 20 == phase_ms && ms > 0 {
                    kinds.push(j.read(&mut out));
                }
            }
            let settled = &kinds[3..];
            assert!(
                settled.iter().all(|k| *k == FrameKind::Audio),
                "phase {phase_ms}: {:?}",
                &kinds
            );
            assert_eq!(j.stats.late, 0);
            assert_eq!(j.stats.concealed_frames, 0, "phase {phase_ms}");
        }
    }

    #[test]
    fn reordered_packets_are_played_in_order() {
        let mut j = Jitter::new(Target::Fixed(60));
        let ts0 = 5000u32;
        let order = [0u32, 2, 1, 3, 5, 4, 6, 7];
        for k in order {
            let ts = ts0 + k * 160;
            let payload: Vec<u8> = vec![Law::Mu.encode(k as i16 * 100 + 100); 160];
            j.push(Law::Mu, 1, ts, &payload, ts).expect("push");
        }
        let mut out = [0; FRAME];
        let mut seen = Vec::new();
        for _ in 0..8 {
            if j.read(&mut out) == FrameKind::Audio && !silent(&out) {
                seen.push(out[80]);
            }
        }
        let decoded: Vec<i16> = (0..8)
            .map(|k| Law::Mu.decode(Law::Mu.encode(k * 100 + 100)))
            .collect();
        assert!(
            decoded.windows(seen.len()).any(|w| w == seen.as_slice()),
            "in order: {seen:?}"
        );
    }

    #[test]
    fn a_lost_packet_is_concealed_then_audio_resumes() {
        let mut j = Jitter::new(Target::Fixed(40));
        let mut out = [0; FRAME];
        let mut kinds = Vec::new();
        for k in 0..20u32 {
            let ts = k * 160;
            if k != 8 {
                j.push(Law::Mu, 1, ts, &tone(ts, FRAME), ts).expect("push");
            }
            kinds.push(j.read(&mut out));
        }
        assert_eq!(j.stats.concealed_frames, 1, "{kinds:?}");
        assert_eq!(*kinds.last().expect("frames"), FrameKind::Audio);
    }

    #[test]
    fn late_and_malformed_packets_are_counted() {
        let mut j = Jitter::new(Target::Fixed(20));
        let mut out = [0; FRAME];
        for k in 0..10u32 {
            j.push(Law::Mu, 1, k * 160, &tone(k * 160, FRAME), k * 160)
                .expect("push");
            j.read(&mut out);
        }
        assert_eq!(
            j.push(Law::Mu, 1, 160, &tone(160, FRAME), 1600),
            Err(PushError::Late)
        );
        assert_eq!(j.push(Law::Mu, 1, 1600, &[], 1600), Err(PushError::Size));
        assert_eq!(
            j.push(Law::Mu, 1, 1600, &[0; PAYLOAD_MAX + 1], 1600),
            Err(PushError::Size)
        );
        assert_eq!((j.stats.late, j.stats.bad_size), (1, 2));
    }

    #[test]
    fn a_new_ssrc_or_a_timestamp_jump_resets() {
        let mut j = Jitter::new(Target::Adaptive);
        j.push(Law::Mu, 1, 0, &tone(0, FRAME), 0).expect("push");
        j.push(Law::Mu, 2, 900_000, &tone(0, FRAME), 160)
            .expect("push");
        j.push(Law::Mu, 2, 5, &tone(0, FRAME), 320).expect("push");
        assert_eq!(j.stats.resets, 3);
    }

    #[test]
    fn a_sender_running_fast_is_trimmed_back_to_target() {
        // 40 ms: trims by whole blocks; 25 ms: the new playout point falls inside a block.
        for ms in [40, 25] {
            let mut j = Jitter::new(Target::Fixed(ms));
            let mut out = [0; FRAME];
            // 21 packets per 20 ticks: the queue grows, then is trimmed.
            let mut ts = 0u32;
            for tick in 0..400u32 {
                j.push(Law::Mu, 1, ts, &tone(ts, FRAME), tick * 160)
                    .expect("push");
                ts += 160;
                if tick % 20 == 0 {
                    j.push(Law::Mu, 1, ts, &tone(ts, FRAME), tick * 160)
                        .expect("push");
                    ts += 160;
                }
                j.read(&mut out);
            }
            assert!(j.stats.trimmed_samples > 0);
            assert_eq!(
                j.stats.concealed_frames, 0,
                "{ms} ms: a trim loses nothing it keeps"
            );
            let depth = j.newest_end.wrapping_sub(j.play);
            assert!(depth <= j.target() + 3 * FRAME as u32, "depth {depth}");
        }
    }

    #[test]
    fn silence_after_the_stream_stops() {
        let mut j = Jitter::new(Target::Fixed(20));
        let mut out = [0; FRAME];
        for k in 0..5u32 {
            j.push(Law::Mu, 1, k * 160, &tone(k * 160, FRAME), k * 160)
                .expect("push");
            j.read(&mut out);
        }
        let kinds: Vec<FrameKind> = (0..10).map(|_| j.read(&mut out)).collect();
        assert_eq!(kinds[0], FrameKind::Concealed);
        assert_eq!(*kinds.last().expect("frames"), FrameKind::Silent);
        assert!(silent(&out));
        assert_eq!(j.stats.concealed_frames, 3, "silence is not concealment");
    }
}
