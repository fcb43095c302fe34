//! The little host network stack a kernel-bypass backend needs around the RTP path: the
//! appliance's own addresses, ARP (RFC 826) and IPv6 neighbour discovery (RFC 4861) for them,
//! ICMP/ICMPv6 echo, next-hop selection and the neighbour cache, and rewriting a received UDP
//! frame's headers for forwarding.
//!
//! Everything here works on byte slices and is safe code, so it is unit-tested in every build;
//! the DPDK backend only moves packet buffers in and out of it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use crate::wire::ethernet::{
    self, EthernetFrame, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, VLAN_TAG_LEN,
};
use crate::wire::ipv4::{self, Ipv4Packet, PROTO_ICMP, PROTO_UDP};
use crate::wire::ipv6::{self, Ipv6Packet};
use crate::wire::udp;
use crate::wire::{checksum_add, checksum_fold, fold16, WireError};

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const ARP_LEN: usize = 28;
const PROTO_ICMPV6: u8 = 58;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
/// Neighbour-discovery messages carry hop limit 255 (RFC 4861 §7.1).
const ND_HOP_LIMIT: u8 = 255;
/// Size of an NS/NA with one link-layer address option.
const ND_LEN: usize = 32;

/// An address with its on-link prefix, written `203.0.113.10/24` or `2001:db8::10/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// True when `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected address/prefix, e.g. 203.0.113.10/24"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("`{s}`: bad address `{a}`"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("`{s}`: bad prefix `{p}`"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max || addr.is_unspecified() || addr.is_multicast() {
            return Err(format!("`{s}`: not a usable interface address"));
        }
        Ok(IpNet { addr, prefix })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts
            .next()
            .ok_or_else(|| format!("`{s}`: expected six hex bytes"))?;
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("`{s}`: bad hex byte `{p}`"))?;
    }
    if parts.next().is_some() {
        return Err(format!("`{s}`: expected six hex bytes"));
    }
    Ok(mac)
}

pub fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The appliance's side of one Ethernet port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: [u8; 6],
    pub vlan: Option<u16>,
    pub addresses: Vec<IpNet>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// Fixed next-hop MAC for off-link destinations (no ARP/ND for the gateway).
    pub gateway_mac: Option<[u8; 6]>,
    /// DSCP written into forwarded packets.
    pub dscp: u8,
}

impl Interface {
    pub fn is_local(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|n| n.addr == ip)
    }

    /// The address packets to `dst` leave from: `preferred` when it is of `dst`'s family and
    /// ours, else our first address of that family.
    pub fn source_for(&self, dst: IpAddr, preferred: IpAddr) -> Option<IpAddr> {
        if preferred.is_ipv4() == dst.is_ipv4() && self.is_local(preferred) {
            return Some(preferred);
        }
        self.addresses
            .iter()
            .map(|n| n.addr)
            .find(|a| a.is_ipv4() == dst.is_ipv4())
    }

    /// Where a packet to `dst` goes next: `dst` itself when on-link (or ours), else the
    /// gateway of its family.
    pub fn next_hop(&self, dst: IpAddr) -> Option<IpAddr> {
        if self.is_local(dst) || self.addresses.iter().any(|n| n.contains(dst)) {
            return Some(dst);
        }
        match dst {
            IpAddr::V4(_) => self.gateway4.map(IpAddr::V4),
            IpAddr::V6(_) => self.gateway6.map(IpAddr::V6),
        }
    }

    fn is_gateway(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.gateway4 == Some(a),
            IpAddr::V6(a) => self.gateway6 == Some(a),
        }
    }

    /// Ethernet + VLAN + IP + UDP header length of a frame to `dst`.
    pub fn udp_header_len(&self, dst: IpAddr) -> usize {
        ethernet::HEADER_LEN
            + if self.vlan.is_some() { VLAN_TAG_LEN } else { 0 }
            + if dst.is_ipv4() {
                ipv4::MIN_HEADER_LEN
            } else {
                ipv6::HEADER_LEN
            }
            + udp::HEADER_LEN
    }
}

/// Result of resolving a next hop's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    Mac([u8; 6]),
    /// Unknown: the caller should send a request for this address (rate-limited here).
    Request(IpAddr),
    /// Unknown and a request went out recently, or no route.
    Pending,
    NoRoute,
}

/// Neighbour cache of one worker. Entries are learned from ARP/ND traffic (and from other
/// workers); its size is bounded.
#[derive(Debug)]
pub struct Neighbours {
    macs: HashMap<IpAddr, [u8; 6]>,
    requested: HashMap<IpAddr, u64>,
    cap: usize,
    /// Direct-mapped cache of destination → next-hop MAC in front of the route and table
    /// lookups; an entry is valid while its generation matches (bumped on every change).
    fast: Vec<(IpAddr, [u8; 6], u32)>,
    /// The next hop a miss of `fast` last resolved, with its MAC and generation. Behind a
    /// gateway nearly every miss resolves to the same hop, which this answers without hashing.
    last_hop: (IpAddr, [u8; 6], u32),
    generation: u32,
}

const FAST_SLOTS: usize = 1024;

#[inline]
fn fast_slot(ip: IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v as u32) ^ ((v >> 32) as u32) ^ ((v >> 64) as u32) ^ ((v >> 96) as u32)
        }
    };
    (h.wrapping_mul(0x9e37_79b1) >> 22) as usize % FAST_SLOTS
}

/// Minimum time between two requests for one address.
pub const RESOLVE_RETRY_NS: u64 = 200_000_000;

impl Neighbours {
    pub fn new(cap: usize) -> Self {
        Neighbours {
            macs: HashMap::new(),
            requested: HashMap::new(),
            cap: cap.max(1),
            fast: vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), [0; 6], 0); FAST_SLOTS],
            last_hop: (IpAddr::V4(Ipv4Addr::UNSPECIFIED), [0; 6], 0),
            // Entries start at generation 0, so nothing is valid until filled.
            generation: 1,
        }
    }

    /// Records `ip` at `mac`; returns true when that is new information.
    pub fn learn(&mut self, ip: IpAddr, mac: [u8; 6]) -> bool {
        if mac == BROADCAST_MAC || mac[0] & 1 == 1 || ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        if self.macs.get(&ip) == Some(&mac) {
            return false;
        }
        if !self.macs.contains_key(&ip) && self.macs.len() >= self.cap {
            // Bounded: a flood of ARP/NA cannot grow the table. One entry makes room (not
            // the whole table, so the gateway's entry usually survives a flood).
            if let Some(victim) = self.macs.keys().next().copied() {
                self.macs.remove(&victim);
            }
        }
        self.requested.remove(&ip);
        self.macs.insert(ip, mac);
        self.generation = self.generation.wrapping_add(1).max(1);
        true
    }

    pub fn len(&self) -> usize {
        self.macs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
    }

    pub fn get(&self, ip: IpAddr) -> Option<[u8; 6]> {
        self.macs.get(&ip).copied()
    }

    /// MAC of the next hop towards `dst` when known, without side effects (the fast path).
    #[inline]
    pub fn lookup(&self, iface: &Interface, dst: IpAddr) -> Option<[u8; 6]> {
        self.hop_mac(iface, iface.next_hop(dst)?)
    }

    /// MAC of next hop `hop` when known.
    #[inline]
    fn hop_mac(&self, iface: &Interface, hop: IpAddr) -> Option<[u8; 6]> {
        if iface.is_local(hop) {
            return Some(iface.mac);
        }
        if let (Some(m), true) = (iface.gateway_mac, iface.is_gateway(hop)) {
            return Some(m);
        }
        self.macs.get(&hop).copied()
    }

    /// [`Neighbours::lookup`] through the direct-mapped cache (the per-packet path).
    #[inline]
    pub fn lookup_cached(&mut self, iface: &Interface, dst: IpAddr) -> Option<[u8; 6]> {
        let slot = fast_slot(dst);
        let (ip, mac, generation) = self.fast[slot];
        if generation == self.generation && ip == dst {
            return Some(mac);
        }
        let hop = iface.next_hop(dst)?;
        let (last, last_mac, last_generation) = self.last_hop;
        let mac = if last_generation == self.generation && last == hop {
            last_mac
        } else {
            let mac = self.hop_mac(iface, hop)?;
            self.last_hop = (hop, mac, self.generation);
            mac
        };
        self.fast[slot] = (dst, mac, self.generation);
        Some(mac)
    }

    /// MAC of the next hop towards `dst`, or what to do about not knowing it.
    pub fn resolve(&mut self, iface: &Interface, dst: IpAddr, now_ns: u64) -> Resolve {
        let Some(hop) = iface.next_hop(dst) else {
            return Resolve::NoRoute;
        };
        if iface.is_local(hop) {
            return Resolve::Mac(iface.mac);
        }
        if let (Some(m), true) = (iface.gateway_mac, iface.is_gateway(hop)) {
            return Resolve::Mac(m);
        }
        if let Some(m) = self.macs.get(&hop) {
            return Resolve::Mac(*m);
        }
        match self.requested.get(&hop) {
            Some(t) if now_ns.saturating_sub(*t) < RESOLVE_RETRY_NS => Resolve::Pending,
            _ => {
                if self.requested.len() >= self.cap {
                    self.requested.clear();
                }
                self.requested.insert(hop, now_ns);
                Resolve::Request(hop)
            }
        }
    }
}

/// What the slow path did with a frame that is not UDP for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The frame was rewritten in place into a reply of this many bytes; send it.
    Reply {
        len: usize,
        kind: ReplyKind,
        learned: Option<(IpAddr, [u8; 6])>,
    },
    /// Nothing to send, but a neighbour was learned.
    Learned(IpAddr, [u8; 6]),
    /// Not for us or not handled: drop (and count).
    Ignore(IgnoreReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Arp,
    Nd,
    Echo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// Malformed or truncated.
    Malformed,
    /// Addressed to someone else.
    NotOurs,
    /// A protocol or message type the appliance does not answer.
    Unsupported,
}

/// Handles a non-UDP (or non-forwardable) frame: ARP, ICMP echo, ICMPv6 echo and neighbour
/// discovery. `buf` holds the frame in its first `len` bytes and has room to grow (a reply
/// may be longer than the request).
pub fn handle_control(iface: &Interface, buf: &mut [u8], len: usize) -> Control {
    let Some(frame) = buf.get(..len) else {
        return Control::Ignore(IgnoreReason::Malformed);
    };
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Control::Ignore(IgnoreReason::Malformed);
    };
    if eth.vlan_id() != iface.vlan || eth.vlan_count() > 1 {
        return Control::Ignore(IgnoreReason::NotOurs);
    }
    let l3 = eth.header_len();
    let src_mac = eth.src();
    match eth.ethertype() {
        ETHERTYPE_ARP if len >= l3 + ARP_LEN => arp(iface, buf, l3, src_mac),
        ETHERTYPE_ARP => Control::Ignore(IgnoreReason::Malformed),
        ETHERTYPE_IPV4 => icmp4(iface, buf, len, l3),
        ETHERTYPE_IPV6 => icmp6(iface, buf, len, l3, src_mac),
        _ => Control::Ignore(IgnoreReason::Unsupported),
    }
}

fn arp(iface: &Interface, buf: &mut [u8], l3: usize, eth_src: [u8; 6]) -> Control {
    let Some(a) = buf.get(l3..l3 + ARP_LEN) else {
        return Control::Ignore(IgnoreReason::Malformed);
    };
    // Ethernet/IPv4 only: htype 1, ptype 0x0800, hlen 6, plen 4.
    if a[0..6] != [0, 1, 8, 0, 6, 4] {
        return Control::Ignore(IgnoreReason::Unsupported);
    }
    let op = u16::from_be_bytes([a[6], a[7]]);
    let sha: [u8; 6] = a[8..14].try_into().unwrap_or_default();
    let spa = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
    let tpa = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
    let ours = iface.is_local(IpAddr::V4(tpa));
    let learned = (!spa.is_unspecified()).then_some((IpAddr::V4(spa), sha));
    match op {
        1 if ours => {
            let Some(mine) = iface.source_for(IpAddr::V4(tpa), IpAddr::V4(tpa)) else {
                return Control::Ignore(IgnoreReason::NotOurs);
            };
            let len = l3 + ARP_LEN;
            let _ = ethernet::emit_header(buf, eth_src, iface.mac, iface.vlan, ETHERTYPE_ARP);
            write_arp(&mut buf[l3..len], 2, iface.mac, mine, sha, IpAddr::V4(spa));
            Control::Reply {
                len,
                kind: ReplyKind::Arp,
                learned,
            }
        }
        2 if ours || learned.is_some() => match learned {
            Some((ip, mac)) => Control::Learned(ip, mac),
            None => Control::Ignore(IgnoreReason::Malformed),
        },
        _ => Control::Ignore(IgnoreReason::NotOurs),
    }
}

fn write_arp(a: &mut [u8], op: u16, sha: [u8; 6], spa: IpAddr, tha: [u8; 6], tpa: IpAddr) {
    let (IpAddr::V4(spa), IpAddr::V4(tpa)) = (spa, tpa) else {
        return;
    };
    a[0..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&sha);
    a[14..18].copy_from_slice(&spa.octets());
    a[18..24].copy_from_slice(&tha);
    a[24..28].copy_from_slice(&tpa.octets());
}

/// Writes an ARP request for `target` into `buf`; returns the frame length.
pub fn build_arp_request(iface: &Interface, target: Ipv4Addr, buf: &mut [u8]) -> Option<usize> {
    let src = iface.source_for(IpAddr::V4(target), IpAddr::V4(Ipv4Addr::UNSPECIFIED))?;
    let l3 =
        ethernet::emit_header(buf, BROADCAST_MAC, iface.mac, iface.vlan, ETHERTYPE_ARP).ok()?;
    let a = buf.get_mut(l3..l3 + ARP_LEN)?;
    write_arp(a, 1, iface.mac, src, [0; 6], IpAddr::V4(target));
    Some(l3 + ARP_LEN)
}

fn icmp4(iface: &Interface, buf: &mut [u8], len: usize, l3: usize) -> Control {
    let Ok(ip) = Ipv4Packet::new_checked(&buf[l3..len]) else {
        return Control::Ignore(IgnoreReason::Malformed);
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if !iface.is_local(IpAddr::V4(dst)) {
        return Control::Ignore(IgnoreReason::NotOurs);
    }
    if ip.protocol() != PROTO_ICMP || ip.more_frags() || ip.frag_offset() != 0 {
        return Control::Ignore(IgnoreReason::Unsupported);
    }
    let hl = ip.header_len();
    let end = l3 + ip.total_len();
    let icmp_at = l3 + hl;
    if end > len || end < icmp_at + 8 || buf[icmp_at] != ICMP_ECHO_REQUEST || buf[icmp_at + 1] != 0
    {
        return Control::Ignore(IgnoreReason::Unsupported);
    }
    if !ones_complement_ok(&buf[icmp_at..end], 0) {
        return Control::Ignore(IgnoreReason::Malformed);
    }
    let eth_src: [u8; 6] = buf[6..12].try_into().unwrap_or_default();
    // Reply: same identifier, sequence and data; our header fields.
    let data_len = end - icmp_at;
    let Ok(_) = ethernet::emit_header(buf, eth_src, iface.mac, iface.vlan, ETHERTYPE_IPV4) else {
        return Control::Ignore(IgnoreReason::Malformed);
    };
    // Options are dropped: the reply gets a plain 20-byte header.
    if hl != ipv4::MIN_HEADER_LEN {
        buf.copy_within(icmp_at..end, l3 + ipv4::MIN_HEADER_LEN);
    }
    let icmp_at = l3 + ipv4::MIN_HEADER_LEN;
    let end = icmp_at + data_len;
    if ipv4::emit_header(
        &mut buf[l3..end],
        dst,
        src,
        PROTO_ICMP,
        ipv4::DEFAULT_TTL,
        0,
        data_len,
    )
    .is_err()
    {
        return Control::Ignore(IgnoreReason::Malformed);
    }
    let icmp = &mut buf[icmp_at..end];
    icmp[0] = ICMP_ECHO_REPLY;
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = checksum_fold(checksum_add(0, icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Control::Reply {
        len: end,
        kind: ReplyKind::Echo,
        learned: None,
    }
}

fn ones_complement_ok(data: &[u8], pseudo: u32) -> bool {
    checksum_fold(checksum_add(pseudo, data)) == 0
}

fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, len: usize, next: u8) -> u32 {
    let mut acc = checksum_add(0, &src.octets());
    acc = checksum_add(acc, &dst.octets());
    acc = checksum_add(acc, &(len as u32).to_be_bytes());
    checksum_add(acc, &[0, 0, 0, next])
}

fn fill_icmp6_checksum(icmp: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) {
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = checksum_fold(checksum_add(
        pseudo6(src, dst, icmp.len(), PROTO_ICMPV6),
        icmp,
    ));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
}

fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let t = target.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    )
}

fn multicast_mac(ip: Ipv6Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn icmp6(iface: &Interface, buf: &mut [u8], len: usize, l3: usize, eth_src: [u8; 6]) -> Control {
    let Ok(ip) = Ipv6Packet::new_checked(&buf[l3..len]) else {
        return Control::Ignore(IgnoreReason::Malformed);
    };
    if ip.next_header() != PROTO_ICMPV6 {
        return Control::Ignore(IgnoreReason::Unsupported);
    }
    let (src, dst, hop) = (ip.src_addr(), ip.dst_addr(), ip.hop_limit());
    let icmp_at = l3 + ipv6::HEADER_LEN;
    let end = icmp_at + ip.payload_len();
    if end > len || end < icmp_at + 8 {
        return Control::Ignore(IgnoreReason::Malformed);
    }
    if !ones_complement_ok(
        &buf[icmp_at..end],
        pseudo6(src, dst, end - icmp_at, PROTO_ICMPV6),
    ) {
        return Control::Ignore(IgnoreReason::Malformed);
    }
    if buf[icmp_at + 1] != 0 {
        return Control::Ignore(IgnoreReason::Unsupported);
    }
    match buf[icmp_at] {
        ICMPV6_ECHO_REQUEST if iface.is_local(IpAddr::V6(dst)) => {
            let _ = ethernet::emit_header(buf, eth_src, iface.mac, iface.vlan, ETHERTYPE_IPV6);
            let data_len = end - icmp_at;
            let _ = ipv6::emit_header(
                &mut buf[l3..end],
                dst,
                src,
                PROTO_ICMPV6,
                ipv6::DEFAULT_HOP_LIMIT,
                0,
                data_len,
            );
            buf[icmp_at] = ICMPV6_ECHO_REPLY;
            fill_icmp6_checksum(&mut buf[icmp_at..end], dst, src);
            Control::Reply {
                len: end,
                kind: ReplyKind::Echo,
                learned: None,
            }
        }
        ICMPV6_NS if hop == ND_HOP_LIMIT && end >= icmp_at + 24 => {
            let target = Ipv6Addr::from(
                <[u8; 16]>::try_from(&buf[icmp_at + 8..icmp_at + 24]).unwrap_or_default(),
            );
            if !iface.is_local(IpAddr::V6(target)) {
                return Control::Ignore(IgnoreReason::NotOurs);
            }
            if src.is_unspecified() {
                // Duplicate address detection by another node: not answered here.
                return Control::Ignore(IgnoreReason::Unsupported);
            }
            let sll = nd_option(&buf[icmp_at + 24..end], 1).unwrap_or(eth_src);
            let reply_end = icmp_at + ND_LEN;
            if buf.len() < reply_end {
                return Control::Ignore(IgnoreReason::Malformed);
            }
            let _ = ethernet::emit_header(buf, sll, iface.mac, iface.vlan, ETHERTYPE_IPV6);
            let _ = ipv6::emit_header(
                &mut buf[l3..reply_end],
                target,
                src,
                PROTO_ICMPV6,
                ND_HOP_LIMIT,
                0,
                ND_LEN,
            );
            let na = &mut buf[icmp_at..reply_end];
            na.fill(0);
            na[0] = ICMPV6_NA;
            na[4] = 0x60; // Solicited + Override.
            na[8..24].copy_from_slice(&target.octets());
            na[24] = 2; // Target link-layer address.
            na[25] = 1;
            na[26..32].copy_from_slice(&iface.mac);
            fill_icmp6_checksum(na, target, src);
            Control::Reply {
                len: reply_end,
                kind: ReplyKind::Nd,
                learned: Some((IpAddr::V6(src), sll)),
            }
        }
        ICMPV6_NA if hop == ND_HOP_LIMIT && end >= icmp_at + 24 => {
            let target = Ipv6Addr::from(
                <[u8; 16]>::try_from(&buf[icmp_at + 8..icmp_at + 24]).unwrap_or_default(),
            );
            let mac = nd_option(&buf[icmp_at + 24..end], 2).unwrap_or(eth_src);
            Control::Learned(IpAddr::V6(target), mac)
        }
        _ => Control::Ignore(IgnoreReason::Unsupported),
    }
}

/// The link-layer address in ND option `kind` (1 source, 2 target), if present and sane.
fn nd_option(mut opts: &[u8], kind: u8) -> Option<[u8; 6]> {
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == kind && len >= 8 {
            return opts[2..8].try_into().ok();
        }
        opts = &opts[len..];
    }
    None
}

/// Writes a neighbour solicitation for `target` into `buf`; returns the frame length.
pub fn build_neighbour_solicitation(
    iface: &Interface,
    target: Ipv6Addr,
    buf: &mut [u8],
) -> Option<usize> {
    let IpAddr::V6(src) =
        iface.source_for(IpAddr::V6(target), IpAddr::V6(Ipv6Addr::UNSPECIFIED))?
    else {
        return None;
    };
    let dst = solicited_node(target);
    let l3 = ethernet::emit_header(
        buf,
        multicast_mac(dst),
        iface.mac,
        iface.vlan,
        ETHERTYPE_IPV6,
    )
    .ok()?;
    let icmp_at = l3 + ipv6::HEADER_LEN;
    let end = icmp_at + ND_LEN;
    ipv6::emit_header(
        buf.get_mut(l3..end)?,
        src,
        dst,
        PROTO_ICMPV6,
        ND_HOP_LIMIT,
        0,
        ND_LEN,
    )
    .ok()?;
    let ns = &mut buf[icmp_at..end];
    ns.fill(0);
    ns[0] = ICMPV6_NS;
    ns[8..24].copy_from_slice(&target.octets());
    ns[24] = 1; // Source link-layer address.
    ns[25] = 1;
    ns[26..32].copy_from_slice(&iface.mac);
    fill_icmp6_checksum(ns, src, dst);
    Some(end)
}

/// Verifies the IPv4 header checksum (IPv4) and the UDP checksum of a frame parsed by
/// `parse_udp_frame`, in one pass over the payload. Returns the one's-complement sum of the
/// payload (for [`write_udp_headers`] to reuse) when both are right.
pub fn verify_udp_sums(frame: &[u8], f: &crate::wire::frame::UdpFrame) -> Option<u32> {
    let udp = frame.get(f.l4_offset..f.payload_offset)?;
    let payload = frame.get(f.payload_offset..f.payload_offset + f.payload_len)?;
    let udp_len = (udp::HEADER_LEN + payload.len()) as u16;
    let payload_sum = checksum_add(0, payload);
    let pseudo = match (f.src.ip(), f.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            if !ip_header_sum_ok(frame, f) {
                return None;
            }
            if udp[6] == 0 && udp[7] == 0 {
                // No UDP checksum (allowed over IPv4).
                return Some(payload_sum);
            }
            udp::pseudo_v4(s, d, udp_len)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => udp::pseudo_v6(s, d, udp_len),
        _ => return None,
    };
    let total = checksum_add(pseudo, udp);
    // Fold the payload's sum in as a 16-bit word.
    let total = checksum_add(total, &(payload_sum as u16).to_be_bytes());
    (checksum_fold(total) == 0).then_some(payload_sum)
}

/// Whether the IP header of a frame parsed by `parse_udp_frame` has a right checksum: the
/// IPv4 header checksum (20 to 60 bytes, in the frame's first cache lines); IPv6 has none.
pub fn ip_header_sum_ok(frame: &[u8], f: &crate::wire::frame::UdpFrame) -> bool {
    match f.src.ip() {
        IpAddr::V4(_) => frame
            .get(f.l3_offset..f.l4_offset)
            .is_some_and(|ip| checksum_fold(checksum_add(0, ip)) == 0),
        IpAddr::V6(_) => true,
    }
}

/// The payload's one's-complement sum recovered from a frame's UDP checksum (the checksum
/// covers pseudo-header + UDP header + payload, so the payload part is what remains after
/// taking the others out), without reading the payload. `None` for an IPv4 datagram sent
/// without a checksum. When the checksum is wrong (the datagram was damaged and nobody
/// verified it), the sum is wrong by the same amount, so a checksum built from it for the
/// forwarded datagram is wrong too and its receiver still detects the damage (ADR 0019).
pub fn payload_sum_from_checksum(frame: &[u8], f: &crate::wire::frame::UdpFrame) -> Option<u32> {
    let udp = frame.get(f.l4_offset..f.l4_offset + udp::HEADER_LEN)?;
    let csum = u16::from_be_bytes([udp[6], udp[7]]);
    let udp_len = (udp::HEADER_LEN + f.payload_len) as u16;
    let pseudo = match (f.src.ip(), f.dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) if csum == 0 => return None,
        (IpAddr::V4(s), IpAddr::V4(d)) => udp::pseudo_v4(s, d, udp_len),
        (IpAddr::V6(s), IpAddr::V6(d)) => udp::pseudo_v6(s, d, udp_len),
        _ => return None,
    };
    // total = pseudo + header(without checksum) + payload = !csum.
    let others = checksum_add(pseudo, &udp[..6]) as u16;
    let total = u32::from(!csum);
    // payload = total − others, in one's complement: total + !others.
    Some(checksum_add(total, &(!others).to_be_bytes()))
}

/// `sum` of a payload after its first `N` bytes `old` were replaced by `new` (`N` even).
/// Unchanged bytes (RTP not rewritten) return `sum` as it is; otherwise the words are summed
/// at fixed size and folded in fixed steps ([`fold16`]), which this per-packet path needs (a
/// slice loop with a fold until no carry was over a tenth of the transmit path's samples).
#[inline]
pub fn adjust_sum<const N: usize>(sum: u32, old: &[u8; N], new: &[u8; N]) -> u32 {
    if old == new {
        return sum;
    }
    let words = |b: &[u8; N]| -> u64 {
        let mut acc = 0u64;
        for w in b.chunks_exact(2) {
            acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        acc
    };
    // Subtracting in one's complement is adding the complement.
    let o = fold16(words(old));
    u32::from(fold16(u64::from(sum) + u64::from(!o) + words(new)))
}

/// Writes an Ethernet header (with an 802.1Q tag when `vlan` is set) into `eth`, which is 14
/// or 18 bytes as `vlan` says (checked by the callers). Constant-size copies only: a
/// variable-length copy becomes a memcpy call on the per-packet path.
#[inline]
fn put_ethernet(
    eth: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
) {
    eth[0..6].copy_from_slice(&dst_mac);
    eth[6..12].copy_from_slice(&src_mac);
    if let Some(v) = vlan {
        eth[12..14].copy_from_slice(&ethernet::ETHERTYPE_VLAN.to_be_bytes());
        eth[14..16].copy_from_slice(&(v & 0x0fff).to_be_bytes());
        eth[16..18].copy_from_slice(&ethertype.to_be_bytes());
    } else {
        eth[12..14].copy_from_slice(&ethertype.to_be_bytes());
    }
}

/// Writes Ethernet (+VLAN), IP and UDP headers into `frame[..hdr_len]` for the payload in
/// `frame[hdr_len..]`, with a full UDP checksum; `payload_sum`, when given, is the payload's
/// one's-complement sum, which saves summing it again. `hdr_len` must be
/// [`Interface::udp_header_len`] of `dst`.
///
/// # Errors
/// Mixed address families, or a frame too short or too long for the length fields.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn write_udp_headers(
    frame: &mut [u8],
    hdr_len: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    src: SocketAddr,
    dst: SocketAddr,
    dscp: u8,
    payload_sum: Option<u32>,
) -> Result<(), WireError> {
    // Written with fixed-size arrays and one copy per header: this runs for every forwarded
    // packet of the DPDK backend.
    let payload_len = frame
        .len()
        .checked_sub(hdr_len)
        .ok_or(WireError::Truncated)?;
    let (headers, payload) = frame.split_at_mut(hdr_len);
    let psum = || payload_sum.unwrap_or_else(|| checksum_add(0, payload));
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => write_ipv4_udp_headers(
            headers,
            src_mac,
            dst_mac,
            vlan,
            s,
            d,
            dscp,
            payload_len,
            psum(),
        ),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => write_ipv6_udp_headers(
            headers,
            src_mac,
            dst_mac,
            vlan,
            s,
            d,
            dscp,
            payload_len,
            psum(),
        ),
        _ => Err(WireError::BadVersion),
    }
}

/// The headers of an IPv6 frame (what [`write_udp_headers`] writes for IPv6), the payload's
/// one's-complement sum known; `head` as for [`write_ipv4_udp_headers`] (62 or 66 bytes).
/// Out of line: IPv6 media is the rarer case, and the IPv4 path stays small.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn write_ipv6_udp_headers(
    head: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    src: SocketAddrV6,
    dst: SocketAddrV6,
    dscp: u8,
    payload_len: usize,
    payload_sum: u32,
) -> Result<(), WireError> {
    let udp_len = u16::try_from(payload_len + udp::HEADER_LEN).map_err(|_| WireError::BadLength)?;
    let l2 = ethernet::HEADER_LEN + if vlan.is_some() { VLAN_TAG_LEN } else { 0 };
    if head.len() != l2 + ipv6::HEADER_LEN + udp::HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let (eth, rest) = head.split_at_mut(l2);
    let (ip, udp_hdr) = rest.split_at_mut(ipv6::HEADER_LEN);
    put_ethernet(eth, src_mac, dst_mac, vlan, ETHERTYPE_IPV6);

    let tc = (dscp & 0x3f) << 2;
    let mut h = [0u8; ipv6::HEADER_LEN];
    h[0] = 0x60 | (tc >> 4);
    h[1] = tc << 4;
    h[4..6].copy_from_slice(&udp_len.to_be_bytes());
    h[6] = ipv6::NEXT_HEADER_UDP;
    h[7] = ipv6::DEFAULT_HOP_LIMIT;
    h[8..24].copy_from_slice(&src.ip().octets());
    h[24..40].copy_from_slice(&dst.ip().octets());
    ip.copy_from_slice(&h);
    let pseudo = udp::pseudo_v6(*src.ip(), *dst.ip(), udp_len);
    let mut u = [0u8; udp::HEADER_LEN];
    u[0..2].copy_from_slice(&src.port().to_be_bytes());
    u[2..4].copy_from_slice(&dst.port().to_be_bytes());
    u[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let acc = checksum_add(
        checksum_add(pseudo, &u),
        &(payload_sum as u16).to_be_bytes(),
    );
    let c = checksum_fold(acc);
    // A computed zero is sent as all-ones (RFC 768).
    let c = if c == 0 { 0xffff } else { c };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    udp_hdr.copy_from_slice(&u);
    Ok(())
}

/// The headers of an IPv4 frame (what [`write_udp_headers`] writes for IPv4), at fixed
/// offsets: untagged or with one 802.1Q tag, the payload's one's-complement sum known. `head`
/// is exactly the headers (42 bytes, 46 with a tag); `payload_len` bytes of payload follow
/// them in the frame.
///
/// # Errors
/// `head` of the wrong length, or a payload too long for the length fields.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn write_ipv4_udp_headers(
    head: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    dscp: u8,
    payload_len: usize,
    payload_sum: u32,
) -> Result<(), WireError> {
    const IP_UDP: usize = ipv4::MIN_HEADER_LEN + udp::HEADER_LEN;
    let l2 = ethernet::HEADER_LEN + if vlan.is_some() { VLAN_TAG_LEN } else { 0 };
    let udp_len = u16::try_from(payload_len + udp::HEADER_LEN).map_err(|_| WireError::BadLength)?;
    let total = u16::try_from(payload_len + IP_UDP).map_err(|_| WireError::BadTotalLength)?;
    if head.len() != l2 + IP_UDP {
        return Err(WireError::Truncated);
    }
    let (eth, rest) = head.split_at_mut(l2);
    let ip: &mut [u8; IP_UDP] = rest.try_into().map_err(|_| WireError::Truncated)?;
    put_ethernet(eth, src_mac, dst_mac, vlan, ETHERTYPE_IPV4);
    let tos = (dscp & 0x3f) << 2;
    let addrs = udp::addr_words_v4(*src.ip(), *dst.ip());
    // Version/IHL + TOS, total length, DF, TTL + protocol, addresses.
    let ip_sum = u64::from(0x4500 | u16::from(tos))
        + u64::from(total)
        + 0x4000
        + u64::from(u16::from_be_bytes([ipv4::DEFAULT_TTL, PROTO_UDP]))
        + addrs;
    ip[0] = 0x45;
    ip[1] = tos;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
    ip[8] = ipv4::DEFAULT_TTL;
    ip[9] = PROTO_UDP;
    ip[10..12].copy_from_slice(&(!fold16(ip_sum)).to_be_bytes());
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    // Pseudo-header, header (ports, length; the checksum field counts as zero), payload.
    let udp_sum = udp::pseudo_v4_words(*src.ip(), *dst.ip(), udp_len)
        + u64::from(src.port())
        + u64::from(dst.port())
        + u64::from(udp_len)
        + u64::from(payload_sum);
    let c = !fold16(udp_sum);
    // A computed zero is sent as all-ones (RFC 768).
    let c = if c == 0 { 0xffff } else { c };
    ip[20..22].copy_from_slice(&src.port().to_be_bytes());
    ip[22..24].copy_from_slice(&dst.port().to_be_bytes());
    ip[24..26].copy_from_slice(&udp_len.to_be_bytes());
    ip[26..28].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::frame::{build_udp_frame, parse_udp_frame, verify_udp_frame_checksums};

    const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    fn iface() -> Interface {
        Interface {
            mac: OUR_MAC,
            vlan: None,
            addresses: vec![
                "192.0.2.1/24".parse().unwrap(),
                "2001:db8::1/64".parse().unwrap(),
            ],
            gateway4: Some(Ipv4Addr::new(192, 0, 2, 254)),
            gateway6: None,
            gateway_mac: None,
            dscp: 46,
        }
    }

    fn arp_frame(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut v = vec![0u8; 128];
        let l3 = ethernet::emit_header(&mut v, BROADCAST_MAC, sha, None, ETHERTYPE_ARP).unwrap();
        write_arp(
            &mut v[l3..l3 + ARP_LEN],
            op,
            sha,
            IpAddr::from(spa),
            [0; 6],
            IpAddr::from(tpa),
        );
        v
    }

    #[test]
    fn ipnet_parses_and_matches() {
        let n: IpNet = "10.1.2.3/16".parse().unwrap();
        assert!(n.contains("10.1.200.1".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let n6: IpNet = "2001:db8::1/64".parse().unwrap();
        assert!(n6.contains("2001:db8::ffff".parse().unwrap()));
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/8", "0.0.0.0/0", "ff02::1/64"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap(), [2, 0, 0, 0, 0, 10]);
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:0a:0b").is_err());
        assert_eq!(format_mac([2, 0, 0, 0, 0, 10]), "02:00:00:00:00:0a");
    }

    #[test]
    fn answers_arp_for_our_address_only_and_learns_the_sender() {
        let ifc = iface();
        let mut f = arp_frame(1, PEER_MAC, [192, 0, 2, 9], [192, 0, 2, 1]);
        let len = ethernet::HEADER_LEN + ARP_LEN;
        match handle_control(&ifc, &mut f, len) {
            Control::Reply {
                len: n,
                kind: ReplyKind::Arp,
                learned,
            } => {
                assert_eq!(n, len);
                assert_eq!(learned, Some(("192.0.2.9".parse().unwrap(), PEER_MAC)));
                assert_eq!(&f[0..6], &PEER_MAC);
                assert_eq!(&f[6..12], &OUR_MAC);
                assert_eq!(&f[20..22], &[0, 2]);
                assert_eq!(&f[22..28], &OUR_MAC);
                assert_eq!(&f[28..32], &[192, 0, 2, 1]);
                assert_eq!(&f[32..38], &PEER_MAC);
                assert_eq!(&f[38..42], &[192, 0, 2, 9]);
            }
            other => panic!("{other:?}"),
        }
        let mut other = arp_frame(1, PEER_MAC, [192, 0, 2, 9], [192, 0, 2, 77]);
        assert_eq!(
            handle_control(&ifc, &mut other, len),
            Control::Ignore(IgnoreReason::NotOurs)
        );
        let mut reply = arp_frame(2, PEER_MAC, [192, 0, 2, 9], [192, 0, 2, 1]);
        assert_eq!(
            handle_control(&ifc, &mut reply, len),
            Control::Learned("192.0.2.9".parse().unwrap(), PEER_MAC)
        );
        // Every truncation is malformed, never a panic.
        for cut in 0..len {
            let mut f = arp_frame(1, PEER_MAC, [192, 0, 2, 9], [192, 0, 2, 1]);
            assert!(matches!(
                handle_control(&ifc, &mut f, cut),
                Control::Ignore(_)
            ));
        }
    }

    fn echo4(dst: [u8; 4]) -> (Vec<u8>, usize) {
        let mut v = vec![0u8; 256];
        let l3 = ethernet::emit_header(&mut v, OUR_MAC, PEER_MAC, None, ETHERTYPE_IPV4).unwrap();
        let data = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        ipv4::emit_header(
            &mut v[l3..],
            Ipv4Addr::new(192, 0, 2, 9),
            Ipv4Addr::from(dst),
            PROTO_ICMP,
            64,
            0,
            data.len(),
        )
        .unwrap();
        let at = l3 + 20;
        v[at..at + data.len()].copy_from_slice(&data);
        let c = checksum_fold(checksum_add(0, &v[at..at + data.len()]));
        v[at + 2..at + 4].copy_from_slice(&c.to_be_bytes());
        (v, at + data.len())
    }

    #[test]
    fn answers_icmp_echo_with_valid_checksums() {
        let ifc = iface();
        let (mut f, len) = echo4([192, 0, 2, 1]);
        let Control::Reply { len: n, kind, .. } = handle_control(&ifc, &mut f, len) else {
            panic!("no reply");
        };
        assert_eq!((n, kind), (len, ReplyKind::Echo));
        let ip = Ipv4Packet::new_checked(&f[14..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(f[34], ICMP_ECHO_REPLY);
        assert!(ones_complement_ok(&f[34..n], 0));
        assert_eq!(&f[38..n], &[0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'][..]);
        let (mut g, len) = echo4([192, 0, 2, 50]);
        assert_eq!(
            handle_control(&ifc, &mut g, len),
            Control::Ignore(IgnoreReason::NotOurs)
        );
        let (mut bad, len) = echo4([192, 0, 2, 1]);
        bad[40] ^= 0xff;
        assert_eq!(
            handle_control(&ifc, &mut bad, len),
            Control::Ignore(IgnoreReason::Malformed)
        );
        for cut in 0..len {
            let (mut f, _) = echo4([192, 0, 2, 1]);
            assert!(matches!(
                handle_control(&ifc, &mut f, cut),
                Control::Ignore(_)
            ));
        }
    }

    #[test]
    fn neighbour_solicitation_is_answered_and_our_own_solicitation_is_valid() {
        let ifc = iface();
        // The peer solicits us: build it with our builder from the peer's point of view.
        let peer = Interface {
            mac: PEER_MAC,
            addresses: vec!["2001:db8::9/64".parse().unwrap()],
            ..iface()
        };
        let mut buf = vec![0u8; 256];
        let len =
            build_neighbour_solicitation(&peer, "2001:db8::1".parse().unwrap(), &mut buf).unwrap();
        assert_eq!(&buf[0..6], &[0x33, 0x33, 0xff, 0, 0, 1]);
        let Control::Reply {
            len: n,
            kind: ReplyKind::Nd,
            learned,
        } = handle_control(&ifc, &mut buf, len)
        else {
            panic!("no NA");
        };
        assert_eq!(learned, Some(("2001:db8::9".parse().unwrap(), PEER_MAC)));
        assert_eq!(&buf[0..6], &PEER_MAC);
        // The NA, handled by the peer, teaches it our MAC.
        assert_eq!(
            handle_control(&peer, &mut buf, n),
            Control::Learned("2001:db8::1".parse().unwrap(), OUR_MAC)
        );
        for cut in 0..len {
            let mut b = vec![0u8; 256];
            build_neighbour_solicitation(&peer, "2001:db8::1".parse().unwrap(), &mut b).unwrap();
            assert!(matches!(
                handle_control(&ifc, &mut b, cut),
                Control::Ignore(_)
            ));
        }
    }

    #[test]
    fn arp_request_builder_round_trips_through_the_handler() {
        let ifc = iface();
        let peer = Interface {
            mac: PEER_MAC,
            addresses: vec!["192.0.2.9/24".parse().unwrap()],
            ..iface()
        };
        let mut buf = vec![0u8; 128];
        let n = build_arp_request(&ifc, Ipv4Addr::new(192, 0, 2, 9), &mut buf).unwrap();
        let Control::Reply { len, learned, .. } = handle_control(&peer, &mut buf, n) else {
            panic!("peer did not answer");
        };
        assert_eq!(learned, Some(("192.0.2.1".parse().unwrap(), OUR_MAC)));
        assert_eq!(
            handle_control(&ifc, &mut buf, len),
            Control::Learned("192.0.2.9".parse().unwrap(), PEER_MAC)
        );
    }

    #[test]
    fn cache_misses_resolve_through_the_last_hop_and_follow_changes() {
        let ifc = Interface {
            gateway_mac: None,
            ..iface()
        };
        let mut n = Neighbours::new(8);
        let gw: IpAddr = "192.0.2.254".parse().unwrap();
        let on_link: IpAddr = "192.0.2.9".parse().unwrap();
        let on_link_mac = [2, 0, 0, 0, 0, 0x09];
        assert!(n.learn(gw, PEER_MAC));
        assert!(n.learn(on_link, on_link_mac));
        // More distinct off-link destinations than the direct-mapped cache has slots, so most
        // lookups miss it; an on-link neighbour in between must not take the gateway's MAC.
        let off_link = |k: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + k * 7 + 1));
        for k in 0..(3 * FAST_SLOTS as u32) {
            assert_eq!(n.lookup_cached(&ifc, off_link(k)), Some(PEER_MAC), "{k}");
            if k % 97 == 0 {
                assert_eq!(n.lookup_cached(&ifc, on_link), Some(on_link_mac));
            }
        }
        // The gateway moves: misses and hits both follow at once.
        assert!(n.learn(gw, [2, 0, 0, 0, 0, 0x77]));
        for k in (0..(3 * FAST_SLOTS as u32)).rev() {
            assert_eq!(
                n.lookup_cached(&ifc, off_link(k)),
                Some([2, 0, 0, 0, 0, 0x77]),
                "{k}"
            );
        }
        // Unknown next hop: nothing cached from before answers for it.
        let other_gw = Interface {
            gateway4: Some(Ipv4Addr::new(192, 0, 2, 253)),
            ..ifc.clone()
        };
        assert_eq!(
            n.lookup_cached(&other_gw, off_link(5 * FAST_SLOTS as u32)),
            None
        );
    }

    #[test]
    fn next_hops_and_resolution() {
        let ifc = Interface {
            gateway_mac: None,
            ..iface()
        };
        let mut n = Neighbours::new(4);
        let on_link: IpAddr = "192.0.2.9".parse().unwrap();
        let off_link: IpAddr = "198.51.100.7".parse().unwrap();
        let gw: IpAddr = "192.0.2.254".parse().unwrap();
        assert_eq!(n.resolve(&ifc, on_link, 0), Resolve::Request(on_link));
        assert_eq!(n.resolve(&ifc, on_link, 1), Resolve::Pending);
        assert_eq!(
            n.resolve(&ifc, on_link, RESOLVE_RETRY_NS + 1),
            Resolve::Request(on_link)
        );
        assert_eq!(n.resolve(&ifc, off_link, 0), Resolve::Request(gw));
        assert!(n.learn(gw, PEER_MAC));
        assert!(!n.learn(gw, PEER_MAC));
        assert_eq!(n.resolve(&ifc, off_link, 0), Resolve::Mac(PEER_MAC));
        assert_eq!(
            n.resolve(&ifc, "192.0.2.1".parse().unwrap(), 0),
            Resolve::Mac(OUR_MAC)
        );
        assert_eq!(
            n.resolve(&ifc, "2001:db9::1".parse().unwrap(), 0),
            Resolve::NoRoute
        );
        // The cache follows changes.
        assert_eq!(n.lookup_cached(&ifc, off_link), Some(PEER_MAC));
        assert_eq!(n.lookup_cached(&ifc, off_link), Some(PEER_MAC));
        assert!(n.learn(gw, [2, 0, 0, 0, 0, 0x77]));
        assert_eq!(n.lookup_cached(&ifc, off_link), Some([2, 0, 0, 0, 0, 0x77]));
        assert_eq!(n.lookup_cached(&ifc, on_link), None);
        // Bounded.
        for i in 0..100u8 {
            n.learn(IpAddr::from([10, 0, 0, i]), PEER_MAC);
        }
        assert!(n.len() <= 4);
        assert!(!n.learn(gw, BROADCAST_MAC));
        let fixed = Interface {
            gateway_mac: Some([2, 9, 9, 9, 9, 9]),
            ..iface()
        };
        assert_eq!(
            Neighbours::new(4).resolve(&fixed, off_link, 0),
            Resolve::Mac([2, 9, 9, 9, 9, 9])
        );
    }

    /// IPv4 headers, with the payload's sum given (the forwarding path) or summed here, are
    /// the bytes `build_udp_frame` builds, for every VLAN, address, length and DSCP shape.
    #[test]
    fn ipv4_headers_match_a_built_frame() {
        let ends = [
            ("192.0.2.1:30000", "198.51.100.7:4000"),
            ("10.255.255.254:65535", "10.0.0.1:1"),
            ("0.0.0.1:0", "255.255.255.255:65535"),
        ];
        for vlan in [None, Some(100), Some(4095)] {
            for (src, dst) in ends {
                let (src, dst): (SocketAddrV4, SocketAddrV4) =
                    (src.parse().unwrap(), dst.parse().unwrap());
                let (s, d) = (SocketAddr::V4(src), SocketAddr::V4(dst));
                for len in [0usize, 1, 12, 172, 1400] {
                    for dscp in [0u8, 46, 0xff] {
                        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                        let mut want = vec![0u8; 1600];
                        let n = build_udp_frame(
                            &mut want, OUR_MAC, PEER_MAC, vlan, s, d, dscp, &payload,
                        )
                        .unwrap();
                        want.truncate(n);
                        let hdr = n - len;
                        let mut summed = vec![0xeeu8; n];
                        summed[hdr..].copy_from_slice(&payload);
                        let mut given = summed.clone();
                        write_udp_headers(
                            &mut summed,
                            hdr,
                            OUR_MAC,
                            PEER_MAC,
                            vlan,
                            s,
                            d,
                            dscp,
                            None,
                        )
                        .unwrap();
                        assert_eq!(summed, want, "summed: {vlan:?} {src} {dst} {len} {dscp}");
                        write_ipv4_udp_headers(
                            &mut given[..hdr],
                            OUR_MAC,
                            PEER_MAC,
                            vlan,
                            src,
                            dst,
                            dscp,
                            len,
                            checksum_add(0, &payload),
                        )
                        .unwrap();
                        assert_eq!(given, want, "given: {vlan:?} {src} {dst} {len} {dscp}");
                    }
                }
            }
        }
        let (src, dst) = (
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:2".parse().unwrap(),
        );
        let mut head = [0u8; 46];
        assert!(
            write_ipv4_udp_headers(&mut head, OUR_MAC, PEER_MAC, None, src, dst, 0, 1, 0).is_err()
        );
        assert!(write_ipv4_udp_headers(
            &mut head[..42],
            OUR_MAC,
            PEER_MAC,
            None,
            src,
            dst,
            0,
            65_508,
            0
        )
        .is_err());
    }

    #[test]
    fn rewritten_headers_match_a_built_frame() {
        for (vlan, src, dst) in [
            (
                None,
                "192.0.2.1:30000".parse::<SocketAddr>().unwrap(),
                "198.51.100.7:4000".parse::<SocketAddr>().unwrap(),
            ),
            (
                Some(100),
                "[2001:db8::1]:30002".parse().unwrap(),
                "[2001:db8::9]:5000".parse().unwrap(),
            ),
        ] {
            let ifc = Interface { vlan, ..iface() };
            let payload = b"\x80\x00\x00\x01rtp payload bytes";
            let hdr = ifc.udp_header_len(dst.ip());
            let mut frame = vec![0xeeu8; hdr + payload.len()];
            frame[hdr..].copy_from_slice(payload);
            write_udp_headers(&mut frame, hdr, OUR_MAC, PEER_MAC, vlan, src, dst, 46, None)
                .unwrap();
            let mut want = vec![0u8; 256];
            let n =
                build_udp_frame(&mut want, OUR_MAC, PEER_MAC, vlan, src, dst, 46, payload).unwrap();
            assert_eq!(frame, want[..n]);
            let f = parse_udp_frame(&frame).unwrap();
            assert!(verify_udp_frame_checksums(&frame, &f));
            assert!(write_udp_headers(
                &mut frame[..3],
                hdr,
                OUR_MAC,
                PEER_MAC,
                vlan,
                src,
                dst,
                0,
                None
            )
            .is_err());
        }
    }

    #[test]
    fn adjusted_payload_sum_equals_the_sum_of_the_rewritten_payload() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
        // Sums are compared modulo 0xffff: 0 and 0xffff are the same one's-complement value.
        let same = |a: u32, b: u32| a % 0xffff == b % 0xffff;
        for round in 0..20_000 {
            let len = rng.gen_range(12..200);
            // Mostly 0xff bytes in half the rounds, so the folds carry at every step.
            let mut p: Vec<u8> = (0..len)
                .map(|_| {
                    if round % 2 == 0 && rng.gen_range(0..4) != 0 {
                        0xff
                    } else {
                        rng.gen()
                    }
                })
                .collect();
            let sum = checksum_add(0, &p);
            let old: [u8; 12] = p[..12].try_into().unwrap();
            // Seq, timestamp and SSRC rewritten, or (one round in four) nothing.
            if round % 4 != 0 {
                for b in &mut p[2..12] {
                    *b = if round % 3 == 0 { 0xff } else { rng.gen() };
                }
            }
            let new: [u8; 12] = p[..12].try_into().unwrap();
            let adjusted = adjust_sum(sum, &old, &new);
            let direct = checksum_add(0, &p);
            assert!(adjusted <= 0xffff, "folded to 16 bits: {adjusted:#x}");
            assert!(
                same(adjusted, direct),
                "round {round}: {adjusted:#x} against {direct:#x}"
            );
        }
        // All-ones words on both sides: the largest sums the fixed fold meets.
        let ones = [0xffu8; 12];
        assert!(same(adjust_sum(0xffff, &[0; 12], &ones), 0xffff));
        assert!(same(adjust_sum(0xffff, &ones, &[0; 12]), 0));
        // 0xffff_ffff + !0xfffe + 0xffff = 0x1_0000_ffff, which only the third fold step
        // brings to 16 bits (0x1_ffff, then 0x1_0000, then 1).
        let mut old = [0u8; 12];
        old[..2].copy_from_slice(&[0xff, 0xfe]);
        let mut new = [0u8; 12];
        new[..2].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(adjust_sum(0xffff_ffff, &old, &new), 1);
    }
}
