//! AF_XDP as a configuration of the DPDK backend: `voxedge media` with a `net_af_xdp` vdev on
//! one end of a veth pair inside a network namespace this test creates; a real Linux stack in
//! a second namespace pings the appliance (ARP + ICMP answered by VoxEdge) and sends RTP
//! through a relay with ordinary UDP sockets. Needs root (CI runs as root) and iproute2,
//! ethtool and ping (the test command installs them); it is not skipped.
#![cfg(feature = "dpdk")]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_voxedge");

struct Netns {
    peer: String,
    appliance: String,
    child: Option<Child>,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.peer, &self.appliance] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

#[test]
fn af_xdp_port_answers_a_kernel_peer_and_relays_its_rtp() {
    let id = std::process::id();
    let mut env = Netns {
        peer: format!("vxpeer{id}"),
        appliance: format!("vxapp{id}"),
        child: None,
    };
    let (va, vb) = (format!("vxa{id}"), format!("vxb{id}"));
    sh(&["ip", "netns", "add", &env.peer]);
    sh(&["ip", "netns", "add", &env.appliance]);
    sh(&[
        "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
    ]);
    sh(&["ip", "link", "set", &va, "netns", &env.peer]);
    sh(&["ip", "link", "set", &vb, "netns", &env.appliance]);
    sh(&[
        "ip",
        "-n",
        &env.peer,
        "addr",
        "add",
        "10.66.0.2/24",
        "dev",
        &va,
    ]);
    for (ns, dev) in [(&env.peer, &va), (&env.appliance, &vb)] {
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        // A veth leaves checksums to a NIC it does not have: finish them in the kernel.
        sh(&["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"]);
    }
    let scratch = common::scratch_dir("afxdp");
    let dir = scratch.path();
    let cfg = dir.join("voxedge.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[admin]
listen = "127.0.0.1:39141"
[management]
listen = "127.0.0.1:39142"
[dataplane]
backend = "dpdk"
workers = 1
pin_cores = false
bind = "10.66.0.1"
port_min = 34400
port_max = 34499
[dataplane.dpdk]
vdevs = ["net_af_xdp0,iface={vb},start_queue=0,queue_count=1"]
port = "net_af_xdp0"
no_huge = true
addresses = ["10.66.0.1/24"]
file_prefix = "vxafxdp{id}"
eal_args = ["--no-shconf", "--log-level=*:warning"]
mbufs = 4095
idle_sleep_us = 100
"#
        ),
    )
    .expect("config");
    env.child = Some(
        Command::new("ip")
            .args(["netns", "exec", &env.appliance, BIN, "media", "--config"])
            .arg(&cfg)
            .env_remove("VOXEDGE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start voxedge media in the namespace"),
    );
    let health = in_ns(&env.appliance, || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = ureq::get("http://127.0.0.1:39141/health").call() {
                return r.into_json::<serde_json::Value>().expect("json");
            }
            assert!(Instant::now() < deadline, "voxedge media did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert_eq!(health["status"], "ok");

    // The kernel peer resolves the appliance by ARP and gets ICMP echo replies.
    sh(&[
        "ip",
        "netns",
        "exec",
        &env.peer,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "10.66.0.1",
    ]);

    let relay: serde_json::Value = in_ns(&env.appliance, || {
        ureq::post("http://127.0.0.1:39142/v1/relays")
            .send_json(serde_json::json!({
                "a": {"remote": "10.66.0.2:5000", "rtcp_mux": true},
                "b": {"remote": "10.66.0.2:5002", "rtcp_mux": true},
            }))
            .expect("create relay")
            .into_json()
            .expect("json")
    });
    let a_local: SocketAddr = relay["a"]["local"]
        .as_str()
        .expect("a")
        .parse()
        .expect("addr");
    let b_local: SocketAddr = relay["b"]["local"]
        .as_str()
        .expect("b")
        .parse()
        .expect("addr");
    let received = in_ns(&env.peer, move || {
        let s1 = UdpSocket::bind("10.66.0.2:5000").expect("bind 5000");
        let s2 = UdpSocket::bind("10.66.0.2:5002").expect("bind 5002");
        s1.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
        s2.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("t");
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for seq in 0u16..20 {
            let mut rtp = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
            rtp[2..4].copy_from_slice(&seq.to_be_bytes());
            rtp.extend_from_slice(&[0xd5; 160]);
            s1.send_to(&rtp, a_local).expect("send a→");
            if let Ok((n, from)) = s2.recv_from(&mut buf) {
                got.push((from, buf[2..4].to_vec(), n));
            }
            // And back: b's far end talks to a's far end.
            s2.send_to(&rtp, b_local).expect("send b→");
            if let Ok((n, from)) = s1.recv_from(&mut buf) {
                got.push((from, buf[2..4].to_vec(), n));
            }
        }
        got
    });
    assert!(
        received.len() >= 38,
        "RTP relayed both ways through AF_XDP (got {} of 40)",
        received.len()
    );
    assert!(received
        .iter()
        .all(|(from, _, n)| (*from == a_local || *from == b_local) && *n == 172));
    let metrics = in_ns(&env.appliance, || {
        ureq::get("http://127.0.0.1:39141/metrics")
            .call()
            .expect("metrics")
            .into_string()
            .expect("text")
    });
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(value("voxedge_dpdk_arp_replies_total") >= 1.0, "{metrics}");
    assert!(value("voxedge_dpdk_icmp_echo_replies_total") >= 3.0);
    assert_eq!(value("voxedge_dpdk_bad_checksum_total"), 0.0);
}
