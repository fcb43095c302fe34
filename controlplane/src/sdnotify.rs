//! systemd's readiness and watchdog protocol (`sd_notify`, `Type=notify`), without libsystemd:
//! datagrams to the socket named in `NOTIFY_SOCKET`. Does nothing when not run by systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where systemd listens, if it does.
#[derive(Debug, Clone)]
pub struct Notifier {
    path: String,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when unset or empty.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var("NOTIFY_SOCKET").ok()?;
        (!path.is_empty()).then_some(Notifier { path })
    }

    /// Sends one state message (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=…`).
    /// Failures are logged, never fatal: the service works without systemd.
    pub fn notify(&self, state: &str) {
        let r = UnixDatagram::unbound().and_then(|s| {
            if let Some(name) = self.path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                s.send_to_addr(state.as_bytes(), &addr)
            } else {
                s.send_to(state.as_bytes(), &self.path)
            }
        });
        if let Err(e) = r {
            tracing::warn!("sd_notify to {}: {e}", self.path);
        }
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process per
/// `WATCHDOG_PID`), halved as systemd recommends.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
