//! Kernel UDP socket backend: one non-blocking socket per open port, readiness from mio
//! (epoll), receive with `recvmmsg` and send with `sendmmsg` in batches.
//!
//! Edge-triggered readiness normally requires reading until `EWOULDBLOCK`. A `recvmmsg` with
//! `MSG_DONTWAIT` that returns fewer datagrams than asked proves the queue was empty at that
//! moment, so any later datagram raises a new edge; only sockets whose read filled the request
//! are kept in a ready list and read again. This saves one failing syscall per wake-up.
//!
//! Sending: a datagram leaves through the socket of its port, grouped per port into `sendmmsg`.
//! RTP streams carry 50 packets/s each, so a burst rarely has two datagrams for one port and that
//! costs one system call per datagram. With `CAP_NET_RAW` (`socket_raw_tx`), a worker instead
//! sends the IPv4 datagrams of its ports through one raw socket (`IPPROTO_RAW`, header
//! included): it writes the IPv4 and UDP headers itself (source = the port's address, or for a
//! port on 0.0.0.0 the route's source for the destination; UDP checksum computed here; the
//! kernel fills in the IP checksum, length and identification) and sends the whole burst in one
//! `sendmmsg`. A datagram the raw socket refuses as too large for the route's MTU goes out of
//! the port's own socket instead, which fragments as UDP would. See ADR 0017.
//!
//! `SocketIo` holds preallocated `mmsghdr` arrays (which contain raw pointers) and is therefore
//! built on its worker thread.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{
    recvmmsg, sendmmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessage, MsgFlags,
    MultiHeaders, SockFlag, SockProtocol, SockType, SockaddrStorage,
};

use super::{IoCounters, IoError, PacketBatch, PacketIo, RxMeta, TxDesc, PACKET_BUF_SIZE};
use crate::config::{RawTx, BURST_SIZE_MAX};
use crate::ids::PortHandle;
use crate::wire::{checksum_add, checksum_fold, ipv4, udp};

/// Options applied to every media socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    pub dscp: u8,
    pub rcvbuf_bytes: usize,
    pub sndbuf_bytes: usize,
    /// Most ports this backend will hold.
    pub ports_max: usize,
    /// Send IPv4 through one raw socket (see [`crate::config::DataplaneConfig::socket_raw_tx`]).
    pub raw_tx: RawTx,
}

struct Port {
    sock: UdpSocket,
    /// Queued in `ready` already.
    queued: bool,
    /// The port's address when its datagrams go out through the raw socket; `0.0.0.0` for a
    /// wildcard port, whose source address is the route's choice per destination
    /// ([`SourceCache`]).
    raw_src: Option<SocketAddrV4>,
}

/// How long a destination's source address is trusted before the route is asked again.
const SOURCE_TTL_NS: u64 = 30_000_000_000;
/// Destinations remembered per worker; beyond, the cache starts over (it never grows).
const SOURCES_MAX: usize = 16_384;

/// The source address the kernel would give a datagram from a wildcard-bound port to each
/// destination (the one an unconnected UDP socket gets): found by connecting a spare UDP socket
/// (a route lookup, no packet sent), kept for [`SOURCE_TTL_NS`] so route changes are followed.
/// The map is allocated once; a full map is cleared rather than grown.
struct SourceCache {
    probe: Option<StdUdpSocket>,
    map: std::collections::HashMap<std::net::Ipv4Addr, (std::net::Ipv4Addr, u64)>,
    probes: u64,
}

impl SourceCache {
    /// A cache for up to `capacity` destinations (0 for a backend without raw sending).
    fn new(capacity: usize) -> Self {
        SourceCache {
            probe: None,
            map: std::collections::HashMap::with_capacity(capacity),
            probes: 0,
        }
    }

    /// The source for `dst` at `now_ns`; `None` when the kernel has no route to it (the port's
    /// own socket then sends, and fails, as it would have).
    fn source(&mut self, dst: std::net::Ipv4Addr, now_ns: u64) -> Option<std::net::Ipv4Addr> {
        if let Some(&(src, at)) = self.map.get(&dst) {
            if now_ns.saturating_sub(at) < SOURCE_TTL_NS {
                return Some(src);
            }
        }
        if self.probe.is_none() {
            self.probe = StdUdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).ok();
        }
        let probe = self.probe.as_ref()?;
        self.probes += 1;
        // Any port does: connecting a UDP socket only looks the route up.
        probe.connect((dst, 9)).ok()?;
        let SocketAddr::V4(local) = probe.local_addr().ok()? else {
            return None;
        };
        let src = *local.ip();
        if src.is_unspecified() {
            return None;
        }
        if self.map.len() >= SOURCES_MAX && !self.map.contains_key(&dst) {
            self.map.clear();
        }
        self.map.insert(dst, (src, now_ns));
        Some(src)
    }
}

/// IPv4 header (no options) + UDP header, as the raw socket sends them.
pub const RAW_HEAD_LEN: usize = ipv4::MIN_HEADER_LEN + udp::HEADER_LEN;

/// One raw IPv4 socket that sends datagrams of every port of the worker.
struct RawSender {
    fd: OwnedFd,
    hdrs: MultiHeaders<SockaddrStorage>,
    /// Headers of the datagrams of the burst being sent.
    heads: Box<[[u8; RAW_HEAD_LEN]; BURST_SIZE_MAX]>,
    /// Type-of-service byte (DSCP << 2).
    tos: u8,
}

impl RawSender {
    /// Opens the raw socket; fails without `CAP_NET_RAW`.
    fn open(opts: &SocketOptions) -> Result<Self, IoError> {
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::Raw,
        )
        .map_err(|e| IoError::SockOpt {
            option: "socket(AF_INET, SOCK_RAW, IPPROTO_RAW)",
            addr: any,
            source: e.into(),
        })?;
        // One socket carries the whole worker's output: give it the room of many ports. Raising
        // it above `net.core.wmem_max` needs CAP_NET_ADMIN; without it the kernel's cap applies.
        let want = opts.sndbuf_bytes.saturating_mul(16);
        if setsockopt(&fd, sockopt::SndBufForce, &want).is_err() {
            setsockopt(&fd, sockopt::SndBuf, &want).map_err(|e| IoError::SockOpt {
                option: "SO_SNDBUF",
                addr: any,
                source: e.into(),
            })?;
        }
        Ok(RawSender {
            fd,
            hdrs: MultiHeaders::preallocate(BURST_SIZE_MAX, None),
            heads: Box::new([[0; RAW_HEAD_LEN]; BURST_SIZE_MAX]),
            tos: (opts.dscp & 0x3f) << 2,
        })
    }
}

/// Writes into `head` the IPv4 and UDP headers of a datagram carrying `payload` from `src` to
/// `dst`, with the UDP checksum. The IPv4 checksum, total length and identification are left
/// zero: the kernel fills them in for an `IPPROTO_RAW` socket. Returns false when the datagram
/// is too long for IPv4.
pub fn write_raw_head(
    head: &mut [u8; RAW_HEAD_LEN],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    tos: u8,
    payload: &[u8],
) -> bool {
    let Ok(udp_len) = u16::try_from(payload.len() + udp::HEADER_LEN) else {
        return false;
    };
    if usize::from(udp_len) + ipv4::MIN_HEADER_LEN > usize::from(u16::MAX) {
        return false;
    }
    let (s, d) = (*src.ip(), *dst.ip());
    let mut h = [0u8; RAW_HEAD_LEN];
    h[0] = 0x45;
    h[1] = tos;
    h[6] = 0x40; // Don't fragment, as the kernel's UDP path sets with path-MTU discovery.
    h[8] = ipv4::DEFAULT_TTL;
    h[9] = ipv4::PROTO_UDP;
    h[12..16].copy_from_slice(&s.octets());
    h[16..20].copy_from_slice(&d.octets());
    h[20..22].copy_from_slice(&src.port().to_be_bytes());
    h[22..24].copy_from_slice(&dst.port().to_be_bytes());
    h[24..26].copy_from_slice(&udp_len.to_be_bytes());
    let acc = checksum_add(udp::pseudo_v4(s, d, udp_len), &h[20..26]);
    let c = checksum_fold(checksum_add(acc, payload));
    // A computed zero is sent as all-ones (RFC 768): zero means "no checksum".
    let c = if c == 0 { 0xffff } else { c };
    h[26..28].copy_from_slice(&c.to_be_bytes());
    *head = h;
    true
}

/// The socket backend of one worker.
pub struct SocketIo {
    poll: Poll,
    events: Events,
    ports: Vec<Option<Port>>,
    free: Vec<u32>,
    open: usize,
    /// Ports with datagrams possibly still queued.
    ready: VecDeque<u32>,
    rx_hdrs: MultiHeaders<SockaddrStorage>,
    tx_hdrs: MultiHeaders<SockaddrStorage>,
    opts: SocketOptions,
    counters: IoCounters,
    waker: std::sync::Arc<mio::Waker>,
    raw: Option<RawSender>,
    /// Source addresses for wildcard ports' raw datagrams.
    sources: SourceCache,
    /// The worker's clock at the last housekeeping (coarse: for [`SourceCache`] ages).
    now_ns: u64,
}

/// The poll token of the command waker (no port handle reaches it).
const WAKE_TOKEN: Token = Token(usize::MAX);

impl SocketIo {
    /// Creates the poller and preallocates batch headers, and the raw sender as `opts.raw_tx`
    /// asks.
    ///
    /// # Errors
    /// The kernel refuses an epoll instance, or `raw_tx = on` and the raw socket cannot be
    /// opened (no `CAP_NET_RAW`).
    pub fn new(opts: SocketOptions) -> Result<Self, IoError> {
        let raw = match opts.raw_tx {
            RawTx::Off => None,
            RawTx::Auto => match RawSender::open(&opts) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::info!(
                        target: "voxedge::socket",
                        "raw IPv4 transmit unavailable ({e}): media leaves through each port's own socket; grant CAP_NET_RAW to send a burst per system call"
                    );
                    None
                }
            },
            RawTx::On => Some(RawSender::open(&opts).map_err(|e| {
                IoError::Backend(format!(
                    "dataplane.socket_raw_tx = \"on\": {e} (needs CAP_NET_RAW; set it to \"auto\" or \"off\" to send through each port's socket)"
                ))
            })?),
        };
        let raw_cache = if raw.is_some() { SOURCES_MAX } else { 0 };
        let poll = Poll::new().map_err(IoError::Poller)?;
        let waker = std::sync::Arc::new(
            mio::Waker::new(poll.registry(), WAKE_TOKEN).map_err(IoError::Poller)?,
        );
        Ok(SocketIo {
            waker,
            poll,
            events: Events::with_capacity(1024),
            ports: Vec::new(),
            free: Vec::new(),
            open: 0,
            ready: VecDeque::new(),
            rx_hdrs: MultiHeaders::preallocate(BURST_SIZE_MAX, None),
            tx_hdrs: MultiHeaders::preallocate(BURST_SIZE_MAX, None),
            opts,
            counters: IoCounters::default(),
            raw,
            sources: SourceCache::new(raw_cache),
            now_ns: 0,
        })
    }

    fn configure(&self, sock: &StdUdpSocket, addr: SocketAddr) -> Result<(), IoError> {
        let err = |option: &'static str| {
            move |e: nix::errno::Errno| IoError::SockOpt {
                option,
                addr,
                source: e.into(),
            }
        };
        sock.set_nonblocking(true).map_err(|e| IoError::SockOpt {
            option: "O_NONBLOCK",
            addr,
            source: e,
        })?;
        setsockopt(sock, sockopt::RcvBuf, &self.opts.rcvbuf_bytes).map_err(err("SO_RCVBUF"))?;
        setsockopt(sock, sockopt::SndBuf, &self.opts.sndbuf_bytes).map_err(err("SO_SNDBUF"))?;
        let tos = i32::from(self.opts.dscp) << 2;
        if addr.is_ipv4() {
            setsockopt(sock, sockopt::IpTos, &tos).map_err(err("IP_TOS"))?;
        } else {
            setsockopt(sock, sockopt::Ipv6TClass, &tos).map_err(err("IPV6_TCLASS"))?;
        }
        Ok(())
    }

    /// Reads from one ready port into `batch` starting at `at`; returns (count, maybe_more).
    fn read_port(
        &mut self,
        h: u32,
        batch: &mut PacketBatch,
        at: usize,
        max: usize,
    ) -> (usize, bool) {
        let Some(Some(port)) = self.ports.get(h as usize) else {
            return (0, false);
        };
        let fd = port.sock.as_raw_fd();
        let want = max - at;
        let PacketBatch { bufs, meta } = batch;
        let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
        self.counters.rx_calls += 1;
        let res = recvmmsg(
            fd,
            &mut self.rx_hdrs,
            iovs[at..max].iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        );
        match res {
            Ok(msgs) => {
                let mut n = 0;
                for m in msgs {
                    let src = m
                        .address
                        .as_ref()
                        .and_then(to_std)
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                    meta[at + n] = RxMeta {
                        port: PortHandle(h),
                        src,
                        len: m.bytes.min(PACKET_BUF_SIZE) as u16,
                        truncated: m.flags.contains(MsgFlags::MSG_TRUNC),
                    };
                    n += 1;
                }
                (n, n == want)
            }
            Err(nix::errno::Errno::EAGAIN) => (0, false),
            Err(nix::errno::Errno::EINTR) => (0, true),
            Err(_) => {
                self.counters.rx_errors += 1;
                (0, false)
            }
        }
    }

    /// Sends `tx[..]`, all out of the same port, in `sendmmsg` calls.
    fn send_run(&mut self, batch: &PacketBatch, tx: &mut [TxDesc]) -> usize {
        let Some(Some(port)) = self.ports.get(tx[0].port.0 as usize) else {
            for d in tx.iter_mut() {
                d.sent = false;
            }
            return 0;
        };
        let fd = port.sock.as_raw_fd();
        let mut slices: [[IoSlice<'_>; 1]; BURST_SIZE_MAX] = [[IoSlice::new(&[])]; BURST_SIZE_MAX];
        let mut addrs: [Option<SockaddrStorage>; BURST_SIZE_MAX] = [None; BURST_SIZE_MAX];
        for (k, d) in tx.iter().enumerate() {
            slices[k] = [IoSlice::new(
                &batch.bufs[usize::from(d.buf)][..usize::from(d.len)],
            )];
            addrs[k] = Some(SockaddrStorage::from(d.dst));
        }
        let n = tx.len();
        let mut start = 0;
        let mut sent = 0;
        // Each round either sends something or fails one datagram: at most n rounds.
        while start < n {
            self.counters.tx_calls += 1;
            let no_cmsg: [ControlMessage<'_>; 0] = [];
            match sendmmsg(
                fd,
                &mut self.tx_hdrs,
                slices[start..n].iter(),
                &addrs[start..n],
                no_cmsg,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(res) => {
                    let k = res.count();
                    for d in &mut tx[start..start + k] {
                        d.sent = true;
                    }
                    sent += k;
                    start += k;
                    if start < n {
                        // The next datagram failed (e.g. buffer full): the worker counts it.
                        tx[start].sent = false;
                        start += 1;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    tx[start].sent = false;
                    start += 1;
                }
            }
        }
        sent
    }

    /// Sends the IPv4 datagrams of raw-capable ports through the raw socket in `sendmmsg` calls.
    /// Returns (sent, bit mask of the descriptors it took). A datagram the kernel refuses as
    /// too large for the route (`EMSGSIZE`: the raw path does not fragment) is left to the
    /// port's own socket, which fragments as UDP does.
    fn send_raw(&mut self, batch: &PacketBatch, tx: &mut [TxDesc]) -> (usize, u64) {
        let Some(raw) = self.raw.as_mut() else {
            return (0, 0);
        };
        let n = tx.len().min(BURST_SIZE_MAX);
        // Positions in `tx` of the datagrams taken, in order.
        let mut which = [0u8; BURST_SIZE_MAX];
        let mut dsts: [Option<SockaddrStorage>; BURST_SIZE_MAX] = [None; BURST_SIZE_MAX];
        let mut k = 0;
        for (i, d) in tx[..n].iter().enumerate() {
            let SocketAddr::V4(dst) = d.dst else {
                continue;
            };
            let Some(Some(Port {
                raw_src: Some(src), ..
            })) = self.ports.get(d.port.0 as usize)
            else {
                continue;
            };
            let src = if src.ip().is_unspecified() {
                match self.sources.source(*dst.ip(), self.now_ns) {
                    Some(ip) => SocketAddrV4::new(ip, src.port()),
                    None => continue,
                }
            } else {
                *src
            };
            let payload = &batch.bufs[usize::from(d.buf)][..usize::from(d.len)];
            if !write_raw_head(&mut raw.heads[k], src, dst, raw.tos, payload) {
                continue;
            }
            // The kernel routes by this address; the port in it is ignored.
            dsts[k] = Some(SockaddrStorage::from(SocketAddrV4::new(*dst.ip(), 0)));
            which[k] = i as u8;
            k += 1;
        }
        if k == 0 {
            return (0, 0);
        }
        let mut slices: [[IoSlice<'_>; 2]; BURST_SIZE_MAX] =
            [[IoSlice::new(&[]), IoSlice::new(&[])]; BURST_SIZE_MAX];
        for (m, &i) in which[..k].iter().enumerate() {
            let d = &tx[usize::from(i)];
            slices[m] = [
                IoSlice::new(&raw.heads[m]),
                IoSlice::new(&batch.bufs[usize::from(d.buf)][..usize::from(d.len)]),
            ];
        }
        let fd = raw.fd.as_raw_fd();
        let mut taken = 0u64;
        let mut sent = 0;
        let mut start = 0;
        // A round sends something or settles the first datagram, which failed alone (sendmmsg
        // reports a failure only when it is the first datagram of the call): at most 2k rounds.
        while start < k {
            self.counters.tx_calls += 1;
            let no_cmsg: [ControlMessage<'_>; 0] = [];
            let res = sendmmsg(
                fd,
                &mut raw.hdrs,
                slices[start..k].iter(),
                &dsts[start..k],
                no_cmsg,
                MsgFlags::MSG_DONTWAIT,
            )
            .map(|r| r.count());
            let failed = match res {
                Ok(c) if c > 0 => {
                    let c = c.min(k - start);
                    for &i in &which[start..start + c] {
                        tx[usize::from(i)].sent = true;
                        taken |= 1 << i;
                    }
                    sent += c;
                    self.counters.tx_raw += c as u64;
                    start += c;
                    continue;
                }
                Ok(_) => nix::errno::Errno::EAGAIN,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => e,
            };
            let i = which[start];
            if failed != nix::errno::Errno::EMSGSIZE {
                // Counted by the worker as a send failure of the egress stream.
                tx[usize::from(i)].sent = false;
                taken |= 1 << i;
            }
            start += 1;
        }
        (sent, taken)
    }
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

impl PacketIo for SocketIo {
    type Batch = PacketBatch;

    fn new_batch(&self) -> PacketBatch {
        PacketBatch::default()
    }

    fn kind(&self) -> &'static str {
        "socket"
    }

    fn can_generate(&self) -> bool {
        true
    }

    fn load(&mut self, batch: &mut PacketBatch, i: usize, payload: &[u8]) -> bool {
        batch.load(i, payload)
    }

    fn open_port(&mut self, local: SocketAddr) -> Result<PortHandle, IoError> {
        if self.open >= self.opts.ports_max {
            return Err(IoError::TooManyPorts(self.opts.ports_max));
        }
        let std_sock = StdUdpSocket::bind(local).map_err(|source| IoError::Bind {
            addr: local,
            source,
        })?;
        self.configure(&std_sock, local)?;
        let mut sock = UdpSocket::from_std(std_sock);
        let h = match self.free.pop() {
            Some(h) => h,
            None => {
                self.ports.push(None);
                (self.ports.len() - 1) as u32
            }
        };
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, Token(h as usize), Interest::READABLE)
        {
            self.free.push(h);
            return Err(IoError::Poller(e));
        }
        self.open += 1;
        // Reserve so that queueing readiness never allocates on the packet path.
        if self.ready.capacity() < self.ports.len() {
            self.ready.reserve(self.ports.len() - self.ready.len());
        }
        let raw_src = match (&self.raw, local) {
            (Some(_), SocketAddr::V4(a)) => {
                let port = if a.port() == 0 {
                    sock.local_addr().map_or(0, |l| l.port())
                } else {
                    a.port()
                };
                (port != 0).then(|| SocketAddrV4::new(*a.ip(), port))
            }
            _ => None,
        };
        // A datagram may have arrived between bind and register: look once.
        self.ports[h as usize] = Some(Port {
            sock,
            queued: true,
            raw_src,
        });
        self.ready.push_back(h);
        Ok(PortHandle(h))
    }

    fn close_port(&mut self, port: PortHandle) {
        if let Some(slot) = self.ports.get_mut(port.0 as usize) {
            if let Some(mut p) = slot.take() {
                // Deregistering a socket we are about to close cannot meaningfully fail.
                let _ = self.poll.registry().deregister(&mut p.sock);
                self.free.push(port.0);
                self.open -= 1;
            }
        }
    }

    fn waker(&self) -> Option<super::Waker> {
        let w = self.waker.clone();
        Some(std::sync::Arc::new(move || {
            let _ = w.wake();
        }))
    }

    fn rx_burst(&mut self, batch: &mut PacketBatch, max: usize, wait: Duration) -> usize {
        let max = max.min(BURST_SIZE_MAX);
        if self.ready.is_empty() {
            match self.poll.poll(&mut self.events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return 0,
                Err(_) => {
                    self.counters.rx_errors += 1;
                    return 0;
                }
            }
            for ev in self.events.iter() {
                let h = ev.token().0 as u32;
                if let Some(Some(p)) = self.ports.get_mut(h as usize) {
                    if !p.queued {
                        p.queued = true;
                        self.ready.push_back(h);
                    }
                }
            }
        }
        let mut n = 0;
        let mut rounds = self.ready.len();
        while n < max && rounds > 0 {
            rounds -= 1;
            let Some(h) = self.ready.pop_front() else {
                break;
            };
            let (got, more) = self.read_port(h, batch, n, max);
            n += got;
            if let Some(Some(p)) = self.ports.get_mut(h as usize) {
                p.queued = more;
                if more {
                    self.ready.push_back(h);
                }
            }
        }
        n
    }

    fn tx_burst(&mut self, batch: &mut PacketBatch, _n: usize, tx: &mut [TxDesc]) -> usize {
        // Bit i: descriptor i was handed to the raw socket (tx.len() <= BURST_SIZE_MAX <= 64).
        let (mut sent, on_raw) = self.send_raw(batch, tx);
        let mut i = 0;
        while i < tx.len() {
            if on_raw & (1 << i) != 0 {
                i += 1;
                continue;
            }
            let port = tx[i].port;
            let mut j = i + 1;
            while j < tx.len() && tx[j].port == port && on_raw & (1 << j) == 0 {
                j += 1;
            }
            sent += self.send_run(batch, &mut tx[i..j]);
            i = j;
        }
        sent
    }

    fn housekeeping(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    fn counters(&self) -> IoCounters {
        self.counters
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::internet_checksum;
    use std::net::Ipv4Addr;

    fn opts(raw_tx: RawTx) -> SocketOptions {
        SocketOptions {
            dscp: 46,
            rcvbuf_bytes: 1 << 20,
            sndbuf_bytes: 1 << 20,
            ports_max: 16,
            raw_tx,
        }
    }

    /// The UDP checksum as a receiver checks it: pseudo-header, UDP header and payload fold to 0.
    fn udp_checksum_ok(head: &[u8; RAW_HEAD_LEN], payload: &[u8]) -> bool {
        let mut v = Vec::new();
        v.extend_from_slice(&head[12..20]); // source, destination
        v.extend_from_slice(&[0, 17]);
        v.extend_from_slice(&head[24..26]); // UDP length
        v.extend_from_slice(&head[20..28]);
        v.extend_from_slice(payload);
        internet_checksum(&v) == 0
    }

    #[test]
    fn raw_headers_carry_addresses_dscp_and_a_valid_udp_checksum() {
        let src = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 30000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40002);
        // Even and odd lengths, and the empty datagram.
        for len in [0usize, 1, 172, 173, 1400] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut head = [0u8; RAW_HEAD_LEN];
            assert!(write_raw_head(&mut head, src, dst, 46 << 2, &payload));
            assert_eq!(head[0], 0x45);
            assert_eq!(head[1], 0xb8, "DSCP EF");
            assert_eq!(head[6], 0x40, "don't fragment");
            assert_eq!(head[9], 17);
            assert_eq!(&head[12..16], &[192, 0, 2, 1]);
            assert_eq!(&head[16..20], &[198, 51, 100, 7]);
            assert_eq!(u16::from_be_bytes([head[20], head[21]]), 30000);
            assert_eq!(u16::from_be_bytes([head[22], head[23]]), 40002);
            assert_eq!(
                usize::from(u16::from_be_bytes([head[24], head[25]])),
                len + 8
            );
            assert!(udp_checksum_ok(&head, &payload), "length {len}");
            // A changed byte breaks it (the check above can fail).
            if len > 0 {
                let mut bad = payload.clone();
                bad[0] ^= 0x01;
                assert!(!udp_checksum_ok(&head, &bad));
            }
        }
        let too_long = vec![0u8; 65_536 - 28];
        let mut head = [0u8; RAW_HEAD_LEN];
        assert!(!write_raw_head(&mut head, src, dst, 0, &too_long));
    }

    /// Sends `payloads` out of one port of a fresh backend to a receiver; returns what arrived
    /// (payload, source) and the backend's raw count.
    fn send_through(raw_tx: RawTx, payloads: &[Vec<u8>]) -> (Vec<(Vec<u8>, SocketAddr)>, u64) {
        send_from("127.0.0.1:0", raw_tx, payloads)
    }

    /// [`send_through`] out of a port bound to `bind`; datagrams must arrive from the port
    /// number on 127.0.0.1 (the loopback route's source, also for a wildcard port).
    fn send_from(
        bind: &str,
        raw_tx: RawTx,
        payloads: &[Vec<u8>],
    ) -> (Vec<(Vec<u8>, SocketAddr)>, u64) {
        let mut io = SocketIo::new(opts(raw_tx)).unwrap();
        let port = io.open_port(bind.parse().unwrap()).unwrap();
        let bound = io.ports[port.0 as usize]
            .as_ref()
            .unwrap()
            .sock
            .local_addr()
            .unwrap();
        let local = SocketAddr::from(([127, 0, 0, 1], bound.port()));
        let rx = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut batch = PacketBatch::default();
        let mut tx = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            assert!(batch.load(i, p));
            tx.push(TxDesc {
                buf: i as u8,
                len: p.len() as u16,
                port,
                dst: rx.local_addr().unwrap(),
                stream: crate::ids::StreamIdx(0),
                sent: false,
            });
        }
        let sent = io.tx_burst(&mut batch, payloads.len(), &mut tx);
        assert_eq!(sent, payloads.len());
        assert!(tx.iter().all(|d| d.sent));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in payloads {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            got.push((buf[..n].to_vec(), from));
        }
        for (_, from) in &got {
            assert_eq!(*from, local, "datagrams leave from the port's address");
        }
        (got, io.counters().tx_raw)
    }

    #[test]
    fn raw_transmit_delivers_from_the_port_address_with_checksums_the_kernel_accepts() {
        // CI runs as root: the raw socket must open here (`on` refuses to start otherwise).
        let payloads: Vec<Vec<u8>> = [172usize, 33, 1200]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 13) as u8).collect())
            .collect();
        let (got, raw) = send_through(RawTx::On, &payloads);
        assert_eq!(raw, 3, "all three left through the raw socket");
        // The receiving kernel verifies the UDP checksum of a raw-built datagram and drops a
        // wrong one, so arriving intact proves it right.
        let got: Vec<Vec<u8>> = got.into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, payloads);
    }

    #[test]
    fn without_raw_transmit_each_port_sends_through_its_own_socket() {
        let payloads = vec![vec![1u8; 172], vec![2u8; 20]];
        let (got, raw) = send_through(RawTx::Off, &payloads);
        assert_eq!(raw, 0);
        assert_eq!(got.len(), 2);
    }

    /// A port bound to 0.0.0.0 sends raw from the source the route gives the destination
    /// (what its own socket would have used), looked up once per destination.
    #[test]
    fn wildcard_ports_send_raw_from_the_routes_source_address() {
        let payloads = vec![vec![5u8; 172], vec![6u8; 40]];
        let (got, raw) = send_from("0.0.0.0:0", RawTx::On, &payloads);
        assert_eq!(raw, 2);
        assert_eq!(
            got.into_iter().map(|(p, _)| p).collect::<Vec<_>>(),
            payloads
        );
        let mut cache = SourceCache::new(SOURCES_MAX);
        let lo = std::net::Ipv4Addr::LOCALHOST;
        assert_eq!(cache.source(lo, 0), Some(lo));
        assert_eq!(cache.source(lo, SOURCE_TTL_NS - 1), Some(lo));
        assert_eq!(cache.probes, 1, "cached");
        assert_eq!(cache.source(lo, SOURCE_TTL_NS), Some(lo));
        assert_eq!(cache.probes, 2, "asked again once stale");
    }

    /// A datagram too large for the route's MTU is refused by the raw socket (it does not
    /// fragment) and leaves through the port's own socket, fragmented as UDP does; the small one
    /// still goes raw. Runs in a network namespace of its own whose loopback has a 1,280-byte
    /// MTU (needs root, as CI has).
    #[test]
    fn a_datagram_above_the_mtu_falls_back_to_the_port_socket() {
        let h = std::thread::spawn(|| {
            // Only this thread moves to the new namespace.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (root)");
            let out = std::process::Command::new("ip")
                .args(["link", "set", "lo", "mtu", "1280", "up"])
                .output()
                .expect("run ip");
            assert!(out.status.success(), "ip link: {out:?}");
            let payloads = vec![vec![7u8; 172], vec![9u8; 2000]];
            send_through(RawTx::On, &payloads)
        });
        let (got, raw) = h.join().unwrap();
        assert_eq!(raw, 1, "only the small datagram went raw");
        assert_eq!(got[0].0, vec![7u8; 172]);
        assert_eq!(got[1].0, vec![9u8; 2000]);
    }
}
