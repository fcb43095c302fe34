//! Crash safety of programmable calls: sipp places a burst of 200 calls to a number whose
//! instructions keep each call up for seconds; `voxedge serve` is killed with SIGKILL in the
//! middle of the burst and started again. Every call the store recorded must end, and each
//! must get its `completed` status callback — none lost; duplicates (a delivery the crash
//! interrupted after the app saw it) only with the same `I-Twilio-Idempotency-Token`.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use base64::Engine;
use serde_json::Value;

mod common;
use common::Kill;

const BIN: &str = env!("CARGO_BIN_EXE_voxedge");
const SIP: u16 = 28500;
const ADMIN: u16 = 28501;
const API: u16 = 28502;

/// (call SID, status, idempotency token) of each status callback received.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

async fn app(State(seen): State<Seen>, req: Request) -> axum::response::Response {
    let path = req.uri().path().to_string();
    let token = req
        .headers()
        .get("i-twilio-idempotency-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let p: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    if path == "/status" {
        seen.lock().expect("seen").push((
            p.get("CallSid").cloned().unwrap_or_default(),
            p.get("CallStatus").cloned().unwrap_or_default(),
            token,
        ));
        return "".into_response();
    }
    (
        [("content-type", "text/xml")],
        "<Response><Pause length=\"8\"/><Hangup/></Response>",
    )
        .into_response()
}

fn serve(cfg: &std::path::Path, dir: &std::path::Path) -> Kill {
    let child = Kill(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(cfg)
            .current_dir(dir)
            .env_remove("VOXEDGE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start voxedge serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("http://127.0.0.1:{API}/openapi.json"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "voxedge serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_no_completed_callback() {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app");
    let app_port = listener.local_addr().expect("addr").port();
    let router = axum::Router::new().fallback(app).with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let scratch = common::scratch_dir("crash");
    let dir = scratch.path().to_path_buf();
    let cfg = dir.join("voxedge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api]\nlisten = \"127.0.0.1:{API}\"\ndatabase = \"sqlite://{db}\"\nsecret_key = \"{key}\"\n\
callbacks_allow_private = true\n\
[ng]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{ADMIN}\"\n[log]\nlevel = \"warn\"\n\
[sip]\nlisten = \"127.0.0.1:{SIP}\"\ncalls_per_second_max = 10000\ncalls_per_second_per_source_max = 10000\n\
[dataplane]\nworkers = 1\npin_cores = false\nbind = \"127.0.0.1\"\nport_min = 30000\nport_max = 30799\n",
            db = dir.join("crash.db").display(),
            key = "ef".repeat(32),
        ),
    )
    .expect("config");
    let out = Command::new(BIN)
        .args(["admin", "--config"])
        .arg(&cfg)
        .args(["account", "create", "--friendly-name", "crash", "--json"])
        .env_remove("VOXEDGE_CONFIG")
        .output()
        .expect("voxedge admin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acc: Value = serde_json::from_slice(&out.stdout).expect("admin JSON");
    let sid = acc["sid"].as_str().expect("sid").to_string();
    let token = acc["auth_token"].as_str().expect("token").to_string();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"))
    );
    let (cfg2, dir2, auth2, sid2) = (cfg.clone(), dir.clone(), auth.clone(), sid.clone());
    let recorded = tokio::task::spawn_blocking(move || {
        let first = serve(&cfg2, &dir2);
        let created = ureq::post(&format!(
            "http://127.0.0.1:{API}/2010-04-01/Accounts/{sid2}/IncomingPhoneNumbers.json"
        ))
        .set("Authorization", &auth2)
        .send_form(&[
            ("PhoneNumber", "+15550200"),
            ("VoiceUrl", &format!("http://127.0.0.1:{app_port}/voice")),
            (
                "StatusCallback",
                &format!("http://127.0.0.1:{app_port}/status"),
            ),
        ]);
        assert!(created.is_ok(), "{created:?}");
        let scenario = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/sipp/uac_wait_bye.xml"
        );
        let sipp = Kill(
            Command::new("sipp")
                .args([
                    "-sf",
                    scenario,
                    "-s",
                    "+15550200",
                    &format!("127.0.0.1:{SIP}"),
                ])
                .args(["-i", "127.0.0.1", "-p", "28510", "-mp", "28520"])
                .args(["-r", "100", "-m", "200", "-timeout", "30", "-nostdin"])
                .current_dir(&dir2)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sipp (scripts/test installs sip-tester)"),
        );
        // Mid-burst: wait until 60 of the 200 calls are recorded (however slow this machine
        // is), while the earliest are running and the rest still arriving.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let recorded = ureq::get(&format!(
                "http://127.0.0.1:{API}/2010-04-01/Accounts/{sid2}/Calls.json?PageSize=1000"
            ))
            .set("Authorization", &auth2)
            .call()
            .ok()
            .and_then(|r| r.into_json::<Value>().ok())
            .and_then(|v| v["calls"].as_array().map(Vec::len))
            .unwrap_or(0);
            if recorded >= 60 || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut first = first;
        // SIGKILL: no drain, no goodbye.
        let _ = first.0.kill();
        let _ = first.0.wait();
        drop(sipp);
        let _second = serve(&cfg2, &dir2);
        // Every recorded call ends (recovered at start), then its callback arrives.
        let calls = ureq::get(&format!(
            "http://127.0.0.1:{API}/2010-04-01/Accounts/{sid2}/Calls.json?PageSize=1000"
        ))
        .set("Authorization", &auth2)
        .call()
        .expect("list calls")
        .into_json::<Value>()
        .expect("json");
        let list = calls["calls"].as_array().cloned().unwrap_or_default();
        for c in &list {
            let st = c["status"].as_str().unwrap_or("");
            assert!(
                ["completed", "failed", "canceled", "busy", "no-answer"].contains(&st),
                "a recorded call did not end after the restart: {c}"
            );
        }
        let sids: Vec<String> = list
            .iter()
            .filter_map(|c| c["sid"].as_str().map(str::to_string))
            .collect();
        (sids, _second)
    })
    .await
    .expect("join");
    let (sids, second) = recorded;
    assert!(
        sids.len() >= 50,
        "the burst should have reached voxedge before the kill: {} calls recorded",
        sids.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = seen.lock().expect("seen").clone();
        let mut by_call: HashMap<&str, Vec<&(String, String, String)>> = HashMap::new();
        for s in &got {
            by_call.entry(s.0.as_str()).or_default().push(s);
        }
        let missing: Vec<&String> = sids
            .iter()
            .filter(|s| by_call.get(s.as_str()).is_none_or(|v| v.is_empty()))
            .collect();
        if missing.is_empty() {
            println!(
                "{} calls recorded before the kill; {} callbacks received ({} duplicates)",
                sids.len(),
                got.len(),
                got.len() - by_call.len()
            );
            for (call, cbs) in &by_call {
                assert!(
                    sids.iter().any(|s| s == call),
                    "callback for an unknown call {call}"
                );
                // One completed callback per call; a duplicate carries the same token.
                let tokens: std::collections::HashSet<&str> =
                    cbs.iter().map(|c| c.2.as_str()).collect();
                assert_eq!(tokens.len(), 1, "{call}: {cbs:?}");
                assert!(!cbs[0].2.is_empty(), "idempotency token sent");
                assert!(
                    cbs.iter()
                        .all(|c| ["completed", "failed", "canceled", "busy", "no-answer"]
                            .contains(&c.1.as_str())),
                    "{call}: {cbs:?}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} calls got no completed callback",
            missing.len(),
            sids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(second);
}
