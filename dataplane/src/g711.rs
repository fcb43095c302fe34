//! ITU-T G.711 µ-law and A-law: sample-by-sample encoding and table decoding, shared by the
//! mixer (decode every member, encode every mix) and the control plane (prompts, recordings).

/// A G.711 companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    /// µ-law, RTP payload type 0 (PCMU).
    Mu,
    /// A-law, RTP payload type 8 (PCMA).
    A,
}

impl Law {
    /// The static RTP payload type of the law (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Mu => 0,
            Law::A => 8,
        }
    }

    /// The law of a static payload type, if it is G.711.
    pub fn from_payload_type(pt: u8) -> Option<Law> {
        match pt {
            0 => Some(Law::Mu),
            8 => Some(Law::A),
            _ => None,
        }
    }

    #[inline]
    pub fn encode(self, s: i16) -> u8 {
        match self {
            Law::Mu => ulaw(s),
            Law::A => alaw(s),
        }
    }

    #[inline]
    pub fn decode(self, b: u8) -> i16 {
        match self {
            Law::Mu => ULAW_TABLE[usize::from(b)],
            Law::A => ALAW_TABLE[usize::from(b)],
        }
    }

    /// The byte that decodes to (near) zero: what silence encodes to.
    pub fn silence(self) -> u8 {
        self.encode(0)
    }
}

/// µ-law encoding of one linear sample.
#[inline]
pub fn ulaw(s: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut v = i32::from(s);
    let sign = if v < 0 {
        v = -v;
        0x80
    } else {
        0
    };
    v = v.min(CLIP) + BIAS;
    let exponent = (31 - (v as u32).leading_zeros()).saturating_sub(7).min(7);
    let mantissa = (v >> (exponent + 3)) & 0x0f;
    !(sign | ((exponent as i32) << 4) | mantissa) as u8
}

/// A-law encoding of one linear sample.
#[inline]
pub fn alaw(s: i16) -> u8 {
    let mut v = i32::from(s);
    let sign = if v >= 0 {
        0x80
    } else {
        v = -v - 1;
        0
    };
    v = v.min(32_767) >> 3;
    let out = if v < 32 {
        v >> 1
    } else {
        let exponent = (31 - (v as u32).leading_zeros()) - 4;
        ((exponent as i32) << 4) | ((v >> exponent) & 0x0f)
    };
    ((sign | out) ^ 0x55) as u8
}

/// µ-law byte to linear.
#[inline]
pub fn ulaw_decode(b: u8) -> i16 {
    ULAW_TABLE[usize::from(b)]
}

/// A-law byte to linear.
#[inline]
pub fn alaw_decode(b: u8) -> i16 {
    ALAW_TABLE[usize::from(b)]
}

const fn ulaw_calc(b: u8) -> i16 {
    let b = !b;
    let sign = b & 0x80;
    let exponent = (b >> 4) & 0x07;
    let mantissa = (b & 0x0f) as i32;
    let v = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if sign != 0 { -v } else { v }) as i16
}

const fn alaw_calc(b: u8) -> i16 {
    let b = b ^ 0x55;
    let sign = b & 0x80;
    let exponent = ((b >> 4) & 0x07) as i32;
    let mantissa = (b & 0x0f) as i32;
    let v = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    (if sign != 0 { v } else { -v }) as i16
}

/// Builds a decoding table from one of the `*_calc` functions (a macro: const functions cannot
/// call function pointers).
macro_rules! table {
    ($f:ident) => {{
        let mut t = [0i16; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = $f(i as u8);
            i += 1;
        }
        t
    }};
}

static ULAW_TABLE: [i16; 256] = table!(ulaw_calc);
static ALAW_TABLE: [i16; 256] = table!(alaw_calc);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_decode_then_encode() {
        for law in [Law::Mu, Law::A] {
            for b in 0..=255u8 {
                let s = law.decode(b);
                let back = law.encode(s);
                // µ-law has two codes for zero (0x7f and 0xff); both decode to 0.
                assert!(
                    back == b || (law == Law::Mu && s == 0),
                    "{law:?} {b:#04x} -> {s} -> {back:#04x}"
                );
            }
        }
    }

    #[test]
    fn quantisation_error_is_bounded_relative_to_the_sample() {
        for law in [Law::Mu, Law::A] {
            for s in (-32_000i32..32_000).step_by(7) {
                let d = i32::from(law.decode(law.encode(s as i16)));
                let err = (d - s).abs();
                assert!(err <= 16 + s.abs() / 16, "{law:?} {s} -> {d}");
            }
        }
    }

    #[test]
    fn silence_and_payload_types() {
        assert_eq!(Law::Mu.silence(), 0xff);
        assert_eq!(Law::A.silence(), 0xd5);
        assert_eq!(Law::from_payload_type(0), Some(Law::Mu));
        assert_eq!(Law::from_payload_type(8), Some(Law::A));
        assert_eq!(Law::from_payload_type(9), None);
        assert_eq!(Law::A.payload_type(), 8);
    }
}
