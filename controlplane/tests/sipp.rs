//! sipp (from apt's `sip-tester`, installed by the test command) against `voxedge serve`: its
//! built-in UAC scenario calls the `echo` target; every call must complete (INVITE, 200, ACK,
//! BYE, 200). A missing sipp is a test failure, not a skip.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_voxedge");

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sipp_uac_calls_the_echo_target() {
    let sipp = Command::new("sipp").arg("-v").output();
    assert!(
        sipp.is_ok(),
        "sipp is not installed: run scripts/test (it installs sip-tester)"
    );
    let serve = Kill(
        Command::new(BIN)
            .args(["serve", "--admin-listen", "127.0.0.1:39151"])
            .args([
                "--sip-listen",
                "127.0.0.1:39150",
                "--media-bind",
                "127.0.0.1",
            ])
            .args(["--port-min", "33200", "--port-max", "33399", "--no-pin"])
            .env_remove("VOXEDGE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start voxedge serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get("http://127.0.0.1:39151/health").call().is_err() {
        assert!(Instant::now() < deadline, "voxedge serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = std::env::temp_dir().join(format!("voxedge-sipp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let stat = dir.join("stat.csv");
    let out = Command::new("sipp")
        .args(["-sn", "uac", "-s", "echo", "127.0.0.1:39150"])
        .args(["-i", "127.0.0.1", "-p", "39160"])
        .args(["-m", "30", "-r", "30", "-l", "30", "-d", "200"])
        .args(["-timeout", "30", "-nostdin", "-trace_stat", "-stf"])
        .arg(&stat)
        .current_dir(&dir)
        .output()
        .expect("run sipp");
    let csv = std::fs::read_to_string(&stat).unwrap_or_default();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(';').collect();
    let last: Vec<&str> = lines.last().unwrap_or("").split(';').collect();
    let field = |name: &str| -> String {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i))
            .map(|s| s.to_string())
            .unwrap_or_default()
    };
    assert!(
        out.status.success(),
        "sipp failed ({}): successful {} failed {}\n{}",
        out.status,
        field("SuccessfulCall(C)"),
        field("FailedCall(C)"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(field("SuccessfulCall(C)"), "30");
    assert_eq!(field("FailedCall(C)"), "0");
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}
