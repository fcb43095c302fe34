//! Whole UDP frames: Ethernet II (+ up to two VLAN tags, IEEE 802.1Q /
//! 802.1ad) → IPv4 (RFC 791) or IPv6 (RFC 8200) → UDP (RFC 768), parsed in
//! one pass and built with valid checksums.
//!
//! [`parse_udp_frame`] does not verify checksums (receive paths usually rely
//! on NIC/kernel offload); use [`verify_udp_frame_checksums`] when needed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use super::ethernet::{self, EthernetFrame, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use super::ipv4::{self, Ipv4Packet, PROTO_UDP};
use super::ipv6::{self, Ipv6Packet};
use super::udp::{self, UdpPacket};
use super::{fold64, WireError};

/// Where the pieces of a parsed UDP frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrame {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Outermost VLAN ID, if tagged.
    pub vlan: Option<u16>,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the UDP header.
    pub l4_offset: usize,
    /// Offset of the UDP payload.
    pub payload_offset: usize,
    /// Payload length per the UDP length field.
    pub payload_len: usize,
    /// DSCP of an IPv4 packet (`None` for IPv6).
    pub ipv4_dscp: Option<u8>,
}

impl UdpFrame {
    /// The UDP payload inside the buffer this frame was parsed from.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.payload_offset
            .checked_add(self.payload_len)
            .and_then(|end| buf.get(self.payload_offset..end))
            .unwrap_or(&[])
    }
}

/// Parse Ethernet (+VLAN) → IPv4/IPv6 → UDP.
///
/// Errors: any error of the individual views, plus `UnsupportedEtherType`
/// (neither IPv4 nor IPv6), `Fragmented` (IPv4 fragment) and
/// `UnsupportedProtocol` (not UDP; for IPv6 this includes any extension
/// header, which is not walked).
pub fn parse_udp_frame(buf: &[u8]) -> Result<UdpFrame, WireError> {
    let eth = EthernetFrame::new_checked(buf)?;
    let l3_offset = eth.header_len();
    let vlan = eth.vlan_id();
    let ethertype = eth.ethertype();
    let l3 = eth.into_payload();
    let (src_ip, dst_ip, ip_header_len, ip_end, ipv4_dscp): (IpAddr, IpAddr, _, _, _) =
        match ethertype {
            ETHERTYPE_IPV4 => {
                let ip = Ipv4Packet::new_checked(l3)?;
                if ip.is_fragment() {
                    return Err(WireError::Fragmented);
                }
                if ip.protocol() != PROTO_UDP {
                    return Err(WireError::UnsupportedProtocol);
                }
                (
                    ip.src_addr().into(),
                    ip.dst_addr().into(),
                    ip.header_len(),
                    ip.total_len(),
                    Some(ip.dscp()),
                )
            }
            ETHERTYPE_IPV6 => {
                let ip = Ipv6Packet::new_checked(l3)?;
                if ip.next_header() != ipv6::NEXT_HEADER_UDP {
                    return Err(WireError::UnsupportedProtocol);
                }
                (
                    ip.src_addr().into(),
                    ip.dst_addr().into(),
                    ip.header_len(),
                    ip.total_len(),
                    None,
                )
            }
            _ => return Err(WireError::UnsupportedEtherType),
        };
    // Both IP views checked header_len <= total_len <= l3.len().
    let ip_payload = l3.get(ip_header_len..ip_end).ok_or(WireError::Truncated)?;
    let udp = UdpPacket::new_checked(ip_payload)?;
    let l4_offset = l3_offset + ip_header_len;
    Ok(UdpFrame {
        src: SocketAddr::new(src_ip, udp.src_port()),
        dst: SocketAddr::new(dst_ip, udp.dst_port()),
        vlan,
        l3_offset,
        l4_offset,
        payload_offset: l4_offset + udp::HEADER_LEN,
        payload_len: udp.payload().len(),
        ipv4_dscp,
    })
}

/// The common media frame, read at fixed offsets: IPv4 without options or fragmentation,
/// carrying UDP, untagged or with one 802.1Q tag. Everything the forwarding path needs, in
/// registers rather than in a [`UdpFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Udp {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// Offset of the UDP payload (42, or 46 behind a tag).
    pub payload_offset: u16,
    /// Payload length per the UDP length field.
    pub payload_len: u16,
    /// The IPv4 header checksum verifies.
    pub header_sum_ok: bool,
    /// The UDP checksum field (0: sent without one).
    pub udp_checksum: u16,
}

impl Ipv4Udp {
    /// The payload's one's-complement sum as the UDP checksum implies it (what remains of the
    /// checksummed sum once the pseudo-header and UDP header are taken out), without reading
    /// the payload; `None` for a datagram sent without a checksum. Same value as
    /// `netstack::payload_sum_from_checksum` on the same frame.
    #[inline]
    pub fn payload_sum_from_checksum(&self) -> Option<u32> {
        if self.udp_checksum == 0 {
            return None;
        }
        let udp_len = self.payload_len + udp::HEADER_LEN as u16;
        // Pseudo-header and header (ports, length; the checksum field counts as zero): nine
        // 16-bit words, unfolded, so below 9 × 0xffff.
        let others = udp::pseudo_v4_words(*self.src.ip(), *self.dst.ip(), udp_len)
            + u64::from(self.src.port())
            + u64::from(self.dst.port())
            + u64::from(udp_len);
        // payload = !checksum − others, in one's complement. Adding a multiple of 0xffff
        // changes nothing there, so 16 × 0xffff − others (positive) stands for −others, and
        // the whole takes one fold instead of one for `others` and one for the result.
        Some(fold64(
            u64::from(!self.udp_checksum) + (16 * 0xffff - others),
        ))
    }
}

/// Whether the 20-byte IPv4 header at the start of `ip` verifies: its 16-bit words sum to
/// 0xffff in one's complement. Five 32-bit loads and a fold of fixed length, where the
/// general [`super::checksum_add`] loops. The sum is taken in native byte order, which only swaps
/// the folded result's bytes (RFC 1071 §2(B)), and 0xffff is the same either way.
#[inline]
fn ipv4_header_sum_ok(ip: &[u8; 28]) -> bool {
    let w = |i: usize| u64::from(u32::from_ne_bytes([ip[i], ip[i + 1], ip[i + 2], ip[i + 3]]));
    let s = w(0) + w(4) + w(8) + w(12) + w(16); // < 5 * 2^32
                                                // <= 2^32 + 3 (the high half is at most 4).
    let s = (s & 0xffff_ffff) + (s >> 32);
    // <= 0x1fffe: from below 2^32, 0xffff + 0xffff; from 2^32..2^32 + 3, at most 3 + 0x10000.
    let s = (s & 0xffff) + (s >> 16);
    // <= 0xffff: 0x1_0000..=0x1_fffe fold to at most 0xfffe + 1.
    let s = (s & 0xffff) + (s >> 16);
    s == 0xffff
}

/// Reads `buf` as an [`Ipv4Udp`] frame on VLAN `vlan` (`None`: untagged), or `None` when it is
/// anything else (another VLAN, two tags, IPv6, options, a fragment, not UDP, malformed):
/// [`parse_udp_frame`] then says what it is. Where both parse a frame they agree.
#[inline]
pub fn parse_ipv4_udp(buf: &[u8], vlan: Option<u16>) -> Option<Ipv4Udp> {
    let l3 = match vlan {
        None => {
            let b: &[u8; 14] = buf.get(..14)?.try_into().ok()?;
            if u16::from_be_bytes([b[12], b[13]]) != ETHERTYPE_IPV4 {
                return None;
            }
            14
        }
        Some(id) => {
            let b: &[u8; 18] = buf.get(..18)?.try_into().ok()?;
            if u16::from_be_bytes([b[12], b[13]]) != ethernet::ETHERTYPE_VLAN
                || u16::from_be_bytes([b[14], b[15]]) & 0x0fff != id
                || u16::from_be_bytes([b[16], b[17]]) != ETHERTYPE_IPV4
            {
                return None;
            }
            18
        }
    };
    let ip: &[u8; 28] = buf.get(l3..l3 + 28)?.try_into().ok()?;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] != 0x45
        || ip[9] != PROTO_UDP
        || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
        || total < 28
        || l3 + total > buf.len()
    {
        return None;
    }
    let udp_len = usize::from(u16::from_be_bytes([ip[24], ip[25]]));
    if udp_len < udp::HEADER_LEN || udp_len > total - ipv4::MIN_HEADER_LEN {
        return None;
    }
    Some(Ipv4Udp {
        src: SocketAddrV4::new(
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            u16::from_be_bytes([ip[20], ip[21]]),
        ),
        dst: SocketAddrV4::new(
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            u16::from_be_bytes([ip[22], ip[23]]),
        ),
        payload_offset: (l3 + 28) as u16,
        payload_len: (udp_len - udp::HEADER_LEN) as u16,
        header_sum_ok: ipv4_header_sum_ok(ip),
        udp_checksum: u16::from_be_bytes([ip[26], ip[27]]),
    })
}

/// Verify the IPv4 header checksum (if IPv4) and the UDP checksum of a frame
/// previously parsed from `buf` by [`parse_udp_frame`].
pub fn verify_udp_frame_checksums(buf: &[u8], frame: &UdpFrame) -> bool {
    let l3 = buf.get(frame.l3_offset..).unwrap_or(&[]);
    match (frame.src.ip(), frame.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let Ok(ip) = Ipv4Packet::new_checked(l3) else {
                return false;
            };
            let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                return false;
            };
            ip.verify_checksum() && udp.verify_checksum_v4(s, d)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let Ok(ip) = Ipv6Packet::new_checked(l3) else {
                return false;
            };
            let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                return false;
            };
            udp.verify_checksum_v6(s, d)
        }
        _ => false,
    }
}

/// Build a complete Ethernet (+ optional 802.1Q tag) / IP / UDP frame into
/// `buf` and return its length.
///
/// IPv4 gets DF set, TTL 64 and a valid header checksum; IPv6 gets hop
/// limit 64 and traffic class `dscp << 2`. The UDP checksum is always
/// filled. `dscp` is masked to 6 bits and `vlan` to 12 bits. No minimum
/// frame padding is added.
///
/// Errors: `BadVersion` (src and dst of different families), `Truncated`
/// (`buf` too small), `BadTotalLength` / `BadLength` (payload too large for
/// an IPv4 / UDP or IPv6 length field).
#[allow(clippy::too_many_arguments)]
pub fn build_udp_frame(
    buf: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    src: SocketAddr,
    dst: SocketAddr,
    dscp: u8,
    payload: &[u8],
) -> Result<usize, WireError> {
    let udp_len = payload
        .len()
        .checked_add(udp::HEADER_LEN)
        .ok_or(WireError::BadLength)?;
    let (ethertype, ip_header_len) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (ETHERTYPE_IPV4, ipv4::MIN_HEADER_LEN),
        (IpAddr::V6(_), IpAddr::V6(_)) => (ETHERTYPE_IPV6, ipv6::HEADER_LEN),
        _ => return Err(WireError::BadVersion),
    };
    let l2_len = ethernet::HEADER_LEN
        + if vlan.is_some() {
            ethernet::VLAN_TAG_LEN
        } else {
            0
        };
    let total = l2_len
        .checked_add(ip_header_len)
        .and_then(|n| n.checked_add(udp_len))
        .ok_or(WireError::BadLength)?;
    // Length-field limits first, so that the error does not depend on `buf`.
    if u16::try_from(udp_len).is_err() {
        return Err(WireError::BadLength);
    }
    if ethertype == ETHERTYPE_IPV4 && u16::try_from(ip_header_len + udp_len).is_err() {
        return Err(WireError::BadTotalLength);
    }
    let frame = buf.get_mut(..total).ok_or(WireError::Truncated)?;

    let l3 = ethernet::emit_header(frame, dst_mac, src_mac, vlan, ethertype)?;
    let l4 = l3 + ip_header_len;
    let (ip_buf, udp_buf) = frame.split_at_mut(l4);
    let ip_buf = ip_buf.get_mut(l3..).ok_or(WireError::Truncated)?;

    udp::emit_header(udp_buf, src.port(), dst.port(), payload.len())?;
    udp_buf
        .get_mut(udp::HEADER_LEN..)
        .ok_or(WireError::Truncated)?
        .copy_from_slice(payload);
    let mut udp = UdpPacket::new_unchecked(udp_buf);

    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ipv4::emit_header(ip_buf, s, d, PROTO_UDP, ipv4::DEFAULT_TTL, dscp, udp_len)?;
            udp.fill_checksum_v4(s, d);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let tc = (dscp & 0x3f) << 2;
            ipv6::emit_header(
                ip_buf,
                s,
                d,
                ipv6::NEXT_HEADER_UDP,
                ipv6::DEFAULT_HOP_LIMIT,
                tc,
                udp_len,
            )?;
            udp.fill_checksum_v6(s, d);
        }
        _ => return Err(WireError::BadVersion),
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::{checksum_add, checksum_fold, internet_checksum};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];

    /// A hand-written 802.1Q-tagged IPv4/UDP frame: VLAN 42, 10.0.0.1:5004
    /// → 10.0.0.2:6000, DSCP 46, payload "RTP!", 6 bytes of Ethernet padding.
    fn tagged_v4() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&MAC_B);
        v.extend_from_slice(&MAC_A);
        v.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a, 0x08, 0x00]);
        v.extend_from_slice(&[
            0x45, 0xb8, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 10, 0, 0, 1,
            10, 0, 0, 2,
        ]);
        v.extend_from_slice(&[0x13, 0x8c, 0x17, 0x70, 0x00, 0x0c, 0x00, 0x00]);
        v.extend_from_slice(b"RTP!");
        v.extend_from_slice(&[0; 6]);
        let c = internet_checksum(&v[18..38]);
        v[28..30].copy_from_slice(&c.to_be_bytes());
        v
    }

    /// A hand-written untagged IPv6/UDP frame: [2001:db8::1]:5004 →
    /// [2001:db8::2]:5006 with a 2-byte payload (checksum left zero).
    fn plain_v6() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&MAC_B);
        v.extend_from_slice(&MAC_A);
        v.extend_from_slice(&[0x86, 0xdd]);
        v.extend_from_slice(&[0x60, 0, 0, 0, 0x00, 0x0a, 17, 64]);
        v.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        v.extend_from_slice(&[0x13, 0x8c, 0x13, 0x8e, 0x00, 0x0a, 0x00, 0x00, 0xab, 0xcd]);
        v
    }

    /// The fixed-fold header check against the general checksum on headers of every
    /// magnitude (bytes biased towards 0xff, so the sums carry through every fold step), with
    /// a checksum that verifies and with one bit flipped.
    #[test]
    fn ipv4_header_check_agrees_with_the_general_checksum() {
        let general = |ip: &[u8; 28]| checksum_fold(checksum_add(0, &ip[..20])) == 0;
        // A header (checksum 0) whose 32-bit words sum to exactly 2³² − 1: only the third fold
        // step brings that to 0xffff.
        let mut edge = [0u8; 28];
        edge[..4].fill(0xff);
        assert!(general(&edge));
        assert!(ipv4_header_sum_ok(&edge), "{edge:02x?}");
        let mut rng = SmallRng::seed_from_u64(0x853c_49e6_748f_ea9b);
        let mut next = || rng.gen::<u64>();
        for round in 0..20_000 {
            let mut ip = [0u8; 28];
            for b in &mut ip[..20] {
                let r = next();
                *b = if round % 2 == 0 && r % 4 != 0 {
                    0xff - (r >> 8) as u8 % 3
                } else {
                    r as u8
                };
            }
            ip[10..12].fill(0);
            let c = internet_checksum(&ip[..20]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            assert!(general(&ip));
            assert!(ipv4_header_sum_ok(&ip), "{ip:02x?}");
            let bit = next() as usize % 160;
            ip[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(ipv4_header_sum_ok(&ip), general(&ip), "{ip:02x?}");
        }
    }

    /// The fixed-offset reader agrees with the general parser on every frame it accepts, and
    /// accepts every frame of its kind: valid frames and each of them with every byte of its
    /// headers set to a handful of values.
    #[test]
    fn fixed_offset_ipv4_reader_agrees_with_the_parser() {
        let v4a: SocketAddr = "192.0.2.10:40000".parse().unwrap();
        let v4b: SocketAddr = "198.51.100.7:5004".parse().unwrap();
        let v6a: SocketAddr = "[2001:db8::10]:40000".parse().unwrap();
        let v6b: SocketAddr = "[2001:db8:1::7]:5004".parse().unwrap();
        let mut frames = Vec::new();
        for vlan in [None, Some(100)] {
            for payload in [&b""[..], b"x", &[0xa5u8; 172][..]] {
                for (s, d) in [(v4a, v4b), (v6a, v6b)] {
                    let mut buf = vec![0u8; 1600];
                    let n =
                        build_udp_frame(&mut buf, MAC_A, MAC_B, vlan, s, d, 46, payload).unwrap();
                    buf.truncate(n + 4); // Ethernet padding after the datagram
                    frames.push((vlan, buf));
                }
            }
        }
        frames.push((Some(42), tagged_v4()));
        let mut checked = 0;
        for (vlan, frame) in frames {
            let mut variants = vec![frame.clone(), frame[..frame.len() - 5].to_vec()];
            for at in 0..frame.len().min(50) {
                for v in [0x00, 0x01, 0x08, 0x45, 0x46, 0x81, 0x11, 0xff] {
                    let mut b = frame.clone();
                    b[at] = v;
                    variants.push(b);
                }
            }
            for b in variants {
                for want_vlan in [vlan, None, Some(7)] {
                    compare(&b, want_vlan);
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000);
    }

    fn compare(b: &[u8], vlan: Option<u16>) {
        let fast = parse_ipv4_udp(b, vlan);
        let slow = parse_udp_frame(b);
        let of_its_kind = slow.as_ref().is_ok_and(|f| {
            f.src.is_ipv4()
                && f.vlan == vlan
                && f.l4_offset - f.l3_offset == 20
                && f.l3_offset == if vlan.is_some() { 18 } else { 14 }
                && (vlan.is_none() || b[12..14] == [0x81, 0x00])
        });
        match (fast, slow) {
            (Some(u), Ok(f)) => {
                assert!(of_its_kind, "{b:02x?}");
                assert_eq!(SocketAddr::V4(u.src), f.src);
                assert_eq!(SocketAddr::V4(u.dst), f.dst);
                assert_eq!(usize::from(u.payload_offset), f.payload_offset);
                assert_eq!(usize::from(u.payload_len), f.payload_len);
                let ip = Ipv4Packet::new_checked(&b[f.l3_offset..]).unwrap();
                assert_eq!(u.header_sum_ok, ip.verify_checksum(), "{b:02x?}");
                // One's-complement sums: 0 and 0xffff are the same number (the fast path
                // gives 0xffff where the other gives 0, for a payload summing to zero).
                assert_eq!(
                    u.payload_sum_from_checksum().map(|v| v % 0xffff),
                    crate::io::netstack::payload_sum_from_checksum(b, &f).map(|v| v % 0xffff),
                    "{b:02x?}"
                );
            }
            (None, _) => assert!(!of_its_kind, "not read at fixed offsets: {b:02x?}"),
            (Some(_), Err(e)) => panic!("read a frame the parser rejects ({e}): {b:02x?}"),
        }
    }

    #[test]
    fn parse_tagged_v4() {
        let buf = tagged_v4();
        let f = parse_udp_frame(&buf).unwrap();
        assert_eq!(f.src, "10.0.0.1:5004".parse().unwrap());
        assert_eq!(f.dst, "10.0.0.2:6000".parse().unwrap());
        assert_eq!(f.vlan, Some(42));
        assert_eq!(f.l3_offset, 18);
        assert_eq!(f.l4_offset, 38);
        assert_eq!(f.payload_offset, 46);
        assert_eq!(f.payload_len, 4);
        assert_eq!(f.ipv4_dscp, Some(46));
        assert_eq!(f.payload(&buf), b"RTP!");
        // UDP checksum is zero ("none") and the IP checksum is valid.
        assert!(verify_udp_frame_checksums(&buf, &f));
    }

    #[test]
    fn parse_plain_v6() {
        let buf = plain_v6();
        let f = parse_udp_frame(&buf).unwrap();
        assert_eq!(f.src, "[2001:db8::1]:5004".parse().unwrap());
        assert_eq!(f.dst, "[2001:db8::2]:5006".parse().unwrap());
        assert_eq!(f.vlan, None);
        assert_eq!((f.l3_offset, f.l4_offset, f.payload_offset), (14, 54, 62));
        assert_eq!(f.payload(&buf), &[0xab, 0xcd]);
        assert_eq!(f.ipv4_dscp, None);
        // A zero UDP checksum is invalid over IPv6.
        assert!(!verify_udp_frame_checksums(&buf, &f));
    }

    #[test]
    fn unsupported_and_fragmented() {
        let mut b = tagged_v4();
        b[16..18].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse_udp_frame(&b), Err(WireError::UnsupportedEtherType));
        let mut b = tagged_v4();
        b[27] = 6; // TCP
        assert_eq!(parse_udp_frame(&b), Err(WireError::UnsupportedProtocol));
        let mut b = tagged_v4();
        b[24] = 0x20; // MF
        assert_eq!(parse_udp_frame(&b), Err(WireError::Fragmented));
        let mut b = plain_v6();
        b[20] = 0; // hop-by-hop extension header
        assert_eq!(parse_udp_frame(&b), Err(WireError::UnsupportedProtocol));
        let mut b = tagged_v4();
        b[42..44].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(parse_udp_frame(&b), Err(WireError::BadLength));
    }

    #[test]
    fn every_truncation() {
        for buf in [tagged_v4(), plain_v6()] {
            let full = parse_udp_frame(&buf).unwrap();
            let min = full.payload_offset + full.payload_len;
            for n in 0..buf.len() {
                match parse_udp_frame(&buf[..n]) {
                    Ok(f) => {
                        assert!(n >= min);
                        assert_eq!(f, full);
                    }
                    Err(e) => {
                        assert!(n < min);
                        assert_eq!(e, WireError::Truncated);
                    }
                }
            }
        }
    }

    fn round_trip(vlan: Option<u16>, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let mut buf = [0u8; 1600];
        let n = build_udp_frame(&mut buf, MAC_A, MAC_B, vlan, src, dst, 46, payload).unwrap();
        let f = parse_udp_frame(&buf[..n]).unwrap();
        assert_eq!(f.src, src);
        assert_eq!(f.dst, dst);
        assert_eq!(f.vlan, vlan);
        assert_eq!(f.payload(&buf[..n]), payload);
        assert_eq!(f.payload_offset + f.payload_len, n);
        assert!(verify_udp_frame_checksums(&buf[..n], &f));
        let eth = EthernetFrame::new_checked(&buf[..n]).unwrap();
        assert_eq!(eth.src(), MAC_A);
        assert_eq!(eth.dst(), MAC_B);
        if src.is_ipv4() {
            assert_eq!(f.ipv4_dscp, Some(46));
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert!(ip.verify_checksum());
        } else {
            let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
            assert_eq!(ip.dscp(), 46);
        }
    }

    #[test]
    fn build_round_trips() {
        let v4a: SocketAddr = "192.0.2.10:40000".parse().unwrap();
        let v4b: SocketAddr = "198.51.100.7:5004".parse().unwrap();
        let v6a: SocketAddr = "[2001:db8::10]:40000".parse().unwrap();
        let v6b: SocketAddr = "[2001:db8:1::7]:5004".parse().unwrap();
        for payload in [&b""[..], b"x", b"hello world", &[0xffu8; 333][..]] {
            round_trip(None, v4a, v4b, payload);
            round_trip(Some(100), v4a, v4b, payload);
            round_trip(None, v6a, v6b, payload);
            round_trip(Some(4095), v6b, v6a, payload);
        }
    }

    #[test]
    fn build_errors() {
        let v4: SocketAddr = (Ipv4Addr::LOCALHOST, 1).into();
        let v6: SocketAddr = (Ipv6Addr::LOCALHOST, 1).into();
        let mut buf = [0u8; 64];
        assert_eq!(
            build_udp_frame(&mut buf, MAC_A, MAC_B, None, v4, v6, 0, b""),
            Err(WireError::BadVersion)
        );
        assert_eq!(
            build_udp_frame(&mut buf, MAC_A, MAC_B, None, v4, v4, 0, &[0; 23]),
            Err(WireError::Truncated)
        );
        assert_eq!(
            build_udp_frame(&mut buf, MAC_A, MAC_B, None, v4, v4, 0, &[0; 22]),
            Ok(64)
        );
        assert_eq!(
            build_udp_frame(&mut buf, MAC_A, MAC_B, Some(1), v6, v6, 0, b""),
            Err(WireError::Truncated)
        );
        let mut buf = [0u8; 66];
        assert_eq!(
            build_udp_frame(&mut buf, MAC_A, MAC_B, Some(1), v6, v6, 0, b""),
            Ok(66)
        );
        let big = vec![0u8; 65_508];
        assert_eq!(
            build_udp_frame(&mut buf, MAC_A, MAC_B, None, v4, v4, 0, &big),
            Err(WireError::BadTotalLength)
        );
        let big = vec![0u8; 65_528];
        assert_eq!(
            build_udp_frame(&mut buf, MAC_A, MAC_B, None, v6, v6, 0, &big),
            Err(WireError::BadLength)
        );
    }
}
