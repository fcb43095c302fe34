//! Transactions on virtual time: scripted exchanges for every state machine, and a seeded lossy,
//! reordering, duplicating network between a client and a server layer.

use std::net::SocketAddr;
use std::time::Duration;

use voxedge_sip_core::transaction::{
    build_response, Output, Peer, Timers, Transactions, TxEvent, TxId,
};
use voxedge_sip_core::{Limits, SipMessage};

const MS: Duration = Duration::from_millis(1);

fn peer(port: u16, reliable: bool) -> Peer {
    Peer {
        addr: SocketAddr::from(([10, 0, 0, 1], port)),
        reliable,
    }
}

fn request(method: &str, branch: &str, cseq: u32) -> SipMessage {
    let text = format!(
        "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch={branch}\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=ft\r\nTo: <sip:bob@example.com>\r\n\
Call-ID: call-{branch}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    );
    SipMessage::parse(text.as_bytes(), &Limits::default()).expect("valid request")
}

fn parse(data: &[u8]) -> SipMessage {
    SipMessage::parse(data, &Limits::default()).expect("layer output parses")
}

/// Drains outputs: (transmitted messages, events).
fn drain(t: &mut Transactions) -> (Vec<SipMessage>, Vec<TxEvent>) {
    let (mut tx, mut ev) = (Vec::new(), Vec::new());
    while let Some(o) = t.poll_output() {
        match o {
            Output::Transmit(x) => tx.push(parse(&x.data)),
            Output::Event(e) => ev.push(e),
        }
    }
    (tx, ev)
}

/// Runs timers up to `until`, collecting the times of transmissions.
fn run_until(
    t: &mut Transactions,
    from: Duration,
    until: Duration,
) -> (Vec<Duration>, Vec<TxEvent>) {
    let (mut sends, mut events) = (Vec::new(), Vec::new());
    let mut now = from;
    while let Some(d) = t.next_deadline() {
        if d > until {
            break;
        }
        now = now.max(d);
        t.handle_timeouts(now);
        let (tx, ev) = drain(t);
        sends.extend(tx.iter().map(|_| now));
        events.extend(ev);
    }
    (sends, events)
}

fn secs(v: &[Duration]) -> Vec<f64> {
    v.iter().map(|d| d.as_secs_f64()).collect()
}

#[test]
fn non_invite_client_retransmits_e_up_to_t2_then_times_out_with_f() {
    let mut t = Transactions::new(Timers::default());
    let id = t
        .send_request(
            request("OPTIONS", "z9hG4bKo1", 1),
            peer(5060, false),
            Duration::ZERO,
        )
        .expect("tx");
    assert_eq!(drain(&mut t).0.len(), 1);
    let (sends, events) = run_until(&mut t, Duration::ZERO, Duration::from_secs(40));
    assert_eq!(
        secs(&sends),
        vec![0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    );
    assert!(matches!(events[0], TxEvent::Timeout { tx } if tx == id));
    assert!(matches!(events[1], TxEvent::Terminated { tx } if tx == id));
    assert!(t.is_empty());
}

#[test]
fn invite_client_doubles_a_and_times_out_with_b() {
    let mut t = Transactions::new(Timers::default());
    t.send_request(
        request("INVITE", "z9hG4bKi1", 1),
        peer(5060, false),
        Duration::ZERO,
    )
    .expect("tx");
    drain(&mut t);
    let (sends, events) = run_until(&mut t, Duration::ZERO, Duration::from_secs(40));
    assert_eq!(secs(&sends), vec![0.5, 1.5, 3.5, 7.5, 15.5, 31.5]);
    assert!(matches!(events[0], TxEvent::Timeout { .. }));
}

#[test]
fn a_ringing_invite_outlives_timer_b_and_ends_after_the_proceeding_timeout() {
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKring", 1);
    t.send_request(inv.clone(), peer(5060, false), Duration::ZERO)
        .expect("tx");
    drain(&mut t);
    let ringing = parse(&build_response(&inv, 180, "Ringing", Some("tt")).to_bytes());
    t.receive(ringing, peer(5060, false), 100 * MS)
        .expect("180");
    drain(&mut t);
    // Past 64·T1 (32 s): still waiting, nothing sent, nothing reported.
    let (sends, events) = run_until(&mut t, 100 * MS, Duration::from_secs(120));
    assert!(sends.is_empty() && events.is_empty(), "{events:?}");
    // The proceeding timeout (from the last provisional) ends it.
    let (_, events) = run_until(&mut t, Duration::from_secs(120), Duration::from_secs(661));
    assert!(
        matches!(events[..], [TxEvent::Timeout { .. }, ..]),
        "{events:?}"
    );
}

#[test]
fn invite_client_acks_a_failure_and_absorbs_its_retransmissions() {
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKi2", 7);
    let id = t
        .send_request(inv.clone(), peer(5060, false), Duration::ZERO)
        .expect("tx");
    drain(&mut t);
    let ringing = parse(&build_response(&inv, 180, "Ringing", Some("tt")).to_bytes());
    t.receive(ringing, peer(5060, false), 100 * MS)
        .expect("180");
    let (sent, ev) = drain(&mut t);
    assert!(sent.is_empty());
    assert!(
        matches!(&ev[0], TxEvent::Response { tx, msg } if *tx == id && msg.status() == Some(180))
    );
    // No more INVITE retransmissions after a provisional.
    let (sends, _) = run_until(&mut t, 100 * MS, Duration::from_secs(5));
    assert!(sends.is_empty());
    let busy = parse(&build_response(&inv, 486, "Busy Here", Some("tt")).to_bytes());
    t.receive(busy.clone(), peer(5060, false), Duration::from_secs(6))
        .expect("486");
    let (sent, ev) = drain(&mut t);
    assert_eq!(sent.len(), 1, "ACK");
    let ack = &sent[0];
    assert_eq!(
        ack.method().map(ToString::to_string).as_deref(),
        Some("ACK")
    );
    assert_eq!(ack.header("CSeq"), Some("7 ACK"));
    assert!(ack.header("To").expect("to").contains("tag=tt"));
    assert!(ack.header("Via").expect("via").contains("z9hG4bKi2"));
    assert!(matches!(&ev[0], TxEvent::Response { msg, .. } if msg.status() == Some(486)));
    // The retransmitted 486 is ACKed again, not reported.
    t.receive(busy, peer(5060, false), Duration::from_secs(7))
        .expect("486 again");
    let (sent, ev) = drain(&mut t);
    assert_eq!((sent.len(), ev.len()), (1, 0));
    // Timer D ends it.
    let (_, ev) = run_until(&mut t, Duration::from_secs(7), Duration::from_secs(60));
    assert!(matches!(ev[..], [TxEvent::Terminated { .. }]));
}

#[test]
fn invite_client_accepted_state_passes_2xx_retransmissions_on() {
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKi3", 1);
    let id = t
        .send_request(inv.clone(), peer(5060, false), Duration::ZERO)
        .expect("tx");
    drain(&mut t);
    let ok = parse(&build_response(&inv, 200, "OK", Some("tt")).to_bytes());
    t.receive(ok.clone(), peer(5060, false), 10 * MS)
        .expect("200");
    t.receive(ok, peer(5060, false), 510 * MS)
        .expect("200 again");
    let (sent, ev) = drain(&mut t);
    assert!(
        sent.is_empty(),
        "the 2xx is ACKed by the dialog layer, not here"
    );
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, TxEvent::Response { tx, .. } if *tx == id))
            .count(),
        2
    );
    let (_, ev) = run_until(&mut t, 510 * MS, Duration::from_secs(40));
    assert!(matches!(ev[..], [TxEvent::Terminated { .. }]), "timer M");
}

#[test]
fn invite_server_sends_trying_retransmits_final_with_g_and_stops_on_ack() {
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKs1", 3);
    t.receive(inv.clone(), peer(5070, false), Duration::ZERO)
        .expect("invite");
    let (sent, ev) = drain(&mut t);
    assert_eq!(sent[0].status(), Some(100));
    let TxEvent::Request { tx, .. } = ev[0] else {
        panic!("request event")
    };
    // A retransmitted INVITE gets the 100 again and is not reported.
    t.receive(inv.clone(), peer(5070, false), 500 * MS)
        .expect("again");
    let (sent, ev) = drain(&mut t);
    assert_eq!((sent.len(), ev.len()), (1, 0));
    t.respond(
        tx,
        build_response(&inv, 486, "Busy Here", Some("st")),
        Duration::from_secs(1),
    )
    .expect("486");
    drain(&mut t);
    let (sends, _) = run_until(&mut t, Duration::from_secs(1), Duration::from_secs(5));
    assert_eq!(secs(&sends), vec![1.5, 2.5, 4.5]);
    // The ACK (same branch) confirms; no more retransmissions; Timer I ends it.
    let mut ack_text = String::from_utf8(inv.to_bytes()).expect("utf8");
    ack_text = ack_text
        .replacen("INVITE sip", "ACK sip", 1)
        .replace("3 INVITE", "3 ACK");
    t.receive(
        parse(ack_text.as_bytes()),
        peer(5070, false),
        Duration::from_secs(5),
    )
    .expect("ack");
    let (sends, ev) = run_until(&mut t, Duration::from_secs(5), Duration::from_secs(60));
    assert!(sends.is_empty());
    assert!(matches!(ev[..], [TxEvent::Terminated { .. }]));
}

#[test]
fn invite_server_without_ack_times_out_with_h() {
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKs2", 1);
    t.receive(inv.clone(), peer(5070, false), Duration::ZERO)
        .expect("invite");
    let (_, ev) = drain(&mut t);
    let TxEvent::Request { tx, .. } = ev[0] else {
        panic!()
    };
    t.respond(
        tx,
        build_response(&inv, 603, "Decline", Some("st")),
        Duration::ZERO,
    )
    .expect("603");
    drain(&mut t);
    let (sends, ev) = run_until(&mut t, Duration::ZERO, Duration::from_secs(40));
    assert_eq!(
        secs(&sends),
        vec![0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    );
    assert!(matches!(ev[0], TxEvent::Timeout { tx: x } if x == tx));
}

#[test]
fn a_2xx_is_retransmitted_until_its_ack() {
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKs3", 9);
    t.receive(inv.clone(), peer(5070, false), Duration::ZERO)
        .expect("invite");
    let (_, ev) = drain(&mut t);
    let TxEvent::Request { tx, .. } = ev[0] else {
        panic!()
    };
    t.respond(
        tx,
        build_response(&inv, 200, "OK", Some("st")),
        Duration::ZERO,
    )
    .expect("200");
    drain(&mut t);
    let (sends, _) = run_until(&mut t, Duration::ZERO, Duration::from_millis(3600));
    assert_eq!(secs(&sends), vec![0.5, 1.5, 3.5]);
    // The ACK for a 2xx has its own branch.
    let ack = request("ACK", "z9hG4bKack9", 9);
    let ack = parse(
        String::from_utf8(ack.to_bytes())
            .expect("utf8")
            .replace("call-z9hG4bKack9", "call-z9hG4bKs3")
            .as_bytes(),
    );
    t.receive(ack, peer(5070, false), Duration::from_secs(4))
        .expect("ack");
    let (_, ev) = drain(&mut t);
    assert!(matches!(ev[..], [TxEvent::Ack { .. }]));
    let (sends, ev) = run_until(&mut t, Duration::from_secs(4), Duration::from_secs(60));
    assert!(sends.is_empty(), "no 2xx after the ACK");
    assert!(matches!(ev[..], [TxEvent::Terminated { .. }]), "timer L");
}

#[test]
fn an_ack_reusing_the_invite_branch_also_stops_2xx_retransmissions() {
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKs4", 5);
    t.receive(inv.clone(), peer(5070, false), Duration::ZERO)
        .expect("invite");
    let (_, ev) = drain(&mut t);
    let TxEvent::Request { tx, .. } = ev[0] else {
        panic!()
    };
    t.respond(
        tx,
        build_response(&inv, 200, "OK", Some("st")),
        Duration::ZERO,
    )
    .expect("200");
    drain(&mut t);
    // Same branch and Call-ID as the INVITE.
    let ack = request("ACK", "z9hG4bKs4", 5);
    t.receive(ack, peer(5070, false), 100 * MS).expect("ack");
    let (_, ev) = drain(&mut t);
    assert!(matches!(ev[..], [TxEvent::Ack { .. }]));
    let (sends, _) = run_until(&mut t, 100 * MS, Duration::from_secs(60));
    assert!(sends.is_empty(), "no 2xx retransmission after the ACK");
}

#[test]
fn non_invite_server_absorbs_retransmissions_and_lingers_with_j() {
    let mut t = Transactions::new(Timers::default());
    let bye = request("BYE", "z9hG4bKb1", 2);
    t.receive(bye.clone(), peer(5070, false), Duration::ZERO)
        .expect("bye");
    let (sent, ev) = drain(&mut t);
    assert!(sent.is_empty(), "no automatic 100 for non-INVITE");
    let TxEvent::Request { tx, .. } = ev[0] else {
        panic!()
    };
    t.receive(bye.clone(), peer(5070, false), 100 * MS)
        .expect("again");
    assert_eq!(drain(&mut t).1.len(), 0, "absorbed");
    t.respond(tx, build_response(&bye, 200, "OK", None), 200 * MS)
        .expect("200");
    assert_eq!(drain(&mut t).0.len(), 1);
    t.receive(bye, peer(5070, false), 700 * MS).expect("again");
    let (sent, ev) = drain(&mut t);
    assert_eq!((sent[0].status(), ev.len()), (Some(200), 0));
    let (_, ev) = run_until(&mut t, 700 * MS, Duration::from_secs(60));
    assert!(matches!(ev[..], [TxEvent::Terminated { .. }]));
}

#[test]
fn reliable_transports_never_retransmit() {
    let mut t = Transactions::new(Timers::default());
    t.send_request(
        request("OPTIONS", "z9hG4bKr1", 1),
        peer(5060, true),
        Duration::ZERO,
    )
    .expect("tx");
    t.send_request(
        request("INVITE", "z9hG4bKr2", 1),
        peer(5060, true),
        Duration::ZERO,
    )
    .expect("tx");
    drain(&mut t);
    let (sends, events) = run_until(&mut t, Duration::ZERO, Duration::from_secs(40));
    assert!(sends.is_empty());
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, TxEvent::Timeout { .. }))
            .count(),
        2
    );
}

#[test]
fn cancel_is_its_own_transaction_and_bad_requests_are_errors() {
    let mut t = Transactions::new(Timers::default());
    t.receive(
        request("INVITE", "z9hG4bKc1", 1),
        peer(5070, false),
        Duration::ZERO,
    )
    .expect("invite");
    t.receive(request("CANCEL", "z9hG4bKc1", 1), peer(5070, false), MS)
        .expect("cancel");
    let (_, ev) = drain(&mut t);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, TxEvent::Request { .. }))
            .count(),
        2
    );
    let no_via = SipMessage::parse(
        b"OPTIONS sip:x SIP/2.0\r\nCSeq: 1 OPTIONS\r\nCall-ID: c\r\nContent-Length: 0\r\n\r\n",
        &Limits::default(),
    )
    .expect("parses");
    assert!(t.receive(no_via, peer(5070, false), MS).is_err());
    let mut small = Transactions::new(Timers::default()).with_max_transactions(1);
    small
        .receive(request("OPTIONS", "z9hG4bKm1", 1), peer(1, false), MS)
        .expect("first");
    assert!(small
        .receive(request("OPTIONS", "z9hG4bKm2", 1), peer(1, false), MS)
        .is_err());
}

/// A tiny seeded PRNG (xorshift) so runs are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Client and server layers over a network that loses 20 %, duplicates 10 % and delays each
/// datagram by 0–300 ms (so it reorders). Every transaction must end with the server's final
/// response at the client (or, rarely, a timeout), and the server must see each request once.
#[test]
fn lossy_reordering_network() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut client = Transactions::new(Timers::default());
        let mut server = Transactions::new(Timers::default());
        let (cp, sp) = (peer(5060, false), peer(5070, false));
        // In flight: (arrival time, to server?, bytes)
        let mut wire: Vec<(Duration, bool, Vec<u8>)> = Vec::new();
        let mut now = Duration::ZERO;
        let n = 30usize;
        let mut ids: Vec<TxId> = Vec::new();
        for i in 0..n {
            let m = if i % 3 == 0 { "INVITE" } else { "OPTIONS" };
            ids.push(
                client
                    .send_request(
                        request(m, &format!("z9hG4bKl{seed}x{i}"), i as u32 + 1),
                        sp,
                        now,
                    )
                    .expect("tx"),
            );
        }
        let mut finals = std::collections::HashMap::new();
        let mut timeouts = 0;
        let mut seen_by_server = std::collections::HashMap::<String, usize>::new();
        let end = Duration::from_secs(120);
        while now < end {
            // Move outputs onto the wire.
            for (layer, to_server) in [(&mut client, true), (&mut server, false)] {
                while let Some(o) = layer.poll_output() {
                    match o {
                        Output::Transmit(x) => {
                            if rng.chance(20) {
                                continue;
                            }
                            let copies = if rng.chance(10) { 2 } else { 1 };
                            for _ in 0..copies {
                                let delay = Duration::from_millis(rng.next() % 300);
                                wire.push((now + delay, to_server, x.data.clone()));
                            }
                        }
                        Output::Event(TxEvent::Request { tx, msg, .. }) => {
                            assert!(!to_server, "only the server gets requests");
                            let cid = msg.header("Call-ID").expect("cid").to_string();
                            *seen_by_server.entry(cid).or_default() += 1;
                            let code = if msg.method().map(ToString::to_string).as_deref()
                                == Some("INVITE")
                            {
                                486
                            } else {
                                200
                            };
                            layer
                                .respond(tx, build_response(&msg, code, "Final", Some("st")), now)
                                .expect("respond");
                        }
                        Output::Event(TxEvent::Response { tx, msg }) => {
                            if msg.status().unwrap_or(0) >= 200 {
                                finals.insert(tx, msg.status());
                            }
                        }
                        Output::Event(TxEvent::Timeout { .. }) if to_server => timeouts += 1,
                        Output::Event(_) => {}
                    }
                }
            }
            // Next thing to happen: a delivery or a timer.
            let next_wire = wire.iter().map(|(t, _, _)| *t).min();
            let next_timer = [client.next_deadline(), server.next_deadline()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = [next_wire, next_timer].into_iter().flatten().min() else {
                break;
            };
            now = now.max(next);
            let (due, rest): (Vec<_>, Vec<_>) = wire.into_iter().partition(|(t, _, _)| *t <= now);
            wire = rest;
            for (_, to_server, data) in due {
                let msg = parse(&data);
                if to_server {
                    let _ = server.receive(msg, cp, now);
                } else {
                    let _ = client.receive(msg, sp, now);
                }
            }
            client.handle_timeouts(now);
            server.handle_timeouts(now);
        }
        // Each request reached the server's user exactly once, and nearly every client
        // transaction got its final response despite 20 % loss (retransmissions work).
        assert!(
            seen_by_server.values().all(|&c| c == 1),
            "seed {seed}: duplicates reached the user"
        );
        assert!(
            finals.len() + timeouts >= n - 1,
            "seed {seed}: {} finals, {timeouts} timeouts",
            finals.len()
        );
        assert!(
            finals.len() >= n * 9 / 10,
            "seed {seed}: only {} of {n} finals",
            finals.len()
        );
        assert!(
            client.is_empty() && server.is_empty(),
            "seed {seed}: transactions left"
        );
    }
}
