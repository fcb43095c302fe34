//! Property test of the whole per-packet pipeline: arbitrary and mutated datagrams, on known
//! and unknown ports, from expected and unexpected sources, never panic; every datagram is
//! either forwarded out of the other leg of its relay or dropped with a reason that is counted.
//!
//! `VOXEDGE_PROPTEST_CASES` sets the number of cases (default 2000); the closing note of the
//! foundation issue reports a run of 1,000,000.

use std::net::SocketAddr;

use proptest::prelude::*;
use voxedge_dataplane::command::MediaEvent;
use voxedge_dataplane::ids::{Component, PortHandle, RelayId, Side, StreamIdx};
use voxedge_dataplane::pipeline::{process, Verdict};
use voxedge_dataplane::stats::DropReason;
use voxedge_dataplane::table::{SourcePolicy, Stream, StreamTable};
use voxedge_dataplane::wire::rtp::emit_header;

fn cases() -> u32 {
    std::env::var("VOXEDGE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 1, 2, 3], port))
}

/// Ports 0,1 = leg A RTP/RTCP, 2 = leg B RTP with mux; remotes on ports 5000/5001/6000.
fn table(strict: bool, rewrite: bool) -> StreamTable {
    let mut t = StreamTable::default();
    let mk = |port: u32, side, comp, remote: u16| {
        let mut s = Stream::new(PortHandle(port), RelayId(1), side, comp, 0);
        s.remote = Some(addr(remote));
        s.policy = SourcePolicy {
            strict,
            handover: false,
        };
        s.rewrite = rewrite && comp == Component::Rtp;
        s.dtmf_pt = 101;
        s
    };
    let a = t.insert(mk(0, Side::A, Component::Rtp, 5000));
    let ac = t.insert(mk(1, Side::A, Component::Rtcp, 5001));
    // Leg B muxes RTCP: it has no RTCP stream, so RTCP for B leaves through B's RTP port.
    let b = t.insert(mk(2, Side::B, Component::Rtp, 6000));
    let link = |t: &mut StreamTable, i: StreamIdx, peer, rtcp_peer, sib| {
        let s = t.get_mut(i).expect("inserted");
        s.peer = peer;
        s.rtcp_peer = rtcp_peer;
        s.rtp_sibling = sib;
    };
    link(&mut t, a, b, b, a);
    link(&mut t, ac, b, b, a);
    link(&mut t, b, a, ac, b);
    t
}

fn valid_rtp(pt: u8, seq: u16) -> Vec<u8> {
    let mut v = vec![0u8; 12 + 20];
    emit_header(&mut v, pt, false, seq, u32::from(seq) * 160, 0x1234).expect("fits");
    if pt == 101 {
        v.truncate(12);
        v.extend_from_slice(&[3, 0x8a, 0, 160]);
    }
    v
}

fn valid_rtcp() -> Vec<u8> {
    let mut v = vec![0x80, 200, 0, 6];
    v.extend_from_slice(&0x1234u32.to_be_bytes());
    v.extend_from_slice(&[0u8; 20]);
    v
}

fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let base = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        (any::<u8>(), any::<u16>()).prop_map(|(pt, seq)| valid_rtp(pt & 0x7f, seq)),
        any::<u16>().prop_map(|seq| valid_rtp(101, seq)),
        Just(valid_rtcp()),
    ];
    (
        base,
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        any::<Option<usize>>(),
    )
        .prop_map(|(mut v, flips, cut)| {
            for (i, x) in flips {
                if !v.is_empty() {
                    let n = v.len();
                    v[i % n] ^= x;
                }
            }
            if let Some(c) = cut {
                let n = v.len() + 1;
                v.truncate(c % n);
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn every_datagram_is_forwarded_or_counted(
        packets in proptest::collection::vec((datagram(), 0u32..4, prop_oneof![Just(5000u16), Just(5001), Just(6000), any::<u16>()]), 1..8),
        strict in any::<bool>(),
        rewrite in any::<bool>(),
        opaque in any::<bool>(),
    ) {
        let mut t = table(strict, rewrite);
        // Opaque legs (T.38 UDPTL) carry anything on their RTP ports, untouched.
        for port in [0, 2] {
            let i = t.by_port(PortHandle(port)).expect("known");
            t.get_mut(i).expect("known").opaque = opaque;
        }
        let mut events: Vec<MediaEvent> = Vec::new();
        let mut dropped_known = 0u64;
        for (i, (mut buf, port, src_port)) in packets.into_iter().enumerate() {
            let len = buf.len();
            let before = buf.clone();
            let v = process(&mut t, PortHandle(port), addr(src_port), &mut buf, 1 + i as u64 * 20_000_000, &mut events);
            prop_assert_eq!(buf.len(), len, "the pipeline never resizes");
            match v {
                Verdict::Forward { out, port: out_port, dst } => {
                    prop_assert!(port < 3, "only known ports forward");
                    let o = t.get(out).expect("egress stream exists");
                    prop_assert_eq!(o.port, out_port);
                    prop_assert_eq!(Some(dst), o.remote);
                    prop_assert!(o.side != t.get(t.by_port(PortHandle(port)).expect("known")).expect("known").side);
                    if opaque && port != 1 {
                        prop_assert_eq!(&buf, &before, "opaque datagrams leave as they came");
                    }
                }
                Verdict::Drop(DropReason::UnknownStream) => prop_assert_eq!(port, 3),
                Verdict::Drop(_) => dropped_known += 1,
                Verdict::Mix(_) => prop_assert!(false, "no stream here is a conference member"),
            }
        }
        let counted: u64 = t.iter().map(|(_, s)| s.drops.total()).sum();
        prop_assert_eq!(counted, dropped_known, "every drop on a known stream is counted on it");
        for (_, s) in t.iter() {
            prop_assert!(s.packets_forwarded + s.drops.total() <= s.packets_in + s.drops.no_remote as u64);
        }
    }
}

/// A T.38 leg: UDPTL datagrams (which RTP demultiplexing would drop or misread) are forwarded
/// unchanged from the latched source, counted like RTP; other sources still obey strict-source.
#[test]
fn opaque_legs_forward_udptl_unchanged() {
    let mut t = table(true, true);
    let mut events: Vec<MediaEvent> = Vec::new();
    // UDPTL: sequence number, then an IFP packet; the first byte says "not RTP" (RFC 7983).
    let udptl = vec![0x00, 0x2a, 0x06, 0x7e, 0x00, 0x11, 0x22, 0x33];
    let mut buf = udptl.clone();
    let v = process(&mut t, PortHandle(0), addr(5000), &mut buf, 1, &mut events);
    assert_eq!(
        v,
        Verdict::Drop(DropReason::UnsupportedPayload),
        "an RTP leg drops it"
    );
    for port in [0, 2] {
        let i = t.by_port(PortHandle(port)).expect("known");
        t.get_mut(i).expect("known").opaque = true;
    }
    // An RTP-looking datagram is not rewritten either (rewrite is on for this table).
    let rtp = valid_rtp(0, 7);
    for (input, src, port, dst_port) in [
        (udptl.clone(), 5000, 0, 6000),
        (udptl.clone(), 6000, 2, 5000),
        (rtp.clone(), 5000, 0, 6000),
    ] {
        let mut buf = input.clone();
        let v = process(
            &mut t,
            PortHandle(port),
            addr(src),
            &mut buf,
            2,
            &mut events,
        );
        let Verdict::Forward { dst, .. } = v else {
            panic!("forwarded: {v:?}");
        };
        assert_eq!(dst, addr(dst_port));
        assert_eq!(buf, input);
    }
    let mut buf = udptl.clone();
    let v = process(&mut t, PortHandle(0), addr(5999), &mut buf, 3, &mut events);
    assert_eq!(v, Verdict::Drop(DropReason::SourceMismatch));
    let a = t
        .get(t.by_port(PortHandle(0)).expect("known"))
        .expect("known");
    assert_eq!((a.packets_in, a.packets_forwarded), (4, 2));
    assert_eq!(a.rx.received(), 0, "no RTP statistics for opaque media");
}
