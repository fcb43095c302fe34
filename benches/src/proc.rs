//! Reading another process's CPU time and the kernel's UDP counters from /proc.

use anyhow::Context;

/// Linux reports /proc times in USER_HZ, fixed at 100 per second by the ABI.
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds consumed by process `pid` so far (all threads, live and exited).
///
/// # Errors
/// The process does not exist or /proc is not readable.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds from a `/proc/…/stat` file (a process's, or a thread's under
/// `/proc/self/task/TID/stat`).
///
/// # Errors
/// The file is not readable or not in the kernel's format.
pub fn stat_cpu_seconds(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / USER_HZ)
}

/// User + system CPU seconds of every live process in process group `pgid` (a daemon that
/// forks its workers, e.g. kamailio started as a group leader).
pub fn group_cpu_seconds(pgid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    // After ')': state, ppid, pgrp.
                    rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(pgid)
        })
        .filter_map(|pid| cpu_seconds(pid).ok())
        .sum()
}

/// A process group killed (SIGKILL to the group) and its leader reaped when dropped.
pub struct KillGroup(pub std::process::Child);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

/// UDP receive-buffer overflows counted by the kernel (all sockets), from /proc/net/snmp.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// A child process killed (and reaped) when dropped, so a failing bench leaves nothing behind.
pub(crate) struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `voxedge serve` with the REST API, on the config file `cfg` (its `[api] listen` on port
/// `api`): creates the bench account with `voxedge admin account create`, starts the node in
/// `dir` and waits until the API answers. Returns the node, the account SID and its token.
///
/// # Errors
/// The account cannot be created, or the node does not start within 30 s.
pub(crate) fn api_node(
    cfg: &std::path::Path,
    dir: &std::path::Path,
    api: u16,
) -> anyhow::Result<(Kill, String, String)> {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let exe = std::env::current_exe().context("locate voxedge binary")?;
    let out = Command::new(&exe)
        .args(["admin", "--config"])
        .arg(cfg)
        .args(["account", "create", "--friendly-name", "bench", "--json"])
        .env_remove("VOXEDGE_CONFIG")
        .output()
        .context("voxedge admin account create")?;
    if !out.status.success() {
        anyhow::bail!(
            "cannot create the bench account: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let acc: serde_json::Value = serde_json::from_slice(&out.stdout).context("admin JSON")?;
    let sid = acc["sid"].as_str().context("sid")?.to_string();
    let token = acc["auth_token"].as_str().context("token")?.to_string();
    let serve = Kill(
        Command::new(&exe)
            .args(["serve", "--config"])
            .arg(cfg)
            .current_dir(dir)
            .env_remove("VOXEDGE_CONFIG")
            .stdout(Stdio::null())
            .spawn()
            .context("start voxedge serve")?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("http://127.0.0.1:{api}/openapi.json"))
        .call()
        .is_err()
    {
        if Instant::now() > deadline {
            anyhow::bail!("voxedge serve did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((serve, sid, token))
}

/// HTTP Basic credentials of an account.
pub(crate) fn basic_auth(sid: &str, token: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"))
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_cpu_is_readable() {
        let s = super::cpu_seconds(std::process::id()).expect("own stat");
        assert!(s >= 0.0);
        assert!(super::udp_rcvbuf_errors().is_some());
    }
}
