//! `voxedge bench relay`: relay capacity of `voxedge media` on loopback.
//!
//! Starts a `voxedge media` child (or uses `--target`), creates `--calls` bidirectional relays
//! through the management API, paces RTP on all 2 × calls streams, and reports offered and
//! delivered packets/s, loss, send→receive latency through the relay and the relay process's
//! CPU time per relayed packet (from /proc). `--overload` runs normal → overload → normal and
//! reports per-stream delivery in each phase.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::gen::{Generator, Phase, PhaseResult, StreamDef};
use crate::proc;

/// Options of `voxedge bench relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Bidirectional calls (relays); each carries two streams.
    #[arg(long, default_value_t = 1000)]
    pub calls: usize,
    /// Packets per second per stream (50 = 20 ms ptime).
    #[arg(long, default_value_t = 50.0)]
    pub pps_per_stream: f64,
    /// Measured seconds (per phase with --overload).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Use a running `voxedge media` at this management URL instead of starting one.
    #[arg(long)]
    pub target: Option<String>,
    /// Admin URL of the target (for /metrics); default: started process's.
    #[arg(long)]
    pub target_admin: Option<String>,
    /// PID of the target, for CPU accounting.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Worker threads of the started relay.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Generator sockets (endpoints shared by all streams).
    #[arg(long, default_value_t = 16)]
    pub gen_sockets: usize,
    /// Core the generator thread is pinned to (it busy-polls); default: the last core not used
    /// by the relay's workers (which start at core 1), or core 0.
    #[arg(long)]
    pub gen_core: Option<usize>,
    /// Run normal → overload → normal and report per-stream delivery per phase.
    #[arg(long)]
    pub overload: bool,
    /// Offered rate during overload, as a multiple of the normal rate.
    #[arg(long, default_value_t = 8.0)]
    pub overload_factor: f64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

struct Target {
    management: String,
    admin: String,
    pid: Option<u32>,
    child: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

fn start_target(a: &RelayArgs) -> anyhow::Result<Target> {
    if let Some(m) = &a.target {
        let admin = a
            .target_admin
            .clone()
            .context("--target needs --target-admin for metrics")?;
        return Ok(Target {
            management: m.trim_end_matches('/').to_string(),
            admin,
            pid: a.target_pid,
            child: None,
        });
    }
    let (admin_port, mgmt_port) = (free_port()?, free_port()?);
    // Two pairs per call, with headroom; ports stay below the ephemeral range.
    let port_min = 20000u32;
    let port_max = port_min + (a.calls as u32) * 4 + 64;
    if port_max > 32767 {
        bail!(
            "--calls {} needs more media ports than fit below 32768",
            a.calls
        );
    }
    let exe = std::env::current_exe().context("locate voxedge binary")?;
    let child = Command::new(exe)
        .args(["media", "--media-bind", "127.0.0.1", "--log", "warn"])
        .args(["--ng-listen", "127.0.0.1:0"])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args(["--management-listen", &format!("127.0.0.1:{mgmt_port}")])
        .args(["--workers", &a.workers.to_string()])
        .args([
            "--port-min",
            &port_min.to_string(),
            "--port-max",
            &port_max.to_string(),
        ])
        .env_remove("VOXEDGE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("start voxedge media")?;
    let t = Target {
        management: format!("http://127.0.0.1:{mgmt_port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
        pid: Some(child.id()),
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if agent().get(&format!("{}/health", t.admin)).call().is_ok() {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("voxedge media did not become healthy within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sum of a counter over all label sets in Prometheus text.
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn create_relays(
    t: &Target,
    gen: &Generator,
    calls: usize,
) -> anyhow::Result<(Vec<String>, Vec<StreamDef>)> {
    let results: Mutex<Vec<Option<(String, SocketAddr, SocketAddr)>>> =
        Mutex::new(vec![None; calls]);
    let threads = 8.min(calls.max(1));
    let err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for th in 0..threads {
            let (results, err) = (&results, &err);
            s.spawn(move || {
                let ag = agent();
                for i in (th..calls).step_by(threads) {
                    let r = (|| -> anyhow::Result<(String, SocketAddr, SocketAddr)> {
                        let body = json!({
                            "a": {"remote": gen.addr(2 * i)?.to_string()},
                            "b": {"remote": gen.addr(2 * i + 1)?.to_string()},
                        });
                        let v: Value = ag
                            .post(&format!("{}/v1/relays", t.management))
                            .send_json(body)?
                            .into_json()?;
                        let id = v["id"].as_str().context("id")?.to_string();
                        let a: SocketAddr = v["a"]["local"].as_str().context("a.local")?.parse()?;
                        let b: SocketAddr = v["b"]["local"].as_str().context("b.local")?.parse()?;
                        Ok((id, a, b))
                    })();
                    match r {
                        Ok(x) => {
                            results
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(x)
                        }
                        Err(e) => {
                            *err.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(e.context(format!("create relay {i}")));
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = err
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(e);
    }
    let mut ids = Vec::with_capacity(calls);
    let mut streams = Vec::with_capacity(2 * calls);
    for (i, r) in results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .enumerate()
    {
        let (id, a, b) = r.context("relay missing")?;
        ids.push(id);
        streams.push(StreamDef {
            sock: (2 * i) % gen.len(),
            dst: a,
        });
        streams.push(StreamDef {
            sock: (2 * i + 1) % gen.len(),
            dst: b,
        });
    }
    Ok((ids, streams))
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    cpu_s: f64,
    forwarded: f64,
    drops: f64,
    rcvbuf_errors: u64,
    at: Option<Instant>,
}

fn sample(t: &Target) -> Sample {
    let metrics = agent()
        .get(&format!("{}/metrics", t.admin))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default();
    Sample {
        cpu_s: t
            .pid
            .and_then(|p| proc::cpu_seconds(p).ok())
            .unwrap_or(f64::NAN),
        forwarded: metric_sum(&metrics, "voxedge_packets_forwarded_total"),
        drops: metric_sum(&metrics, "voxedge_drops_total"),
        rcvbuf_errors: proc::udp_rcvbuf_errors().unwrap_or(0),
        at: Some(Instant::now()),
    }
}

/// What held a phase's delivery below what was asked, judged from four rates (packets/s):
/// `"generator_send"` (the generator could not send at the asked rate), `"relay"` (the relay
/// forwarded less than it was offered), `"generator_receive"` (the relay forwarded what it
/// was offered but the generator did not take it in: its sockets overflowed or it read late,
/// so loss and latency describe the generator, not the relay), or `"none"`. Rates within 2 %
/// (5 % for sending, which is paced) count as equal.
fn limited_by(asked: f64, offered: f64, forwarded: f64, delivered: f64) -> &'static str {
    if offered < 0.95 * asked {
        "generator_send"
    } else if forwarded < 0.98 * offered {
        "relay"
    } else if delivered < 0.98 * forwarded {
        "generator_receive"
    } else {
        "none"
    }
}

fn phase_json(r: &PhaseResult, from: &Sample, to: &Sample, asked_pps: f64) -> Value {
    let secs = r.duration.as_secs_f64();
    let (sent, got) = (r.sent_total(), r.delivered_total());
    let h = &r.latency_ns;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let forwarded = to.forwarded - from.forwarded;
    let cpu = to.cpu_s - from.cpu_s;
    let wall = match (from.at, to.at) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => secs,
    };
    let ratios: Vec<f64> = r
        .sent
        .iter()
        .zip(&r.delivered)
        .filter(|(s, _)| **s > 0)
        .map(|(s, d)| f64::from(*d) / f64::from(*s))
        .collect();
    let min_ratio = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let (offered_pps, delivered_pps) = (sent as f64 / secs, got as f64 / secs);
    json!({
        "phase": r.name,
        "asked_pps": asked_pps,
        "limited_by": limited_by(asked_pps, offered_pps, forwarded / wall, delivered_pps),
        "offered_pps": offered_pps,
        "delivered_pps": delivered_pps,
        "loss_ratio": if sent == 0 { 0.0 } else { 1.0 - got as f64 / sent as f64 },
        "latency_us_p50": us(0.5),
        "latency_us_p99": us(0.99),
        "latency_us_p999": us(0.999),
        "latency_us_max": h.max() as f64 / 1000.0,
        "relay_forwarded_pps": forwarded / wall,
        "relay_cpu_cores": cpu / wall,
        "relay_cpu_us_per_packet": if forwarded > 0.0 { cpu * 1e6 / forwarded } else { f64::NAN },
        "relay_drops": to.drops - from.drops,
        "kernel_udp_rcvbuf_errors": to.rcvbuf_errors.saturating_sub(from.rcvbuf_errors),
        "generator_send_errors": r.send_errors,
        "streams": r.sent.len(),
        "streams_delivering": r.delivered.iter().filter(|d| **d > 0).count(),
        "streams_at_least_90pct": ratios.iter().filter(|x| **x >= 0.9).count(),
        "min_stream_delivery_ratio": if min_ratio.is_finite() { min_ratio } else { 0.0 },
    })
}

/// Runs the bench and prints its report.
///
/// # Errors
/// Set-up failures (process, API, sockets).
pub fn main(a: &RelayArgs) -> anyhow::Result<()> {
    if a.calls == 0 || a.duration <= 0.0 || a.pps_per_stream <= 0.0 {
        bail!("--calls, --duration and --pps-per-stream must be positive");
    }
    let t = start_target(a)?;
    let gen = Generator::bind(a.gen_sockets.max(2), IpAddr::from([127, 0, 0, 1]))?;
    let setup_start = Instant::now();
    let (ids, streams) = create_relays(&t, &gen, a.calls)?;
    let setup_s = setup_start.elapsed().as_secs_f64();
    let d = Duration::from_secs_f64(a.duration);
    let mut phases = vec![Phase {
        name: "warmup",
        duration: Duration::from_secs_f64(a.warmup),
        pps_per_stream: a.pps_per_stream,
        measured: false,
    }];
    if a.overload {
        phases.push(Phase {
            name: "before",
            duration: d,
            pps_per_stream: a.pps_per_stream,
            measured: true,
        });
        phases.push(Phase {
            name: "overload",
            duration: d,
            pps_per_stream: a.pps_per_stream * a.overload_factor,
            measured: true,
        });
        phases.push(Phase {
            name: "after",
            duration: d,
            pps_per_stream: a.pps_per_stream,
            measured: true,
        });
    } else {
        phases.push(Phase {
            name: "steady",
            duration: d,
            pps_per_stream: a.pps_per_stream,
            measured: true,
        });
    }
    let mut samples = vec![Sample::default(); phases.len() + 1];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gen_core = a.gen_core.or(if cores > a.workers + 1 {
        Some(cores - 1)
    } else {
        Some(0)
    });
    let results = gen.run(
        &streams,
        &phases,
        Duration::from_millis(500),
        gen_core,
        |i| samples[i] = sample(&t),
    )?;
    let phase_reports: Vec<Value> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.measured)
        .map(|(i, r)| {
            let asked = phases[i].pps_per_stream * streams.len() as f64;
            phase_json(r, &samples[i], &samples[i + 1], asked)
        })
        .collect();
    // Clean up relays on a target we did not start.
    if t.child.is_none() {
        let ag = agent();
        for id in &ids {
            let _ = ag
                .delete(&format!("{}/v1/relays/{id}", t.management))
                .call();
        }
    }
    let main_phase = phase_reports.first().cloned().unwrap_or(Value::Null);
    let mut report = json!({
        "bench": "relay",
        "calls": a.calls,
        "streams": streams.len(),
        "pps_per_stream": a.pps_per_stream,
        "duration_s": a.duration,
        "relay_workers": a.workers,
        "setup_s": setup_s,
        "setup_relays_per_s": a.calls as f64 / setup_s,
    });
    for k in [
        "limited_by",
        "offered_pps",
        "delivered_pps",
        "loss_ratio",
        "latency_us_p50",
        "latency_us_p99",
        "latency_us_p999",
        "latency_us_max",
        "relay_cpu_us_per_packet",
        "relay_cpu_cores",
        "relay_forwarded_pps",
        "relay_drops",
        "kernel_udp_rcvbuf_errors",
    ] {
        report[k] = main_phase[k].clone();
    }
    if a.overload {
        let after = phase_reports.iter().find(|p| p["phase"] == "after");
        let recovered = after.is_some_and(|p| p["streams_delivering"] == p["streams"]);
        report["overload"] = json!({"factor": a.overload_factor, "phases": phase_reports, "all_streams_recovered": recovered});
    }
    if a.json {
        println!("{report}");
    } else {
        print_human(&report, &phase_reports);
    }
    Ok(())
}

fn print_human(r: &Value, phases: &[Value]) {
    println!(
        "relay bench: {} calls, {} streams at {} pps each, relay workers {}",
        r["calls"], r["streams"], r["pps_per_stream"], r["relay_workers"]
    );
    println!(
        "setup: {:.2} s ({:.0} relays/s)",
        r["setup_s"].as_f64().unwrap_or(0.0),
        r["setup_relays_per_s"].as_f64().unwrap_or(0.0)
    );
    for p in phases {
        let f = |k: &str| p[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:>9}: offered {:>9.0} pps  delivered {:>9.0} pps  loss {:.4}%  latency p50 {:.0} µs p99 {:.0} µs p99.9 {:.0} µs max {:.0} µs",
            p["phase"].as_str().unwrap_or("?"),
            f("offered_pps"),
            f("delivered_pps"),
            100.0 * f("loss_ratio"),
            f("latency_us_p50"),
            f("latency_us_p99"),
            f("latency_us_p999"),
            f("latency_us_max"),
        );
        println!(
            "           relay: {:.2} CPU-µs/packet, {:.2} cores, {:.0} forwarded pps, {} drops; kernel UDP rcvbuf errors {}; streams delivering {}/{} (≥90%: {}), min per-stream delivery {:.3}",
            f("relay_cpu_us_per_packet"),
            f("relay_cpu_cores"),
            f("relay_forwarded_pps"),
            p["relay_drops"],
            p["kernel_udp_rcvbuf_errors"],
            p["streams_delivering"],
            p["streams"],
            p["streams_at_least_90pct"],
            f("min_stream_delivery_ratio"),
        );
        match p["limited_by"].as_str() {
            Some("generator_receive") => println!(
                "           limited by the generator's receiving: the relay forwarded what it was offered, so loss and latency here describe the generator (give it a core of its own, or fewer calls)"
            ),
            Some("generator_send") => println!(
                "           limited by the generator's sending: it could not offer the asked rate"
            ),
            Some("relay") => println!("           limited by the relay: it forwarded less than it was offered"),
            _ => {}
        }
    }
    if let Some(o) = r.get("overload") {
        println!(
            "all streams forwarding after overload: {}",
            o["all_streams_recovered"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::limited_by;

    #[test]
    fn the_bottleneck_is_named_from_the_rates() {
        assert_eq!(limited_by(100.0, 100.0, 100.0, 100.0), "none");
        assert_eq!(limited_by(100.0, 99.0, 98.5, 97.0), "none");
        assert_eq!(limited_by(100.0, 90.0, 90.0, 90.0), "generator_send");
        assert_eq!(limited_by(100.0, 100.0, 80.0, 80.0), "relay");
        // What this machine showed at 2,000 calls: 134k of 200k pps offered, all of it
        // forwarded, a tenth taken in. Sending is named first; at the rate it did offer, the
        // receiving is what failed.
        assert_eq!(
            limited_by(200_000.0, 133_576.0, 134_582.0, 12_925.0),
            "generator_send"
        );
        assert_eq!(
            limited_by(133_576.0, 133_576.0, 134_582.0, 12_925.0),
            "generator_receive"
        );
    }
}
