//! Helpers shared by the crate's unit tests.

/// Amplitude of the `freq` component of `x` sampled at `rate` (Goertzel): about `A` for a
/// sine of amplitude `A` at that frequency.
pub fn tone_level(x: impl IntoIterator<Item = f64>, freq: f64, rate: u32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let c = 2.0 * w.cos();
    let (mut s1, mut s2, mut n) = (0.0f64, 0.0f64, 0usize);
    for v in x {
        let s0 = v + c * s1 - s2;
        s2 = s1;
        s1 = s0;
        n += 1;
    }
    2.0 * (s1 * s1 + s2 * s2 - c * s1 * s2).max(0.0).sqrt() / n.max(1) as f64
}
