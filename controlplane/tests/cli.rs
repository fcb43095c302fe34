//! The `voxedge` binary as an operator runs it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bench_json, scratch_dir as scratch};

const BIN: &str = env!("CARGO_BIN_EXE_voxedge");

fn wait_health(url: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = ureq::get(url).timeout(Duration::from_secs(1)).call() {
            return r.into_json().expect("health is JSON");
        }
        assert!(Instant::now() < deadline, "no answer from {url}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `voxedge serve` with no configuration at all: defaults, admin on 127.0.0.1:9091.
#[test]
fn serve_starts_with_no_configuration_and_stops_on_sigterm() {
    let scratch = scratch("cli");
    let dir = scratch.path();
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn voxedge serve");
    let health = wait_health("http://127.0.0.1:9091/health");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["role"], "serve");
    let metrics = ureq::get("http://127.0.0.1:9091/metrics")
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    assert!(metrics.contains("# TYPE voxedge_packets_received_total counter"));
    let status = terminate(&mut child);
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    assert!(
        log.contains("dataplane started") && log.contains("stopped"),
        "{log}"
    );
}

#[test]
fn bad_configuration_exits_non_zero_with_a_clear_message() {
    let scratch = scratch("cfg");
    let dir = scratch.path();
    let cases = [
        ("[dataplane]\nworkrs = 2\n", "workrs"),
        (
            "[dataplane]\nport_min = 9000\nport_max = 8000\n",
            "port_min",
        ),
        ("[admin]\nlisten = \"not an address\"\n", "listen"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle} not named in: {err}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/voxedge.toml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/voxedge.toml"));
}

#[test]
fn config_command_prints_effective_settings() {
    let out = Command::new(BIN)
        .args(["config", "--workers", "3", "--port-min", "20000"])
        .env_remove("VOXEDGE_CONFIG")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("workers = 3") && text.contains("port_min = 20000"),
        "{text}"
    );
}

/// The mix bench at a small size: the report's shape, every packet in mixed and sent back out,
/// one shared encoding per tick plus one per talker, and a talking event per talker.
/// Capacity figures come from running the bench in release, not from this test.
#[test]
fn mix_bench_reports_json() {
    let v = bench_json(&[
        "mix",
        "--members",
        "60",
        "--size",
        "6",
        "--talkers",
        "2",
        "--seconds",
        "2",
        "--json",
    ]);
    for k in [
        "codec",
        "conference_size",
        "talkers",
        "members_per_core",
        "tick_us_p99",
    ] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    assert_eq!(v["codec"], "PCMU");
    assert_eq!(v["conference_size"], 6);
    assert_eq!(v["packets_in"], 60 * 100);
    assert_eq!(v["packets_out"], v["packets_in"]);
    assert_eq!(v["late_packets"], 0);
    assert_eq!(v["concealed_frames"], 0);
    assert_eq!(v["talking_events"], 2 * 10);
    let enc = v["encodes_per_tick"].as_f64().expect("number");
    assert!(enc > 2.5 && enc <= 3.0, "2 talkers + 1 shared: {enc}");
    let bad = Command::new(BIN)
        .args(["bench", "mix", "--codec", "g729"])
        .output()
        .expect("run bench");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("pcmu, pcma, opus"));
}

/// The mix bench with Opus 16 kHz members: every packet decoded, mixed and sent back out as
/// Opus, on time (nothing concealed), with the shared encoding. Built without the `opus`
/// feature, the bench says Opus is not built in.
#[test]
fn mix_bench_runs_opus_members() {
    let args = [
        "mix",
        "--codec",
        "opus",
        "--members",
        "40",
        "--size",
        "4",
        "--talkers",
        "1",
        "--seconds",
        "2",
        "--json",
    ];
    if !cfg!(feature = "opus") {
        let out = Command::new(BIN)
            .arg("bench")
            .args(args)
            .output()
            .expect("run bench");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no Opus"));
        return;
    }
    let v = bench_json(&args);
    assert_eq!(v["codec"], "OPUS/16000");
    assert_eq!(v["packets_in"], 40 * 100);
    assert_eq!(v["packets_out"], v["packets_in"]);
    assert_eq!(v["late_packets"], 0);
    assert_eq!(v["concealed_frames"], 0);
    assert_eq!(v["talking_events"], 10);
    let enc = v["encodes_per_tick"].as_f64().expect("number");
    assert!(enc > 1.5 && enc <= 2.0, "1 talker + 1 shared: {enc}");
}

/// The relay bench end to end at a small size: a real `voxedge media` child, real sockets.
/// It checks the report's shape and that an unloaded relay loses nothing; capacity figures
/// come from running the bench itself, not from this test.
#[test]
fn relay_bench_reports_json() {
    let v = bench_json(&[
        "relay",
        "--calls",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--json",
    ]);
    for k in [
        "offered_pps",
        "delivered_pps",
        "loss_ratio",
        "latency_us_p50",
        "latency_us_p99",
        "latency_us_p999",
        "relay_cpu_us_per_packet",
    ] {
        assert!(v[k].is_number(), "{k} missing in {v}");
    }
    assert_eq!(v["streams"], 40);
    assert!(v["offered_pps"].as_f64().expect("number") > 1000.0, "{v}");
    assert_eq!(v["loss_ratio"].as_f64(), Some(0.0), "{v}");
}

/// The media bench at a small size: its report's shape, and that the timed lookups were all
/// cache hits (one fetch per entry, during priming). The figures come from running the bench.
#[test]
fn media_bench_reports_json() {
    let v = bench_json(&[
        "media",
        "--entries",
        "5",
        "--lookups",
        "200",
        "--seconds",
        "1",
        "--json",
    ]);
    let t = &v["transcode"];
    assert!(
        t["mp3_to_pcmu_audio_seconds_per_cpu_second"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{v}"
    );
    assert!(
        t["mp3_to_all_variants_audio_seconds_per_cpu_second"].is_number(),
        "{v}"
    );
    assert!(
        v["input_audio_seconds"].as_f64().is_some_and(|s| s > 5.0),
        "{v}"
    );
    let c = &v["cache_hit"];
    for case in ["cold_load", "shared"] {
        assert_eq!(c[case]["lookups"], 200, "{v}");
        assert!(c[case]["p99_us"].is_number(), "{v}");
    }
    assert_eq!(c["fetches"], 5, "{v}");
    assert!(c["hits_counted"].as_u64().is_some_and(|h| h >= 400), "{v}");
}

/// Under systemd (`Type=notify`): READY=1 once serving, WATCHDOG=1 at half the interval,
/// STOPPING=1 on SIGTERM.
#[test]
fn tells_systemd_when_ready_feeds_the_watchdog_and_says_when_stopping() {
    let scratch = scratch("notify");
    let dir = scratch.path();
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut child = Command::new(BIN)
        .args(["serve", "--admin-listen", "127.0.0.1:27111"])
        .args([
            "--sip-listen",
            "127.0.0.1:27112",
            "--api-listen",
            "127.0.0.1:0",
            "--ng-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir)
        .args(["--port-min", "23000", "--port-max", "23099"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("VOXEDGE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv();
    assert!(first.starts_with("READY=1"), "{first}");
    // Already serving when READY is sent.
    wait_health("http://127.0.0.1:27111/health");
    let mut watchdogs = 0;
    while watchdogs < 3 {
        let m = recv();
        assert_eq!(m, "WATCHDOG=1");
        watchdogs += 1;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let mut stopping = false;
    for _ in 0..10 {
        if recv() == "STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 after SIGTERM");
    let status = terminate(&mut child);
    assert!(status.success());
}

/// `voxedge admin account …` on a fresh directory: the store and its key file are created,
/// `--json` output is one object a script can read, and the account is listed and suspended.
#[test]
fn admin_creates_lists_and_suspends_accounts_as_json() {
    let scratch = scratch("admin");
    let dir = scratch.path();
    let admin = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("admin")
            .args(args)
            .current_dir(dir)
            .env_remove("VOXEDGE_CONFIG")
            .env_remove("VOXEDGE_SECRET_KEY")
            .env_remove("VOXEDGE_DATABASE")
            .output()
            .expect("run voxedge admin");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("one JSON value")
    };
    let created = admin(&["account", "create", "--friendly-name", "Acme", "--json"]);
    let sid = created["sid"].as_str().expect("sid").to_string();
    assert!(sid.starts_with("AC") && sid.len() == 34, "{created}");
    assert_eq!(created["auth_token"].as_str().map(str::len), Some(32));
    assert!(dir.join("voxedge.db").exists() && dir.join("voxedge.key").exists());
    let mut db = std::fs::read(dir.join("voxedge.db")).expect("db");
    db.extend(std::fs::read(dir.join("voxedge.db-wal")).unwrap_or_default());
    let token = created["auth_token"].as_str().expect("token").as_bytes();
    assert!(
        !db.windows(token.len()).any(|w| w == token),
        "the auth token is not stored in plain text"
    );
    let list = admin(&["account", "list", "--json"]);
    assert_eq!(list[0]["sid"], sid.as_str());
    assert_eq!(list[0]["status"], "active");
    let st = admin(&["account", "status", &sid, "suspended", "--json"]);
    assert_eq!(st["status"], "suspended");
    assert_eq!(
        admin(&["account", "list", "--json"])[0]["status"],
        "suspended"
    );
    let doc = admin(&["openapi"]);
    assert_eq!(doc["openapi"], "3.0.3");
}
