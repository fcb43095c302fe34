//! SSRC / sequence / timestamp rewriting so that the far end sees one continuous RTP stream
//! when the near source changes (new SSRC after a re-INVITE, a phone switching networks, …).
//!
//! The first source's SSRC is kept as the outgoing SSRC. When the incoming SSRC changes, the new
//! source's sequence numbers continue at last+1 and its timestamps continue from the last one
//! advanced by the wall-clock gap (at least one frame).

/// Egress rewrite state of one stream; plain data, updated per packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressRewrite {
    active: bool,
    in_ssrc: u32,
    out_ssrc: u32,
    seq_offset: u16,
    ts_offset: u32,
    last_out_seq: u16,
    last_out_ts: u32,
    last_in_ts: u32,
    /// Timestamp step between consecutive packets of the current source (one frame).
    ts_step: u32,
    last_ns: u64,
}

/// Output of [`EgressRewrite::map`]: the header fields to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
}

/// Timestamp step assumed before one has been observed: 20 ms at 8 kHz.
const DEFAULT_TS_STEP: u32 = 160;

impl EgressRewrite {
    /// Maps an incoming (ssrc, seq, ts) to the outgoing one, switching offsets on a new SSRC.
    #[inline]
    pub fn map(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        now_ns: u64,
        clock_rate_hz: u32,
    ) -> Rewritten {
        if !self.active {
            *self = EgressRewrite {
                active: true,
                in_ssrc: ssrc,
                out_ssrc: ssrc,
                ts_step: DEFAULT_TS_STEP,
                ..Default::default()
            };
        } else if ssrc != self.in_ssrc {
            let step = self.ts_step.max(1);
            let gap_ns = now_ns.saturating_sub(self.last_ns);
            let gap_ticks = (u128::from(gap_ns) * u128::from(clock_rate_hz) / 1_000_000_000) as u64;
            let advance = gap_ticks.clamp(u64::from(step), u64::from(u32::MAX / 2)) as u32;
            self.seq_offset = self.last_out_seq.wrapping_add(1).wrapping_sub(seq);
            self.ts_offset = self.last_out_ts.wrapping_add(advance).wrapping_sub(ts);
            self.in_ssrc = ssrc;
            self.last_in_ts = ts;
        } else {
            let delta = ts.wrapping_sub(self.last_in_ts);
            // A plausible frame step (≤ 1 s at 48 kHz) from in-order packets refines the guess.
            if delta > 0
                && delta <= 48_000
                && seq.wrapping_sub(self.last_out_seq.wrapping_sub(self.seq_offset)) == 1
            {
                self.ts_step = delta;
            }
        }
        let out = Rewritten {
            ssrc: self.out_ssrc,
            seq: seq.wrapping_add(self.seq_offset),
            ts: ts.wrapping_add(self.ts_offset),
        };
        // Track the newest packet only (reordered ones must not move the base backwards).
        if !self.seen_any() || out.seq.wrapping_sub(self.last_out_seq) < 0x8000 {
            self.last_out_seq = out.seq;
            self.last_out_ts = out.ts;
            self.last_in_ts = ts;
        }
        self.last_ns = now_ns;
        out
    }

    fn seen_any(&self) -> bool {
        self.last_ns != 0
    }

    /// The SSRC translation in force, `(incoming, outgoing)`, for rewriting RTCP.
    pub fn ssrc_map(&self) -> Option<(u32, u32)> {
        self.active.then_some((self.in_ssrc, self.out_ssrc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_source_passes_unchanged() {
        let mut r = EgressRewrite::default();
        for i in 0..5u16 {
            let o = r.map(
                0xaaaa,
                100 + i,
                1000 + u32::from(i) * 160,
                1 + u64::from(i) * 20_000_000,
                8000,
            );
            assert_eq!(
                o,
                Rewritten {
                    ssrc: 0xaaaa,
                    seq: 100 + i,
                    ts: 1000 + u32::from(i) * 160
                }
            );
        }
    }

    #[test]
    fn source_change_continues_sequence_and_timestamp() {
        let mut r = EgressRewrite::default();
        let mut now = 1u64;
        let mut last = None;
        for i in 0..10u16 {
            last = Some(r.map(
                1,
                65530u16.wrapping_add(i),
                5000 + u32::from(i) * 160,
                now,
                8000,
            ));
            now += 20_000_000;
        }
        let last = last.expect("ten packets");
        // New source, random base values, 20 ms later.
        let o = r.map(2, 777, 123_456, now, 8000);
        assert_eq!(o.ssrc, 1);
        assert_eq!(o.seq, last.seq.wrapping_add(1));
        assert_eq!(o.ts, last.ts.wrapping_add(160));
        now += 20_000_000;
        let o2 = r.map(2, 778, 123_456 + 160, now, 8000);
        assert_eq!(o2.seq, o.seq.wrapping_add(1));
        assert_eq!(o2.ts, o.ts.wrapping_add(160));
        assert_eq!(r.ssrc_map(), Some((2, 1)));
    }

    #[test]
    fn gap_advances_timestamp_by_wall_clock() {
        let mut r = EgressRewrite::default();
        let a = r.map(1, 1, 0, 1, 8000);
        // One second of silence then a new source.
        let b = r.map(2, 9, 42, 1 + 1_000_000_000, 8000);
        assert_eq!(b.ts.wrapping_sub(a.ts), 8000);
    }
}
