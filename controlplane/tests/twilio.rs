//! Drop-in check with the official `twilio` Python helper library (from PyPI, pinned in
//! tests/twilio/requirements.txt, installed into a venv by scripts/test): pointed at a
//! running voxedge, it creates an application and a number, places a call to a sipp UAS,
//! lists, fetches, redirects and hangs it up, and a second tenant cannot see or touch any of
//! the first tenant's resources. The script prints one line per check.

use std::process::{Command, Stdio};
use std::time::Duration;

use voxedge_controlplane::app::{self, Role};
use voxedge_controlplane::config::Config;
use voxedge_dataplane::BackendKind;

mod common;
use common::Kill;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_twilio_helper_library_drives_voxedge() {
    let python = std::env::var("VOXEDGE_TWILIO_PYTHON").unwrap_or_else(|_| {
        panic!("VOXEDGE_TWILIO_PYTHON is not set: run scripts/test (it makes a venv with the twilio library)")
    });
    let scratch = common::scratch_dir("twilio");
    let dir = scratch.path().to_path_buf();
    let mut c = Config::default();
    c.ng.listen = "127.0.0.1:0".parse().expect("addr");
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.sip.listen = "127.0.0.1:0".parse().expect("addr");
    c.api.listen = "127.0.0.1:0".parse().expect("addr");
    c.api.database = format!("sqlite://{}", dir.join("twilio.db").display());
    common::media_dirs(&mut c, &dir);
    c.api.secret_key = Some("ab".repeat(32));
    c.api.sip_uri_calls = true;
    // The calls' instructions come from a local app server (a long pause).
    c.api.callbacks_allow_private = true;
    let app = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app server");
    let app_addr = app.local_addr().expect("addr");
    tokio::spawn(async move {
        let router = axum::Router::new().fallback(|| async {
            (
                [("content-type", "text/xml")],
                "<Response><Pause length=\"60\"/></Response>",
            )
        });
        let _ = axum::serve(app, router).await;
    });
    c.dataplane.workers = 1;
    c.dataplane.pin_cores = false;
    c.dataplane.bind = "127.0.0.1".parse().expect("ip");
    c.dataplane.port_min = 26900;
    c.dataplane.port_max = 26999;
    let r = app::start(Role::Serve, c, BackendKind::Socket)
        .await
        .expect("start");
    let store = r.store.clone().expect("store");
    let (a, ta) = store.create_account("first", None).await.expect("account");
    let (b, tb) = store.create_account("second", None).await.expect("account");
    let uas_port = free_udp_port();
    let _uas = Kill(
        Command::new("sipp")
            .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &uas_port.to_string()])
            .args(["-rtp_echo", "-nostdin"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp is installed (scripts/test installs sip-tester)"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let base = format!("http://{}", r.api.expect("api"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/twilio/helper_lib_test.py"
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--base", &base])
            .args(["--account", &format!("{}:{ta}", a.sid)])
            .args(["--other", &format!("{}:{tb}", b.sid)])
            .args(["--to", &format!("sip:uas@127.0.0.1:{uas_port}")])
            .args(["--from", "+15550001111", "--deadline", "120"])
            .args(["--url", &format!("http://{app_addr}/twiml")])
            .args(["--redirect-url", &format!("http://{app_addr}/other")])
            .env_remove("TWILIO_EDGE")
            .env_remove("TWILIO_REGION")
            .output()
            .expect("run the helper-library script")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    println!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the twilio helper library found problems:\n{stdout}"
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count() >= 30,
        "{stdout}"
    );
    r.shutdown().await;
}
