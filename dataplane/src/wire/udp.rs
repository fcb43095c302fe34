//! UDP datagrams (RFC 768), with the checksum over the IPv4 pseudo-header
//! (RFC 768) or the IPv6 pseudo-header (RFC 8200 §8.1).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{checksum_add, checksum_fold, fold64, rd_u16, sub, sub_mut, wr_u16, WireError};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

const PROTO_UDP: u8 = 17;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A read/write view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

/// Sum of the IPv4 pseudo-header for a UDP datagram of `udp_len` bytes.
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, udp_len: u16) -> u32 {
    fold64(pseudo_v4_words(src, dst, udp_len))
}

/// The IPv4 pseudo-header's six 16-bit words added up but not folded (below 6 × 0xffff), for
/// the per-packet paths that add more words before their one fold.
#[inline]
pub fn pseudo_v4_words(src: Ipv4Addr, dst: Ipv4Addr, udp_len: u16) -> u64 {
    addr_words_v4(src, dst) + u64::from(PROTO_UDP) + u64::from(udp_len)
}

/// The four 16-bit words of two IPv4 addresses added up but not folded: part of the
/// pseudo-header and of the IPv4 header's own checksum.
#[inline]
pub fn addr_words_v4(src: Ipv4Addr, dst: Ipv4Addr) -> u64 {
    let (s, d) = (u32::from(src), u32::from(dst));
    u64::from(s >> 16) + u64::from(s & 0xffff) + u64::from(d >> 16) + u64::from(d & 0xffff)
}

/// Sum of the IPv6 pseudo-header for a UDP datagram of `udp_len` bytes.
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, udp_len: u16) -> u32 {
    let mut sum = u64::from(PROTO_UDP) + u64::from(udp_len);
    for a in [u128::from(src), u128::from(dst)] {
        for k in 0..8 {
            sum += ((a >> (k * 16)) & 0xffff) as u64;
        }
    }
    fold64(sum)
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wrap a buffer without validating it. Accessors never panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wrap a buffer, validating that the length field is ≥ 8 and fits in
    /// the buffer (which may be longer).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = UdpPacket { buffer };
        let avail = p.buffer.as_ref().len();
        if avail < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(p.len());
        if len < HEADER_LEN {
            return Err(WireError::BadLength);
        }
        if len > avail {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        rd_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        rd_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload, in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        rd_u16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn checksum(&self) -> u16 {
        rd_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Header and payload as delimited by the length field.
    fn datagram(&self) -> &[u8] {
        sub(self.buffer.as_ref(), 0, usize::from(self.len()))
    }

    /// The payload, bounded by the length field.
    pub fn payload(&self) -> &[u8] {
        sub(self.buffer.as_ref(), HEADER_LEN, usize::from(self.len()))
    }

    /// Verify the checksum against an IPv4 pseudo-header. A zero checksum
    /// means "not computed" and is accepted.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let acc = checksum_add(pseudo_v4(src, dst, self.len()), self.datagram());
        checksum_fold(acc) == 0
    }

    /// Verify the checksum against an IPv6 pseudo-header. A zero checksum is
    /// invalid over IPv6 (RFC 8200 §8.1).
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        if self.checksum() == 0 {
            return false;
        }
        let acc = checksum_add(pseudo_v6(src, dst, self.len()), self.datagram());
        checksum_fold(acc) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, port: u16) {
        wr_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        wr_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    pub fn set_len(&mut self, len: u16) {
        wr_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        wr_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// The payload, bounded by the length field.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        sub_mut(self.buffer.as_mut(), HEADER_LEN, end)
    }

    fn fill_with(&mut self, pseudo: u32) {
        self.set_checksum(0);
        let sum = checksum_fold(checksum_add(pseudo, self.datagram()));
        // A computed zero is sent as all-ones (RFC 768).
        self.set_checksum(if sum == 0 { 0xffff } else { sum });
    }

    /// Compute and store the checksum over the IPv4 pseudo-header.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let pseudo = pseudo_v4(src, dst, self.len());
        self.fill_with(pseudo);
    }

    /// Compute and store the checksum over the IPv6 pseudo-header.
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let pseudo = pseudo_v6(src, dst, self.len());
        self.fill_with(pseudo);
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> UdpPacket<&'a T> {
    /// The payload (bounded by the length field), borrowed for the lifetime
    /// of the underlying buffer.
    pub fn into_payload(self) -> &'a [u8] {
        let end = usize::from(self.len());
        sub(<T as AsRef<[u8]>>::as_ref(self.buffer), HEADER_LEN, end)
    }
}

/// Write an 8-byte UDP header (checksum 0) for a payload of `payload_len`
/// bytes; returns 8. `Truncated` if `buf` is too short, `BadLength` if the
/// datagram would exceed 65535 bytes.
pub fn emit_header(
    buf: &mut [u8],
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
) -> Result<usize, WireError> {
    let len = payload_len
        .checked_add(HEADER_LEN)
        .and_then(|l| u16::try_from(l).ok())
        .ok_or(WireError::BadLength)?;
    let hdr = buf.get_mut(..HEADER_LEN).ok_or(WireError::Truncated)?;
    let mut p = UdpPacket::new_unchecked(hdr);
    p.set_src_port(src_port);
    p.set_dst_port(dst_port);
    p.set_len(len);
    p.set_checksum(0);
    Ok(HEADER_LEN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const DST4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    /// Ports 5004 → 5006, 4-byte payload, and two trailing padding bytes.
    fn sample() -> Vec<u8> {
        vec![
            0x13, 0x8c, 0x13, 0x8e, 0x00, 0x0c, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef, 0, 0,
        ]
    }

    #[test]
    fn parse_fields() {
        let buf = sample();
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.src_port(), 5004);
        assert_eq!(p.dst_port(), 5006);
        assert_eq!(p.len(), 12);
        assert_eq!(p.checksum(), 0);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(p.verify_checksum_v4(SRC4, DST4));
        assert!(!p.verify_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST));
        assert_eq!(p.into_payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn checksum_known_value() {
        // Pseudo-header + datagram summed by hand:
        // c000+0201+c000+0202+0011+000c + 138c+138e+000c+0000+dead+beef
        let mut buf = sample();
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum_v4(SRC4, DST4);
        let words: [u32; 12] = [
            0xc000, 0x0201, 0xc000, 0x0202, 0x0011, 0x000c, 0x138c, 0x138e, 0x000c, 0x0000, 0xdead,
            0xbeef,
        ];
        let mut s: u32 = words.iter().sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        assert_eq!(p.checksum(), !(s as u16));
        assert!(p.verify_checksum_v4(SRC4, DST4));
        assert!(!p.verify_checksum_v4(SRC4, Ipv4Addr::new(192, 0, 2, 3)));
        // Padding after the length field does not take part.
        p.into_inner()[12] = 0x55;
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum_v4(SRC4, DST4));
    }

    #[test]
    fn checksum_v6_and_odd_payload() {
        let src: Ipv6Addr = "2001:db8::a".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::b".parse().unwrap();
        let mut buf = [0u8; 13];
        emit_header(&mut buf, 1, 2, 5).unwrap();
        buf[8..].copy_from_slice(b"hello");
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum_v6(src, dst);
        assert_ne!(p.checksum(), 0);
        assert!(p.verify_checksum_v6(src, dst));
        assert!(!p.verify_checksum_v6(dst, dst));
        p.payload_mut()[4] ^= 1;
        assert!(!p.verify_checksum_v6(src, dst));
        p.fill_checksum_v4(SRC4, DST4);
        assert!(p.verify_checksum_v4(SRC4, DST4));
    }

    #[test]
    fn invalid_fields() {
        let mut b = sample();
        b[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&b[..]).unwrap_err(),
            WireError::BadLength
        );
        b[4..6].copy_from_slice(&15u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&b[..]).unwrap_err(),
            WireError::Truncated
        );
        b[4..6].copy_from_slice(&8u16.to_be_bytes());
        assert!(UdpPacket::new_checked(&b[..]).unwrap().payload().is_empty());
    }

    #[test]
    fn every_truncation() {
        let buf = sample();
        for n in 0..buf.len() {
            match UdpPacket::new_checked(&buf[..n]) {
                Ok(p) => {
                    assert!(n >= 12);
                    assert_eq!(p.payload().len(), 4);
                }
                Err(e) => {
                    assert_eq!(e, WireError::Truncated);
                    assert!(n < 12);
                }
            }
        }
    }

    #[test]
    fn setters_and_emit() {
        let mut buf = [0u8; 8];
        assert_eq!(emit_header(&mut buf, 1, 2, 0), Ok(8));
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_src_port(40000);
        p.set_dst_port(3478);
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (40000, 3478, 8));
        assert_eq!(
            emit_header(&mut buf[..7], 1, 2, 0),
            Err(WireError::Truncated)
        );
        assert_eq!(
            emit_header(&mut buf, 1, 2, 65_528),
            Err(WireError::BadLength)
        );
        assert_eq!(emit_header(&mut buf, 1, 2, 65_527), Ok(8));
    }
}
