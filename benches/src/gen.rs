//! Paced RTP load generator and receiver for relay benches.
//!
//! A few UDP sockets on loopback stand for all call endpoints: each stream sends from one of
//! them to a relay port and its relayed packets come back to another. One thread, pinned to a
//! core the relay does not use, sends with `sendmmsg` (many destinations per call) and
//! busy-polls its sockets with `recvmmsg`. It never sleeps in the kernel, so the relay's sends
//! never pay for waking a sleeping receiver (a cost that exists only on loopback; a remote peer
//! is woken by its own CPU). Each packet carries its phase, stream id and send time, so
//! delivery and latency are attributed to the phase in which the packet was sent.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use nix::sys::socket::{
    recvmmsg, sendmmsg, setsockopt, sockopt, ControlMessage, MsgFlags, MultiHeaders,
    SockaddrStorage,
};
use voxedge_dataplane::wire::rtp::emit_header;

const BATCH: usize = 32;
const MAGIC: [u8; 4] = *b"VXB1";
/// RTP header + 160 bytes of G.711 (20 ms at 8 kHz).
pub const PACKET_LEN: usize = 12 + 160;
const TICK: Duration = Duration::from_millis(1);

/// One direction of media: sent from generator socket `sock` to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct StreamDef {
    pub sock: usize,
    pub dst: SocketAddr,
}

/// A stretch of time at one rate.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub duration: Duration,
    pub pps_per_stream: f64,
    /// Excluded from reports (warm-up).
    pub measured: bool,
}

/// What happened to packets sent during one phase.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    pub name: &'static str,
    pub measured: bool,
    pub duration: Duration,
    pub sent: Vec<u32>,
    pub delivered: Vec<u32>,
    pub send_errors: u64,
    /// Send → receive time, nanoseconds.
    pub latency_ns: Histogram<u64>,
}

impl PhaseResult {
    pub fn sent_total(&self) -> u64 {
        self.sent.iter().map(|v| u64::from(*v)).sum()
    }
    pub fn delivered_total(&self) -> u64 {
        self.delivered.iter().map(|v| u64::from(*v)).sum()
    }
}

/// The generator's sockets.
pub struct Generator {
    socks: Vec<UdpSocket>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant bounds are valid")
}

impl Generator {
    /// Binds `n` sockets on `ip` with large buffers.
    ///
    /// # Errors
    /// A socket cannot be bound.
    pub fn bind(n: usize, ip: std::net::IpAddr) -> anyhow::Result<Self> {
        let mut socks = Vec::with_capacity(n);
        for _ in 0..n {
            let s = UdpSocket::bind(SocketAddr::new(ip, 0)).context("bind generator socket")?;
            s.set_nonblocking(true)?;
            let size: usize = 16 << 20;
            if setsockopt(&s, sockopt::RcvBufForce, &size).is_err() {
                let _ = setsockopt(&s, sockopt::RcvBuf, &size);
            }
            if setsockopt(&s, sockopt::SndBufForce, &size).is_err() {
                let _ = setsockopt(&s, sockopt::SndBuf, &size);
            }
            socks.push(s);
        }
        Ok(Generator { socks })
    }

    pub fn addr(&self, i: usize) -> anyhow::Result<SocketAddr> {
        Ok(self.socks[i % self.socks.len()].local_addr()?)
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// Runs the phases back to back on the calling thread (pinned to `core` when given), then
    /// keeps receiving for `drain`. `at_boundary(i)` is called as phase `i` starts, and with
    /// `phases.len()` at the end.
    ///
    /// # Errors
    /// None today; kept fallible for set-up steps.
    pub fn run(
        &self,
        streams: &[StreamDef],
        phases: &[Phase],
        drain: Duration,
        core: Option<usize>,
        mut at_boundary: impl FnMut(usize),
    ) -> anyhow::Result<Vec<PhaseResult>> {
        if let Some(c) = core {
            core_affinity::set_for_current(core_affinity::CoreId { id: c });
        }
        let epoch = Instant::now();
        let mut rx = Receiver::new(&self.socks, streams.len(), phases.len(), epoch);
        let mut results = Vec::with_capacity(phases.len());
        let mut sender = Sender::new(&self.socks, epoch);
        for (pi, phase) in phases.iter().enumerate() {
            at_boundary(pi);
            let (sent, send_errors) = sender.phase(streams, pi as u8, phase, &mut rx);
            results.push(PhaseResult {
                name: phase.name,
                measured: phase.measured,
                duration: phase.duration,
                sent,
                delivered: Vec::new(),
                send_errors,
                latency_ns: new_hist(),
            });
        }
        at_boundary(phases.len());
        let end = Instant::now() + drain;
        while Instant::now() < end {
            rx.poll_all();
        }
        for (r, (delivered, hist)) in results.iter_mut().zip(rx.out) {
            r.delivered = delivered;
            r.latency_ns = hist;
        }
        Ok(results)
    }
}

struct Sender<'a> {
    socks: &'a [UdpSocket],
    epoch: Instant,
    bufs: Vec<[[u8; PACKET_LEN]; BATCH]>,
    dsts: Vec<[Option<SockaddrStorage>; BATCH]>,
    fill: Vec<usize>,
    hdrs: MultiHeaders<SockaddrStorage>,
}

impl<'a> Sender<'a> {
    fn new(socks: &'a [UdpSocket], epoch: Instant) -> Self {
        let n = socks.len();
        Sender {
            socks,
            epoch,
            bufs: vec![[[0u8; PACKET_LEN]; BATCH]; n],
            dsts: vec![[None; BATCH]; n],
            fill: vec![0; n],
            hdrs: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Sends one phase; returns per-stream sent counts and send errors.
    fn phase(
        &mut self,
        streams: &[StreamDef],
        phase_id: u8,
        phase: &Phase,
        rx: &mut Receiver<'_>,
    ) -> (Vec<u32>, u64) {
        let n = streams.len();
        let mut sent = vec![0u32; n];
        let mut errors = 0u64;
        if n == 0 || phase.pps_per_stream <= 0.0 {
            let end = Instant::now() + phase.duration;
            while Instant::now() < end {
                rx.poll_all();
            }
            return (sent, errors);
        }
        let period_ns = 1e9 / phase.pps_per_stream;
        let start = Instant::now();
        let end = start + phase.duration;
        let (mut round, mut next) = (0u64, 0usize);
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let elapsed = (now - start).as_nanos() as f64;
            // Everything due by now, at most 4 periods behind (beyond that, skip: the
            // generator itself is saturated and those packets were never offered).
            let mut budget = 4 * n;
            loop {
                let due = (round as f64 + next as f64 / n as f64) * period_ns;
                if due > elapsed || budget == 0 {
                    break;
                }
                budget -= 1;
                let s = streams[next];
                let ok = self.queue(s, phase_id, next as u32, round as u32, &mut errors);
                if ok {
                    sent[next] += 1;
                }
                next += 1;
                if next == n {
                    next = 0;
                    round += 1;
                }
            }
            if budget == 0 {
                // Fell behind: resynchronise to now.
                let behind = (elapsed / period_ns) as u64;
                if behind > round {
                    round = behind;
                    next = 0;
                }
            }
            errors += self.flush_all();
            // Receive until the next tick; packets due in between wait for it (their send
            // time is stamped when they leave, so latency stays exact).
            let tick_end = (now + TICK).min(end);
            while Instant::now() < tick_end {
                rx.poll_all();
            }
        }
        errors += self.flush_all();
        (sent, errors)
    }

    fn queue(
        &mut self,
        s: StreamDef,
        phase: u8,
        stream: u32,
        round: u32,
        errors: &mut u64,
    ) -> bool {
        let k = s.sock;
        if self.fill[k] == BATCH {
            *errors += self.flush(k);
        }
        let i = self.fill[k];
        let b = &mut self.bufs[k][i];
        if emit_header(
            &mut b[..],
            0,
            false,
            round as u16,
            round.wrapping_mul(160),
            stream,
        )
        .is_err()
        {
            return false;
        }
        b[12..16].copy_from_slice(&MAGIC);
        b[16] = phase;
        b[20..24].copy_from_slice(&stream.to_be_bytes());
        self.dsts[k][i] = Some(SockaddrStorage::from(s.dst));
        self.fill[k] += 1;
        true
    }

    fn flush_all(&mut self) -> u64 {
        (0..self.socks.len()).map(|k| self.flush(k)).sum()
    }

    /// Sends the queue of socket `k`; returns datagrams that failed.
    fn flush(&mut self, k: usize) -> u64 {
        let n = self.fill[k];
        if n == 0 {
            return 0;
        }
        self.fill[k] = 0;
        let ts = (Instant::now() - self.epoch).as_nanos() as u64;
        for b in &mut self.bufs[k][..n] {
            b[24..32].copy_from_slice(&ts.to_be_bytes());
        }
        let fd = self.socks[k].as_raw_fd();
        let slices = self.bufs[k].each_ref().map(|b| [IoSlice::new(&b[..])]);
        let mut start = 0;
        let mut failed = 0;
        while start < n {
            let no_cmsg: [ControlMessage<'_>; 0] = [];
            match sendmmsg(
                fd,
                &mut self.hdrs,
                slices[start..n].iter(),
                &self.dsts[k][start..n],
                no_cmsg,
                MsgFlags::empty(),
            ) {
                Ok(r) => {
                    let c = r.count();
                    start += c;
                    if c == 0 {
                        failed += (n - start) as u64;
                        break;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(Duration::from_micros(50)),
                Err(_) => {
                    failed += 1;
                    start += 1;
                }
            }
        }
        failed
    }
}

type Received = Vec<(Vec<u32>, Histogram<u64>)>;

/// Busy-polling receive side: per phase, per-stream delivered counts and latency.
struct Receiver<'a> {
    fds: Vec<i32>,
    epoch: Instant,
    bufs: Box<[[u8; 256]; BATCH]>,
    hdrs: MultiHeaders<SockaddrStorage>,
    out: Received,
    _socks: std::marker::PhantomData<&'a UdpSocket>,
}

impl<'a> Receiver<'a> {
    fn new(socks: &'a [UdpSocket], n_streams: usize, n_phases: usize, epoch: Instant) -> Self {
        Receiver {
            fds: socks.iter().map(AsRawFd::as_raw_fd).collect(),
            epoch,
            bufs: Box::new([[0u8; 256]; BATCH]),
            hdrs: MultiHeaders::preallocate(BATCH, None),
            out: (0..n_phases)
                .map(|_| (vec![0u32; n_streams], new_hist()))
                .collect(),
            _socks: std::marker::PhantomData,
        }
    }

    /// Reads every socket until it has nothing queued.
    fn poll_all(&mut self) {
        for k in 0..self.fds.len() {
            // Bounded: a socket refilled faster than we read is left for the next round.
            for _ in 0..16 {
                if self.read(k) < BATCH {
                    break;
                }
            }
        }
    }

    fn read(&mut self, k: usize) -> usize {
        let mut lens = [0usize; BATCH];
        let mut n = 0;
        {
            let mut iovs = self.bufs.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
            if let Ok(msgs) = recvmmsg(
                self.fds[k],
                &mut self.hdrs,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                for m in msgs {
                    lens[n] = m.bytes;
                    n += 1;
                }
            }
        }
        let now = (Instant::now() - self.epoch).as_nanos() as u64;
        for (b, &len) in self.bufs.iter().zip(&lens[..n]) {
            if len < 32 || b[12..16] != MAGIC {
                continue;
            }
            let phase = usize::from(b[16]);
            let stream = u32::from_be_bytes([b[20], b[21], b[22], b[23]]) as usize;
            let ts = u64::from_be_bytes([b[24], b[25], b[26], b[27], b[28], b[29], b[30], b[31]]);
            if let Some((delivered, hist)) = self.out.get_mut(phase) {
                if let Some(d) = delivered.get_mut(stream) {
                    *d += 1;
                    hist.saturating_record(now.saturating_sub(ts).max(1));
                }
            }
        }
        n
    }
}
