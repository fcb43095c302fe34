//! `voxedge bench voice`: programmable calls per second end to end — sipp calls a number,
//! `voxedge serve` fetches the number's instructions from a local app server (this process)
//! returning `<Say>` + `<Hangup/>`, speaks, hangs up.
//!
//! Reports completed and failed calls (sipp's statistics), the app server's request count, the
//! time from INVITE to the 200 OK — VoxEdge answers when the first instruction starts, so this
//! is INVITE → first instruction executing, including the fetch — as percentiles from sipp's
//! response-time trace, and CPU per call of voxedge and of sipp.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::proc;
use crate::relay::free_port;
use crate::rest::random_hex;
use crate::sip::stat_field;
use crate::workdir::WorkDir;

/// Options of `voxedge bench voice`.
#[derive(Debug, Clone, Args)]
pub struct VoiceArgs {
    /// Calls per second offered.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Seconds of offered load.
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// Dataplane workers of the voxedge under test.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

const DOCUMENT: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>Hello.</Say><Hangup/></Response>";

/// A minimal HTTP/1.1 app server: every request gets the document (keep-alive).
fn app_server(requests: Arc<AtomicU64>) -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let requests = requests.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
                let Ok(mut w) = conn.try_clone() else { return };
                let mut r = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if first {
                            first = false;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0u8; len.min(1 << 20)];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{DOCUMENT}",
                        DOCUMENT.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Response times (ms) from sipp's `-trace_rtt` file(s) in `dir`.
fn rtts(dir: &std::path::Path) -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 600_000, 3).expect("valid bounds");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return h;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().ends_with("_rtt.csv") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in text.lines().skip(1) {
            // Date_ms;response_time_ms;rtd_no
            let f: Vec<&str> = l.split(';').collect();
            if let Some(ms) = f.get(1).and_then(|v| v.trim().parse::<f64>().ok()) {
                h.saturating_record((ms * 1000.0).max(1.0) as u64);
            }
        }
    }
    h
}

/// Runs the bench.
///
/// # Errors
/// sipp or espeak-ng missing, or voxedge could not start.
pub fn main(a: &VoiceArgs) -> anyhow::Result<()> {
    if Command::new("sipp").arg("-v").output().is_err() {
        bail!("sipp is not installed (apt-get install sip-tester)");
    }
    if Command::new("espeak-ng").arg("--version").output().is_err() {
        bail!("espeak-ng is not installed (apt-get install espeak-ng)");
    }
    let dir = WorkDir::create("voice")?;
    let (admin, sip, api, uac_port) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let requests = Arc::new(AtomicU64::new(0));
    let app = app_server(requests.clone())?;
    let cfg = dir.join("voxedge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api]\nlisten = \"127.0.0.1:{api}\"\ndatabase = \"sqlite://{db}\"\nsecret_key = \"{key}\"\n\
callbacks_allow_private = true\nrequests_per_second_per_account = 1000000\n\
[ng]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nlevel = \"warn\"\n\
[sip]\nlisten = \"127.0.0.1:{sip}\"\ncalls_per_second_max = 100000\ncalls_per_second_per_source_max = 100000\n\
[dataplane]\nworkers = {workers}\nbind = \"127.0.0.1\"\nport_min = 20000\nport_max = 32000\n",
            db = dir.join("bench.db").display(),
            key = random_hex(32)?,
            workers = a.workers,
        ),
    )?;
    let (serve, sid, token) = proc::api_node(&cfg, &dir, api)?;
    let auth = proc::basic_auth(&sid, &token);
    let created = ureq::post(&format!(
        "http://127.0.0.1:{api}/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json"
    ))
    .set("Authorization", &auth)
    .send_form(&[
        ("PhoneNumber", "+15550100"),
        ("VoiceUrl", &format!("http://127.0.0.1:{app}/voice")),
    ]);
    if let Err(e) = created {
        bail!("cannot create the bench number: {e}");
    }
    let scenario = dir.join("uac_wait_bye.xml");
    std::fs::write(&scenario, include_str!("../../tests/sipp/uac_wait_bye.xml"))?;
    // One call first renders the prompt (espeak-ng), so the run measures calls, not the first
    // synthesis.
    let warm = Command::new("sipp")
        .arg("-sf")
        .arg(&scenario)
        .args(["-s", "+15550100", &format!("127.0.0.1:{sip}")])
        .args(["-i", "127.0.0.1", "-p", &uac_port.to_string(), "-m", "1"])
        .args(["-timeout", "30", "-nostdin"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("sipp warm-up call")?;
    if !warm.success() {
        bail!("the warm-up call failed: is the instruction engine running?");
    }
    let warm_requests = requests.load(Ordering::Relaxed);
    let calls = a.rate * a.duration;
    let stat = dir.join("uac.csv");
    let v0 = proc::cpu_seconds(serve.0.id()).unwrap_or(0.0);
    let t0 = Instant::now();
    let uac = Command::new("sipp")
        .arg("-sf")
        .arg(&scenario)
        .args(["-s", "+15550100", &format!("127.0.0.1:{sip}")])
        .args(["-i", "127.0.0.1", "-p", &uac_port.to_string()])
        .args(["-r", &a.rate.to_string(), "-m", &calls.to_string()])
        .args(["-l", &(a.rate * 10).max(100).to_string()])
        .args(["-timeout", "300", "-nostdin"])
        .args(["-trace_stat", "-stf"])
        .arg(&stat)
        .args(["-trace_rtt", "-rtt_freq", "1"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start sipp uac")?;
    let uac_pid = uac.id();
    let out = uac.wait_with_output().context("sipp uac")?;
    let wall = t0.elapsed().as_secs_f64();
    let v1 = proc::cpu_seconds(serve.0.id()).unwrap_or(0.0);
    let _ = uac_pid;
    let csv = std::fs::read_to_string(&stat).unwrap_or_default();
    let ok = stat_field(&csv, "SuccessfulCall(C)").unwrap_or(0);
    let failed = stat_field(&csv, "FailedCall(C)").unwrap_or(0);
    let h = rtts(&dir);
    drop(serve);
    let fetched = requests.load(Ordering::Relaxed) - warm_requests;
    drop(dir);
    let pct = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "bench": "voice",
        "document": DOCUMENT,
        "offered_cps": a.rate,
        "duration_s": a.duration,
        "calls": calls,
        "completed": ok,
        "failed": failed,
        "instruction_fetches": fetched,
        "sipp_uac_exit_ok": out.status.success(),
        "wall_s": wall,
        "completed_cps": ok as f64 / wall,
        "invite_to_first_instruction_ms": {
            "samples": h.len(),
            "p50": pct(0.50),
            "p90": pct(0.90),
            "p99": pct(0.99),
            "max": h.max() as f64 / 1000.0,
        },
        "voxedge_cpu_s": v1 - v0,
        "voxedge_cpu_us_per_call": if ok > 0 { (v1 - v0) * 1e6 / ok as f64 } else { 0.0 },
        "note": "voxedge, sipp and the app server share this machine's cores; a call lasts the prompt (about 0.6 s) plus its hang-up; sipp measures response times in whole milliseconds (0 = under 1 ms)",
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "voxedge bench voice: {calls} calls offered at {}/s: {ok} completed, {failed} failed in {wall:.1} s ({:.0}/s); INVITE→first instruction p50 {:.1} ms p99 {:.1} ms; voxedge {:.0} CPU-µs per call",
            a.rate,
            ok as f64 / wall,
            pct(0.5),
            pct(0.99),
            report["voxedge_cpu_us_per_call"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
