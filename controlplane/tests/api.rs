//! The management API and admin listener, in-process on port 0 with the memory backend.

use std::net::SocketAddr;

use serde_json::{json, Value};
use voxedge_controlplane::app::{self, Role, Running};
use voxedge_controlplane::config::Config;
use voxedge_dataplane::io::memory::Datagram;
use voxedge_dataplane::BackendKind;

fn config(port_min: u16) -> Config {
    let mut c = Config::default();
    c.ng.listen = "127.0.0.1:0".parse().expect("addr");
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.management.listen = "127.0.0.1:0".parse().expect("addr");
    c.management.body_bytes_max = 4096;
    c.dataplane.workers = 1;
    c.dataplane.pin_cores = false;
    c.dataplane.bind = "127.0.0.1".parse().expect("ip");
    c.dataplane.port_min = port_min;
    c.dataplane.port_max = port_min + 99;
    c
}

async fn start(port_min: u16) -> Running {
    app::start(Role::Media, config(port_min), BackendKind::Memory)
        .await
        .expect("start")
}

/// (status, body) of a request; never fails on 4xx/5xx.
fn call(method: &str, url: &str, body: Option<(&str, &str)>) -> (u16, Value) {
    let req = ureq::request(method, url);
    let res = match body {
        Some((ct, b)) => req.set("Content-Type", ct).send_string(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn base(r: &Running) -> String {
    format!(
        "http://{}",
        r.management.expect("media has a management API")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_lifecycle_and_traffic() {
    let r = start(32000).await;
    let m = base(&r);
    let body = json!({"a": {"remote": "192.0.2.1:4000"}, "b": {"remote": "192.0.2.2:5000"}, "rewrite": true}).to_string();
    let (m2, b2) = (m.clone(), body.clone());
    let (status, created) = tokio::task::spawn_blocking(move || {
        call(
            "POST",
            &format!("{m2}/v1/relays"),
            Some(("application/json", &b2)),
        )
    })
    .await
    .expect("join");
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let a_local: SocketAddr = created["a"]["local"]
        .as_str()
        .expect("a.local")
        .parse()
        .expect("addr");
    let b_local: SocketAddr = created["b"]["local"]
        .as_str()
        .expect("b.local")
        .parse()
        .expect("addr");
    assert_eq!(
        created["a"]["rtcp_local"].as_str().expect("rtcp"),
        SocketAddr::new(a_local.ip(), a_local.port() + 1).to_string()
    );

    // Traffic A → B through the memory network.
    let net = r.memory.as_ref().expect("memory backend");
    let mut pkt = vec![0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
    pkt.extend_from_slice(&[0xff; 160]);
    for _ in 0..3 {
        assert!(net.send(Datagram {
            src: "192.0.2.1:4000".parse().expect("a"),
            dst: a_local,
            payload: pkt.clone()
        }));
        let out = net
            .recv_timeout(std::time::Duration::from_secs(2))
            .expect("forwarded");
        assert_eq!(
            (out.src, out.dst),
            (b_local, "192.0.2.2:5000".parse().expect("b"))
        );
    }

    let m2 = m.clone();
    let id2 = id.clone();
    let (status, got) =
        tokio::task::spawn_blocking(move || call("GET", &format!("{m2}/v1/relays/{id2}"), None))
            .await
            .expect("join");
    assert_eq!(status, 200);
    assert_eq!(got["directions"]["a_to_b"]["packets"], 3);
    assert_eq!(got["directions"]["b_to_a"]["packets"], 0);
    assert_eq!(got["a"]["rtp"]["counters"]["packets_in"], 3);
    assert_eq!(got["b"]["rtp"]["counters"]["packets_out"], 3);

    let m2 = m.clone();
    let (status, list) =
        tokio::task::spawn_blocking(move || call("GET", &format!("{m2}/v1/relays"), None))
            .await
            .expect("join");
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["relays"][0]["id"], id.as_str());

    // Metrics reflect the traffic.
    let admin = format!("http://{}", r.admin);
    let (status, metrics) =
        tokio::task::spawn_blocking(move || call("GET", &format!("{admin}/metrics"), None))
            .await
            .expect("join");
    assert_eq!(status, 200);
    let text = metrics.as_str().expect("text").to_string();
    assert!(text.contains("voxedge_relays{worker=\"0\"} 1"), "{text}");
    assert!(
        text.contains("voxedge_packet_processing_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("voxedge_worker_busy_ratio{worker=\"0\"}"),
        "{text}"
    );

    let m2 = m.clone();
    let id2 = id.clone();
    let (status, deleted) =
        tokio::task::spawn_blocking(move || call("DELETE", &format!("{m2}/v1/relays/{id2}"), None))
            .await
            .expect("join");
    assert_eq!(status, 200);
    assert_eq!(deleted["a"]["rtp"]["counters"]["packets_forwarded"], 3);
    let m2 = m.clone();
    let (status, _) =
        tokio::task::spawn_blocking(move || call("GET", &format!("{m2}/v1/relays/{id}"), None))
            .await
            .expect("join");
    assert_eq!(status, 404);
    r.shutdown().await;
}

/// (method, path, (content type, body), expected status, expected error code)
type Case = (
    &'static str,
    String,
    Option<(&'static str, String)>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_json_errors() {
    let r = start(32200).await;
    let m = base(&r);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/relays".into(),
            Some(("application/json", "{not json".into())),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/relays".into(),
            Some(("application/json", r#"{"a":{"remote":"nope"}}"#.into())),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/relays".into(),
            Some(("application/json", r#"{"unknown":1}"#.into())),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/relays".into(),
            Some(("application/json", r#"{"a":{"remote":"0.0.0.0:5"}}"#.into())),
            400,
            "invalid_remote",
        ),
        (
            "POST",
            "/v1/relays".into(),
            Some(("application/json", r#"{"a":{"clock_rate":5}}"#.into())),
            400,
            "invalid_clock_rate",
        ),
        (
            "POST",
            "/v1/relays".into(),
            Some((
                "application/json",
                format!(r#"{{"a":{{}},"pad":"{}"}}"#, "x".repeat(10_000)),
            )),
            413,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/relays".into(),
            Some(("text/plain", "{}".into())),
            415,
            "unsupported_media_type",
        ),
        ("GET", "/v1/relays/123456".into(), None, 404, "not_found"),
        (
            "GET",
            "/v1/relays/../../etc/passwd".into(),
            None,
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/relays/%2e%2e%2fx".into(),
            None,
            400,
            "invalid_id",
        ),
        ("DELETE", "/v1/relays/-1".into(), None, 400, "invalid_id"),
        (
            "GET",
            "/v1/relays?limit=abc".into(),
            None,
            400,
            "invalid_query",
        ),
        (
            "PATCH",
            "/v1/relays/1/legs/c".into(),
            Some(("application/json", "{}".into())),
            400,
            "invalid_side",
        ),
        ("GET", "/nope".into(), None, 404, "not_found"),
    ];
    for (method, path, body, want, code) in cases {
        let url = format!("{m}{path}");
        let (status, v) = tokio::task::spawn_blocking(move || {
            call(method, &url, body.as_ref().map(|(c, b)| (*c, b.as_str())))
        })
        .await
        .expect("join");
        assert_eq!(status, want, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
    }
    // An empty POST means all defaults.
    let (status, v) =
        tokio::task::spawn_blocking(move || call("POST", &format!("{m}/v1/relays"), None))
            .await
            .expect("join");
    assert_eq!(status, 201, "{v}");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_has_admin_but_no_management_api() {
    let mut c = config(32400);
    c.management.listen = "127.0.0.1:1".parse().expect("addr");
    c.sip.listen = "127.0.0.1:0".parse().expect("addr");
    c.api.enabled = false;
    let r = app::start(Role::Serve, c, BackendKind::Memory)
        .await
        .expect("start");
    assert!(r.management.is_none());
    let admin = format!("http://{}", r.admin);
    let (status, health) =
        tokio::task::spawn_blocking(move || call("GET", &format!("{admin}/health"), None))
            .await
            .expect("join");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["role"], "serve");
    r.shutdown().await;
}
