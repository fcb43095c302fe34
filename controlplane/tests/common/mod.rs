//! Pieces shared by the SIP and REST system tests.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use voxedge_controlplane::config::Config;

use voxedge_sip_core::{Limits, SipMessage};

/// Requests an app server received: (path, form parameters), in order.
pub type Seen =
    std::sync::Arc<std::sync::Mutex<Vec<(String, std::collections::BTreeMap<String, String>)>>>;

/// Reads a request to an app server (its path and form body), notes it in `seen`, and returns
/// the path.
pub async fn note_request(seen: &Seen, req: axum::extract::Request) -> String {
    let path = req.uri().path().to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let params = form_urlencoded::parse(&body).into_owned().collect();
    seen.lock().expect("seen").push((path.clone(), params));
    path
}

/// A scripted callee on UDP.
pub struct Callee {
    pub sock: UdpSocket,
    pub rtp: UdpSocket,
}

impl Callee {
    pub fn new() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("t");
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
        rtp.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
        Callee { sock, rtp }
    }
    pub fn recv(&self) -> (SipMessage, SocketAddr) {
        let mut buf = [0u8; 65536];
        let (n, from) = self.sock.recv_from(&mut buf).expect("callee receives");
        (
            SipMessage::parse(&buf[..n], &Limits::default()).expect("valid"),
            from,
        )
    }
    pub fn reply(&self, req: &SipMessage, code: u16, reason: &str, to: SocketAddr, sdp: bool) {
        let mut r =
            voxedge_sip_core::transaction::build_response(req, code, reason, Some("callee1"));
        let contact = format!("<sip:callee@{}>", self.sock.local_addr().expect("a"));
        r.headers.insert(
            ezk_sip_types::Name::CONTACT,
            bytesstr::BytesStr::from(contact),
        );
        if sdp {
            let a = self.rtp.local_addr().expect("a");
            let body = format!("v=0\r\no=callee 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n", a.port());
            r.headers.insert(
                ezk_sip_types::Name::CONTENT_TYPE,
                bytesstr::BytesStr::from_static("application/sdp"),
            );
            r.body = bytes::Bytes::from(body);
        }
        self.sock.send_to(&r.to_bytes(), to).expect("reply");
    }
}

/// A child process (voxedge, sipp, …) killed and reaped when dropped, so a failing test
/// leaves nothing running.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Keeps a node's media cache and recordings under `dir` (their defaults are relative to the
/// working directory, which under `cargo test` is the crate's source tree).
pub fn media_dirs(c: &mut Config, dir: &Path) {
    c.media.dir = dir.join("media").display().to_string();
    c.media.recordings_dir = dir.join("recordings").display().to_string();
}

/// A `voxedge serve` for one test: every listener on loopback with a port of the system's
/// choosing, its SQLite store, media cache and recordings under `dir`, a fixed key, callbacks
/// allowed to reach the test's own servers, one unpinned worker with media ports
/// `port_min..port_min + 99`.
pub fn serve_config(dir: &Path, port_min: u16) -> Config {
    let mut c = Config::default();
    c.ng.listen = "127.0.0.1:0".parse().expect("addr");
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.sip.listen = "127.0.0.1:0".parse().expect("addr");
    c.api.listen = "127.0.0.1:0".parse().expect("addr");
    c.api.database = format!("sqlite://{}", dir.join("store.db").display());
    c.api.secret_key = Some("ab".repeat(32));
    c.api.callbacks_allow_private = true;
    media_dirs(&mut c, dir);
    c.dataplane.workers = 1;
    c.dataplane.pin_cores = false;
    c.dataplane.bind = "127.0.0.1".parse().expect("ip");
    c.dataplane.port_min = port_min;
    c.dataplane.port_max = port_min + 99;
    c
}

/// `Authorization` header value for HTTP basic auth.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A TwiML document response.
pub fn xml(body: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([("content-type", "text/xml")], body.to_string()).into_response()
}

/// The Prometheus text of the admin listener at `admin`.
pub async fn metrics(admin: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        ureq::get(&format!("http://{admin}/metrics"))
            .call()
            .expect("metrics")
            .into_string()
            .expect("text")
    })
    .await
    .expect("join")
}

/// Serves `router` on a loopback port (for the life of the runtime); the port.
pub async fn serve_app(router: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app server");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    port
}

/// Runs one sipp call of `scenario` (a file in `tests/sipp/`) to `number` at `sip`, with
/// `args` for its local addresses and keys: whether it succeeded, and the end of its output
/// and its errors (for assertion messages).
pub fn sipp_call(scenario: &str, number: &str, sip: SocketAddr, args: &[&str]) -> (bool, String) {
    let path = format!("{}/../tests/sipp/{scenario}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("sipp")
        .args(["-sf", &path, "-s", number, &sip.to_string()])
        .args(args)
        .args(["-m", "1", "-timeout", "40s", "-timeout_error", "-nostdin"])
        .output()
        .expect("sipp runs (scripts/test installs sip-tester)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `voxedge bench <args>` (which must include `--json`), asserts it succeeded, and
/// returns the JSON report (the last line of its output).
pub fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxedge"))
        .arg("bench")
        .args(args)
        .env_remove("VOXEDGE_CONFIG")
        .output()
        .expect("run bench");
    assert!(
        out.status.success(),
        "voxedge bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim().lines().last().unwrap_or_default()).expect("JSON report")
}

/// A fresh scratch directory for a test under Cargo's `target/tmp`, removed
/// when the returned guard drops (also when the test panics).
pub fn scratch_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("voxedge-{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch dir")
}
