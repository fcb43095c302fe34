//! Shared pieces of the system tests: a network abstraction so that one relay scenario runs
//! on the in-memory backend and on real UDP sockets.

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod scenarios;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use voxedge_dataplane::io::memory::Datagram;
use voxedge_dataplane::wire::rtp::{emit_header, RtpPacket};
use voxedge_dataplane::MemoryNet;

/// What a test endpoint needs from a network.
pub trait TestNet {
    /// A new endpoint address.
    fn endpoint(&mut self) -> SocketAddr;
    /// Sends `payload` from endpoint `from` to `to`.
    fn send(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]);
    /// Next datagram addressed to endpoint `at`: (source, payload).
    fn recv(&mut self, at: SocketAddr, timeout: Duration) -> Option<(SocketAddr, Vec<u8>)>;
}

/// Real UDP sockets on loopback.
#[derive(Default)]
pub struct SocketNet {
    socks: Vec<UdpSocket>,
}

impl SocketNet {
    fn sock(&self, addr: SocketAddr) -> &UdpSocket {
        self.socks
            .iter()
            .find(|s| s.local_addr().ok() == Some(addr))
            .expect("endpoint was created by this net")
    }
}

impl TestNet for SocketNet {
    fn endpoint(&mut self) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        let a = s.local_addr().expect("bound");
        self.socks.push(s);
        a
    }
    fn send(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        self.sock(from)
            .send_to(payload, to)
            .expect("send on loopback");
    }
    fn recv(&mut self, at: SocketAddr, timeout: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        let s = self.sock(at);
        s.set_read_timeout(Some(timeout)).expect("timeout");
        let mut buf = [0u8; 2048];
        let (n, src) = s.recv_from(&mut buf).ok()?;
        Some((src, buf[..n].to_vec()))
    }
}

/// The dataplane's in-memory network; endpoints are made-up addresses.
pub struct MemNet {
    pub net: MemoryNet,
    next: u16,
    inbox: Vec<Datagram>,
}

impl MemNet {
    pub fn new(net: MemoryNet) -> Self {
        MemNet {
            net,
            next: 40000,
            inbox: Vec::new(),
        }
    }
}

impl TestNet for MemNet {
    fn endpoint(&mut self) -> SocketAddr {
        self.next += 1;
        SocketAddr::from(([192, 0, 2, 7], self.next))
    }
    fn send(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        assert!(
            self.net.send(Datagram {
                src: from,
                dst: to,
                payload: payload.to_vec()
            }),
            "memory inbox full"
        );
    }
    fn recv(&mut self, at: SocketAddr, timeout: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        if let Some(i) = self.inbox.iter().position(|d| d.dst == at) {
            let d = self.inbox.remove(i);
            return Some((d.src, d.payload));
        }
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let d = self.net.recv_timeout(left)?;
            if d.dst == at {
                return Some((d.src, d.payload));
            }
            self.inbox.push(d);
        }
        None
    }
}

/// An RTP packet with a 160-byte payload whose first bytes carry `tag`.
pub fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, tag: u32) -> Vec<u8> {
    let mut b = vec![0u8; 12 + 160];
    emit_header(&mut b, pt, false, seq, ts, ssrc).expect("header fits");
    b[12..16].copy_from_slice(&tag.to_be_bytes());
    b
}

/// (ssrc, seq, ts, tag) of a received RTP packet.
pub fn parse_rtp(b: &[u8]) -> (u32, u16, u32, u32) {
    let p = RtpPacket::new_checked(b).expect("valid RTP");
    let pl = p.payload();
    (
        p.ssrc(),
        p.sequence_number(),
        p.timestamp(),
        u32::from_be_bytes([pl[0], pl[1], pl[2], pl[3]]),
    )
}
