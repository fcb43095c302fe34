//! The control plane's handle on the dataplane: starts workers, allocates ports, sends
//! commands and reads statistics. Blocking (crossbeam) calls with timeouts; async callers
//! run them on a blocking thread.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::Serialize;

use crate::alloc::PortAllocator;
use crate::command::{
    CommandError, ConfOp, ConfReply, LegSpec, LegUpdate, MediaCommand, MediaEvent, RelaySnapshot,
    RelaySpec,
};
use crate::config::{ConfigError, DataplaneConfig};
use crate::ids::{RelayId, Side, WorkerId};
use crate::io::memory::{Datagram, MemoryIo};
use crate::io::socket::{SocketIo, SocketOptions};
use crate::io::{IoError, PacketIo};
use crate::table::SourcePolicy;
use crate::worker::{Worker, WorkerConfig, WorkerShared};

/// How long a caller waits for a worker to answer a command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Which packet I/O the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Socket,
    Memory,
    Dpdk,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Socket => "socket",
            BackendKind::Memory => "memory",
            BackendKind::Dpdk => "dpdk",
        }
    }
}

/// Why the dataplane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("worker {worker}: {source}")]
    Backend { worker: u16, source: IoError },
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("worker {0} exited during start-up")]
    WorkerDied(u16),
    #[error("{0}")]
    Dpdk(String),
    #[error("dataplane.backend = \"dpdk\" but this voxedge was built without DPDK support; rebuild with `cargo build --release --features dpdk` (needs libdpdk-dev, pkg-config and libclang-dev)")]
    NoDpdk,
}

/// Why a dataplane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("no free media ports")]
    PortsExhausted,
    #[error("worker {0} is not accepting commands (queue full)")]
    Busy(u16),
    #[error("worker {0} did not answer within {1:?}")]
    Timeout(u16, Duration),
    #[error("worker {0} has stopped")]
    Stopped(u16),
    #[error("relay {0} not found")]
    NotFound(u64),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("conference {conf} is mixed on worker {conf_worker}, this leg's media is on worker {leg_worker}: members of a conference must share a worker")]
    ConferenceWorker {
        conf: u64,
        conf_worker: u16,
        leg_worker: u16,
    },
    #[error("conference {0} not found")]
    NoConference(u64),
}

impl DataplaneError {
    /// The relay asked about does not exist (any more), as opposed to a worker that is busy,
    /// slow or stopping.
    pub fn relay_gone(&self) -> bool {
        matches!(
            self,
            DataplaneError::NotFound(_) | DataplaneError::Command(CommandError::NotFound(_))
        )
    }
}

/// One leg as requested by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegRequest {
    pub remote: Option<SocketAddr>,
    pub rtcp_remote: Option<SocketAddr>,
    pub rtcp_mux: bool,
    pub clock_rate_hz: u32,
    pub dtmf_pt: Option<u8>,
    /// What arrives on the leg's RTP port is not RTP (T.38 fax over UDPTL, RFC 3362): each
    /// datagram is forwarded as it is after the source check — no RTP/RTCP demultiplexing,
    /// parsing, statistics, DTMF or rewriting.
    pub opaque: bool,
}

impl Default for LegRequest {
    fn default() -> Self {
        LegRequest {
            remote: None,
            rtcp_remote: None,
            rtcp_mux: false,
            clock_rate_hz: 8000,
            dtmf_pt: Some(101),
            opaque: false,
        }
    }
}

/// A relay as requested by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayRequest {
    pub legs: [LegRequest; 2],
    pub policy: SourcePolicy,
    pub rewrite: bool,
    /// Media arriving on a leg goes back to that leg's remote (echo test target).
    pub echo: bool,
    /// The worker to place the relay on (a conference's, so its members mix on one core);
    /// otherwise the least loaded.
    pub worker: Option<WorkerId>,
}

impl RelayRequest {
    /// Default legs with the given remotes (`None` latches the first source).
    pub fn with_remotes(a: Option<SocketAddr>, b: Option<SocketAddr>) -> Self {
        let leg = |remote| LegRequest {
            remote,
            ..Default::default()
        };
        RelayRequest {
            legs: [leg(a), leg(b)],
            ..Default::default()
        }
    }
}

/// Local addresses of one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LegInfo {
    pub local: SocketAddr,
    pub rtcp_local: Option<SocketAddr>,
}

/// A relay whose creation was queued without waiting for the worker
/// ([`Dataplane::create_relay_queued`]); [`Dataplane::settle`] tells how it went.
#[derive(Debug)]
pub struct QueuedRelay {
    info: RelayInfo,
    reply: Receiver<Result<(), CommandError>>,
    at: Instant,
}

impl QueuedRelay {
    pub fn id(&self) -> RelayId {
        self.info.id
    }
}

/// A created relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RelayInfo {
    pub id: RelayId,
    pub worker: WorkerId,
    pub legs: [LegInfo; 2],
}

struct WorkerHandle {
    commands: Sender<MediaCommand>,
    /// Wakes the worker when it sleeps waiting for packets (socket backend).
    waker: Option<crate::io::Waker>,
    shared: Arc<WorkerShared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct ControlState {
    /// `allocators[worker][address]`: each worker's port slice on each media address.
    allocators: Vec<Vec<PortAllocator>>,
    relays: HashMap<RelayId, RelayInfo>,
    relays_per_worker: Vec<usize>,
    /// Conferences and the worker mixing each.
    conferences: HashMap<crate::mixer::ConfId, WorkerId>,
}

/// Test-side view of the in-memory network (only with [`BackendKind::Memory`]).
pub struct MemoryNet {
    inboxes: Vec<(u16, u16, Sender<Datagram>)>,
    out: Receiver<Datagram>,
}

impl MemoryNet {
    /// Delivers a datagram to the worker owning its destination port. False if its queue is full.
    pub fn send(&self, d: Datagram) -> bool {
        let port = d.dst.port();
        let inbox = self
            .inboxes
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&port))
            .or(self.inboxes.first());
        inbox.is_some_and(|(_, _, tx)| tx.try_send(d).is_ok())
    }

    /// Next datagram any worker sent.
    pub fn recv_timeout(&self, t: Duration) -> Option<Datagram> {
        self.out.recv_timeout(t).ok()
    }
}

/// The running dataplane.
pub struct Dataplane {
    cfg: DataplaneConfig,
    /// Local media addresses: `bind` first, then `extra_addresses`.
    addrs: Vec<IpAddr>,
    advertise: IpAddr,
    backend: BackendKind,
    workers: Vec<WorkerHandle>,
    events: Receiver<MediaEvent>,
    state: Mutex<ControlState>,
    next_id: AtomicU64,
    started: Instant,
    #[cfg(feature = "dpdk")]
    dpdk: Option<Arc<crate::io::dpdk::PortCtx>>,
}

impl Dataplane {
    /// Starts workers on kernel sockets.
    ///
    /// # Errors
    /// Invalid configuration, or a worker could not create its backend.
    pub fn start(cfg: DataplaneConfig) -> Result<Self, StartError> {
        cfg.validate()?;
        if cfg.backend == crate::config::Backend::Dpdk {
            return Self::start_dpdk(cfg);
        }
        let opts = SocketOptions {
            dscp: cfg.dscp,
            rcvbuf_bytes: cfg.socket_rcvbuf_bytes,
            sndbuf_bytes: cfg.socket_sndbuf_bytes,
            ports_max: cfg.streams_per_worker_max,
            raw_tx: cfg.socket_raw_tx,
        };
        Self::spawn(cfg, BackendKind::Socket, |_| move || SocketIo::new(opts))
    }

    #[cfg(not(feature = "dpdk"))]
    fn start_dpdk(_cfg: DataplaneConfig) -> Result<Self, StartError> {
        Err(StartError::NoDpdk)
    }

    /// Starts workers on the DPDK port of `cfg.dpdk`, one queue pair per worker.
    #[cfg(feature = "dpdk")]
    fn start_dpdk(cfg: DataplaneConfig) -> Result<Self, StartError> {
        use crate::io::dpdk::{start_port, DpdkIo, DpdkIoParts};
        let n = cfg.worker_count();
        let ranges: Vec<(u16, u16)> = PortAllocator::split(cfg.port_min, cfg.port_max, n)
            .iter()
            .map(PortAllocator::range)
            .collect();
        let ctx = start_port(&cfg.dpdk, &ranges).map_err(|e| StartError::Dpdk(e.to_string()))?;
        let iface = cfg.dpdk.interface(ctx.mac, cfg.dscp)?;
        let (neigh_tx, neigh_rx): (Vec<_>, Vec<_>) = (0..n).map(|_| bounded(1024)).unzip();
        let mut neigh_rx: Vec<_> = neigh_rx.into_iter().map(Some).collect();
        let bind = cfg.bind;
        let dcfg = cfg.dpdk.clone();
        let c2 = ctx.clone();
        let mut dp = Self::spawn(cfg, BackendKind::Dpdk, move |w| {
            let q = usize::from(w.0);
            let parts = neigh_rx[q].take().map(|neigh_in| DpdkIoParts {
                ctx: c2.clone(),
                queue: w.0,
                ranges: ranges.clone(),
                bind,
                iface: iface.clone(),
                neighbours_max: dcfg.neighbours_max,
                neigh_out: neigh_tx
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != q)
                    .map(|(_, t)| t.clone())
                    .collect(),
                neigh_in,
                idle_sleep: Duration::from_micros(dcfg.idle_sleep_us),
                verify_checksums: dcfg.verify_checksums,
            });
            move || parts.ok_or(IoError::TooManyPorts(0)).and_then(DpdkIo::new)
        })?;
        dp.dpdk = Some(ctx);
        Ok(dp)
    }

    /// The DPDK port, when the dataplane runs on DPDK.
    #[cfg(feature = "dpdk")]
    pub fn dpdk_port(&self) -> Option<&Arc<crate::io::dpdk::PortCtx>> {
        self.dpdk.as_ref()
    }

    /// Counters of the packet I/O backend beyond the common ones, as Prometheus
    /// (name, help, value) triples summed over workers. Empty for socket and memory.
    pub fn backend_metrics(&self) -> Vec<(String, &'static str, u64)> {
        #[cfg(feature = "dpdk")]
        if let Some(ctx) = &self.dpdk {
            let mut out: Vec<(String, &'static str, u64)> = crate::io::dpdk::STATS
                .iter()
                .map(|&(stat, name, help)| {
                    let v = ctx.stats.iter().map(|s| s.get(stat)).sum();
                    (format!("voxedge_dpdk_{name}_total"), help, v)
                })
                .collect();
            let (missed, nombuf, ierr, oerr) = ctx.port_counters();
            out.push((
                "voxedge_dpdk_rx_missed_total".into(),
                "Packets the port dropped because its RX queues were full (imissed)",
                missed,
            ));
            out.push((
                "voxedge_dpdk_rx_nombuf_total".into(),
                "RX mbuf allocation failures",
                nombuf,
            ));
            out.push((
                "voxedge_dpdk_rx_errors_total".into(),
                "Erroneous packets received by the port",
                ierr,
            ));
            out.push((
                "voxedge_dpdk_tx_errors_total".into(),
                "Packets the port failed to transmit",
                oerr,
            ));
            return out;
        }
        Vec::new()
    }

    /// Starts workers on the in-memory network; the returned [`MemoryNet`] is its far side.
    ///
    /// # Errors
    /// Invalid configuration.
    pub fn start_memory(cfg: DataplaneConfig) -> Result<(Self, MemoryNet), StartError> {
        cfg.validate()?;
        let n = cfg.worker_count();
        let (out_tx, out_rx) = bounded(1 << 16);
        let mut ios = Vec::new();
        let mut inboxes = Vec::new();
        for a in PortAllocator::split(cfg.port_min, cfg.port_max, n) {
            let (tx, rx) = bounded(1 << 16);
            ios.push(Some(MemoryIo::new(rx, out_tx.clone())));
            let (lo, hi) = a.range();
            inboxes.push((lo, hi, tx));
        }
        let dp = Self::spawn(cfg, BackendKind::Memory, move |w| {
            let io = ios.get_mut(usize::from(w.0)).and_then(Option::take);
            move || io.ok_or(IoError::TooManyPorts(0))
        })?;
        Ok((
            dp,
            MemoryNet {
                inboxes,
                out: out_rx,
            },
        ))
    }

    fn spawn<Io, F, M>(
        cfg: DataplaneConfig,
        backend: BackendKind,
        mut make: M,
    ) -> Result<Self, StartError>
    where
        Io: PacketIo + 'static,
        F: FnOnce() -> Result<Io, IoError> + Send + 'static,
        M: FnMut(WorkerId) -> F,
    {
        let n = cfg.worker_count();
        let addrs = cfg.media_addresses();
        let allocators: Vec<Vec<PortAllocator>> =
            PortAllocator::split(cfg.port_min, cfg.port_max, n)
                .into_iter()
                .map(|a| vec![a; addrs.len()])
                .collect();
        let (ev_tx, ev_rx) = bounded(cfg.event_queue_max);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let id = WorkerId(i as u16);
            let (cmd_tx, cmd_rx) = bounded(cfg.command_queue_max);
            let shared = Arc::new(WorkerShared::new(id));
            let wcfg = WorkerConfig {
                bind: cfg.bind,
                burst_size: cfg.burst_size,
                overlap_bursts: cfg.overlap_bursts,
                idle_wait: Duration::from_micros(cfg.idle_wait_us),
                media_timeout: (cfg.media_timeout_ms > 0)
                    .then(|| Duration::from_millis(cfg.media_timeout_ms)),
                streams_max: cfg.streams_per_worker_max,
            };
            let core = if !cfg.pin_cores || cores.is_empty() {
                None
            } else if let Some(&c) = cfg.cores.get(i) {
                Some(core_affinity::CoreId { id: c })
            } else {
                // Leave core 0 to the control plane and the kernel when there is more than one.
                Some(cores[(i + usize::from(cores.len() > 1)) % cores.len()])
            };
            let make_io = make(id);
            let (ready_tx, ready_rx) = bounded::<Result<Option<crate::io::Waker>, IoError>>(1);
            let ev = ev_tx.clone();
            let sh = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("voxedge-w{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        let pinned = core_affinity::set_for_current(core);
                        sh.pinned_core
                            .store(if pinned { core.id as i64 } else { -1 }, Ordering::Relaxed);
                    }
                    match make_io() {
                        Ok(io) => {
                            let waker = io.waker();
                            // Ready once the worker exists: what it publishes at creation
                            // (`WorkerShared::overlapped`) is there when `start` returns.
                            let worker = Worker::new(wcfg, io, cmd_rx, ev, sh);
                            let _ = ready_tx.send(Ok(waker));
                            worker.run();
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .map_err(StartError::Thread)?;
            let waker = match ready_rx.recv() {
                Ok(Ok(w)) => w,
                Ok(Err(source)) => {
                    return Err(StartError::Backend {
                        worker: id.0,
                        source,
                    })
                }
                Err(_) => return Err(StartError::WorkerDied(id.0)),
            };
            workers.push(WorkerHandle {
                waker,
                commands: cmd_tx,
                shared,
                thread: Some(thread),
            });
        }
        let advertise = cfg.advertise.unwrap_or_else(|| resolve_advertise(cfg.bind));
        Ok(Dataplane {
            state: Mutex::new(ControlState {
                relays_per_worker: vec![0; n],
                conferences: HashMap::new(),
                allocators,
                relays: HashMap::new(),
            }),
            addrs,
            cfg,
            advertise,
            backend,
            workers,
            events: ev_rx,
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            #[cfg(feature = "dpdk")]
            dpdk: None,
        })
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The address announced to peers.
    pub fn advertise(&self) -> IpAddr {
        self.advertise
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Events from all workers (DTMF, latching, media timeouts).
    pub fn events(&self) -> &Receiver<MediaEvent> {
        &self.events
    }

    /// Per-worker shared counters.
    pub fn workers(&self) -> impl Iterator<Item = &Arc<WorkerShared>> {
        self.workers.iter().map(|w| &w.shared)
    }

    fn state(&self) -> MutexGuard<'_, ControlState> {
        // A panic while holding this lock would be a bug elsewhere; the state stays usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates a relay on the least-loaded worker. A port that another program holds is
    /// skipped (up to three times, with the next free ports), so media ports that overlap the
    /// host's ephemeral range cost a retry, not a failed call.
    ///
    /// # Errors
    /// No ports left, the worker is overloaded or could not open a port.
    pub fn create_relay(&self, req: RelayRequest) -> Result<RelayInfo, DataplaneError> {
        let mut attempt = 0;
        loop {
            match self.create_relay_once(req) {
                Err(DataplaneError::Command(CommandError::Open { in_use: true, .. }))
                    if attempt < 3 =>
                {
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn create_relay_once(&self, req: RelayRequest) -> Result<RelayInfo, DataplaneError> {
        let (spec, info) = self.reserve(req)?;
        let w = usize::from(info.worker.0);
        let result = self
            .call(w, |reply| MediaCommand::CreateRelay { spec, reply })
            .and_then(|r| r.map_err(DataplaneError::from));
        let mut st = self.state();
        match result {
            Ok(()) => {
                st.relays.insert(info.id, info);
                Ok(info)
            }
            Err(e) => {
                self.release(&mut st, &info);
                Err(e)
            }
        }
    }

    /// Like [`Dataplane::create_relay`], without waiting for the worker: the relay is known
    /// (and its ports given) at once, and commands sent to it queue behind its creation.
    /// Whether the worker could open its ports comes later, from [`Dataplane::settle`]; a
    /// port that another program holds is not skipped, the relay fails.
    ///
    /// # Errors
    /// No ports left, or the worker's command queue is full or closed.
    pub fn create_relay_queued(
        &self,
        req: RelayRequest,
    ) -> Result<(RelayInfo, QueuedRelay), DataplaneError> {
        let (spec, info) = self.reserve(req)?;
        let w = usize::from(info.worker.0);
        let (reply, rx) = bounded(1);
        // Known before the command leaves, so that nothing sent to it after can miss it.
        self.state().relays.insert(info.id, info);
        if let Err(e) = self.post(w, MediaCommand::CreateRelay { spec, reply }) {
            self.forget(&info);
            return Err(e);
        }
        Ok((
            info,
            QueuedRelay {
                info,
                reply: rx,
                at: Instant::now(),
            },
        ))
    }

    /// The outcome of a queued creation: `None` while the worker has not answered, `Some(Ok)`
    /// once the relay runs, `Some(Err)` when it failed — the relay is then gone and its
    /// ports are free again (also when the worker did not answer within
    /// [`COMMAND_TIMEOUT`]: the creation is withdrawn).
    pub fn settle(&self, q: &QueuedRelay) -> Option<Result<(), DataplaneError>> {
        let w = q.info.worker.0;
        match q.reply.try_recv() {
            Ok(Ok(())) => Some(Ok(())),
            Ok(Err(e)) => {
                self.forget(&q.info);
                Some(Err(e.into()))
            }
            Err(crossbeam_channel::TryRecvError::Empty) if q.at.elapsed() < COMMAND_TIMEOUT => None,
            Err(crossbeam_channel::TryRecvError::Empty) => {
                // The creation may still run: the delete queued behind it undoes it.
                if self.delete_relay_nowait(q.info.id).is_err() {
                    self.forget(&q.info);
                }
                Some(Err(DataplaneError::Timeout(w, COMMAND_TIMEOUT)))
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                self.forget(&q.info);
                Some(Err(DataplaneError::Stopped(w)))
            }
        }
    }

    /// Picks the worker and ports of a new relay (counted as that worker's, not yet known
    /// as a relay): the command that creates it and what callers are told.
    fn reserve(&self, req: RelayRequest) -> Result<(RelaySpec, RelayInfo), DataplaneError> {
        let id = RelayId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (w, k, ports) = {
            let mut st = self.state();
            let has_room = |w: usize| st.allocators[w].iter().any(|a| a.available() >= 2);
            let w = match req.worker {
                Some(w) => Some(usize::from(w.0))
                    .filter(|&w| w < self.workers.len() && has_room(w))
                    .ok_or(DataplaneError::PortsExhausted)?,
                None => (0..self.workers.len())
                    .filter(|&w| has_room(w))
                    .min_by_key(|&w| st.relays_per_worker[w])
                    .ok_or(DataplaneError::PortsExhausted)?,
            };
            // Both legs on the address of this worker with the most free ports.
            let k = (0..st.allocators[w].len())
                .max_by_key(|&k| st.allocators[w][k].available())
                .unwrap_or(0);
            let al = &mut st.allocators[w][k];
            let (Some(a), Some(b)) = (al.alloc(), al.alloc()) else {
                return Err(DataplaneError::PortsExhausted);
            };
            st.relays_per_worker[w] += 1;
            (w, k, [a, b])
        };
        let local_ip = self.addrs[k];
        let shown_ip = if k == 0 { self.advertise } else { local_ip };
        let leg_spec = |i: usize| {
            let l = req.legs[i];
            LegSpec {
                local_ip,
                rtp_port: ports[i],
                rtcp_port: (!l.rtcp_mux).then_some(ports[i] + 1),
                remote: l.remote,
                rtcp_remote: l.rtcp_remote,
                clock_rate_hz: l.clock_rate_hz,
                dtmf_pt: l.dtmf_pt,
                opaque: l.opaque,
            }
        };
        let spec = RelaySpec {
            id,
            legs: [leg_spec(0), leg_spec(1)],
            policy: req.policy,
            rewrite: req.rewrite,
            echo: req.echo,
        };
        let leg = |i: usize| LegInfo {
            local: SocketAddr::new(shown_ip, ports[i]),
            rtcp_local: spec.legs[i].rtcp_port.map(|p| SocketAddr::new(shown_ip, p)),
        };
        let info = RelayInfo {
            id,
            worker: WorkerId(w as u16),
            legs: [leg(0), leg(1)],
        };
        Ok((spec, info))
    }

    /// Statistics of a relay, with local ports filled in.
    ///
    /// # Errors
    /// Unknown relay, or the worker did not answer.
    pub fn query_relay(&self, id: RelayId) -> Result<(RelayInfo, RelaySnapshot), DataplaneError> {
        let info = self.relay(id).ok_or(DataplaneError::NotFound(id.0))?;
        let w = usize::from(info.worker.0);
        let mut snap = self.call(w, |reply| MediaCommand::QueryRelay { relay: id, reply })??;
        fill_ports(&info, &mut snap);
        Ok((info, snap))
    }

    /// Changes a leg's remote address or blocks it.
    ///
    /// # Errors
    /// Unknown relay, or the worker did not answer.
    pub fn update_leg(
        &self,
        id: RelayId,
        side: Side,
        update: LegUpdate,
    ) -> Result<(), DataplaneError> {
        let info = self.relay(id).ok_or(DataplaneError::NotFound(id.0))?;
        let w = usize::from(info.worker.0);
        Ok(self.call(w, |reply| MediaCommand::UpdateLeg {
            relay: id,
            side,
            update,
            reply,
        })??)
    }

    /// Removes a relay, frees its ports and returns its final statistics.
    ///
    /// # Errors
    /// Unknown relay, or the worker did not answer (the relay is then kept).
    pub fn delete_relay(&self, id: RelayId) -> Result<(RelayInfo, RelaySnapshot), DataplaneError> {
        let info = self.relay(id).ok_or(DataplaneError::NotFound(id.0))?;
        let w = usize::from(info.worker.0);
        let mut snap = self.call(w, |reply| MediaCommand::DeleteRelay { relay: id, reply })??;
        fill_ports(&info, &mut snap);
        self.forget(&info);
        Ok((info, snap))
    }

    /// Removes a relay without waiting for its worker (call control uses this on hang-up: the
    /// worker applies commands in order, so the freed ports are safe to hand out again).
    ///
    /// # Errors
    /// Unknown relay, or the worker's command queue is full or closed (the relay is kept).
    pub fn delete_relay_nowait(&self, id: RelayId) -> Result<(), DataplaneError> {
        let info = self.relay(id).ok_or(DataplaneError::NotFound(id.0))?;
        let w = usize::from(info.worker.0);
        let (reply, _) = bounded(1);
        self.post(w, MediaCommand::DeleteRelay { relay: id, reply })?;
        self.forget(&info);
        Ok(())
    }

    /// Changes a leg without waiting for the worker's answer.
    ///
    /// # Errors
    /// Unknown relay, or the worker's command queue is full or closed.
    pub fn update_leg_nowait(
        &self,
        id: RelayId,
        side: Side,
        update: LegUpdate,
    ) -> Result<(), DataplaneError> {
        let info = self.relay(id).ok_or(DataplaneError::NotFound(id.0))?;
        let (reply, _) = bounded(1);
        self.post(
            usize::from(info.worker.0),
            MediaCommand::UpdateLeg {
                relay: id,
                side,
                update,
                reply,
            },
        )
    }

    /// Plays media out of one leg (see [`MediaCommand::Play`]); a
    /// [`MediaEvent::PlayDone`] carrying `id` follows on [`Dataplane::events`] when it ends.
    ///
    /// # Errors
    /// Unknown relay, media that cannot be played, a backend that cannot generate packets,
    /// or the worker did not answer.
    pub fn play(
        &self,
        id: RelayId,
        side: Side,
        media: std::sync::Arc<crate::player::PlayMedia>,
        loops: u32,
        play_id: u64,
    ) -> Result<(), DataplaneError> {
        let info = self.relay(id).ok_or(DataplaneError::NotFound(id.0))?;
        let w = usize::from(info.worker.0);
        Ok(self.call(w, |reply| MediaCommand::Play {
            relay: id,
            side,
            media,
            loops,
            id: play_id,
            reply,
        })??)
    }

    /// Starts recording what a leg receives (`Some(tap)`) or stops it (`None`).
    ///
    /// # Errors
    /// Unknown relay, or the worker did not answer.
    pub fn record(
        &self,
        id: RelayId,
        side: Side,
        tap: Option<crate::recorder::RecordTap>,
    ) -> Result<(), DataplaneError> {
        let info = self.relay(id).ok_or(DataplaneError::NotFound(id.0))?;
        let w = usize::from(info.worker.0);
        Ok(self.call(w, |reply| MediaCommand::Record {
            relay: id,
            side,
            tap,
            reply,
        })??)
    }

    /// Stops playback on a leg; whether something was playing.
    ///
    /// # Errors
    /// Unknown relay, or the worker did not answer.
    pub fn stop_play(&self, id: RelayId, side: Side) -> Result<bool, DataplaneError> {
        let info = self.relay(id).ok_or(DataplaneError::NotFound(id.0))?;
        let w = usize::from(info.worker.0);
        Ok(self.call(w, |reply| MediaCommand::StopPlay {
            relay: id,
            side,
            reply,
        })??)
    }

    /// A conference operation (see [`ConfOp`]). A join creates the conference on the worker
    /// of the joining leg's relay; other operations go to that worker. The registry forgets a
    /// conference when its last member leaves.
    ///
    /// # Errors
    /// Unknown relay or conference, a leg on another worker than the conference, the mixer's
    /// refusal, or the worker did not answer.
    pub fn conference(
        &self,
        conf: crate::mixer::ConfId,
        op: ConfOp,
    ) -> Result<ConfReply, DataplaneError> {
        let known = self.state().conferences.get(&conf).copied();
        let w = match (&op, known) {
            (ConfOp::Join { member, .. }, known) => {
                let info = self
                    .relay(member.relay)
                    .ok_or(DataplaneError::NotFound(member.relay.0))?;
                if let Some(cw) = known.filter(|cw| *cw != info.worker) {
                    // The entry may be stale: a conference also ends when its last member's
                    // relay is deleted, which the registry does not see.
                    let roster =
                        self.call(usize::from(cw.0), |reply| MediaCommand::Conference {
                            conf,
                            op: ConfOp::Roster,
                            reply,
                        })?;
                    if roster.is_err() {
                        self.state().conferences.remove(&conf);
                        return self.conference(conf, op);
                    }
                    return Err(DataplaneError::ConferenceWorker {
                        conf: conf.0,
                        conf_worker: cw.0,
                        leg_worker: info.worker.0,
                    });
                }
                info.worker
            }
            (_, Some(w)) => w,
            (_, None) => return Err(DataplaneError::NoConference(conf.0)),
        };
        let joining = matches!(op, ConfOp::Join { .. });
        let r = self.call(usize::from(w.0), |reply| MediaCommand::Conference {
            conf,
            op,
            reply,
        })?;
        let mut st = self.state();
        if let Err(CommandError::Mix(crate::mixer::MixError::NoConference(_))) = r {
            // It ended without the registry (its last member's relay was deleted).
            st.conferences.remove(&conf);
        }
        let r = r?;
        if joining {
            st.conferences.insert(conf, w);
        } else if r == ConfReply::Ended {
            st.conferences.remove(&conf);
        }
        Ok(r)
    }

    /// The worker mixing a conference, if it exists.
    pub fn conference_worker(&self, conf: crate::mixer::ConfId) -> Option<WorkerId> {
        self.state().conferences.get(&conf).copied()
    }

    /// Drops a deleted relay from the registry and gives its ports back.
    fn forget(&self, info: &RelayInfo) {
        let mut st = self.state();
        if st.relays.remove(&info.id).is_some() {
            self.release(&mut st, info);
        }
    }

    /// Gives a relay's ports back and uncounts it (once: callers check it was still held).
    fn release(&self, st: &mut ControlState, info: &RelayInfo) {
        let w = usize::from(info.worker.0);
        st.relays_per_worker[w] -= 1;
        let k = self.address_index(info.legs[0].local.ip());
        for leg in info.legs {
            st.allocators[w][k].release(leg.local.port());
        }
    }

    /// Queues a command for worker `w` and wakes it, without waiting for an answer.
    fn post(&self, w: usize, cmd: MediaCommand) -> Result<(), DataplaneError> {
        let worker = &self.workers[w];
        match worker.commands.try_send(cmd) {
            Ok(()) => {
                if let Some(wake) = &worker.waker {
                    wake();
                }
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(DataplaneError::Busy(w as u16)),
            Err(TrySendError::Disconnected(_)) => Err(DataplaneError::Stopped(w as u16)),
        }
    }

    /// Index in [`DataplaneConfig::media_addresses`] of a leg's reported local address.
    fn address_index(&self, shown: IpAddr) -> usize {
        self.addrs
            .iter()
            .skip(1)
            .position(|a| *a == shown)
            .map_or(0, |i| i + 1)
    }

    pub fn relay(&self, id: RelayId) -> Option<RelayInfo> {
        self.state().relays.get(&id).copied()
    }

    /// Number of relays.
    pub fn relay_count(&self) -> usize {
        self.state().relays.len()
    }

    /// All relays, ordered by id.
    pub fn list_relays(&self) -> Vec<RelayInfo> {
        let mut v: Vec<RelayInfo> = self.state().relays.values().copied().collect();
        v.sort_by_key(|r| r.id);
        v
    }

    fn call<T>(
        &self,
        w: usize,
        make: impl FnOnce(Sender<T>) -> MediaCommand,
    ) -> Result<T, DataplaneError> {
        let (tx, rx) = bounded(1);
        self.post(w, make(tx))?;
        rx.recv_timeout(COMMAND_TIMEOUT).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => {
                DataplaneError::Timeout(w as u16, COMMAND_TIMEOUT)
            }
            crossbeam_channel::RecvTimeoutError::Disconnected => DataplaneError::Stopped(w as u16),
        })
    }

    /// Stops all workers and waits for them.
    pub fn shutdown(&mut self) {
        for w in &self.workers {
            let _ = w
                .commands
                .send_timeout(MediaCommand::Shutdown, Duration::from_secs(1));
            if let Some(wake) = &w.waker {
                wake();
            }
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        // The port stops once the workers (which hold it too) are gone.
        #[cfg(feature = "dpdk")]
        drop(self.dpdk.take());
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn fill_ports(info: &RelayInfo, snap: &mut RelaySnapshot) {
    for (leg, li) in snap.legs.iter_mut().zip(info.legs) {
        leg.rtp.local_port = li.local.port();
        if let (Some(r), Some(l)) = (leg.rtcp.as_mut(), li.rtcp_local) {
            r.local_port = l.port();
        }
    }
}

/// Address to announce when none is configured: the bind address, or for a wildcard bind the
/// first non-loopback IPv4 address of an interface that is up, else loopback.
fn resolve_advertise(bind: IpAddr) -> IpAddr {
    if !bind.is_unspecified() {
        return bind;
    }
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return IpAddr::V4(Ipv4Addr::LOCALHOST);
    };
    for a in addrs {
        let up = a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
        let loopback = a
            .flags
            .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK);
        if !up || loopback {
            continue;
        }
        if let Some(v4) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return IpAddr::V4(v4.ip());
        }
    }
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PortHandle;
    use crate::io::{IoCounters, PacketBatch, TxDesc};

    /// The in-memory backend, receiving one datagram per call and spending `cost` on each
    /// call that returns one (as a memif or NIC queue spends on copies and descriptors);
    /// `waits` is what it says of itself through `rx_waits`.
    struct CostlyRx {
        inner: MemoryIo,
        cost: Duration,
        waits: bool,
    }

    impl PacketIo for CostlyRx {
        type Batch = PacketBatch;

        fn kind(&self) -> &'static str {
            "memory"
        }

        fn new_batch(&self) -> PacketBatch {
            self.inner.new_batch()
        }

        fn open_port(&mut self, local: SocketAddr) -> Result<PortHandle, IoError> {
            self.inner.open_port(local)
        }

        fn close_port(&mut self, port: PortHandle) {
            self.inner.close_port(port);
        }

        fn rx_burst(&mut self, batch: &mut PacketBatch, _max: usize, _wait: Duration) -> usize {
            let n = self.inner.rx_burst(batch, 1, Duration::ZERO);
            if n > 0 {
                let t = Instant::now();
                while t.elapsed() < self.cost {
                    std::hint::spin_loop();
                }
            }
            n
        }

        fn tx_burst(&mut self, batch: &mut PacketBatch, n: usize, tx: &mut [TxDesc]) -> usize {
            self.inner.tx_burst(batch, n, tx)
        }

        fn rx_waits(&self) -> bool {
            self.waits
        }

        fn counters(&self) -> IoCounters {
            self.inner.counters()
        }
    }

    /// The worker's busy time after it received `n` datagrams, each in a call costing `cost`.
    fn busy_after(n: usize, cost: Duration, waits: bool) -> Duration {
        let cfg = DataplaneConfig {
            workers: 1,
            pin_cores: false,
            bind: "127.0.0.1".parse().expect("ip"),
            port_min: 20_000,
            port_max: 20_099,
            ..Default::default()
        };
        let (in_tx, in_rx) = bounded(n);
        let (out_tx, _out_rx) = bounded(n);
        let mut io = Some(CostlyRx {
            inner: MemoryIo::new(in_rx, out_tx),
            cost,
            waits,
        });
        let mut dp = Dataplane::spawn(cfg, BackendKind::Memory, move |_| {
            let io = io.take();
            move || io.ok_or(IoError::TooManyPorts(0))
        })
        .expect("start");
        for i in 0..n {
            let d = Datagram {
                src: SocketAddr::from(([192, 0, 2, 1], 4000)),
                dst: SocketAddr::from(([127, 0, 0, 1], 20_000 + (i % 100) as u16)),
                payload: vec![0x80; 20],
            };
            in_tx.send(d).expect("queue");
        }
        // Each datagram is processed in the call that received it, before the worker looks
        // at its commands again: once the queue is empty, a shutdown loses none.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !in_tx.is_empty() {
            assert!(
                Instant::now() < deadline,
                "worker did not take the datagrams"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        dp.shutdown();
        let w = dp.workers().next().expect("one worker");
        assert_eq!(w.packets_in.load(Ordering::Relaxed), n as u64);
        let busy = Duration::from_nanos(w.busy_ns.load(Ordering::Relaxed));
        let wall = Duration::from_nanos(w.wall_ns.load(Ordering::Relaxed));
        // Busy stretches never overlap, and each lies within the loop's wall time.
        assert!(busy <= wall, "busy {busy:?} > wall {wall:?}");
        busy
    }

    #[test]
    fn busy_time_includes_receive_calls_that_cannot_have_waited() {
        // Half the longest stretch counted, so a call counts unless the test thread is
        // descheduled in it; on a loaded machine some are, hence the margin of one half.
        let cost = Duration::from_nanos(crate::worker::RX_CALL_MAX_NS / 2);
        let n = 200;
        let spent = cost * n as u32;
        let polled = busy_after(n, cost, false);
        assert!(polled >= spent / 2, "{polled:?} of {spent:?}");
        // A backend that may have waited in the call: only what follows counts.
        let waited = busy_after(n, cost, true);
        assert!(waited < spent / 2, "{waited:?} of {spent:?}");
    }

    #[test]
    fn busy_time_leaves_out_a_receive_stretch_too_long_to_be_work() {
        // Longer than any receive call takes: the thread was away (descheduled).
        let cost = Duration::from_nanos(crate::worker::RX_CALL_MAX_NS * 2);
        let n = 50;
        let spent = cost * n as u32;
        let busy = busy_after(n, cost, false);
        assert!(busy < spent / 2, "{busy:?} of {spent:?}");
    }
}
