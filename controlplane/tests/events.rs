//! The account event stream (`GET /v1/Accounts/{AccountSid}/Events`, server-sent events): an
//! outbound call that a scripted callee refuses shows up as `call.initiated`, the failure
//! notification and `call.completed` on its account's stream, not on another account's; the
//! stream needs credentials, refuses unknown parameters and an eleventh stream, and ends when
//! the node stops (so shutdown does not wait on it).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use voxedge_controlplane::app::{self, Role};
use voxedge_dataplane::BackendKind;

/// Opens a stream; its status line, and (for 200) a channel of (event, data) as they come
/// (closed when the server ends the stream).
fn open(
    api: std::net::SocketAddr,
    path: &str,
    auth: Option<&str>,
) -> (u16, Option<mpsc::Receiver<(String, Value)>>) {
    let mut s = TcpStream::connect(api).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{auth}\r\n"
    )
    .expect("request");
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    if code != 200 {
        return (code, None);
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut event, mut line) = (String::new(), String::new());
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            // Chunked framing lines (sizes) and blank lines are skipped; SSE fields kept.
            let l = line.trim_end();
            if let Some(e) = l.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = l.strip_prefix("data: ") {
                let v = serde_json::from_str(d).unwrap_or(Value::Null);
                if tx.send((std::mem::take(&mut event), v)).is_err() {
                    return;
                }
            }
        }
    });
    (code, Some(rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_call_events_stream_live() {
    let callee = common::Callee::new();
    let scratch = common::scratch_dir("events");
    let dir = scratch.path().to_path_buf();
    let mut c = common::serve_config(&dir, 30200);
    c.api.sip_uri_calls = true;
    let r = app::start(Role::Serve, c, BackendKind::Socket)
        .await
        .expect("start");
    let api = r.api.expect("api");
    let store = r.store.clone().expect("store");
    let (a, ta) = store.create_account("a", None).await.expect("account");
    let (b, tb) = store.create_account("b", None).await.expect("account");
    let (auth_a, auth_b) = (
        common::basic_auth(&a.sid, &ta),
        common::basic_auth(&b.sid, &tb),
    );
    let path_a = format!("/v1/Accounts/{}/Events", a.sid);
    let path_b = format!("/v1/Accounts/{}/Events", b.sid);
    let callee_addr = callee.sock.local_addr().expect("addr");

    let (sid_a, p_a, p_b) = (a.sid.clone(), path_a.clone(), path_b.clone());
    let (aa, ab) = (auth_a.clone(), auth_b.clone());
    let (events_a, events_b, call_sid) = tokio::task::spawn_blocking(move || {
        // Credentials, parameters, another account's stream.
        assert_eq!(open(api, &p_a, None).0, 401);
        assert_eq!(open(api, &format!("{p_a}?Foo=1"), Some(&aa)).0, 400);
        assert_eq!(
            open(api, &p_a, Some(&ab)).0,
            404,
            "b cannot open a's stream"
        );
        let (code, ea) = open(api, &p_a, Some(&aa));
        assert_eq!(code, 200);
        let (_, eb) = open(api, &p_b, Some(&ab));
        // Nine more for a: the eleventh is refused.
        let more: Vec<_> = (0..9).map(|_| open(api, &p_a, Some(&aa))).collect();
        assert!(more.iter().all(|(c, _)| *c == 200));
        assert_eq!(open(api, &p_a, Some(&aa)).0, 429);
        drop(more);

        let resp = ureq::post(&format!(
            "http://{api}/2010-04-01/Accounts/{sid_a}/Calls.json"
        ))
        .set("Authorization", &aa)
        .send_form(&[
            ("To", &format!("sip:callee@{callee_addr}")),
            ("From", "+15550001111"),
            ("Twiml", "<Response><Hangup/></Response>"),
        ])
        .expect("call created");
        let call: Value = resp.into_json().expect("json");
        let (inv, from) = callee.recv();
        callee.reply(&inv, 486, "Busy Here", from, false);
        (
            ea.expect("stream a"),
            eb.expect("stream b"),
            call["sid"].as_str().expect("sid").to_string(),
        )
    })
    .await
    .expect("join");

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen
        .iter()
        .any(|(e, _): &(String, Value)| e == "call.completed")
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match events_a.recv_timeout(left) {
            Ok(ev) => seen.push(ev),
            Err(_) => panic!("no call.completed on a's stream: {seen:?}"),
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"call.initiated"), "{seen:?}");
    let done = &seen
        .iter()
        .find(|(e, _)| e == "call.completed")
        .expect("done")
        .1;
    assert_eq!(done["call_sid"], call_sid.as_str());
    assert_eq!(done["status"], "busy", "{done}");
    assert_eq!(done["sip_response_code"], 486);
    assert!(seen.iter().all(|(_, d)| d["call_sid"] == call_sid.as_str()));
    assert!(
        events_b.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing of a's on b's stream"
    );

    // Stopping the node ends the open streams (shutdown does not hang on them).
    let stopped = tokio::time::timeout(Duration::from_secs(10), r.shutdown()).await;
    assert!(stopped.is_ok(), "shutdown waited on event streams");
    let ended = events_a.recv_timeout(Duration::from_secs(5));
    assert!(
        matches!(ended, Err(mpsc::RecvTimeoutError::Disconnected)),
        "stream ended: {ended:?}"
    );
}
