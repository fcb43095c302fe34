//! In-memory backend: datagrams travel over crossbeam channels. Used by every dataplane test
//! and by scenario tests that must run without sockets; allocation here is acceptable (it is a
//! test backend), the worker's packet path is the same as with real I/O.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::{IoCounters, IoError, PacketBatch, PacketIo, RxMeta, TxDesc, NO_PORT, PACKET_BUF_SIZE};
use crate::ids::PortHandle;

/// A datagram on the in-memory network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// The worker's side of an in-memory network.
pub struct MemoryIo {
    inbox: Receiver<Datagram>,
    outbox: Sender<Datagram>,
    ports: Vec<Option<SocketAddr>>,
    by_port: HashMap<u16, u32>,
    free: Vec<u32>,
    counters: IoCounters,
}

impl MemoryIo {
    /// A backend reading from `inbox` and writing everything it sends to `outbox`.
    pub fn new(inbox: Receiver<Datagram>, outbox: Sender<Datagram>) -> Self {
        MemoryIo {
            inbox,
            outbox,
            ports: Vec::new(),
            by_port: HashMap::new(),
            free: Vec::new(),
            counters: IoCounters::default(),
        }
    }

    fn fill(&mut self, d: Datagram, batch: &mut PacketBatch, i: usize) {
        let len = d.payload.len().min(PACKET_BUF_SIZE);
        batch.bufs[i][..len].copy_from_slice(&d.payload[..len]);
        let port = match self.by_port.get(&d.dst.port()) {
            Some(&h)
                if self.ports[h as usize]
                    .is_some_and(|a| a.ip().is_unspecified() || a.ip() == d.dst.ip()) =>
            {
                PortHandle(h)
            }
            _ => NO_PORT,
        };
        batch.meta[i] = RxMeta {
            port,
            src: d.src,
            len: len as u16,
            truncated: d.payload.len() > PACKET_BUF_SIZE,
        };
    }
}

impl PacketIo for MemoryIo {
    type Batch = PacketBatch;

    fn new_batch(&self) -> PacketBatch {
        PacketBatch::default()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn can_generate(&self) -> bool {
        true
    }

    fn load(&mut self, batch: &mut PacketBatch, i: usize, payload: &[u8]) -> bool {
        batch.load(i, payload)
    }

    fn open_port(&mut self, local: SocketAddr) -> Result<PortHandle, IoError> {
        if self.by_port.contains_key(&local.port()) {
            return Err(IoError::InUse(local));
        }
        let h = match self.free.pop() {
            Some(h) => {
                self.ports[h as usize] = Some(local);
                h
            }
            None => {
                self.ports.push(Some(local));
                (self.ports.len() - 1) as u32
            }
        };
        self.by_port.insert(local.port(), h);
        Ok(PortHandle(h))
    }

    fn close_port(&mut self, port: PortHandle) {
        if let Some(slot) = self.ports.get_mut(port.0 as usize) {
            if let Some(addr) = slot.take() {
                self.by_port.remove(&addr.port());
                self.free.push(port.0);
            }
        }
    }

    fn rx_burst(&mut self, batch: &mut PacketBatch, max: usize, wait: Duration) -> usize {
        self.counters.rx_calls += 1;
        let max = max.min(batch.meta.len());
        if max == 0 {
            return 0;
        }
        let first = if wait.is_zero() {
            self.inbox.try_recv().ok()
        } else {
            self.inbox.recv_timeout(wait).ok()
        };
        let Some(first) = first else { return 0 };
        self.fill(first, batch, 0);
        let mut n = 1;
        while n < max {
            match self.inbox.try_recv() {
                Ok(d) => {
                    self.fill(d, batch, n);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }

    fn tx_burst(&mut self, batch: &mut PacketBatch, _n: usize, tx: &mut [TxDesc]) -> usize {
        if tx.is_empty() {
            return 0;
        }
        self.counters.tx_calls += 1;
        let mut sent = 0;
        for d in tx.iter_mut() {
            let Some(Some(src)) = self.ports.get(d.port.0 as usize) else {
                d.sent = false;
                continue;
            };
            let payload = batch.bufs[usize::from(d.buf)][..usize::from(d.len)].to_vec();
            d.sent = self
                .outbox
                .try_send(Datagram {
                    src: *src,
                    dst: d.dst,
                    payload,
                })
                .is_ok();
            sent += usize::from(d.sent);
        }
        sent
    }

    fn counters(&self) -> IoCounters {
        self.counters
    }
}
