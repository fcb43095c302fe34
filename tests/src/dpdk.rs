//! The far side of an in-process DPDK ring port as a [`TestNet`]: endpoints are off-link
//! addresses reached through a gateway whose MAC is configured, so forwarding needs no ARP;
//! the ARP/ND tests use on-link peers instead.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use voxedge_dataplane::io::dpdk::RingWire;
use voxedge_dataplane::wire::frame::{
    build_udp_frame, parse_udp_frame, verify_udp_frame_checksums,
};

use crate::TestNet;

/// MAC of the test peers (and of the gateway the appliance is configured with).
pub const PEER_MAC: [u8; 6] = [0x02, 0x7e, 0x57, 0, 0, 0x01];

/// A UDP frame the appliance transmitted, parsed.
#[derive(Debug, Clone)]
pub struct SentFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    pub checksums_ok: bool,
}

pub struct DpdkNet<'w> {
    pub wire: &'w RingWire,
    pub appliance_mac: [u8; 6],
    pub vlan: Option<u16>,
    /// RX queue the test sends into.
    pub queue: u16,
    next: u16,
    inbox: VecDeque<SentFrame>,
    /// Frames that were not UDP (ARP, ICMP, ND), in arrival order.
    pub other: Vec<Vec<u8>>,
}

impl<'w> DpdkNet<'w> {
    pub fn new(wire: &'w RingWire, vlan: Option<u16>) -> Self {
        DpdkNet {
            wire,
            appliance_mac: wire.appliance_mac(),
            vlan,
            queue: 0,
            next: 20000,
            inbox: VecDeque::new(),
            other: Vec::new(),
        }
    }

    /// Sends one UDP datagram as a frame from the peer MAC.
    pub fn send_udp(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let mut buf = vec![0u8; payload.len() + 128];
        let n = build_udp_frame(
            &mut buf,
            PEER_MAC,
            self.appliance_mac,
            self.vlan,
            from,
            to,
            0,
            payload,
        )
        .expect("frame fits");
        assert!(self.wire.send(self.queue, &buf[..n]), "ring full");
    }

    /// Moves everything transmitted so far into the inbox (UDP) or `other`.
    pub fn drain(&mut self) {
        for f in self.wire.recv_all() {
            match parse_udp_frame(&f) {
                Ok(u) => self.inbox.push_back(SentFrame {
                    dst_mac: f[0..6].try_into().expect("6"),
                    src_mac: f[6..12].try_into().expect("6"),
                    vlan: u.vlan,
                    src: u.src,
                    dst: u.dst,
                    payload: u.payload(&f).to_vec(),
                    checksums_ok: verify_udp_frame_checksums(&f, &u),
                }),
                Err(_) => self.other.push(f),
            }
        }
    }

    /// Next UDP frame addressed to `at`, waiting up to `timeout`.
    pub fn recv_frame(&mut self, at: SocketAddr, timeout: Duration) -> Option<SentFrame> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(i) = self.inbox.iter().position(|f| f.dst == at) {
                return self.inbox.remove(i);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for a non-UDP frame matching `pred`.
    pub fn recv_other(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(i) = self.other.iter().position(|f| pred(f)) {
                return Some(self.other.remove(i));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl TestNet for DpdkNet<'_> {
    fn endpoint(&mut self) -> SocketAddr {
        self.next += 1;
        SocketAddr::from(([198, 51, 100, 7], self.next))
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        self.send_udp(from, to, payload);
    }

    fn recv(&mut self, at: SocketAddr, timeout: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        let f = self.recv_frame(at, timeout)?;
        assert!(f.checksums_ok, "appliance sent a frame with bad checksums");
        assert_eq!(f.dst_mac, PEER_MAC, "forwarded to the gateway's MAC");
        assert_eq!(f.src_mac, self.appliance_mac);
        assert_eq!(f.vlan, self.vlan);
        Some((f.src, f.payload))
    }
}
