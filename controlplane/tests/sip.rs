//! `voxedge serve`'s SIP service end to end, with a small user agent written here: the `echo`
//! target answers and echoes RTP through the dataplane (UDP and TCP signalling), `hangup`
//! answers and sends BYE, OPTIONS is answered, unknown targets get 404, bad requests 400,
//! malformed datagrams are dropped and counted, and BYE ends the media.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use voxedge_controlplane::app::{self, Role, Running};
use voxedge_controlplane::config::Config;
use voxedge_dataplane::BackendKind;
use voxedge_sip_core::{Framer, Limits, SipMessage};

fn config(port_min: u16) -> Config {
    let mut c = Config::default();
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.sip.listen = "127.0.0.1:0".parse().expect("addr");
    c.dataplane.workers = 1;
    c.dataplane.pin_cores = false;
    c.dataplane.bind = "127.0.0.1".parse().expect("ip");
    c.dataplane.port_min = port_min;
    c.dataplane.port_max = port_min + 99;
    c.dataplane.idle_wait_us = 200;
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
    format!(
        "INVITE sip:{user}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {via};branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:tester@127.0.0.1>;tag=ua1\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:tester@{via}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
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
    app::start(Role::Serve, config(port_min), BackendKind::Socket)
        .await
        .expect("serve starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_call_over_udp_with_media_and_bye() {
    let r = start(32600).await;
    let server = r.sip_udp.expect("udp");
    let stats = r.sip_stats.clone().expect("stats");
    let dp = r.dataplane.clone();
    tokio::task::spawn_blocking(move || {
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
    let r = start(32700).await;
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
        assert_eq!(
            bye.method().map(ToString::to_string).as_deref(),
            Some("BYE")
        );
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
