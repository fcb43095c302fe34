//! IPv4 packet headers (RFC 791), with DSCP per RFC 2474 and the header
//! checksum per RFC 1071. Options are skipped, not parsed.

use std::net::Ipv4Addr;

use super::{checksum_add, checksum_fold, rd_array, rd_u16, rd_u8, sub, sub_mut, wr_u16, wr_u8};
use super::{wr_bytes, WireError};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Default TTL used by [`emit_header`] callers.
pub const DEFAULT_TTL: u8 = 64;

mod field {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wrap a buffer without validating it. Accessors never panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wrap a buffer, validating version, IHL and total length.
    ///
    /// The buffer may be longer than the total length (Ethernet minimum
    /// frame padding); [`payload`](Self::payload) honours the total length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Ipv4Packet { buffer };
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 {
            return Err(WireError::BadVersion);
        }
        let hl = self.header_len();
        if hl < MIN_HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        if hl > b.len() {
            return Err(WireError::Truncated);
        }
        let total = self.total_len();
        if total < hl {
            return Err(WireError::BadTotalLength);
        }
        if total > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::VER_IHL) >> 4
    }

    /// Header length in bytes (IHL × 4), including options.
    pub fn header_len(&self) -> usize {
        usize::from(rd_u8(self.buffer.as_ref(), field::VER_IHL) & 0x0f) * 4
    }

    /// Differentiated services code point (6 bits).
    pub fn dscp(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::DSCP_ECN) >> 2
    }

    /// Explicit congestion notification (2 bits).
    pub fn ecn(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::DSCP_ECN) & 0x03
    }

    /// The total-length field: header plus payload, in bytes.
    pub fn total_len(&self) -> usize {
        usize::from(rd_u16(self.buffer.as_ref(), field::LENGTH))
    }

    pub fn ident(&self) -> u16 {
        rd_u16(self.buffer.as_ref(), field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        rd_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        rd_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (rd_u16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// True for any fragment of a fragmented datagram (MF set or offset ≠ 0).
    pub fn is_fragment(&self) -> bool {
        rd_u16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MF | OFFSET_MASK) != 0
    }

    pub fn ttl(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::TTL)
    }

    pub fn protocol(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::PROTOCOL)
    }

    pub fn checksum(&self) -> u16 {
        rd_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(rd_array::<4>(self.buffer.as_ref(), field::SRC))
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(rd_array::<4>(self.buffer.as_ref(), field::DST))
    }

    /// The header bytes (including options).
    pub fn header(&self) -> &[u8] {
        sub(self.buffer.as_ref(), 0, self.header_len())
    }

    /// True when the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        let h = self.header();
        h.len() >= MIN_HEADER_LEN && checksum_fold(checksum_add(0, h)) == 0
    }

    /// The payload, bounded by the total-length field.
    pub fn payload(&self) -> &[u8] {
        sub(self.buffer.as_ref(), self.header_len(), self.total_len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        wr_bytes(self.buffer.as_mut(), field::SRC, &addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        wr_bytes(self.buffer.as_mut(), field::DST, &addr.octets());
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        wr_u8(self.buffer.as_mut(), field::TTL, ttl);
    }

    pub fn set_protocol(&mut self, protocol: u8) {
        wr_u8(self.buffer.as_mut(), field::PROTOCOL, protocol);
    }

    /// Set the DSCP (masked to 6 bits), preserving ECN.
    pub fn set_dscp(&mut self, dscp: u8) {
        let v = ((dscp & 0x3f) << 2) | self.ecn();
        wr_u8(self.buffer.as_mut(), field::DSCP_ECN, v);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        wr_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Recompute and store the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum_fold(checksum_add(0, self.header()));
        self.set_checksum(sum);
    }

    /// The payload, bounded by the total-length field.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), self.total_len());
        sub_mut(self.buffer.as_mut(), start, end)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv4Packet<&'a T> {
    /// The payload (bounded by the total length), borrowed for the lifetime
    /// of the underlying buffer.
    pub fn into_payload(self) -> &'a [u8] {
        let (start, end) = (self.header_len(), self.total_len());
        sub(<T as AsRef<[u8]>>::as_ref(self.buffer), start, end)
    }
}

/// Write a 20-byte IPv4 header (no options, DF set, ident 0) with a valid
/// checksum for a payload of `payload_len` bytes; returns 20.
///
/// `dscp` is masked to 6 bits. Fails with `Truncated` when `buf` is shorter
/// than 20 bytes and `BadTotalLength` when the datagram would exceed 65535.
pub fn emit_header(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ttl: u8,
    dscp: u8,
    payload_len: usize,
) -> Result<usize, WireError> {
    let total = payload_len
        .checked_add(MIN_HEADER_LEN)
        .and_then(|t| u16::try_from(t).ok())
        .ok_or(WireError::BadTotalLength)?;
    let hdr = buf.get_mut(..MIN_HEADER_LEN).ok_or(WireError::Truncated)?;
    hdr.fill(0);
    wr_u8(hdr, field::VER_IHL, 0x45);
    wr_u16(hdr, field::LENGTH, total);
    wr_u16(hdr, field::FLG_OFF, FLAG_DF);
    let mut p = Ipv4Packet::new_unchecked(hdr);
    p.set_dscp(dscp);
    p.set_ttl(ttl);
    p.set_protocol(protocol);
    p.set_src_addr(src);
    p.set_dst_addr(dst);
    p.fill_checksum();
    Ok(MIN_HEADER_LEN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A 20-byte header + 8 bytes of payload + 4 bytes of Ethernet padding.
    fn sample() -> Vec<u8> {
        let mut v = vec![
            0x45, 0xb8, 0x00, 0x1c, // ver 4, ihl 5, dscp 46 (EF), len 28
            0x1c, 0x46, 0x40, 0x00, // ident, DF
            0x40, 0x11, 0x00, 0x00, // ttl 64, udp, checksum (filled below)
            0xc0, 0xa8, 0x00, 0x01, // 192.168.0.1
            0xc0, 0xa8, 0x00, 0xc7, // 192.168.0.199
        ];
        v.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        v.extend_from_slice(&[0, 0, 0, 0]);
        let c = internet_checksum_of(&v[..20]);
        v[10..12].copy_from_slice(&c.to_be_bytes());
        v
    }

    fn internet_checksum_of(h: &[u8]) -> u16 {
        super::super::internet_checksum(h)
    }

    #[test]
    fn parse_fields() {
        let buf = sample();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp(), 46);
        assert_eq!(p.ecn(), 0);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), PROTO_UDP);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert!(p.verify_checksum());
        // Payload stops at total length, not at the Ethernet padding.
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p.into_payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn known_checksum_value() {
        // Classic example header (Wikipedia / RFC 1071 style walk-through).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum_of(&h), 0xb861);
    }

    #[test]
    fn invalid_fields() {
        let good = sample();
        let mut b = good.clone();
        b[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::BadVersion
        );
        let mut b = good.clone();
        b[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::BadHeaderLength
        );
        let mut b = good.clone();
        b[0] = 0x4f; // 60-byte header in a 32-byte buffer
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Truncated
        );
        let mut b = good.clone();
        b[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::BadTotalLength
        );
        let mut b = good.clone();
        b[2..4].copy_from_slice(&33u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Truncated
        );
        let mut b = good.clone();
        b[8] = 63;
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert!(!p.verify_checksum());
    }

    #[test]
    fn fragments() {
        let mut b = sample();
        b[6] = 0x20; // MF
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().is_fragment());
        b[6] = 0x00;
        b[7] = 0x01; // offset 8 bytes
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert!(p.is_fragment());
        assert_eq!(p.frag_offset(), 8);
    }

    #[test]
    fn every_truncation() {
        let buf = sample();
        for n in 0..buf.len() {
            match Ipv4Packet::new_checked(&buf[..n]) {
                Ok(p) => {
                    assert!(n >= 28);
                    assert_eq!(p.payload().len(), 8);
                    assert!(p.verify_checksum());
                }
                Err(e) => {
                    assert_eq!(e, WireError::Truncated);
                    assert!(n < 28);
                }
            }
        }
    }

    #[test]
    fn setters_keep_checksum_valid() {
        let mut buf = sample();
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        p.set_ttl(3);
        p.set_dscp(0xff);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.dscp(), 0x3f);
        assert_eq!(p.ttl(), 3);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        p.payload_mut()[0] = 9;
        assert_eq!(p.payload()[0], 9);
    }

    #[test]
    fn emit() {
        let mut buf = [0xffu8; 40];
        let n = emit_header(
            &mut buf,
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
            PROTO_UDP,
            DEFAULT_TTL,
            34,
            20,
        )
        .unwrap();
        assert_eq!(n, 20);
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.total_len(), 40);
        assert_eq!(p.dscp(), 34);
        assert!(!p.is_fragment());
        assert_eq!(
            emit_header(&mut [0u8; 19], p.src_addr(), p.dst_addr(), 17, 1, 0, 0),
            Err(WireError::Truncated)
        );
        let (s, d) = (Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
        assert_eq!(
            emit_header(&mut buf, s, d, 17, 1, 0, 65_516),
            Err(WireError::BadTotalLength)
        );
        assert_eq!(emit_header(&mut buf, s, d, 17, 1, 0, 65_515), Ok(20));
    }
}
