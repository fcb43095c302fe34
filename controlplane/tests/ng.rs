//! The rtpengine-compatible ng listener of `voxedge media`, driven over UDP and TCP with
//! bencode and JSON as Kamailio's module would: offer/answer with real RTP both ways through
//! the rewritten SDP, query and delete statistics, block media, list, statistics,
//! retransmissions answered from the cache, and hostile requests answered with errors.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use voxedge_controlplane::app::{self, Role, Running};
use voxedge_controlplane::config::Config;
use voxedge_controlplane::ng::bencode::{self, Value};
use voxedge_dataplane::BackendKind;

mod common;

fn config(port_min: u16) -> Config {
    let mut c = Config::default();
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.management.listen = "127.0.0.1:0".parse().expect("addr");
    c.ng.listen = "127.0.0.1:0".parse().expect("addr");
    c.dataplane.workers = 1;
    c.dataplane.pin_cores = false;
    c.dataplane.bind = "127.0.0.1".parse().expect("ip");
    c.dataplane.advertise = Some("127.0.0.1".parse().expect("ip"));
    c.dataplane.port_min = port_min;
    c.dataplane.port_max = port_min + 99;
    c.dataplane.idle_wait_us = 200;
    c
}

struct Ng {
    sock: UdpSocket,
    server: SocketAddr,
    n: u32,
}

impl Ng {
    fn new(server: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Ng { sock, server, n: 0 }
    }

    fn raw(&self, data: &[u8]) -> Vec<u8> {
        self.sock.send_to(data, self.server).expect("send");
        let mut buf = vec![0u8; 65536];
        let (n, _) = self.sock.recv_from(&mut buf).expect("a reply in time");
        buf.truncate(n);
        buf
    }

    /// Sends `req` with a fresh cookie; returns the decoded reply.
    fn call(&mut self, req: &Value) -> Value {
        self.n += 1;
        let cookie = format!("c{}_{}", std::process::id(), self.n);
        let mut data = format!("{cookie} ").into_bytes();
        data.extend(req.encode());
        let reply = self.raw(&data);
        let rest = reply
            .strip_prefix(format!("{cookie} ").as_bytes())
            .expect("the reply echoes the cookie");
        bencode::decode(rest).expect("the reply is bencode")
    }
}

fn s(v: &str) -> Value {
    Value::str(v)
}

fn result(v: &Value) -> String {
    v.get("result").and_then(Value::as_text).unwrap_or_default()
}

fn sdp_port(v: &Value) -> u16 {
    let sdp = v
        .get("sdp")
        .and_then(Value::as_text)
        .expect("sdp in the reply");
    assert!(sdp.contains("c=IN IP4 127.0.0.1"), "{sdp}");
    assert!(sdp.contains("a=rtcp:"), "{sdp}");
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .expect("m=audio port")
}

fn party_sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0xd5; 160]);
    p
}

/// The caller's and the callee's RTP sockets (2 s read timeout) and their ports.
fn parties() -> (UdpSocket, UdpSocket, u16, u16) {
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    let callee = UdpSocket::bind("127.0.0.1:0").expect("callee rtp");
    for sock in [&caller, &callee] {
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
    }
    let cport = caller.local_addr().expect("a").port();
    let eport = callee.local_addr().expect("a").port();
    (caller, callee, cport, eport)
}

async fn start(port_min: u16) -> Running {
    app::start(Role::Media, config(port_min), BackendKind::Socket)
        .await
        .expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_answer_media_query_block_delete() {
    let r = start(30800).await;
    let server = r.ng.expect("ng listener");
    tokio::task::spawn_blocking(move || {
        let mut ng = Ng::new(server);
        assert_eq!(
            result(&ng.call(&Value::dict([("command", s("ping"))]))),
            "pong"
        );
        let (caller, callee, cport, eport) = parties();
        let offer = ng.call(&Value::dict([
            ("command", s("offer")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagA")),
            ("sdp", s(&party_sdp(cport))),
            ("flags", Value::List(vec![s("trust-address")])),
            (
                "replace",
                Value::List(vec![s("origin"), s("session-connection")]),
            ),
            ("ICE", s("remove")),
            ("label", s("caller")),
        ]));
        assert_eq!(result(&offer), "ok", "{offer}");
        let to_callee = sdp_port(&offer);
        let answer = ng.call(&Value::dict([
            ("command", s("answer")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagA")),
            ("to-tag", s("tagB")),
            ("sdp", s(&party_sdp(eport))),
        ]));
        assert_eq!(result(&answer), "ok", "{answer}");
        let to_caller = sdp_port(&answer);
        assert_ne!(to_caller, to_callee);
        // Media both ways through the relay.
        let mut buf = [0u8; 2048];
        for seq in 0..5u16 {
            caller
                .send_to(&rtp(seq), ("127.0.0.1", to_caller))
                .expect("send");
            let (n, from) = callee
                .recv_from(&mut buf)
                .expect("the callee gets the caller's RTP");
            assert_eq!((n, from.port()), (172, to_callee));
            callee
                .send_to(&rtp(100 + seq), ("127.0.0.1", to_callee))
                .expect("send");
            let (n, from) = caller
                .recv_from(&mut buf)
                .expect("the caller gets the callee's RTP");
            assert_eq!((n, from.port()), (172, to_caller));
        }
        let q = ng.call(&Value::dict([
            ("command", s("query")),
            ("call-id", s("call-1@test")),
        ]));
        assert_eq!(result(&q), "ok", "{q}");
        let rtp_packets = q
            .get("totals")
            .and_then(|t| t.get("RTP"))
            .and_then(|t| t.get("packets"))
            .and_then(Value::as_int);
        assert_eq!(rtp_packets, Some(10), "{q}");
        let tag_a = q
            .get("tags")
            .and_then(|t| t.get("tagA"))
            .expect("tagA in tags");
        assert_eq!(
            tag_a.get("label").and_then(Value::as_text).as_deref(),
            Some("caller")
        );
        assert!(q.get("tags").and_then(|t| t.get("tagB")).is_some(), "{q}");
        // play media: a WAV blob played to the caller (from-tag tagA) in the call's codec
        // (PCMU, the answer's first), out of the port the caller sends to; stop media ends it.
        let mut wav =
            b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x80\x3e\0\0\x02\0\x10\0data"
                .to_vec();
        let samples = 8000 * 2; // two seconds of silence at 8 kHz
        wav.extend_from_slice(&(samples as u32 * 2).to_le_bytes());
        wav.extend(std::iter::repeat_n(0u8, samples * 2));
        let play = ng.call(&Value::dict([
            ("command", s("play media")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagA")),
            ("blob", Value::Bytes(wav)),
        ]));
        assert_eq!(result(&play), "ok", "{play}");
        assert_eq!(play.get("duration").and_then(Value::as_int), Some(2000));
        for _ in 0..3 {
            let (n, from) = caller
                .recv_from(&mut buf)
                .expect("played media reaches the caller");
            assert_eq!((n, from.port()), (172, to_caller));
            assert_eq!(buf[1] & 0x7f, 0, "PCMU");
            assert!(buf[12..172].iter().all(|b| *b == 0xff), "µ-law silence");
        }
        let stop = ng.call(&Value::dict([
            ("command", s("stop media")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagA")),
        ]));
        assert_eq!(result(&stop), "ok", "{stop}");
        let again = ng.call(&Value::dict([
            ("command", s("stop media")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagA")),
        ]));
        assert_eq!(result(&again), "error", "{again}");
        for (k, v, want) in [
            ("blob", Value::Bytes(b"not a wav".to_vec()), "WAV"),
            ("file", s("/nonexistent/prompt.wav"), "cannot read"),
        ] {
            let bad = ng.call(&Value::dict([
                ("command", s("play media")),
                ("call-id", s("call-1@test")),
                ("from-tag", s("tagA")),
                (k, v),
            ]));
            assert_eq!(result(&bad), "error", "{bad}");
            assert!(
                bad.get("error-reason")
                    .and_then(Value::as_text)
                    .unwrap_or_default()
                    .contains(want),
                "{bad}"
            );
        }
        caller
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("t");
        while caller.recv_from(&mut buf).is_ok() {}
        caller
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
        // Block the caller's media: nothing reaches the callee; unblock: it flows again.
        let b = ng.call(&Value::dict([
            ("command", s("BLOCK MEDIA")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagA")),
        ]));
        assert_eq!(result(&b), "ok", "{b}");
        caller
            .send_to(&rtp(50), ("127.0.0.1", to_caller))
            .expect("send");
        callee
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("t");
        assert!(
            callee.recv_from(&mut buf).is_err(),
            "blocked media is not forwarded"
        );
        let u = ng.call(&Value::dict([
            ("command", s("unblock media")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagA")),
        ]));
        assert_eq!(result(&u), "ok");
        caller
            .send_to(&rtp(51), ("127.0.0.1", to_caller))
            .expect("send");
        callee
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
        assert!(callee.recv_from(&mut buf).is_ok(), "unblocked media flows");
        // A re-INVITE from the callee moves its address.
        let callee2 = UdpSocket::bind("127.0.0.1:0").expect("new callee port");
        callee2
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
        let re = ng.call(&Value::dict([
            ("command", s("offer")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagB")),
            ("to-tag", s("tagA")),
            (
                "sdp",
                s(&party_sdp(callee2.local_addr().expect("a").port())),
            ),
        ]));
        assert_eq!(
            sdp_port(&re),
            to_caller,
            "the callee's re-offer goes to the caller"
        );
        caller
            .send_to(&rtp(60), ("127.0.0.1", to_caller))
            .expect("send");
        assert!(
            callee2.recv_from(&mut buf).is_ok(),
            "media follows the re-offer"
        );
        // The caller answers that re-offer (from-tag = callee, to-tag = caller) from a new
        // port: its leg moves, the reply carries the callee's port.
        let caller2 = UdpSocket::bind("127.0.0.1:0").expect("new caller port");
        caller2
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
        let re_answer = ng.call(&Value::dict([
            ("command", s("answer")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagB")),
            ("to-tag", s("tagA")),
            (
                "sdp",
                s(&party_sdp(caller2.local_addr().expect("a").port())),
            ),
        ]));
        assert_eq!(sdp_port(&re_answer), to_callee, "{re_answer}");
        callee2
            .send_to(&rtp(70), ("127.0.0.1", to_callee))
            .expect("send");
        assert!(
            caller2.recv_from(&mut buf).is_ok(),
            "the callee's media reaches the caller's new port"
        );
        // A failed parallel fork's delete (another to-tag) leaves the answered call alone.
        let fork = ng.call(&Value::dict([
            ("command", s("delete")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagA")),
            ("to-tag", s("tagC")),
        ]));
        assert!(fork.get("warning").is_some(), "{fork}");
        let still = ng.call(&Value::dict([
            ("command", s("query")),
            ("call-id", s("call-1@test")),
        ]));
        assert_eq!(result(&still), "ok");
        // list, statistics.
        let l = ng.call(&Value::dict([("command", s("list"))]));
        assert_eq!(
            l.get("calls").map(Value::as_texts),
            Some(vec!["call-1@test".to_string()])
        );
        let st = ng.call(&Value::dict([("command", s("statistics"))]));
        assert_eq!(result(&st), "ok", "{st}");
        // delete answers the final statistics; the call and its ports are gone.
        let d = ng.call(&Value::dict([
            ("command", s("delete")),
            ("call-id", s("call-1@test")),
            ("from-tag", s("tagA")),
        ]));
        assert_eq!(result(&d), "ok", "{d}");
        assert!(d.get("totals").is_some());
        let again = ng.call(&Value::dict([
            ("command", s("query")),
            ("call-id", s("call-1@test")),
        ]));
        assert_eq!(result(&again), "error");
        // A second delete (Kamailio sends two after a CANCEL) is ok with a warning.
        let d2 = ng.call(&Value::dict([
            ("command", s("delete")),
            ("call-id", s("call-1@test")),
        ]));
        assert_eq!(result(&d2), "ok");
        assert!(d2.get("warning").is_some());
    })
    .await
    .expect("client");
    assert_eq!(r.dataplane.relay_count(), 0, "no relay left behind");
    r.shutdown().await;
}

/// An RTP packet with payload type `pt`, timestamp `ts` and 160 payload bytes `byte`.
fn rtp_with(pt: u8, seq: u16, ts: u32, byte: u8) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0x56, 0x78];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&[byte; 160]);
    p
}

/// µ-law decoding of one byte (ITU-T G.711), for checking recorded samples.
fn ulaw(b: u8) -> i16 {
    let b = !b;
    let t = ((i16::from(b & 0x0f) << 3) + 0x84) << ((b & 0x70) >> 4);
    if b & 0x80 != 0 {
        0x84 - t
    } else {
        t - 0x84
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_dtmf_and_call_recording() {
    let dir = std::env::temp_dir().join(format!("voxedge-ng-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = config(31500);
    c.ng.recording_dir = dir.to_string_lossy().into_owned();
    let r = app::start(Role::Media, c, BackendKind::Socket)
        .await
        .expect("start");
    let server = r.ng.expect("ng listener");
    let dir2 = dir.clone();
    tokio::task::spawn_blocking(move || {
        let dir = dir2;
        let mut ng = Ng::new(server);
        let (caller, callee, cport, eport) = parties();
        let set_up = |ng: &mut Ng, id: &str, caller_sdp: &str, callee_sdp: &str, extra: Option<(&str, Value)>| {
            let mut offer = Value::dict([
                ("command", s("offer")),
                ("call-id", s(id)),
                ("from-tag", s("tagA")),
                ("sdp", s(caller_sdp)),
            ]);
            if let Some((k, v)) = extra {
                offer.set(k, v);
            }
            let offer = ng.call(&offer);
            assert_eq!(result(&offer), "ok", "{offer}");
            let answer = ng.call(&Value::dict([
                ("command", s("answer")),
                ("call-id", s(id)),
                ("from-tag", s("tagA")),
                ("to-tag", s("tagB")),
                ("sdp", s(callee_sdp)),
            ]));
            assert_eq!(result(&answer), "ok", "{answer}");
            (sdp_port(&answer), sdp_port(&offer))
        };
        let dtmf = |ng: &mut Ng, id: &str, code: Value| {
            ng.call(&Value::dict([
                ("command", s("play DTMF")),
                ("call-id", s(id)),
                ("from-tag", s("tagA")),
                ("code", code),
                ("duration", Value::Int(100)),
            ]))
        };
        let mut buf = [0u8; 2048];

        // telephone-event negotiated: the caller "presses" 5, the callee gets RFC 4733 events
        // out of the port it receives the caller's media from.
        let (to_caller, to_callee) =
            set_up(&mut ng, "dtmf-1", &party_sdp(cport), &party_sdp(eport), None);
        let d = dtmf(&mut ng, "dtmf-1", s("5"));
        assert_eq!(result(&d), "ok", "{d}");
        let mut events = Vec::new();
        while events.last().is_none_or(|(_, end, _)| !end) && events.len() < 20 {
            let (n, from) = callee.recv_from(&mut buf).expect("the callee gets the key");
            assert_eq!((n, from.port()), (16, to_callee));
            assert_eq!(buf[1] & 0x7f, 101, "telephone-event");
            events.push((buf[12], buf[13] & 0x80 != 0, buf[1] & 0x80 != 0));
        }
        assert!(events.iter().all(|(e, _, _)| *e == 5), "{events:?}");
        assert!(events[0].2, "the first packet of the event carries the marker");
        assert!(events.last().is_some_and(|(_, end, _)| *end), "{events:?}");
        // By event number too; codes outside 0-9*#A-D and 0-15 are refused.
        assert_eq!(result(&dtmf(&mut ng, "dtmf-1", Value::Int(11))), "ok");
        for bad in [s("X"), s("12"), Value::Int(16), Value::Int(-1)] {
            let e = dtmf(&mut ng, "dtmf-1", bad);
            assert_eq!(result(&e), "error", "{e}");
        }
        let e = ng.call(&Value::dict([
            ("command", s("play DTMF")),
            ("call-id", s("dtmf-1")),
            ("from-tag", s("tagA")),
        ]));
        assert!(
            e.get("error-reason").and_then(Value::as_text).unwrap_or_default().contains("code"),
            "{e}"
        );

        // Recording: both parties' audio, each on its own channel of one WAV.
        callee.set_read_timeout(Some(Duration::from_millis(300))).expect("t");
        while callee.recv_from(&mut buf).is_ok() {}
        let rec = ng.call(&Value::dict([
            ("command", s("start recording")),
            ("call-id", s("dtmf-1")),
        ]));
        assert_eq!(result(&rec), "ok", "{rec}");
        callee.set_read_timeout(Some(Duration::from_secs(2))).expect("t");
        for i in 0..25u16 {
            let ts = u32::from(i) * 160;
            caller
                .send_to(&rtp_with(0, i, 1000 + ts, 0x10), ("127.0.0.1", to_caller))
                .expect("send");
            callee.recv_from(&mut buf).expect("relayed");
            callee
                .send_to(&rtp_with(0, i, 9000 + ts, 0x90), ("127.0.0.1", to_callee))
                .expect("send");
            caller.recv_from(&mut buf).expect("relayed");
            std::thread::sleep(Duration::from_millis(20));
        }
        for (cmd, want) in [
            ("pause recording", "ok"),
            ("start recording", "ok"),
            ("stop recording", "ok"),
            ("stop recording", "error"),
            ("pause recording", "error"),
        ] {
            let r = ng.call(&Value::dict([("command", s(cmd)), ("call-id", s("dtmf-1"))]));
            assert_eq!(result(&r), want, "{cmd}: {r}");
        }
        let wav_files = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
            let mut v: Vec<_> = std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            v.retain(|p| p.extension().is_some_and(|e| e == "wav"));
            v.sort();
            v
        };
        let mut files = Vec::new();
        for _ in 0..50 {
            files = wav_files(&dir);
            if !files.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(files.len(), 1, "{files:?}");
        let wav = std::fs::read(&files[0]).expect("the recording");
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2, "stereo");
        let frames: Vec<(i16, i16)> = wav[44..]
            .chunks_exact(4)
            .map(|c| (i16::from_le_bytes([c[0], c[1]]), i16::from_le_bytes([c[2], c[3]])))
            .collect();
        let left = frames.iter().filter(|(l, _)| *l == ulaw(0x10)).count();
        let right = frames.iter().filter(|(_, r)| *r == ulaw(0x90)).count();
        assert_eq!((left, right), (25 * 160, 25 * 160), "each party on its own channel");
        assert!(frames.iter().all(|(l, r)| *l != ulaw(0x90) && *r != ulaw(0x10)));

        // No telephone-event: an in-band tone in the call's codec (PCMU).
        let g711_only = |port: u16| {
            format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            )
        };
        // record-call on the offer records from the start; delete completes the file.
        let (_, to_callee) = set_up(
            &mut ng,
            "dtmf-2",
            &g711_only(cport),
            &g711_only(eport),
            Some(("record-call", s("yes"))),
        );
        let d = dtmf(&mut ng, "dtmf-2", s("#"));
        assert_eq!(result(&d), "ok", "{d}");
        let (n, from) = callee.recv_from(&mut buf).expect("the callee gets the tone");
        assert_eq!((n, from.port(), buf[1] & 0x7f), (172, to_callee, 0));
        assert!(buf[12..172].iter().any(|b| *b != 0xff), "a tone, not silence");
        let del = ng.call(&Value::dict([("command", s("delete")), ("call-id", s("dtmf-2"))]));
        assert_eq!(result(&del), "ok", "{del}");
        for _ in 0..50 {
            if wav_files(&dir).len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(wav_files(&dir).len(), 2, "record-call's recording completed on delete");
        let parts: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
            .collect();
        assert!(parts.is_empty(), "{parts:?}");
    })
    .await
    .expect("ng client");
    let metrics = common::metrics(r.admin).await;
    for line in [
        "voxedge_ng_recordings_completed_total 2",
        "voxedge_ng_recordings_active 0",
        "voxedge_ng_recordings_failed_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    r.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmissions_json_tcp_and_hostile_requests() {
    let r = start(30900).await;
    let server = r.ng.expect("ng listener");
    let tcp = r.ng.expect("ng listener");
    let stats = r.ng_stats.clone().expect("stats");
    let dp = r.dataplane.clone();
    tokio::task::spawn_blocking(move || {
        let ng = Ng::new(server);
        // The same cookie twice: one call, the same reply.
        let mut req = b"retx1 ".to_vec();
        req.extend(
            Value::dict([
                ("command", s("offer")),
                ("call-id", s("retx")),
                ("from-tag", s("a")),
                ("sdp", s(&party_sdp(40000))),
            ])
            .encode(),
        );
        let first = ng.raw(&req);
        let second = ng.raw(&req);
        assert_eq!(first, second);
        assert_eq!(
            dp.relay_count(),
            1,
            "a retransmission does not create a second relay"
        );
        // JSON in, JSON out.
        let j = ng.raw(br#"js1 {"command":"ping"}"#);
        assert_eq!(String::from_utf8_lossy(&j), r#"js1 {"result":"pong"}"#);
        // Errors, never silence or a crash.
        let errors: Vec<(&[u8], &str)> = vec![
            (b"e1 d7:command", "bencode"),
            (b"e2 i42e", "dictionary"),
            (b"e3 d7:command7:nothinge", "Unrecognized"),
            (b"e4 d7:command5:offere", "call-id"),
            (b"e5 d7:command5:offer7:call-id1:x8:from-tag1:ye", "SDP"),
            (
                b"e6 d7:command6:answer7:call-id7:unknown8:from-tag1:x6:to-tag1:y3:sdp3:v=0e",
                "SDP",
            ),
            (b"e7 d7:command9:play DTMF7:call-id4:retxe", "from-tag"),
            (
                b"e7b d7:command16:start forwarding7:call-id4:retxe",
                "not supported",
            ),
            (
                b"e7c d7:command14:stop recording7:call-id4:retxe",
                "not being recorded",
            ),
            (b"e8 {not json", "JSON"),
            (b"e9 d7:command5:query7:call-id7:missinge", "Unknown"),
        ];
        for (data, want) in errors {
            let reply = ng.raw(data);
            let text = String::from_utf8_lossy(&reply).to_string();
            assert!(
                text.contains("error") && text.contains(want),
                "{}: {text}",
                String::from_utf8_lossy(data)
            );
        }
        // An SDP of 60 KB with a bad audio line: an error reply, not a crash.
        let huge = format!("v=0\r\n{}m=audio x RTP/AVP 0\r\n", "a=x\r\n".repeat(12_000));
        let mut data = b"big ".to_vec();
        data.extend(
            Value::dict([
                ("command", s("offer")),
                ("call-id", s("big")),
                ("from-tag", s("a")),
                ("sdp", s(&huge)),
            ])
            .encode(),
        );
        let reply = ng.raw(&data);
        assert!(String::from_utf8_lossy(&reply).contains("error-reason"));
        // Random garbage datagrams are dropped (counted); the listener still answers.
        for i in 0..200u32 {
            let g: Vec<u8> = (0..(i % 97)).map(|k| (k * 31 + i) as u8).collect();
            ng.sock.send_to(&g, server).expect("send");
        }
        let j = ng.raw(br#"js2 {"command":"ping"}"#);
        assert!(String::from_utf8_lossy(&j).contains("pong"));
        // TCP: two requests in one write, a third split across writes.
        let mut t = std::net::TcpStream::connect(tcp).expect("tcp");
        t.set_read_timeout(Some(Duration::from_secs(5))).expect("t");
        t.write_all(b"t1 d7:command4:pinge t2 d7:command4:pinge")
            .expect("write");
        t.write_all(b"t3 d7:comm").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        t.write_all(b"and4:pinge").expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.len() < 3 * "tX d6:result4:ponge".len() {
            let n = t.read(&mut buf).expect("read");
            assert!(n > 0, "connection closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            "t1 d6:result4:ponget2 d6:result4:ponget3 d6:result4:ponge"
        );
        let d = ng.raw(b"del1 d7:command6:delete7:call-id4:retxe");
        assert!(
            String::from_utf8_lossy(&d).contains("d6:result2:ok"),
            "{}",
            String::from_utf8_lossy(&d)
        );
    })
    .await
    .expect("client");
    use std::sync::atomic::Ordering::Relaxed;
    assert!(stats.retransmissions.load(Relaxed) >= 1);
    assert!(stats.malformed.load(Relaxed) >= 100, "garbage is counted");
    assert_eq!(r.dataplane.relay_count(), 0);
    r.shutdown().await;
}

/// `voxedge bench vs-rtpengine` runs the same ng workload on rtpengine (from apt) and on
/// voxedge and reports both, with the ratios.
#[test]
fn side_by_side_bench_reports_both_targets() {
    // rtpengine comes from apt (scripts/test installs rtpengine-daemon).
    let v = common::bench_json(&[
        "vs-rtpengine",
        "--loads",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--max-factor",
        "2",
        "--overload-factor",
        "3",
        "--recovery",
        "1",
        "--json",
    ]);
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{v}");
    for r in results {
        let phases = r["phases"].as_array().expect("phases");
        assert_eq!(phases.len(), 4, "paced, max-rate, overload, after: {r}");
        let paced = &phases[0];
        assert!(
            paced["loss_ratio"].as_f64().expect("loss") < 0.05,
            "{} loses packets at 20 calls: {paced}",
            r["target"]
        );
        assert!(r["setup_calls_per_s"].as_f64().expect("setup") > 0.0);
    }
    assert_eq!(
        v["voxedge_vs_rtpengine"].as_array().map(Vec::len),
        Some(4),
        "{v}"
    );
}
