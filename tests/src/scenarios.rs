//! Scenarios shared by the backend tests: the same relay behaviour on the in-memory backend,
//! kernel sockets and DPDK.

use std::time::Duration;

use voxedge_dataplane::command::MediaEvent;
use voxedge_dataplane::ids::Side;
use voxedge_dataplane::stats::DropReason;
use voxedge_dataplane::table::SourcePolicy;
use voxedge_dataplane::wire::WireError;
use voxedge_dataplane::{Dataplane, LegRequest, RelayRequest};

use crate::{parse_rtp, rtp, TestNet};

pub const WAIT: Duration = Duration::from_secs(2);

/// Drops of `reason` over all workers, once they reach `want` (counters are published every
/// few milliseconds by a worker that may be slow to get a core) or 10 s passed; then a short
/// settle, so a count beyond `want` shows too.
pub fn total_drops(dp: &Dataplane, reason: DropReason, want: u64) -> u64 {
    let sum = || dp.workers().map(|w| w.drops().get(reason)).sum::<u64>();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sum() < want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(30));
    sum()
}

pub fn relay_scenario(dp: &Dataplane, net: &mut dyn TestNet) {
    let (a1, a2, b, b_rtcp) = (
        net.endpoint(),
        net.endpoint(),
        net.endpoint(),
        net.endpoint(),
    );
    let req = RelayRequest {
        legs: [
            LegRequest {
                remote: Some(a1),
                ..Default::default()
            },
            LegRequest {
                remote: Some(b),
                rtcp_remote: Some(b_rtcp),
                ..Default::default()
            },
        ],
        policy: SourcePolicy::default(),
        rewrite: true,
        echo: false,
        worker: None,
    };
    let info = dp.create_relay(req).expect("relay created");
    let (a_local, b_local) = (info.legs[0].local, info.legs[1].local);

    // A sends 50 packets from a1 (SSRC 1), then moves to a2 with a new SSRC and sequence base.
    let mut received = Vec::new();
    for i in 0..100u32 {
        let (from, ssrc, seq, ts) = if i < 50 {
            (a1, 1, 1000 + i, 8000 + 160 * i)
        } else {
            (a2, 2, 50_000 + i, 777 + 160 * i)
        };
        net.send(from, a_local, &rtp(0, seq as u16, ts, ssrc, i));
        let (src, payload) = net
            .recv(b, WAIT)
            .unwrap_or_else(|| panic!("packet {i} relayed to b"));
        assert_eq!(src, b_local, "leaves from b's local address");
        received.push(parse_rtp(&payload));
    }
    for (i, (ssrc, seq, ts, tag)) in received.iter().enumerate() {
        assert_eq!(*tag, i as u32, "in order, payload intact");
        assert_eq!(*ssrc, 1, "one SSRC towards b across the source change");
        assert_eq!(*seq, 1000 + i as u16, "continuous sequence numbers");
        if i > 0 {
            let step = ts.wrapping_sub(received[i - 1].2);
            assert!(
                (160..=8000).contains(&step),
                "timestamp keeps moving forward at packet {i}: step {step}"
            );
        }
    }

    // B answers; packets go to a1 (the given remote; no handover configured).
    for i in 0..10u16 {
        net.send(
            b,
            b_local,
            &rtp(8, 300 + i, 160 * u32::from(i), 0xbbbb, 1000 + u32::from(i)),
        );
        let (src, payload) = net.recv(a1, WAIT).expect("relayed to a1");
        assert_eq!(src, a_local);
        assert_eq!(parse_rtp(&payload).0, 0xbbbb);
    }

    // RTCP on A's RTCP port leaves b's RTCP port towards b's RTCP endpoint, with the sender
    // SSRC rewritten like the RTP (2 → 1).
    let mut rr = vec![0x81, 201, 0, 7];
    rr.extend_from_slice(&2u32.to_be_bytes());
    rr.extend_from_slice(&[0u8; 24]);
    let a_rtcp_local = info.legs[0].rtcp_local.expect("rtcp port without mux");
    net.send(a2, a_rtcp_local, &rr);
    let (src, got) = net.recv(b_rtcp, WAIT).expect("RTCP relayed");
    assert_eq!(Some(src), info.legs[1].rtcp_local);
    assert_eq!(got[..4], rr[..4]);
    assert_eq!(got[4..8], 1u32.to_be_bytes(), "sender SSRC rewritten");

    // RFC 4733: digit 5 end packet, sent three times, reported once.
    for _ in 0..3 {
        let mut p = rtp(101, 2000, 99_000, 2, 0);
        p.truncate(12);
        p.extend_from_slice(&[5, 0x80 | 10, 0x03, 0x20]);
        net.send(a2, a_local, &p);
        net.recv(b, WAIT).expect("DTMF relayed");
    }
    let dtmf: Vec<_> = dp
        .events()
        .try_iter()
        .filter(|e| matches!(e, MediaEvent::Dtmf { .. }))
        .collect();
    assert_eq!(
        dtmf,
        vec![MediaEvent::Dtmf {
            relay: info.id,
            side: Side::A,
            digit: '5',
            duration: 800
        }]
    );

    // Malformed: not RTP at all, and RTP with a CSRC count overrunning the packet.
    net.send(a1, a_local, b"\x00\x01junk");
    net.send(a1, a_local, &[0x8f, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0]);
    assert_eq!(total_drops(dp, DropReason::UnsupportedPayload, 1), 1);
    assert_eq!(
        total_drops(dp, DropReason::RtpMalformed(WireError::Truncated), 1),
        1
    );

    let (_, snap) = dp.query_relay(info.id).expect("query");
    let [a, bl] = snap.legs;
    assert_eq!(a.rtp.counters.packets_in, 105);
    assert_eq!(a.rtp.counters.packets_forwarded, 103);
    assert_eq!(a.rtp.counters.drops.total(), 2);
    assert_eq!(bl.rtp.counters.packets_out, 103);
    assert_eq!(bl.rtp.counters.packets_in, 10);
    assert_eq!(a.rtcp.expect("a rtcp").counters.packets_in, 1);
    assert_eq!(a.rtp.ssrc, 2, "receive stats follow the current source");
    assert_eq!(a.rtp.cumulative_lost, 0);
    let (_, final_snap) = dp.delete_relay(info.id).expect("delete");
    assert_eq!(final_snap.legs[0].rtp.counters.packets_in, 105);
    assert!(dp.query_relay(info.id).is_err(), "gone after delete");
}

pub fn strict_source_scenario(dp: &Dataplane, net: &mut dyn TestNet) {
    let (a, intruder, b) = (net.endpoint(), net.endpoint(), net.endpoint());
    let req = RelayRequest {
        legs: [
            LegRequest::default(),
            LegRequest {
                remote: Some(b),
                rtcp_mux: true,
                ..Default::default()
            },
        ],
        policy: SourcePolicy {
            strict: true,
            handover: false,
        },
        rewrite: false,
        echo: false,
        worker: None,
    };
    let info = dp.create_relay(req).expect("relay");
    assert!(
        info.legs[1].rtcp_local.is_none(),
        "rtcp-mux leg has no RTCP port"
    );
    // First packet latches a; the intruder is then dropped.
    net.send(a, info.legs[0].local, &rtp(0, 1, 0, 9, 1));
    assert!(net.recv(b, WAIT).is_some());
    net.send(intruder, info.legs[0].local, &rtp(0, 2, 160, 9, 2));
    net.send(a, info.legs[0].local, &rtp(0, 3, 320, 9, 3));
    let (_, p) = net.recv(b, WAIT).expect("latched source still relayed");
    assert_eq!(parse_rtp(&p).3, 3, "intruder's packet was not relayed");
    // B's reply goes to the latched a.
    net.send(b, info.legs[1].local, &rtp(0, 1, 0, 7, 4));
    assert!(net.recv(a, WAIT).is_some());
    assert_eq!(total_drops(dp, DropReason::SourceMismatch, 1), 1);
    // Media timeout fires for a silent relay.
    std::thread::sleep(Duration::from_millis(600));
    let timeouts = dp
        .events()
        .try_iter()
        .filter(|e| matches!(e, MediaEvent::MediaTimeout { relay, .. } if *relay == info.id))
        .count();
    assert_eq!(timeouts, 2, "both legs time out once");
    dp.delete_relay(info.id).expect("delete");
}

/// An echo relay returns each leg's media to where it came from.
pub fn echo_scenario(dp: &Dataplane, net: &mut dyn TestNet) {
    let caller = net.endpoint();
    let info = dp
        .create_relay(RelayRequest {
            echo: true,
            ..Default::default()
        })
        .expect("echo relay");
    for seq in 0..5u16 {
        net.send(
            caller,
            info.legs[0].local,
            &rtp(0, seq, u32::from(seq) * 160, 42, 1),
        );
        let (from, p) = net.recv(caller, WAIT).expect("echoed");
        assert_eq!(from, info.legs[0].local);
        assert_eq!(parse_rtp(&p).1, seq);
    }
    let (_, snap) = dp.delete_relay(info.id).expect("delete");
    assert_eq!(snap.legs[0].rtp.counters.packets_out, 5);
}

/// Playback: frames leave leg A's port in order with continuous sequence numbers and
/// timestamps (the first marked), what leg B sends is held back meanwhile (counted as
/// superseded), a `PlayDone` event follows, and forwarding resumes; a second playback stopped
/// early sends nothing more and raises no event.
pub fn playback_scenario(dp: &Dataplane, net: &mut dyn TestNet) {
    use std::sync::Arc;
    use voxedge_dataplane::player::PlayMedia;

    let (a, b) = (net.endpoint(), net.endpoint());
    let info = dp
        .create_relay(RelayRequest::with_remotes(Some(a), Some(b)))
        .expect("relay");
    let frames = 6usize;
    let media = Arc::new(PlayMedia {
        payload_type: 8,
        frame_bytes: 160,
        samples_per_frame: 160,
        ptime_ns: 20_000_000,
        frames: (0..frames * 160).map(|i| (i / 160) as u8 + 1).collect(),
        kind: voxedge_dataplane::player::MediaKind::Audio,
    });
    dp.play(info.id, Side::A, media.clone(), 1, 77)
        .expect("play");
    let mut got = Vec::new();
    for i in 0..frames {
        if i == 1 {
            // B talks during playback: held back, not forwarded to A.
            net.send(b, info.legs[1].local, &rtp(0, 9, 9, 5, 0xdead));
        }
        let (from, p) = net.recv(a, WAIT).expect("played frame");
        assert_eq!(from, info.legs[0].local);
        let pkt = voxedge_dataplane::wire::rtp::RtpPacket::new_checked(&p[..]).expect("RTP");
        assert_eq!(pkt.payload_type(), 8);
        assert_eq!(pkt.payload().len(), 160);
        got.push((
            pkt.marker(),
            pkt.sequence_number(),
            pkt.timestamp(),
            pkt.ssrc(),
            pkt.payload()[0],
        ));
    }
    assert!(
        got[0].0 && got[1..].iter().all(|g| !g.0),
        "marker on the first only: {got:?}"
    );
    for w in got.windows(2) {
        assert_eq!(w[1].1, w[0].1.wrapping_add(1), "{got:?}");
        assert_eq!(w[1].2, w[0].2.wrapping_add(160), "{got:?}");
        assert_eq!(w[1].3, w[0].3, "one SSRC");
    }
    assert_eq!(
        got.iter().map(|g| g.4).collect::<Vec<_>>(),
        (1..=frames as u8).collect::<Vec<_>>(),
        "frames in order"
    );
    // Other events (media timeouts of the silent legs) may come first.
    let deadline = std::time::Instant::now() + WAIT;
    let done = std::iter::from_fn(|| {
        dp.events()
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .ok()
    })
    .find(|e| matches!(e, MediaEvent::PlayDone { .. }))
    .expect("PlayDone after the last frame");
    assert_eq!(
        done,
        MediaEvent::PlayDone {
            relay: info.id,
            side: Side::A,
            id: 77
        }
    );
    assert_eq!(total_drops(dp, DropReason::Superseded, 1), 1);
    // Forwarding resumed.
    net.send(b, info.legs[1].local, &rtp(0, 10, 10, 5, 0xbeef));
    let (_, p) = net.recv(a, WAIT).expect("forwarded after playback");
    assert_eq!(parse_rtp(&p).3, 0xbeef);

    // Until stopped: a stop ends it without an event; stopping again reports nothing playing.
    dp.play(info.id, Side::A, media, 0, 78).expect("play");
    net.recv(a, WAIT).expect("first frame");
    assert!(dp.stop_play(info.id, Side::A).expect("stop"));
    assert!(!dp.stop_play(info.id, Side::A).expect("stop again"));
    // Drain anything sent before the stop landed, then nothing more arrives.
    while net.recv(a, Duration::from_millis(100)).is_some() {}
    assert!(net.recv(a, Duration::from_millis(200)).is_none());
    assert!(
        !dp.events()
            .try_iter()
            .any(|e| matches!(e, MediaEvent::PlayDone { .. })),
        "no PlayDone for a stopped playback"
    );

    // Bad media is refused with a reason, an unknown relay is an error.
    let bad = Arc::new(PlayMedia {
        payload_type: 200,
        frame_bytes: 160,
        samples_per_frame: 160,
        ptime_ns: 20_000_000,
        frames: vec![0; 160],
        kind: voxedge_dataplane::player::MediaKind::Audio,
    });
    let e = dp.play(info.id, Side::A, bad, 1, 1).expect_err("bad media");
    assert!(e.to_string().contains("payload type"), "{e}");
    let (_, snap) = dp.delete_relay(info.id).expect("delete");
    assert!(dp
        .play(
            info.id,
            Side::A,
            Arc::new(PlayMedia {
                payload_type: 0,
                frame_bytes: 160,
                samples_per_frame: 160,
                ptime_ns: 20_000_000,
                kind: voxedge_dataplane::player::MediaKind::Audio,
                frames: vec![0; 160],
            }),
            1,
            1
        )
        .is_err());
    assert!(snap.legs[0].rtp.counters.packets_out >= frames as u64 + 2);
}

/// A leg switched to echo gets its own media back (from its own port); switched back, its
/// media reaches the other leg again.
pub fn echo_toggle_scenario(dp: &Dataplane, net: &mut dyn TestNet) {
    use voxedge_dataplane::command::LegUpdate;
    let (a, b) = (net.endpoint(), net.endpoint());
    let info = dp
        .create_relay(RelayRequest::with_remotes(Some(a), Some(b)))
        .expect("relay");
    let set = |echo: bool| {
        dp.update_leg(
            info.id,
            Side::A,
            LegUpdate {
                echo: Some(echo),
                ..Default::default()
            },
        )
        .expect("update");
    };
    set(true);
    net.send(a, info.legs[0].local, &rtp(0, 1, 160, 7, 0xec40));
    let (from, p) = net.recv(a, WAIT).expect("echoed to the sender");
    assert_eq!((from, parse_rtp(&p).3), (info.legs[0].local, 0xec40));
    set(false);
    net.send(a, info.legs[0].local, &rtp(0, 2, 320, 7, 0xb0b));
    let (from, p) = net.recv(b, WAIT).expect("joined again");
    assert_eq!((from, parse_rtp(&p).3), (info.legs[1].local, 0xb0b));
    dp.delete_relay(info.id).expect("delete");
}

/// Recording tap: what leg A receives is copied to the tap (telephone-events excepted) while
/// it is forwarded as usual; after the tap is removed nothing more is copied.
pub fn record_scenario(dp: &Dataplane, net: &mut dyn TestNet) {
    let (a, b) = (net.endpoint(), net.endpoint());
    let info = dp
        .create_relay(RelayRequest {
            legs: [
                LegRequest {
                    remote: Some(a),
                    ..Default::default()
                },
                LegRequest {
                    remote: Some(b),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .expect("relay created");
    let a_local = info.legs[0].local;
    let (tap, frames) = voxedge_dataplane::recorder::RecordTap::new(64);
    dp.record(info.id, Side::A, Some(tap.clone()))
        .expect("recording starts");
    for i in 0..10u32 {
        net.send(a, a_local, &rtp(0, i as u16, 160 * i, 7, i));
        net.recv(b, WAIT).expect("still forwarded while recording");
    }
    // A telephone-event is reported, not recorded.
    let mut ev = rtp(101, 10, 1600, 7, 0);
    ev.truncate(12);
    ev.extend_from_slice(&[1, 0x80 | 10, 0x03, 0x20]);
    net.send(a, a_local, &ev);
    net.recv(b, WAIT).expect("event forwarded");
    dp.record(info.id, Side::A, None).expect("recording stops");
    net.send(a, a_local, &rtp(0, 11, 1760, 7, 11));
    net.recv(b, WAIT).expect("forwarded");
    let got: Vec<_> = frames.try_iter().collect();
    assert_eq!(
        got.len(),
        10,
        "ten audio frames, no event, nothing after the stop"
    );
    for (i, f) in got.iter().enumerate() {
        assert_eq!((f.seq, f.ts, f.payload_type), (i as u16, 160 * i as u32, 0));
        assert_eq!(f.payload().len(), 160);
        assert_eq!(f.payload()[..4], (i as u32).to_be_bytes(), "payload intact");
    }
    assert_eq!(tap.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    dp.delete_relay(info.id).expect("deleted");
}

/// Conference: three relays' A legs join one conference; each sends its own tone, paced in
/// real time, and receives a mix holding the other two tones and not its own. Members talk
/// (events) and leave, and the conference ends with the last one.
pub fn conference_scenario(dp: &Dataplane, net: &mut dyn TestNet) {
    use voxedge_dataplane::command::{ConfOp, ConfReply};
    use voxedge_dataplane::g711::Law;
    use voxedge_dataplane::mixer::{ConfId, ConfOptions, MemberSpec};
    const FREQS: [f64; 3] = [450.0, 850.0, 1350.0];
    let conf = ConfId(77);
    let mut members = Vec::new();
    for _ in 0..3 {
        let e = net.endpoint();
        let info = dp
            .create_relay(RelayRequest {
                legs: [
                    LegRequest {
                        remote: Some(e),
                        ..Default::default()
                    },
                    LegRequest::default(),
                ],
                ..Default::default()
            })
            .expect("relay created");
        let r = dp.conference(
            conf,
            ConfOp::Join {
                member: MemberSpec::new(info.id, Side::A, Law::Mu),
                options: ConfOptions::default(),
            },
        );
        assert_eq!(r.expect("joined"), ConfReply::Done);
        members.push((e, info));
    }
    // A member's link belongs to the mixer: echo on it is refused.
    let echo = dp.update_leg(
        members[0].1.id,
        Side::A,
        voxedge_dataplane::command::LegUpdate {
            echo: Some(true),
            ..Default::default()
        },
    );
    assert!(echo.is_err(), "echo on a member: {echo:?}");
    let frame = |i: usize, k: u32| -> Vec<u8> {
        let mut p = rtp(0, k as u16, 160 * k, 100 + i as u32, 0);
        for (n, b) in p[12..].iter_mut().enumerate() {
            let t = f64::from(160 * k + n as u32) / 8000.0;
            *b =
                Law::Mu.encode((6000.0 * (2.0 * std::f64::consts::PI * FREQS[i] * t).sin()) as i16);
        }
        p
    };
    let mut heard: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let start = std::time::Instant::now();
    for k in 0..75u32 {
        for (i, (e, info)) in members.iter().enumerate() {
            net.send(*e, info.legs[0].local, &frame(i, k));
        }
        // Pace: frame k is sent at k × 20 ms; drain what arrived meanwhile.
        let due = start + Duration::from_millis(20 * u64::from(k + 1));
        for (i, (e, _)) in members.iter().enumerate() {
            loop {
                let left = due.saturating_duration_since(std::time::Instant::now());
                let wait = if i == 2 { left } else { Duration::ZERO };
                let Some((_, p)) = net.recv(*e, wait.max(Duration::from_micros(1))) else {
                    break;
                };
                heard[i].extend(p[12..].iter().map(|b| f64::from(Law::Mu.decode(*b))));
            }
        }
    }
    for (i, h) in heard.iter().enumerate() {
        assert!(
            h.len() >= 50 * 160,
            "member {i} received {} samples",
            h.len()
        );
        let tail = &h[h.len() - 40 * 160..];
        let own = goertzel(tail, FREQS[i]);
        for (j, f) in FREQS.iter().enumerate() {
            if j != i {
                let other = goertzel(tail, *f);
                assert!(
                    other > 300.0 * own.max(1e-3),
                    "member {i}: tone {j} {other:.1} vs own {own:.3}"
                );
            }
        }
    }
    let talking = dp
        .events()
        .try_iter()
        .filter(|e| matches!(e, MediaEvent::Talking { talking: true, conf: c, .. } if *c == conf))
        .count();
    assert_eq!(talking, 3, "each member's talking is reported");
    let roster = dp.conference(conf, ConfOp::Roster).expect("roster");
    let ConfReply::Roster(r) = roster else {
        panic!("roster: {roster:?}")
    };
    assert_eq!(r.len(), 3);
    for (n, (_, info)) in members.iter().enumerate() {
        let r = dp
            .conference(
                conf,
                ConfOp::Leave {
                    relay: info.id,
                    side: Side::A,
                },
            )
            .expect("left");
        assert_eq!(r == ConfReply::Ended, n == 2, "ends with the last member");
    }
    assert!(dp.conference_worker(conf).is_none(), "registry forgets it");
    for (_, info) in members {
        dp.delete_relay(info.id).expect("deleted");
    }
}

/// Power of `freq` (Hz, 8 kHz samples) in `x`, normalised by length (Goertzel).
pub fn goertzel(x: &[f64], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for v in x {
        let s0 = v + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2) / (x.len() as f64).powi(2)
}
