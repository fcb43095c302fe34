//! Validated dataplane configuration: what the control plane hands to [`crate::Dataplane::start`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Upper bound on packets handled per burst (DPDK's customary 32).
pub const BURST_SIZE_MAX: usize = 32;

/// Dataplane settings. Deserialised from the `[dataplane]` table of the TOML config; unknown
/// keys are rejected so that a typo never silently falls back to a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Number of worker threads (each owns a slice of the port range). 0 means "auto":
    /// half the cores, at least one, so the control plane and kernel keep the rest.
    pub workers: usize,
    /// Pin worker `i` to `cores[i]` (or to core `i + 1` when `cores` is empty).
    pub pin_cores: bool,
    /// Explicit core ids for workers.
    pub cores: Vec<usize>,
    /// Address the media sockets bind to.
    pub bind: IpAddr,
    /// Address announced to peers (SDP, relay API). Defaults to `bind`, or to the host's
    /// primary address when `bind` is unspecified (0.0.0.0 / ::).
    pub advertise: Option<IpAddr>,
    /// First media port (inclusive). RTP uses even ports, RTCP the next odd one.
    pub port_min: u16,
    /// Last media port (inclusive).
    pub port_max: u16,
    /// Packets received per burst, 1..=32.
    pub burst_size: usize,
    /// How long a worker with nothing to do may sleep in the kernel, in microseconds.
    /// Lower means less latency on a lightly loaded box and more CPU when idle.
    pub idle_wait_us: u64,
    /// Streams that receive nothing for this long raise a `MediaTimeout` event. 0 disables.
    pub media_timeout_ms: u64,
    /// DSCP set on media sockets (46 = EF, RFC 3246).
    pub dscp: u8,
    /// Kernel receive buffer per media socket, bytes.
    pub socket_rcvbuf_bytes: usize,
    /// Kernel send buffer per media socket, bytes.
    pub socket_sndbuf_bytes: usize,
    /// Commands queued per worker before the control plane is told the worker is busy.
    pub command_queue_max: usize,
    /// Events queued (all workers) before new events are dropped and counted.
    pub event_queue_max: usize,
    /// Streams (ports) one worker may hold.
    pub streams_per_worker_max: usize,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            pin_cores: true,
            cores: Vec::new(),
            bind: IpAddr::from([0, 0, 0, 0]),
            advertise: None,
            port_min: 30000,
            port_max: 40000,
            burst_size: BURST_SIZE_MAX,
            idle_wait_us: 1000,
            media_timeout_ms: 30_000,
            dscp: 46,
            socket_rcvbuf_bytes: 256 * 1024,
            socket_sndbuf_bytes: 256 * 1024,
            command_queue_max: 4096,
            event_queue_max: 65536,
            streams_per_worker_max: 1 << 20,
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("dataplane.port_min ({min}) must be below dataplane.port_max ({max})")]
    PortRange { min: u16, max: u16 },
    #[error("dataplane port range {min}-{max} gives {pairs} RTP/RTCP pairs, fewer than one per worker ({workers})")]
    PortRangeTooSmall {
        min: u16,
        max: u16,
        pairs: usize,
        workers: usize,
    },
    #[error("dataplane.burst_size must be 1..={max}, got {got}")]
    BurstSize { got: usize, max: usize },
    #[error("dataplane.dscp must be 0..=63, got {0}")]
    Dscp(u8),
    #[error("dataplane.cores lists {cores} cores for {workers} workers")]
    Cores { cores: usize, workers: usize },
    #[error("dataplane.{0} must be at least 1")]
    Zero(&'static str),
}

impl DataplaneConfig {
    /// Worker count after resolving "auto".
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / 2).max(1)
    }

    /// Checks the settings that would otherwise fail later, far from their cause.
    ///
    /// # Errors
    /// The first setting that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (min, max) = (self.port_min, self.port_max);
        if min >= max {
            return Err(ConfigError::PortRange { min, max });
        }
        let workers = self.worker_count();
        let pairs = usize::from(max - min + 1) / 2;
        if pairs < workers {
            return Err(ConfigError::PortRangeTooSmall {
                min,
                max,
                pairs,
                workers,
            });
        }
        if self.burst_size == 0 || self.burst_size > BURST_SIZE_MAX {
            return Err(ConfigError::BurstSize {
                got: self.burst_size,
                max: BURST_SIZE_MAX,
            });
        }
        if self.dscp > 63 {
            return Err(ConfigError::Dscp(self.dscp));
        }
        if !self.cores.is_empty() && self.cores.len() < workers {
            return Err(ConfigError::Cores {
                cores: self.cores.len(),
                workers,
            });
        }
        for (name, v) in [
            ("command_queue_max", self.command_queue_max),
            ("event_queue_max", self.event_queue_max),
            ("streams_per_worker_max", self.streams_per_worker_max),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }
}
