//! Zero-copy, checked views over the wire formats the media dataplane touches.
//!
//! Every view follows the same pattern: `Foo::new_checked(buffer)` validates
//! all lengths up front so that the accessors afterwards never panic, whatever
//! bytes the buffer holds. Accessors additionally read through non-panicking
//! helpers, so even a view built with `new_unchecked` over garbage returns
//! zeros or empty slices instead of panicking. Nothing here allocates.
//!
//! This module also hosts the shared error type, the RFC 1071 internet
//! checksum helpers and the RFC 7983 / RFC 5761 first-byte demultiplexer.

pub mod dtmf;
pub mod ethernet;
pub mod frame;
pub mod ipv4;
pub mod ipv6;
pub mod rtcp;
pub mod rtp;
pub mod udp;

use core::fmt;

/// Why a buffer was rejected by one of the wire views.
///
/// The set is closed and small on purpose: [`WireError::as_str`] is meant to
/// be used as a bounded metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The buffer is shorter than a header or a length field says it is.
    Truncated,
    /// A version field holds an unsupported value.
    BadVersion,
    /// A header-length field is invalid (e.g. IPv4 IHL < 5).
    BadHeaderLength,
    /// A total-length field is invalid (e.g. IPv4 total length < IHL).
    BadTotalLength,
    /// A padding count is zero or larger than the space it could occupy.
    BadPadding,
    /// A length or count field is inconsistent with the data.
    BadLength,
    /// A checksum does not verify.
    BadChecksum,
    /// The Ethernet frame carries neither IPv4 nor IPv6.
    UnsupportedEtherType,
    /// The protocol / packet type is not the one expected here.
    UnsupportedProtocol,
    /// The IPv4 packet is a fragment.
    Fragmented,
    /// An RTP header extension is malformed or overruns the packet.
    BadExtension,
    /// More than two 802.1Q / 802.1ad tags.
    TooManyVlanTags,
}

impl WireError {
    /// Every variant, in declaration order.
    pub const ALL: [WireError; 12] = [
        WireError::Truncated,
        WireError::BadVersion,
        WireError::BadHeaderLength,
        WireError::BadTotalLength,
        WireError::BadPadding,
        WireError::BadLength,
        WireError::BadChecksum,
        WireError::UnsupportedEtherType,
        WireError::UnsupportedProtocol,
        WireError::Fragmented,
        WireError::BadExtension,
        WireError::TooManyVlanTags,
    ];

    /// A stable snake_case name, suitable as a bounded metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            WireError::Truncated => "truncated",
            WireError::BadVersion => "bad_version",
            WireError::BadHeaderLength => "bad_header_length",
            WireError::BadTotalLength => "bad_total_length",
            WireError::BadPadding => "bad_padding",
            WireError::BadLength => "bad_length",
            WireError::BadChecksum => "bad_checksum",
            WireError::UnsupportedEtherType => "unsupported_ether_type",
            WireError::UnsupportedProtocol => "unsupported_protocol",
            WireError::Fragmented => "fragmented",
            WireError::BadExtension => "bad_extension",
            WireError::TooManyVlanTags => "too_many_vlan_tags",
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for WireError {}

/// What a UDP payload on a media port most likely is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    Rtp,
    Rtcp,
    Stun,
    Dtls,
    Unknown,
}

/// Minimum sizes below which a payload is not even looked at.
const MIN_STUN: usize = 20;
const MIN_DTLS: usize = 13;
const MIN_RTP: usize = 12;
const MIN_RTCP: usize = 8;

/// Demultiplex a UDP payload by its first byte (RFC 7983 §7) and, for
/// RTP/RTCP, by its second byte (RFC 5761 §4: a packet-type byte in
/// 192..=223 is RTCP).
///
/// Payloads shorter than the fixed header of the guessed protocol
/// (STUN 20, DTLS record 13, RTP 12, RTCP 8 bytes) are `Unknown`; so are
/// ZRTP (16..=19) and TURN channel data (64..=79).
pub fn classify(payload: &[u8]) -> PayloadKind {
    let Some(&b0) = payload.first() else {
        return PayloadKind::Unknown;
    };
    let len = payload.len();
    match b0 {
        0..=3 if len >= MIN_STUN => PayloadKind::Stun,
        20..=63 if len >= MIN_DTLS => PayloadKind::Dtls,
        128..=191 => match payload.get(1) {
            Some(192..=223) if len >= MIN_RTCP => PayloadKind::Rtcp,
            Some(_) if len >= MIN_RTP => PayloadKind::Rtp,
            _ => PayloadKind::Unknown,
        },
        _ => PayloadKind::Unknown,
    }
}

/// Add `data` to a running one's-complement sum (RFC 1071).
///
/// `data` is taken as big-endian 16-bit words; an odd trailing byte is padded
/// with a zero byte, so only the last piece of a multi-part sum may have an
/// odd length. The result is already folded to 16 bits and can be fed back
/// in as `acc`.
pub fn checksum_add(acc: u32, data: &[u8]) -> u32 {
    // The one's-complement sum does not depend on byte order (RFC 1071 §2(B)): add native
    // 32-bit words into two 64-bit accumulators (no carries to track below 2³² words, and the
    // two chains run in parallel), fold to 16 bits, then convert to big-endian.
    let (mut a, mut b) = (0u64, 0u64);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        a += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
        b += u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]]));
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        a += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [last] = rest {
        // An odd trailing byte is the high byte of a big-endian word.
        b += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    let native = fold64(a) + fold64(b);
    let native = fold64(u64::from(native)) as u16;
    fold64(u64::from(acc) + u64::from(u16::from_be(native)))
}

/// End-around-carry fold of a sum of 16-bit words to 16 bits.
#[inline]
pub(crate) fn fold16(sum: u64) -> u16 {
    fold64(sum) as u16
}

/// End-around-carry fold of any `u64` sum of 16-bit words to 16 bits, in four fixed steps:
/// the per-packet paths fold a few sums per datagram, and a loop until no carry is left ran a
/// data-dependent number of times (a branch the CPU guesses wrong now and then). Each step
/// keeps the value's residue modulo 0xffff and never turns a non-zero value into zero, and
/// leaves a value of 16 bits as it is, so the result is what folding until no carry gives.
#[inline]
pub(crate) fn fold64(sum: u64) -> u32 {
    // <= 0xffff_ffff + 0xffff_ffff = 2^33 - 2.
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    // <= 0xffff + (2^33 - 2) >> 16 = 0xffff + 0x1_ffff = 0x2_fffe.
    let s = (s & 0xffff) + (s >> 16);
    // <= 0xffff + 2 = 0x1_0001.
    let s = (s & 0xffff) + (s >> 16);
    // <= 0xffff: 0x1_0000..=0x1_0001 fold to 1..=2, and smaller values stay.
    let s = (s & 0xffff) + (s >> 16);
    s as u32
}

/// Fold a running sum to 16 bits and complement it: the value to store in a
/// checksum field. A buffer whose checksum verifies folds to `0`.
pub fn checksum_fold(acc: u32) -> u16 {
    !fold16(u64::from(acc))
}

/// The internet checksum of a single buffer.
pub fn internet_checksum(data: &[u8]) -> u16 {
    checksum_fold(checksum_add(0, data))
}

// ---------------------------------------------------------------------------
// Non-panicking byte access shared by the views. Reads out of range yield
// `None` (or zero for the `rd_` forms); writes out of range are ignored.
// ---------------------------------------------------------------------------

#[inline]
pub(crate) fn get_array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    let end = off.checked_add(N)?;
    b.get(off..end).and_then(|s| <[u8; N]>::try_from(s).ok())
}

#[inline]
pub(crate) fn get_u16(b: &[u8], off: usize) -> Option<u16> {
    get_array::<2>(b, off).map(u16::from_be_bytes)
}

#[inline]
pub(crate) fn rd_u8(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

#[inline]
pub(crate) fn rd_u16(b: &[u8], off: usize) -> u16 {
    get_u16(b, off).unwrap_or(0)
}

#[inline]
pub(crate) fn rd_u32(b: &[u8], off: usize) -> u32 {
    get_array::<4>(b, off).map_or(0, u32::from_be_bytes)
}

#[inline]
pub(crate) fn rd_array<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    get_array::<N>(b, off).unwrap_or([0; N])
}

/// `b[start..end]`, or an empty slice when the range is invalid.
#[inline]
pub(crate) fn sub(b: &[u8], start: usize, end: usize) -> &[u8] {
    b.get(start..end).unwrap_or(&[])
}

/// `&mut b[start..end]`, or an empty slice when the range is invalid.
#[inline]
pub(crate) fn sub_mut(b: &mut [u8], start: usize, end: usize) -> &mut [u8] {
    match b.get_mut(start..end) {
        Some(s) => s,
        None => &mut [],
    }
}

#[inline]
pub(crate) fn wr_bytes(b: &mut [u8], off: usize, val: &[u8]) {
    if let Some(end) = off.checked_add(val.len()) {
        if let Some(dst) = b.get_mut(off..end) {
            dst.copy_from_slice(val);
        }
    }
}

#[inline]
pub(crate) fn wr_u8(b: &mut [u8], off: usize, val: u8) {
    if let Some(dst) = b.get_mut(off) {
        *dst = val;
    }
}

#[inline]
pub(crate) fn wr_u16(b: &mut [u8], off: usize, val: u16) {
    wr_bytes(b, off, &val.to_be_bytes());
}

#[inline]
pub(crate) fn wr_u32(b: &mut [u8], off: usize, val: u32) {
    wr_bytes(b, off, &val.to_be_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Folding until no carry is left: what `fold64` must equal.
    fn fold_by_loop(mut sum: u64) -> u32 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u32
    }

    #[test]
    fn fixed_step_fold_equals_folding_until_no_carry() {
        let mut edges = vec![0, 1, 0xfffe, 0xffff, 0x1_0000, 0x1_0001, 0x1_fffe, 0x2_fffe];
        edges.extend([
            u64::MAX,
            u64::MAX - 1,
            1 << 32,
            (1 << 32) - 1,
            (1 << 33) - 2,
        ]);
        edges.extend([
            0xffff_0000_ffff_0000,
            0x0000_ffff_0000_ffff,
            0xffff_ffff_0000_0000,
        ]);
        for k in 0..64 {
            edges.extend([1u64 << k, (1u64 << k).wrapping_sub(1), !(1u64 << k)]);
        }
        // And a million values of every size (an xorshift sequence, shifted to vary the width).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..1_000_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            edges.push(x >> (i % 64));
        }
        for v in edges {
            let f = fold64(v);
            assert_eq!(f, fold_by_loop(v), "fold of {v:#x}");
            assert!(f <= 0xffff);
            assert_eq!(u64::from(f) % 0xffff, v % 0xffff, "residue of {v:#x}");
        }
    }

    #[test]
    fn error_labels_are_unique_snake_case() {
        for (i, a) in WireError::ALL.iter().enumerate() {
            let s = a.as_str();
            assert!(!s.is_empty());
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            assert_eq!(a.to_string(), s);
            for b in &WireError::ALL[i + 1..] {
                assert_ne!(s, b.as_str());
                assert_ne!(a, b);
            }
        }
        assert_eq!(WireError::Truncated.as_str(), "truncated");
        let e: Box<dyn std::error::Error> = Box::new(WireError::BadChecksum);
        assert_eq!(e.to_string(), "bad_checksum");
    }

    #[test]
    fn classify_first_byte() {
        assert_eq!(classify(&[]), PayloadKind::Unknown);
        assert_eq!(classify(&[0x80]), PayloadKind::Unknown);
        let mut stun = [0u8; 20];
        stun[1] = 0x01;
        assert_eq!(classify(&stun), PayloadKind::Stun);
        assert_eq!(classify(&stun[..19]), PayloadKind::Unknown);
        let mut dtls = [0u8; 13];
        dtls[0] = 22;
        assert_eq!(classify(&dtls), PayloadKind::Dtls);
        assert_eq!(classify(&dtls[..12]), PayloadKind::Unknown);
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 0x00;
        assert_eq!(classify(&rtp), PayloadKind::Rtp);
        rtp[1] = 0x80 | 96; // marker + dynamic PT
        assert_eq!(classify(&rtp), PayloadKind::Rtp);
        assert_eq!(classify(&rtp[..11]), PayloadKind::Unknown);
        let mut rtcp = [0u8; 8];
        rtcp[0] = 0x81;
        for pt in 192..=223u8 {
            rtcp[1] = pt;
            assert_eq!(classify(&rtcp), PayloadKind::Rtcp, "pt {pt}");
        }
        rtcp[1] = 224;
        assert_eq!(classify(&rtcp), PayloadKind::Unknown); // 8 bytes: too short for RTP
        rtcp[1] = 200;
        assert_eq!(classify(&rtcp[..7]), PayloadKind::Unknown);
        // ZRTP, TURN channel, and the unassigned ranges.
        for b0 in [16u8, 19, 64, 79, 100, 127, 192, 255] {
            let mut p = [0u8; 32];
            p[0] = b0;
            assert_eq!(classify(&p), PayloadKind::Unknown, "b0 {b0}");
        }
    }

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum_add(0, &data), 0xddf2);
        assert_eq!(checksum_fold(0xddf2), !0xddf2);
        // Splitting on an even boundary gives the same result.
        assert_eq!(
            checksum_add(checksum_add(0, &data[..4]), &data[4..]),
            0xddf2
        );
        // Odd trailing byte is padded with zero.
        assert_eq!(checksum_add(0, &[0xab]), 0xab00);
        // Large inputs do not overflow.
        let big = vec![0xffu8; 200_000];
        assert_eq!(checksum_add(0, &big), 0xffff);
        assert_eq!(internet_checksum(&[]), 0xffff);
    }

    #[test]
    fn byte_helpers_never_panic() {
        let b = [1u8, 2, 3];
        assert_eq!(rd_u16(&b, 1), 0x0203);
        assert_eq!(rd_u16(&b, 2), 0);
        assert_eq!(rd_u32(&b, usize::MAX), 0);
        assert_eq!(rd_u8(&b, 3), 0);
        assert_eq!(sub(&b, 2, 1), &[] as &[u8]);
        let mut m = [0u8; 3];
        wr_u32(&mut m, 1, 0xdead_beef);
        wr_u16(&mut m, usize::MAX, 1);
        wr_u8(&mut m, 9, 1);
        assert_eq!(m, [0, 0, 0]);
        assert!(sub_mut(&mut m, 4, 5).is_empty());
    }
}

#[cfg(test)]
mod checksum_tests {
    use super::*;

    /// RFC 1071's definition, word by word, as the reference.
    fn reference(acc: u32, data: &[u8]) -> u32 {
        let mut sum = u64::from(acc);
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u64::from(*b));
            sum += hi | lo;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u32
    }

    #[test]
    fn wide_sum_matches_the_word_by_word_definition() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in 0..300 {
            for _ in 0..20 {
                let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let acc = (next() as u32) & 0x1_ffff;
                assert_eq!(checksum_add(acc, &data), reference(acc, &data), "len {len}");
            }
        }
        let ones = vec![0xffu8; 4096];
        assert_eq!(checksum_add(0xffff, &ones), reference(0xffff, &ones));
    }
}
