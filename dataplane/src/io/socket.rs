//! Kernel UDP socket backend: one non-blocking socket per open port, readiness from mio
//! (epoll), receive with `recvmmsg` and send with `sendmmsg` in batches.
//!
//! Edge-triggered readiness normally requires reading until `EWOULDBLOCK`. A `recvmmsg` with
//! `MSG_DONTWAIT` that returns fewer datagrams than asked proves the queue was empty at that
//! moment, so any later datagram raises a new edge; only sockets whose read filled the request
//! are kept in a ready list and read again. This saves one failing syscall per wake-up.
//!
//! `SocketIo` holds preallocated `mmsghdr` arrays (which contain raw pointers) and is therefore
//! built on its worker thread.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{
    recvmmsg, sendmmsg, setsockopt, sockopt, ControlMessage, MsgFlags, MultiHeaders,
    SockaddrStorage,
};

use super::{IoCounters, IoError, PacketBatch, PacketIo, RxMeta, TxDesc, PACKET_BUF_SIZE};
use crate::config::BURST_SIZE_MAX;
use crate::ids::PortHandle;

/// Options applied to every media socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    pub dscp: u8,
    pub rcvbuf_bytes: usize,
    pub sndbuf_bytes: usize,
    /// Most ports this backend will hold.
    pub ports_max: usize,
}

struct Port {
    sock: UdpSocket,
    /// Queued in `ready` already.
    queued: bool,
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
}

/// The poll token of the command waker (no port handle reaches it).
const WAKE_TOKEN: Token = Token(usize::MAX);

impl SocketIo {
    /// Creates the poller and preallocates batch headers.
    ///
    /// # Errors
    /// The kernel refuses an epoll instance.
    pub fn new(opts: SocketOptions) -> Result<Self, IoError> {
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
        // A datagram may have arrived between bind and register: look once.
        self.ports[h as usize] = Some(Port { sock, queued: true });
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
        let mut sent = 0;
        let mut i = 0;
        while i < tx.len() {
            let port = tx[i].port;
            let mut j = i + 1;
            while j < tx.len() && tx[j].port == port {
                j += 1;
            }
            sent += self.send_run(batch, &mut tx[i..j]);
            i = j;
        }
        sent
    }

    fn counters(&self) -> IoCounters {
        self.counters
    }
}
