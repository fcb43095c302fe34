//! Sample-rate conversion between the mixer's rates (8, 16 and 48 kHz): integer ratios only,
//! so a polyphase FIR does it exactly, with no drift and no fractional bookkeeping.
//!
//! The low-pass filter is a Blackman-windowed sinc of [`TAPS_PER_PHASE`] taps per phase of the
//! higher rate, cut off at 90 % of the lower rate's Nyquist frequency (3.6 kHz from 8 kHz, 7.2 kHz
//! from 16 kHz): what the lower rate cannot carry is removed before decimation instead of
//! folding back as alias tones. Coefficients and the history are allocated when the resampler
//! is built (when a member joins or the conference rate changes); [`Resampler::process`]
//! allocates nothing.

/// Filter taps per polyphase branch (the filter has this many taps per sample of the low rate).
pub const TAPS_PER_PHASE: usize = 16;
/// Most input samples one call converts (20 ms at 48 kHz).
pub const INPUT_MAX: usize = 960;

/// Rates the mixer runs at and converts between.
pub const RATES: [u32; 3] = [8_000, 16_000, 48_000];

/// Converts a stream of 16-bit samples from one supported rate to another.
pub struct Resampler {
    /// Up (> 1) or down (> 1) factor; the other is 1.
    up: usize,
    down: usize,
    /// Up: `coef[p * TAPS_PER_PHASE + k]` is tap `p + k·up` of the prototype (×`up` gain).
    /// Down: the prototype itself, `TAPS_PER_PHASE · down` taps.
    coef: Box<[f32]>,
    /// The last `hist_len` input samples, then room for one call's input.
    buf: Box<[f32]>,
    hist_len: usize,
}

/// Why a resampler could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no conversion from {from} Hz to {to} Hz (8, 16 and 48 kHz are supported)")]
pub struct UnsupportedRate {
    pub from: u32,
    pub to: u32,
}

impl Resampler {
    /// A converter from `from` Hz to `to` Hz; both must be in [`RATES`] and differ.
    pub fn new(from: u32, to: u32) -> Result<Self, UnsupportedRate> {
        let err = UnsupportedRate { from, to };
        if from == to || !RATES.contains(&from) || !RATES.contains(&to) {
            return Err(err);
        }
        let (up, down) = if to > from {
            ((to / from) as usize, 1)
        } else {
            (1, (from / to) as usize)
        };
        let ratio = up.max(down);
        let n = TAPS_PER_PHASE * ratio;
        // Cut-off in cycles per sample of the high rate: 90 % of the low rate's Nyquist.
        let fc = 0.9 * 0.5 / ratio as f64;
        let centre = (n - 1) as f64 / 2.0;
        let mut proto: Vec<f64> = (0..n)
            .map(|j| {
                let x = j as f64 - centre;
                let sinc = if x == 0.0 {
                    2.0 * fc
                } else {
                    (2.0 * std::f64::consts::PI * fc * x).sin() / (std::f64::consts::PI * x)
                };
                let w = 2.0 * std::f64::consts::PI * j as f64 / (n - 1) as f64;
                sinc * (0.42 - 0.5 * w.cos() + 0.08 * (2.0 * w).cos())
            })
            .collect();
        let sum: f64 = proto.iter().sum();
        for h in proto.iter_mut() {
            *h /= sum;
        }
        let coef: Box<[f32]> = if up > 1 {
            // Each phase's taps, scaled by `up` so the interpolated signal keeps its level.
            (0..up)
                .flat_map(|p| {
                    let proto = &proto;
                    (0..TAPS_PER_PHASE).map(move |k| (proto[p + k * up] * up as f64) as f32)
                })
                .collect()
        } else {
            proto.iter().map(|h| *h as f32).collect()
        };
        let hist_len = if up > 1 { TAPS_PER_PHASE } else { n };
        Ok(Resampler {
            up,
            down,
            coef,
            buf: vec![0.0; hist_len + INPUT_MAX].into_boxed_slice(),
            hist_len,
        })
    }

    /// Output samples for `input` samples of input.
    pub fn output_len(&self, input: usize) -> usize {
        input * self.up / self.down
    }

    /// Converts `input` (at most [`INPUT_MAX`] samples, a multiple of the down factor) into
    /// the start of `out`; returns the samples written (`output_len`), or 0 when `input` or
    /// `out` does not fit.
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) -> usize {
        let n = input.len();
        let produced = self.output_len(n);
        if n > INPUT_MAX || n % self.down != 0 || out.len() < produced {
            return 0;
        }
        let h = self.hist_len;
        for (b, s) in self.buf[h..h + n].iter_mut().zip(input) {
            *b = f32::from(*s);
        }
        if self.up > 1 {
            // Output sample i·up + p = Σ_k coef[p][k] · x[i − k].
            for i in 0..n {
                // x[i − k] is buf[h + i − k]; the window is buf[h + i + 1 − TAPS .. h + i + 1].
                let win = &self.buf[h + i + 1 - TAPS_PER_PHASE..h + i + 1];
                for p in 0..self.up {
                    let c = &self.coef[p * TAPS_PER_PHASE..(p + 1) * TAPS_PER_PHASE];
                    let acc: f32 = c.iter().zip(win.iter().rev()).map(|(a, b)| a * b).sum();
                    out[i * self.up + p] = to_i16(acc);
                }
            }
        } else {
            let taps = self.coef.len();
            for (m, o) in out[..produced].iter_mut().enumerate() {
                // Output m = Σ_j coef[j] · x[m·down + down − 1 − j] (the newest input first).
                let end = h + (m + 1) * self.down;
                let win = &self.buf[end - taps..end];
                let acc: f32 = self
                    .coef
                    .iter()
                    .zip(win.iter().rev())
                    .map(|(a, b)| a * b)
                    .sum();
                *o = to_i16(acc);
            }
        }
        // Keep the newest `h` samples as the next call's history.
        self.buf.copy_within(n..n + h, 0);
        produced
    }
}

#[inline]
fn to_i16(x: f32) -> i16 {
    x.round().clamp(-32_768.0, 32_767.0) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())
                    as i16
            })
            .collect()
    }

    /// Level of `freq` in `x`, as an amplitude.
    fn level(x: &[i16], freq: f64, rate: u32) -> f64 {
        crate::testutil::tone_level(x.iter().map(|v| f64::from(*v)), freq, rate)
    }

    fn convert(r: &mut Resampler, x: &[i16], chunk: usize) -> Vec<i16> {
        let mut y = Vec::new();
        let mut out = vec![0i16; INPUT_MAX * 6];
        for c in x.chunks(chunk) {
            let k = r.process(c, &mut out);
            assert_eq!(k, r.output_len(c.len()));
            y.extend_from_slice(&out[..k]);
        }
        y
    }

    /// Every supported pair keeps an in-band tone's level (within 0.5 dB) across 20 ms calls.
    #[test]
    fn in_band_tones_keep_their_level() {
        for from in RATES {
            for to in RATES.into_iter().filter(|t| *t != from) {
                let mut r = Resampler::new(from, to).expect("supported");
                let x = tone(1000.0, from, from as usize / 2, 10_000.0);
                let y = convert(&mut r, &x, from as usize / 50);
                assert_eq!(y.len(), to as usize / 2);
                // Skip the filter's start-up.
                let lv = level(&y[y.len() / 4..], 1000.0, to);
                assert!(
                    (lv / 10_000.0).log10().abs() * 20.0 < 0.5,
                    "{from}→{to}: level {lv}"
                );
            }
        }
    }

    /// Decimation removes what the lower rate cannot carry: a 5 kHz tone at 16 or 48 kHz does
    /// not come out of the 8 kHz side as a 3 kHz alias.
    #[test]
    fn decimation_does_not_alias() {
        for from in [16_000, 48_000] {
            let mut r = Resampler::new(from, 8_000).expect("supported");
            let x = tone(5000.0, from, from as usize / 2, 20_000.0);
            let y = convert(&mut r, &x, from as usize / 50);
            let alias = level(&y[y.len() / 4..], 3000.0, 8000);
            assert!(alias < 20.0, "{from}: alias level {alias} of 20000");
        }
    }

    #[test]
    fn unsupported_rates_and_sizes_are_refused() {
        assert!(Resampler::new(8000, 8000).is_err());
        assert!(Resampler::new(8000, 44_100).is_err());
        let mut r = Resampler::new(48_000, 8_000).expect("supported");
        let mut out = [0i16; 200];
        assert_eq!(r.process(&[0; 7], &mut out), 0, "not a multiple of 6");
        assert_eq!(r.process(&[0; 1200], &mut out), 0, "too long");
        let mut up = Resampler::new(8_000, 48_000).expect("supported");
        assert_eq!(up.process(&[0; 160], &mut out), 0, "output too small");
    }
}
