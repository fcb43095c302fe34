//! Packet I/O backends behind one trait: bursts of datagrams in, bursts out.
//!
//! `memory` (always built) drives tests and micro-benches; `socket` is the default (UDP
//! sockets, mio, recvmmsg/sendmmsg). A backend is constructed on its worker thread and
//! owned by it; nothing here is shared between workers.

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod memory;
pub mod netstack;
pub mod portset;
pub mod socket;

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::BURST_SIZE_MAX;
use crate::ids::{PortHandle, StreamIdx};

/// Largest datagram a worker accepts; larger ones are counted as oversize drops.
pub const PACKET_BUF_SIZE: usize = 2048;

/// Port handle a backend reports for a datagram addressed to no port it could open. (A
/// backend may also report the handle of a port that is not open: it names no stream, and the
/// worker drops the datagram just the same.)
pub const NO_PORT: PortHandle = PortHandle(u32::MAX);

/// Metadata of one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxMeta {
    pub port: PortHandle,
    pub src: SocketAddr,
    pub len: u16,
    /// The datagram was larger than [`PACKET_BUF_SIZE`] and was cut.
    pub truncated: bool,
}

impl Default for RxMeta {
    fn default() -> Self {
        RxMeta {
            port: NO_PORT,
            src: SocketAddr::from(([0, 0, 0, 0], 0)),
            len: 0,
            truncated: false,
        }
    }
}

/// A burst of received datagrams as the worker sees it: metadata and a mutable payload per
/// datagram. Backends that copy (memory, socket) use [`PacketBatch`]; zero-copy backends (DPDK)
/// hand out views into their own packet buffers.
pub trait RxBatch {
    /// Metadata of datagram `i` of the last burst.
    fn meta(&self, i: usize) -> RxMeta;
    /// Payload of datagram `i` (`meta(i).len` bytes), which the pipeline may rewrite in place.
    fn payload_mut(&mut self, i: usize) -> &mut [u8];
}

/// Buffers for one burst, allocated once per worker and reused for every burst.
pub struct PacketBatch {
    pub bufs: Box<[[u8; PACKET_BUF_SIZE]; BURST_SIZE_MAX]>,
    pub meta: [RxMeta; BURST_SIZE_MAX],
}

impl Default for PacketBatch {
    fn default() -> Self {
        PacketBatch {
            bufs: Box::new([[0u8; PACKET_BUF_SIZE]; BURST_SIZE_MAX]),
            meta: [RxMeta::default(); BURST_SIZE_MAX],
        }
    }
}

impl PacketBatch {
    /// Copies a generated datagram into slot `i` (see [`PacketIo::load`]).
    pub fn load(&mut self, i: usize, payload: &[u8]) -> bool {
        let (Some(buf), Some(meta)) = (self.bufs.get_mut(i), self.meta.get_mut(i)) else {
            return false;
        };
        let Some(dst) = buf.get_mut(..payload.len()) else {
            return false;
        };
        dst.copy_from_slice(payload);
        meta.len = payload.len() as u16;
        meta.truncated = false;
        meta.port = NO_PORT;
        true
    }
}

impl RxBatch for PacketBatch {
    #[inline]
    fn meta(&self, i: usize) -> RxMeta {
        self.meta[i]
    }
    #[inline]
    fn payload_mut(&mut self, i: usize) -> &mut [u8] {
        let len = usize::from(self.meta[i].len).min(PACKET_BUF_SIZE);
        &mut self.bufs[i][..len]
    }
}

/// A datagram to send: buffer `buf` of the batch, first `len` bytes, out of `port` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxDesc {
    pub buf: u8,
    pub len: u16,
    pub port: PortHandle,
    pub dst: SocketAddr,
    /// Egress stream, for counting failures on it.
    pub stream: StreamIdx,
    /// Set by the backend.
    pub sent: bool,
}

/// Counters a backend keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub rx_calls: u64,
    pub tx_calls: u64,
    /// Datagrams sent through the socket backend's raw IPv4 socket (see `socket_raw_tx`).
    pub tx_raw: u64,
    /// Receive calls that failed for a reason other than "nothing queued".
    pub rx_errors: u64,
}

/// Why a port could not be opened or a backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("socket option {option} on {addr}: {source}")]
    SockOpt {
        option: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("event poller: {0}")]
    Poller(std::io::Error),
    #[error("port {0} is already open")]
    InUse(SocketAddr),
    #[error("too many open ports ({0})")]
    TooManyPorts(usize),
    #[error("{0}")]
    Backend(String),
}

/// Wakes a worker that waits for packets.
pub type Waker = std::sync::Arc<dyn Fn() + Send + Sync>;

impl IoError {
    /// The address is held by another program (not by this dataplane).
    pub fn is_address_in_use(&self) -> bool {
        matches!(self, IoError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
    }
}

/// A packet I/O backend owned by one worker.
pub trait PacketIo {
    /// Short name for logs and metrics ("memory", "socket", "dpdk").
    fn kind(&self) -> &'static str;

    /// Per-burst buffers; the worker makes one and reuses it.
    type Batch: RxBatch;

    /// A batch for this backend.
    fn new_batch(&self) -> Self::Batch;

    /// Starts receiving datagrams addressed to `local`.
    ///
    /// # Errors
    /// The address cannot be bound or configured.
    fn open_port(&mut self, local: SocketAddr) -> Result<PortHandle, IoError>;

    /// Stops receiving on `port`; the handle may be reused. Unknown handles are ignored.
    fn close_port(&mut self, port: PortHandle);

    /// Receives up to `max` datagrams into `batch`, waiting at most `wait` when none is ready.
    /// Returns how many `batch.meta[..n]` entries are filled.
    fn rx_burst(&mut self, batch: &mut Self::Batch, max: usize, wait: Duration) -> usize;

    /// Ends a burst of `n` received datagrams: sends each descriptor's datagram, setting
    /// `sent`, and releases the buffers of the others. Returns the number sent.
    fn tx_burst(&mut self, batch: &mut Self::Batch, n: usize, tx: &mut [TxDesc]) -> usize;

    /// Whether the worker holds each received burst back until after its next receive call,
    /// fetching the burst's streams into cache while it processes and sends the burst
    /// before (see `Worker::bursts`). Worth it where a receive call costs little next to a
    /// memory access (a poll-mode backend on a table larger than the caches); a kernel
    /// backend's receive call costs more than the wait it would hide. A backend that says
    /// yes must return from a receive call without waiting when the worker holds a burst
    /// (the worker passes a zero wait), and its receive must return nothing at least once
    /// between being asked to stop and stopping, so that the held burst is sent first.
    fn overlap_bursts(&self) -> bool {
        false
    }

    /// Whether a receive call that returns datagrams may have waited for the first of them.
    /// When it cannot (a poll-mode backend, which waits, if at all, only when it returns
    /// none), the worker counts the whole call as busy time, copies and descriptor reads
    /// included; otherwise only what follows it.
    fn rx_waits(&self) -> bool {
        true
    }

    /// Whether [`PacketIo::load`] works: the worker can send packets it generated itself
    /// (media playback).
    fn can_generate(&self) -> bool {
        false
    }

    /// Puts a datagram the worker generated into slot `i` of `batch`, to be sent by the next
    /// `tx_burst(batch, n > i, …)` like a received one. Returns false when the backend cannot.
    fn load(&mut self, _batch: &mut Self::Batch, _i: usize, _payload: &[u8]) -> bool {
        false
    }

    /// A way for other threads to wake the worker from its idle wait when a command is
    /// queued (backends that sleep in the kernel); `None` for polling backends.
    fn waker(&self) -> Option<Waker> {
        None
    }

    /// Periodic work (every few milliseconds): flush buffered output, resolve neighbours,
    /// publish backend counters. Most backends have none.
    fn housekeeping(&mut self, _now_ns: u64) {}

    fn counters(&self) -> IoCounters;
}
