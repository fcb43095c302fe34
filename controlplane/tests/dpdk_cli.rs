//! `voxedge` in DPDK mode as an operator runs it: clear failures for wrong settings, a media
//! node on a `net_null` port with its metrics, and the DPDK benches' JSON (each in its own
//! process: one EAL per process).
#![cfg(feature = "dpdk")]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::scratch_dir;

const BIN: &str = env!("CARGO_BIN_EXE_voxedge");

fn config(dir: &std::path::Path, dataplane_extra: &str, dpdk_extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[admin]
listen = "127.0.0.1:0"
[management]
listen = "127.0.0.1:0"
[ng]
listen = "127.0.0.1:0"
[dataplane]
backend = "dpdk"
workers = 1
pin_cores = false
bind = "10.1.0.1"
port_min = 34000
port_max = 34099
{dataplane_extra}
[dataplane.dpdk]
addresses = ["10.1.0.1/24"]
file_prefix = "vxcli{pid}"
eal_args = ["--no-shconf", "--log-level=*:warning"]
mbufs = 4095
idle_sleep_us = 100
{dpdk_extra}
"#,
        pid = std::process::id()
    );
    let p = dir.join("voxedge.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn run_media(cfg: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(["media", "--config"])
        .arg(cfg)
        .env_remove("VOXEDGE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run voxedge media")
}

fn assert_clear_failure(out: &Output, must_contain: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {err}");
    assert!(!err.contains("panicked"), "no panic: {err}");
    for m in must_contain {
        assert!(err.contains(m), "stderr mentions {m:?}: {err}");
    }
}

#[test]
fn hugepages_required_but_absent_is_a_clear_error() {
    let scratch = scratch_dir("dpdk-cli-huge");
    let d = scratch.path();
    let empty = d.join("not-hugetlbfs");
    std::fs::create_dir_all(&empty).expect("dir");
    let cfg = config(
        d,
        "",
        &format!(
            "vdevs = [\"net_null0\"]\nhuge_dir = \"{}\"\nmemory_mb = [64]",
            empty.display()
        ),
    );
    let out = run_media(&cfg);
    assert_clear_failure(
        &out,
        &["dpdk: EAL initialisation failed", "hugepages", "no_huge"],
    );
}

#[test]
fn unknown_device_is_a_clear_error() {
    let scratch = scratch_dir("dpdk-cli-dev");
    let d = scratch.path();
    let cfg = config(
        d,
        "",
        "no_huge = true\ndevices = [\"0000:99:00.0\"]\nport = \"0000:99:00.0\"",
    );
    let out = run_media(&cfg);
    assert_clear_failure(
        &out,
        &["dataplane.dpdk.port `0000:99:00.0`: no such ethdev"],
    );
}

#[test]
fn bad_core_lists_are_clear_errors() {
    let scratch = scratch_dir("dpdk-cli-cores");
    let d = scratch.path();
    let cfg = config(
        d,
        "cores = [4096]",
        "no_huge = true\nvdevs = [\"net_null0\"]",
    );
    let out = run_media(&cfg);
    assert_clear_failure(&out, &["dataplane.cores: core 4096 does not exist"]);
    let cfg = config(
        d,
        "",
        "no_huge = true\nvdevs = [\"net_null0\"]\nmain_lcore = 4096",
    );
    let out = run_media(&cfg);
    assert_clear_failure(&out, &["dataplane.dpdk.main_lcore"]);
}

#[test]
fn media_node_runs_on_a_null_port_with_dpdk_metrics() {
    let scratch = scratch_dir("dpdk-cli-media");
    let d = scratch.path();
    let cfg = config(
        d,
        "",
        "no_huge = true\nvdevs = [\"net_null0,size=64\"]\nport = \"net_null0\"",
    );
    let mut child = Command::new(BIN)
        .args(["media", "--config"])
        .arg(&cfg)
        .env_remove("VOXEDGE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let log = StderrLog::collect(child.stderr.take().expect("stderr"));
    let mut guard = KillOnDrop(Some(child));
    // The listeners bind port 0; their addresses come from the daemon's own start-up log.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (admin, management) = loop {
        let text = log.text();
        if let (Some(a), Some(m)) = (
            logged_addr(&text, "admin listener", "admin="),
            logged_addr(&text, "management API", "addr="),
        ) {
            break (a, m);
        }
        if let Some(status) = guard.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("media node exited ({status}) before listening: {text}");
        }
        assert!(Instant::now() < deadline, "no listeners logged: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let health: serde_json::Value = loop {
        if let Ok(r) = ureq::get(&format!("http://{admin}/health")).call() {
            break r.into_json().expect("json");
        }
        assert!(
            Instant::now() < deadline,
            "no health answer: {}",
            log.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(health["status"], "ok");
    let relay: serde_json::Value = ureq::post(&format!("http://{management}/v1/relays"))
        .send_json(serde_json::json!({"a": {}, "b": {}}))
        .expect("create relay")
        .into_json()
        .expect("json");
    assert!(relay["a"]["local"]
        .as_str()
        .expect("local")
        .starts_with("10.1.0.1:"));
    // net_null delivers zero-filled frames (EtherType 0): counted as unsupported, none forwarded.
    std::thread::sleep(Duration::from_millis(200));
    let metrics = ureq::get(&format!("http://{admin}/metrics"))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert!(value("voxedge_dpdk_rx_packets_total") > 0.0);
    assert!(value("voxedge_dpdk_unsupported_total") > 0.0);
    assert_eq!(value("voxedge_dpdk_tx_packets_total"), 0.0);
    assert_eq!(value("voxedge_dpdk_handoff_dropped_total"), 0.0);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let status = guard.0.take().expect("child").wait().expect("wait");
    let err = log.finish();
    assert!(status.success(), "clean stop: {err}");
    assert!(
        err.contains("EAL arguments: voxedge -l 0"),
        "EAL arguments logged: {err}"
    );
    assert!(
        err.contains("dpdk port net_null0 started"),
        "port logged: {err}"
    );
}

/// Kills the child if the test fails before stopping it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The child's stderr, read on its own thread so the pipe never fills, kept for assertions
/// and failure messages.
struct StderrLog {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl StderrLog {
    fn collect(stderr: std::process::ChildStderr) -> Self {
        use std::io::BufRead;
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut t = sink.lock().expect("log lock");
                t.push_str(&line);
                t.push('\n');
            }
        });
        Self { text, reader }
    }

    fn text(&self) -> String {
        self.text.lock().expect("log lock").clone()
    }

    /// Everything the child wrote, once it has exited.
    fn finish(self) -> String {
        self.reader.join().expect("stderr reader");
        self.text.lock().expect("log lock").clone()
    }
}

/// The address after `key` on the log line that mentions `what`.
fn logged_addr(log: &str, what: &str, key: &str) -> Option<std::net::SocketAddr> {
    let line = log.lines().find(|l| l.contains(what))?;
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn bench(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["dpdk", "--json", "--duration", "0.5", "--warmup", "0.2"];
    all.extend_from_slice(args);
    common::bench_json(&all)
}

#[test]
fn null_bench_reports_json() {
    let r = bench(&["--mode", "null", "--streams", "1000"]);
    for k in [
        "streams",
        "offered_pps",
        "delivered_pps",
        "loss_ratio",
        "mpps_per_core",
        "latency_us_p50",
        "latency_us_p99",
        "latency_us_p999",
    ] {
        assert!(r.get(k).is_some(), "{k} in {r}");
    }
    assert_eq!(r["streams"], 1000);
    // What the binary was compiled for, so a figure can be repeated with the same build: the
    // bench is built with the same flags as this test.
    assert_eq!(r["build"]["arch"], std::env::consts::ARCH, "{r}");
    assert_eq!(
        r["build"]["optimized"].as_bool(),
        Some(!cfg!(debug_assertions)),
        "{r}"
    );
    let features = r["build"]["target_features"].as_array().expect("list");
    for (f, on) in [
        ("avx2", cfg!(target_feature = "avx2")),
        ("sse4.2", cfg!(target_feature = "sse4.2")),
        ("movbe", cfg!(target_feature = "movbe")),
    ] {
        assert_eq!(features.iter().any(|v| v == f), on, "{f}: {r}");
    }
    // DPDK overlaps bursts unless told not to.
    assert_eq!(r["overlap_bursts"], "auto", "{r}");
    assert_eq!(r["overlapped"], true, "{r}");
    // Frames keep the sequence number they were filled with: no stream's advances.
    assert_eq!(r["rewrite"], false, "{r}");
    assert_eq!(r["seq_advancing_share"].as_f64(), Some(0.0), "{r}");
    // Shorter than two seconds: the window's one rate, no per-second samples.
    assert_eq!(r["samples_mpps_per_core"], serde_json::json!([]), "{r}");
    assert!(r["mpps_per_core_median"].is_null(), "{r}");
    assert!(
        r["delivered_pps"].as_f64().expect("number") > 10_000.0,
        "{r}"
    );
    // Backend counters cover the measured window; what set-up counted (net_null's empty
    // frames before the pool is filled with RTP) is reported apart.
    let window = r["backend_counters"]["voxedge_dpdk_rx_packets_total"]
        .as_u64()
        .expect("window rx count");
    let setup = r["backend_counters_setup"]["voxedge_dpdk_rx_packets_total"]
        .as_u64()
        .expect("set-up rx count");
    assert!(window > 0 && setup > 0, "{r}");
    assert!(
        r["backend_counters_setup"]["voxedge_dpdk_unsupported_total"]
            .as_u64()
            .is_some_and(|v| v > 0),
        "net_null's empty frames before the fill are counted in set-up: {r}"
    );
}

/// A null bench's report of a run that lost and dropped nothing at a real rate.
fn forwards_everything(r: &serde_json::Value) {
    assert_eq!(r["loss_ratio"].as_f64(), Some(0.0), "{r}");
    assert_eq!(r["drops"], 0, "{r}");
    assert!(
        r["delivered_pps"].as_f64().expect("number") > 10_000.0,
        "{r}"
    );
}

/// With `--rewrite` every relay rewrites what it sends: each stream then hears consecutive
/// sequence numbers from the stream before it in the chain, as from a real source, and the
/// rewrite path (SSRC/seq/ts, the adjusted UDP checksum) forwards everything.
#[test]
fn null_bench_with_rewrite_numbers_each_stream_consecutively() {
    let r = bench(&["--mode", "null", "--streams", "1000", "--rewrite"]);
    assert_eq!(r["rewrite"], true, "{r}");
    let advancing = r["seq_advancing_share"]
        .as_f64()
        .expect("seq_advancing_share");
    assert!(advancing > 0.9, "consecutive numbers on every stream: {r}");
    forwards_everything(&r);
}

/// `--overlap-bursts off`: each burst is processed as soon as it is received, and the bench
/// still forwards everything (the rate and latency to compare with the default).
#[test]
fn null_bench_without_overlapped_bursts() {
    let r = bench(&[
        "--mode",
        "null",
        "--streams",
        "1000",
        "--rewrite",
        "--overlap-bursts",
        "off",
    ]);
    assert_eq!(r["overlap_bursts"], "off", "{r}");
    assert_eq!(r["overlapped"], false, "{r}");
    forwards_everything(&r);
}

#[test]
fn null_bench_reports_the_rate_of_each_second() {
    let r = common::bench_json(&[
        "dpdk",
        "--json",
        "--mode",
        "null",
        "--streams",
        "1000",
        "--duration",
        "2.3",
        "--warmup",
        "0.2",
    ]);
    let samples: Vec<f64> = r["samples_mpps_per_core"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    assert_eq!(samples.len(), 2, "one per whole second: {r}");
    assert!(samples.iter().all(|&s| s > 0.01), "{r}");
    let (min, med, max) = (
        r["mpps_per_core_min"].as_f64().expect("min"),
        r["mpps_per_core_median"].as_f64().expect("median"),
        r["mpps_per_core_max"].as_f64().expect("max"),
    );
    assert!(min <= med && med <= max, "{r}");
    assert_eq!(min, samples[0].min(samples[1]), "{r}");
    assert_eq!(max, samples[0].max(samples[1]), "{r}");
    // The whole window's rate lies within the spread of its seconds (give or take the
    // 0.3 s after the last whole one).
    let whole = r["mpps_per_core"].as_f64().expect("rate");
    assert!(whole > min * 0.5 && whole < max * 1.5, "{r}");
}

#[test]
fn memif_bench_reports_json() {
    let r = bench(&["--mode", "memif", "--streams", "200", "--rate", "20000"]);
    assert_eq!(r["mode"], "memif");
    let delivered = r["delivered_pps"].as_f64().expect("number");
    assert!(delivered > 15_000.0, "{r}");
    assert!(r["loss_ratio"].as_f64().expect("number") < 0.01, "{r}");
    assert!(r["latency_us_p99"].as_f64().is_some(), "{r}");
    assert!(r["build"]["target_features"].is_array(), "{r}");
    // The fixed-rate phase gives the workers' own latency too (an upper bucket bound; null
    // only past the largest finite bucket, 10 ms).
    let fixed = &r["phases"][0];
    assert_eq!(fixed["phase"], "fixed", "{r}");
    for q in [
        "worker_latency_us_p99_at_most",
        "worker_latency_us_p999_at_most",
    ] {
        let v = fixed[q].as_f64().unwrap_or(f64::INFINITY);
        assert!(v > 0.0 && v <= 10_000.0, "{q}: {r}");
    }
    // And the workers' busy time over it: at 20k packets/s a worker is busy for a small
    // share of the phase, and the ratio and the rate per busy second follow from the busy
    // seconds reported.
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("number: {r}"));
    let ratio = num(&fixed["worker_busy_ratio"]);
    assert!(ratio > 0.0 && ratio < 0.5, "{r}");
    let busy_s = num(&fixed["worker_busy_s"]);
    let secs = num(&r["duration_s"]);
    let workers = num(&r["workers"]);
    assert!((ratio - busy_s / secs / workers).abs() < 1e-9, "{r}");
    // Packets delivered in the phase, per busy second.
    let per_busy = num(&fixed["mpps_per_busy_core"]);
    let delivered = num(&fixed["delivered_pps"]) * secs;
    assert!(
        (per_busy - delivered / busy_s / 1e6).abs() < 1e-6 * per_busy,
        "{r}"
    );
    assert_eq!(r["worker_busy_ratio"], fixed["worker_busy_ratio"], "{r}");
    assert_eq!(r["mpps_per_busy_core"], fixed["mpps_per_busy_core"], "{r}");
    assert_eq!(r["memif_zero_copy"], true, "{r}");
}

#[test]
fn memif_bench_runs_the_appliance_port_in_copy_mode_on_request() {
    let r = bench(&[
        "--mode",
        "memif",
        "--memif-copy",
        "--streams",
        "200",
        "--rate",
        "20000",
    ]);
    assert_eq!(r["memif_zero_copy"], false, "{r}");
    assert!(
        r["delivered_pps"].as_f64().expect("number") > 15_000.0,
        "{r}"
    );
    assert!(r["loss_ratio"].as_f64().expect("number") < 0.01, "{r}");
}

#[test]
fn null_bench_reports_its_rate_against_a_testpmd_baseline() {
    let r = bench(&["--mode", "null", "--streams", "1000", "--baseline"]);
    let base = &r["baseline"];
    assert_eq!(base["tool"], "dpdk-testpmd", "{r}");
    let samples = base["samples_mpps"].as_array().expect("samples");
    assert!(!samples.is_empty(), "{r}");
    // io-forward on net_null never touches the data: tens of millions per core even on a
    // slow VM, far more than one.
    let b = base["mpps_per_core"].as_f64().expect("baseline rate");
    assert!(b > 1.0, "{r}");
    let ours = r["mpps_per_core"].as_f64().expect("rate");
    let rel = r["relative_to_baseline"].as_f64().expect("share");
    assert!((rel - ours / b).abs() < 1e-9, "{r}");
    assert!(
        rel > 0.0 && rel < 1.0,
        "RTP-aware forwarding is below io-forward: {r}"
    );
}

#[test]
fn mode_only_options_outside_their_mode_are_clear_errors() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxedge"))
        .args(["bench", "dpdk", "--mode", "memif", "--baseline", "--json"])
        .output()
        .expect("run bench");
    assert_clear_failure(&out, &["--baseline applies to --mode null"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxedge"))
        .args(["bench", "dpdk", "--mode", "memif", "--rewrite", "--json"])
        .output()
        .expect("run bench");
    assert_clear_failure(&out, &["--rewrite applies to --mode null"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxedge"))
        .args(["bench", "dpdk", "--mode", "null", "--memif-copy", "--json"])
        .output()
        .expect("run bench");
    assert_clear_failure(&out, &["--memif-copy applies to --mode memif"]);
}
