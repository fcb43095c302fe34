//! Opus members (RFC 7587): a packet jitter buffer in front of libopus's decoder, and the
//! encoders of what Opus members hear.
//!
//! Opus is stateful, so packets cannot be decoded as they arrive the way G.711 is (a reordered
//! packet would corrupt the decoder's state): they are kept whole, indexed by RTP timestamp
//! (always a 48 kHz clock for Opus), and decoded in timestamp order when the mixer reads the
//! member's next frame. The decoder runs at the member's rate (8, 16 or 48 kHz) and what it
//! produces waits in a small queue until a whole 20 ms frame is there, so any packet time from
//! 2.5 to 120 ms works.
//!
//! Playout follows the G.711 buffer's rules ([`super::jitter`]): start-up delay until `target`
//! is queued, then one frame per tick; a missing packet with later ones already here is
//! recovered from the next packet's in-band FEC when it has one, otherwise by the decoder's
//! concealment, and playout moves on; with nothing newer here the decoder conceals without
//! moving playout, for three frames, then the member is silent; too much queued for a second
//! (or more than the cap at once) skips packets down to `target`; a new SSRC or a timestamp
//! jump resets the buffer and the decoder.
//!
//! Everything is allocated when the member joins (decoder, slots, queue); reading and pushing
//! allocate nothing.

use opus::{Application, Bitrate, Channels, Decoder, Encoder};

use super::jitter::{FrameKind, JitterStats, PushError, Target};

/// RTP clock of Opus, whatever the audio's rate.
pub const CLOCK: u32 = 48_000;
/// Largest Opus payload accepted (256 kbit/s at 20 ms; more is counted as a bad size).
pub const PAYLOAD_MAX: usize = 640;
/// Packets held (320 ms of 20 ms packets; the cap keeps far fewer).
const SLOTS: usize = 16;
/// Decoded samples waiting to be read (a 120 ms packet at 48 kHz plus a frame).
const QUEUE: usize = 8192;
/// Least and most adaptive playout delay, and the cap, in 48 kHz units (20, 60, 200 ms).
const TARGET_MIN: u32 = 960;
const TARGET_MAX: u32 = 2880;
const CAP: u32 = 9600;
/// Ticks with too much queued before the delay is trimmed (1 s).
const TRIM_TICKS: u32 = 50;
/// Encoder settings for what members hear (ADR 0015): CELT only (libopus's restricted
/// low-delay mode) at the lowest complexity and 32 kbit/s. A mix of voices is not the single
/// talker SILK models; CELT's cost per frame is steady (no mode switches), its algorithmic
/// delay is 5 ms instead of SILK's 26.5, and it costs a third of SILK at 16 kHz (measured by
/// `voxedge bench mix --codec opus`).
const COMPLEXITY: i32 = 0;
const BITRATE: i32 = 32_000;

struct Slot {
    full: bool,
    ts: u32,
    /// Duration in 48 kHz units.
    dur: u32,
    len: u16,
    data: [u8; PAYLOAD_MAX],
}

/// Why an Opus codec could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("opus: {0}")]
pub struct OpusError(pub String);

fn check_rate(rate: u32) -> Result<(), OpusError> {
    if matches!(rate, 8_000 | 16_000 | 48_000) {
        Ok(())
    } else {
        Err(OpusError(format!("{rate} Hz: 8, 16 or 48 kHz")))
    }
}

/// A member's incoming Opus: jitter buffer and decoder.
pub struct OpusIn {
    dec: Decoder,
    rate: u32,
    slots: Box<[Slot]>,
    queue: Box<[i16; QUEUE]>,
    queued: usize,
    policy: Target,
    started: bool,
    priming: bool,
    ssrc: u32,
    /// Timestamp of the next packet to decode.
    play: u32,
    /// One past the newest sample received.
    newest_end: u32,
    /// Duration of the last packet seen (what a lost packet is assumed to have held).
    last_dur: u32,
    target: u32,
    jitter16: u32,
    last_transit: Option<u32>,
    concealed_run: u32,
    over_ticks: u32,
    pub stats: JitterStats,
}

impl OpusIn {
    /// Decodes at `rate` (8, 16 or 48 kHz).
    pub fn new(rate: u32, policy: Target) -> Result<Self, OpusError> {
        check_rate(rate)?;
        let dec = Decoder::new(rate, Channels::Mono).map_err(|e| OpusError(e.to_string()))?;
        let slots = (0..SLOTS)
            .map(|_| Slot {
                full: false,
                ts: 0,
                dur: 0,
                len: 0,
                data: [0; PAYLOAD_MAX],
            })
            .collect();
        let mut o = OpusIn {
            dec,
            rate,
            slots,
            queue: Box::new([0; QUEUE]),
            queued: 0,
            policy,
            started: false,
            priming: false,
            ssrc: 0,
            play: 0,
            newest_end: 0,
            last_dur: 960,
            target: TARGET_MIN,
            jitter16: 0,
            last_transit: None,
            concealed_run: 0,
            over_ticks: 0,
            stats: JitterStats::default(),
        };
        o.target = o.compute_target();
        Ok(o)
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// The playout delay target in milliseconds.
    pub fn target_ms(&self) -> u32 {
        self.target / 48
    }

    fn compute_target(&self) -> u32 {
        let t = match self.policy {
            Target::Fixed(ms) => (u32::from(ms.clamp(20, 200)) * 48).min(CAP),
            Target::Adaptive => {
                (960 + 3 * (self.jitter16 / 16) + 480).clamp(TARGET_MIN, TARGET_MAX)
            }
        };
        // No more than the slots hold of packets this long, or priming would never end.
        t.min((SLOTS as u32 - 1) * self.last_dur)
    }

    fn reset(&mut self, ssrc: u32, ts: u32) {
        self.started = true;
        self.ssrc = ssrc;
        for s in self.slots.iter_mut() {
            s.full = false;
        }
        self.queued = 0;
        self.play = ts;
        self.newest_end = ts;
        self.priming = true;
        self.concealed_run = 0;
        self.over_ticks = 0;
        self.last_transit = None;
        let _ = self.dec.reset_state();
        self.stats.resets += 1;
    }

    /// Adds one RTP packet's payload with timestamp `ts`, arriving at `arrival` (48 kHz units
    /// of the receiver's clock, for the jitter estimate).
    pub fn push(
        &mut self,
        ssrc: u32,
        ts: u32,
        payload: &[u8],
        arrival: u32,
    ) -> Result<(), PushError> {
        if payload.is_empty() || payload.len() > PAYLOAD_MAX {
            self.stats.bad_size += 1;
            return Err(PushError::Size);
        }
        let dur = match opus::packet::get_nb_samples(payload, CLOCK) {
            Ok(d) if (120..=5760).contains(&d) => d as u32,
            _ => {
                self.stats.bad_size += 1;
                return Err(PushError::Size);
            }
        };
        if !self.started || ssrc != self.ssrc {
            self.reset(ssrc, ts);
        }
        let ahead = ts.wrapping_sub(self.play) as i32;
        if ahead < 0 {
            if ahead > -(CAP as i32 * 2) {
                self.stats.late += 1;
                return Err(PushError::Late);
            }
            self.reset(ssrc, ts);
        } else if ahead as u32 + dur > 2 * CAP {
            // Too far ahead to hold: resynchronise on it.
            self.reset(ssrc, ts);
        }
        let transit = arrival.wrapping_sub(ts);
        if let Some(prev) = self.last_transit {
            let d = (transit.wrapping_sub(prev) as i32)
                .unsigned_abs()
                .min(48_000);
            self.jitter16 = (self.jitter16 + d).saturating_sub(self.jitter16 / 16);
        }
        self.last_transit = Some(transit);
        if self.slot_at(ts).is_some() {
            // A duplicate: the first copy is kept.
            return Ok(());
        }
        let play = self.play;
        self.store(ts, dur, payload, play)
    }

    /// Puts a packet in a free slot, or in one whose packet is behind playout (played or
    /// skipped).
    fn store(&mut self, ts: u32, dur: u32, payload: &[u8], play: u32) -> Result<(), PushError> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| !s.full || (s.ts.wrapping_sub(play) as i32) < 0);
        let Some(slot) = slot else {
            // Every slot holds a packet still to play: more than the cap is queued.
            self.stats.late += 1;
            return Err(PushError::Late);
        };
        slot.full = true;
        slot.ts = ts;
        slot.dur = dur;
        slot.len = payload.len() as u16;
        slot.data[..payload.len()].copy_from_slice(payload);
        let end = ts.wrapping_add(dur);
        if end.wrapping_sub(self.newest_end) as i32 > 0 {
            self.newest_end = end;
        }
        self.last_dur = dur;
        self.stats.packets += 1;
        Ok(())
    }

    fn slot_at(&self, ts: u32) -> Option<usize> {
        self.slots.iter().position(|s| s.full && s.ts == ts)
    }

    /// Samples at the decoding rate for `dur` units of 48 kHz.
    fn samples(&self, dur: u32) -> usize {
        (dur * (self.rate / 8000) / 6) as usize
    }

    /// Decodes the packet in slot `k` (or, with `fec`, the previous frame from its FEC data;
    /// `dur` is then the lost duration) onto the queue. Returns whether audio was decoded.
    fn decode_into_queue(&mut self, k: usize, fec: bool, dur: u32) -> bool {
        let n = self.samples(dur);
        if self.queued + n > QUEUE {
            return false;
        }
        let s = &self.slots[k];
        let out = &mut self.queue[self.queued..self.queued + n];
        match self.dec.decode(&s.data[..usize::from(s.len)], out, fec) {
            Ok(got) if got > 0 => {
                self.queued += got.min(n);
                true
            }
            _ => {
                self.stats.bad_size += 1;
                false
            }
        }
    }

    /// The decoder's concealment of `samples` samples (rounded up to 2.5 ms) onto the queue.
    fn conceal_into_queue(&mut self, samples: usize) -> bool {
        let step = (self.rate / 400) as usize;
        let n = samples.div_ceil(step) * step;
        if n == 0 || self.queued + n > QUEUE {
            return false;
        }
        let out = &mut self.queue[self.queued..self.queued + n];
        match self.dec.decode(&[], out, false) {
            Ok(got) if got > 0 => {
                self.queued += got.min(n);
                true
            }
            _ => false,
        }
    }

    /// Reads the next 20 ms frame (`out.len()` samples at the decoding rate).
    pub fn read(&mut self, out: &mut [i16]) -> FrameKind {
        let n = out.len();
        if !self.started {
            out.fill(0);
            return FrameKind::Silent;
        }
        self.target = self.compute_target();
        let depth = self.newest_end.wrapping_sub(self.play) as i32;
        if self.priming {
            if depth < self.target as i32 {
                out.fill(0);
                return FrameKind::Silent;
            }
            self.priming = false;
        }
        if depth > CAP as i32 {
            self.trim();
        } else if depth > (self.target + 1920) as i32 {
            self.over_ticks += 1;
            if self.over_ticks >= TRIM_TICKS {
                self.trim();
            }
        } else {
            self.over_ticks = 0;
        }
        let mut decoded = false;
        let mut concealed = false;
        while self.queued < n {
            if let Some(k) = self.slot_at(self.play) {
                let dur = self.slots[k].dur;
                if self.decode_into_queue(k, false, dur) {
                    decoded = true;
                } else {
                    concealed |= self.conceal_into_queue(self.samples(dur));
                }
                self.slots[k].full = false;
                self.play = self.play.wrapping_add(dur);
            } else if (self.newest_end.wrapping_sub(self.play) as i32) > 0 {
                // Lost: the next packet's FEC, or the decoder's concealment; playout moves on.
                let lost = self.last_dur;
                let next = self.slot_at(self.play.wrapping_add(lost));
                let ok = match next {
                    Some(k) => self.decode_into_queue(k, true, lost),
                    None => false,
                } || self.conceal_into_queue(self.samples(lost));
                concealed |= ok;
                self.play = self.play.wrapping_add(lost);
                if !ok {
                    break;
                }
            } else {
                break;
            }
        }
        if self.queued < n {
            // Nothing newer here (late or paused): conceal without moving playout, three
            // frames, then silence.
            self.concealed_run = self.concealed_run.saturating_add(1);
            if decoded || self.concealed_run <= 3 {
                let missing = n - self.queued;
                self.conceal_into_queue(missing);
            }
            if self.queued < n {
                self.queue[self.queued..n].fill(0);
                self.queued = n;
            }
            let kind = if decoded {
                FrameKind::Audio
            } else if self.concealed_run <= 3 {
                FrameKind::Concealed
            } else {
                FrameKind::Silent
            };
            if kind != FrameKind::Silent {
                self.stats.concealed_frames += 1;
            }
            self.take(out);
            return kind;
        }
        self.take(out);
        if concealed {
            self.stats.concealed_frames += 1;
        } else {
            self.concealed_run = 0;
        }
        // Decoded now, or earlier (a long packet's rest waited in the queue).
        FrameKind::Audio
    }

    /// Moves the first `out.len()` queued samples into `out`.
    fn take(&mut self, out: &mut [i16]) {
        let n = out.len();
        out.copy_from_slice(&self.queue[..n]);
        self.queue.copy_within(n..self.queued, 0);
        self.queued -= n;
    }

    /// Skips queued packets so about `target` remains.
    fn trim(&mut self) {
        let keep_from = self.newest_end.wrapping_sub(self.target);
        let mut skipped = 0u64;
        while (keep_from.wrapping_sub(self.play) as i32) > 0 {
            let dur = match self.slot_at(self.play) {
                Some(k) => {
                    self.slots[k].full = false;
                    self.slots[k].dur
                }
                None => self.last_dur,
            };
            self.play = self.play.wrapping_add(dur);
            skipped += u64::from(dur);
        }
        self.stats.trimmed_samples += skipped;
        self.over_ticks = 0;
    }
}

/// An Opus encoder for what members hear.
pub struct OpusOut {
    enc: Encoder,
}

impl OpusOut {
    /// Encodes 20 ms frames at `rate` (8, 16 or 48 kHz).
    pub fn new(rate: u32) -> Result<Self, OpusError> {
        check_rate(rate)?;
        let e = |e: opus::Error| OpusError(e.to_string());
        let mut enc = Encoder::new(rate, Channels::Mono, Application::LowDelay).map_err(e)?;
        enc.set_complexity(COMPLEXITY).map_err(e)?;
        enc.set_bitrate(Bitrate::Bits(BITRATE)).map_err(e)?;
        Ok(OpusOut { enc })
    }

    /// Encodes one frame (`pcm.len()` = 20 ms at the rate) into `out`; the payload's length,
    /// or `None` when libopus refuses.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Option<usize> {
        self.enc.encode(pcm, out).ok().filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` packets of `ms` milliseconds of a 440 Hz tone at 16 kHz, with their timestamps.
    fn packets(ms: u32, count: u32) -> Vec<(u32, Vec<u8>)> {
        let mut e = Encoder::new(16_000, Channels::Mono, Application::Voip).expect("encoder");
        let n = (16 * ms) as usize;
        (0..count)
            .map(|k| {
                let pcm: Vec<i16> = (0..n)
                    .map(|i| {
                        let t = (k as usize * n + i) as f64 / 16_000.0;
                        (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                    })
                    .collect();
                (k * 48 * ms, e.encode_vec(&pcm, 1000).expect("encode"))
            })
            .collect()
    }

    fn loud(x: &[i16]) -> bool {
        x.iter().map(|s| i64::from(*s) * i64::from(*s)).sum::<i64>() / x.len() as i64 > 1_000_000
    }

    /// One packet per tick, in time, for 10, 20, 40 and 60 ms packets: after the start-up delay
    /// every frame is decoded audio and nothing is concealed.
    #[test]
    fn on_time_packets_of_any_length_are_never_concealed() {
        for ms in [10u32, 20, 40, 60] {
            let mut j = OpusIn::new(16_000, Target::Adaptive).expect("decoder");
            let ps = packets(ms, 2000 / ms);
            let mut out = [0i16; 320];
            let mut kinds = Vec::new();
            let mut next = 0;
            for tick in 0..100u32 {
                // Packets are sent when their audio is complete.
                while next < ps.len() && (next as u32 + 1) * ms <= tick * 20 + 20 {
                    let (ts, p) = &ps[next];
                    j.push(9, *ts, p, tick * 960).expect("push");
                    next += 1;
                }
                kinds.push(j.read(&mut out));
            }
            let settled = &kinds[10..];
            assert!(
                settled.iter().all(|k| *k == FrameKind::Audio),
                "{ms} ms: {kinds:?}"
            );
            assert_eq!(j.stats.concealed_frames, 0, "{ms} ms");
            assert!(loud(&out), "{ms} ms: the tone is decoded");
        }
    }

    /// A delay target longer than the slots hold of short packets (200 ms of 10 ms packets)
    /// still ends the start-up: the target is what the slots can hold.
    #[test]
    fn a_long_target_with_short_packets_still_starts() {
        let mut j = OpusIn::new(16_000, Target::Fixed(200)).expect("decoder");
        let mut out = [0i16; 320];
        let mut kinds = Vec::new();
        for (k, (ts, p)) in packets(10, 100).into_iter().enumerate() {
            j.push(9, ts, &p, ts).expect("push");
            if k % 2 == 1 {
                kinds.push(j.read(&mut out));
            }
        }
        assert_eq!(
            *kinds.last().expect("frames"),
            FrameKind::Audio,
            "{kinds:?}"
        );
        assert!(loud(&out));
    }

    #[test]
    fn a_lost_packet_is_concealed_then_audio_resumes() {
        let mut j = OpusIn::new(16_000, Target::Fixed(40)).expect("decoder");
        let mut out = [0i16; 320];
        let mut kinds = Vec::new();
        for (k, (ts, p)) in packets(20, 30).into_iter().enumerate() {
            if k != 12 {
                j.push(9, ts, &p, ts).expect("push");
            }
            kinds.push(j.read(&mut out));
        }
        assert_eq!(j.stats.concealed_frames, 1, "{kinds:?}");
        assert_eq!(*kinds.last().expect("frames"), FrameKind::Audio);
        assert!(loud(&out));
    }

    #[test]
    fn reordered_packets_are_decoded_in_order() {
        let mut j = OpusIn::new(16_000, Target::Fixed(60)).expect("decoder");
        let ps = packets(20, 8);
        let mut out = [0i16; 320];
        for k in [0usize, 2, 1, 3, 5, 4, 7, 6] {
            j.push(9, ps[k].0, &ps[k].1, 0).expect("push");
        }
        let kinds: Vec<FrameKind> = (0..8).map(|_| j.read(&mut out)).collect();
        assert!(kinds.iter().all(|k| *k == FrameKind::Audio), "{kinds:?}");
        assert_eq!(j.stats.concealed_frames, 0);
        assert_eq!(j.stats.late, 0);
    }

    #[test]
    fn malformed_late_and_oversized_payloads_are_counted() {
        let mut j = OpusIn::new(16_000, Target::Fixed(20)).expect("decoder");
        let ps = packets(20, 10);
        let mut out = [0i16; 320];
        for (ts, p) in &ps {
            j.push(9, *ts, p, *ts).expect("push");
            j.read(&mut out);
        }
        assert_eq!(j.push(9, ps[1].0, &ps[1].1, 0), Err(PushError::Late));
        assert_eq!(j.push(9, 9600, &[], 0), Err(PushError::Size));
        assert_eq!(
            j.push(9, 9600, &[0; PAYLOAD_MAX + 1], 0),
            Err(PushError::Size)
        );
        // A code-3 TOC claiming 63 frames of 60 ms: more than 120 ms, refused.
        assert_eq!(
            j.push(9, 9600, &[0x1b, 0x3f, 0, 0], 0),
            Err(PushError::Size)
        );
        assert_eq!((j.stats.late, j.stats.bad_size), (1, 3));
        // Garbage that parses as a packet but does not decode is concealed, not a panic.
        j.push(9, 9600, &[0xfc, 0xff, 0xff, 0xff, 0xff], 0).ok();
        j.read(&mut out);
    }

    #[test]
    fn silence_after_the_stream_stops_and_a_new_ssrc_resets() {
        let mut j = OpusIn::new(16_000, Target::Fixed(20)).expect("decoder");
        let mut out = [0i16; 320];
        let ps = packets(20, 10);
        for (ts, p) in &ps[..5] {
            j.push(9, *ts, p, *ts).expect("push");
            j.read(&mut out);
        }
        let kinds: Vec<FrameKind> = (0..10).map(|_| j.read(&mut out)).collect();
        assert_eq!(kinds[0], FrameKind::Concealed);
        assert_eq!(*kinds.last().expect("frames"), FrameKind::Silent);
        assert!(out.iter().all(|s| *s == 0));
        assert_eq!(j.stats.concealed_frames, 3, "silence is not concealment");
        j.push(10, 77, &ps[0].1, 0).expect("push");
        assert_eq!(j.stats.resets, 2);
    }
}
