//! `<Play>` end to end through the media cache: sipp calls a number whose media goes to a UDP
//! port this test reads; the instructions play a corrupt MP3 and an HTML page (each a
//! notification, and the call goes on with the next verb), digits as RFC 4733 events, then a
//! known WAV twice (fetched once: the second play is a cache hit). What the far end receives
//! is compared with the WAV, sample by sample after G.711, and the digits' events are checked.
//! The entry is then listed, inspected and purged through `/v1/…/Media`, and the counters
//! appear in `/metrics`.

mod common;
use common::basic_auth as auth;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use voxedge_controlplane::app::{self, Role};
use voxedge_controlplane::voice::audio;
use voxedge_dataplane::BackendKind;

const MEDIA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/media/");

#[derive(Clone, Default)]
struct AppServer {
    requests: Arc<Mutex<HashMap<String, usize>>>,
}

async fn handle(State(app): State<AppServer>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    *app.requests
        .lock()
        .expect("lock")
        .entry(path.clone())
        .or_default() += 1;
    let file = |name: &str| std::fs::read(format!("{MEDIA}{name}")).expect("test media");
    match path.as_str() {
        "/play" => (
            [("content-type", "text/xml")],
            r#"<Response>
  <Play>/media/corrupt.mp3</Play>
  <Play>/media/page.html</Play>
  <Play digits="1#"/>
  <Play>/media/known.wav</Play>
  <Play>/media/known.wav</Play>
  <Hangup/>
</Response>"#,
        )
            .into_response(),
        "/media/known.wav" => (
            [
                ("content-type", "audio/wav"),
                ("cache-control", "max-age=600"),
            ],
            file("known.wav"),
        )
            .into_response(),
        "/media/corrupt.mp3" => (
            [("content-type", "audio/mpeg")],
            b"not an mp3, not anything".repeat(50),
        )
            .into_response(),
        "/media/page.html" => (
            [("content-type", "text/html")],
            "<html><body>It works!</body></html>",
        )
            .into_response(),
        "/status" => (StatusCode::NO_CONTENT, "").into_response(),
        _ => (StatusCode::NOT_FOUND, "").into_response(),
    }
}

/// One RTP packet the far end received.
#[derive(Debug, Clone)]
struct Rtp {
    pt: u8,
    marker: bool,
    ts: u32,
    payload: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_goes_through_the_cache_and_the_far_end_hears_the_file() {
    let app_state = AppServer::default();
    let app_port = common::serve_app(
        axum::Router::new()
            .fallback(handle)
            .with_state(app_state.clone()),
    )
    .await;

    let scratch = common::scratch_dir("play");
    let dir = scratch.path().to_path_buf();
    let c = common::serve_config(&dir, 29800);
    let r = app::start(Role::Serve, c, BackendKind::Socket)
        .await
        .expect("start");
    let api = format!("http://{}", r.api.expect("api"));
    let admin = format!("http://{}", r.admin);
    let sip = r.sip_udp.expect("sip over udp");
    let store = r.store.clone().expect("store");
    let (acc, token) = store.create_account("play", None).await.expect("account");
    let sid = acc.sid.clone();
    let a = auth(&sid, &token);
    {
        let (url, a, voice) = (
            format!("{api}/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json"),
            a.clone(),
            format!("http://127.0.0.1:{app_port}/play"),
        );
        tokio::task::spawn_blocking(move || {
            ureq::post(&url)
                .set("Authorization", &a)
                .send_form(&[("PhoneNumber", "+15550300"), ("VoiceUrl", voice.as_str())])
                .expect("number")
        })
        .await
        .expect("join");
    }

    // The far end's media port: everything received until the call ends.
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    rtp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let rtp_port = rtp.local_addr().expect("addr").port();
    let received = Arc::new(Mutex::new(Vec::<Rtp>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (received, done) = (received.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let start = Instant::now();
            while !done.load(std::sync::atomic::Ordering::SeqCst)
                && start.elapsed() < Duration::from_secs(60)
            {
                let Ok(n) = rtp.recv(&mut buf) else { continue };
                if n < 12 || buf[0] >> 6 != 2 {
                    continue;
                }
                received.lock().expect("lock").push(Rtp {
                    pt: buf[1] & 0x7f,
                    marker: buf[1] & 0x80 != 0,
                    ts: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                    payload: buf[12..n].to_vec(),
                });
            }
        })
    };

    let (ok, log) = tokio::task::spawn_blocking(move || {
        let rtp = rtp_port.to_string();
        common::sipp_call(
            "uac_media_to.xml",
            "+15550300",
            sip,
            &["-i", "127.0.0.1", "-p", "29560", "-key", "rtpport", &rtp],
        )
    })
    .await
    .expect("join");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    reader.join().expect("reader");
    assert!(ok, "sipp: {log}");

    // Each bad file is a notification of the call; the call went on to the next verbs.
    let (nurl, a2) = (
        format!("{api}/2010-04-01/Accounts/{sid}/Notifications.json"),
        a.clone(),
    );
    let notes: Value = tokio::task::spawn_blocking(move || {
        ureq::get(&nurl)
            .set("Authorization", &a2)
            .call()
            .expect("notifications")
            .into_json()
            .expect("json")
    })
    .await
    .expect("join");
    let notes = notes["notifications"].as_array().expect("list").clone();
    let has = |code: &str, what: &str| {
        notes.iter().any(|n| {
            n["error_code"] == code
                && n["message_text"].as_str().is_some_and(|m| m.contains(what))
                && n["call_sid"].as_str().is_some_and(|s| s.starts_with("CA"))
        })
    };
    assert!(has("13227", "corrupt.mp3"), "{notes:#?}");
    assert!(has("13420", "page.html"), "{notes:#?}");

    let got = received.lock().expect("lock").clone();
    // The digits: RFC 4733 events on the offered payload type 101, `1` then `#`, each
    // starting with a marker, ending with the E bit (three times).
    let events: Vec<&Rtp> = got.iter().filter(|p| p.pt == 101).collect();
    let starts: Vec<u8> = events
        .iter()
        .filter(|p| p.marker)
        .map(|p| p.payload[0])
        .collect();
    assert_eq!(starts, [1, 11], "{events:?}");
    for digit in [1u8, 11] {
        let of: Vec<&&Rtp> = events.iter().filter(|p| p.payload[0] == digit).collect();
        assert!(
            of.iter().all(|p| p.ts == of[0].ts),
            "one timestamp per event"
        );
        let ends = of.iter().filter(|p| p.payload[1] & 0x80 != 0).count();
        assert_eq!(ends, 3, "end packet sent three times: {of:?}");
        let last = u16::from_be_bytes([of[of.len() - 1].payload[2], of[of.len() - 1].payload[3]]);
        assert_eq!(last, 800, "100 ms at 8 kHz");
    }

    // The WAV, twice: each play starts with a marker; the audio of each equals the file's
    // samples in µ-law (placed by RTP timestamp, so a lost packet would only be a gap).
    let wav = std::fs::read(format!("{MEDIA}known.wav")).expect("wav");
    let pcm = audio::decode_wav(&wav).expect("wav").samples;
    let plays: Vec<usize> = got
        .iter()
        .enumerate()
        .filter(|(_, p)| p.pt == 0 && p.marker)
        .map(|(i, _)| i)
        .collect();
    assert!(
        plays.len() >= 2,
        "two plays of the WAV: {} PCMU starts",
        plays.len()
    );
    for &start in &plays[plays.len() - 2..] {
        let ts0 = got[start].ts;
        let mut heard = vec![None::<i16>; pcm.len()];
        for p in got[start..].iter().filter(|p| p.pt == 0) {
            let at = p.ts.wrapping_sub(ts0) as usize;
            if at >= pcm.len() {
                break;
            }
            for (i, b) in p.payload.iter().enumerate() {
                if let Some(slot) = heard.get_mut(at + i) {
                    *slot = Some(audio::ulaw_decode(*b));
                }
            }
        }
        let (mut signal, mut noise, mut n) = (0f64, 0f64, 0usize);
        for (want, got) in pcm.iter().zip(&heard) {
            if let Some(g) = got {
                signal += f64::from(*want).powi(2);
                noise += (f64::from(*want) - f64::from(*g)).powi(2);
                n += 1;
            }
        }
        assert!(
            n * 10 >= pcm.len() * 9,
            "at least 90% of the file heard: {n}/{}",
            pcm.len()
        );
        let snr = 10.0 * (signal / noise.max(1.0)).log10();
        eprintln!(
            "play at packet {start}: {n}/{} samples heard, SNR {snr:.1} dB",
            pcm.len()
        );
        // G.711 µ-law's own quantisation leaves about 35–38 dB on such a signal.
        assert!(snr > 30.0, "SNR {snr:.1} dB");
    }
    assert_eq!(
        app_state
            .requests
            .lock()
            .expect("lock")
            .get("/media/known.wav")
            .copied(),
        Some(1),
        "the second play came from the cache"
    );

    // The entry through /v1/…/Media: listed with its hits, inspected, purged by URL.
    let media = format!("{api}/v1/Accounts/{sid}/Media.json");
    let known = format!("http://127.0.0.1:{app_port}/media/known.wav");
    let (m2, a3, k2, admin2) = (media.clone(), a.clone(), known.clone(), admin.clone());
    tokio::task::spawn_blocking(move || {
        let list: Value = ureq::get(&m2)
            .set("Authorization", &a3)
            .call()
            .expect("list")
            .into_json()
            .expect("json");
        let items = list["media"].as_array().expect("media").clone();
        let entry = items
            .iter()
            .find(|e| e["url"] == k2.as_str())
            .unwrap_or_else(|| panic!("{list:#}"));
        assert_eq!(entry["kind"], "url");
        assert!(entry["hits"].as_i64().is_some_and(|h| h >= 2), "{entry}");
        assert_eq!(entry["duration_ms"], 1200);
        assert_eq!(entry["content_type"], "audio/wav");
        let esid = entry["sid"].as_str().expect("sid");
        let uri = entry["uri"].as_str().expect("uri");
        assert_eq!(uri, format!("/v1/Accounts/{sid}/Media/{esid}.json"));
        let one = ureq::get(&m2.replace("Media.json", &format!("Media/{esid}.json")))
            .set("Authorization", &a3)
            .call()
            .expect("inspect");
        assert_eq!(one.status(), 200);
        let metrics = ureq::get(&format!("{admin2}/metrics"))
            .call()
            .expect("metrics")
            .into_string()
            .expect("text");
        let hits = metrics
            .lines()
            .find_map(|l| l.strip_prefix("voxedge_media_cache_hits_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .expect("hits counter");
        assert!(hits >= 1, "{hits}");
        // Purge by URL; then it is gone, and a second purge is a 404.
        let purge = format!(
            "{m2}?Url={}",
            form_urlencoded::byte_serialize(k2.as_bytes()).collect::<String>()
        );
        assert_eq!(
            ureq::delete(&purge)
                .set("Authorization", &a3)
                .call()
                .expect("purge")
                .status(),
            204
        );
        assert!(matches!(
            ureq::delete(&purge).set("Authorization", &a3).call(),
            Err(ureq::Error::Status(404, _))
        ));
        let list: Value = ureq::get(&m2)
            .set("Authorization", &a3)
            .call()
            .expect("list")
            .into_json()
            .expect("json");
        assert!(
            list["media"]
                .as_array()
                .is_some_and(|m| m.iter().all(|e| e["url"] != k2.as_str())),
            "{list:#}"
        );
        // Prefetch puts it back (one more request to the origin).
        let r = ureq::post(&m2)
            .set("Authorization", &a3)
            .send_form(&[("Url", k2.as_str())])
            .expect("prefetch");
        assert_eq!(r.status(), 201);
    })
    .await
    .expect("join");
    assert_eq!(
        app_state
            .requests
            .lock()
            .expect("lock")
            .get("/media/known.wav")
            .copied(),
        Some(2)
    );
    r.shutdown().await;
}
