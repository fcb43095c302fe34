//! `voxedge bench dpdk --baseline`: DPDK's own forwarding rate on the worker's core, measured
//! just before the bench with `dpdk-testpmd` (io-forward between two `net_null` ports, the
//! packets' data never touched). A per-core packet rate says little across machines (a VM's
//! core does a fraction of what a bare-metal one does); the bench's rate as a share of what
//! DPDK itself forwards on the same core, the same minute, does.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Stats periods (1 s) of testpmd output skipped: the first shows no rate yet (nothing to
/// compare with), the next is a warm-up.
const SKIP_S: usize = 2;
/// Bound on testpmd's start-up and skipped periods, beyond the measured seconds.
const START_LIMIT_S: u64 = 30;

/// testpmd's io-forward rate on `core` (packets/s summed over both ports, all forwarded by that
/// one core), over `seconds` after a start-up of [`SKIP_S`] seconds.
///
/// # Errors
/// testpmd is not installed, failed to start, or printed no rates.
pub fn testpmd(core: usize, seconds: f64, hugepages: bool) -> anyhow::Result<Value> {
    let main_core = usize::from(core == 0);
    let mut eal: Vec<String> = vec![
        format!("-l{main_core},{core}"),
        "--no-pci".into(),
        "--no-shconf".into(),
        format!("--file-prefix=vxbase{}", std::process::id()),
        "--log-level=*:error".into(),
        "--vdev=net_null0".into(),
        "--vdev=net_null1".into(),
        "-m512".into(),
    ];
    if hugepages {
        eal.push("--huge-unlink".into());
    } else {
        eal.push("--no-huge".into());
    }
    let app = [
        "--total-num-mbufs=8192",
        "--forward-mode=io",
        "--nb-cores=1",
        "--auto-start",
        "--stats-period=1",
    ];
    let wanted = (seconds.ceil() as usize).max(1);
    let command = format!("dpdk-testpmd {} -- {}", eal.join(" "), app.join(" "));
    // Line-buffered (`stdbuf`), so each period's rates arrive as testpmd prints them.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "dpdk-testpmd"])
        .args(&eal)
        .arg("--")
        .args(app)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting `stdbuf dpdk-testpmd` for --baseline")?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().context("testpmd stdout")?;
    let reader = std::thread::spawn(move || {
        let mut port0 = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some(pps) = rx_pps(&line) else { continue };
            // One block per port per period, port 0 first.
            match port0.take() {
                None => port0 = Some(pps),
                Some(p0) => {
                    if tx.send(p0 + pps).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let stderr = child.stderr.take().context("testpmd stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let deadline =
        Instant::now() + Duration::from_secs(START_LIMIT_S) + Duration::from_secs_f64(seconds);
    let mut per_period = Vec::new();
    while per_period.len() < SKIP_S + wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => per_period.push(r),
            Err(_) => break,
        }
    }
    // SIGTERM: testpmd stops its ports and exits; SIGKILL if it has not within 5 s.
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let stop_by = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < stop_by => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                break child.wait().ok();
            }
        }
    };
    let _ = reader.join();
    let err = err_reader.join().unwrap_or_default();
    let samples: Vec<f64> = per_period.iter().skip(SKIP_S).copied().collect();
    if samples.len() < wanted {
        if err.contains("failed to run command") {
            bail!(
                "--baseline needs dpdk-testpmd, which is not installed \
                 (Debian/Ubuntu package `dpdk-dev`)"
            );
        }
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        bail!(
            "dpdk-testpmd for --baseline gave {} of the {} forwarding rates wanted within {} s \
             (exit: {}; stderr: {}; command: {command})",
            per_period.len(),
            SKIP_S + wanted,
            START_LIMIT_S as f64 + seconds,
            status.map_or_else(|| "unknown".to_string(), |s| s.to_string()),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    let median = super::median(&samples).unwrap_or(0.0);
    Ok(json!({
        "tool": "dpdk-testpmd",
        "forward_mode": "io",
        "ports": "2 x net_null",
        "core": core,
        "mpps_per_core": median / 1e6,
        "samples_mpps": samples.iter().map(|s| s / 1e6).collect::<Vec<_>>(),
        "command": command,
    }))
}

/// The rate on a testpmd `Rx-pps:` line (one per port per stats period).
fn rx_pps(line: &str) -> Option<f64> {
    let mut w = line.split_whitespace();
    if w.next() != Some("Rx-pps:") {
        return None;
    }
    w.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::rx_pps;

    #[test]
    fn rates_come_from_rx_pps_lines_only() {
        assert_eq!(
            rx_pps("  Rx-pps:     20728559          Rx-bps:            0"),
            Some(20_728_559.0)
        );
        for other in [
            "  Tx-pps:     20728559          Tx-bps:            0",
            "  RX-packets: 93 RX-missed: 0 RX-bytes:  0",
            "  Rx-pps:     x",
            "  Rx-pps:",
            "",
        ] {
            assert_eq!(rx_pps(other), None, "{other:?}");
        }
    }
}
