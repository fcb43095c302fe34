//! Kamailio interop: Kamailio from apt, its `rtpengine` module pointed at voxedge's ng
//! listener (tests/ng/kamailio.cfg), relays a sipp UAC's call to a sipp UAS; the media of the
//! call flows through voxedge's dataplane (both legs count packets mid-call) and the call is
//! deleted when the BYE passes.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use voxedge_bench::proc::KillGroup;
use voxedge_controlplane::app::{self, Role};
use voxedge_controlplane::config::Config;
use voxedge_dataplane::BackendKind;

mod common;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_rtpengine_module_drives_voxedge() {
    assert!(
        Command::new("kamailio").arg("-v").output().is_ok(),
        "kamailio is not installed: run scripts/test (it installs the kamailio package)"
    );
    let scratch = common::scratch_dir("kamailio");
    let dir = scratch.path().to_path_buf();
    std::fs::create_dir_all(dir.join("run")).expect("dir");
    std::os::unix::fs::symlink("/usr/share/sip-tester", dir.join("pcap")).expect("pcap link");
    let mut c = Config::default();
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.management.listen = "127.0.0.1:0".parse().expect("addr");
    c.ng.listen = "127.0.0.1:0".parse().expect("addr");
    c.dataplane.workers = 1;
    c.dataplane.pin_cores = false;
    c.dataplane.bind = "127.0.0.1".parse().expect("ip");
    c.dataplane.advertise = Some("127.0.0.1".parse().expect("ip"));
    c.dataplane.port_min = 24200;
    c.dataplane.port_max = 24299;
    let r = app::start(Role::Media, c, BackendKind::Socket)
        .await
        .expect("start voxedge media");
    let ng = r.ng.expect("ng listener");
    let stats = r.ng_stats.clone().expect("ng stats");
    let dp = r.dataplane.clone();
    let (sip, uas, uac) = (free_udp_port(), free_udp_port(), free_udp_port());
    let (uas_media, uac_media) = (free_udp_port(), free_udp_port());
    let _kamailio = voxedge_bench::sip::start_kamailio_proxy(&dir, sip, ng, uas, (64, 8))
        .expect("start kamailio");
    let _uas = KillGroup(
        Command::new("sipp")
            .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &uas.to_string()])
            .args([
                "-mi",
                "127.0.0.1",
                "-mp",
                &uas_media.to_string(),
                "-rtp_echo",
            ])
            .args(["-m", "1", "-nostdin", "-timeout", "60"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("sipp uas"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let uac_child = Command::new("sipp")
        .arg(format!("127.0.0.1:{sip}"))
        .args(["-sn", "uac_pcap", "-i", "127.0.0.1", "-p", &uac.to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &uac_media.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout", "60", "-timeout_error"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("sipp uac");
    let mut uac_child = KillGroup(uac_child);
    // Mid-call (the UAC plays its pcap for about 8 s): one relay, media on both legs.
    let dp2 = dp.clone();
    let mid = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let relays = dp2.list_relays();
            if let Some(info) = relays.first() {
                if let Ok((_, snap)) = dp2.query_relay(info.id) {
                    let (a, b) = (
                        snap.legs[0].rtp.counters.packets_in,
                        snap.legs[1].rtp.counters.packets_in,
                    );
                    if a > 50 && b > 50 {
                        return (relays.len(), a, b);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no media through voxedge within 20 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .expect("mid-call check");
    assert_eq!(mid.0, 1, "one call, one relay");
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = uac_child.0.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "sipp uac did not finish");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("uac");
    let log = std::fs::read_to_string(dir.join("kamailio.log")).unwrap_or_default();
    assert!(
        status.success(),
        "sipp uac failed ({status}); kamailio log:\n{log}"
    );
    // The BYE passed through kamailio: its rtpengine_delete() removed the call.
    let deadline = Instant::now() + Duration::from_secs(5);
    while dp.relay_count() > 0 {
        assert!(Instant::now() < deadline, "the call was not deleted on BYE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert!(
        stats.requests.load(Relaxed) >= 4,
        "ping, offer, answer, delete"
    );
    assert_eq!(stats.errors.load(Relaxed), 0, "kamailio log:\n{log}");
    println!(
        "mid-call packets through voxedge: caller leg {}, callee leg {}",
        mid.1, mid.2
    );
    r.shutdown().await;
}
