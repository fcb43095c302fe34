//! Pieces shared by the SIP and REST system tests.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use voxedge_sip_core::{Limits, SipMessage};

/// A scripted callee on UDP.
pub struct Callee {
    pub sock: UdpSocket,
    pub rtp: UdpSocket,
}

impl Callee {
    pub fn new() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("t");
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
        rtp.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
        Callee { sock, rtp }
    }
    pub fn recv(&self) -> (SipMessage, SocketAddr) {
        let mut buf = [0u8; 65536];
        let (n, from) = self.sock.recv_from(&mut buf).expect("callee receives");
        (
            SipMessage::parse(&buf[..n], &Limits::default()).expect("valid"),
            from,
        )
    }
    pub fn reply(&self, req: &SipMessage, code: u16, reason: &str, to: SocketAddr, sdp: bool) {
        let mut r =
            voxedge_sip_core::transaction::build_response(req, code, reason, Some("callee1"));
        let contact = format!("<sip:callee@{}>", self.sock.local_addr().expect("a"));
        r.headers.insert(
            ezk_sip_types::Name::CONTACT,
            bytesstr::BytesStr::from(contact),
        );
        if sdp {
            let a = self.rtp.local_addr().expect("a");
            let body = format!("v=0\r\no=callee 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n", a.port());
            r.headers.insert(
                ezk_sip_types::Name::CONTENT_TYPE,
                bytesstr::BytesStr::from_static("application/sdp"),
            );
            r.body = bytes::Bytes::from(body);
        }
        self.sock.send_to(&r.to_bytes(), to).expect("reply");
    }
}

/// A child process (voxedge, sipp, …) killed and reaped when dropped, so a failing test
/// leaves nothing running.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
