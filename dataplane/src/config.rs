//! Validated dataplane configuration: what the control plane hands to [`crate::Dataplane::start`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::io::netstack::{parse_mac, Interface, IpNet};

use serde::{Deserialize, Serialize};

/// Upper bound on packets handled per burst (DPDK's customary 32).
pub const BURST_SIZE_MAX: usize = 32;

/// Dataplane settings. Deserialised from the `[dataplane]` table of the TOML config; unknown
/// keys are rejected so that a typo never silently falls back to a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Packet I/O: `socket` (kernel UDP sockets, the default) or `dpdk` (kernel bypass; needs a
    /// build with the `dpdk` feature and the `[dataplane.dpdk]` table).
    pub backend: Backend,
    /// Number of worker threads (each owns a slice of the port range). 0 means "auto":
    /// half the cores, at least one, so the control plane and kernel keep the rest.
    pub workers: usize,
    /// Pin worker `i` to `cores[i]` (or to core `i + 1` when `cores` is empty).
    pub pin_cores: bool,
    /// Explicit core ids for workers.
    pub cores: Vec<usize>,
    /// Address the media sockets bind to.
    pub bind: IpAddr,
    /// Further local media addresses. Each adds a full port range of capacity (a UDP port
    /// range holds at most ~32k RTP/RTCP pairs per address); relays are spread over them.
    pub extra_addresses: Vec<IpAddr>,
    /// Address announced to peers (SDP, relay API). Defaults to `bind`, or to the host's
    /// primary address when `bind` is unspecified (0.0.0.0 / ::).
    pub advertise: Option<IpAddr>,
    /// First media port (inclusive). RTP uses even ports, RTCP the next odd one.
    pub port_min: u16,
    /// Last media port (inclusive).
    pub port_max: u16,
    /// Packets received per burst, 1..=32.
    pub burst_size: usize,
    /// Whether a worker holds each received burst until its next receive call, fetching the
    /// burst's streams into cache while it processes the burst before: `auto` (the
    /// backend's choice: on for DPDK, off for sockets), `on`, `off`. On raises the
    /// forwarding rate when the stream table is larger than the CPU's caches, at the price
    /// of one more burst's time of latency (see docs/dpdk.md).
    pub overlap_bursts: OverlapBursts,
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
    /// How the socket backend sends IPv4 media: `auto` (one raw `IPPROTO_RAW` socket per worker
    /// sends a whole burst in one system call when the process has `CAP_NET_RAW`, else the
    /// per-port sockets), `on` (raw, or refuse to start), `off` (per-port sockets). Raw sending
    /// applies to IPv4 ports (on `0.0.0.0` from the source the route gives each destination);
    /// IPv6 ports always use their own socket.
    pub socket_raw_tx: RawTx,
    /// Commands queued per worker before the control plane is told the worker is busy.
    pub command_queue_max: usize,
    /// Events queued (all workers) before new events are dropped and counted.
    pub event_queue_max: usize,
    /// Streams (ports) one worker may hold.
    pub streams_per_worker_max: usize,
    /// Settings of the DPDK backend (used when `backend = "dpdk"`).
    pub dpdk: DpdkConfig,
}

/// Which packet I/O the configured dataplane uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Socket,
    Dpdk,
}

/// How received packets reach the worker that owns their UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Steering {
    /// rte_flow rules when the device accepts them, else RSS plus software hand-off.
    #[default]
    Auto,
    /// rte_flow rules or fail to start.
    RteFlow,
    /// RSS plus software hand-off between workers.
    Rss,
}

/// `[dataplane.dpdk]`: the EAL, the port that carries media and the appliance's addresses on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpdkConfig {
    /// EAL main lcore. Workers are registered with the EAL as further lcores.
    pub main_lcore: usize,
    /// PCI devices given to the EAL (`-a`). Empty with `vdevs` set means `--no-pci`.
    pub devices: Vec<String>,
    /// Virtual devices (`--vdev`), e.g. `net_af_xdp0,iface=eth1` or a bonding device.
    pub vdevs: Vec<String>,
    /// The ethdev that carries media: a device name, or a port id written as a string.
    pub port: String,
    /// Hugepage memory per NUMA socket in MiB (`--socket-mem`); empty = EAL default. With
    /// `no_huge`, their sum (or 256) is passed as `-m`.
    pub memory_mb: Vec<u32>,
    /// Run without hugepages (tests, development; slower).
    pub no_huge: bool,
    pub huge_dir: Option<String>,
    /// EAL file prefix; distinct per process on one host.
    pub file_prefix: String,
    /// Extra EAL arguments, appended last.
    pub eal_args: Vec<String>,
    /// mbufs in each NUMA socket's pool.
    pub mbufs: u32,
    /// Per-lcore mbuf cache (0 disables it).
    pub mbuf_cache: u32,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// The appliance's addresses on the port, with their prefixes (`203.0.113.10/24`).
    pub addresses: Vec<String>,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// Fixed MAC for the gateways instead of ARP/ND (`02:00:00:00:00:01`).
    pub gateway_mac: Option<String>,
    /// 802.1Q VLAN id of media traffic.
    pub vlan: Option<u16>,
    pub steering: Steering,
    /// Verify UDP checksums over the whole datagram in software when the port did not, and
    /// drop (and count) bad ones, as the kernel does. Off (the default), the IPv4 header
    /// checksum is still verified and the UDP checksum is carried to the forwarded datagram
    /// by incremental update, as routers and NATs do: damage stays detectable by the
    /// receiver, and the payload is never read (ADR 0019).
    pub verify_checksums: bool,
    /// When a poll finds nothing, sleep this long (0 = pure busy polling, the production
    /// setting; tests use a little to share cores).
    pub idle_sleep_us: u64,
    /// Neighbour (ARP/ND) cache entries per worker.
    pub neighbours_max: usize,
}

impl Default for DpdkConfig {
    fn default() -> Self {
        DpdkConfig {
            main_lcore: 0,
            devices: Vec::new(),
            vdevs: Vec::new(),
            port: "0".into(),
            memory_mb: Vec::new(),
            no_huge: false,
            huge_dir: None,
            file_prefix: "voxedge".into(),
            eal_args: Vec::new(),
            mbufs: 65535,
            mbuf_cache: 256,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            addresses: Vec::new(),
            gateway: None,
            gateway6: None,
            gateway_mac: None,
            vlan: None,
            steering: Steering::Auto,
            verify_checksums: false,
            idle_sleep_us: 0,
            neighbours_max: 65536,
        }
    }
}

impl DpdkConfig {
    /// The EAL argument list (argv, program name first) these settings produce.
    pub fn eal_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["voxedge".into()];
        let main = self.main_lcore.to_string();
        a.extend(["-l".into(), main.clone(), "--main-lcore".into(), main]);
        a.extend(["--file-prefix".into(), self.file_prefix.clone()]);
        if self.no_huge {
            let mb: u32 = self.memory_mb.iter().sum();
            a.extend([
                "--no-huge".into(),
                "-m".into(),
                if mb == 0 { 256 } else { mb }.to_string(),
            ]);
        } else if !self.memory_mb.is_empty() {
            let per: Vec<String> = self.memory_mb.iter().map(u32::to_string).collect();
            a.extend(["--socket-mem".into(), per.join(",")]);
        }
        if let Some(d) = &self.huge_dir {
            a.extend(["--huge-dir".into(), d.clone()]);
        }
        for d in &self.devices {
            a.extend(["-a".into(), d.clone()]);
        }
        if self.devices.is_empty() {
            a.push("--no-pci".into());
        }
        for v in &self.vdevs {
            a.extend(["--vdev".into(), v.clone()]);
        }
        a.extend(self.eal_args.iter().cloned());
        a
    }

    /// The interface description of the media port (MAC filled in once the port is known).
    ///
    /// # Errors
    /// An address, prefix or MAC that does not parse.
    pub fn interface(&self, mac: [u8; 6], dscp: u8) -> Result<Interface, ConfigError> {
        let addresses = self
            .addresses
            .iter()
            .map(|s| s.parse::<IpNet>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid(format!("dataplane.dpdk.addresses: {e}")))?;
        let gateway_mac = self
            .gateway_mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(|e| ConfigError::Invalid(format!("dataplane.dpdk.gateway_mac: {e}")))?;
        Ok(Interface {
            mac,
            vlan: self.vlan,
            addresses,
            gateway4: self.gateway,
            gateway6: self.gateway6,
            gateway_mac,
            dscp,
        })
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            pin_cores: true,
            cores: Vec::new(),
            bind: IpAddr::from([0, 0, 0, 0]),
            advertise: None,
            extra_addresses: Vec::new(),
            port_min: 30000,
            port_max: 40000,
            burst_size: BURST_SIZE_MAX,
            overlap_bursts: OverlapBursts::Auto,
            idle_wait_us: 1000,
            media_timeout_ms: 30_000,
            dscp: 46,
            socket_rcvbuf_bytes: 256 * 1024,
            socket_sndbuf_bytes: 256 * 1024,
            socket_raw_tx: RawTx::Auto,
            command_queue_max: 4096,
            event_queue_max: 65536,
            streams_per_worker_max: 1 << 20,
            backend: Backend::Socket,
            dpdk: DpdkConfig::default(),
        }
    }
}

/// Whether the socket backend sends through a raw IPv4 socket (see
/// [`DataplaneConfig::socket_raw_tx`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawTx {
    #[default]
    Auto,
    On,
    Off,
}

/// Whether workers overlap consecutive bursts (see [`DataplaneConfig::overlap_bursts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlapBursts {
    #[default]
    Auto,
    On,
    Off,
}

impl OverlapBursts {
    /// The value as the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            OverlapBursts::Auto => "auto",
            OverlapBursts::On => "on",
            OverlapBursts::Off => "off",
        }
    }
}

impl std::str::FromStr for OverlapBursts {
    type Err = String;

    /// The configuration's spelling (command-line options take the same words).
    fn from_str(s: &str) -> Result<Self, String> {
        [OverlapBursts::Auto, OverlapBursts::On, OverlapBursts::Off]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("expected auto, on or off, not {s:?}"))
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
    #[error("dataplane.cores: core {core} does not exist (this machine has {online} cores: 0-{last})", last = online.saturating_sub(1))]
    NoSuchCore { core: usize, online: usize },
    #[error("{0}")]
    Invalid(String),
}

impl DataplaneConfig {
    /// Local media addresses: `bind`, then `extra_addresses`.
    pub fn media_addresses(&self) -> Vec<IpAddr> {
        std::iter::once(self.bind)
            .chain(self.extra_addresses.iter().copied())
            .collect()
    }

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
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let online = core_affinity::get_core_ids().map_or(online, |c| c.len().max(online));
        if let Some(&core) = self.cores.iter().find(|&&c| c >= online) {
            return Err(ConfigError::NoSuchCore { core, online });
        }
        if let Some(a) = self
            .extra_addresses
            .iter()
            .find(|a| a.is_unspecified() || a.is_multicast() || **a == self.bind)
        {
            return Err(ConfigError::Invalid(format!(
                "dataplane.extra_addresses: {a} is not a usable extra media address"
            )));
        }
        if self.extra_addresses.len() > 255 {
            return Err(ConfigError::Invalid(
                "dataplane.extra_addresses: at most 255".into(),
            ));
        }
        if self.backend == Backend::Dpdk {
            self.validate_dpdk(online)?;
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

    fn validate_dpdk(&self, online: usize) -> Result<(), ConfigError> {
        let d = &self.dpdk;
        if d.main_lcore >= online {
            return Err(ConfigError::Invalid(format!(
                "dataplane.dpdk.main_lcore: core {} does not exist (this machine has {online} cores)",
                d.main_lcore
            )));
        }
        let ifc = d.interface([0; 6], self.dscp)?;
        if ifc.addresses.is_empty() {
            return Err(ConfigError::Invalid(
                "dataplane.dpdk.addresses: the DPDK backend needs at least one address of the \
                 appliance on its port (e.g. \"203.0.113.10/24\")"
                    .into(),
            ));
        }
        if let Some(a) = self.extra_addresses.iter().find(|a| !ifc.is_local(**a)) {
            return Err(ConfigError::Invalid(format!(
                "dataplane.extra_addresses: {a} is not one of dataplane.dpdk.addresses"
            )));
        }
        if !ifc.is_local(self.bind) {
            return Err(ConfigError::Invalid(format!(
                "dataplane.bind {} is not one of dataplane.dpdk.addresses",
                self.bind
            )));
        }
        if let Some(v) = d.vlan {
            if v == 0 || v > 4094 {
                return Err(ConfigError::Invalid(format!(
                    "dataplane.dpdk.vlan must be 1..=4094, got {v}"
                )));
            }
        }
        if d.mbufs < 1024 || d.rx_descriptors == 0 || d.tx_descriptors == 0 {
            return Err(ConfigError::Invalid(
                "dataplane.dpdk: mbufs must be at least 1024 and rx/tx_descriptors at least 1"
                    .into(),
            ));
        }
        if d.file_prefix.is_empty() || d.file_prefix.contains('/') {
            return Err(ConfigError::Invalid(
                "dataplane.dpdk.file_prefix must be a non-empty name without '/'".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dpdk_cfg() -> DataplaneConfig {
        DataplaneConfig {
            backend: Backend::Dpdk,
            workers: 1,
            bind: "192.0.2.1".parse().unwrap(),
            dpdk: DpdkConfig {
                vdevs: vec!["net_null0".into()],
                addresses: vec!["192.0.2.1/24".into()],
                no_huge: true,
                ..DpdkConfig::default()
            },
            ..DataplaneConfig::default()
        }
    }

    #[test]
    fn overlap_bursts_is_spelled_as_in_the_config_file() {
        #[derive(Deserialize)]
        struct T {
            v: OverlapBursts,
        }
        for v in [OverlapBursts::Auto, OverlapBursts::On, OverlapBursts::Off] {
            let parsed: T = toml::from_str(&format!("v = \"{}\"", v.as_str())).unwrap();
            assert_eq!(parsed.v, v);
            assert_eq!(v.as_str().parse::<OverlapBursts>(), Ok(v));
        }
        assert!("yes".parse::<OverlapBursts>().is_err());
    }

    #[test]
    fn eal_arguments_follow_the_settings() {
        let c = dpdk_cfg();
        assert_eq!(
            c.dpdk.eal_args().join(" "),
            "voxedge -l 0 --main-lcore 0 --file-prefix voxedge --no-huge -m 256 --no-pci --vdev net_null0"
        );
        let d = DpdkConfig {
            main_lcore: 1,
            devices: vec!["0000:3b:00.0".into(), "0000:3b:00.1".into()],
            memory_mb: vec![4096, 2048],
            huge_dir: Some("/dev/hugepages".into()),
            file_prefix: "pop1".into(),
            eal_args: vec!["--log-level=pmd.net.*:debug".into()],
            ..DpdkConfig::default()
        };
        assert_eq!(
            d.eal_args().join(" "),
            "voxedge -l 1 --main-lcore 1 --file-prefix pop1 --socket-mem 4096,2048 --huge-dir /dev/hugepages -a 0000:3b:00.0 -a 0000:3b:00.1 --log-level=pmd.net.*:debug"
        );
    }

    #[test]
    fn dpdk_settings_are_checked_with_clear_messages() {
        assert!(dpdk_cfg().validate().is_ok());
        let mut c = dpdk_cfg();
        c.cores = vec![4096];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("core 4096 does not exist"), "{e}");
        let mut c = dpdk_cfg();
        c.dpdk.main_lcore = 4096;
        assert!(c.validate().unwrap_err().to_string().contains("main_lcore"));
        let mut c = dpdk_cfg();
        c.dpdk.addresses = vec!["192.0.2.1".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("dataplane.dpdk.addresses"), "{e}");
        let mut c = dpdk_cfg();
        c.dpdk.addresses.clear();
        assert!(c.validate().is_err());
        let mut c = dpdk_cfg();
        c.bind = "192.0.2.2".parse().unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("not one of"));
        let mut c = dpdk_cfg();
        c.dpdk.gateway_mac = Some("zz".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("gateway_mac"));
        let mut c = dpdk_cfg();
        c.dpdk.vlan = Some(4095);
        assert!(c.validate().is_err());
    }

    #[test]
    fn dpdk_table_parses_from_toml() {
        let c: DataplaneConfig = toml::from_str(
            "backend = \"dpdk\"\nbind = \"192.0.2.1\"\n[dpdk]\nvdevs = [\"net_null0\"]\naddresses = [\"192.0.2.1/24\"]\nsteering = \"rte_flow\"\n",
        )
        .unwrap();
        assert_eq!(c.backend, Backend::Dpdk);
        assert_eq!(c.dpdk.steering, Steering::RteFlow);
        assert!(toml::from_str::<DataplaneConfig>("[dpdk]\nno_such_key = 1\n").is_err());
    }
}
