//! Property tests for `voxedge_dataplane::wire`.
//!
//! 1. No parser panics, on arbitrary bytes or on valid RTP packets, RTCP
//!    compounds and Ethernet frames damaged by bit flips, byte overwrites,
//!    insertions, removals and truncations.
//! 2. Generated valid packets are accepted and read back field by field.
//! 3. `build_udp_frame` → `parse_udp_frame` round-trips.
//!
//! The number of cases per property is `VOXEDGE_PROPTEST_CASES` (default
//! 2000), e.g. `VOXEDGE_PROPTEST_CASES=1000000 cargo test --release -p
//! voxedge-dataplane --test wire_props` for a long run.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use voxedge_dataplane::wire::dtmf::{self, TelephoneEvent};
use voxedge_dataplane::wire::ethernet::EthernetFrame;
use voxedge_dataplane::wire::frame::{
    build_udp_frame, parse_udp_frame, verify_udp_frame_checksums,
};
use voxedge_dataplane::wire::ipv4::Ipv4Packet;
use voxedge_dataplane::wire::ipv6::Ipv6Packet;
use voxedge_dataplane::wire::rtcp::{
    self, rewrite_sender_ssrc, sender_ssrc, validate_compound, RtcpCompound, RtcpPacket, RtcpView,
};
use voxedge_dataplane::wire::rtp::RtpPacket;
use voxedge_dataplane::wire::udp::UdpPacket;
use voxedge_dataplane::wire::{classify, PayloadKind, WireError};

fn cases() -> u32 {
    std::env::var("VOXEDGE_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2000)
}

// ---------------------------------------------------------------------------
// Exercisers: call every accessor of every view and check cheap invariants.
// ---------------------------------------------------------------------------

fn exercise_all(buf: &[u8]) {
    let _ = classify(buf);
    exercise_l2_l4(buf);
    exercise_frame(buf);
    exercise_rtp(buf);
    exercise_rtcp(buf);
    exercise_dtmf(buf);
}

fn exercise_l2_l4(buf: &[u8]) {
    if let Ok(eth) = EthernetFrame::new_checked(buf) {
        assert!(eth.header_len() <= buf.len());
        assert_eq!(eth.header_len() + eth.payload().len(), buf.len());
        let _ = (eth.dst(), eth.src(), eth.ethertype(), eth.vlan_id());
        let _ = (eth.inner_vlan_id(), eth.vlan_pcp(), eth.vlan_count());
    }
    if let Ok(ip) = Ipv4Packet::new_checked(buf) {
        assert!(ip.header_len() >= 20 && ip.header_len() <= ip.total_len());
        assert!(ip.total_len() <= buf.len());
        assert_eq!(ip.payload().len(), ip.total_len() - ip.header_len());
        let _ = (
            ip.src_addr(),
            ip.dst_addr(),
            ip.protocol(),
            ip.ttl(),
            ip.dscp(),
        );
        let _ = (ip.ecn(), ip.ident(), ip.is_fragment(), ip.frag_offset());
        let _ = (ip.verify_checksum(), ip.dont_frag(), ip.more_frags());
        let mut copy = buf.to_vec();
        let mut m = Ipv4Packet::new_checked(&mut copy[..]).unwrap();
        m.set_ttl(1);
        m.set_dscp(0xff);
        m.fill_checksum();
        assert!(m.verify_checksum());
    }
    if let Ok(ip) = Ipv6Packet::new_checked(buf) {
        assert!(ip.total_len() <= buf.len());
        assert_eq!(ip.payload().len(), ip.payload_len());
        let _ = (
            ip.src_addr(),
            ip.dst_addr(),
            ip.next_header(),
            ip.hop_limit(),
        );
        let _ = (ip.traffic_class(), ip.flow_label(), ip.dscp());
    }
    if let Ok(udp) = UdpPacket::new_checked(buf) {
        assert_eq!(udp.payload().len() + 8, usize::from(udp.len()));
        let _ = (udp.src_port(), udp.dst_port(), udp.checksum());
        let _ = udp.verify_checksum_v4(Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST);
        let _ = udp.verify_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
        let mut copy = buf.to_vec();
        let mut m = UdpPacket::new_checked(&mut copy[..]).unwrap();
        m.fill_checksum_v4(Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST);
        assert!(m.verify_checksum_v4(Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST));
        m.fill_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
        assert!(m.verify_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED));
    }
    // Unchecked views over garbage must not panic either.
    let ip = Ipv4Packet::new_unchecked(buf);
    let _ = (ip.payload(), ip.verify_checksum(), ip.src_addr());
    let ip = Ipv6Packet::new_unchecked(buf);
    let _ = (ip.payload(), ip.dst_addr());
    let udp = UdpPacket::new_unchecked(buf);
    let _ = (
        udp.payload(),
        udp.verify_checksum_v4(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST),
    );
    let eth = EthernetFrame::new_unchecked(buf);
    let _ = (eth.payload(), eth.ethertype(), eth.vlan_id());
}

fn exercise_frame(buf: &[u8]) {
    match parse_udp_frame(buf) {
        Ok(f) => {
            assert!(f.l3_offset >= 14);
            assert!(f.l4_offset > f.l3_offset);
            assert_eq!(f.l4_offset + 8, f.payload_offset);
            assert!(f.payload_offset + f.payload_len <= buf.len());
            assert_eq!(f.payload(buf).len(), f.payload_len);
            assert_eq!(f.src.is_ipv4(), f.dst.is_ipv4());
            assert_eq!(f.ipv4_dscp.is_some(), f.src.is_ipv4());
            let _ = verify_udp_frame_checksums(buf, &f);
            let payload = f.payload(buf);
            let _ = classify(payload);
            exercise_rtp(payload);
            exercise_rtcp(payload);
        }
        Err(e) => assert!(WireError::ALL.contains(&e)),
    }
}

fn exercise_rtp(buf: &[u8]) {
    if let Ok(p) = RtpPacket::new_checked(buf) {
        assert_eq!(p.version(), 2);
        assert_eq!(
            p.header_len() + p.padding_len() + p.payload().len(),
            buf.len()
        );
        let _ = (p.padding(), p.extension(), p.marker(), p.payload_type());
        let _ = (p.sequence_number(), p.timestamp(), p.ssrc());
        for i in 0..16 {
            assert_eq!(p.csrc(i).is_some(), i < usize::from(p.csrc_count()));
        }
        assert_eq!(p.csrcs().count(), usize::from(p.csrc_count()));
        assert_eq!(p.extension_profile().is_some(), p.extension());
        if let Some(d) = p.extension_data() {
            assert_eq!(d.len() % 4, 0);
        }
        if p.padding() {
            assert!(p.padding_len() >= 1);
        }
        let payload_len = p.payload().len();
        assert_eq!(p.into_payload().len(), payload_len);

        let mut copy = buf.to_vec();
        let mut m = RtpPacket::new_checked(&mut copy[..]).unwrap();
        m.set_marker(true);
        m.set_payload_type(0xff);
        m.set_sequence_number(1);
        m.set_timestamp(2);
        m.set_ssrc(3);
        assert!(m.marker());
        assert_eq!(m.payload_type(), 0x7f);
        assert_eq!(m.payload_mut().len(), payload_len);
        // Setters do not change the structure.
        assert!(RtpPacket::new_checked(&copy[..]).is_ok());
    }
    let p = RtpPacket::new_unchecked(buf);
    let _ = (p.payload(), p.header_len(), p.csrc(15), p.extension_data());
}

fn touch_rtcp_packet(p: &RtcpPacket<'_>) {
    assert_eq!(p.version(), 2);
    assert!(p.len_bytes() >= 4 && p.len_bytes() & 3 == 0);
    assert_eq!(p.as_bytes().len(), p.len_bytes());
    assert!(p.body().len() + 4 + p.padding_len() == p.len_bytes());
    let _ = (
        p.count(),
        p.packet_type(),
        p.length_field(),
        p.sender_ssrc(),
    );
    match p.view() {
        RtcpView::SenderReport(sr) => {
            let _ = (sr.ssrc(), sr.ntp_timestamp(), sr.rtp_timestamp());
            let _ = (sr.packet_count(), sr.octet_count(), sr.profile_extension());
            assert_eq!(sr.report_blocks().count(), usize::from(sr.report_count()));
            for rb in sr.report_blocks() {
                touch_block(&rb);
            }
        }
        RtcpView::ReceiverReport(rr) => {
            let _ = (rr.ssrc(), rr.profile_extension());
            assert_eq!(rr.report_blocks().count(), usize::from(rr.report_count()));
            for rb in rr.report_blocks() {
                touch_block(&rb);
            }
        }
        RtcpView::Sdes(sdes) => {
            assert_eq!(sdes.chunks().count(), usize::from(sdes.chunk_count()));
            for chunk in sdes.chunks() {
                let _ = chunk.ssrc();
                for item in chunk.items() {
                    assert_ne!(item.kind, rtcp::SDES_END);
                    let _ = item.value.len();
                }
                let _ = chunk.item(rtcp::SDES_CNAME);
            }
        }
        RtcpView::Bye(bye) => {
            assert_eq!(bye.ssrcs().count(), usize::from(bye.ssrc_count()));
            let _ = (bye.reason(), bye.reason_str(), bye.ssrc(31));
        }
        RtcpView::App(app) => {
            let _ = (app.subtype(), app.ssrc(), app.name(), app.data());
        }
        RtcpView::Feedback(fb) => {
            let _ = (fb.fmt(), fb.sender_ssrc(), fb.media_ssrc(), fb.fci());
        }
        RtcpView::Other(o) => {
            let _ = o.body();
        }
    }
}

fn touch_block(rb: &rtcp::ReportBlock<'_>) {
    let lost = rb.cumulative_lost();
    assert!((-(1 << 23)..(1 << 23)).contains(&lost));
    let _ = (rb.ssrc(), rb.fraction_lost(), rb.highest_seq(), rb.jitter());
    let _ = (rb.lsr(), rb.dlsr());
}

fn exercise_rtcp(buf: &[u8]) {
    let mut oks = 0usize;
    let mut consumed = 0usize;
    let mut steps = 0usize;
    let mut failed = false;
    for item in RtcpCompound::new(buf) {
        steps += 1;
        assert!(steps <= buf.len() / 4 + 1, "iterator did not terminate");
        assert!(!failed, "item after an error");
        match item {
            Ok(p) => {
                oks += 1;
                consumed += p.len_bytes();
                touch_rtcp_packet(&p);
            }
            Err(_) => failed = true,
        }
    }
    assert!(consumed <= buf.len());
    let validity = validate_compound(buf);
    if let Ok(n) = validity {
        assert_eq!(n, oks);
        assert_eq!(consumed, buf.len());
        assert!(!failed);
    }
    let first = sender_ssrc(buf);
    let from = first.unwrap_or(0);
    let mut copy = buf.to_vec();
    let rewritten = rewrite_sender_ssrc(&mut copy, from, !from);
    assert!(rewritten <= buf.len() / 4);
    // Rewriting SSRCs never changes the packet structure.
    assert_eq!(validate_compound(&copy), validity);
    assert_eq!(copy.len(), buf.len());
    if first.is_some() && rewritten > 0 {
        // The first packet's sender field is an SR/RR/SDES/BYE SSRC or one of
        // the packet types that are not rewritten.
        let now = sender_ssrc(&copy);
        assert!(now == Some(!from) || now == Some(from));
    }
}

fn exercise_dtmf(buf: &[u8]) {
    match TelephoneEvent::new_checked(buf) {
        Ok(ev) => {
            assert!(ev.volume() < 64);
            let _ = (ev.end(), ev.reserved(), ev.duration());
            assert_eq!(dtmf::digit_char(ev.event()).is_some(), ev.event() < 16);
        }
        Err(e) => {
            assert_eq!(e, WireError::Truncated);
            assert!(buf.len() < 4);
        }
    }
}

// ---------------------------------------------------------------------------
// Generators of valid packets.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct RtpSpec {
    pt: u8,
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
    csrcs: Vec<u32>,
    ext: Option<(u16, Vec<u8>)>,
    payload: Vec<u8>,
    pad: u8,
}

impl RtpSpec {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        let mut b0 = 0x80 | self.csrcs.len() as u8;
        if self.pad > 0 {
            b0 |= 0x20;
        }
        if self.ext.is_some() {
            b0 |= 0x10;
        }
        v.push(b0);
        v.push((u8::from(self.marker) << 7) | self.pt);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.ts.to_be_bytes());
        v.extend_from_slice(&self.ssrc.to_be_bytes());
        for c in &self.csrcs {
            v.extend_from_slice(&c.to_be_bytes());
        }
        if let Some((profile, data)) = &self.ext {
            v.extend_from_slice(&profile.to_be_bytes());
            v.extend_from_slice(&((data.len() / 4) as u16).to_be_bytes());
            v.extend_from_slice(data);
        }
        v.extend_from_slice(&self.payload);
        if self.pad > 0 {
            v.resize(v.len() + usize::from(self.pad) - 1, 0);
            v.push(self.pad);
        }
        v
    }
}

fn rtp_spec() -> impl Strategy<Value = RtpSpec> {
    (
        (
            0u8..128,
            any::<bool>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
        ),
        vec(any::<u32>(), 0..=15),
        option::of((any::<u16>(), vec(any::<[u8; 4]>(), 0..6))),
        vec(any::<u8>(), 0..300),
        0u8..=32,
    )
        .prop_map(
            |((pt, marker, seq, ts, ssrc), csrcs, ext, payload, pad)| RtpSpec {
                pt,
                marker,
                seq,
                ts,
                ssrc,
                csrcs,
                ext: ext.map(|(p, words)| (p, words.concat())),
                payload,
                pad,
            },
        )
}

/// An SDES chunk: SSRC and (item type, value) pairs.
type SdesChunkSpec = (u32, Vec<(u8, Vec<u8>)>);

#[derive(Debug, Clone)]
enum RtcpSpec {
    Sr {
        ssrc: u32,
        info: [u8; 20],
        blocks: Vec<[u8; 24]>,
    },
    Rr {
        ssrc: u32,
        blocks: Vec<[u8; 24]>,
    },
    Sdes {
        chunks: Vec<SdesChunkSpec>,
    },
    Bye {
        ssrcs: Vec<u32>,
        reason: Option<Vec<u8>>,
    },
    App {
        subtype: u8,
        ssrc: u32,
        name: [u8; 4],
        data: Vec<u8>,
    },
    Fb {
        pt: u8,
        fmt: u8,
        sender: u32,
        media: u32,
        fci: Vec<u8>,
    },
}

fn pad4(v: &mut Vec<u8>) {
    while v.len() & 3 != 0 {
        v.push(0);
    }
}

impl RtcpSpec {
    fn encode(&self, pad: u8, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        let (count, pt) = match self {
            RtcpSpec::Sr { ssrc, info, blocks } => {
                body.extend_from_slice(&ssrc.to_be_bytes());
                body.extend_from_slice(info);
                blocks.iter().for_each(|b| body.extend_from_slice(b));
                (blocks.len(), rtcp::PT_SR)
            }
            RtcpSpec::Rr { ssrc, blocks } => {
                body.extend_from_slice(&ssrc.to_be_bytes());
                blocks.iter().for_each(|b| body.extend_from_slice(b));
                (blocks.len(), rtcp::PT_RR)
            }
            RtcpSpec::Sdes { chunks } => {
                for (ssrc, items) in chunks {
                    body.extend_from_slice(&ssrc.to_be_bytes());
                    for (kind, value) in items {
                        body.push(*kind);
                        body.push(value.len() as u8);
                        body.extend_from_slice(value);
                    }
                    body.push(0);
                    pad4(&mut body);
                }
                (chunks.len(), rtcp::PT_SDES)
            }
            RtcpSpec::Bye { ssrcs, reason } => {
                ssrcs
                    .iter()
                    .for_each(|s| body.extend_from_slice(&s.to_be_bytes()));
                if let Some(r) = reason {
                    body.push(r.len() as u8);
                    body.extend_from_slice(r);
                    pad4(&mut body);
                }
                (ssrcs.len(), rtcp::PT_BYE)
            }
            RtcpSpec::App {
                subtype,
                ssrc,
                name,
                data,
            } => {
                body.extend_from_slice(&ssrc.to_be_bytes());
                body.extend_from_slice(name);
                body.extend_from_slice(data);
                (usize::from(*subtype), rtcp::PT_APP)
            }
            RtcpSpec::Fb {
                pt,
                fmt,
                sender,
                media,
                fci,
            } => {
                body.extend_from_slice(&sender.to_be_bytes());
                body.extend_from_slice(&media.to_be_bytes());
                body.extend_from_slice(fci);
                (usize::from(*fmt), *pt)
            }
        };
        let total = 4 + body.len() + usize::from(pad);
        assert_eq!(total % 4, 0);
        let mut b0 = 0x80 | count as u8;
        if pad > 0 {
            b0 |= 0x20;
        }
        out.push(b0);
        out.push(pt);
        out.extend_from_slice(&((total / 4 - 1) as u16).to_be_bytes());
        out.extend_from_slice(&body);
        if pad > 0 {
            out.resize(out.len() + usize::from(pad) - 1, 0);
            out.push(pad);
        }
    }
}

fn words(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<[u8; 4]>(), 0..max).prop_map(|w| w.concat())
}

fn report_spec() -> impl Strategy<Value = RtcpSpec> {
    prop_oneof![
        (
            any::<u32>(),
            any::<[u8; 20]>(),
            vec(any::<[u8; 24]>(), 0..4)
        )
            .prop_map(|(ssrc, info, blocks)| RtcpSpec::Sr { ssrc, info, blocks }),
        (any::<u32>(), vec(any::<[u8; 24]>(), 0..4))
            .prop_map(|(ssrc, blocks)| RtcpSpec::Rr { ssrc, blocks }),
    ]
}

fn rtcp_spec() -> impl Strategy<Value = RtcpSpec> {
    let item = (1u8..=8, vec(any::<u8>(), 0..24));
    let chunk = (any::<u32>(), vec(item, 0..4));
    prop_oneof![
        report_spec(),
        vec(chunk, 0..4).prop_map(|chunks| RtcpSpec::Sdes { chunks }),
        (vec(any::<u32>(), 0..4), option::of(vec(any::<u8>(), 0..40)))
            .prop_map(|(ssrcs, reason)| RtcpSpec::Bye { ssrcs, reason }),
        (0u8..32, any::<u32>(), any::<[u8; 4]>(), words(4)).prop_map(
            |(subtype, ssrc, name, data)| RtcpSpec::App {
                subtype,
                ssrc,
                name,
                data
            }
        ),
        (
            prop_oneof![Just(rtcp::PT_RTPFB), Just(rtcp::PT_PSFB)],
            0u8..32,
            any::<u32>(),
            any::<u32>(),
            words(4)
        )
            .prop_map(|(pt, fmt, sender, media, fci)| RtcpSpec::Fb {
                pt,
                fmt,
                sender,
                media,
                fci
            }),
    ]
}

/// A compound: an SR/RR, up to 5 more packets, and optional padding on the
/// last one. Returns the bytes and the packet count.
fn rtcp_compound() -> impl Strategy<Value = (Vec<u8>, usize, u32)> {
    (
        report_spec(),
        vec(rtcp_spec(), 0..5),
        prop_oneof![Just(0u8), Just(4), Just(8), Just(12)],
    )
        .prop_map(|(first, rest, pad)| {
            let ssrc = match &first {
                RtcpSpec::Sr { ssrc, .. } | RtcpSpec::Rr { ssrc, .. } => *ssrc,
                _ => 0,
            };
            let mut out = Vec::new();
            let all: Vec<&RtcpSpec> = std::iter::once(&first).chain(rest.iter()).collect();
            for (i, spec) in all.iter().enumerate() {
                let p = if i + 1 == all.len() { pad } else { 0 };
                spec.encode(p, &mut out);
            }
            (out, all.len(), ssrc)
        })
}

fn socket_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(|(a, pa, b, pb)| {
                (
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), pa),
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(b)), pb),
                )
            }),
        (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>()
        )
            .prop_map(|(a, pa, b, pb)| {
                (
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), pa),
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), pb),
                )
            }),
    ]
}

#[derive(Debug, Clone)]
struct FrameSpec {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    qinq: Option<u16>,
    addrs: (SocketAddr, SocketAddr),
    dscp: u8,
    payload: Vec<u8>,
}

impl FrameSpec {
    fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 9000];
        let (src, dst) = self.addrs;
        let n = build_udp_frame(
            &mut buf,
            self.src_mac,
            self.dst_mac,
            self.vlan,
            src,
            dst,
            self.dscp,
            &self.payload,
        )
        .unwrap();
        buf.truncate(n);
        if let Some(tci) = self.qinq {
            let tag = [0x88, 0xa8, (tci >> 8) as u8, tci as u8];
            buf.splice(12..12, tag);
        }
        buf
    }
}

fn frame_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..1200),
        rtp_spec().prop_map(|s| s.encode()),
        rtcp_compound().prop_map(|(b, _, _)| b),
        (any::<u8>(), any::<bool>(), any::<u8>(), any::<u16>()).prop_map(|(e, end, vol, d)| {
            let mut b = [0u8; 4];
            dtmf::emit(&mut b, e, end, vol, d).unwrap();
            b.to_vec()
        }),
    ]
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        any::<[u8; 6]>(),
        any::<[u8; 6]>(),
        option::of(0u16..4096),
        option::of(any::<u16>()),
        socket_pair(),
        0u8..64,
        frame_payload(),
    )
        .prop_map(
            |(src_mac, dst_mac, vlan, qinq, addrs, dscp, payload)| FrameSpec {
                src_mac,
                dst_mac,
                vlan,
                qinq,
                addrs,
                dscp,
                payload,
            },
        )
}

// ---------------------------------------------------------------------------
// Mutations.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Overwrite(usize, u8),
    SetU16(usize, u16),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting_u16 = prop_oneof![
        proptest::sample::select(vec![0u16, 1, 2, 3, 4, 7, 8, 0x7fff, 0x8000, 0xffff]),
        any::<u16>(),
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
        (any::<usize>(), interesting_u16).prop_map(|(i, v)| Mutation::SetU16(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..6)
}

fn apply(buf: &mut Vec<u8>, muts: &[Mutation]) {
    for m in muts {
        let len = buf.len();
        match *m {
            Mutation::Flip(i, bit) if len > 0 => buf[i % len] ^= 1 << bit,
            Mutation::Overwrite(i, v) if len > 0 => buf[i % len] = v,
            Mutation::SetU16(i, v) if len >= 2 => {
                let at = i % (len - 1);
                buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            Mutation::Truncate(n) => buf.truncate(n % (len + 1)),
            Mutation::Insert(i, v) => buf.insert(i % (len + 1), v),
            Mutation::Remove(i) if len > 0 => {
                buf.remove(i % len);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(buf in vec(any::<u8>(), 0..1600)) {
        exercise_all(&buf);
    }

    #[test]
    fn arbitrary_bytes_with_plausible_first_bytes(
        first in prop_oneof![Just(0x80u8), Just(0x81), Just(0x90), Just(0xa0), Just(0xbf)],
        second in any::<u8>(),
        rest in vec(any::<u8>(), 0..400),
    ) {
        let mut buf = vec![first, second];
        buf.extend_from_slice(&rest);
        exercise_all(&buf);
    }

    #[test]
    fn valid_rtp_parses(spec in rtp_spec()) {
        let buf = spec.encode();
        let p = RtpPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(p.payload_type(), spec.pt);
        prop_assert_eq!(p.marker(), spec.marker);
        prop_assert_eq!(p.sequence_number(), spec.seq);
        prop_assert_eq!(p.timestamp(), spec.ts);
        prop_assert_eq!(p.ssrc(), spec.ssrc);
        prop_assert_eq!(p.csrcs().collect::<Vec<_>>(), spec.csrcs.clone());
        prop_assert_eq!(p.extension_profile(), spec.ext.as_ref().map(|e| e.0));
        prop_assert_eq!(p.extension_data(), spec.ext.as_ref().map(|e| &e.1[..]));
        prop_assert_eq!(p.padding_len(), usize::from(spec.pad));
        prop_assert_eq!(p.payload(), &spec.payload[..]);
        // RFC 5761 §4: marker + PT 64..=95 is indistinguishable from RTCP.
        let expected = if spec.marker && (64..=95).contains(&spec.pt) {
            PayloadKind::Rtcp
        } else {
            PayloadKind::Rtp
        };
        prop_assert_eq!(classify(&buf), expected);
        exercise_all(&buf);
    }

    #[test]
    fn mutated_rtp_never_panics(spec in rtp_spec(), muts in mutations()) {
        let mut buf = spec.encode();
        apply(&mut buf, &muts);
        exercise_all(&buf);
    }

    #[test]
    fn valid_rtcp_compound_parses((buf, count, ssrc) in rtcp_compound()) {
        prop_assert_eq!(validate_compound(&buf), Ok(count));
        prop_assert_eq!(sender_ssrc(&buf), Some(ssrc));
        prop_assert_eq!(classify(&buf), PayloadKind::Rtcp);
        prop_assert_eq!(RtcpCompound::new(&buf).filter(|p| p.is_ok()).count(), count);
        let mut copy = buf.clone();
        let n = rewrite_sender_ssrc(&mut copy, ssrc, ssrc ^ 0x5a5a_5a5a);
        prop_assert!(n >= 1);
        prop_assert_eq!(sender_ssrc(&copy), Some(ssrc ^ 0x5a5a_5a5a));
        prop_assert_eq!(validate_compound(&copy), Ok(count));
        exercise_all(&buf);
    }

    #[test]
    fn mutated_rtcp_never_panics((buf, _, _) in rtcp_compound(), muts in mutations()) {
        let mut buf = buf;
        apply(&mut buf, &muts);
        exercise_all(&buf);
    }

    #[test]
    fn mutated_frames_never_panic(spec in frame_spec(), muts in mutations()) {
        let mut buf = spec.encode();
        apply(&mut buf, &muts);
        exercise_all(&buf);
    }

    #[test]
    fn build_parse_round_trip(spec in frame_spec()) {
        let buf = spec.encode();
        let f = parse_udp_frame(&buf).unwrap();
        let (src, dst) = spec.addrs;
        prop_assert_eq!(f.src, src);
        prop_assert_eq!(f.dst, dst);
        prop_assert_eq!(f.payload(&buf), &spec.payload[..]);
        prop_assert_eq!(f.payload_offset + f.payload_len, buf.len());
        let outer_vlan = match spec.qinq {
            Some(tci) => Some(tci & 0x0fff),
            None => spec.vlan,
        };
        prop_assert_eq!(f.vlan, outer_vlan);
        if src.is_ipv4() {
            prop_assert_eq!(f.ipv4_dscp, Some(spec.dscp));
        } else {
            prop_assert_eq!(f.ipv4_dscp, None);
        }
        prop_assert!(verify_udp_frame_checksums(&buf, &f));
        let eth = EthernetFrame::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(eth.src(), spec.src_mac);
        prop_assert_eq!(eth.dst(), spec.dst_mac);
        exercise_all(&buf);
    }

    #[test]
    fn build_rejects_mixed_families(
        (a, _) in socket_pair(),
        (b, _) in socket_pair(),
        payload in vec(any::<u8>(), 0..64),
    ) {
        let mut buf = [0u8; 256];
        let r = build_udp_frame(&mut buf, [0; 6], [0; 6], None, a, b, 0, &payload);
        if a.is_ipv4() == b.is_ipv4() {
            prop_assert!(r.is_ok());
        } else {
            prop_assert_eq!(r, Err(WireError::BadVersion));
        }
    }
}
