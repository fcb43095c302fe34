//! The DPDK backend on in-process `net_ring` ports (and a `net_pcap` port), without hugepages:
//! the same relay scenarios as the memory and socket backends, ARP/ND/ICMP, VLAN tagging,
//! hand-off between workers when packets land on the wrong queue, and clear start-up errors.
//!
//! One EAL per process: every test here uses the same EAL arguments, and a lock runs them one
//! at a time because they share the ports.
#![cfg(feature = "dpdk")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use voxedge_dataplane::config::{Backend, DataplaneConfig, DpdkConfig, OverlapBursts, Steering};
use voxedge_dataplane::io::dpdk::{init_eal, RingWire};
use voxedge_dataplane::io::netstack::{
    build_arp_request, build_neighbour_solicitation, handle_control, Control, Interface,
};
use voxedge_dataplane::stats::DropReason;
use voxedge_dataplane::wire::ethernet::{self, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use voxedge_dataplane::wire::frame::build_udp_frame;
use voxedge_dataplane::wire::{checksum_add, checksum_fold, ipv4, ipv6};
use voxedge_dataplane::{Dataplane, RelayRequest, StartError};
use voxedge_system_tests::dpdk::{DpdkNet, PEER_MAC};
use voxedge_system_tests::scenarios::{
    conference_scenario, playback_scenario, record_scenario, relay_scenario,
    strict_source_scenario, total_drops, WAIT,
};
use voxedge_system_tests::{rtp, TestNet};

const ONE_Q: &str = "net_ring_vxring1q";
const TWO_Q: &str = "net_ring_vxring2q";
const OUR_V4: &str = "10.9.0.1";
const OUR_V6: &str = "fd00:9::1";
const ONLINK_MAC: [u8; 6] = [0x02, 0x7e, 0x57, 0, 0, 0x09];

struct Env {
    one_q: RingWire,
    two_q: RingWire,
    pcap_dir: PathBuf,
}

static ENV: OnceLock<Env> = OnceLock::new();
static LOCK: Mutex<()> = Mutex::new(());

/// The pcap port's capture files, under Cargo's `target/tmp` (the EAL lives as long as the
/// process, so the directory does too).
fn pcap_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("voxedge-dpdk-test-{}", std::process::id()))
}

/// EAL settings shared by every test in this process.
fn eal() -> DpdkConfig {
    let d = pcap_dir();
    DpdkConfig {
        no_huge: true,
        memory_mb: vec![512],
        file_prefix: format!("vxtest{}", std::process::id()),
        vdevs: vec![format!(
            "net_pcap0,rx_pcap={},tx_pcap={}",
            d.join("in.pcap").display(),
            d.join("out.pcap").display()
        )],
        eal_args: vec!["--no-shconf".into(), "--log-level=*:warning".into()],
        mbufs: 8191,
        mbuf_cache: 64,
        ..DpdkConfig::default()
    }
}

fn env() -> (&'static Env, MutexGuard<'static, ()>) {
    let g = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let e = ENV.get_or_init(|| {
        let d = pcap_dir();
        std::fs::create_dir_all(&d).expect("temp dir");
        write_pcap(&d.join("in.pcap"), &pcap_input());
        let cfg = eal();
        init_eal(&cfg).expect("EAL starts without hugepages");
        Env {
            one_q: RingWire::create(&cfg, "vxring1q", 1).expect("ring port"),
            two_q: RingWire::create(&cfg, "vxring2q", 2).expect("ring port"),
            pcap_dir: d,
        }
    });
    // A previous test's relays and conferences may have transmitted frames that test never
    // read (a conference mixes every 20 ms until its dataplane stops), and the endpoints'
    // addresses repeat from test to test: such frames must not be taken for this test's.
    for wire in [&e.one_q, &e.two_q] {
        drop(wire.recv_all());
    }
    (e, g)
}

fn config(port: &str, workers: usize, port_min: u16) -> DataplaneConfig {
    DataplaneConfig {
        backend: Backend::Dpdk,
        workers,
        pin_cores: false,
        bind: OUR_V4.parse().expect("ip"),
        port_min,
        port_max: port_min + 199,
        media_timeout_ms: 300,
        dpdk: DpdkConfig {
            port: port.into(),
            addresses: vec![format!("{OUR_V4}/24"), format!("{OUR_V6}/64")],
            gateway: Some("10.9.0.254".parse().expect("ip")),
            gateway6: Some("fd00:9::fe".parse().expect("ip")),
            gateway_mac: Some("02:7e:57:00:00:01".into()),
            idle_sleep_us: 20,
            ..eal()
        },
        ..DataplaneConfig::default()
    }
}

fn metric(dp: &Dataplane, name: &str) -> u64 {
    std::thread::sleep(Duration::from_millis(30));
    dp.backend_metrics()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, v)| v)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn relay_scenario_on_dpdk_ring_port() {
    let (env, _g) = env();
    // With bursts overlapped (DPDK's choice under `auto`), then without.
    for (overlap, overlapped) in [(OverlapBursts::Auto, true), (OverlapBursts::Off, false)] {
        let mut cfg = config(ONE_Q, 1, 31000);
        cfg.overlap_bursts = overlap;
        let dp = Dataplane::start(cfg).expect("start");
        assert!(
            dp.workers()
                .all(|w| w.overlapped.load(Ordering::Relaxed) == overlapped),
            "{overlap:?}"
        );
        relay_scenario(&dp, &mut DpdkNet::new(&env.one_q, None));
    }
}

#[test]
fn recording_tap_on_dpdk_ring_port() {
    let (env, _g) = env();
    let dp = Dataplane::start(config(ONE_Q, 1, 32000)).expect("start");
    record_scenario(&dp, &mut DpdkNet::new(&env.one_q, None));
}

#[test]
fn strict_source_scenario_on_dpdk_ring_port() {
    let (env, _g) = env();
    let dp = Dataplane::start(config(ONE_Q, 1, 31000)).expect("start");
    strict_source_scenario(&dp, &mut DpdkNet::new(&env.one_q, None));
}

#[test]
fn relay_scenario_with_a_vlan_tag() {
    let (env, _g) = env();
    let mut cfg = config(ONE_Q, 1, 31000);
    cfg.dpdk.vlan = Some(100);
    let dp = Dataplane::start(cfg).expect("start");
    let mut net = DpdkNet::new(&env.one_q, Some(100));
    relay_scenario(&dp, &mut net);
    // Untagged traffic is not ours on a tagged interface.
    let info = dp.create_relay(RelayRequest::default()).expect("relay");
    let mut untagged = DpdkNet::new(&env.one_q, None);
    let peer = untagged.endpoint();
    untagged.send(peer, info.legs[0].local, &rtp(0, 1, 0, 1, 1));
    assert!(metric(&dp, "voxedge_dpdk_not_ours_total") >= 1);
}

#[test]
fn playback_scenario_on_dpdk_ring_port() {
    // Played packets are built in mbufs from the worker's pool and leave like forwarded ones
    // (headers, checksum, neighbour resolution): the same scenario as memory and sockets.
    let (env, _g) = env();
    let dp = Dataplane::start(config(ONE_Q, 1, 32200)).expect("start");
    playback_scenario(&dp, &mut DpdkNet::new(&env.one_q, None));
}

#[test]
fn conference_scenario_on_dpdk_ring_port() {
    // Mixed packets leave through the DPDK port like played ones.
    let (env, _g) = env();
    let dp = Dataplane::start(config(ONE_Q, 1, 32400)).expect("start");
    conference_scenario(&dp, &mut DpdkNet::new(&env.one_q, None));
}

fn peer_iface(ip: &str, mac: [u8; 6]) -> Interface {
    Interface {
        mac,
        vlan: None,
        addresses: vec![format!("{ip}/24").parse().expect("net")],
        gateway4: None,
        gateway6: None,
        gateway_mac: None,
        dscp: 0,
    }
}

fn echo_request_v4(dst_mac: [u8; 6]) -> Vec<u8> {
    let mut v = vec![0u8; 64];
    let l3 = ethernet::emit_header(&mut v, dst_mac, ONLINK_MAC, None, ETHERTYPE_IPV4).expect("eth");
    let data = [8u8, 0, 0, 0, 0x77, 0x01, 0, 9, b'v', b'x'];
    ipv4::emit_header(
        &mut v[l3..],
        Ipv4Addr::new(10, 9, 0, 9),
        OUR_V4.parse().expect("ip"),
        ipv4::PROTO_ICMP,
        64,
        0,
        data.len(),
    )
    .expect("ip");
    let at = l3 + 20;
    v[at..at + data.len()].copy_from_slice(&data);
    let c = checksum_fold(checksum_add(0, &v[at..at + data.len()]));
    v[at + 2..at + 4].copy_from_slice(&c.to_be_bytes());
    v.truncate(at + data.len());
    v
}

fn echo_request_v6(dst_mac: [u8; 6]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = "fd00:9::9".parse().expect("ip");
    let dst: std::net::Ipv6Addr = OUR_V6.parse().expect("ip");
    let mut v = vec![0u8; 80];
    let l3 = ethernet::emit_header(&mut v, dst_mac, ONLINK_MAC, None, ETHERTYPE_IPV6).expect("eth");
    let data = [128u8, 0, 0, 0, 0x77, 0x02, 0, 1, b'v', b'6'];
    ipv6::emit_header(&mut v[l3..], src, dst, 58, 64, 0, data.len()).expect("ip6");
    let at = l3 + 40;
    v[at..at + data.len()].copy_from_slice(&data);
    let mut acc = checksum_add(0, &src.octets());
    acc = checksum_add(acc, &dst.octets());
    acc = checksum_add(acc, &(data.len() as u32).to_be_bytes());
    acc = checksum_add(acc, &[0, 0, 0, 58]);
    let c = checksum_fold(checksum_add(acc, &v[at..at + data.len()]));
    v[at + 2..at + 4].copy_from_slice(&c.to_be_bytes());
    v.truncate(at + data.len());
    v
}

#[test]
fn answers_arp_nd_and_ping_and_resolves_on_link_peers() {
    let (env, _g) = env();
    let dp = Dataplane::start(config(ONE_Q, 1, 31000)).expect("start");
    let mut net = DpdkNet::new(&env.one_q, None);
    let our_mac = net.appliance_mac;
    let peer = peer_iface("10.9.0.9", ONLINK_MAC);
    let ethertype = |f: &[u8]| u16::from_be_bytes([f[12], f[13]]);

    // ARP for our address is answered, with our MAC.
    let mut buf = vec![0u8; 128];
    let n = build_arp_request(&peer, OUR_V4.parse().expect("ip"), &mut buf).expect("arp");
    assert!(env.one_q.send(0, &buf[..n]));
    let reply = net
        .recv_other(WAIT, |f| ethertype(f) == ETHERTYPE_ARP && f[21] == 2)
        .expect("ARP reply");
    assert_eq!(&reply[22..28], &our_mac);
    assert_eq!(&reply[0..6], &ONLINK_MAC);

    // ICMP echo (v4 and v6) is answered.
    assert!(env.one_q.send(0, &echo_request_v4(our_mac)));
    let r = net
        .recv_other(WAIT, |f| ethertype(f) == ETHERTYPE_IPV4 && f[23] == 1)
        .expect("echo reply");
    assert_eq!(r[34], 0, "ICMP echo reply");
    assert_eq!(&r[38..], &[0x77, 0x01, 0, 9, b'v', b'x']);
    assert!(env.one_q.send(0, &echo_request_v6(our_mac)));
    let r = net
        .recv_other(WAIT, |f| ethertype(f) == ETHERTYPE_IPV6 && f[54] == 129)
        .expect("echo6 reply");
    assert_eq!(&r[58..], &[0x77, 0x02, 0, 1, b'v', b'6']);

    // Neighbour solicitation for our IPv6 address gets an advertisement.
    let peer6 = Interface {
        addresses: vec!["fd00:9::9/64".parse().expect("net")],
        ..peer.clone()
    };
    let mut buf = vec![0u8; 128];
    let n =
        build_neighbour_solicitation(&peer6, OUR_V6.parse().expect("ip"), &mut buf).expect("ns");
    assert!(env.one_q.send(0, &buf[..n]));
    let mut na = net
        .recv_other(WAIT, |f| ethertype(f) == ETHERTYPE_IPV6 && f[54] == 136)
        .expect("neighbour advertisement");
    let len = na.len();
    na.resize(256, 0);
    assert_eq!(
        handle_control(&peer6, &mut na, len),
        Control::Learned(OUR_V6.parse().expect("ip"), our_mac)
    );

    // Forwarding to an on-link peer it has not heard from: the first packet waits for ARP
    // (dropped and counted), the appliance asks, the peer answers, and later packets reach the
    // peer's own MAC.
    let onlink_mac = [0x02, 0x7e, 0x57, 0, 0, 0x0a];
    let peer = peer_iface("10.9.0.10", onlink_mac);
    let far = net.endpoint();
    let onlink: SocketAddr = "10.9.0.10:5000".parse().expect("addr");
    let info = dp
        .create_relay(RelayRequest::with_remotes(Some(onlink), Some(far)))
        .expect("relay");
    net.send(far, info.legs[1].local, &rtp(0, 1, 0, 5, 1));
    let mut req = net
        .recv_other(WAIT, |f| ethertype(f) == ETHERTYPE_ARP && f[21] == 1)
        .expect("ARP request for the on-link peer");
    assert_eq!(&req[38..42], &[10, 9, 0, 10]);
    assert_eq!(metric(&dp, "voxedge_dpdk_no_neighbour_total"), 1);
    let len = req.len();
    req.resize(128, 0);
    let Control::Reply { len, .. } = handle_control(&peer, &mut req, len) else {
        panic!("peer answers the appliance's ARP request");
    };
    assert!(env.one_q.send(0, &req[..len]));
    std::thread::sleep(Duration::from_millis(20));
    net.send(far, info.legs[1].local, &rtp(0, 2, 160, 5, 2));
    let f = net.recv_frame(onlink, WAIT).expect("forwarded after ARP");
    assert_eq!(f.dst_mac, onlink_mac);
    assert_eq!(
        f.src,
        SocketAddr::new(
            IpAddr::V4(OUR_V4.parse().expect("ip")),
            info.legs[0].local.port()
        )
    );
    assert!(f.checksums_ok);
    assert_eq!(metric(&dp, "voxedge_dpdk_arp_replies_total"), 1);
    assert_eq!(metric(&dp, "voxedge_dpdk_icmp_echo_replies_total"), 2);
    assert_eq!(metric(&dp, "voxedge_dpdk_nd_replies_total"), 1);
}

/// `PortCtx::fill_pool` (the null bench's traffic source) writes every free mbuf of the pool,
/// including those a running worker holds in its per-lcore mempool cache, and the worker polls
/// again afterwards.
#[test]
fn filling_the_pool_reaches_the_mbufs_cached_by_a_running_worker() {
    let (env, _g) = env();
    // A pool of its own (pools are found by size and cache), used by this dataplane only.
    const MBUFS: u32 = 2047;
    let mut cfg = config(ONE_Q, 1, 31000);
    cfg.dpdk.mbufs = MBUFS;
    let dp = Dataplane::start(cfg).expect("start");
    let mut net = DpdkNet::new(&env.one_q, None);
    // Leg B's far end is on-link and unknown: forwarding to it makes the worker send an ARP
    // request in an mbuf of its own pool, and that allocation fills the worker's cache from
    // the pool.
    let a = net.endpoint();
    let b: SocketAddr = "10.9.0.77:30500".parse().expect("addr");
    let info = dp
        .create_relay(RelayRequest::with_remotes(Some(a), Some(b)))
        .expect("relay");
    let is_arp_request_for_b = |f: &[u8]| {
        f.len() >= 42
            && u16::from_be_bytes([f[12], f[13]]) == ETHERTYPE_ARP
            && f[21] == 1
            && f[38..42] == [10, 9, 0, 77]
    };
    net.send(a, info.legs[0].local, &rtp(0, 1, 0, 1, 1));
    net.recv_other(WAIT, is_arp_request_for_b)
        .expect("ARP request for the on-link remote");
    let port = dp.dpdk_port().expect("dpdk port").clone();
    let written = port.fill_pool(|_, room| {
        room[..4].copy_from_slice(b"fill");
        4
    });
    assert_eq!(
        written, MBUFS as usize,
        "every mbuf of the pool was free and written"
    );
    // The worker polls again: it answers a ping (the ARP request would be repeated only
    // after a while).
    let our_mac = net.appliance_mac;
    assert!(env.one_q.send(0, &echo_request_v4(our_mac)));
    net.recv_other(WAIT, |f| f.len() > 34 && f[23] == 1 && f[34] == 0)
        .expect("echo reply after filling the pool");
}

#[test]
fn packets_on_the_wrong_queue_are_handed_to_the_owner() {
    let (env, _g) = env();
    let dp = Dataplane::start(config(TWO_Q, 2, 31000)).expect("start");
    let mut net = DpdkNet::new(&env.two_q, None);
    // Every frame enters on queue 0; relays are spread over both workers.
    let mut seen_workers = std::collections::HashSet::new();
    for i in 0..4u16 {
        let (a, b) = (net.endpoint(), net.endpoint());
        let info = dp
            .create_relay(RelayRequest::with_remotes(Some(a), Some(b)))
            .expect("relay");
        seen_workers.insert(info.worker);
        net.send(a, info.legs[0].local, &rtp(0, i, 0, 1, 1));
        let (src, _) = net
            .recv(b, WAIT)
            .expect("forwarded whichever queue it came in on");
        assert_eq!(src, info.legs[1].local);
    }
    assert_eq!(seen_workers.len(), 2, "relays on both workers");
    assert!(metric(&dp, "voxedge_dpdk_handoff_total") >= 1);
    assert_eq!(metric(&dp, "voxedge_dpdk_handoff_dropped_total"), 0);
}

/// The receive path does not keep its own set of open ports: a datagram for a port that was
/// never opened, or for the port of a deleted relay (whose handle the table no longer knows),
/// reaches the worker with that port's handle and is dropped there as an unknown stream,
/// counted, and nothing is sent.
#[test]
fn datagrams_for_closed_ports_are_dropped_and_counted() {
    let (env, _g) = env();
    let dp = Dataplane::start(config(ONE_Q, 1, 31000)).expect("start");
    let mut net = DpdkNet::new(&env.one_q, None);
    let (a, b) = (net.endpoint(), net.endpoint());
    let info = dp
        .create_relay(RelayRequest::with_remotes(Some(a), Some(b)))
        .expect("relay");
    let a_local = info.legs[0].local;
    net.send(a, a_local, &rtp(0, 1, 0, 7, 1));
    assert!(net.recv(b, WAIT).is_some(), "forwarded while open");
    dp.delete_relay(info.id).expect("delete");
    net.send(a, a_local, &rtp(0, 2, 160, 7, 1));
    // A port inside the media range that no relay holds.
    let unused = SocketAddr::new(a_local.ip(), 31000 + 199);
    assert!(
        [a_local, info.legs[1].local]
            .iter()
            .all(|l| l.port() != unused.port()),
        "the range's last port is free"
    );
    net.send(a, unused, &rtp(0, 1, 0, 9, 1));
    assert_eq!(total_drops(&dp, DropReason::UnknownStream, 2), 2);
    assert!(
        net.recv(b, Duration::from_millis(100)).is_none(),
        "nothing forwarded from a closed port"
    );
}

#[test]
fn clear_errors_for_unknown_port_and_refused_rte_flow() {
    let (_env, _g) = env();
    let e = Dataplane::start(config("no-such-port", 1, 31000))
        .err()
        .expect("unknown port fails");
    let msg = e.to_string();
    assert!(
        msg.contains("no such ethdev") && msg.contains(ONE_Q),
        "{msg}"
    );
    let mut cfg = config(TWO_Q, 2, 31000);
    cfg.dpdk.steering = Steering::RteFlow;
    let msg = Dataplane::start(cfg)
        .err()
        .expect("net_ring has no rte_flow")
        .to_string();
    assert!(msg.contains("rte_flow"), "{msg}");
    let mut cfg = config(TWO_Q, 3, 31000);
    cfg.dpdk.steering = Steering::Rss;
    let msg = Dataplane::start(cfg)
        .err()
        .expect("3 workers, 2 queues")
        .to_string();
    assert!(msg.contains("fewer than dataplane.workers"), "{msg}");
    // The port still works after the failures.
    let dp = Dataplane::start(config(TWO_Q, 2, 31000)).expect("start after errors");
    drop(dp);
    let mut cfg = config(ONE_Q, 1, 31000);
    cfg.dpdk.file_prefix = "other".into();
    assert!(
        matches!(Dataplane::start(cfg), Err(StartError::Dpdk(m)) if m.contains("already initialised"))
    );
}

// --- net_pcap: a capture replayed into the appliance, its answers captured -----------------

fn pcap_input() -> Vec<Vec<u8>> {
    let peer = peer_iface("10.9.0.9", ONLINK_MAC);
    let mut arp = vec![0u8; 64];
    let n = build_arp_request(&peer, OUR_V4.parse().expect("ip"), &mut arp).expect("arp");
    arp.truncate(n);
    // The pcap port's MAC is not known when the capture is written: ARP is broadcast, and
    // the echo goes to the broadcast MAC too (the appliance does not filter UDP/ICMP by MAC).
    vec![arp, echo_request_v4([0xff; 6])]
}

fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) {
    let mut v = Vec::new();
    for x in [0xa1b2c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
        if x == 0x0004_0002 {
            v.extend_from_slice(&2u16.to_le_bytes());
            v.extend_from_slice(&4u16.to_le_bytes());
        } else {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    for (i, f) in frames.iter().enumerate() {
        for x in [i as u32, 0, f.len() as u32, f.len() as u32] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(f);
    }
    std::fs::write(path, v).expect("write pcap");
}

fn read_pcap(path: &std::path::Path) -> Vec<Vec<u8>> {
    let v = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= v.len() {
        let caplen = u32::from_le_bytes(v[at + 8..at + 12].try_into().expect("4")) as usize;
        at += 16;
        if at + caplen > v.len() {
            break;
        }
        out.push(v[at..at + caplen].to_vec());
        at += caplen;
    }
    out
}

#[test]
fn pcap_port_replays_a_capture_and_captures_the_answers() {
    let (env, _g) = env();
    let dp = Dataplane::start(config("net_pcap0", 1, 31000)).expect("start on net_pcap0");
    let out = env.pcap_dir.join("out.pcap");
    let mut frames = Vec::new();
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(10));
        frames = read_pcap(&out);
        if frames.len() >= 2 {
            break;
        }
    }
    drop(dp);
    let frames = if frames.len() >= 2 {
        frames
    } else {
        read_pcap(&out)
    };
    assert!(
        frames
            .iter()
            .any(|f| u16::from_be_bytes([f[12], f[13]]) == ETHERTYPE_ARP && f[21] == 2),
        "ARP reply captured: {frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| u16::from_be_bytes([f[12], f[13]]) == ETHERTYPE_IPV4 && f[34] == 0),
        "echo reply captured: {frames:?}"
    );
}

#[test]
fn extra_media_addresses_add_capacity_and_are_used_as_sources() {
    let (env, _g) = env();
    let mut cfg = config(ONE_Q, 1, 31000);
    cfg.port_max = 31003; // two pairs per address: one relay each
    cfg.extra_addresses = vec!["10.9.0.2".parse().expect("ip")];
    cfg.dpdk.addresses.push("10.9.0.2/24".into());
    let dp = Dataplane::start(cfg).expect("start");
    let mut net = DpdkNet::new(&env.one_q, None);
    let mut locals = Vec::new();
    for i in 0..2u16 {
        let (a, b) = (net.endpoint(), net.endpoint());
        let info = dp
            .create_relay(RelayRequest::with_remotes(Some(a), Some(b)))
            .expect("relay fits on one of the two addresses");
        net.send(a, info.legs[0].local, &rtp(0, i, 0, 1, 1));
        let (src, _) = net.recv(b, WAIT).expect("forwarded");
        assert_eq!(src, info.legs[1].local, "sent from the leg's own address");
        locals.push(info.legs[0].local.ip());
    }
    locals.sort();
    assert_eq!(
        locals,
        vec![
            "10.9.0.1".parse::<IpAddr>().expect("ip"),
            "10.9.0.2".parse().expect("ip")
        ]
    );
    assert!(matches!(
        dp.create_relay(RelayRequest::default()),
        Err(voxedge_dataplane::DataplaneError::PortsExhausted)
    ));
}

/// Checksums verified in software over the whole datagram (`verify_checksums`), the kernel's
/// way: the forwarded frames carry correct checksums all the same (DpdkNet checks).
#[test]
fn relay_scenario_with_checksums_verified_in_software() {
    let (env, _g) = env();
    let mut cfg = config(ONE_Q, 1, 31000);
    cfg.dpdk.verify_checksums = true;
    let dp = Dataplane::start(cfg).expect("start");
    relay_scenario(&dp, &mut DpdkNet::new(&env.one_q, None));
}

/// A datagram damaged before it reached the appliance (ADR 0019). Verifying in software
/// drops it and counts it; carrying the checksum (the default) forwards it with a checksum
/// that still fails at its receiver. A damaged IPv4 header is dropped either way: its
/// addresses decide where the datagram goes.
#[test]
fn damaged_datagrams_are_dropped_or_stay_detectable() {
    let (env, _g) = env();
    for verify in [false, true] {
        let mut cfg = config(ONE_Q, 1, 31000);
        cfg.dpdk.verify_checksums = verify;
        let dp = Dataplane::start(cfg).expect("start");
        let mut net = DpdkNet::new(&env.one_q, None);
        let (a, b) = (net.endpoint(), net.endpoint());
        let info = dp
            .create_relay(RelayRequest::with_remotes(Some(a), Some(b)))
            .expect("relay");
        let mac = net.appliance_mac;
        let frame = |tag: u32| {
            let mut buf = vec![0u8; 512];
            let n = build_udp_frame(
                &mut buf,
                PEER_MAC,
                mac,
                None,
                a,
                info.legs[0].local,
                0,
                &rtp(0, tag as u16, 0, 1, tag),
            )
            .expect("frame fits");
            buf.truncate(n);
            buf
        };
        // Intact: forwarded with right checksums.
        assert!(env.one_q.send(0, &frame(1)));
        let f = net.recv_frame(b, WAIT).expect("intact datagram forwarded");
        assert!(f.checksums_ok);
        // A payload byte flipped (past the RTP header, which the pipeline reads).
        let mut damaged = frame(2);
        let last = damaged.len() - 1;
        damaged[last] ^= 0x10;
        assert!(env.one_q.send(0, &damaged));
        let forwarded = net.recv_frame(b, Duration::from_millis(300));
        if verify {
            assert!(
                forwarded.is_none(),
                "verified: the damaged datagram is dropped"
            );
        } else {
            let f = forwarded.expect("carried: the damaged datagram goes on");
            assert_eq!(f.payload.last(), Some(&0x10), "the payload as it arrived");
            assert!(!f.checksums_ok, "its receiver still sees the damage");
        }
        // The IPv4 header damaged (TTL changed, checksum not).
        let mut bad_ip = frame(3);
        bad_ip[22] ^= 0x01;
        assert!(env.one_q.send(0, &bad_ip));
        assert!(net.recv_frame(b, Duration::from_millis(300)).is_none());
        let want = if verify { 2 } else { 1 };
        assert_eq!(
            metric(&dp, "voxedge_dpdk_bad_checksum_total"),
            want,
            "verify {verify}"
        );
    }
}
