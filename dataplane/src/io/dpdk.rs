//! The `dpdk` packet I/O backend (feature `dpdk`): poll-mode RX/TX on one ethdev, one RX and
//! one TX queue per worker, zero-copy (the pipeline rewrites the RTP payload inside the mbuf
//! and the headers are rewritten in place for forwarding).
//!
//! This module and `voxedge-dpdk-sys` are the only places with `unsafe`; every block says why
//! it is sound. Protocol logic (ARP, ND, ICMP echo, header rewriting) is in the safe
//! [`super::netstack`] module.
//!
//! Ownership: an mbuf received by a worker is owned by that worker until it is handed to
//! `rte_eth_tx_burst`, to another worker's hand-off ring, or freed. [`DpdkBatch`] holds the
//! mbufs of one burst; `tx_burst` always consumes all of them.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use voxedge_dpdk_sys as sys;

use super::netstack::{
    adjust_sum, build_arp_request, build_neighbour_solicitation, format_mac, handle_control,
    ip_header_sum_ok, payload_sum_from_checksum, verify_udp_sums, write_udp_headers, Control,
    IgnoreReason, Interface, Neighbours, ReplyKind, Resolve,
};
use super::portset::PortSet;
use super::{IoCounters, IoError, PacketIo, RxBatch, RxMeta, TxDesc};
use crate::config::{DpdkConfig, Steering, BURST_SIZE_MAX};
use crate::ids::PortHandle;
use crate::wire::frame::{parse_ipv4_udp, parse_udp_frame, Ipv4Udp};

/// Why the DPDK backend could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("dpdk: {0}")]
pub struct DpdkError(pub String);

fn errno_text(code: i32) -> String {
    let code = code.abs();
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    let s = unsafe { CStr::from_ptr(sys::rte_strerror(code)) };
    format!("{} (errno {code})", s.to_string_lossy())
}

fn rte_errno() -> i32 {
    // SAFETY: reads the calling thread's rte_errno through the C shim.
    unsafe { sys::voxedge_rte_errno() }
}

// ---------------------------------------------------------------------------------------------
// EAL
// ---------------------------------------------------------------------------------------------

static EAL: OnceLock<Result<Vec<String>, String>> = OnceLock::new();

/// Initialises the EAL with the arguments `cfg` produces, once per process. Later calls with
/// the same arguments succeed; with different ones they fail (the EAL cannot restart).
///
/// # Errors
/// The EAL refused its arguments or its environment (hugepages, cores, devices).
pub fn init_eal(cfg: &DpdkConfig) -> Result<(), DpdkError> {
    let args = cfg.eal_args();
    let done = EAL.get_or_init(|| {
        tracing::info!(target: "voxedge::dpdk", "EAL arguments: {}", args.join(" "));
        // rte_eal_init pins the calling thread to the main lcore; a short-lived thread keeps
        // that away from the caller (a control-plane thread).
        let a = args.clone();
        std::thread::Builder::new()
            .name("voxedge-eal".into())
            .spawn(move || eal_init_here(&a))
            .map_err(|e| format!("cannot start the EAL thread: {e}"))
            .and_then(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("EAL thread panicked".into()))
            })
            .map(|()| args.clone())
    });
    match done {
        Ok(a) if *a == args => Ok(()),
        Ok(a) => Err(DpdkError(format!(
            "the EAL is already initialised in this process with different arguments ({})",
            a.join(" ")
        ))),
        Err(e) => Err(DpdkError(e.clone())),
    }
}

fn eal_init_here(args: &[String]) -> Result<(), String> {
    let cstrings: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| format!("EAL argument `{a}` contains NUL")))
        .collect::<Result<_, _>>()?;
    // The EAL keeps pointers into argv for the life of the process: leak them on purpose
    // (once per process).
    let mut argv: Vec<*mut c_char> = cstrings.into_iter().map(CString::into_raw).collect();
    let argc = argv.len() as i32;
    let argv_ptr = argv.as_mut_ptr();
    std::mem::forget(argv);
    // SAFETY: argv holds argc valid NUL-terminated strings that live forever.
    let rc = unsafe { sys::rte_eal_init(argc, argv_ptr) };
    if rc < 0 {
        let e = rte_errno();
        let hint = match e {
            libc::EACCES => " — no usable hugepages or no permission: reserve hugepages and mount hugetlbfs (deploy/dpdk/prepare-host.sh hugepages N; check with prepare-host.sh check), point dataplane.dpdk.huge_dir at that mount, run as root or with the capabilities in deploy/systemd/voxedge-media-dpdk.service — or set dataplane.dpdk.no_huge = true (tests, development)",
            libc::ENOMEM | libc::EAGAIN => " — no hugepages available or not enough memory: reserve hugepages (deploy/dpdk/prepare-host.sh hugepages N) or set dataplane.dpdk.no_huge = true",
            libc::EINVAL => " — invalid EAL arguments: check dataplane.dpdk (main_lcore, devices, vdevs, eal_args)",
            libc::ENODEV => " — no device matched: check dataplane.dpdk.devices / vdevs",
            libc::EALREADY => " — the EAL was already initialised by something else in this process",
            libc::EPROTOTYPE => " — multi-process mismatch: another process uses this file_prefix",
            _ => "",
        };
        return Err(format!(
            "EAL initialisation failed: {}{hint}",
            errno_text(if e == 0 { libc::EINVAL } else { e })
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Port
// ---------------------------------------------------------------------------------------------

/// What a DPDK queue pair counts (index into [`DpdkStats`] and the worker's local copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    RxPackets,
    TxPackets,
    /// Dropped at transmit: the TX queue stayed full.
    TxDropped,
    /// Packets passed to the owning worker over its hand-off ring.
    Handoff,
    HandoffDropped,
    ArpReplies,
    NdReplies,
    EchoReplies,
    NeighbourRequests,
    /// Forwarded packets dropped because the next hop's MAC is not known yet.
    NoNeighbour,
    NotOurs,
    Malformed,
    Unsupported,
    BadChecksum,
    MultiSegment,
    /// Forwards dropped because the received buffer was shared or external (not writable).
    NotWritable,
}

/// Number of [`Stat`]s.
pub const STAT_COUNT: usize = STATS.len();

/// Every [`Stat`] with its metric suffix and help, in index order.
pub const STATS: [(Stat, &str, &str); 16] = [
    (
        Stat::RxPackets,
        "rx_packets",
        "Packets received from the port's queues",
    ),
    (
        Stat::TxPackets,
        "tx_packets",
        "Packets handed to the port's queues",
    ),
    (
        Stat::TxDropped,
        "tx_dropped",
        "Packets dropped because a TX queue stayed full",
    ),
    (
        Stat::Handoff,
        "handoff",
        "Packets that arrived on another worker's queue and were passed to their owner",
    ),
    (
        Stat::HandoffDropped,
        "handoff_dropped",
        "Packets dropped because the owner's hand-off ring was full",
    ),
    (
        Stat::ArpReplies,
        "arp_replies",
        "ARP requests for our addresses answered",
    ),
    (
        Stat::NdReplies,
        "nd_replies",
        "IPv6 neighbour solicitations answered",
    ),
    (
        Stat::EchoReplies,
        "icmp_echo_replies",
        "ICMP and ICMPv6 echo requests answered",
    ),
    (
        Stat::NeighbourRequests,
        "neighbour_requests",
        "ARP requests and neighbour solicitations sent",
    ),
    (
        Stat::NoNeighbour,
        "no_neighbour",
        "Forwarded packets dropped while the next hop was being resolved",
    ),
    (
        Stat::NotOurs,
        "not_ours",
        "Frames for other addresses or VLANs",
    ),
    (
        Stat::Malformed,
        "malformed",
        "Malformed or truncated frames",
    ),
    (
        Stat::Unsupported,
        "unsupported",
        "Frames of protocols the appliance does not handle (IPv4 fragments, other ICMP, ...)",
    ),
    (
        Stat::BadChecksum,
        "bad_checksum",
        "UDP frames with a bad IPv4 or UDP checksum",
    ),
    (
        Stat::MultiSegment,
        "multi_segment",
        "Multi-segment frames (larger than one mbuf)",
    ),
    (
        Stat::NotWritable,
        "not_writable",
        "Forwards dropped because the received buffer was shared or external",
    ),
];

/// Counters of one worker's DPDK queue pair, readable from other threads.
#[derive(Debug, Default)]
pub struct DpdkStats([AtomicU64; STAT_COUNT]);

impl DpdkStats {
    pub fn get(&self, s: Stat) -> u64 {
        self.0[s as usize].load(Ordering::Relaxed)
    }
}

/// A started ethdev with one queue pair per worker; stopped when dropped.
pub struct PortCtx {
    pub port_id: u16,
    pub name: String,
    pub driver: String,
    pub mac: [u8; 6],
    pub queues: u16,
    pub steering: String,
    pool: *mut sys::rte_mempool,
    rings: Vec<*mut sys::rte_ring>,
    pub stats: Vec<Arc<DpdkStats>>,
    /// One backend per queue: a queue and its hand-off ring have a single consumer.
    claimed: Vec<AtomicBool>,
    /// Set while [`PortCtx::fill_pool`] runs: workers stop polling and give the mbufs held in
    /// their mempool caches back to the pool.
    quiesce: AtomicBool,
    /// Workers that have stopped and emptied their caches since `quiesce` was set.
    quiesced: AtomicUsize,
}

// SAFETY: the mempool and rings are DPDK objects designed for concurrent use from many
// threads (multi-producer/consumer mempool ops; each hand-off ring has many producers and one
// consumer, its owner worker). The raw pointers are never freed while the PortCtx lives.
unsafe impl Send for PortCtx {}
// SAFETY: see Send; shared access only goes through DPDK's thread-safe functions.
unsafe impl Sync for PortCtx {}

impl Drop for PortCtx {
    fn drop(&mut self) {
        // SAFETY: the port id is valid (it was started by us); stopping an ethdev is allowed
        // once no worker polls it (workers hold an Arc<PortCtx>, so they are gone).
        let rc = unsafe { sys::rte_eth_dev_stop(self.port_id) };
        if rc != 0 {
            tracing::warn!(target: "voxedge::dpdk", "stopping port {}: {}", self.name, errno_text(rc));
        }
        for r in &self.rings {
            // Drain and free what is left in the ring, then the ring.
            let mut objs = [std::ptr::null_mut::<c_void>(); 64];
            loop {
                // SAFETY: the ring is valid, no worker uses it any more, objs has room for 64.
                let n = unsafe {
                    sys::rte_ring_sc_dequeue_burst(*r, objs.as_mut_ptr(), 64, std::ptr::null_mut())
                };
                if n == 0 {
                    break;
                }
                for o in &objs[..n as usize] {
                    // SAFETY: only mbufs are put into hand-off rings.
                    unsafe { sys::rte_pktmbuf_free(o.cast()) };
                }
            }
            // SAFETY: created by rte_ring_create, freed once.
            unsafe { sys::rte_ring_free(*r) };
        }
    }
}

impl PortCtx {
    /// Writes a frame into every free mbuf of the port's pool: `fill(i, room)` returns the
    /// frame length written at the start of `room` (0 leaves the mbuf empty). A `net_null`
    /// port then "receives" these frames for ever (the frames are rewritten in place and
    /// freed back into the pool): the max-rate bench uses this to drive the full RTP path
    /// with no generator. While it runs the port's workers stop polling and return the mbufs
    /// of their per-lcore mempool caches to the pool, so that every free mbuf is written (at
    /// most 2 s are waited for them; a worker that does not stop in time keeps its cached
    /// mbufs unwritten, which the bench would see as drops). Returns how many were written.
    pub fn fill_pool(&self, mut fill: impl FnMut(usize, &mut [u8]) -> usize) -> usize {
        let workers = self
            .claimed
            .iter()
            .filter(|c| c.load(Ordering::Acquire))
            .count();
        self.quiesced.store(0, Ordering::Release);
        self.quiesce.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.quiesced.load(Ordering::Acquire) < workers && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        let stopped = self.quiesced.load(Ordering::Acquire);
        if stopped < workers {
            tracing::warn!(
                target: "voxedge::dpdk",
                "filling the pool of port {}: only {stopped} of {workers} workers stopped within 2 s",
                self.name,
            );
        }
        // Allocating drains this thread's own cache first, so only the workers' had to be
        // flushed; what is freed below lands in it again, hence the flush after.
        let mut all = Vec::new();
        loop {
            // SAFETY: valid pool; a null return means it is empty.
            let m = unsafe { sys::rte_pktmbuf_alloc(self.pool) };
            if m.is_null() {
                break;
            }
            all.push(m);
        }
        let mut written = 0;
        for (i, &m) in all.iter().enumerate() {
            // SAFETY: freshly allocated, owned by us until freed below.
            let (buf, room) = unsafe { mbuf_room(m) };
            let len = fill(i, &mut buf[..room]).min(room);
            // SAFETY: owned mbuf; len fits.
            unsafe { set_len(m, 0, len) };
            written += usize::from(len > 0);
        }
        for m in all {
            DpdkIo::free(m);
        }
        flush_lcore_cache(self.pool);
        self.quiesce.store(false, Ordering::Release);
        written
    }

    /// Port-level counters: (imissed, rx_nombuf, ierrors, oerrors).
    pub fn port_counters(&self) -> (u64, u64, u64, u64) {
        let mut st = sys::rte_eth_stats::default();
        // SAFETY: valid port id and a valid out pointer.
        let rc = unsafe { sys::rte_eth_stats_get(self.port_id, &mut st) };
        if rc != 0 {
            return (0, 0, 0, 0);
        }
        (st.imissed, st.rx_nombuf, st.ierrors, st.oerrors)
    }
}

fn port_name(id: u16) -> String {
    let mut buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: buf has RTE_ETH_NAME_MAX_LEN bytes as the function requires.
    let rc = unsafe { sys::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) };
    if rc != 0 {
        return format!("port{id}");
    }
    // SAFETY: on success the name is NUL-terminated within buf.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn available_ports() -> Vec<String> {
    // SAFETY: plain queries on the ethdev table.
    let max = unsafe { sys::voxedge_max_ethports() } as u16;
    (0..max)
        // SAFETY: any u16 may be asked about.
        .filter(|&p| unsafe { sys::rte_eth_dev_is_valid_port(p) } == 1)
        .map(|p| format!("{p}={}", port_name(p)))
        .collect()
}

fn find_port(spec: &str) -> Result<u16, DpdkError> {
    let id = if let Ok(id) = spec.parse::<u16>() {
        id
    } else {
        let name = CString::new(spec)
            .map_err(|_| DpdkError(format!("dataplane.dpdk.port `{spec}` contains NUL")))?;
        let mut id = 0u16;
        // SAFETY: valid C string and out pointer.
        let rc = unsafe { sys::rte_eth_dev_get_port_by_name(name.as_ptr(), &mut id) };
        if rc != 0 {
            u16::MAX
        } else {
            id
        }
    };
    // SAFETY: any id may be checked.
    if unsafe { sys::rte_eth_dev_is_valid_port(id) } != 1 {
        let avail = available_ports();
        return Err(DpdkError(format!(
            "dataplane.dpdk.port `{spec}`: no such ethdev (available: {}). Check \
             dataplane.dpdk.devices (PCI devices must be bound to vfio-pci) and vdevs",
            if avail.is_empty() {
                "none".to_string()
            } else {
                avail.join(", ")
            }
        )));
    }
    Ok(id)
}

/// Returns the mbufs in the calling thread's per-lcore cache of `pool` (if it has one) to the
/// pool itself, where any thread can take them.
fn flush_lcore_cache(pool: *mut sys::rte_mempool) {
    // SAFETY: pool is a valid mempool; rte_lcore_id reads this thread's lcore id, which is
    // LCORE_ID_ANY for threads not registered with the EAL (default_cache then returns null);
    // a non-null cache is this thread's own, which only this thread uses.
    unsafe {
        let cache = sys::rte_mempool_default_cache(pool, sys::rte_lcore_id());
        if !cache.is_null() {
            sys::rte_mempool_cache_flush(cache, pool);
        }
    }
}

fn mempool(cfg: &DpdkConfig, socket: i32) -> Result<*mut sys::rte_mempool, DpdkError> {
    let name = CString::new(format!("vx_mb_s{socket}_{}_{}", cfg.mbufs, cfg.mbuf_cache))
        .map_err(|_| DpdkError("mempool name".into()))?;
    // SAFETY: valid C string.
    let existing = unsafe { sys::rte_mempool_lookup(name.as_ptr()) };
    if !existing.is_null() {
        return Ok(existing);
    }
    // SAFETY: valid name; sizes are checked by DPDK; socket -1 means any.
    let p = unsafe {
        sys::rte_pktmbuf_pool_create(
            name.as_ptr(),
            cfg.mbufs,
            cfg.mbuf_cache.min(512),
            0,
            sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            socket,
        )
    };
    if p.is_null() {
        return Err(DpdkError(format!(
            "cannot create a pool of {} mbufs on NUMA socket {socket}: {} — lower \
             dataplane.dpdk.mbufs or give the EAL more memory (memory_mb)",
            cfg.mbufs,
            errno_text(rte_errno())
        )));
    }
    Ok(p)
}

/// Splits `[lo, hi]` into (value, mask) pairs that match exactly those ports.
pub fn port_range_masks(lo: u16, hi: u16) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut p = u32::from(lo);
    let hi = u32::from(hi);
    while p <= hi {
        let mut size = if p == 0 {
            1 << 16
        } else {
            p & p.wrapping_neg()
        };
        while p + size - 1 > hi {
            size >>= 1;
        }
        out.push((p as u16, (!(size - 1) & 0xffff) as u16));
        p += size;
    }
    out
}

/// Installs rte_flow rules sending each worker's UDP port range to its queue. Returns the
/// number of rules, or why the device refused them (nothing is left installed then).
fn flow_steering(port: u16, ranges: &[(u16, u16)]) -> Result<usize, String> {
    let mut rules = 0;
    for (q, &(lo, hi)) in ranges.iter().enumerate() {
        for (value, mask) in port_range_masks(lo, hi) {
            for ip in [sys::RTE_FLOW_ITEM_TYPE_IPV4, sys::RTE_FLOW_ITEM_TYPE_IPV6] {
                let mut attr = sys::rte_flow_attr::default();
                attr.set_ingress(1);
                let mut spec = sys::rte_flow_item_udp::default();
                spec.hdr.dst_port = value.to_be();
                let mut umask = sys::rte_flow_item_udp::default();
                umask.hdr.dst_port = mask.to_be();
                let pattern = [
                    sys::rte_flow_item {
                        type_: sys::RTE_FLOW_ITEM_TYPE_ETH,
                        ..Default::default()
                    },
                    sys::rte_flow_item {
                        type_: ip,
                        ..Default::default()
                    },
                    sys::rte_flow_item {
                        type_: sys::RTE_FLOW_ITEM_TYPE_UDP,
                        spec: (&spec as *const sys::rte_flow_item_udp).cast(),
                        last: std::ptr::null(),
                        mask: (&umask as *const sys::rte_flow_item_udp).cast(),
                    },
                    sys::rte_flow_item {
                        type_: sys::RTE_FLOW_ITEM_TYPE_END,
                        ..Default::default()
                    },
                ];
                let queue = sys::rte_flow_action_queue { index: q as u16 };
                let actions = [
                    sys::rte_flow_action {
                        type_: sys::RTE_FLOW_ACTION_TYPE_QUEUE,
                        conf: (&queue as *const sys::rte_flow_action_queue).cast(),
                    },
                    sys::rte_flow_action {
                        type_: sys::RTE_FLOW_ACTION_TYPE_END,
                        conf: std::ptr::null(),
                    },
                ];
                let mut err = sys::rte_flow_error::default();
                // SAFETY: all pointers refer to locals that outlive the call.
                let rc = unsafe {
                    sys::rte_flow_validate(
                        port,
                        &attr,
                        pattern.as_ptr(),
                        actions.as_ptr(),
                        &mut err,
                    )
                };
                let flow = if rc == 0 {
                    // SAFETY: as above.
                    unsafe {
                        sys::rte_flow_create(
                            port,
                            &attr,
                            pattern.as_ptr(),
                            actions.as_ptr(),
                            &mut err,
                        )
                    }
                } else {
                    std::ptr::null_mut()
                };
                if flow.is_null() {
                    let msg = if err.message.is_null() {
                        errno_text(if rc == 0 { rte_errno() } else { rc })
                    } else {
                        // SAFETY: DPDK sets message to a static NUL-terminated string.
                        unsafe { CStr::from_ptr(err.message) }
                            .to_string_lossy()
                            .into_owned()
                    };
                    let mut e2 = sys::rte_flow_error::default();
                    // SAFETY: valid port and out pointer; removes the rules added so far.
                    unsafe { sys::rte_flow_flush(port, &mut e2) };
                    return Err(msg);
                }
                rules += 1;
            }
        }
    }
    Ok(rules)
}

/// Configures and starts the media port with `ranges.len()` queue pairs (one per worker;
/// `ranges[w]` is worker `w`'s UDP port range).
///
/// # Errors
/// Unknown port, too many queues for the device, no memory, or a steering mode the device
/// cannot do.
pub fn start_port(cfg: &DpdkConfig, ranges: &[(u16, u16)]) -> Result<Arc<PortCtx>, DpdkError> {
    init_eal(cfg)?;
    let port = find_port(&cfg.port)?;
    let name = port_name(port);
    let queues = ranges.len() as u16;
    let mut info = sys::rte_eth_dev_info::default();
    // SAFETY: valid port and out pointer.
    let rc = unsafe { sys::rte_eth_dev_info_get(port, &mut info) };
    if rc != 0 {
        return Err(DpdkError(format!(
            "port {name}: cannot read device info: {}",
            errno_text(rc)
        )));
    }
    let driver = if info.driver_name.is_null() {
        "?".to_string()
    } else {
        // SAFETY: driver_name is a static NUL-terminated string of the driver.
        unsafe { CStr::from_ptr(info.driver_name) }
            .to_string_lossy()
            .into_owned()
    };
    if queues > info.max_rx_queues || queues > info.max_tx_queues {
        return Err(DpdkError(format!(
            "port {name} ({driver}) has {} RX / {} TX queues, fewer than dataplane.workers = {queues}",
            info.max_rx_queues, info.max_tx_queues
        )));
    }
    // SAFETY: valid port.
    let socket = unsafe { sys::rte_eth_dev_socket_id(port) };
    let pool = mempool(cfg, socket)?;

    let mut conf = sys::rte_eth_conf::default();
    // SAFETY: constant getters in the shim.
    let rss_udp = unsafe { sys::voxedge_eth_rss_udp() } & info.flow_type_rss_offloads;
    let mut steering = String::from("single queue");
    if queues > 1 && rss_udp != 0 {
        conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = rss_udp;
    }
    // SAFETY: valid port and conf.
    let rc = unsafe { sys::rte_eth_dev_configure(port, queues, queues, &conf) };
    if rc != 0 {
        return Err(DpdkError(format!(
            "port {name} ({driver}): configure {queues} queues: {}",
            errno_text(rc)
        )));
    }
    let mut rxd = cfg.rx_descriptors;
    let mut txd = cfg.tx_descriptors;
    // SAFETY: valid port and pointers; adjusts to the device's limits.
    let rc = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port, &mut rxd, &mut txd) };
    if rc != 0 {
        return Err(DpdkError(format!(
            "port {name}: descriptor counts: {}",
            errno_text(rc)
        )));
    }
    for q in 0..queues {
        // SAFETY: valid port, queue < configured count, pool valid; null conf = defaults.
        let rc = unsafe {
            sys::rte_eth_rx_queue_setup(port, q, rxd, socket.max(0) as u32, std::ptr::null(), pool)
        };
        if rc != 0 {
            return Err(DpdkError(format!(
                "port {name}: RX queue {q}: {}",
                errno_text(rc)
            )));
        }
        // SAFETY: as above.
        let rc = unsafe {
            sys::rte_eth_tx_queue_setup(port, q, txd, socket.max(0) as u32, std::ptr::null())
        };
        if rc != 0 {
            return Err(DpdkError(format!(
                "port {name}: TX queue {q}: {}",
                errno_text(rc)
            )));
        }
    }
    // SAFETY: valid, configured port.
    let rc = unsafe { sys::rte_eth_dev_start(port) };
    if rc != 0 {
        return Err(DpdkError(format!(
            "port {name} ({driver}): start: {}",
            errno_text(rc)
        )));
    }
    // Neighbour discovery uses multicast; not every PMD has the knob, so failure is fine.
    // SAFETY: valid, started port.
    let _ = unsafe { sys::rte_eth_allmulticast_enable(port) };

    if queues > 1 {
        let rules = if cfg.steering == Steering::Rss || cfg.vlan.is_some() {
            // The rules carry no VLAN item, so tagged media is steered by RSS.
            Err("not tried".to_string())
        } else {
            flow_steering(port, ranges)
        };
        steering = match (cfg.steering, rules) {
            (Steering::Rss, _) => "RSS + software hand-off".into(),
            (_, Ok(n)) => format!("rte_flow ({n} rules)"),
            (Steering::RteFlow, Err(e)) => {
                // SAFETY: valid started port.
                unsafe { sys::rte_eth_dev_stop(port) };
                return Err(DpdkError(format!(
                    "port {name} ({driver}) refused rte_flow steering ({e}); set \
                     dataplane.dpdk.steering = \"rss\" or \"auto\""
                )));
            }
            (Steering::Auto, Err(e)) => format!("RSS + software hand-off (rte_flow: {e})"),
        };
    }

    let mut rings = Vec::with_capacity(usize::from(queues));
    static GENERATION: AtomicU64 = AtomicU64::new(0);
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    for q in 0..queues {
        let rname = CString::new(format!("vx_ho{generation}_{q}"))
            .map_err(|_| DpdkError("ring name".into()))?;
        // SAFETY: valid name; power-of-two count; single consumer (the owner worker).
        let r = unsafe { sys::rte_ring_create(rname.as_ptr(), 4096, socket, sys::RING_F_SC_DEQ) };
        if r.is_null() {
            return Err(DpdkError(format!(
                "hand-off ring {q}: {}",
                errno_text(rte_errno())
            )));
        }
        rings.push(r);
    }
    let mut mac = sys::rte_ether_addr::default();
    // SAFETY: valid port and out pointer.
    unsafe { sys::rte_eth_macaddr_get(port, &mut mac) };
    let ctx = PortCtx {
        port_id: port,
        name,
        driver,
        mac: mac.addr_bytes,
        queues,
        steering,
        pool,
        rings,
        stats: (0..queues)
            .map(|_| Arc::new(DpdkStats::default()))
            .collect(),
        claimed: (0..queues).map(|_| AtomicBool::new(false)).collect(),
        quiesce: AtomicBool::new(false),
        quiesced: AtomicUsize::new(0),
    };
    tracing::info!(
        target: "voxedge::dpdk",
        "dpdk port {} started: driver={}, rx/tx queues={}, descriptors={}/{}, mac={}, numa socket={}, steering={}",
        ctx.name, ctx.driver, queues, rxd, txd, format_mac(ctx.mac), socket, ctx.steering
    );
    Ok(Arc::new(ctx))
}

// ---------------------------------------------------------------------------------------------
// Worker backend
// ---------------------------------------------------------------------------------------------

/// The mbufs of one burst and where each payload is.
///
/// What the pipeline and transmit need of each mbuf's header (where its buffer and payload
/// are, whether it may be rewritten) is copied here when the burst is received, while the
/// header is in cache: by the time an overlapped burst is processed and sent, other bursts'
/// lines have pushed it out, and reading it again was a wait on every packet.
pub struct DpdkBatch {
    mbufs: [*mut sys::rte_mbuf; BURST_SIZE_MAX],
    meta: [RxMeta; BURST_SIZE_MAX],
    /// Where each payload starts, inside its mbuf's buffer.
    payload: [*mut u8; BURST_SIZE_MAX],
    /// Bytes from the start of the mbuf's buffer to the payload: the room in front of it for
    /// the headers transmit writes.
    payload_at: [u16; BURST_SIZE_MAX],
    /// Length of the mbuf's buffer.
    buf_len: [u16; BURST_SIZE_MAX],
    /// The mbuf's data may be rewritten in place (see [`writable`]).
    writable: [bool; BURST_SIZE_MAX],
    /// One's-complement sum of the payload as received (when it was verified in software) and
    /// its first bytes, so transmit can adjust the sum for an RTP header rewrite instead of
    /// summing the payload again.
    payload_sum: [Option<u32>; BURST_SIZE_MAX],
    head: [[u8; RTP_HEAD]; BURST_SIZE_MAX],
}

impl DpdkBatch {
    /// Copies what the pipeline and transmit need of mbuf `m`'s header into entry `i`, its
    /// payload `off` bytes into its data.
    ///
    /// # Safety
    /// `m` must be a valid single-segment mbuf owned by the batch as entry `i`, with its
    /// payload (`off` and `meta[i].len` bytes from its data offset) inside its data.
    #[inline]
    unsafe fn keep_header(&mut self, i: usize, m: *mut sys::rte_mbuf, off: u16) {
        // SAFETY: per the function contract; data_off + off lies inside the buffer.
        unsafe {
            let at = (*m).data_off + off;
            self.payload[i] = (*m).buf_addr.cast::<u8>().add(usize::from(at));
            self.payload_at[i] = at;
            self.buf_len[i] = (*m).buf_len;
            self.writable[i] = writable(m);
        }
    }
}

/// Bytes of an RTP header the pipeline may rewrite (seq, timestamp, SSRC live in 2..12).
const RTP_HEAD: usize = 12;

impl RxBatch for DpdkBatch {
    #[inline]
    fn meta(&self, i: usize) -> RxMeta {
        self.meta[i]
    }

    #[inline]
    fn payload_mut(&mut self, i: usize) -> &mut [u8] {
        if self.mbufs[i].is_null() {
            return &mut [];
        }
        // SAFETY: `payload[i]` points into the buffer of mbuf `i`, which was received or
        // loaded in this burst and is owned by the batch until tx_burst (the pointer is set
        // whenever `mbufs[i]` is); rx_burst and load checked that `len` bytes from it lie
        // inside the mbuf's data; `&mut self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.payload[i], usize::from(self.meta[i].len)) }
    }
}

/// Neighbour announcements between workers.
pub type NeighbourMsg = (IpAddr, [u8; 6]);

/// Largest number of frames waiting for room in the TX queue.
const TX_PENDING_MAX: usize = 4 * BURST_SIZE_MAX;

/// One worker's queue pair on the media port.
pub struct DpdkIo {
    ctx: Arc<PortCtx>,
    queue: u16,
    /// UDP port ranges of all workers (index = worker = queue).
    ranges: Vec<(u16, u16)>,
    /// Slots (see `handle_of`) with an open port.
    open: PortSet,
    bind: IpAddr,
    iface: Interface,
    neigh: Neighbours,
    neigh_out: Vec<Sender<NeighbourMsg>>,
    neigh_in: Receiver<NeighbourMsg>,
    pending: Vec<*mut sys::rte_mbuf>,
    /// Counters, published to [`DpdkStats`] in housekeeping.
    local: [u64; STAT_COUNT],
    counters: IoCounters,
    idle_sleep: Duration,
    verify_checksums: bool,
    epoch: Instant,
    /// Receive calls since [`PortCtx::fill_pool`] asked the worker to stop (0: running), up
    /// to 2: the first returns nothing so the worker sends the burst it holds, the second
    /// empties the mempool cache and reports the worker stopped.
    paused: u8,
}

/// What the worker needs to build its [`DpdkIo`] on its own thread.
pub struct DpdkIoParts {
    pub ctx: Arc<PortCtx>,
    pub queue: u16,
    pub ranges: Vec<(u16, u16)>,
    pub bind: IpAddr,
    pub iface: Interface,
    pub neighbours_max: usize,
    pub neigh_out: Vec<Sender<NeighbourMsg>>,
    pub neigh_in: Receiver<NeighbourMsg>,
    pub idle_sleep: Duration,
    pub verify_checksums: bool,
}

/// What the port said about a received frame's checksums (`ol_flags`).
#[derive(Debug, Clone, Copy)]
struct RxChecksums {
    /// The IP or UDP checksum is wrong.
    bad: bool,
    /// The UDP checksum is right, or the data is intact but the checksum field not valid
    /// (`l4_none`).
    verified: bool,
    /// virtio/vhost with offload: trust the data, and never derive sums from that field.
    l4_none: bool,
}

impl RxChecksums {
    #[inline]
    fn from_flags(ol: u64) -> Self {
        let l4 = ol & u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_MASK);
        let l3 = ol & u64::from(sys::RTE_MBUF_F_RX_IP_CKSUM_MASK);
        let l4_none = l4 == u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_NONE);
        RxChecksums {
            bad: l4 == u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_BAD)
                || l3 == u64::from(sys::RTE_MBUF_F_RX_IP_CKSUM_BAD),
            verified: l4 == u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD) || l4_none,
            l4_none,
        }
    }
}

/// A UDP datagram for one of our addresses, as classification found it.
struct Datagram {
    /// Stream handle slot: (address index << 16) | port.
    slot: usize,
    src: SocketAddr,
    payload_offset: usize,
    len: usize,
    payload_sum: Option<u32>,
}

/// Serialises `rte_thread_register` calls (the EAL's lcore table is updated under its own
/// lock, but registration order is easier to read in logs this way).
static REGISTER: Mutex<()> = Mutex::new(());

thread_local! {
    /// Live `DpdkIo`s on this thread: the thread is registered with the EAL while > 0.
    static REGISTERED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl DpdkIo {
    /// Builds the backend on the calling (worker) thread, registering it with the EAL so that
    /// it gets an lcore id and a mempool cache.
    ///
    /// # Errors
    /// The EAL has no free lcore slot for this thread.
    pub fn new(p: DpdkIoParts) -> Result<Self, IoError> {
        let claimed = p.ctx.claimed.get(usize::from(p.queue)).is_some_and(|c| {
            c.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if !claimed {
            return Err(IoError::Backend(format!(
                "queue {} of port {} does not exist or already has a worker",
                p.queue, p.ctx.name
            )));
        }
        {
            let _g = REGISTER.lock();
            if REGISTERED.with(|r| r.get()) == 0 {
                // SAFETY: called on the worker thread itself, after EAL initialisation.
                let rc = unsafe { sys::rte_thread_register() };
                if rc != 0 {
                    p.ctx.claimed[usize::from(p.queue)].store(false, Ordering::Release);
                    return Err(IoError::Backend(format!(
                        "cannot register worker thread with the EAL: {}",
                        errno_text(rte_errno())
                    )));
                }
            }
            REGISTERED.with(|r| r.set(r.get() + 1));
        }
        Ok(DpdkIo {
            queue: p.queue,
            ranges: p.ranges,
            open: PortSet::new(p.iface.addresses.len() << 16),
            bind: p.bind,
            iface: p.iface,
            neigh: Neighbours::new(p.neighbours_max),
            neigh_out: p.neigh_out,
            neigh_in: p.neigh_in,
            pending: Vec::with_capacity(TX_PENDING_MAX + BURST_SIZE_MAX),
            local: [0; STAT_COUNT],
            counters: IoCounters::default(),
            idle_sleep: p.idle_sleep,
            verify_checksums: p.verify_checksums,
            epoch: Instant::now(),
            paused: 0,
            ctx: p.ctx,
        })
    }

    /// Stream handle of local (address, port): address index in the high bits.
    #[inline]
    fn handle_of(&self, ip: IpAddr, port: u16) -> Option<usize> {
        let k = self.iface.addresses.iter().position(|n| n.addr == ip)?;
        Some((k << 16) | usize::from(port))
    }

    fn owner(&self, port: u16) -> Option<usize> {
        self.ranges
            .iter()
            .position(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    fn learn(&mut self, ip: IpAddr, mac: [u8; 6]) {
        if self.neigh.learn(ip, mac) {
            for tx in &self.neigh_out {
                let _ = tx.try_send((ip, mac));
            }
        }
    }

    fn free(m: *mut sys::rte_mbuf) {
        // SAFETY: callers pass an mbuf they own and never use it again.
        unsafe { sys::rte_pktmbuf_free(m) };
    }

    /// Sends what is pending; keeps what the queue did not take, up to a bound.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.len().min(u16::MAX as usize) as u16;
        // SAFETY: pending holds owned, fully built mbufs; the queue belongs to this worker.
        let sent = unsafe {
            sys::rte_eth_tx_burst(self.ctx.port_id, self.queue, self.pending.as_mut_ptr(), n)
        };
        self.counters.tx_calls += 1;
        self.local[Stat::TxPackets as usize] += u64::from(sent);
        self.pending.drain(..usize::from(sent));
        while self.pending.len() > TX_PENDING_MAX {
            if let Some(m) = self.pending.pop() {
                Self::free(m);
                self.count(Stat::TxDropped);
            }
        }
    }

    /// Stops for [`PortCtx::fill_pool`]: sends what is pending and returns the mempool cache's
    /// mbufs to the pool, once per request. The first call only returns: the worker then
    /// sends the burst it holds (see [`PacketIo::overlap_bursts`]), whose mbufs the second
    /// call finds in the cache.
    #[cold]
    fn pause(&mut self) {
        match self.paused {
            0 => {
                self.paused = 1;
                return;
            }
            1 => {
                self.flush();
                flush_lcore_cache(self.ctx.pool);
                self.paused = 2;
                self.ctx.quiesced.fetch_add(1, Ordering::AcqRel);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_micros(100));
    }

    /// A new mbuf with `frame` built into it by `build`, queued for transmit.
    fn send_built(&mut self, build: impl FnOnce(&mut [u8]) -> Option<usize>) {
        // SAFETY: the pool is valid for the life of ctx.
        let m = unsafe { sys::rte_pktmbuf_alloc(self.ctx.pool) };
        if m.is_null() {
            return;
        }
        // SAFETY: a freshly allocated single-segment mbuf: its data area after data_off has
        // tailroom bytes we may write.
        let (buf, room) = unsafe { mbuf_room(m) };
        match build(&mut buf[..room]) {
            Some(len) if len <= room => {
                // SAFETY: m is owned; len fits its room.
                unsafe { set_len(m, 0, len) };
                self.pending.push(m);
            }
            _ => Self::free(m),
        }
    }

    fn request(&mut self, hop: IpAddr) {
        let iface = self.iface.clone();
        self.count(Stat::NeighbourRequests);
        match hop {
            IpAddr::V4(a) => self.send_built(|b| build_arp_request(&iface, a, b)),
            IpAddr::V6(a) => self.send_built(|b| build_neighbour_solicitation(&iface, a, b)),
        }
    }

    /// Classifies one received frame: returns the payload offset and metadata of a UDP
    /// datagram for this worker, or consumes the mbuf (reply, hand-off, drop).
    fn classify(
        &mut self,
        m: *mut sys::rte_mbuf,
        from_handoff: bool,
    ) -> Option<(u16, RxMeta, Option<u32>)> {
        // SAFETY: m is an mbuf we own, freshly received.
        let (segs, data_len, ol) =
            unsafe { ((*m).nb_segs, usize::from((*m).data_len), (*m).ol_flags) };
        if segs != 1 {
            self.count(Stat::MultiSegment);
            Self::free(m);
            return None;
        }
        // SAFETY: single segment; the room slice covers data_len (and the tailroom).
        let (buf, room) = unsafe { mbuf_room(m) };
        let data_len = data_len.min(room);
        let cks = RxChecksums::from_flags(ol);
        // The common frame at fixed offsets; everything else (and software verification of
        // the whole datagram) through the general parser.
        let fast = if self.verify_checksums && !cks.verified {
            None
        } else {
            parse_ipv4_udp(&buf[..data_len], self.iface.vlan)
        };
        let d = match fast {
            Some(u) => self.ipv4_datagram(m, &u, cks)?,
            None => self.any_datagram(m, buf, data_len, cks)?,
        };
        if !from_handoff {
            // The slot's low 16 bits are the UDP port (see handle_of).
            if let Some(owner) = self.owner(d.slot as u16) {
                if owner != usize::from(self.queue) {
                    let ring = self.ctx.rings[owner];
                    let obj = m.cast::<c_void>();
                    // SAFETY: the ring is valid; multi-producer enqueue of one owned mbuf,
                    // whose ownership passes to the ring's consumer on success.
                    let n = unsafe {
                        sys::rte_ring_mp_enqueue_burst(ring, &obj, 1, std::ptr::null_mut())
                    };
                    if n == 1 {
                        self.count(Stat::Handoff);
                    } else {
                        self.count(Stat::HandoffDropped);
                        Self::free(m);
                    }
                    return None;
                }
            }
        }
        // The slot as it is, open or not: a closed port's handle names no stream in the
        // worker's table, which drops the datagram as for an unknown stream (what NO_PORT
        // would get), and the open set stays off the per-packet path.
        Some((
            d.payload_offset as u16,
            RxMeta {
                port: PortHandle(d.slot as u32),
                src: d.src,
                len: d.len as u16,
                truncated: false,
            },
            d.payload_sum,
        ))
    }

    /// The datagram of a frame read at fixed offsets, or `None` with the mbuf consumed.
    #[inline]
    fn ipv4_datagram(
        &mut self,
        m: *mut sys::rte_mbuf,
        u: &Ipv4Udp,
        cks: RxChecksums,
    ) -> Option<Datagram> {
        let Some(slot) = self.handle_of(IpAddr::V4(*u.dst.ip()), u.dst.port()) else {
            self.count(Stat::NotOurs);
            Self::free(m);
            return None;
        };
        // Verified by the port, or carried (ADR 0019): the IP header must be right.
        if cks.bad || (!cks.verified && !u.header_sum_ok) {
            self.count(Stat::BadChecksum);
            Self::free(m);
            return None;
        }
        Some(Datagram {
            slot,
            src: SocketAddr::V4(u.src),
            payload_offset: usize::from(u.payload_offset),
            // The reader checked that the datagram lies inside the frame.
            len: usize::from(u.payload_len),
            payload_sum: if cks.l4_none {
                None
            } else {
                u.payload_sum_from_checksum()
            },
        })
    }

    /// Any frame through the general parser: a UDP datagram for one of our addresses, or
    /// `None` with the mbuf consumed (answered, learned from, or dropped and counted).
    fn any_datagram(
        &mut self,
        m: *mut sys::rte_mbuf,
        buf: &mut [u8],
        data_len: usize,
        cks: RxChecksums,
    ) -> Option<Datagram> {
        let room = buf.len();
        let frame = &buf[..data_len];
        let f = match parse_udp_frame(frame) {
            Ok(f) => f,
            Err(_) => {
                match handle_control(&self.iface, buf, data_len) {
                    Control::Reply { len, kind, learned } => {
                        match kind {
                            ReplyKind::Arp => self.count(Stat::ArpReplies),
                            ReplyKind::Nd => self.count(Stat::NdReplies),
                            ReplyKind::Echo => self.count(Stat::EchoReplies),
                        }
                        // SAFETY: owned mbuf; len <= room.
                        unsafe { set_len(m, 0, len.min(room)) };
                        self.pending.push(m);
                        if let Some((ip, mac)) = learned {
                            self.learn(ip, mac);
                        }
                    }
                    Control::Learned(ip, mac) => {
                        self.learn(ip, mac);
                        Self::free(m);
                    }
                    Control::Ignore(r) => {
                        match r {
                            IgnoreReason::Malformed => self.count(Stat::Malformed),
                            IgnoreReason::NotOurs => self.count(Stat::NotOurs),
                            IgnoreReason::Unsupported => self.count(Stat::Unsupported),
                        }
                        Self::free(m);
                    }
                }
                return None;
            }
        };
        let Some(slot) = self.handle_of(f.dst.ip(), f.dst.port()) else {
            self.count(Stat::NotOurs);
            Self::free(m);
            return None;
        };
        if f.vlan != self.iface.vlan || f.l3_offset > 18 {
            self.count(Stat::NotOurs);
            Self::free(m);
            return None;
        }
        let mut payload_sum = None;
        let ok = if cks.bad {
            false
        } else if cks.verified {
            true
        } else if self.verify_checksums {
            payload_sum = verify_udp_sums(frame, &f);
            payload_sum.is_some()
        } else {
            // Carried, not verified (ADR 0019): the IP header must be right (its addresses
            // decide where the datagram goes); the UDP checksum travels on by incremental
            // update, so damage to the payload stays detectable by the receiver.
            ip_header_sum_ok(frame, &f)
        };
        if !ok {
            self.count(Stat::BadChecksum);
            Self::free(m);
            return None;
        }
        if payload_sum.is_none() && !cks.l4_none {
            // Checked by the NIC, or carried: recover the payload's sum from the received
            // checksum instead of reading the payload.
            payload_sum = payload_sum_from_checksum(frame, &f);
        }
        let len = f.payload_len.min(data_len.saturating_sub(f.payload_offset));
        Some(Datagram {
            slot,
            src: f.src,
            payload_offset: f.payload_offset,
            len,
            payload_sum: payload_sum.filter(|_| len == f.payload_len),
        })
    }

    fn publish(&self) {
        let s = &self.ctx.stats[usize::from(self.queue)];
        for (a, v) in s.0.iter().zip(self.local) {
            a.store(v, Ordering::Relaxed);
        }
    }

    #[inline]
    fn count(&mut self, s: Stat) {
        self.local[s as usize] += 1;
    }
}

/// Flags of an mbuf whose data is not its own (must survive any flag reset).
const ATTACHED: u64 = sys::RTE_MBUF_F_EXTERNAL | sys::RTE_MBUF_F_INDIRECT;

/// Whether `m`'s data may be rewritten in place: a direct mbuf nobody else references.
///
/// # Safety
/// `m` must be a valid mbuf.
unsafe fn writable(m: *mut sys::rte_mbuf) -> bool {
    // SAFETY: per the function contract.
    unsafe { (*m).ol_flags & ATTACHED == 0 && (*m).refcnt == 1 }
}

/// Asks the CPU to start loading the first `lines` cache lines of `m`'s data: one holds an
/// untagged IPv4 frame's headers and its RTP header, two any frame's; verifying the UDP
/// checksum reads the whole datagram (four lines cover a 20 ms G.711 frame).
#[inline]
fn prefetch_data(m: *mut sys::rte_mbuf, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: m is a valid mbuf we own (its header is readable); prefetching any address is
    // harmless (it cannot fault); `wrapping_add` keeps the address arithmetic defined.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = (*m)
            .buf_addr
            .cast::<u8>()
            .add(usize::from((*m).data_off))
            .cast::<i8>();
        for line in 0..lines {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line * 64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (m, lines);
}

/// The data area of a single-segment mbuf from its data offset to the end of its buffer, and
/// that length.
///
/// # Safety
/// `m` must be a valid mbuf owned by the caller, not shared with another thread, and the
/// returned slice must not outlive the caller's ownership.
unsafe fn mbuf_room<'a>(m: *mut sys::rte_mbuf) -> (&'a mut [u8], usize) {
    // SAFETY: per the function contract; buf_len covers the whole buffer from buf_addr.
    unsafe {
        let start = (*m).buf_addr.cast::<u8>().add(usize::from((*m).data_off));
        let room = usize::from((*m).buf_len).saturating_sub(usize::from((*m).data_off));
        (std::slice::from_raw_parts_mut(start, room), room)
    }
}

/// Moves the start of `m`'s data forward by `skip` bytes and sets its length to `len`.
///
/// # Safety
/// `m` must be a valid single-segment mbuf owned by the caller, and `skip + len` must fit in
/// its room (see [`mbuf_room`]).
unsafe fn set_len(m: *mut sys::rte_mbuf, skip: usize, len: usize) {
    // SAFETY: per the function contract.
    unsafe {
        (*m).data_off += skip as u16;
        (*m).data_len = len as u16;
        (*m).pkt_len = len as u32;
        // Keep the attachment bits: freeing must still detach external/indirect buffers.
        (*m).ol_flags &= ATTACHED;
    }
}

impl PacketIo for DpdkIo {
    type Batch = DpdkBatch;

    fn kind(&self) -> &'static str {
        "dpdk"
    }

    fn new_batch(&self) -> DpdkBatch {
        DpdkBatch {
            mbufs: [std::ptr::null_mut(); BURST_SIZE_MAX],
            meta: [RxMeta::default(); BURST_SIZE_MAX],
            payload: [std::ptr::null_mut(); BURST_SIZE_MAX],
            payload_at: [0; BURST_SIZE_MAX],
            buf_len: [0; BURST_SIZE_MAX],
            writable: [false; BURST_SIZE_MAX],
            payload_sum: [None; BURST_SIZE_MAX],
            head: [[0; RTP_HEAD]; BURST_SIZE_MAX],
        }
    }

    fn can_generate(&self) -> bool {
        true
    }

    /// Receiving a burst from a poll-mode queue costs tens of nanoseconds, a stream table
    /// larger than the caches a memory access per wave: overlapping pays.
    fn overlap_bursts(&self) -> bool {
        true
    }

    /// A poll returns what the queue holds; the idle sleep follows only an empty one.
    fn rx_waits(&self) -> bool {
        false
    }

    /// A generated datagram (media playback) in a fresh mbuf from the worker's pool, its
    /// payload at the pool's headroom so transmit writes the headers in front, as for a
    /// received one; the checksum is computed at transmit (`payload_sum` unknown).
    fn load(&mut self, batch: &mut DpdkBatch, i: usize, payload: &[u8]) -> bool {
        if i >= BURST_SIZE_MAX || payload.len() > usize::from(u16::MAX) {
            return false;
        }
        if !batch.mbufs[i].is_null() {
            Self::free(batch.mbufs[i]);
            batch.mbufs[i] = std::ptr::null_mut();
        }
        // SAFETY: the pool is this port's mempool, valid for the process's life.
        let m = unsafe { sys::rte_pktmbuf_alloc(self.ctx.pool) };
        if m.is_null() {
            self.count(Stat::TxDropped);
            return false;
        }
        // SAFETY: m is a fresh single-segment mbuf we own; the copy stays inside its room
        // (checked against mbuf_room), and data_off keeps the pool's headroom (128 bytes) for
        // the headers transmit writes in front of the payload (at most 66).
        unsafe {
            let (data, room) = mbuf_room(m);
            if payload.len() > room {
                Self::free(m);
                return false;
            }
            data[..payload.len()].copy_from_slice(payload);
            set_len(m, 0, payload.len());
        }
        batch.mbufs[i] = m;
        // SAFETY: m is a valid mbuf we own.
        unsafe { batch.keep_header(i, m, 0) };
        batch.payload_sum[i] = None;
        batch.meta[i] = RxMeta {
            len: payload.len() as u16,
            ..RxMeta::default()
        };
        true
    }

    fn open_port(&mut self, local: SocketAddr) -> Result<PortHandle, IoError> {
        let Some(slot) = self.handle_of(local.ip(), local.port()) else {
            return Err(IoError::Backend(format!(
                "{} is not an address of this port (dataplane.dpdk.addresses)",
                local.ip()
            )));
        };
        if self.owner(local.port()) != Some(usize::from(self.queue)) {
            return Err(IoError::Backend(format!(
                "port {} belongs to another worker's range",
                local.port()
            )));
        }
        if !self.open.insert(slot) {
            return Err(IoError::InUse(local));
        }
        Ok(PortHandle(slot as u32))
    }

    fn close_port(&mut self, port: PortHandle) {
        self.open.remove(port.0 as usize);
    }

    fn rx_burst(&mut self, batch: &mut DpdkBatch, max: usize, wait: Duration) -> usize {
        if self.ctx.quiesce.load(Ordering::Acquire) {
            self.pause();
            return 0;
        }
        self.paused = 0;
        self.flush();
        let max = max.min(BURST_SIZE_MAX);
        let mut raw = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST_SIZE_MAX];
        // Hand-offs from other workers first: they waited already.
        // SAFETY: our own ring (single consumer = this worker); raw has room for max.
        let ho = unsafe {
            sys::rte_ring_sc_dequeue_burst(
                self.ctx.rings[usize::from(self.queue)],
                raw.as_mut_ptr().cast(),
                // At most half a burst, so the NIC queue is always polled for a fair share.
                (max / 2).max(1) as u32,
                std::ptr::null_mut(),
            )
        } as usize;
        // SAFETY: our queue; raw[ho..max] is free space.
        let nrx = unsafe {
            sys::rte_eth_rx_burst(
                self.ctx.port_id,
                self.queue,
                raw.as_mut_ptr().add(ho),
                (max - ho) as u16,
            )
        } as usize;
        self.counters.rx_calls += 1;
        self.local[Stat::RxPackets as usize] += nrx as u64;
        // Start loading every frame's first lines (headers and RTP) before classifying any.
        let lines = if self.verify_checksums { 4 } else { 2 };
        for &m in &raw[..ho + nrx] {
            prefetch_data(m, lines);
        }
        let mut n = 0;
        for (i, &m) in raw[..ho + nrx].iter().enumerate() {
            if let Some((off, meta, sum)) = self.classify(m, i < ho) {
                batch.mbufs[n] = m;
                // SAFETY: m is a valid mbuf of this burst, now owned by the batch.
                unsafe { batch.keep_header(n, m, off) };
                batch.meta[n] = meta;
                batch.payload_sum[n] = sum;
                if sum.is_some() {
                    let p = batch.payload_mut(n);
                    if p.len() >= RTP_HEAD {
                        let mut h = [0u8; RTP_HEAD];
                        h.copy_from_slice(&p[..RTP_HEAD]);
                        batch.head[n] = h;
                    } else {
                        batch.payload_sum[n] = None;
                    }
                }
                n += 1;
            }
        }
        if ho + nrx == 0 {
            self.flush();
            // Not when the worker asks for no wait: it holds a burst, or has commands.
            if !self.idle_sleep.is_zero() && !wait.is_zero() {
                std::thread::sleep(self.idle_sleep);
            }
        }
        n
    }

    fn tx_burst(&mut self, batch: &mut DpdkBatch, n: usize, tx: &mut [TxDesc]) -> usize {
        let mut used = [false; BURST_SIZE_MAX];
        let mut sent = 0;
        let mut now = None;
        for d in tx.iter_mut() {
            d.sent = false;
            let i = usize::from(d.buf);
            if i >= n || used[i] {
                continue;
            }
            let m = batch.mbufs[i];
            if m.is_null() || !batch.writable[i] {
                // Shared or external buffers (some PMDs' RX modes) are not rewritten in place.
                self.count(Stat::NotWritable);
                continue;
            }
            let dst = d.dst;
            let Some(mac) = self.neigh.lookup_cached(&self.iface, dst.ip()) else {
                let t = *now.get_or_insert_with(|| self.epoch.elapsed().as_nanos() as u64);
                if let Resolve::Request(hop) = self.neigh.resolve(&self.iface, dst.ip(), t) {
                    self.request(hop);
                }
                self.count(Stat::NoNeighbour);
                continue;
            };
            // The port's own address when of the destination's family (it is one of ours:
            // no search); otherwise, or for a handle without an address, the interface's
            // choice.
            let src_ip = match self.iface.addresses.get((d.port.0 >> 16) as usize) {
                Some(n) if n.addr.is_ipv4() == dst.is_ipv4() => n.addr,
                other => {
                    let local_ip = other.map_or(self.bind, |n| n.addr);
                    let Some(ip) = self.iface.source_for(dst.ip(), local_ip) else {
                        continue;
                    };
                    ip
                }
            };
            let src = SocketAddr::new(src_ip, (d.port.0 & 0xffff) as u16);
            let hdr = self.iface.udp_header_len(dst.ip());
            let len = usize::from(d.len);
            // RTP: the pipeline may have rewritten seq/ts/SSRC (bytes 2..12) only, so adjust the
            // received payload's sum. RTCP (RFC 5761 payload-type range) may have had SSRCs
            // rewritten anywhere in the compound: sum it again.
            let sum = match batch.payload_sum[i] {
                Some(sum) if len == usize::from(batch.meta[i].len) => {
                    let head = batch.head[i];
                    match batch.payload_mut(i).first_chunk::<RTP_HEAD>() {
                        Some(h) if !(64..96).contains(&(h[1] & 0x7f)) => {
                            Some(adjust_sum(sum, &head, h))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            // The new frame starts `hdr` bytes before the payload, which stays inside the
            // buffer because the payload is at least the headroom (128) plus the received
            // frame's headers into it, and we need at most 66 bytes; checked.
            let Some(start) = usize::from(batch.payload_at[i]).checked_sub(hdr) else {
                continue;
            };
            let total = hdr + len;
            if start + total > usize::from(batch.buf_len[i]) {
                continue;
            }
            // SAFETY: m is a writable mbuf owned by this batch, whose buffer holds
            // `payload_at` bytes and then the payload (keep_header), so `payload - hdr` is
            // `start` bytes into it and `start + total` is within its length (checked). Its
            // header is only written (read when received, and nothing changed it since).
            unsafe {
                (*m).data_off = start as u16;
                (*m).data_len = total as u16;
                (*m).pkt_len = total as u32;
                // Writable: no attachment flags to keep (see `writable`).
                (*m).ol_flags = 0;
                let frame = std::slice::from_raw_parts_mut(batch.payload[i].sub(hdr), total);
                if write_udp_headers(
                    frame,
                    hdr,
                    self.iface.mac,
                    mac,
                    self.iface.vlan,
                    src,
                    dst,
                    self.iface.dscp,
                    sum,
                )
                .is_err()
                {
                    continue;
                }
            }
            used[i] = true;
            self.pending.push(m);
            d.sent = true;
            sent += 1;
        }
        for (i, &m) in batch.mbufs[..n].iter().enumerate() {
            if !used[i] && !m.is_null() {
                Self::free(m);
            }
        }
        batch.mbufs[..n].fill(std::ptr::null_mut());
        if self.pending.len() >= BURST_SIZE_MAX || sent > 0 {
            self.flush();
        }
        sent
    }

    fn housekeeping(&mut self, _now_ns: u64) {
        self.flush();
        for _ in 0..1024 {
            match self.neigh_in.try_recv() {
                Ok((ip, mac)) => {
                    self.neigh.learn(ip, mac);
                }
                Err(_) => break,
            }
        }
        self.publish();
    }

    fn counters(&self) -> IoCounters {
        self.counters
    }
}

impl Drop for DpdkIo {
    fn drop(&mut self) {
        for m in self.pending.drain(..) {
            Self::free(m);
        }
        // The thread's lcore cache would otherwise keep those mbufs (and any freed earlier)
        // out of the pool until another thread gets this lcore id.
        flush_lcore_cache(self.ctx.pool);
        self.publish();
        self.ctx.claimed[usize::from(self.queue)].store(false, Ordering::Release);
        let last = REGISTERED.with(|r| {
            r.set(r.get().saturating_sub(1));
            r.get() == 0
        });
        if last {
            // SAFETY: this thread registered itself when its first DpdkIo was built, and no
            // other DpdkIo lives on it any more.
            unsafe { sys::rte_thread_unregister() };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// In-process test wire
// ---------------------------------------------------------------------------------------------

/// The far end of an ethdev built from rings (`rte_eth_from_rings`): what the appliance
/// transmits can be read here, and frames sent here arrive on the appliance's RX queues. Used
/// by tests and by the loopback self-test; the appliance sees an ordinary `net_ring` port.
pub struct RingWire {
    /// The appliance's RX rings (we enqueue).
    to_dp: Vec<*mut sys::rte_ring>,
    /// The appliance's TX rings (we dequeue).
    from_dp: Vec<*mut sys::rte_ring>,
    pool: *mut sys::rte_mempool,
    /// The ethdev's name (the ring PMD prefixes the requested name with `net_ring_`).
    pub name: String,
    pub port_id: u16,
}

// SAFETY: rings and mempool are thread-safe DPDK objects (multi-producer/consumer).
unsafe impl Send for RingWire {}
// SAFETY: as for Send; every method goes through DPDK's multi-thread-safe ring/pool ops.
unsafe impl Sync for RingWire {}

impl RingWire {
    /// Creates an ethdev named `name` with `queues` queue pairs over fresh rings, and its far
    /// end. Initialises the EAL with `cfg` first.
    ///
    /// # Errors
    /// EAL or ring creation failed.
    pub fn create(cfg: &DpdkConfig, name: &str, queues: u16) -> Result<RingWire, DpdkError> {
        init_eal(cfg)?;
        let mk = |kind: &str, q: u16| -> Result<*mut sys::rte_ring, DpdkError> {
            let n = CString::new(format!("{name}_{kind}{q}"))
                .map_err(|_| DpdkError("ring name".into()))?;
            // SAFETY: valid name; power-of-two size; MP/MC.
            let r = unsafe { sys::rte_ring_create(n.as_ptr(), 4096, 0, 0) };
            if r.is_null() {
                return Err(DpdkError(format!(
                    "ring {name}: {}",
                    errno_text(rte_errno())
                )));
            }
            Ok(r)
        };
        let to_dp = (0..queues)
            .map(|q| mk("rx", q))
            .collect::<Result<Vec<_>, _>>()?;
        let from_dp = (0..queues)
            .map(|q| mk("tx", q))
            .collect::<Result<Vec<_>, _>>()?;
        let cname = CString::new(name).map_err(|_| DpdkError("port name".into()))?;
        // SAFETY: arrays of `queues` valid rings; the name is copied.
        let port = unsafe {
            sys::rte_eth_from_rings(
                cname.as_ptr(),
                to_dp.as_ptr(),
                u32::from(queues),
                from_dp.as_ptr(),
                u32::from(queues),
                0,
            )
        };
        if port < 0 {
            return Err(DpdkError(format!(
                "rte_eth_from_rings({name}): {}",
                errno_text(rte_errno())
            )));
        }
        let pool_cfg = DpdkConfig {
            mbufs: 4095,
            mbuf_cache: 0,
            ..cfg.clone()
        };
        let pool = mempool(&pool_cfg, -1)?;
        Ok(RingWire {
            to_dp,
            from_dp,
            pool,
            name: port_name(port as u16),
            port_id: port as u16,
        })
    }

    /// The MAC address of the appliance's side.
    pub fn appliance_mac(&self) -> [u8; 6] {
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: valid port id and out pointer.
        unsafe { sys::rte_eth_macaddr_get(self.port_id, &mut mac) };
        mac.addr_bytes
    }

    /// Puts `frame` on the appliance's RX queue `queue`. False when the ring is full.
    pub fn send(&self, queue: u16, frame: &[u8]) -> bool {
        let Some(&ring) = self.to_dp.get(usize::from(queue)) else {
            return false;
        };
        // SAFETY: valid pool.
        let m = unsafe { sys::rte_pktmbuf_alloc(self.pool) };
        if m.is_null() {
            return false;
        }
        // SAFETY: fresh owned mbuf.
        let (buf, room) = unsafe { mbuf_room(m) };
        if frame.len() > room {
            DpdkIo::free(m);
            return false;
        }
        buf[..frame.len()].copy_from_slice(frame);
        // SAFETY: owned mbuf, length fits.
        unsafe { set_len(m, 0, frame.len()) };
        let obj = m.cast::<c_void>();
        // SAFETY: valid ring; ownership passes to the ring on success.
        let n = unsafe { sys::rte_ring_mp_enqueue_burst(ring, &obj, 1, std::ptr::null_mut()) };
        if n != 1 {
            DpdkIo::free(m);
        }
        n == 1
    }

    /// Takes every frame the appliance has transmitted so far (all queues), in queue order.
    pub fn recv_all(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &r in &self.from_dp {
            let mut objs = [std::ptr::null_mut::<c_void>(); 32];
            loop {
                // SAFETY: valid ring; objs has room for 32.
                let n = unsafe {
                    sys::rte_ring_mc_dequeue_burst(r, objs.as_mut_ptr(), 32, std::ptr::null_mut())
                } as usize;
                for &o in &objs[..n] {
                    let m = o.cast::<sys::rte_mbuf>();
                    // SAFETY: the ring only carries mbufs the appliance transmitted; we own
                    // them now. Single segment (the appliance never chains).
                    let (buf, _) = unsafe { mbuf_room(m) };
                    // SAFETY: owned mbuf.
                    let len = usize::from(unsafe { (*m).data_len });
                    out.push(buf[..len].to_vec());
                    DpdkIo::free(m);
                }
                if n < 32 {
                    break;
                }
            }
        }
        out
    }
}

/// CPU time-stamp counter (for latency measurements across processes on one host).
pub fn tsc() -> u64 {
    // SAFETY: reads the TSC; no memory access.
    unsafe { sys::rte_rdtsc() }
}

/// TSC ticks per second.
pub fn tsc_hz() -> u64 {
    // SAFETY: plain query after EAL initialisation (returns 0 before).
    unsafe { sys::rte_get_tsc_hz() }
}

// ---------------------------------------------------------------------------------------------
// A plain port for load generators
// ---------------------------------------------------------------------------------------------

/// An ethdev with one queue pair driven directly (no pipeline): what a DPDK load generator in
/// another process (the memif bench) uses to send frames and read what comes back.
pub struct RawPort {
    port_id: u16,
    pool: *mut sys::rte_mempool,
    pub name: String,
    pub mac: [u8; 6],
}

impl RawPort {
    /// Initialises the EAL with `cfg` and starts `cfg.port` with one RX and one TX queue.
    ///
    /// # Errors
    /// EAL, device or memory errors.
    pub fn start(cfg: &DpdkConfig) -> Result<RawPort, DpdkError> {
        init_eal(cfg)?;
        let port = find_port(&cfg.port)?;
        // SAFETY: valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(port) };
        let pool = mempool(cfg, socket)?;
        let conf = sys::rte_eth_conf::default();
        // SAFETY: valid port and conf.
        let rc = unsafe { sys::rte_eth_dev_configure(port, 1, 1, &conf) };
        if rc != 0 {
            return Err(DpdkError(format!(
                "configure {}: {}",
                cfg.port,
                errno_text(rc)
            )));
        }
        // SAFETY: valid port, queue 0, valid pool; defaults for queue config.
        let rc = unsafe {
            sys::rte_eth_rx_queue_setup(
                port,
                0,
                cfg.rx_descriptors,
                socket.max(0) as u32,
                std::ptr::null(),
                pool,
            )
        };
        if rc != 0 {
            return Err(DpdkError(format!("RX queue: {}", errno_text(rc))));
        }
        // SAFETY: as above.
        let rc = unsafe {
            sys::rte_eth_tx_queue_setup(
                port,
                0,
                cfg.tx_descriptors,
                socket.max(0) as u32,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(DpdkError(format!("TX queue: {}", errno_text(rc))));
        }
        // SAFETY: configured port.
        let rc = unsafe { sys::rte_eth_dev_start(port) };
        if rc != 0 {
            return Err(DpdkError(format!("start {}: {}", cfg.port, errno_text(rc))));
        }
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: valid port and out pointer.
        unsafe { sys::rte_eth_macaddr_get(port, &mut mac) };
        Ok(RawPort {
            port_id: port,
            pool,
            name: port_name(port),
            mac: mac.addr_bytes,
        })
    }

    /// Whether the link is up (for memif: the peer has connected).
    pub fn link_up(&self) -> bool {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: valid port and out pointer.
        let rc = unsafe { sys::rte_eth_link_get_nowait(self.port_id, &mut link) };
        rc == 0 && link.link_status() == 1
    }

    /// Builds up to `n` (≤ 32) frames with `fill(i, room) -> len` and transmits them; returns
    /// how many the port took (the rest are freed).
    pub fn send_burst(
        &mut self,
        n: usize,
        mut fill: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> usize {
        let n = n.min(BURST_SIZE_MAX);
        let mut m = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST_SIZE_MAX];
        // SAFETY: valid pool; m has room for n pointers.
        if unsafe { sys::rte_pktmbuf_alloc_bulk(self.pool, m.as_mut_ptr(), n as u32) } != 0 {
            return 0;
        }
        for (i, &mb) in m[..n].iter().enumerate() {
            // SAFETY: freshly allocated, owned.
            let (buf, room) = unsafe { mbuf_room(mb) };
            let len = fill(i, &mut buf[..room]).min(room);
            // SAFETY: owned, len fits.
            unsafe { set_len(mb, 0, len) };
        }
        // SAFETY: n built mbufs; ownership of the first `sent` passes to the driver.
        let sent = usize::from(unsafe {
            sys::rte_eth_tx_burst(self.port_id, 0, m.as_mut_ptr(), n as u16)
        });
        for &mb in &m[sent..n] {
            DpdkIo::free(mb);
        }
        sent
    }

    /// Receives one burst and hands each frame to `f`; returns the number received.
    pub fn recv_burst(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut m = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST_SIZE_MAX];
        // SAFETY: our queue; m has room for BURST_SIZE_MAX.
        let n = usize::from(unsafe {
            sys::rte_eth_rx_burst(self.port_id, 0, m.as_mut_ptr(), BURST_SIZE_MAX as u16)
        });
        for &mb in &m[..n] {
            // SAFETY: received mbufs are ours; data_len bytes of the first segment are valid.
            let (buf, room) = unsafe { mbuf_room(mb) };
            // SAFETY: owned mbuf.
            let len = usize::from(unsafe { (*mb).data_len }).min(room);
            f(&buf[..len]);
            DpdkIo::free(mb);
        }
        n
    }
}

impl Drop for RawPort {
    fn drop(&mut self) {
        // SAFETY: our started port; nothing polls it any more.
        unsafe { sys::rte_eth_dev_stop(self.port_id) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_table_is_in_index_order_with_unique_names() {
        for (i, (stat, name, _)) in STATS.iter().enumerate() {
            assert_eq!(*stat as usize, i, "{name}");
        }
        let mut names: Vec<&str> = STATS.iter().map(|s| s.1).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STAT_COUNT);
    }
}
