//! `<Dial><Conference>` end to end: three sipp callers, each playing its own tone (a capture
//! written by the test), join one room; what each caller hears is captured on a socket of
//! the test (the port its SDP offers) and checked by spectrum (Goertzel power at each tone):
//! - everyone hears the two others and not itself;
//! - muted (REST `Muted=true`), a participant is not heard; on hold (`Hold=true`) it neither
//!   hears nor is heard; coaching one participant (`Coaching`, `CallSidToCoach`), only that
//!   participant hears it;
//! - the conference's status callbacks arrive (start, join, mute, unmute, hold, unhold, leave,
//!   end) numbered in order; the Conference and Participant resources follow;
//! - with `record`, each participant's track holds only its own tone and the mix all three;
//! - ending the conference through the API hangs the callers up (their documents run out);
//! - a caller greeted before entering a room mixed on another worker moves there first.

mod common;
use common::{basic_auth as auth, xml};

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use voxedge_controlplane::app::{self, Role};
use voxedge_controlplane::config::SipRoute;
use voxedge_controlplane::voice::{self, audio};
use voxedge_dataplane::g711::Law;
use voxedge_dataplane::BackendKind;

use common::Seen;

#[derive(Clone, Default)]
struct AppServer {
    seen: Seen,
}

async fn handle(State(app): State<AppServer>, req: Request) -> Response {
    let path = common::note_request(&app.seen, req).await;
    match path.as_str() {
        "/conf" => xml(
            r#"<Response><Dial><Conference beep="false" record="record-from-start" trim="do-not-trim" statusCallback="/confstatus" statusCallbackEvent="start end join leave mute hold" recordingStatusCallback="/recstatus">room one</Conference></Dial></Response>"#,
        ),
        "/wait-room" => xml(
            r#"<Response><Dial><Conference beep="false" startConferenceOnEnter="false" waitUrl="/hold.wav" statusCallback="/confstatus" statusCallbackEvent="start end join leave">room two</Conference></Dial></Response>"#,
        ),
        "/greet-room" => xml(
            r#"<Response><Say>Welcome.</Say><Dial><Conference beep="false">room three</Conference></Dial></Response>"#,
        ),
        "/hold.wav" => (
            [("content-type", "audio/wav")],
            voice::record::wav(&tone_samples(WAIT_TONE, 8000 * 2), 8000),
        )
            .into_response(),
        "/confstatus" | "/recstatus" | "/status" => (StatusCode::NO_CONTENT, "").into_response(),
        _ => (StatusCode::NOT_FOUND, "").into_response(),
    }
}

/// Tones of the three callers (Hz): no one's harmonics near another's.
const TONES: [f64; 3] = [500.0, 1100.0, 1700.0];

/// The wait audio's tone (Hz).
const WAIT_TONE: f64 = 300.0;

fn tone_samples(hz: f64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| ((2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin() * 6000.0) as i16)
        .collect()
}

/// A capture of `secs` seconds of RTP (PCMU, 20 ms) carrying a sine at `hz`.
fn tone_pcap(hz: f64, secs: u32) -> Vec<u8> {
    let mut v = Vec::new();
    // pcap global header: magic, v2.4, zone, sigfigs, snaplen, Ethernet.
    v.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&4u16.to_le_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&65535u32.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    let mut n = 0usize;
    for i in 0..(secs * 50) {
        let mut rtp = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
        rtp[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        rtp[4..8].copy_from_slice(&(i * 160).to_be_bytes());
        for _ in 0..160 {
            let s = (2.0 * std::f64::consts::PI * hz * n as f64 / 8000.0).sin() * 6000.0;
            rtp.push(Law::Mu.encode(s as i16));
            n += 1;
        }
        let udp_len = 8 + rtp.len();
        let ip_len = 20 + udp_len;
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45,
            0,
            (ip_len >> 8) as u8,
            ip_len as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        f.extend_from_slice(&[0x1f, 0x40, 0x1f, 0x42]);
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&rtp);
        let us = u64::from(i) * 20_000;
        v.extend_from_slice(&((us / 1_000_000) as u32).to_le_bytes());
        v.extend_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
        v.extend_from_slice(&(f.len() as u32).to_le_bytes());
        v.extend_from_slice(&(f.len() as u32).to_le_bytes());
        v.extend_from_slice(&f);
    }
    v
}

/// Relative power of `hz` in `s`: Goertzel over 50 ms blocks (whole cycles of every tone),
/// summed without regard to phase, so the jitter buffer's adjustments (which shift a tone's
/// phase) do not hide it. 1.0 for a pure tone of that frequency, whatever its level.
fn tone_share(s: &[i16], hz: f64) -> f64 {
    const BLOCK: usize = 400;
    let w = 2.0 * std::f64::consts::PI * hz / 8000.0;
    let (mut power, mut energy) = (0.0f64, 0.0f64);
    for b in s.chunks_exact(BLOCK) {
        let (mut q1, mut q2) = (0.0f64, 0.0f64);
        for &x in b {
            let x = f64::from(x);
            energy += x * x;
            let q0 = 2.0 * w.cos() * q1 - q2 + x;
            q2 = q1;
            q1 = q0;
        }
        power += q1 * q1 + q2 * q2 - 2.0 * w.cos() * q1 * q2;
    }
    // A pure tone: power ≈ (N·A/2)² per block, energy ≈ N·A²/2 → ratio ≈ 1.
    if energy < 1.0 {
        0.0
    } else {
        power / (energy * BLOCK as f64 / 2.0)
    }
}

/// Which tones a window of audio holds (share of its power above 10 %).
fn tones_in(s: &[i16]) -> Vec<usize> {
    (0..3).filter(|&k| tone_share(s, TONES[k]) > 0.10).collect()
}

/// Audio a caller hears: (arrival, samples) per packet.
type Heard = Arc<Mutex<Vec<(Instant, Vec<i16>)>>>;

fn listen(sock: UdpSocket, heard: Heard, until: Instant) {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            if n > 12 && buf[1] & 0x7f == 0 {
                let pcm = buf[12..n].iter().map(|b| Law::Mu.decode(*b)).collect();
                heard.lock().expect("heard").push((Instant::now(), pcm));
            }
        }
    }
}

/// A sipp caller to `number` playing `TONES[i]` (a capture written in `dir`) from SIP and media
/// ports `ports`; what it hears (at a socket its SDP offers) is collected until `deadline`.
fn tone_caller(
    dir: &std::path::Path,
    i: usize,
    number: &str,
    sip: std::net::SocketAddr,
    ports: (u16, u16),
    deadline: Instant,
) -> (Heard, tokio::task::JoinHandle<(bool, String)>) {
    let pcap = dir.join(format!("tone{i}-{}.pcap", ports.0));
    std::fs::write(&pcap, tone_pcap(TONES[i], 25)).expect("pcap");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("rtp sink");
    let sink = sock.local_addr().expect("addr").port().to_string();
    let heard: Heard = Arc::default();
    let h = heard.clone();
    std::thread::spawn(move || listen(sock, h, deadline));
    let number = number.to_string();
    let caller = tokio::task::spawn_blocking(move || {
        let (sip_port, media_port) = (ports.0.to_string(), ports.1.to_string());
        let pcap = pcap.display().to_string();
        common::sipp_call(
            "uac_conference.xml",
            &number,
            sip,
            &[
                "-i",
                "127.0.0.1",
                "-p",
                &sip_port,
                "-mi",
                "127.0.0.1",
                "-mp",
                &media_port,
                "-key",
                "rtp_sink",
                &sink,
                "-key",
                "tone_pcap",
                &pcap,
            ],
        )
    });
    (heard, caller)
}

/// The audio heard between `from` and `to`.
fn window(heard: &Heard, from: Instant, to: Instant) -> Vec<i16> {
    heard
        .lock()
        .expect("heard")
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .flat_map(|(_, s)| s.iter().copied())
        .collect()
}

fn get_json(url: &str, a: &str) -> Value {
    ureq::get(url)
        .set("Authorization", a)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_json()
        .expect("json")
}

/// [`get_json`] off the async runtime.
async fn get_async(url: String, a: &str) -> Value {
    let a = a.to_string();
    tokio::task::spawn_blocking(move || get_json(&url, &a))
        .await
        .expect("join")
}

fn post_form(url: &str, a: &str, form: &[(&str, &str)]) -> Value {
    ureq::post(url)
        .set("Authorization", a)
        .send_form(form)
        .unwrap_or_else(|e| match e {
            ureq::Error::Status(s, r) => {
                panic!("POST {url}: {s} {}", r.into_string().unwrap_or_default())
            }
            e => panic!("POST {url}: {e}"),
        })
        .into_json()
        .expect("json")
}

/// A `voxedge serve` with two dataplane workers (callers' media starts on either; a room mixes
/// on one), the test's app server, an account, and `numbers` answered by the app's `path`.
struct Node {
    r: app::Running,
    app: AppServer,
    api: String,
    sip: std::net::SocketAddr,
    sid: String,
    auth: String,
    /// Removed when the test ends.
    scratch: tempfile::TempDir,
}

async fn node(
    name: &str,
    port_min: u16,
    routes: Vec<SipRoute>,
    numbers: &[&str],
    path: &str,
) -> Node {
    let app = AppServer::default();
    let app_port =
        common::serve_app(axum::Router::new().fallback(handle).with_state(app.clone())).await;
    let scratch = common::scratch_dir(name);
    let mut c = common::serve_config(scratch.path(), port_min);
    c.dataplane.workers = 2;
    c.sip.routes = routes;
    let r = app::start(Role::Serve, c, BackendKind::Socket)
        .await
        .expect("start");
    let api = format!("http://{}", r.api.expect("api"));
    let sip = r.sip_udp.expect("sip");
    let store = r.store.clone().expect("store");
    let (acc, token) = store.create_account(name, None).await.expect("account");
    let auth = auth(&acc.sid, &token);
    for number in numbers {
        let (url, a, voice, number) = (
            format!(
                "{api}/2010-04-01/Accounts/{}/IncomingPhoneNumbers.json",
                acc.sid
            ),
            auth.clone(),
            format!("http://127.0.0.1:{app_port}{path}"),
            number.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            post_form(
                &url,
                &a,
                &[("PhoneNumber", &number), ("VoiceUrl", voice.as_str())],
            )
        })
        .await
        .expect("join");
    }
    Node {
        r,
        app,
        api,
        sip,
        sid: acc.sid,
        auth,
        scratch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_callers_conference_with_mute_hold_coach_and_tracks() {
    let numbers = ["+15550600", "+15550601", "+15550602"];
    let n = node("conference", 30400, Vec::new(), &numbers, "/conf").await;
    let (api, sip, sid, a, app_state) = (
        n.api.clone(),
        n.sip,
        n.sid.clone(),
        n.auth.clone(),
        n.app.clone(),
    );
    let dir = n.scratch.path().to_path_buf();

    // Each caller: its tone capture, a socket hearing for it, a sipp call.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut heard: Vec<Heard> = Vec::new();
    let mut callers = Vec::new();
    for (i, number) in numbers.iter().enumerate() {
        let ports = (29590 + i as u16, 29800 + 10 * i as u16);
        let (h, caller) = tone_caller(&dir, i, number, sip, ports, deadline);
        heard.push(h);
        callers.push(caller);
    }

    // The room, and who is who (by the number each called).
    let list = format!("{api}/2010-04-01/Accounts/{sid}/Conferences.json");
    let (conf, members) = {
        let (list, a) = (list.clone(), a.clone());
        let (api, sid) = (api.clone(), sid.clone());
        tokio::task::spawn_blocking(move || {
            for _ in 0..100 {
                let l = get_json(&format!("{list}?FriendlyName=room%20one"), &a);
                if let Some(cf) = l["conferences"][0]["sid"].as_str() {
                    let p = get_json(
                        &format!(
                            "{api}/2010-04-01/Accounts/{sid}/Conferences/{cf}/Participants.json"
                        ),
                        &a,
                    );
                    let ps = p["participants"].as_array().cloned().unwrap_or_default();
                    if ps.len() == 3 {
                        let mut by_number = Vec::new();
                        for n in numbers {
                            let who = ps
                                .iter()
                                .filter_map(|p| p["call_sid"].as_str())
                                .find(|cs| {
                                    let call = get_json(
                                        &format!("{api}/2010-04-01/Accounts/{sid}/Calls/{cs}.json"),
                                        &a,
                                    );
                                    call["to"].as_str() == Some(n)
                                })
                                .expect("participant of each number")
                                .to_string();
                            by_number.push(who);
                        }
                        return (cf.to_string(), by_number);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("the three callers never were in one conference");
        })
        .await
        .expect("join")
    };
    let conf_url = format!("{api}/2010-04-01/Accounts/{sid}/Conferences/{conf}");
    let part = |i: usize| format!("{conf_url}/Participants/{}.json", members[i]);
    let update = |url: String, form: Vec<(&'static str, String)>| {
        let a = a.clone();
        tokio::task::spawn_blocking(move || {
            let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_form(&url, &a, &f)
        })
    };
    let fetch = |url: String| {
        let a = a.clone();
        tokio::task::spawn_blocking(move || get_json(&url, &a))
    };

    // Phase windows: settle 1.5 s after each change, listen 2 s.
    let settle = Duration::from_millis(1500);
    let listen_for = Duration::from_millis(2000);
    let mut phases: Vec<(&str, [Vec<usize>; 3], Instant)> = Vec::new();
    let mark = |phases: &mut Vec<(&'static str, [Vec<usize>; 3], Instant)>, name, expect| {
        phases.push((name, expect, Instant::now() + settle));
    };
    mark(
        &mut phases,
        "all talking",
        [vec![1, 2], vec![0, 2], vec![0, 1]],
    );
    tokio::time::sleep(settle + listen_for).await;

    let p = update(part(1), vec![("Muted", "true".into())])
        .await
        .expect("join");
    assert_eq!(p["muted"], Value::Bool(true), "{p}");
    assert_eq!(p["call_sid"].as_str(), Some(members[1].as_str()), "{p}");
    mark(&mut phases, "B muted", [vec![2], vec![0, 2], vec![0]]);
    tokio::time::sleep(settle + listen_for).await;

    update(part(1), vec![("Muted", "false".into())])
        .await
        .expect("join");
    let p = update(part(2), vec![("Hold", "true".into())])
        .await
        .expect("join");
    assert_eq!(p["hold"], Value::Bool(true), "{p}");
    mark(&mut phases, "C on hold", [vec![1], vec![0], vec![]]);
    tokio::time::sleep(settle + listen_for).await;

    update(part(2), vec![("Hold", "false".into())])
        .await
        .expect("join");
    let p = update(
        part(1),
        vec![
            ("Coaching", "true".into()),
            ("CallSidToCoach", members[0].clone()),
        ],
    )
    .await
    .expect("join");
    assert_eq!(p["coaching"], Value::Bool(true), "{p}");
    assert_eq!(
        p["call_sid_to_coach"].as_str(),
        Some(members[0].as_str()),
        "{p}"
    );
    mark(
        &mut phases,
        "B coaches A",
        [vec![1, 2], vec![0, 2], vec![0]],
    );
    tokio::time::sleep(settle + listen_for).await;

    let listed = fetch(format!("{conf_url}/Participants.json?Coaching=true"))
        .await
        .expect("join");
    assert_eq!(
        listed["participants"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let live = fetch(format!("{conf_url}.json")).await.expect("join");
    assert_eq!(live["status"], "in-progress", "{live}");

    // Ending it through the API hangs every caller up.
    let ended = update(
        format!("{conf_url}.json"),
        vec![("Status", "completed".into())],
    )
    .await
    .expect("join");
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(
        ended["reason_conference_ended"], "conference-ended-via-api",
        "{ended}"
    );
    for (i, c) in callers.into_iter().enumerate() {
        let (ok, out) = c.await.expect("join");
        assert!(ok, "caller {i}: {out}");
    }

    let metrics = common::metrics(n.r.admin).await;
    let mix_lines: String = metrics
        .lines()
        .filter(|l| {
            l.starts_with("voxedge_mix")
                || l.starts_with("voxedge_drops")
                || l.starts_with("voxedge_packets")
        })
        .collect::<Vec<_>>()
        .join("\n");
    for (name, expect, from) in &phases {
        for (i, h) in heard.iter().enumerate() {
            let s = window(h, *from, *from + listen_for);
            // A participant on hold is sent nothing; the others hear at least half the window.
            assert!(
                expect[i].is_empty() || s.len() >= 8000,
                "{name}: caller {i} heard only {} samples",
                s.len()
            );
            let shares: Vec<f64> = TONES.iter().map(|f| tone_share(&s, *f)).collect();
            assert_eq!(
                tones_in(&s),
                expect[i].clone(),
                "{name}: caller {i} heard tone shares {shares:?}; the dataplane's counters:\n{mix_lines}"
            );
        }
    }

    // Status callbacks, numbered in order.
    let mut events: Vec<(u64, String, String)> = Vec::new();
    for _ in 0..100 {
        events = app_state
            .seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|(p, _)| p == "/confstatus")
            .map(|(_, q)| {
                (
                    q.get("SequenceNumber")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    q.get("StatusCallbackEvent").cloned().unwrap_or_default(),
                    q.get("CallSid").cloned().unwrap_or_default(),
                )
            })
            .collect();
        if events.iter().any(|e| e.1 == "conference-end") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    events.sort();
    let names: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    let count = |n: &str| names.iter().filter(|x| **x == n).count();
    assert_eq!(count("participant-join"), 3, "{names:?}");
    assert_eq!(count("conference-start"), 1, "{names:?}");
    assert_eq!(count("participant-leave"), 3, "{names:?}");
    for e in [
        "participant-mute",
        "participant-unmute",
        "participant-hold",
        "participant-unhold",
    ] {
        assert_eq!(count(e), 1, "{e}: {names:?}");
    }
    assert_eq!(names.last(), Some(&"conference-end"), "{names:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.1 == "participant-mute" && e.2 == members[1]),
        "{events:?}"
    );

    // Recordings: the mix and one track per participant (only that participant's tone).
    let recs = {
        let (url, a) = (format!("{conf_url}/Recordings.json"), a.clone());
        tokio::task::spawn_blocking(move || {
            for _ in 0..100 {
                let r = get_json(&url, &a);
                let list = r["recordings"].as_array().cloned().unwrap_or_default();
                if list.len() == 4 && list.iter().all(|x| x["status"] == "completed") {
                    return list;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("the conference's four recordings were not completed");
        })
        .await
        .expect("join")
    };
    for rec in &recs {
        let rsid = rec["sid"].as_str().expect("sid");
        let (url, a) = (
            format!("{api}/2010-04-01/Accounts/{sid}/Recordings/{rsid}.wav"),
            a.clone(),
        );
        let wav = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            let r = ureq::get(&url)
                .set("Authorization", &a)
                .call()
                .expect("wav");
            std::io::Read::read_to_end(&mut r.into_reader(), &mut v).expect("read");
            v
        })
        .await
        .expect("join");
        let s = audio::decode_wav(&wav).expect("a WAV").samples;
        let shares: Vec<f64> = TONES.iter().map(|f| tone_share(&s, *f)).collect();
        match rec["call_sid"].as_str() {
            None => assert_eq!(tones_in(&s), vec![0, 1, 2], "mix: {shares:?}"),
            Some(cs) => {
                let i = members.iter().position(|m| m == cs).expect("a participant");
                assert_eq!(tones_in(&s), vec![i], "track of caller {i}: {shares:?}");
                assert_eq!(rec["source"], "Conference", "{rec}");
                assert_eq!(rec["conference_sid"].as_str(), Some(conf.as_str()), "{rec}");
            }
        }
    }
    let none = fetch(format!("{conf_url}/Participants.json"))
        .await
        .expect("join");
    assert_eq!(
        none["participants"].as_array().map(Vec::len),
        Some(0),
        "{none}"
    );
    n.r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_caller_hears_the_wait_audio_until_an_added_participant_starts_the_room() {
    // Participants added through the API: the sipp callee.
    let routes = vec![SipRoute {
        pattern: "+1888*".into(),
        target: "sip:127.0.0.1:29620".into(),
        username: None,
        password: None,
        codecs: None,
    }];
    let n = node(
        "conference-wait",
        30600,
        routes,
        &["+15550700"],
        "/wait-room",
    )
    .await;
    let (api, sip, sid, a, app_state) = (
        n.api.clone(),
        n.sip,
        n.sid.clone(),
        n.auth.clone(),
        n.app.clone(),
    );
    let dir = n.scratch.path().to_path_buf();
    let base = format!("{api}/2010-04-01/Accounts/{sid}");
    let deadline = Instant::now() + Duration::from_secs(45);
    let pcap_a = dir.join("a.pcap");
    std::fs::write(&pcap_a, tone_pcap(TONES[1], 25)).expect("pcap");
    let pcap_b = dir.join("b.pcap");
    std::fs::write(&pcap_b, tone_pcap(TONES[0], 25)).expect("pcap");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("rtp sink");
    let sink = sock.local_addr().expect("addr").port().to_string();
    let heard: Heard = Arc::default();
    {
        let h = heard.clone();
        std::thread::spawn(move || listen(sock, h, deadline));
    }
    let dir_sipp = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/sipp/");
    let callee = std::process::Command::new("sipp")
        .args(["-sf", &format!("{dir_sipp}uas_conference.xml")])
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "29620",
            "-mi",
            "127.0.0.1",
            "-mp",
            "29640",
        ])
        .args(["-key", "tone_pcap", &pcap_b.display().to_string()])
        .args(["-m", "1", "-timeout", "60s", "-timeout_error", "-nostdin"])
        .stdout(std::fs::File::create(dir.join("callee.out")).expect("file"))
        .stderr(std::fs::File::create(dir.join("callee.err")).expect("file"))
        .spawn()
        .expect("sipp callee");
    let mut callee = common::Kill(callee);
    let caller = tokio::task::spawn_blocking(move || {
        common::sipp_call(
            "uac_conference.xml",
            "+15550700",
            sip,
            &[
                "-i",
                "127.0.0.1",
                "-p",
                "29610",
                "-mi",
                "127.0.0.1",
                "-mp",
                "29630",
                "-key",
                "rtp_sink",
                &sink,
                "-key",
                "tone_pcap",
                &pcap_a.display().to_string(),
            ],
        )
    });

    // The caller alone: the room waits (`init`), the caller hears the wait audio.
    let participants = |n: usize| {
        let (base, a) = (base.clone(), a.clone());
        tokio::task::spawn_blocking(move || {
            for _ in 0..150 {
                let l = get_json(
                    &format!("{base}/Conferences.json?FriendlyName=room%20two"),
                    &a,
                );
                if let Some(cf) = l["conferences"][0]["sid"].as_str() {
                    let p = get_json(&format!("{base}/Conferences/{cf}/Participants.json"), &a);
                    if p["participants"].as_array().map(Vec::len) == Some(n) {
                        return (cf.to_string(), p);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("room two never had {n} participants");
        })
    };
    let (conf, _) = participants(1).await.expect("join");
    let waiting_from = Instant::now() + Duration::from_millis(1000);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let room = get_async(format!("{base}/Conferences/{conf}.json"), &a).await;
    assert_eq!(room["status"], "init", "{room}");

    // A participant added by dialling out starts the room (and ends it when it leaves).
    let added = {
        let (url, a) = (
            format!("{base}/Conferences/{conf}/Participants.json"),
            a.clone(),
        );
        tokio::task::spawn_blocking(move || {
            post_form(
                &url,
                &a,
                &[
                    ("From", "+15550799"),
                    ("To", "+18880001"),
                    ("Beep", "false"),
                    ("StartConferenceOnEnter", "true"),
                    ("EndConferenceOnExit", "true"),
                    ("Label", "supervisor"),
                ],
            )
        })
        .await
        .expect("join")
    };
    assert_eq!(added["status"], "queued", "{added}");
    assert_eq!(
        added["conference_sid"].as_str(),
        Some(conf.as_str()),
        "{added}"
    );
    let b_sid = added["call_sid"].as_str().expect("call sid").to_string();
    let (_, listed) = participants(2).await.expect("join");
    let b_row = listed["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["call_sid"] == b_sid.as_str()).cloned())
        .expect("the added participant is listed");
    assert_eq!(b_row["label"], "supervisor", "{b_row}");
    assert_eq!(
        b_row["end_conference_on_exit"],
        Value::Bool(true),
        "{b_row}"
    );
    let started_from = Instant::now() + Duration::from_millis(1500);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let room = get_async(format!("{base}/Conferences/{conf}.json"), &a).await;
    assert_eq!(room["status"], "in-progress", "{room}");

    // Removing it ends the room (endConferenceOnExit): both calls run out of instructions.
    let status = {
        let (url, a) = (
            format!("{base}/Conferences/{conf}/Participants/{b_sid}.json"),
            a.clone(),
        );
        tokio::task::spawn_blocking(move || {
            ureq::delete(&url)
                .set("Authorization", &a)
                .call()
                .map(|r| r.status())
                .ok()
        })
        .await
        .expect("join")
    };
    assert_eq!(status, Some(204));
    let (ok, out) = caller.await.expect("join");
    assert!(ok, "caller: {out}");
    let mut callee_ok = false;
    for _ in 0..100 {
        if let Ok(Some(st)) = callee.0.try_wait() {
            callee_ok = st.success();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        callee_ok,
        "callee: {}",
        std::fs::read_to_string(dir.join("callee.err")).unwrap_or_default()
    );
    let room = get_async(format!("{base}/Conferences/{conf}.json"), &a).await;
    assert_eq!(room["status"], "completed", "{room}");
    assert_eq!(
        room["reason_conference_ended"], "participant-with-end-conference-on-exit-left",
        "{room}"
    );
    assert_eq!(
        room["call_sid_ending_conference"].as_str(),
        Some(b_sid.as_str()),
        "{room}"
    );

    let waiting = window(
        &heard,
        waiting_from,
        waiting_from + Duration::from_millis(2000),
    );
    assert!(waiting.len() >= 8000, "waiting: {} samples", waiting.len());
    let wait_share = tone_share(&waiting, WAIT_TONE);
    assert!(wait_share > 0.5, "the wait audio: {wait_share}");
    let started = window(
        &heard,
        started_from,
        started_from + Duration::from_millis(2000),
    );
    assert!(started.len() >= 8000, "started: {} samples", started.len());
    let (wait_after, b_tone) = (
        tone_share(&started, WAIT_TONE),
        tone_share(&started, TONES[0]),
    );
    assert!(
        wait_after < 0.05 && b_tone > 0.5,
        "after the start: wait tone {wait_after}, the added participant {b_tone}"
    );
    let events: Vec<String> = app_state
        .seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|(p, _)| p == "/confstatus")
        .filter_map(|(_, q)| q.get("StatusCallbackEvent").cloned())
        .collect();
    assert!(
        events.contains(&"conference-start".to_string()),
        "{events:?}"
    );
    n.r.shutdown().await;
}

/// Two callers greeted (`<Say>`) before they enter one room, on a node with two dataplane
/// workers: the first answers and creates the room on its worker; the second's media starts
/// on the other worker (the least loaded) and moves to the room's before its `<Say>` answers,
/// so the two hear each other. Without the move the second is refused entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_greeted_before_entering_joins_a_room_on_another_worker() {
    let numbers = ["+15550800", "+15550801"];
    let n = node(
        "conference-greet",
        31000,
        Vec::new(),
        &numbers,
        "/greet-room",
    )
    .await;
    let (api, sip, sid, a) = (n.api.clone(), n.sip, n.sid.clone(), n.auth.clone());
    let dir = n.scratch.path().to_path_buf();
    let base = format!("{api}/2010-04-01/Accounts/{sid}");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut heard: Vec<Heard> = Vec::new();
    let mut callers = Vec::new();
    let mut room = None;
    for (i, number) in numbers.iter().enumerate() {
        let ports = (29660 + i as u16, 29860 + 10 * i as u16);
        let (h, caller) = tone_caller(&dir, i, number, sip, ports, deadline);
        heard.push(h);
        callers.push(caller);
        // The next caller comes once this one is in the room.
        let mut found = None;
        for _ in 0..150 {
            let l = get_async(
                format!("{base}/Conferences.json?FriendlyName=room%20three"),
                &a,
            )
            .await;
            if let Some(cf) = l["conferences"][0]["sid"].as_str() {
                let p = get_async(format!("{base}/Conferences/{cf}/Participants.json"), &a).await;
                if p["participants"].as_array().map_or(0, Vec::len) == i + 1 {
                    found = Some(cf.to_string());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        room = Some(found.unwrap_or_else(|| panic!("caller {i} never entered the room")));
        let workers: Vec<_> =
            n.r.dataplane
                .list_relays()
                .iter()
                .map(|r| r.worker)
                .collect();
        if i == 0 {
            // One relay, on the room's worker: the least-loaded placement starts the next
            // caller's media on the other one, so the test exercises the move.
            assert_eq!(workers.len(), 1, "{workers:?}");
        } else {
            assert!(
                workers.iter().all(|w| *w == workers[0]),
                "one worker mixes: {workers:?}"
            );
        }
    }
    let room = room.expect("room");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let to = Instant::now();
    for (i, h) in heard.iter().enumerate() {
        let w = window(h, from, to);
        assert!(w.len() >= 8000, "caller {i} heard {} samples", w.len());
        let (other, own) = (tone_share(&w, TONES[1 - i]), tone_share(&w, TONES[i]));
        assert!(
            other > 0.5 && own < 0.05,
            "caller {i}: the other caller {other}, itself {own}"
        );
    }
    let ended = {
        let (url, a) = (format!("{base}/Conferences/{room}.json"), a.clone());
        tokio::task::spawn_blocking(move || post_form(&url, &a, &[("Status", "completed")]))
            .await
            .expect("join")
    };
    assert_eq!(ended["status"], "completed", "{ended}");
    for c in callers {
        let (ok, out) = c.await.expect("join");
        assert!(ok, "caller: {out}");
    }
    n.r.shutdown().await;
}
