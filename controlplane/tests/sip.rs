//! `voxedge serve`'s SIP service end to end, with a small user agent written here: the `echo`
//! target answers and echoes RTP through the dataplane (UDP and TCP signalling), `hangup`
//! answers and sends BYE, OPTIONS is answered, unknown targets get 404, bad requests 400,
//! malformed datagrams are dropped and counted, and BYE ends the media.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use voxedge_controlplane::app::{self, Role, Running};
use voxedge_controlplane::config::Config;
use voxedge_dataplane::BackendKind;
use voxedge_sip_core::{Framer, Limits, SipMessage};

mod common;
use common::Callee;

fn config(port_min: u16) -> Config {
    let mut c = Config::default();
    c.ng.listen = "127.0.0.1:0".parse().expect("addr");
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.sip.listen = "127.0.0.1:0".parse().expect("addr");
    c.dataplane.workers = 1;
    c.dataplane.pin_cores = false;
    c.dataplane.bind = "127.0.0.1".parse().expect("ip");
    c.dataplane.port_min = port_min;
    c.dataplane.port_max = port_min + 99;
    c.dataplane.idle_wait_us = 200;
    c.api.enabled = false;
    c
}

fn invite(
    user: &str,
    branch: &str,
    call_id: &str,
    rtp: SocketAddr,
    transport: &str,
    via: SocketAddr,
) -> String {
    let sdp = format!(
        "v=0\r\no=ua 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {}\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n",
        rtp.ip(),
        rtp.port()
    );
    invite_with(user, branch, call_id, transport, via, Some(&sdp))
}

/// An INVITE with `sdp` as its body, or none (a delayed offer).
fn invite_with(
    user: &str,
    branch: &str,
    call_id: &str,
    transport: &str,
    via: SocketAddr,
    sdp: Option<&str>,
) -> String {
    let body = sdp.unwrap_or_default();
    let ctype = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    format!(
        "INVITE sip:{user}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {via};branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:tester@127.0.0.1>;tag=ua1\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:tester@{via}>\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[allow(clippy::too_many_arguments)]
fn in_dialog(
    method: &str,
    cseq: u32,
    call_id: &str,
    to_tag: &str,
    branch: &str,
    transport: &str,
    via: SocketAddr,
    user: &str,
) -> String {
    format!(
        "{method} sip:{user}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {via};branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:tester@127.0.0.1>;tag=ua1\r\nTo: <sip:{user}@127.0.0.1>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

struct Udp {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Udp {
    fn send(&self, s: &str) {
        self.sock.send_to(s.as_bytes(), self.server).expect("send");
    }
    /// Next message that is not a 100 Trying.
    fn recv(&self) -> SipMessage {
        let mut buf = [0u8; 65536];
        loop {
            let (n, _) = self
                .sock
                .recv_from(&mut buf)
                .expect("a SIP message in time");
            let m =
                SipMessage::parse(&buf[..n], &Limits::default()).expect("server sends valid SIP");
            if m.status() != Some(100) {
                return m;
            }
        }
    }
}

fn answer_port(m: &SipMessage) -> u16 {
    let sdp = String::from_utf8(m.sdp().expect("sdp answer").to_vec()).expect("utf8");
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port")
}

fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&[0xd5; 160]);
    p
}

/// Sends RTP packet `seq` from `from` to our `port` until `to` hears it, at most five times:
/// a packet sent the instant the SDP that points the other leg arrives may reach the dataplane
/// before that leg update and be dropped (counted `no_remote`). The received length and
/// sequence number.
fn rtp_through(from: &UdpSocket, port: u16, to: &UdpSocket, seq: u16) -> (usize, u16) {
    let mut b = [0u8; 2048];
    to.set_read_timeout(Some(Duration::from_millis(400)))
        .expect("t");
    for _ in 0..5 {
        from.send_to(&rtp_packet(seq), ("127.0.0.1", port))
            .expect("rtp");
        if let Ok((n, _)) = to.recv_from(&mut b) {
            to.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("t");
            return (n, u16::from_be_bytes([b[2], b[3]]));
        }
    }
    panic!("RTP sent to port {port} never arrived");
}

fn echo_media(answer: &SipMessage, rtp: &UdpSocket) {
    let port = answer_port(answer);
    for seq in 0..10u16 {
        rtp.send_to(&rtp_packet(seq), ("127.0.0.1", port))
            .expect("rtp");
        let mut b = [0u8; 2048];
        let (n, from) = rtp.recv_from(&mut b).expect("echoed RTP");
        assert_eq!(from.port(), port, "echo comes from the port in the answer");
        assert_eq!(&b[2..4], &seq.to_be_bytes());
        assert_eq!(n, 172);
    }
}

async fn start(port_min: u16) -> Running {
    start_with(port_min, |_| {}).await
}

/// A node on `config(port_min)` with `edit` applied.
async fn start_with(port_min: u16, edit: impl FnOnce(&mut Config)) -> Running {
    let mut c = config(port_min);
    edit(&mut c);
    app::start(Role::Serve, c, BackendKind::Socket)
        .await
        .expect("serve starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_call_over_udp_with_media_and_bye() {
    let r = start(25600).await;
    let server = r.sip_udp.expect("udp");
    let stats = r.sip_stats.clone().expect("stats");
    let dp = r.dataplane.clone();
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        // OPTIONS, an unknown target, a request without From.
        ua.send(
            &in_dialog("OPTIONS", 1, "opt1", "x", "z9hG4bKopt", "UDP", via, "x")
                .replace(";tag=x", ""),
        );
        let m = ua.recv();
        assert_eq!(m.status(), Some(200));
        assert!(m.header("Allow").expect("allow").contains("INVITE"));
        ua.send(&invite(
            "nobody",
            "z9hG4bKnb",
            "nb1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        ));
        assert_eq!(ua.recv().status(), Some(404));
        ua.send(
            &in_dialog("OPTIONS", 1, "opt2", "x", "z9hG4bKbad", "UDP", via, "x")
                .replace("From: <sip:tester@127.0.0.1>;tag=ua1\r\n", ""),
        );
        assert_eq!(ua.recv().status(), Some(400));
        ua.sock
            .send_to(b"\x00\x01garbage that is not SIP\r\n\r\n", server)
            .expect("send");
        // The echo call.
        ua.send(&invite(
            "echo",
            "z9hG4bKe1",
            "echo1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        ));
        let ok = ua.recv();
        assert_eq!(ok.status(), Some(200));
        let to_tag = voxedge_sip_core::uri::header_param(ok.header("To").expect("to"), "tag")
            .expect("to tag")
            .to_string();
        ua.send(&in_dialog(
            "ACK",
            1,
            "echo1",
            &to_tag,
            "z9hG4bKa1",
            "UDP",
            via,
            "echo",
        ));
        echo_media(&ok, &rtp);
        assert_eq!(dp.relay_count(), 1);
        ua.send(&in_dialog(
            "BYE",
            2,
            "echo1",
            &to_tag,
            "z9hG4bKb1",
            "UDP",
            via,
            "echo",
        ));
        assert_eq!(ua.recv().status(), Some(200));
        // A BYE for a dialog that no longer exists.
        ua.send(&in_dialog(
            "BYE",
            3,
            "echo1",
            &to_tag,
            "z9hG4bKb2",
            "UDP",
            via,
            "echo",
        ));
        assert_eq!(ua.recv().status(), Some(481));
    })
    .await
    .expect("ua");
    assert_eq!(r.dataplane.relay_count(), 0, "media released on BYE");
    assert!(stats.malformed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_tcp_and_hangup_target_sends_bye() {
    let r = start(25700).await;
    let tcp = r.sip_tcp.expect("tcp");
    let udp = r.sip_udp.expect("udp");
    tokio::task::spawn_blocking(move || {
        // TCP: INVITE split across writes, answered on the same connection.
        let mut s = TcpStream::connect(tcp).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("t");
        let via = s.local_addr().expect("addr");
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
        rtp.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
        let msg = invite(
            "echo",
            "z9hG4bKt1",
            "tcp1",
            rtp.local_addr().expect("a"),
            "TCP",
            via,
        );
        let (a, b) = msg.as_bytes().split_at(msg.len() / 2);
        s.write_all(a).expect("w");
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b).expect("w");
        let mut framer = Framer::new(Limits::default());
        let mut next = || loop {
            if let Some(m) = framer.next_message() {
                let m = m.expect("valid");
                if m.status() != Some(100) {
                    return m;
                }
                continue;
            }
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "connection closed");
            framer.push(&buf[..n]).expect("push");
        };
        let ok = next();
        assert_eq!(ok.status(), Some(200));
        echo_media(&ok, &rtp);

        // UDP: the hangup target answers, then hangs up after our ACK.
        let ua = Udp {
            sock: UdpSocket::bind("127.0.0.1:0").expect("bind"),
            server: udp,
        };
        ua.sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("t");
        let via = ua.sock.local_addr().expect("addr");
        ua.send(&invite(
            "hangup",
            "z9hG4bKh1",
            "hang1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        ));
        let ok = ua.recv();
        assert_eq!(ok.status(), Some(200));
        let to_tag = voxedge_sip_core::uri::header_param(ok.header("To").expect("to"), "tag")
            .expect("tag")
            .to_string();
        ua.send(&in_dialog(
            "ACK",
            1,
            "hang1",
            &to_tag,
            "z9hG4bKha",
            "UDP",
            via,
            "hangup",
        ));
        let bye = ua.recv();
        assert_eq!(method_of(&bye), "BYE");
        assert_eq!(bye.header("Call-ID"), Some("hang1"));
        let resp = voxedge_sip_core::transaction::build_response(&bye, 200, "OK", None);
        ua.sock.send_to(&resp.to_bytes(), udp).expect("200 to BYE");
    })
    .await
    .expect("ua");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        r.dataplane.relay_count(),
        1,
        "only the TCP echo call remains"
    );
    r.shutdown().await;
}

// --- B2BUA: calls routed to a SIP target ------------------------------------------------------

fn routed(port_min: u16, callee: SocketAddr) -> Config {
    let mut c = config(port_min);
    c.sip.routes = vec![voxedge_controlplane::config::SipRoute {
        pattern: "+1555*".into(),
        target: format!("sip:{callee}"),
        username: None,
        password: None,
        codecs: None,
    }];
    c
}

/// A node whose dial plan sends `+1555…` to `callee`, with `edit` applied to its config.
async fn start_routed(port_min: u16, callee: &Callee, edit: impl FnOnce(&mut Config)) -> Running {
    let mut c = routed(port_min, callee.sock.local_addr().expect("a"));
    edit(&mut c);
    app::start(Role::Serve, c, BackendKind::Socket)
        .await
        .expect("start")
}

/// The method of a request, as text.
fn method_of(m: &SipMessage) -> String {
    m.method().map(ToString::to_string).unwrap_or_default()
}

fn to_tag(m: &SipMessage) -> String {
    voxedge_sip_core::uri::header_param(m.header("To").expect("to"), "tag")
        .expect("tag")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_call_relays_ringing_answer_media_and_callee_bye() {
    let callee = Callee::new();
    let r = start_routed(25800, &callee, |_| {}).await;
    let server = r.sip_udp.expect("udp");
    let dp = r.dataplane.clone();
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        ua.send(&invite("+15551234", "z9hG4bKr1", "routed1", rtp.local_addr().expect("a"), "UDP", via));
        // The callee gets our INVITE (our SDP), rings, answers.
        let (inv, from) = callee.recv();
        assert_eq!(method_of(&inv), "INVITE");
        assert!(inv.to_bytes().starts_with(b"INVITE sip:+15551234@"));
        let offer = String::from_utf8(inv.sdp().expect("offer").to_vec()).expect("utf8");
        assert!(!offer.contains(&rtp.local_addr().expect("a").port().to_string()), "caller's port hidden");
        callee.reply(&inv, 180, "Ringing", from, false);
        let ringing = ua.recv();
        assert_eq!(ringing.status(), Some(180));
        callee.reply(&inv, 200, "OK", from, true);
        let ok = ua.recv();
        assert_eq!(ok.status(), Some(200));
        let (ack, _) = callee.recv();
        assert_eq!(method_of(&ack), "ACK");
        ua.send(&in_dialog("ACK", 1, "routed1", &to_tag(&ok), "z9hG4bKra", "UDP", via, "+15551234"));
        // Media both ways through the relay.
        let caller_to = answer_port(&ok);
        let callee_to: u16 = offer
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .expect("port");
        assert_eq!(rtp_through(&rtp, caller_to, &callee.rtp, 1), (172, 1), "callee hears the caller");
        assert_eq!(rtp_through(&callee.rtp, callee_to, &rtp, 2), (172, 2), "caller hears the callee");
        // The callee hangs up: the caller gets a BYE.
        let bye = format!(
            "BYE sip:voxedge@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKcb1\r\nMax-Forwards: 70\r\n\
From: {};tag=callee1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            callee.sock.local_addr().expect("a"),
            voxedge_sip_core::uri::header_uri(inv.header("To").expect("to")).map(|u| format!("<{u}>")).expect("to"),
            inv.header("From").expect("from"),
            inv.header("Call-ID").expect("cid"),
        );
        callee.sock.send_to(bye.as_bytes(), server).expect("bye");
        let (ok_bye, _) = callee.recv();
        assert_eq!(ok_bye.status(), Some(200));
        let caller_bye = ua.recv();
        assert_eq!(method_of(&caller_bye), "BYE");
        let resp = voxedge_sip_core::transaction::build_response(&caller_bye, 200, "OK", None);
        ua.sock.send_to(&resp.to_bytes(), server).expect("200");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(dp.relay_count(), 0, "media released");
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_call_relays_busy_and_cancel() {
    let callee = Callee::new();
    let r = start_routed(25900, &callee, |_| {}).await;
    let server = r.sip_udp.expect("udp");
    let dp = r.dataplane.clone();
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        // 486 from the callee reaches the caller.
        ua.send(&invite(
            "+15550001",
            "z9hG4bKbusy",
            "busy1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        ));
        let (inv, from) = callee.recv();
        callee.reply(&inv, 486, "Busy Here", from, false);
        let busy = ua.recv();
        assert_eq!(busy.status(), Some(486));
        let (ack, _) = callee.recv();
        assert_eq!(method_of(&ack), "ACK", "non-2xx ACKed hop by hop");
        // CANCEL before the answer: 200 for the CANCEL, 487 for the INVITE, and the callee
        // gets a CANCEL.
        ua.send(&invite(
            "+15550002",
            "z9hG4bKcan",
            "cancel1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        ));
        let (inv, from) = callee.recv();
        callee.reply(&inv, 180, "Ringing", from, false);
        assert_eq!(ua.recv().status(), Some(180));
        let cancel = invite(
            "+15550002",
            "z9hG4bKcan",
            "cancel1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        )
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("1 INVITE", "1 CANCEL");
        ua.send(&cancel);
        let mut codes = vec![ua.recv().status(), ua.recv().status()];
        codes.sort();
        assert_eq!(codes, vec![Some(200), Some(487)]);
        let (c, from) = callee.recv();
        assert_eq!(method_of(&c), "CANCEL");
        callee.reply(&c, 200, "OK", from, false);
        callee.reply(&inv, 487, "Request Terminated", from, false);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(dp.relay_count(), 0, "no media left behind");
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

/// A flood of INVITEs beyond the configured rate is answered 503 with Retry-After, and the
/// service keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_flood_is_answered_503_with_retry_after() {
    let r = start_with(26000, |c| {
        c.sip.calls_per_second_max = 10;
        c.sip.calls_per_second_per_source_max = 10;
    })
    .await;
    let server = r.sip_udp.expect("udp");
    let stats = r.sip_stats.clone().expect("stats");
    let refused = tokio::task::spawn_blocking(move || {
        let ua = Udp {
            sock: UdpSocket::bind("127.0.0.1:0").expect("bind"),
            server,
        };
        ua.sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("t");
        let via = ua.sock.local_addr().expect("addr");
        let rtp = UdpSocket::bind("127.0.0.1:0")
            .expect("rtp")
            .local_addr()
            .expect("a");
        let started = Instant::now();
        for i in 0..40 {
            ua.send(&invite(
                "echo",
                &format!("z9hG4bKfl{i}"),
                &format!("flood{i}"),
                rtp,
                "UDP",
                via,
            ));
        }
        // One final answer per INVITE; retransmissions (nothing is ACKed here, and a slow
        // machine reads late) are counted once, by Call-ID.
        let mut answers: std::collections::HashMap<String, u16> = std::collections::HashMap::new();
        let mut reads = 0;
        while answers.len() < 40 {
            reads += 1;
            assert!(reads < 400, "answers to the flood: {answers:?}");
            let m = ua.recv();
            let status = m.status().unwrap_or(0);
            assert!(status == 200 || status == 503, "unexpected {status}");
            if status == 503 {
                assert_eq!(m.header("Retry-After"), Some("1"));
            }
            answers.insert(m.header("Call-ID").unwrap_or_default().to_string(), status);
        }
        let ok = answers.values().filter(|s| **s == 200).count();
        let refused = answers.len() - ok;
        // One second of burst (10), plus what the bucket refilled while the flood was
        // being answered — bounded by the time it took, not by how fast this machine is.
        let budget = 10.0 + 10.0 * started.elapsed().as_secs_f64();
        assert!(
            ok >= 10 && ok as f64 <= budget + 1.0,
            "one second of burst admitted: {ok} (budget {budget:.1})"
        );
        assert!(refused > 0, "the flood was refused in part");
        // Still serving (retransmitted flood answers may still arrive first).
        ua.send(
            &in_dialog("OPTIONS", 1, "after", "x", "z9hG4bKafter", "UDP", via, "x")
                .replace(";tag=x", ""),
        );
        let mut reads = 0;
        loop {
            reads += 1;
            assert!(reads < 400, "no answer to OPTIONS");
            let m = ua.recv();
            if m.header("Call-ID") == Some("after") {
                assert_eq!(m.status(), Some(200));
                break;
            }
        }
        refused
    })
    .await
    .expect("ua");
    assert!(
        stats
            .calls_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= refused as u64
    );
    let metrics = common::metrics(r.admin).await;
    assert!(
        metrics.contains("voxedge_sip_calls_refused_total "),
        "{metrics}"
    );
    r.shutdown().await;
}

fn reinvite(
    cseq: u32,
    call_id: &str,
    to_tag: &str,
    branch: &str,
    via: SocketAddr,
    rtp_port: u16,
    dir: &str,
) -> String {
    let sdp = format!(
        "v=0\r\no=ua 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={dir}\r\n"
    );
    format!(
        "INVITE sip:voxedge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:tester@127.0.0.1>;tag=ua1\r\nTo: <sip:+15557777@127.0.0.1>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\n\
Contact: <sip:tester@{via}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// A routed call from the test's caller to `callee`, answered and acknowledged on both legs.
struct Answered {
    /// The INVITE as the callee got it.
    inv: SipMessage,
    /// Our tag towards the caller.
    tag: String,
    /// Our media port towards the caller, and towards the callee.
    a_port: u16,
    b_port: u16,
}

fn answered_call(
    ua: &Udp,
    via: SocketAddr,
    rtp: &UdpSocket,
    callee: &Callee,
    call_id: &str,
) -> Answered {
    let branch = format!("z9hG4bK{call_id}i");
    ua.send(&invite(
        "+15557777",
        &branch,
        call_id,
        rtp.local_addr().expect("a"),
        "UDP",
        via,
    ));
    let (inv, from) = callee.recv();
    let b_port = answer_port(&inv);
    callee.reply(&inv, 200, "OK", from, true);
    let ok = ua.recv();
    let tag = to_tag(&ok);
    let a_port = answer_port(&ok);
    let _ack = callee.recv();
    let branch = format!("z9hG4bK{call_id}a");
    ua.send(&in_dialog(
        "ACK",
        1,
        call_id,
        &tag,
        &branch,
        "UDP",
        via,
        "+15557777",
    ));
    Answered {
        inv,
        tag,
        a_port,
        b_port,
    }
}

/// Hold and resume: the caller's re-INVITEs (and an INFO) reach the callee with our SDP, the
/// callee's answers come back, and media keeps flowing on the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_hold_resume_and_info_are_relayed() {
    let callee = Callee::new();
    let r = start_routed(26100, &callee, |_| {}).await;
    let server = r.sip_udp.expect("udp");
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        let Answered { tag, a_port, b_port, .. } = answered_call(&ua, via, &rtp, &callee, "reinv1");
        for (n, dir, answer_dir) in [(2, "sendonly", "recvonly"), (3, "sendrecv", "sendrecv")] {
            // A new media port for the caller on resume, to check the relay follows it.
            let rtp2 = UdpSocket::bind("127.0.0.1:0").expect("rtp2");
            rtp2.set_read_timeout(Some(Duration::from_secs(2))).expect("t");
            let port = rtp2.local_addr().expect("a").port();
            ua.send(&reinvite(n, "reinv1", &tag, &format!("z9hG4bKre{n}"), via, port, dir));
            let (re, from) = callee.recv();
            assert_eq!(method_of(&re), "INVITE");
            let offer = String::from_utf8(re.sdp().expect("sdp").to_vec()).expect("utf8");
            assert!(offer.contains(&format!("a={dir}")), "{offer}");
            assert_eq!(answer_port(&re), b_port, "our port towards the callee");
            let mut ans = voxedge_sip_core::transaction::build_response(&re, 200, "OK", None);
            let body = format!("v=0\r\no=callee 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na={answer_dir}\r\n", callee.rtp.local_addr().expect("a").port());
            ans.headers.insert(ezk_sip_types::Name::CONTENT_TYPE, bytesstr::BytesStr::from_static("application/sdp"));
            ans.body = bytes::Bytes::from(body);
            callee.sock.send_to(&ans.to_bytes(), from).expect("200");
            let ok2 = ua.recv();
            assert_eq!(ok2.status(), Some(200));
            let sdp2 = String::from_utf8(ok2.sdp().expect("sdp").to_vec()).expect("utf8");
            assert!(sdp2.contains(&format!("a={answer_dir}")));
            assert_eq!(answer_port(&ok2), a_port, "our port towards the caller");
            let (ack, _) = callee.recv();
            assert_eq!(method_of(&ack), "ACK");
            // Say our ACK was lost: the callee's 2xx again gets the same ACK again.
            callee.sock.send_to(&ans.to_bytes(), from).expect("200 again");
            let (again, _) = callee.recv();
            assert_eq!(method_of(&again), "ACK", "the 2xx retransmission is ACKed");
            assert_eq!(again.header("CSeq"), ack.header("CSeq"));
            ua.send(&in_dialog("ACK", n, "reinv1", &tag, &format!("z9hG4bKra{n}"), "UDP", via, "+15557777"));
            if dir == "sendrecv" {
                // The callee's media reaches the caller's new port (the worker applies the
                // new address asynchronously: a packet sent before that went to the old one,
                // so send again until one arrives).
                let mut b = [0u8; 2048];
                rtp2.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
                let mut got = None;
                for seq in 0..50 {
                    callee.rtp.send_to(&rtp_packet(9 + seq), ("127.0.0.1", b_port)).expect("rtp");
                    if let Ok((len, _)) = rtp2.recv_from(&mut b) {
                        got = Some(len);
                        break;
                    }
                }
                assert_eq!(got, Some(172), "media on the resumed address");
            }
        }
        // INFO is relayed too.
        ua.send(&in_dialog("INFO", 4, "reinv1", &tag, "z9hG4bKinfo", "UDP", via, "+15557777"));
        let (info, from) = callee.recv();
        assert_eq!(method_of(&info), "INFO");
        callee.reply(&info, 200, "OK", from, false);
        assert_eq!(ua.recv().status(), Some(200));
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

/// The port of the `m=image` (T.38) stream of a message's SDP.
fn image_port(m: &SipMessage) -> u16 {
    let sdp = body_text(m);
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=image "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("m=image port")
}

/// T.38 SDP as fax endpoints switch to it: audio disabled, UDPTL at `port`.
fn t38_sdp(version: u32, port: u16) -> String {
    format!(
        "v=0\r\no=ua 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 0 RTP/AVP 0\r\nm=image {port} udptl t38\r\na=T38FaxVersion:0\r\na=T38MaxBitRate:14400\r\n\
a=T38FaxRateManagement:transferredTCF\r\na=T38FaxUdpEC:t38UDPRedundancy\r\n"
    )
}

/// Sends `datagram` from `from` to the relay's `port` until it arrives on `to` (the worker
/// applies a leg update asynchronously), bounded; returns what arrived.
fn through_relay(from: &UdpSocket, port: u16, to: &UdpSocket, datagram: &[u8]) -> Option<Vec<u8>> {
    to.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut b = [0u8; 2048];
    for _ in 0..25 {
        from.send_to(datagram, ("127.0.0.1", port)).expect("send");
        if let Ok((len, _)) = to.recv_from(&mut b) {
            return Some(b[..len].to_vec());
        }
    }
    None
}

/// A call that switches to fax: the caller's re-INVITE to T.38 (audio disabled, `m=image`)
/// reaches the callee anchored on our port, the callee's T.38 answer comes back, and UDPTL
/// datagrams — not RTP, so an RTP relay would drop them — cross the relay both ways unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_to_t38_relays_udptl_both_ways() {
    let callee = Callee::new();
    let r = start_routed(27000, &callee, |_| {}).await;
    let server = r.sip_udp.expect("udp");
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        let Answered { tag, a_port, b_port, .. } = answered_call(&ua, via, &rtp, &callee, "fax1");

        // The caller's fax endpoint moves to a new port for UDPTL.
        let fax_a = UdpSocket::bind("127.0.0.1:0").expect("fax a");
        let sdp = t38_sdp(2, fax_a.local_addr().expect("a").port());
        let re = format!(
            "INVITE sip:voxedge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKfx2\r\nMax-Forwards: 70\r\n\
From: <sip:tester@127.0.0.1>;tag=ua1\r\nTo: <sip:+15557777@127.0.0.1>;tag={tag}\r\nCall-ID: fax1\r\nCSeq: 2 INVITE\r\n\
Contact: <sip:tester@{via}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        ua.send(&re);
        let (re, from) = callee.recv();
        assert_eq!(method_of(&re), "INVITE");
        let offer = body_text(&re);
        assert!(offer.contains(&format!("m=image {b_port} udptl t38\r\n")), "{offer}");
        assert!(offer.contains("m=audio 0 "), "{offer}");
        assert!(offer.contains("a=T38FaxRateManagement:transferredTCF"), "{offer}");
        callee_reply(&callee, &re, 200, from, &t38_sdp(2, callee.rtp.local_addr().expect("a").port()));
        let ok2 = ua.recv();
        assert_eq!(ok2.status(), Some(200));
        assert_eq!(image_port(&ok2), a_port, "T.38 on the call's relay port");
        let (ack, _) = callee.recv();
        assert_eq!(method_of(&ack), "ACK");
        ua.send(&in_dialog("ACK", 2, "fax1", &tag, "z9hG4bKfxa2", "UDP", via, "+15557777"));

        // UDPTL (sequence number, then a T.30 indicator IFP): its first byte is not RTP's.
        let from_a = [0x00, 0x00, 0x06, 0x7e, 0x00, 0x01, 0x02, 0x03];
        let from_b = [0x00, 0x01, 0x06, 0x7e, 0x11, 0x12];
        assert_eq!(
            through_relay(&fax_a, a_port, &callee.rtp, &from_a).as_deref(),
            Some(&from_a[..]),
            "caller → callee"
        );
        assert_eq!(
            through_relay(&callee.rtp, b_port, &fax_a, &from_b).as_deref(),
            Some(&from_b[..]),
            "callee → caller"
        );
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

/// A re-INVITE without SDP (RFC 3261 §14.1): relayed without a body, the callee's 2xx offers,
/// that offer reaches the caller on our port, and our ACK to the callee waits for the caller's
/// ACK, whose answer it carries; the caller's leg follows the answer's new media address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_without_sdp_gets_the_answer_from_the_callers_ack() {
    let callee = Callee::new();
    let r = start_routed(27200, &callee, |_| {}).await;
    let server = r.sip_udp.expect("udp");
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        let Answered { inv, tag, a_port, b_port } = answered_call(&ua, via, &rtp, &callee, "dro1");

        ua.send(&in_dialog("INVITE", 2, "dro1", &tag, "z9hG4bKdr2", "UDP", via, "+15557777"));
        let (re, from) = callee.recv();
        assert_eq!(method_of(&re), "INVITE");
        assert!(re.sdp().is_none(), "relayed without SDP");
        let callee_rtp = callee.rtp.local_addr().expect("a");
        callee_reply(&callee, &re, 200, from, &sdp_body(callee_rtp, "0 8"));
        let ok2 = ua.recv();
        assert_eq!(ok2.status(), Some(200));
        assert_eq!(answer_port(&ok2), a_port, "the callee's offer, on our port");
        // No ACK to the callee before the caller answers.
        callee
            .sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("t");
        let mut b = [0u8; 4096];
        assert!(callee.sock.recv_from(&mut b).is_err(), "the ACK waits for the answer");
        callee.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("t");

        // The caller answers PCMA from a new media port in its ACK.
        let rtp2 = UdpSocket::bind("127.0.0.1:0").expect("rtp2");
        let answer = sdp_body(rtp2.local_addr().expect("a"), "8");
        let ack = in_dialog("ACK", 2, "dro1", &tag, "z9hG4bKdra2", "UDP", via, "+15557777")
            .replace(
                "Content-Length: 0\r\n\r\n",
                &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}", answer.len()),
            );
        ua.send(&ack);
        let (ack, _) = callee.recv();
        assert_eq!(method_of(&ack), "ACK");
        let sdp = body_text(&ack);
        assert!(sdp.contains(&format!("m=audio {b_port} RTP/AVP 8\r\n")), "{sdp}");
        assert!(!sdp.contains(&rtp2.local_addr().expect("a").port().to_string()), "{sdp}");
        // The caller's leg follows the answer: the callee's media reaches the new port.
        let got = through_relay(&callee.rtp, b_port, &rtp2, &rtp_packet(40));
        assert_eq!(got.map(|p| p.len()), Some(172), "media on the answered address");

        // The same the other way: the callee's re-INVITE without SDP, the caller offers.
        let (to, from_hdr, cid) = (
            voxedge_sip_core::uri::header_uri(inv.header("To").expect("to"))
                .map(|u| format!("<{u}>"))
                .expect("to"),
            inv.header("From").expect("from").to_string(),
            inv.header("Call-ID").expect("cid").to_string(),
        );
        let callee_req = |method: &str, branch: &str, extra: &str| {
            format!(
                "{method} sip:voxedge@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch}\r\nMax-Forwards: 70\r\n\
From: {to};tag=callee1\r\nTo: {from_hdr}\r\nCall-ID: {cid}\r\nCSeq: 3 {method}\r\n\
Contact: <sip:callee@{}>\r\n{extra}",
                callee.sock.local_addr().expect("a"),
                callee.sock.local_addr().expect("a"),
            )
        };
        callee
            .sock
            .send_to(callee_req("INVITE", "z9hG4bKcr3", "Content-Length: 0\r\n\r\n").as_bytes(), server)
            .expect("re-INVITE");
        let re = ua.recv();
        assert_eq!(method_of(&re), "INVITE");
        assert!(re.sdp().is_none(), "relayed without SDP");
        let mut ok3 = voxedge_sip_core::transaction::build_response(&re, 200, "OK", None);
        ok3.headers.insert(
            ezk_sip_types::Name::CONTACT,
            bytesstr::BytesStr::from(format!("<sip:tester@{via}>")),
        );
        ok3.headers.insert(
            ezk_sip_types::Name::CONTENT_TYPE,
            bytesstr::BytesStr::from_static("application/sdp"),
        );
        ok3.body = bytes::Bytes::from(sdp_body(rtp2.local_addr().expect("a"), "8"));
        let ok3_bytes = ok3.to_bytes();
        ua.sock.send_to(&ok3_bytes, server).expect("200");
        let ok3 = loop {
            let (m, _) = callee.recv();
            if m.status() != Some(100) {
                break m;
            }
        };
        assert_eq!(ok3.status(), Some(200));
        assert_eq!(answer_port(&ok3), b_port, "the caller's offer, on our port");
        let answer = sdp_body(callee_rtp, "8");
        let ack = callee_req(
            "ACK",
            "z9hG4bKca3",
            &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}", answer.len()),
        );
        callee.sock.send_to(ack.as_bytes(), server).expect("ACK");
        let ack = ua.recv();
        assert_eq!(method_of(&ack), "ACK");
        assert!(body_text(&ack).contains(&format!("m=audio {a_port} RTP/AVP 8\r\n")));
        // Say our ACK was lost: the caller's 2xx again gets the same ACK, answer included.
        ua.sock.send_to(&ok3_bytes, server).expect("200 again");
        let again = ua.recv();
        assert_eq!(method_of(&again), "ACK", "the 2xx retransmission is ACKed");
        assert_eq!(again.header("CSeq"), ack.header("CSeq"));
        assert_eq!(body_text(&again), body_text(&ack));
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

/// Out of media ports and over the TCP connection limit: calls get 503 with Retry-After and
/// connections are closed at once, both counted in /metrics (the log says it once per period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_media_ports_and_tcp_limits_are_refused_and_counted() {
    let r = start_with(27100, |c| {
        c.dataplane.port_max = 27103; // two port pairs: one relay
        c.sip.tcp_connections_per_source_max = 1;
    })
    .await;
    let (server, tcp) = (r.sip_udp.expect("udp"), r.sip_tcp.expect("tcp"));
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        let a = rtp.local_addr().expect("a");
        ua.send(&invite("echo", "z9hG4bKnm1", "nm1", a, "UDP", via));
        let first = ua.recv();
        assert_eq!(first.status(), Some(200), "the one relay there is room for");
        for n in 2..5 {
            ua.send(&invite(
                "echo",
                &format!("z9hG4bKnm{n}"),
                &format!("nm{n}"),
                a,
                "UDP",
                via,
            ));
            let m = ua.recv();
            assert_eq!(m.status(), Some(503));
            assert!(m.header("Retry-After").is_some());
        }
        // One TCP connection per source: the second is closed without a word.
        let _kept = std::net::TcpStream::connect(tcp).expect("first connection");
        let mut second = std::net::TcpStream::connect(tcp).expect("connect");
        second
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("t");
        let mut b = [0u8; 16];
        use std::io::Read;
        assert!(matches!(second.read(&mut b), Ok(0) | Err(_)), "closed");
    })
    .await
    .expect("ua");
    let m = common::metrics(r.admin).await;
    assert!(
        m.contains("voxedge_sip_calls_without_media_total 3\n"),
        "{m}"
    );
    assert!(m.contains("voxedge_sip_tcp_refused_total 1\n"), "{m}");
    r.shutdown().await;
}

/// A trunk that demands digest authentication: we answer its 401 with credentials from the
/// route, and the call goes through. Callers must authenticate when `[sip] users` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_towards_a_trunk_and_from_callers() {
    use voxedge_controlplane::digest;
    let callee = Callee::new();
    let mut cfg = routed(26300, callee.sock.local_addr().expect("a"));
    cfg.sip.routes[0].username = Some("voxedge-trunk".into());
    cfg.sip.routes[0].password = Some("s3cret".into());
    cfg.sip.users = vec![voxedge_controlplane::config::SipUser {
        username: "alice".into(),
        password: "wonderland".into(),
    }];
    let r = app::start(Role::Serve, cfg, BackendKind::Socket)
        .await
        .expect("start");
    let server = r.sip_udp.expect("udp");
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        // Without credentials: 401 with a challenge.
        let first = invite(
            "+15558888",
            "z9hG4bKau1",
            "auth1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        );
        ua.send(&first);
        let ch = ua.recv();
        assert_eq!(ch.status(), Some(401));
        let www = ch
            .header("WWW-Authenticate")
            .expect("challenge")
            .to_string();
        ua.send(&in_dialog(
            "ACK",
            1,
            "auth1",
            &to_tag(&ch),
            "z9hG4bKau1",
            "UDP",
            via,
            "+15558888",
        ));
        // Wrong password: challenged again.
        let bad = digest::authorize(&www, "alice", "nope", "INVITE", "sip:+15558888@127.0.0.1")
            .expect("auth");
        ua.send(&first.replace("z9hG4bKau1", "z9hG4bKau2").replace(
            "CSeq: 1 INVITE",
            &format!("CSeq: 2 INVITE\r\nAuthorization: {bad}"),
        ));
        assert_eq!(ua.recv().status(), Some(401));
        // Right password: the call proceeds to the trunk, which challenges us in turn.
        let good = digest::authorize(
            &www,
            "alice",
            "wonderland",
            "INVITE",
            "sip:+15558888@127.0.0.1",
        )
        .expect("auth");
        ua.send(&first.replace("z9hG4bKau1", "z9hG4bKau3").replace(
            "CSeq: 1 INVITE",
            &format!("CSeq: 3 INVITE\r\nAuthorization: {good}"),
        ));
        let (inv, from) = callee.recv();
        assert!(inv.header("Authorization").is_none());
        let mut challenge = voxedge_sip_core::transaction::build_response(
            &inv,
            401,
            "Unauthorized",
            Some("trunk1"),
        );
        challenge.headers.insert(
            ezk_sip_types::Name::from(bytesstr::BytesStr::from_static("WWW-Authenticate")),
            bytesstr::BytesStr::from_static(
                "Digest realm=\"trunk\", nonce=\"abc123\", qop=\"auth\", algorithm=MD5",
            ),
        );
        callee
            .sock
            .send_to(&challenge.to_bytes(), from)
            .expect("401");
        let (ack, _) = callee.recv();
        assert_eq!(method_of(&ack), "ACK");
        let (inv2, from) = callee.recv();
        assert_eq!(inv2.header("CSeq"), Some("2 INVITE"));
        let auth = inv2.header("Authorization").expect("credentials");
        let p = digest::params(auth).expect("digest");
        let uri = p.get("uri").expect("uri");
        assert!(inv2
            .to_bytes()
            .starts_with(format!("INVITE {uri} SIP/2.0").as_bytes()));
        let expected = digest::response(
            "voxedge-trunk",
            "trunk",
            "s3cret",
            "INVITE",
            uri,
            "abc123",
            Some((p.get("nc").expect("nc"), p.get("cnonce").expect("cnonce"))),
        );
        assert_eq!(p.get("response"), Some(&expected));
        callee.reply(&inv2, 200, "OK", from, true);
        assert_eq!(ua.recv().status(), Some(200));
        let (ack2, _) = callee.recv();
        assert_eq!(
            ack2.header("CSeq"),
            Some("2 ACK"),
            "{}",
            String::from_utf8_lossy(&ack2.to_bytes())
        );
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

/// Hostile input on both transports: random datagrams, mutated SIP, oversized and endless TCP
/// streams. Nothing panics or hangs: OPTIONS is still answered afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_udp_and_tcp_does_not_hurt_the_service() {
    let r = start(26500).await;
    let (udp, tcp) = (r.sip_udp.expect("udp"), r.sip_tcp.expect("tcp"));
    let stats = r.sip_stats.clone().expect("stats");
    tokio::task::spawn_blocking(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let via = sock.local_addr().expect("a");
        let rtp = UdpSocket::bind("127.0.0.1:0")
            .expect("rtp")
            .local_addr()
            .expect("a");
        let valid = invite("echo", "z9hG4bKg", "garbage", rtp, "UDP", via).into_bytes();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..3000 {
            let mut d = if i % 2 == 0 {
                (0..(next() % 1500) as usize)
                    .map(|_| next() as u8)
                    .collect::<Vec<u8>>()
            } else {
                valid.clone()
            };
            if i % 2 == 1 {
                for _ in 0..(1 + next() % 8) {
                    let at = (next() as usize) % d.len();
                    d[at] = next() as u8;
                }
            }
            let _ = sock.send_to(&d, udp);
        }
        // TCP: a head that never ends (cut off at the size limit), then random bytes.
        for junk in [
            vec![b'A'; 200_000],
            (0..50_000).map(|_| next() as u8).collect(),
        ] {
            if let Ok(mut s) = TcpStream::connect(tcp) {
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(&junk);
            }
        }
        // Still serving.
        let ua = Udp { sock, server: udp };
        ua.sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("t");
        let mut answered = false;
        for attempt in 0..50 {
            ua.send(
                &in_dialog(
                    "OPTIONS",
                    1,
                    &format!("alive{attempt}"),
                    "x",
                    &format!("z9hG4bKal{attempt}"),
                    "UDP",
                    via,
                    "x",
                )
                .replace(";tag=x", ""),
            );
            let mut buf = [0u8; 65536];
            while let Ok((n, _)) = ua.sock.recv_from(&mut buf) {
                if let Ok(m) = SipMessage::parse(&buf[..n], &Limits::default()) {
                    if m.status() == Some(200)
                        && m.header("Call-ID") == Some(&format!("alive{attempt}"))
                    {
                        answered = true;
                    }
                }
            }
            if answered {
                break;
            }
        }
        assert!(answered, "OPTIONS answered after the garbage");
    })
    .await
    .expect("ua");
    assert!(stats.malformed.load(std::sync::atomic::Ordering::Relaxed) > 0);
    r.shutdown().await;
}

// --- SDP offer/answer, delayed offer, loops ---------------------------------------------------

/// An SDP body of the test's caller or callee: audio `formats` at `rtp`, and a video stream.
fn sdp_body(rtp: SocketAddr, formats: &str) -> String {
    let mut s = format!(
        "v=0\r\no=ua 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {}\r\nt=0 0\r\nm=audio {} RTP/AVP {formats}\r\n",
        rtp.ip(),
        rtp.port()
    );
    for f in formats.split_whitespace() {
        let enc = match f {
            "0" => "PCMU/8000",
            "8" => "PCMA/8000",
            _ => "telephone-event/8000",
        };
        s.push_str(&format!("a=rtpmap:{f} {enc}\r\n"));
    }
    s.push_str("a=ptime:20\r\nm=video 9000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n");
    s
}

fn body_text(m: &SipMessage) -> String {
    String::from_utf8(m.sdp().expect("an SDP body").to_vec()).expect("utf8")
}

/// Sends `body` as the response to `req` from the test's callee (tag `callee1`).
fn callee_reply(callee: &Callee, req: &SipMessage, code: u16, to: SocketAddr, body: &str) {
    let mut r = voxedge_sip_core::transaction::build_response(req, code, "OK", Some("callee1"));
    let contact = format!("<sip:callee@{}>", callee.sock.local_addr().expect("a"));
    r.headers.insert(
        ezk_sip_types::Name::CONTACT,
        bytesstr::BytesStr::from(contact),
    );
    r.headers.insert(
        ezk_sip_types::Name::CONTENT_TYPE,
        bytesstr::BytesStr::from_static("application/sdp"),
    );
    r.body = bytes::Bytes::from(body.to_string());
    callee.sock.send_to(&r.to_bytes(), to).expect("reply");
}

/// The test's caller: its SIP socket (5 s read timeout) talking to `server`, the address it
/// puts in Via, and its RTP socket (2 s read timeout).
fn ua(server: SocketAddr) -> (Udp, SocketAddr, UdpSocket) {
    let ua = Udp {
        sock: UdpSocket::bind("127.0.0.1:0").expect("bind"),
        server,
    };
    ua.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("t");
    let via = ua.sock.local_addr().expect("addr");
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    rtp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("t");
    (ua, via, rtp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_offers_its_codecs_and_answers_are_cut_to_the_offer() {
    let callee = Callee::new();
    let r = start_routed(26600, &callee, |c| {
        c.sip.routes[0].codecs = Some(vec!["PCMA".into()]);
    })
    .await;
    let server = r.sip_udp.expect("udp");
    let stats = r.sip_stats.clone().expect("stats");
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        let offer = sdp_body(rtp.local_addr().expect("a"), "0 8 101");
        ua.send(&invite_with(
            "+15550001",
            "z9hG4bKc1",
            "codecs1",
            "UDP",
            via,
            Some(&offer),
        ));
        // The callee is offered PCMA and telephone-event only; video is disabled.
        let (inv, from) = callee.recv();
        let sent = body_text(&inv);
        assert!(sent.contains(" RTP/AVP 8 101\r\n"), "{sent}");
        assert!(!sent.contains("a=rtpmap:0 "), "{sent}");
        assert!(sent.contains("m=video 0 RTP/AVP 96\r\n"), "{sent}");
        assert!(
            !sent.contains(&rtp.local_addr().expect("a").port().to_string()),
            "{sent}"
        );
        // It answers PCMA and PCMU (never offered): the caller gets PCMA only.
        let answer = sdp_body(callee.rtp.local_addr().expect("a"), "8 0")
            .replace("m=video 9000", "m=video 0");
        callee_reply(&callee, &inv, 200, from, &answer);
        let ok = ua.recv();
        assert_eq!(ok.status(), Some(200));
        let got = body_text(&ok);
        assert!(got.contains(" RTP/AVP 8\r\n"), "{got}");
        assert!(!got.contains("PCMU"), "{got}");
        assert!(got.contains("c=IN IP4 127.0.0.1\r\n"), "{got}");
        let (ack, _) = callee.recv();
        assert_eq!(method_of(&ack), "ACK");
        ua.send(&in_dialog(
            "ACK",
            1,
            "codecs1",
            &to_tag(&ok),
            "z9hG4bKc1a",
            "UDP",
            via,
            "+15550001",
        ));
        ua.send(&in_dialog(
            "BYE",
            2,
            "codecs1",
            &to_tag(&ok),
            "z9hG4bKc1b",
            "UDP",
            via,
            "+15550001",
        ));
        let (bye, from) = callee.recv();
        assert_eq!(method_of(&bye), "BYE");
        callee.reply(&bye, 200, "OK", from, false);
        assert_eq!(ua.recv().status(), Some(200));
        // An offer with none of the route's codecs: 488 with a warning, the callee never asked.
        let pcmu_only = sdp_body(rtp.local_addr().expect("a"), "0 101");
        ua.send(&invite_with(
            "+15550001",
            "z9hG4bKc2",
            "codecs2",
            "UDP",
            via,
            Some(&pcmu_only),
        ));
        let refused = ua.recv();
        assert_eq!(refused.status(), Some(488));
        let warning = refused.header("Warning").expect("a Warning header");
        assert!(
            warning.starts_with("305 voxedge \"no codec in common"),
            "{warning}"
        );
        ua.send(&in_dialog(
            "ACK",
            1,
            "codecs2",
            &to_tag(&refused),
            "z9hG4bKc2",
            "UDP",
            via,
            "+15550001",
        ));
        // Unparseable SDP: 488 as well.
        ua.send(&invite_with(
            "+15550001",
            "z9hG4bKc3",
            "codecs3",
            "UDP",
            via,
            Some("v=0\r\nm=audio x\r\n"),
        ));
        let bad = ua.recv();
        assert_eq!(bad.status(), Some(488));
        assert!(bad
            .header("Warning")
            .expect("warning")
            .starts_with("399 voxedge \"SDP"));
        callee
            .sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("t");
        let mut b = [0u8; 4096];
        assert!(
            callee.sock.recv_from(&mut b).is_err(),
            "refused offers never reach the callee"
        );
        assert_eq!(
            stats.sdp_refused.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(
            stats
                .answers_outside_offer
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_offer_is_routed_with_the_answer_in_the_acks() {
    let callee = Callee::new();
    let r = start_routed(26800, &callee, |_| {}).await;
    let server = r.sip_udp.expect("udp");
    let dp = r.dataplane.clone();
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        ua.send(&invite_with(
            "+15550002",
            "z9hG4bKd1",
            "delayed1",
            "UDP",
            via,
            None,
        ));
        // The callee gets an INVITE without SDP and offers in its 2xx.
        let (inv, from) = callee.recv();
        assert!(inv.body.is_empty(), "a delayed offer stays delayed");
        let offer = sdp_body(callee.rtp.local_addr().expect("a"), "0 101");
        callee_reply(&callee, &inv, 200, from, &offer);
        // The caller gets that offer on our address; the callee's ACK waits for the answer.
        let ok = ua.recv();
        assert_eq!(ok.status(), Some(200));
        let relayed = body_text(&ok);
        assert!(relayed.contains(" RTP/AVP 0 101\r\n"), "{relayed}");
        assert!(!relayed.contains(&callee.rtp.local_addr().expect("a").port().to_string()));
        let caller_to = answer_port(&ok);
        callee
            .sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("t");
        let mut b = [0u8; 4096];
        assert!(
            callee.sock.recv_from(&mut b).is_err(),
            "no ACK before the caller's answer"
        );
        callee
            .sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("t");
        let answer =
            sdp_body(rtp.local_addr().expect("a"), "0").replace("m=video 9000", "m=video 0");
        let ack = in_dialog(
            "ACK",
            1,
            "delayed1",
            &to_tag(&ok),
            "z9hG4bKd1a",
            "UDP",
            via,
            "+15550002",
        )
        .replace(
            "Content-Length: 0\r\n\r\n",
            &format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            ),
        );
        ua.send(&ack);
        let (b_ack, _) = callee.recv();
        assert_eq!(method_of(&b_ack), "ACK");
        let b_answer = body_text(&b_ack);
        assert!(b_answer.contains(" RTP/AVP 0\r\n"), "{b_answer}");
        assert!(!b_answer.contains(&rtp.local_addr().expect("a").port().to_string()));
        let callee_to = answer_port(&b_ack);
        // Media both ways through the relay, each side pointed by the other's SDP.
        assert_eq!(
            rtp_through(&rtp, caller_to, &callee.rtp, 1),
            (172, 1),
            "callee hears the caller"
        );
        assert_eq!(
            rtp_through(&callee.rtp, callee_to, &rtp, 2),
            (172, 2),
            "caller hears the callee"
        );
        ua.send(&in_dialog(
            "BYE",
            2,
            "delayed1",
            &to_tag(&ok),
            "z9hG4bKd1b",
            "UDP",
            via,
            "+15550002",
        ));
        let (bye, from) = callee.recv();
        assert_eq!(method_of(&bye), "BYE");
        callee.reply(&bye, 200, "OK", from, false);
        assert_eq!(ua.recv().status(), Some(200));
        // An ACK without the answer ends the call on both sides.
        ua.send(&invite_with(
            "+15550002",
            "z9hG4bKd2",
            "delayed2",
            "UDP",
            via,
            None,
        ));
        let (inv, from) = callee.recv();
        callee_reply(&callee, &inv, 200, from, &offer);
        let ok = ua.recv();
        assert_eq!(ok.status(), Some(200));
        ua.send(&in_dialog(
            "ACK",
            1,
            "delayed2",
            &to_tag(&ok),
            "z9hG4bKd2a",
            "UDP",
            via,
            "+15550002",
        ));
        let (b_ack, _) = callee.recv();
        assert_eq!(method_of(&b_ack), "ACK");
        let (b_bye, _) = callee.recv();
        assert_eq!(method_of(&b_bye), "BYE");
        let a_bye = ua.recv();
        assert_eq!(method_of(&a_bye), "BYE");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(dp.relay_count(), 0, "media released");
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_offer_to_echo_gets_our_offer() {
    let r = start(26200).await;
    let server = r.sip_udp.expect("udp");
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        ua.send(&invite_with(
            "echo",
            "z9hG4bKe1",
            "echo-delayed",
            "UDP",
            via,
            None,
        ));
        let ok = ua.recv();
        assert_eq!(ok.status(), Some(200));
        let offer = body_text(&ok);
        assert!(offer.contains(" RTP/AVP 0 8 101\r\n"), "{offer}");
        let answer = sdp_body(rtp.local_addr().expect("a"), "8");
        let ack = in_dialog(
            "ACK",
            1,
            "echo-delayed",
            &to_tag(&ok),
            "z9hG4bKe1a",
            "UDP",
            via,
            "echo",
        )
        .replace(
            "Content-Length: 0\r\n\r\n",
            &format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            ),
        );
        ua.send(&ack);
        echo_media(&ok, &rtp);
        ua.send(&in_dialog(
            "BYE",
            2,
            "echo-delayed",
            &to_tag(&ok),
            "z9hG4bKe1b",
            "UDP",
            via,
            "echo",
        ));
        assert_eq!(ua.recv().status(), Some(200));
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_are_answered_482() {
    // A dial plan that routes a number back to this node.
    let own: SocketAddr = "127.0.0.1:27990".parse().expect("addr");
    let mut c = routed(27800, own);
    c.sip.listen = own;
    let r = app::start(Role::Serve, c, BackendKind::Socket)
        .await
        .expect("start");
    let stats = r.sip_stats.clone().expect("stats");
    let dp = r.dataplane.clone();
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(own);
        ua.send(&invite(
            "+15550003",
            "z9hG4bKl1",
            "loop1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        ));
        let looped = ua.recv();
        assert_eq!(looped.status(), Some(482), "our own INVITE came back");
        ua.send(&in_dialog(
            "ACK",
            1,
            "loop1",
            &to_tag(&looped),
            "z9hG4bKl1",
            "UDP",
            via,
            "+15550003",
        ));
        // A merged request: the same INVITE (Call-ID, From tag, CSeq) on another branch while
        // the first is in progress.
        ua.send(&invite(
            "echo",
            "z9hG4bKm1",
            "merged1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        ));
        let ok = ua.recv();
        assert_eq!(ok.status(), Some(200));
        ua.send(&invite(
            "echo",
            "z9hG4bKm2",
            "merged1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        ));
        assert_eq!(ua.recv().status(), Some(482));
        ua.send(&in_dialog(
            "ACK",
            1,
            "merged1",
            &to_tag(&ok),
            "z9hG4bKm1a",
            "UDP",
            via,
            "echo",
        ));
        ua.send(&in_dialog(
            "BYE",
            2,
            "merged1",
            &to_tag(&ok),
            "z9hG4bKm1b",
            "UDP",
            via,
            "echo",
        ));
        assert_eq!(ua.recv().status(), Some(200));
        assert_eq!(
            stats
                .loops_detected
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(dp.relay_count(), 0, "media released");
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

/// Nothing arrives on `sock` within `wait` (a read timeout, not a message).
fn quiet_for(sock: &UdpSocket, wait: Duration) -> bool {
    sock.set_read_timeout(Some(wait)).expect("t");
    let mut b = [0u8; 65536];
    let got = sock.recv_from(&mut b);
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("t");
    got.is_err()
}

/// A BYE from us with the media-timeout `Reason`, answered 200 from `sock`.
fn media_timeout_bye(sock: &UdpSocket, server: SocketAddr) {
    let mut b = [0u8; 65536];
    let (n, _) = sock.recv_from(&mut b).expect("a BYE in time");
    let bye = SipMessage::parse(&b[..n], &Limits::default()).expect("valid");
    assert_eq!(method_of(&bye), "BYE");
    let reason = bye.header("Reason").expect("a Reason header");
    assert!(reason.contains("media timeout"), "{reason}");
    let ok = voxedge_sip_core::transaction::build_response(&bye, 200, "OK", None);
    sock.send_to(&ok.to_bytes(), server).expect("200");
}

/// `[sip] media_timeout_secs`: a routed call stays up while one side still sends (the callee
/// is silent for twice the timeout), and is hung up on both legs, with a `Reason`, once both
/// are silent for the timeout — not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_routed_call_is_hung_up_on_both_legs() {
    let callee = Callee::new();
    let r = start_routed(27300, &callee, |c| {
        c.dataplane.media_timeout_ms = 300;
        c.sip.media_timeout_secs = 1;
    })
    .await;
    let server = r.sip_udp.expect("udp");
    let stats = r.sip_stats.clone().expect("stats");
    let dp = r.dataplane.clone();
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        let Answered { a_port, .. } = answered_call(&ua, via, &rtp, &callee, "silent1");
        // Two seconds of the caller's media only.
        callee
            .rtp
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("t");
        let mut b = [0u8; 2048];
        let mut heard = 0;
        for seq in 0..20u16 {
            rtp.send_to(&rtp_packet(seq), ("127.0.0.1", a_port))
                .expect("rtp");
            if callee.rtp.recv_from(&mut b).is_ok() {
                heard += 1;
            }
        }
        assert!(heard >= 15, "the callee hears the caller ({heard} of 20)");
        let silent_from = Instant::now();
        assert!(
            quiet_for(&ua.sock, Duration::from_millis(50)),
            "no BYE while the caller talks"
        );
        assert!(quiet_for(&callee.sock, Duration::from_millis(50)));
        assert_eq!(
            stats
                .media_timeouts
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        // Now both are silent: each leg gets a BYE a second later.
        media_timeout_bye(&ua.sock, server);
        let waited = silent_from.elapsed();
        assert!(
            waited >= Duration::from_millis(800),
            "hung up after {waited:?} of silence"
        );
        media_timeout_bye(&callee.sock, server);
        assert_eq!(
            stats
                .media_timeouts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(dp.relay_count(), 0, "media released");
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

/// A call put on hold (`a=inactive`) is silent by design: the media timeout passes it by and
/// the longer `hold_timeout_secs` ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_call_is_hung_up_after_the_hold_timeout_only() {
    let r = start_with(19300, |c| {
        c.dataplane.media_timeout_ms = 300;
        c.sip.media_timeout_secs = 1;
        c.sip.hold_timeout_secs = 3;
    })
    .await;
    let server = r.sip_udp.expect("udp");
    let stats = r.sip_stats.clone().expect("stats");
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        ua.send(&invite(
            "echo",
            "z9hG4bKh1",
            "held1",
            rtp.local_addr().expect("a"),
            "UDP",
            via,
        ));
        let ok = ua.recv();
        assert_eq!(ok.status(), Some(200));
        let tag = to_tag(&ok);
        ua.send(&in_dialog(
            "ACK",
            1,
            "held1",
            &tag,
            "z9hG4bKh1a",
            "UDP",
            via,
            "echo",
        ));
        echo_media(&ok, &rtp);
        let port = rtp.local_addr().expect("a").port();
        ua.send(&reinvite(
            2,
            "held1",
            &tag,
            "z9hG4bKh2",
            via,
            port,
            "inactive",
        ));
        let held = ua.recv();
        assert_eq!(held.status(), Some(200));
        assert!(body_text(&held).contains("a=inactive"));
        ua.send(&in_dialog(
            "ACK",
            2,
            "held1",
            &tag,
            "z9hG4bKh2a",
            "UDP",
            via,
            "echo",
        ));
        let silent_from = Instant::now();
        assert!(
            quiet_for(&ua.sock, Duration::from_millis(2000)),
            "no BYE at twice the media timeout while held"
        );
        assert_eq!(
            stats
                .media_timeouts
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        media_timeout_bye(&ua.sock, server);
        let waited = silent_from.elapsed();
        assert!(
            waited >= Duration::from_millis(2500),
            "hung up after {waited:?} on hold"
        );
        assert_eq!(
            stats
                .media_timeouts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    })
    .await
    .expect("ua");
    r.shutdown().await;
}

/// A graceful stop hangs up both legs of a routed call, not only the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_hangs_up_both_legs_of_routed_calls() {
    let callee = Callee::new();
    let r = start_routed(19400, &callee, |_| {}).await;
    let server = r.sip_udp.expect("udp");
    let (ua, callee, inv) = tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        let call = answered_call(&ua, via, &rtp, &callee, "stop1");
        (ua, callee, call.inv)
    })
    .await
    .expect("ua");
    r.shutdown().await;
    tokio::task::spawn_blocking(move || {
        let caller_bye = ua.recv();
        assert_eq!(method_of(&caller_bye), "BYE");
        let (callee_bye, _) = callee.recv();
        assert_eq!(method_of(&callee_bye), "BYE");
        assert_eq!(
            callee_bye.header("Call-ID"),
            inv.header("Call-ID"),
            "the BYE is in the callee's dialog"
        );
    })
    .await
    .expect("byes");
}

/// A routed call's relay is made without waiting for the dataplane worker; when the worker
/// cannot open a port (another program holds it) the caller gets 503 with Retry-After, the
/// callee's INVITE is canceled, and the ports serve the next call once they are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_the_worker_cannot_open_fails_the_routed_call_cleanly() {
    let blocker = UdpSocket::bind("127.0.0.1:19500").expect("bind blocker");
    let callee = Callee::new();
    let r = start_routed(19500, &callee, |c| {
        c.dataplane.port_max = 19503; // one relay: RTP and RTCP on each leg
    })
    .await;
    let server = r.sip_udp.expect("udp");
    let stats = r.sip_stats.clone().expect("stats");
    let dp = r.dataplane.clone();
    tokio::task::spawn_blocking(move || {
        let (ua, via, rtp) = ua(server);
        let a = rtp.local_addr().expect("a");
        ua.send(&invite(
            "+15550100",
            "z9hG4bKbl1",
            "blocked1",
            a,
            "UDP",
            via,
        ));
        let refused = ua.recv();
        assert_eq!(refused.status(), Some(503), "{refused:?}");
        assert!(refused.header("Retry-After").is_some());
        // The callee got the INVITE (it left before the worker answered), then its CANCEL.
        let (inv, from) = callee.recv();
        assert_eq!(method_of(&inv), "INVITE");
        let (cancel, _) = callee.recv();
        assert_eq!(method_of(&cancel), "CANCEL");
        callee.reply(&cancel, 200, "OK", from, false);
        callee.reply(&inv, 487, "Request Terminated", from, false);
        let (ack_487, _) = callee.recv();
        assert_eq!(method_of(&ack_487), "ACK");
        let ack = in_dialog(
            "ACK",
            1,
            "blocked1",
            &to_tag(&refused),
            "z9hG4bKbl1",
            "UDP",
            via,
            "+15550100",
        );
        ua.send(&ack);
        assert_eq!(
            stats
                .calls_without_media
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(dp.relay_count(), 0, "the failed relay is gone");
        // With the port free again the same ports carry the next call.
        drop(blocker);
        let Answered { a_port, .. } = answered_call(&ua, via, &rtp, &callee, "blocked2");
        assert!((19500..=19503).contains(&a_port), "{a_port}");
        assert_eq!(rtp_through(&rtp, a_port, &callee.rtp, 1), (172, 1));
    })
    .await
    .expect("ua");
    r.shutdown().await;
}
