//! `voxedge bench sip`: calls per second through `voxedge serve` as a B2BUA with media
//! anchored, driven by sipp (from apt's `sip-tester`).
//!
//! Starts `voxedge serve` (dial plan: everything to a sipp UAS), a sipp UAS, and sipp's
//! built-in UAC at `--rate` calls/s for `--duration` seconds (each call: INVITE, 180, 200, ACK,
//! `--hold-ms`, BYE, 200 on both legs; a relay is created and deleted per call). Reports
//! completed and failed calls (from sipp's statistics) and CPU per call of voxedge and of the
//! two sipp processes (from /proc), so a reader can see who ran out of CPU.
//!
//! `--via kamailio` runs the same sipp scenario through Kamailio (from apt, the stateful proxy
//! of `tests/ng/kamailio.cfg`) with its `rtpengine` module anchoring media in rtpengine (from
//! apt, userspace `--table=-1`) instead, and reports their CPU per call: the comparison the SIP
//! issue asks for.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use crate::proc::{self, Kill, KillGroup};
use crate::relay::{agent, free_port};
use crate::workdir::WorkDir;

/// Options of `voxedge bench sip`.
#[derive(Debug, Clone, Args)]
pub struct SipArgs {
    /// Offered calls per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Seconds of offered load.
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// Call length after the ACK, milliseconds.
    #[arg(long, default_value_t = 100)]
    pub hold_ms: u32,
    /// Dataplane workers of the started voxedge.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// What carries the calls: `voxedge` (B2BUA with its dataplane) or `kamailio` (Kamailio
    /// proxy + rtpengine over ng).
    #[arg(long, default_value = "voxedge")]
    pub via: String,
    /// Media ports of the carrier's dataplane (voxedge's or rtpengine's), `LOW-HIGH`.
    #[arg(long, default_value = "20000-32000", value_parser = parse_port_range)]
    pub media_ports: (u16, u16),
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected LOW-HIGH"))?;
    let (lo, hi): (u16, u16) = (
        lo.trim().parse().map_err(|e| format!("{lo:?}: {e}"))?,
        hi.trim().parse().map_err(|e| format!("{hi:?}: {e}"))?,
    );
    if lo < 1024 || hi.saturating_sub(lo) < 3 {
        return Err(format!(
            "{s:?}: need 1024 <= LOW and at least four ports (two per call leg pair)"
        ));
    }
    Ok((lo, hi))
}

/// The Kamailio configuration of the ng interop test.
const KAMAILIO_CFG: &str = include_str!("../../tests/ng/kamailio.cfg");

/// What carries the calls, and how to read its CPU time.
enum Carrier {
    Voxedge(Kill),
    Kamailio { proxy: KillGroup, rtpengine: Kill },
}

impl Carrier {
    /// CPU seconds so far: (signalling, media) for kamailio + rtpengine, (all, 0) for voxedge.
    fn cpu(&self) -> (f64, f64) {
        match self {
            Carrier::Voxedge(p) => (proc::cpu_seconds(p.0.id()).unwrap_or(0.0), 0.0),
            Carrier::Kamailio { proxy, rtpengine } => (
                proc::group_cpu_seconds(proxy.0.id()),
                proc::cpu_seconds(rtpengine.0.id()).unwrap_or(0.0),
            ),
        }
    }
}

fn udp_port_taken(port: u16) -> bool {
    std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()
}

/// Starts `voxedge serve` routing every call to the UAS at `uas_port`.
fn start_voxedge(
    a: &SipArgs,
    dir: &std::path::Path,
    sip: u16,
    uas_port: u16,
) -> anyhow::Result<Carrier> {
    let admin = free_port()?;
    let cfg = dir.join("voxedge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api]\nenabled = false\n[ng]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nlevel = \"warn\"\n[sip]\nlisten = \"127.0.0.1:{sip}\"\n\
calls_per_second_max = 100000\ncalls_per_second_per_source_max = 100000\n\
routes = [{{ pattern = \"*\", target = \"sip:127.0.0.1:{uas_port}\" }}]\n\
[dataplane]\nworkers = {workers}\nbind = \"127.0.0.1\"\nport_min = {lo}\nport_max = {hi}\n",
            workers = a.workers,
            lo = a.media_ports.0,
            hi = a.media_ports.1,
        ),
    )?;
    let exe = std::env::current_exe().context("locate voxedge binary")?;
    let serve = Kill(
        Command::new(exe)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env_remove("VOXEDGE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("voxedge.log"))?))
            .spawn()
            .context("start voxedge serve")?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent()
        .get(&format!("http://127.0.0.1:{admin}/health"))
        .call()
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("voxedge serve did not become healthy");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Carrier::Voxedge(serve))
}

/// Starts rtpengine (userspace, one thread per voxedge worker) and Kamailio relaying every
/// call to the UAS at `uas_port` with media through rtpengine.
fn start_kamailio(
    a: &SipArgs,
    dir: &std::path::Path,
    sip: u16,
    uas_port: u16,
) -> anyhow::Result<Carrier> {
    let ng = free_port()?;
    let rtpengine = Kill(
        Command::new("rtpengine")
            .args(["--config-file=none", "--table=-1", "--interface=127.0.0.1"])
            .arg(format!("--listen-ng=127.0.0.1:{ng}"))
            .args(["--foreground", "--log-stderr", "--log-level=3"])
            .arg(format!("--port-min={}", a.media_ports.0))
            .arg(format!("--port-max={}", a.media_ports.1))
            .arg("--delete-delay=0")
            .arg(format!("--num-threads={}", a.workers.max(1)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start rtpengine (apt-get install rtpengine-daemon)")?,
    );
    let proxy = start_kamailio_proxy(dir, sip, ([127, 0, 0, 1], ng).into(), uas_port, (256, 16))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !udp_port_taken(ng) {
        if Instant::now() > deadline {
            bail!("rtpengine did not start (its ng port {ng} stays free)");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The module pings rtpengine at start; give it a moment before the first call.
    std::thread::sleep(Duration::from_millis(500));
    Ok(Carrier::Kamailio { proxy, rtpengine })
}

/// Starts Kamailio on `tests/ng/kamailio.cfg` (a stateful, record-routing proxy with the
/// `rtpengine` module), written into `dir` with its run directory and `dir/kamailio.log`: SIP on
/// 127.0.0.1:`sip`, the module talking ng to `ng`, every call relayed to the UAS on
/// 127.0.0.1:`uas_port`; `mem_mb` is (shared, private) memory. Returns once Kamailio listens
/// (at most 20 s; the error carries its log).
///
/// # Errors
/// Kamailio cannot be started (not installed: `apt-get install kamailio`) or does not listen.
pub fn start_kamailio_proxy(
    dir: &std::path::Path,
    sip: u16,
    ng: std::net::SocketAddr,
    uas_port: u16,
    mem_mb: (u32, u32),
) -> anyhow::Result<KillGroup> {
    use std::os::unix::process::CommandExt;
    let cfg = dir.join("kamailio.cfg");
    std::fs::write(&cfg, KAMAILIO_CFG)?;
    std::fs::create_dir_all(dir.join("run"))?;
    let proxy = KillGroup(
        Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-Y"])
            .arg(dir.join("run"))
            .args(["-m", &mem_mb.0.to_string(), "-M", &mem_mb.1.to_string()])
            .arg("-P")
            .arg(dir.join("run/kamailio.pid"))
            .args(["-A", &format!("SIP_PORT={sip}")])
            .args(["-A", &format!("NG_SOCK=\"udp:{ng}\"")])
            .args(["-A", &format!("UAS_URI=\"sip:127.0.0.1:{uas_port}\"")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                dir.join("kamailio.log"),
            )?))
            .process_group(0)
            .spawn()
            .context("start kamailio (apt-get install kamailio)")?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !udp_port_taken(sip) {
        if Instant::now() > deadline {
            bail!(
                "kamailio did not start: {}",
                std::fs::read_to_string(dir.join("kamailio.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(proxy)
}

/// The last `max` bytes of a text file (empty when it cannot be read).
fn tail(path: &std::path::Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

pub(crate) fn stat_field(csv: &str, name: &str) -> Option<u64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.last()?.split(';').collect();
    let i = header.iter().position(|h| *h == name)?;
    last.get(i)?.trim().parse().ok()
}

/// Runs the bench.
///
/// # Errors
/// sipp missing, or voxedge could not start.
pub fn main(a: &SipArgs) -> anyhow::Result<()> {
    if Command::new("sipp").arg("-v").output().is_err() {
        bail!("sipp is not installed (apt-get install sip-tester)");
    }
    let dir = WorkDir::create("sip")?;
    let (sip, uas_port, uac_port) = (free_port()?, free_port()?, free_port()?);
    let carrier = match a.via.as_str() {
        "voxedge" => start_voxedge(a, &dir, sip, uas_port),
        "kamailio" => start_kamailio(a, &dir, sip, uas_port),
        other => Err(anyhow::anyhow!(
            "--via takes voxedge or kamailio, not {other}"
        )),
    };
    let carrier = carrier?;
    let uas = Kill(
        Command::new("sipp")
            .args([
                "-sn",
                "uas",
                "-i",
                "127.0.0.1",
                "-p",
                &uas_port.to_string(),
                "-nostdin",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start sipp uas")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let calls = a.rate * a.duration;
    let stat = dir.join("uac.csv");
    let (v0, s0) = (carrier.cpu(), proc::cpu_seconds(uas.0.id()).unwrap_or(0.0));
    let t0 = Instant::now();
    let mut uac = Command::new("sipp")
        .args(["-sn", "uac", "-s", "1000", &format!("127.0.0.1:{sip}")])
        .args(["-i", "127.0.0.1", "-p", &uac_port.to_string()])
        .args(["-r", &a.rate.to_string(), "-m", &calls.to_string()])
        .args(["-l", &(a.rate * 4).max(100).to_string()])
        .args(["-d", &a.hold_ms.to_string(), "-timeout", "120", "-nostdin"])
        .args(["-trace_stat", "-stf"])
        .arg(&stat)
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("uac_errors.log"))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start sipp uac")?;
    // sipp's own `-timeout` did not end a saturated run (seen at 2,200 calls/s: the UAC stayed
    // idle with calls it had given up on); past the run plus two INVITE timeouts it is killed
    // and the report says so.
    let give_up = t0 + Duration::from_secs(u64::from(a.duration) + 70);
    // The UAC's CPU, read while it lives (its /proc entry goes when it is reaped): at most the
    // last 100 ms are missed.
    let mut uac_cpu = 0.0;
    let status = loop {
        uac_cpu = proc::cpu_seconds(uac.id()).unwrap_or(uac_cpu);
        if let Some(s) = uac.try_wait().context("sipp uac")? {
            break Some(s);
        }
        if Instant::now() > give_up {
            let _ = uac.kill();
            let _ = uac.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = t0.elapsed().as_secs_f64();
    let (v1, s1) = (carrier.cpu(), proc::cpu_seconds(uas.0.id()).unwrap_or(0.0));
    let csv = std::fs::read_to_string(&stat).unwrap_or_default();
    let ok = stat_field(&csv, "SuccessfulCall(C)").unwrap_or(0);
    let failed = stat_field(&csv, "FailedCall(C)").unwrap_or(0);
    drop(uas);
    drop(carrier);
    // What went wrong, for whoever reads a report with failed calls: sipp's account of the
    // unexpected messages and the end of the carrier's log.
    let diagnosis = (failed > 0 || ok < u64::from(calls)).then(|| {
        let log = match a.via.as_str() {
            "voxedge" => "voxedge.log",
            _ => "kamailio.log",
        };
        json!({
            "sipp_uac_errors": tail(&dir.join("uac_errors.log"), 4000),
            "carrier_log": tail(&dir.join(log), 4000),
        })
    });
    drop(dir);
    let report = json!({
        "bench": "sip",
        "offered_cps": a.rate,
        "duration_s": a.duration,
        "hold_ms": a.hold_ms,
        "calls": calls,
        "completed": ok,
        "failed": failed,
        "sipp_uac_exit_ok": status.is_some_and(|s| s.success()),
        "sipp_uac_killed": status.is_none(),
        "wall_s": wall,
        "completed_cps": ok as f64 / wall,
        "via": a.via,
        "signalling_cpu_s": v1.0 - v0.0,
        "media_cpu_s": v1.1 - v0.1,
        "cpu_us_per_call": if ok > 0 { (v1.0 - v0.0 + v1.1 - v0.1) * 1e6 / ok as f64 } else { 0.0 },
        "sipp_uas_cpu_s": s1 - s0,
        "sipp_uac_cpu_s": uac_cpu,
        // The box's two cores are shared: how much of them the three processes used.
        "box_cpu_ratio": (v1.0 - v0.0 + v1.1 - v0.1 + s1 - s0 + uac_cpu)
            / (wall * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)),
        "diagnosis": diagnosis,
        "note": "the carrier (voxedge alone, or kamailio's processes for signalling and rtpengine for media), sipp UAS and sipp UAC share this machine's cores",
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "voxedge bench sip via {}: {} calls offered at {}/s: {} completed, {} failed in {:.1} s; {:.0} CPU-µs per call",
            a.via,
            calls,
            a.rate,
            ok,
            failed,
            wall,
            report["cpu_us_per_call"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_port_range;

    #[test]
    fn port_ranges_are_checked_without_overflow() {
        assert_eq!(parse_port_range("20000-32000"), Ok((20000, 32000)));
        assert_eq!(parse_port_range(" 17000 - 17003 "), Ok((17000, 17003)));
        for bad in [
            "65534-65535",
            "17000-17002",
            "32000-20000",
            "80-2000",
            "20000",
            "a-b",
            "1-99999",
        ] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }
}
