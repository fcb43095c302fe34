//! The relay scenario, run identically on the in-memory backend and on kernel sockets:
//! addresses rewritten, a source change made invisible by SSRC/seq/ts rewriting, RTCP relayed
//! on its own port, DTMF reported, bad packets counted by reason, strict source enforced.
//! (The same scenarios run on DPDK in `dpdk_backend.rs`.)

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use voxedge_dataplane::config::{DataplaneConfig, OverlapBursts, RawTx};
use voxedge_dataplane::{Dataplane, RelayRequest};
use voxedge_system_tests::scenarios::{
    conference_scenario, echo_scenario, echo_toggle_scenario, playback_scenario, record_scenario,
    relay_scenario, strict_source_scenario,
};
use voxedge_system_tests::{MemNet, SocketNet};

fn config(port_min: u16) -> DataplaneConfig {
    DataplaneConfig {
        workers: 1,
        pin_cores: false,
        bind: "127.0.0.1".parse().expect("ip"),
        port_min,
        port_max: port_min + 99,
        idle_wait_us: 200,
        media_timeout_ms: 300,
        ..Default::default()
    }
}

#[test]
fn relay_on_memory_backend() {
    let (dp, net) = Dataplane::start_memory(config(31000)).expect("start");
    relay_scenario(&dp, &mut MemNet::new(net));
}

/// Datagrams the workers sent through their raw socket, once published (bounded wait for at
/// least `min`).
fn raw_sent(dp: &Dataplane, min: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let n: u64 = dp.workers().map(|w| w.tx_raw.load(Ordering::Relaxed)).sum();
        if n >= min || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn relay_on_socket_backend() {
    // `on`, not `auto`: CI runs as root, and a missing capability must fail here, not fall back.
    let mut cfg = config(31200);
    cfg.socket_raw_tx = RawTx::On;
    let dp = Dataplane::start(cfg).expect("start");
    relay_scenario(&dp, &mut SocketNet::default());
    assert!(
        raw_sent(&dp, 100) >= 100,
        "the relay's datagrams went out raw"
    );
}

#[test]
fn relay_on_socket_backend_without_raw_transmit() {
    let mut cfg = config(19900);
    cfg.socket_raw_tx = RawTx::Off;
    let dp = Dataplane::start(cfg).expect("start");
    relay_scenario(&dp, &mut SocketNet::default());
    assert_eq!(raw_sent(&dp, 1), 0);
}

#[test]
fn strict_source_on_memory_backend() {
    let (dp, net) = Dataplane::start_memory(config(31400)).expect("start");
    strict_source_scenario(&dp, &mut MemNet::new(net));
}

#[test]
fn strict_source_on_socket_backend() {
    let dp = Dataplane::start(config(31600)).expect("start");
    strict_source_scenario(&dp, &mut SocketNet::default());
}

#[test]
fn ports_exhausted_is_an_error_not_a_panic() {
    let mut cfg = config(31800);
    cfg.port_max = 31803; // two pairs: one relay
    let (dp, _net) = Dataplane::start_memory(cfg).expect("start");
    dp.create_relay(RelayRequest::default())
        .expect("first fits");
    assert!(matches!(
        dp.create_relay(RelayRequest::default()),
        Err(voxedge_dataplane::DataplaneError::PortsExhausted)
    ));
}

#[test]
fn a_port_held_by_another_program_is_skipped_then_reported() {
    let _blocker = std::net::UdpSocket::bind("127.0.0.1:31900").expect("bind blocker");
    let mut cfg = config(31900);
    cfg.port_max = 31907; // four pairs: 31900 (blocked), 31902, 31904, 31906
    let dp = Dataplane::start(cfg).expect("start");
    // The first relay skips the pair with the taken port and uses the next ones.
    let info = dp
        .create_relay(RelayRequest::default())
        .expect("another program's port is skipped");
    assert!(
        info.legs.iter().all(|l| l.local.port() != 31900),
        "{info:?}"
    );
    // Only the blocked pair and its partner are left: a clear error naming the port.
    let e = dp
        .create_relay(RelayRequest::default())
        .expect_err("port 31900 is taken");
    assert!(e.to_string().contains("31900"), "{e}");
    // Released ports are reusable once the blocker is gone.
    drop(_blocker);
    dp.delete_relay(info.id).expect("delete");
    dp.create_relay(RelayRequest::default())
        .expect("ports free again");
}

/// Waits (bounded) for a queued creation's outcome.
fn settled(dp: &Dataplane, q: &voxedge_dataplane::QueuedRelay) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = dp.settle(q) {
            return r.map_err(|e| e.to_string());
        }
        assert!(Instant::now() < deadline, "the worker answers the creation");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A relay created without waiting is known at once; the worker's answer comes from
/// `settle`. One whose port another program holds fails there, naming the port, and gives its
/// ports back.
#[test]
fn a_queued_relay_settles_and_a_failed_one_gives_its_ports_back() {
    let blocker = std::net::UdpSocket::bind("127.0.0.1:19800").expect("bind blocker");
    let mut cfg = config(19800);
    cfg.port_max = 19807; // four pairs: two relays
    let dp = Dataplane::start(cfg).expect("start");
    let (info, q) = dp
        .create_relay_queued(RelayRequest::default())
        .expect("queued");
    assert_eq!(q.id(), info.id);
    assert_eq!(dp.relay_count(), 1, "known before the worker answers");
    assert!(
        info.legs.iter().any(|l| l.local.port() == 19800),
        "{info:?}"
    );
    let e = settled(&dp, &q).expect_err("port 19800 is taken");
    assert!(e.contains("19800"), "{e}");
    assert_eq!(dp.relay_count(), 0, "the failed relay is gone");
    assert!(dp.settle(&q).is_some(), "asking again is harmless");
    drop(blocker);
    // Its ports came back: both relays the range holds are made and run.
    let (a, qa) = dp
        .create_relay_queued(RelayRequest::default())
        .expect("first");
    let (b, qb) = dp
        .create_relay_queued(RelayRequest::default())
        .expect("second");
    settled(&dp, &qa).expect("first runs");
    settled(&dp, &qb).expect("second runs");
    assert!(matches!(
        dp.create_relay_queued(RelayRequest::default()),
        Err(voxedge_dataplane::DataplaneError::PortsExhausted)
    ));
    // A command sent right behind a queued creation finds the relay.
    dp.delete_relay(a.id).expect("delete a");
    let (c, qc) = dp
        .create_relay_queued(RelayRequest::default())
        .expect("third");
    dp.query_relay(c.id)
        .expect("the query queues behind the creation");
    settled(&dp, &qc).expect("third runs");
    dp.delete_relay(b.id).expect("delete b");
    dp.delete_relay(c.id).expect("delete c");
    assert_eq!(dp.relay_count(), 0);
}

#[test]
fn echo_on_memory_and_socket_backends() {
    let (dp, net) = Dataplane::start_memory(config(31500)).expect("start");
    echo_scenario(&dp, &mut MemNet::new(net));
    let dp = Dataplane::start(config(31700)).expect("start");
    echo_scenario(&dp, &mut SocketNet::default());
}

#[test]
fn playback_and_echo_toggle_on_memory_and_socket_backends() {
    let (dp, net) = Dataplane::start_memory(config(31100)).expect("start");
    let mut net = MemNet::new(net);
    playback_scenario(&dp, &mut net);
    echo_toggle_scenario(&dp, &mut net);
    let dp = Dataplane::start(config(31300)).expect("start");
    let mut net = SocketNet::default();
    playback_scenario(&dp, &mut net);
    echo_toggle_scenario(&dp, &mut net);
}

#[test]
fn recording_tap_on_memory_and_socket_backends() {
    let (dp, net) = Dataplane::start_memory(config(32100)).expect("start");
    record_scenario(&dp, &mut MemNet::new(net));
    let dp = Dataplane::start(config(32300)).expect("start");
    record_scenario(&dp, &mut SocketNet::default());
}

#[test]
fn conference_mixing_on_memory_and_socket_backends() {
    let (dp, net) = Dataplane::start_memory(config(32500)).expect("start");
    conference_scenario(&dp, &mut MemNet::new(net));
    let dp = Dataplane::start(config(19700)).expect("start");
    conference_scenario(&dp, &mut SocketNet::default());
}

/// The scenarios with every received burst held until the worker's next receive call
/// (`overlap_bursts = on`, what DPDK runs by default), on the in-memory backend and on kernel
/// sockets: a held burst goes out when no more traffic comes (the scenarios wait for each
/// answer), and played and mixed packets share the worker with held bursts.
#[test]
fn scenarios_with_overlapped_bursts_on_memory_and_socket_backends() {
    let overlapped = |port_min| DataplaneConfig {
        overlap_bursts: OverlapBursts::On,
        ..config(port_min)
    };
    let (dp, net) = Dataplane::start_memory(overlapped(19200)).expect("start");
    assert!(dp.workers().all(|w| w.overlapped.load(Ordering::Relaxed)));
    let mut net = MemNet::new(net);
    relay_scenario(&dp, &mut net);
    strict_source_scenario(&dp, &mut net);
    playback_scenario(&dp, &mut net);
    conference_scenario(&dp, &mut net);
    let dp = Dataplane::start(overlapped(19600)).expect("start");
    let mut net = SocketNet::default();
    relay_scenario(&dp, &mut net);
    echo_scenario(&dp, &mut net);
    conference_scenario(&dp, &mut net);
}
