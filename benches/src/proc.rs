//! Reading another process's CPU time and the kernel's UDP counters from /proc.

use anyhow::Context;

/// Linux reports /proc times in USER_HZ, fixed at 100 per second by the ABI.
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds consumed by process `pid` so far (all threads, live and exited).
///
/// # Errors
/// The process does not exist or /proc is not readable.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
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

/// UDP receive-buffer overflows counted by the kernel (all sockets), from /proc/net/snmp.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
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
