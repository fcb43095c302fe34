//! A real user agent from apt (baresip, package `baresip-core`, installed by the test command)
//! calls `sip:echo@…` on `voxedge serve`: the call is established, baresip receives its own
//! audio back through the dataplane, and hangs up. A missing baresip fails the test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Kill;

const BIN: &str = env!("CARGO_BIN_EXE_voxedge");

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn baresip_calls_the_echo_target_and_hears_itself() {
    assert!(
        Command::new("baresip").arg("-h").output().is_ok(),
        "baresip is not installed: run scripts/test (it installs baresip-core)"
    );
    let scratch = common::scratch_dir("baresip");
    let dir = scratch.path().to_path_buf();
    // An 8 kHz tone as baresip's microphone.
    let tone = dir.join("tone.wav");
    let n = 8000u32 * 10;
    let mut wav = Vec::with_capacity(44 + 2 * n as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + 2 * n).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    for v in [16u32, 0x0001_0001, 8000, 16000, 0x0010_0002] {
        wav.extend_from_slice(&v.to_le_bytes());
    }
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(2 * n).to_le_bytes());
    for i in 0..n {
        let s =
            (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 8000.0).sin()) as i16;
        wav.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(&tone, wav).expect("tone");
    std::fs::write(
        dir.join("config"),
        format!(
            "poll_method epoll\nsip_listen 127.0.0.1:27495\nmodule_path /usr/lib/baresip/modules\n\
module g711.so\nmodule aufile.so\nmodule menu.so\nmodule account.so\n\
audio_player aufile,{heard}\naudio_source aufile,{tone}\naudio_alert aufile,{alert}\n\
rtp_ports 36200-36299\n",
            heard = dir.join("heard.wav").display(),
            tone = tone.display(),
            alert = dir.join("alert.wav").display(),
        ),
    )
    .expect("config");
    std::fs::write(
        dir.join("accounts"),
        "<sip:tester@127.0.0.1>;regint=0;audio_codecs=PCMU\n",
    )
    .expect("accounts");
    std::fs::write(dir.join("contacts"), "\n").expect("contacts");

    let _serve = Kill(
        Command::new(BIN)
            .args(["serve", "--admin-listen", "127.0.0.1:27491"])
            .args(["--api-listen", "127.0.0.1:0", "--ng-listen", "127.0.0.1:0"])
            .current_dir(&dir)
            .args([
                "--sip-listen",
                "127.0.0.1:27490",
                "--media-bind",
                "127.0.0.1",
            ])
            .args(["--port-min", "24800", "--port-max", "24899", "--no-pin"])
            .env_remove("VOXEDGE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start voxedge serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get("http://127.0.0.1:27491/health").call().is_err() {
        assert!(Instant::now() < deadline, "voxedge serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("timeout")
        .args(["30", "baresip", "-f"])
        .arg(&dir)
        .args(["-e", "/dial sip:echo@127.0.0.1:27490", "-t", "5"])
        .output()
        .expect("run baresip");
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Call established"), "baresip log:\n{log}");
    assert!(
        log.contains("incoming rtp for 'audio' established"),
        "baresip log:\n{log}"
    );
    let metrics = ureq::get("http://127.0.0.1:27491/metrics")
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    assert!(
        metric(&metrics, "voxedge_packets_forwarded_total") >= 100.0,
        "baresip's audio echoed through the dataplane:\n{metrics}"
    );
    assert_eq!(metric(&metrics, "voxedge_sip_calls_answered_total"), 1.0);
    assert_eq!(
        metric(&metrics, "voxedge_sip_calls_active"),
        0.0,
        "baresip hung up"
    );
}
