//! IPv6 fixed headers (RFC 8200 §3).
//!
//! Extension headers are *not* walked: [`Ipv6Packet::next_header`] returns
//! the raw Next Header value of the fixed header and
//! [`Ipv6Packet::payload`] starts right after the 40-byte fixed header. A
//! packet carrying hop-by-hop, routing, fragment or other extension headers
//! therefore does not look like UDP to [`super::frame::parse_udp_frame`].
//! Jumbograms (RFC 2675, payload length 0 + hop-by-hop option) are not
//! supported: a zero payload length means an empty payload.

use std::net::Ipv6Addr;

use super::WireError;
use super::{rd_array, rd_u16, rd_u32, rd_u8, sub, sub_mut, wr_bytes, wr_u16, wr_u32, wr_u8};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

pub const NEXT_HEADER_HOP_BY_HOP: u8 = 0;
pub const NEXT_HEADER_UDP: u8 = 17;
pub const NEXT_HEADER_FRAGMENT: u8 = 44;
pub const NEXT_HEADER_NONE: u8 = 59;

/// Default hop limit used by builders.
pub const DEFAULT_HOP_LIMIT: u8 = 64;

mod field {
    pub const VER_TC_FLOW: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// A read/write view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wrap a buffer without validating it. Accessors never panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wrap a buffer, validating the version and that the payload length
    /// fits. The buffer may be longer (Ethernet padding).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Ipv6Packet { buffer };
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if p.version() != 6 {
            return Err(WireError::BadVersion);
        }
        if p.total_len() > len {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::VER_TC_FLOW) >> 4
    }

    /// Traffic class (8 bits: DSCP << 2 | ECN).
    pub fn traffic_class(&self) -> u8 {
        ((rd_u32(self.buffer.as_ref(), field::VER_TC_FLOW) >> 20) & 0xff) as u8
    }

    /// DSCP part of the traffic class (6 bits).
    pub fn dscp(&self) -> u8 {
        self.traffic_class() >> 2
    }

    pub fn flow_label(&self) -> u32 {
        rd_u32(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    /// The payload-length field (bytes after the fixed header).
    pub fn payload_len(&self) -> usize {
        usize::from(rd_u16(self.buffer.as_ref(), field::PAYLOAD_LEN))
    }

    /// Fixed header plus payload length.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Always 40: extension headers are not walked.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// The raw Next Header field of the fixed header (may name an extension
    /// header rather than the upper-layer protocol).
    pub fn next_header(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::NEXT_HEADER)
    }

    pub fn hop_limit(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::HOP_LIMIT)
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(rd_array::<16>(self.buffer.as_ref(), field::SRC))
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(rd_array::<16>(self.buffer.as_ref(), field::DST))
    }

    /// The bytes after the fixed header, bounded by the payload length.
    pub fn payload(&self) -> &[u8] {
        sub(self.buffer.as_ref(), HEADER_LEN, self.total_len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        wr_bytes(self.buffer.as_mut(), field::SRC, &addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        wr_bytes(self.buffer.as_mut(), field::DST, &addr.octets());
    }

    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        wr_u8(self.buffer.as_mut(), field::HOP_LIMIT, hop_limit);
    }

    pub fn set_next_header(&mut self, next_header: u8) {
        wr_u8(self.buffer.as_mut(), field::NEXT_HEADER, next_header);
    }

    pub fn set_traffic_class(&mut self, tc: u8) {
        let word = rd_u32(self.buffer.as_ref(), field::VER_TC_FLOW);
        let word = (word & 0xf00f_ffff) | (u32::from(tc) << 20);
        wr_u32(self.buffer.as_mut(), field::VER_TC_FLOW, word);
    }

    /// Set the DSCP (masked to 6 bits), preserving ECN.
    pub fn set_dscp(&mut self, dscp: u8) {
        let tc = ((dscp & 0x3f) << 2) | (self.traffic_class() & 0x03);
        self.set_traffic_class(tc);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        sub_mut(self.buffer.as_mut(), HEADER_LEN, end)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv6Packet<&'a T> {
    /// The payload, borrowed for the lifetime of the underlying buffer.
    pub fn into_payload(self) -> &'a [u8] {
        let end = self.total_len();
        sub(<T as AsRef<[u8]>>::as_ref(self.buffer), HEADER_LEN, end)
    }
}

/// Write a 40-byte IPv6 header for a payload of `payload_len` bytes;
/// returns 40. Fails with `Truncated` when `buf` is too short and
/// `BadLength` when `payload_len` exceeds 65535.
pub fn emit_header(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    traffic_class: u8,
    payload_len: usize,
) -> Result<usize, WireError> {
    let plen = u16::try_from(payload_len).map_err(|_| WireError::BadLength)?;
    let hdr = buf.get_mut(..HEADER_LEN).ok_or(WireError::Truncated)?;
    hdr.fill(0);
    wr_u32(hdr, field::VER_TC_FLOW, 6 << 28);
    wr_u16(hdr, field::PAYLOAD_LEN, plen);
    let mut p = Ipv6Packet::new_unchecked(hdr);
    p.set_traffic_class(traffic_class);
    p.set_next_header(next_header);
    p.set_hop_limit(hop_limit);
    p.set_src_addr(src);
    p.set_dst_addr(dst);
    Ok(HEADER_LEN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = vec![
            0x6b, 0x81, 0x23, 0x45, // ver 6, tc 0xb8, flow 0x12345
            0x00, 0x04, 0x11, 0x3f, // plen 4, udp, hop 63
        ];
        v.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        v.extend_from_slice(&[9, 8, 7, 6]);
        v.extend_from_slice(&[0, 0]); // trailing padding
        v
    }

    #[test]
    fn parse_fields() {
        let buf = sample();
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.dscp(), 46);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 4);
        assert_eq!(p.next_header(), NEXT_HEADER_UDP);
        assert_eq!(p.hop_limit(), 63);
        assert_eq!(p.src_addr(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload(), &[9, 8, 7, 6]);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.into_payload(), &[9, 8, 7, 6]);
    }

    #[test]
    fn invalid_fields() {
        let mut b = sample();
        b[0] = 0x4b;
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]).unwrap_err(),
            WireError::BadVersion
        );
        let mut b = sample();
        b[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn every_truncation() {
        let buf = sample();
        for n in 0..buf.len() {
            match Ipv6Packet::new_checked(&buf[..n]) {
                Ok(p) => {
                    assert!(n >= 44);
                    assert_eq!(p.payload(), &[9, 8, 7, 6]);
                }
                Err(e) => {
                    assert_eq!(e, WireError::Truncated);
                    assert!(n < 44);
                }
            }
        }
    }

    #[test]
    fn setters_and_emit() {
        let mut buf = [0u8; 48];
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "ff02::1".parse().unwrap();
        assert_eq!(emit_header(&mut buf, src, dst, 17, 5, 0xb9, 8), Ok(40));
        let mut p = Ipv6Packet::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.traffic_class(), 0xb9);
        assert_eq!(p.flow_label(), 0);
        assert_eq!(p.src_addr(), src);
        assert_eq!(p.dst_addr(), dst);
        p.set_dscp(10);
        assert_eq!(p.traffic_class(), (10 << 2) | 1);
        assert_eq!(p.version(), 6);
        p.set_hop_limit(1);
        p.set_src_addr(dst);
        p.set_dst_addr(src);
        assert_eq!(p.hop_limit(), 1);
        assert_eq!(p.src_addr(), dst);
        assert_eq!(p.dst_addr(), src);
        assert_eq!(p.payload_mut().len(), 8);
        assert_eq!(
            emit_header(&mut buf[..39], src, dst, 17, 5, 0, 0),
            Err(WireError::Truncated)
        );
        assert_eq!(
            emit_header(&mut buf, src, dst, 17, 5, 0, 65_536),
            Err(WireError::BadLength)
        );
    }
}
