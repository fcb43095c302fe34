//! `voxedge bench vs-rtpengine`: the same ng-driven workload on rtpengine (from apt, userspace
//! mode `--table=-1`, loopback only) and on `voxedge media`, one after the other in one run.
//!
//! For each target and each load (`--loads`, in calls): a fresh process; the calls set up over
//! ng (offer + answer, timed: set-up calls/s); RTP paced at `--pps-per-stream` on both streams
//! of every call for `--duration` seconds; then the calls deleted over ng. At the largest load
//! three more phases follow on the same calls: a max-rate phase (`--max-factor` × the rate), an
//! overload phase (`--overload-factor` ×) and a normal phase after it, which counts the streams
//! still forwarding (rtpengine permanently drops a socket whose receive queue backs up five
//! times). Reported per phase: offered and delivered packets/s, loss, send→receive latency
//! p50/p99, the target's CPU time per delivered packet and cores used (from /proc), and the
//! voxedge / rtpengine ratios.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value as Json};
use voxedge_bencode::{self as bencode, Value};

use crate::gen::{Generator, Phase, PhaseResult, StreamDef};
use crate::proc;
use crate::relay::free_port;

/// Options of `voxedge bench vs-rtpengine`.
#[derive(Debug, Clone, Args)]
pub struct VsArgs {
    /// Loads to measure, in concurrent calls (two streams each), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000")]
    pub loads: Vec<usize>,
    /// Packets per second per stream (50 = 20 ms ptime).
    #[arg(long, default_value_t = 50.0)]
    pub pps_per_stream: f64,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds before each load's measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Rate multiplier of the max-rate phase (at the largest load).
    #[arg(long, default_value_t = 3.0)]
    pub max_factor: f64,
    /// Rate multiplier of the overload phase (at the largest load).
    #[arg(long, default_value_t = 8.0)]
    pub overload_factor: f64,
    /// Run only one target: `voxedge` or `rtpengine`.
    #[arg(long)]
    pub only: Option<String>,
    /// Dataplane workers of voxedge.
    #[arg(long, default_value_t = 1)]
    pub voxedge_workers: usize,
    /// rtpengine's `--num-threads` (0: the same number as voxedge's workers, so both have as
    /// many forwarding threads).
    #[arg(long, default_value_t = 0)]
    pub rtpengine_threads: usize,
    /// Seconds at the normal rate between the overload and the phase that counts the streams
    /// still forwarding (queues built up during overload drain first).
    #[arg(long, default_value_t = 10.0)]
    pub recovery: f64,
    /// Generator sockets (endpoints shared by all streams).
    #[arg(long, default_value_t = 16)]
    pub gen_sockets: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

struct Target {
    name: &'static str,
    child: Child,
    ng: SocketAddr,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking ng client (bencode over UDP, retried like Kamailio's module).
struct Ng {
    sock: UdpSocket,
    to: SocketAddr,
}

/// Cookies are unique across every client of this process: servers cache replies by cookie.
static COOKIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Ng {
    fn new(to: SocketAddr) -> anyhow::Result<Ng> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(1000)))?;
        Ok(Ng { sock, to })
    }

    fn call(&mut self, req: &Value) -> anyhow::Result<Value> {
        let n = COOKIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cookie = format!("vs{}_{n}", std::process::id());
        let mut data = format!("{cookie} ").into_bytes();
        req.encode_into(&mut data);
        let mut buf = vec![0u8; 65536];
        for _ in 0..5 {
            self.sock.send_to(&data, self.to)?;
            // Until the read times out; late replies to earlier requests are skipped.
            while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if let Some(rest) = buf[..n].strip_prefix(format!("{cookie} ").as_bytes()) {
                    return bencode::decode(rest).context("ng reply is not bencode");
                }
            }
        }
        bail!("no ng reply from {} after 5 tries", self.to)
    }
}

fn ok_sdp_port(v: &Value) -> anyhow::Result<u16> {
    let result = v.get("result").and_then(Value::as_text).unwrap_or_default();
    if result != "ok" {
        bail!(
            "ng error: {}",
            v.get("error-reason")
                .and_then(Value::as_text)
                .unwrap_or(result)
        );
    }
    let sdp = v.get("sdp").and_then(Value::as_text).context("no sdp")?;
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .context("no m=audio port in the rewritten SDP")
}

fn sdp_for(addr: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8 101\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

fn wait_ping(ng: SocketAddr, child: &mut Child, name: &str) -> anyhow::Result<()> {
    let mut c = Ng::new(ng)?;
    c.sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            bail!("{name} exited at start ({s})");
        }
        let r = c.call(&Value::dict([("command", Value::str("ping"))]));
        if r.is_ok_and(|v| v.get("result").and_then(Value::as_text).as_deref() == Some("pong")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} did not answer ng ping within 20 s");
        }
    }
}

fn start(name: &'static str, a: &VsArgs, calls: usize) -> anyhow::Result<Target> {
    let ng: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let port_min = 20000usize;
    let port_max = port_min + calls * 4 + 256;
    if port_max > 32767 {
        bail!("{calls} calls need more media ports than fit below 32768");
    }
    let mut config_file = None;
    let mut child = match name {
        "rtpengine" => {
            // Pinned to the core voxedge's worker gets (core 1), off the generator's core 0,
            // when taskset is there.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let pin = cores > 1 && Command::new("taskset").arg("-V").output().is_ok();
            let mut c = if pin {
                let mut t = Command::new("taskset");
                t.args(["-c", "1", "rtpengine"]);
                t
            } else {
                Command::new("rtpengine")
            };
            c.args(["--config-file=none", "--table=-1", "--interface=127.0.0.1"])
                .arg(format!("--listen-ng={ng}"))
                .args(["--foreground", "--log-stderr", "--log-level=3"])
                .arg(format!("--port-min={port_min}"))
                .arg(format!("--port-max={port_max}"))
                .args(["--delete-delay=0", "--timeout=600"]);
            let threads = if a.rtpengine_threads > 0 {
                a.rtpengine_threads
            } else {
                a.voxedge_workers.max(1)
            };
            c.arg(format!("--num-threads={threads}"));
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start rtpengine (apt-get install rtpengine-daemon)")?
        }
        _ => {
            let exe = std::env::current_exe().context("locate voxedge binary")?;
            // No idle sweep inside the measurement (rtpengine runs with --timeout=600 too).
            let cfg = std::env::temp_dir().join(format!("voxedge-vs-{}.toml", std::process::id()));
            std::fs::write(&cfg, "[ng]\nmedia_timeout_secs = 600\n")?;
            config_file = Some(cfg.clone());
            Command::new(exe)
                .args(["media", "--config"])
                .arg(&cfg)
                .args(["--media-bind", "127.0.0.1", "--log", "warn"])
                .args(["--media-advertise", "127.0.0.1"])
                .args(["--ng-listen", &ng.to_string()])
                .args([
                    "--admin-listen",
                    "127.0.0.1:0",
                    "--management-listen",
                    "127.0.0.1:0",
                ])
                .args(["--workers", &a.voxedge_workers.to_string()])
                .args(["--port-min", &port_min.to_string()])
                .args(["--port-max", &port_max.to_string()])
                .env_remove("VOXEDGE_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("start voxedge media")?
        }
    };
    let up = wait_ping(ng, &mut child, name);
    // Read at start-up (it answered, or gave up): the file is no longer needed.
    if let Some(f) = config_file {
        let _ = std::fs::remove_file(f);
    }
    up?;
    Ok(Target { name, child, ng })
}

/// Sets up `calls` calls; returns the streams and the set-up rate (calls/s).
fn setup(t: &Target, gen: &Generator, calls: usize) -> anyhow::Result<(Vec<StreamDef>, f64)> {
    let mut ng = Ng::new(t.ng)?;
    let mut streams = Vec::with_capacity(2 * calls);
    let t0 = Instant::now();
    for i in 0..calls {
        let (caller, callee) = (gen.addr(2 * i)?, gen.addr(2 * i + 1)?);
        let call_id = format!("vs-{i}");
        let flags = Value::List(vec![Value::str("trust-address")]);
        let replace = Value::List(vec![Value::str("origin"), Value::str("session-connection")]);
        let offer = ng.call(&Value::dict([
            ("command", Value::str("offer")),
            ("call-id", Value::str(&call_id)),
            ("from-tag", Value::str(&format!("a{i}"))),
            ("sdp", Value::str(&sdp_for(caller))),
            ("flags", flags.clone()),
            ("replace", replace.clone()),
        ]))?;
        let to_callee = ok_sdp_port(&offer).with_context(|| format!("offer {i}"))?;
        let answer = ng.call(&Value::dict([
            ("command", Value::str("answer")),
            ("call-id", Value::str(&call_id)),
            ("from-tag", Value::str(&format!("a{i}"))),
            ("to-tag", Value::str(&format!("b{i}"))),
            ("sdp", Value::str(&sdp_for(callee))),
            ("flags", flags),
            ("replace", replace),
        ]))?;
        let to_caller = ok_sdp_port(&answer).with_context(|| format!("answer {i}"))?;
        let local = IpAddr::from([127, 0, 0, 1]);
        streams.push(StreamDef {
            sock: (2 * i) % gen.len(),
            dst: SocketAddr::new(local, to_caller),
        });
        streams.push(StreamDef {
            sock: (2 * i + 1) % gen.len(),
            dst: SocketAddr::new(local, to_callee),
        });
    }
    Ok((streams, calls as f64 / t0.elapsed().as_secs_f64().max(1e-9)))
}

fn teardown(t: &Target, calls: usize) -> anyhow::Result<()> {
    let mut ng = Ng::new(t.ng)?;
    for i in 0..calls {
        let _ = ng.call(&Value::dict([
            ("command", Value::str("delete")),
            ("call-id", Value::str(&format!("vs-{i}"))),
            ("from-tag", Value::str(&format!("a{i}"))),
        ]))?;
    }
    Ok(())
}

fn phase_json(r: &PhaseResult, cpu_s: f64, wall_s: f64) -> Json {
    let secs = r.duration.as_secs_f64();
    let (sent, got) = (r.sent_total(), r.delivered_total());
    let us = |q: f64| r.latency_ns.value_at_quantile(q) as f64 / 1000.0;
    let ratios: Vec<f64> = r
        .sent
        .iter()
        .zip(&r.delivered)
        .filter(|(s, _)| **s > 0)
        .map(|(s, d)| f64::from(*d) / f64::from(*s))
        .collect();
    json!({
        "phase": r.name,
        "offered_pps": sent as f64 / secs,
        "delivered_pps": got as f64 / secs,
        "loss_ratio": if sent == 0 { 0.0 } else { 1.0 - got as f64 / sent as f64 },
        "latency_us_p50": us(0.5),
        "latency_us_p99": us(0.99),
        "cpu_cores": cpu_s / wall_s.max(1e-9),
        "cpu_us_per_delivered_packet": if got > 0 { cpu_s * 1e6 / got as f64 } else { f64::NAN },
        "streams": r.sent.len(),
        "streams_delivering": r.delivered.iter().filter(|d| **d > 0).count(),
        "streams_at_least_90pct": ratios.iter().filter(|x| **x >= 0.9).count(),
    })
}

/// One load on one target: returns the load's report.
fn run_load(a: &VsArgs, name: &'static str, calls: usize, last: bool) -> anyhow::Result<Json> {
    let t = start(name, a, calls)?;
    let gen = Generator::bind(a.gen_sockets.max(2), IpAddr::from([127, 0, 0, 1]))?;
    let (streams, setup_cps) = setup(&t, &gen, calls)?;
    let d = Duration::from_secs_f64(a.duration);
    let phase = |name: &'static str, factor: f64, measured: bool, dur: Duration| Phase {
        name,
        duration: dur,
        pps_per_stream: a.pps_per_stream * factor,
        measured,
    };
    let mut phases = vec![
        phase("warmup", 1.0, false, Duration::from_secs_f64(a.warmup)),
        phase("paced", 1.0, true, d),
    ];
    if last {
        phases.push(phase("max-rate", a.max_factor, true, d));
        phases.push(phase("overload", a.overload_factor, true, d));
        phases.push(phase(
            "recovery",
            1.0,
            false,
            Duration::from_secs_f64(a.recovery),
        ));
        phases.push(phase("after-overload", 1.0, true, d));
    }
    let pid = t.child.id();
    let mut marks: Vec<(f64, Instant)> = Vec::new();
    // The generator busy-polls on a core of its own: voxedge's workers start at core 1, so the
    // last core when there are enough, else core 0 (rtpengine's threads are not pinned).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gen_core = if cores > a.voxedge_workers + 1 {
        cores - 1
    } else {
        0
    };
    // On a thread of its own: pinning must not stick to this thread, whose affinity the next
    // target process would inherit (and then share the generator's core).
    let results = std::thread::scope(|s| {
        s.spawn(|| {
            gen.run(
                &streams,
                &phases,
                Duration::from_millis(1500),
                Some(gen_core),
                |_| marks.push((proc::cpu_seconds(pid).unwrap_or(f64::NAN), Instant::now())),
            )
        })
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))
    })??;
    let reports: Vec<Json> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.measured)
        .map(|(i, r)| {
            let (c0, t0) = marks[i];
            let (c1, t1) = marks[i + 1];
            phase_json(r, c1 - c0, (t1 - t0).as_secs_f64())
        })
        .collect();
    teardown(&t, calls)?;
    Ok(json!({
        "target": t.name,
        "calls": calls,
        "setup_calls_per_s": setup_cps,
        "phases": reports,
    }))
}

/// Runs the bench.
///
/// # Errors
/// A target that cannot start (rtpengine missing: `apt-get install rtpengine-daemon`), ng
/// errors during set-up, or sockets.
pub fn main(a: &VsArgs) -> anyhow::Result<()> {
    if a.loads.is_empty() || a.loads.contains(&0) || a.duration <= 0.0 {
        bail!("--loads must list positive call counts and --duration be positive");
    }
    let targets: Vec<&'static str> = match a.only.as_deref() {
        Some("voxedge") => vec!["voxedge"],
        Some("rtpengine") => vec!["rtpengine"],
        Some(o) => bail!("--only takes voxedge or rtpengine, not {o}"),
        None => vec!["rtpengine", "voxedge"],
    };
    let max_load = a.loads.iter().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    for name in &targets {
        for &calls in &a.loads {
            let r = run_load(a, name, calls, calls == max_load)?;
            if !a.json {
                print_load(&r);
            }
            out.push(r);
        }
    }
    // voxedge / rtpengine per load and phase.
    let mut ratios = Vec::new();
    for v in out.iter().filter(|r| r["target"] == "voxedge") {
        let Some(r) = out
            .iter()
            .find(|r| r["target"] == "rtpengine" && r["calls"] == v["calls"])
        else {
            continue;
        };
        let (vp, rp) = (v["phases"].as_array(), r["phases"].as_array());
        for (pv, pr) in vp.into_iter().flatten().zip(rp.into_iter().flatten()) {
            let q = |k: &str| {
                let (x, y) = (
                    pv[k].as_f64().unwrap_or(f64::NAN),
                    pr[k].as_f64().unwrap_or(f64::NAN),
                );
                if y > 0.0 {
                    x / y
                } else {
                    f64::NAN
                }
            };
            ratios.push(json!({
                "calls": v["calls"],
                "phase": pv["phase"],
                "cpu_per_packet_ratio": q("cpu_us_per_delivered_packet"),
                "p99_ratio": q("latency_us_p99"),
                "voxedge_loss": pv["loss_ratio"],
                "rtpengine_loss": pr["loss_ratio"],
                "voxedge_streams_alive": pv["streams_at_least_90pct"],
                "rtpengine_streams_alive": pr["streams_at_least_90pct"],
            }));
        }
    }
    let report = json!({
        "bench": "vs-rtpengine",
        "pps_per_stream": a.pps_per_stream,
        "duration_s": a.duration,
        "voxedge_workers": a.voxedge_workers,
        "rtpengine_threads": if a.rtpengine_threads == 0 { a.voxedge_workers.max(1) } else { a.rtpengine_threads },
        "results": out,
        "voxedge_vs_rtpengine": ratios,
        "note": "both targets, the generator (pinned to the last core) and their kernels share this machine's cores; CPU is the target process's user+system time from /proc",
    });
    if a.json {
        println!("{report}");
    } else {
        for r in report["voxedge_vs_rtpengine"]
            .as_array()
            .into_iter()
            .flatten()
        {
            println!(
                "{:>5} calls {:>15}: voxedge/rtpengine CPU per packet {:.2}, p99 {:.2}; loss {:.4} vs {:.4}; streams ≥90% {} vs {}",
                r["calls"], r["phase"].as_str().unwrap_or("?"),
                r["cpu_per_packet_ratio"].as_f64().unwrap_or(f64::NAN),
                r["p99_ratio"].as_f64().unwrap_or(f64::NAN),
                r["voxedge_loss"].as_f64().unwrap_or(f64::NAN),
                r["rtpengine_loss"].as_f64().unwrap_or(f64::NAN),
                r["voxedge_streams_alive"], r["rtpengine_streams_alive"],
            );
        }
    }
    Ok(())
}

fn print_load(r: &Json) {
    println!(
        "{} {} calls: set-up {:.0} calls/s",
        r["target"].as_str().unwrap_or("?"),
        r["calls"],
        r["setup_calls_per_s"].as_f64().unwrap_or(0.0)
    );
    for p in r["phases"].as_array().into_iter().flatten() {
        let f = |k: &str| p[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "  {:>15}: offered {:>8.0} pps delivered {:>8.0} pps loss {:.4}% p50 {:.0} µs p99 {:.0} µs, {:.2} CPU-µs/packet ({:.2} cores), streams ≥90% {}/{}",
            p["phase"].as_str().unwrap_or("?"),
            f("offered_pps"),
            f("delivered_pps"),
            100.0 * f("loss_ratio"),
            f("latency_us_p50"),
            f("latency_us_p99"),
            f("cpu_us_per_delivered_packet"),
            f("cpu_cores"),
            p["streams_at_least_90pct"],
            p["streams"],
        );
    }
}
