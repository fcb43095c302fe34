//! `voxedge bench socket-floor`: what the kernel alone costs per datagram on this host, so a
//! relay's CPU-µs per packet can be read against the least any relay on kernel sockets can
//! spend.
//!
//! A relay on kernel sockets receives every datagram from a socket and sends it out again; on
//! loopback the sender's CPU also delivers the datagram into the receiving socket. This bench
//! measures both halves in their cheapest form, each on its own thread and core, with the
//! thread's own CPU time from `/proc/self/task/TID/stat`:
//!
//! - **receive**: one UDP socket drained with `recvmmsg` (64 per call, blocking for the first
//!   as a relay that sleeps when idle does) while another thread sends to it at `--pps`. One
//!   socket gets the best batching there is; a relay with a socket per stream gets less.
//! - **send**: `sendmmsg` in bursts of 32 at `--pps` to a sink that busy-polls its socket (so
//!   the sender never pays for waking it), through an `IPPROTO_RAW` socket with our own
//!   headers (as the socket backend sends, ADR 0017; needs `CAP_NET_RAW`) and through a UDP
//!   socket.
//!
//! `floor_us_per_relayed_packet` = receive + the cheaper send: a relay built on these system
//! calls cannot spend less per relayed packet on this host, whatever its userspace does.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, sendmmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessage, MsgFlags,
    MultiHeaders, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrStorage,
};
use serde_json::{json, Value};
use voxedge_dataplane::io::socket::{write_raw_head, RAW_HEAD_LEN};

/// Options of `voxedge bench socket-floor`.
#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Datagrams per second offered in each measurement.
    #[arg(long, default_value_t = 100_000.0)]
    pub pps: f64,
    /// Seconds of each measurement.
    #[arg(long, default_value_t = 4.0)]
    pub duration: f64,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
}

/// RTP-sized UDP payload (12-byte header + 160 bytes of G.711).
const PAYLOAD: usize = 172;
const SEND_BURST: usize = 32;
const RECV_BATCH: usize = 64;
/// DSCP EF, as the socket backend marks RTP by default.
const TOS_EF: u8 = 46 << 2;

/// CPU seconds (user + system) of thread `tid` of this process.
fn thread_cpu_seconds(tid: i32) -> anyhow::Result<f64> {
    crate::proc::stat_cpu_seconds(&format!("/proc/self/task/{tid}/stat"))
}

fn pin(core: usize) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if cores.len() > 1 {
        if let Some(id) = cores.get(core % cores.len()) {
            core_affinity::set_for_current(*id);
        }
    }
}

/// What one measuring thread reports: datagrams handled, system calls made, CPU seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    datagrams: u64,
    calls: u64,
    cpu_s: f64,
    wall_s: f64,
}

/// Opens an `IPPROTO_RAW` socket, or `None` without `CAP_NET_RAW` (the socket backend then
/// sends through its UDP sockets too).
fn open_raw() -> anyhow::Result<Option<OwnedFd>> {
    match socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Raw,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::EPERM | Errno::EACCES) => Ok(None),
        Err(e) => Err(e).context("socket(AF_INET, SOCK_RAW, IPPROTO_RAW)"),
    }
}

/// Sends `pps` datagrams per second to `dst` for `secs`, in bursts, paced by the clock:
/// through `raw` with the headers the socket backend writes (`write_raw_head`), or through
/// a UDP socket when `raw` is `None`.
fn send_paced(
    raw: Option<OwnedFd>,
    dst: SocketAddrV4,
    pps: f64,
    secs: f64,
) -> anyhow::Result<Tally> {
    let src_sock = UdpSocket::bind("127.0.0.1:0").context("bind the sender's UDP socket")?;
    let SocketAddr::V4(src) = src_sock.local_addr()? else {
        bail!("IPv4 expected");
    };
    let payload = [0x80u8; PAYLOAD];
    let mut head = [0u8; RAW_HEAD_LEN];
    if !write_raw_head(&mut head, src, dst, TOS_EF, &payload) {
        bail!("a {PAYLOAD}-byte datagram does not fit IPv4");
    }
    let fd = raw
        .as_ref()
        .map_or(src_sock.as_raw_fd(), AsRawFd::as_raw_fd);
    let datagram: &[IoSlice<'_>] = if raw.is_some() {
        &[IoSlice::new(&head), IoSlice::new(&payload)]
    } else {
        &[IoSlice::new(&payload)]
    };
    let slices = [datagram; SEND_BURST];
    let addrs = [Some(SockaddrIn::from(dst)); SEND_BURST];
    let mut hdrs: MultiHeaders<SockaddrIn> = MultiHeaders::preallocate(SEND_BURST, None);
    let tid = nix::unistd::gettid().as_raw();
    let no_cmsg: [ControlMessage<'_>; 0] = [];
    let (t0, c0) = (Instant::now(), thread_cpu_seconds(tid)?);
    let mut t = Tally::default();
    loop {
        let elapsed = t0.elapsed().as_secs_f64();
        if elapsed >= secs {
            break;
        }
        let due = (elapsed * pps) as u64;
        if due < t.datagrams + SEND_BURST as u64 {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        t.calls += 1;
        if let Ok(r) = sendmmsg(fd, &mut hdrs, &slices, addrs, no_cmsg, MsgFlags::empty()) {
            t.datagrams += r.count() as u64;
        }
    }
    t.wall_s = t0.elapsed().as_secs_f64();
    t.cpu_s = thread_cpu_seconds(tid)? - c0;
    Ok(t)
}

/// Drains `sock` until `stop`: blocking for the first datagram of each call (`busy` false,
/// with a 50 ms timeout to see `stop`) or polling without ever sleeping (`busy` true).
fn drain(sock: &UdpSocket, busy: bool, stop: &AtomicBool) -> anyhow::Result<Tally> {
    let fd = sock.as_raw_fd();
    let flags = if busy {
        MsgFlags::MSG_DONTWAIT
    } else {
        MsgFlags::MSG_WAITFORONE
    };
    let mut bufs = [[0u8; 256]; RECV_BATCH];
    let mut hdrs: MultiHeaders<SockaddrStorage> = MultiHeaders::preallocate(RECV_BATCH, None);
    let tid = nix::unistd::gettid().as_raw();
    let (t0, c0) = (Instant::now(), thread_cpu_seconds(tid)?);
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        // Rebuilt per call (nix ties the slices to the headers' borrow), on the stack.
        let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
        t.calls += 1;
        if let Ok(msgs) = recvmmsg(fd, &mut hdrs, iovs.iter_mut(), flags, None) {
            t.datagrams += msgs.count() as u64;
        }
    }
    t.wall_s = t0.elapsed().as_secs_f64();
    t.cpu_s = thread_cpu_seconds(tid)? - c0;
    Ok(t)
}

/// One measurement: a sender thread (raw when `raw` is given, else UDP) on core 0 and a
/// draining thread on core 1.
fn measure(raw: Option<OwnedFd>, busy_sink: bool, a: &FloorArgs) -> anyhow::Result<(Tally, Tally)> {
    let sink = UdpSocket::bind("127.0.0.1:0").context("bind the receiving socket")?;
    setsockopt(&sink, sockopt::RcvBuf, &(8 << 20)).context("SO_RCVBUF")?;
    sink.set_read_timeout(Some(Duration::from_millis(50)))?;
    let SocketAddr::V4(dst) = sink.local_addr()? else {
        bail!("IPv4 expected");
    };
    let stop = AtomicBool::new(false);
    let (pps, secs) = (a.pps, a.duration);
    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            pin(1);
            drain(&sink, busy_sink, &stop)
        });
        let tx = s.spawn(move || {
            pin(0);
            send_paced(raw, dst, pps, secs)
        });
        let sent = tx.join();
        // What is still in flight on loopback arrives within milliseconds.
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        let received = rx.join();
        match (sent, received) {
            (Ok(s), Ok(r)) => Ok((s?, r?)),
            _ => bail!("a measuring thread panicked"),
        }
    })
}

fn per_datagram_us(t: &Tally) -> f64 {
    if t.datagrams == 0 {
        f64::NAN
    } else {
        t.cpu_s * 1e6 / t.datagrams as f64
    }
}

/// Runs the bench and prints its report.
///
/// # Errors
/// Sockets could not be opened, or a sink did not receive what was sent (a host dropping
/// loopback traffic would make the figures meaningless).
pub fn main(a: &FloorArgs) -> anyhow::Result<()> {
    if a.pps <= 0.0 || a.duration <= 0.0 {
        bail!("--pps and --duration must be positive");
    }
    let r = run(a)?;
    if a.json {
        println!("{r}");
    } else {
        println!(
            "kernel socket floor on this host ({} datagrams/s, {} s each):",
            r["pps"], r["duration_s"]
        );
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "  receive (one socket, recvmmsg, {:.1} datagrams per call): {:.2} CPU-µs per datagram",
            f("receive_datagrams_per_call"),
            f("receive_us_per_datagram")
        );
        println!(
            "  send with delivery (sendmmsg bursts of {SEND_BURST}): raw {:.2}, UDP {:.2} CPU-µs per datagram",
            f("send_raw_us_per_datagram"),
            f("send_udp_us_per_datagram")
        );
        println!(
            "  floor per relayed packet: {:.2} CPU-µs",
            f("floor_us_per_relayed_packet")
        );
    }
    Ok(())
}

fn run(a: &FloorArgs) -> anyhow::Result<Value> {
    let check = |what: &str, s: &Tally, r: &Tally| -> anyhow::Result<()> {
        if s.datagrams == 0 || (r.datagrams as f64) < 0.95 * s.datagrams as f64 {
            bail!(
                "{what}: {} datagrams sent, {} received: loopback traffic is being dropped, so the figures would mean nothing",
                s.datagrams,
                r.datagrams
            );
        }
        Ok(())
    };
    let (s, recv) = measure(None, false, a)?;
    check("receive", &s, &recv)?;
    let (udp_send, sink) = measure(None, true, a)?;
    check("UDP send", &udp_send, &sink)?;
    let raw = match open_raw()? {
        Some(fd) => {
            let (raw_send, sink) = measure(Some(fd), true, a)?;
            check("raw send", &raw_send, &sink)?;
            Some(raw_send)
        }
        None => None,
    };
    let receive_us = per_datagram_us(&recv);
    let udp_us = per_datagram_us(&udp_send);
    let raw_us = raw.as_ref().map(per_datagram_us);
    let send_us = raw_us.map_or(udp_us, |r| r.min(udp_us));
    Ok(json!({
        "bench": "socket-floor",
        "pps": a.pps,
        "duration_s": a.duration,
        "payload_bytes": PAYLOAD,
        "receive_datagrams": recv.datagrams,
        "receive_datagrams_per_call": recv.datagrams as f64 / recv.calls.max(1) as f64,
        "receive_us_per_datagram": receive_us,
        "receive_cpu_cores": recv.cpu_s / recv.wall_s.max(1e-9),
        "send_udp_datagrams": udp_send.datagrams,
        "send_udp_us_per_datagram": udp_us,
        "send_raw_datagrams": raw.as_ref().map(|t| t.datagrams),
        "send_raw_us_per_datagram": raw_us,
        "floor_us_per_relayed_packet": receive_us + send_us,
        "note": "receive from one socket (best batching) + the cheaper send including loopback delivery into a busy-polling socket: the least a relay on kernel sockets can spend per relayed packet on this host",
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every datagram the sender counts arrives, and each half reports a positive cost (CPU
    /// time is measured in 10 ms ticks, so the run is long enough to see some).
    #[test]
    fn both_halves_are_measured_on_loopback() {
        let a = FloorArgs {
            pps: 20_000.0,
            duration: 0.6,
            json: true,
        };
        let r = run(&a).unwrap();
        let sent = r["send_udp_datagrams"].as_u64().unwrap();
        assert!(sent >= 10_000, "{r}");
        assert!(r["receive_datagrams"].as_u64().unwrap() >= 10_000, "{r}");
        assert!(
            r["floor_us_per_relayed_packet"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        assert!(
            r["receive_datagrams_per_call"].as_f64().unwrap() >= 1.0,
            "{r}"
        );
    }
}
