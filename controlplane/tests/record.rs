//! `<Record>` end to end: sipp calls a number, hears the beep, talks (the G.711 capture
//! `sip-tester` ships) and presses 1 (`finishOnKey`); the dataplane's recording tap feeds the
//! recorder; the action URL gets `RecordingUrl`, `RecordingDuration`, `RecordingSid` and
//! `Digits`; recording status callbacks (`in-progress`, `completed`) arrive in order through the
//! outbox. The recording is then fetched as WAV and MP3 (credentials required), shown by the
//! Recordings resource, and deleted with its file. A second caller stays silent: the recording
//! is `absent`, no action is requested, and the next verb runs.

mod common;
use common::{basic_auth as auth, xml};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use voxedge_controlplane::app::{self, Role};
use voxedge_controlplane::media::decode;
use voxedge_controlplane::voice::audio;
use voxedge_dataplane::BackendKind;

use common::Seen;

#[derive(Clone, Default)]
struct AppServer {
    seen: Seen,
}

async fn handle(State(app): State<AppServer>, req: Request) -> Response {
    let path = common::note_request(&app.seen, req).await;
    match path.as_str() {
        "/record" => xml(
            r#"<Response><Record maxLength="20" timeout="5" finishOnKey="1" action="/recorded" recordingStatusCallback="/recstatus" recordingStatusCallbackEvent="in-progress completed absent"/><Say>Not reached.</Say></Response>"#,
        ),
        "/recorded" => xml("<Response><Say>Thank you.</Say><Hangup/></Response>"),
        "/silent" => xml(
            r#"<Response><Record maxLength="10" timeout="1" playBeep="false" action="/recorded" recordingStatusCallback="/recstatus" recordingStatusCallbackEvent="in-progress completed absent"/><Hangup/></Response>"#,
        ),
        "/recstatus" | "/status" => (StatusCode::NO_CONTENT, "").into_response(),
        _ => (StatusCode::NOT_FOUND, "").into_response(),
    }
}

fn sipp(scenario: &str, number: &str, sip: std::net::SocketAddr, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "-i",
        "127.0.0.1",
        "-p",
        "29580",
        "-mi",
        "127.0.0.1",
        "-mp",
        "29780",
    ];
    args.extend_from_slice(extra);
    common::sipp_call(scenario, number, sip, &args)
}

/// GET `url` (with credentials `a`): the status, and the response when it is a success.
fn get(url: &str, a: Option<&str>) -> (u16, Option<ureq::Response>) {
    let r = ureq::get(url);
    let r = match a {
        Some(a) => r.set("Authorization", a).call(),
        None => r.call(),
    };
    match r {
        Ok(r) => (r.status(), Some(r)),
        Err(ureq::Error::Status(s, _)) => (s, None),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn fetch_ok(url: &str, a: &str) -> ureq::Response {
    match get(url, Some(a)) {
        (200, Some(r)) => r,
        (s, _) => panic!("{url}: {s}"),
    }
}

fn body(r: ureq::Response) -> Vec<u8> {
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut v).expect("body");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_stores_the_caller_and_reports_it() {
    let app_state = AppServer::default();
    let app_port = common::serve_app(
        axum::Router::new()
            .fallback(handle)
            .with_state(app_state.clone()),
    )
    .await;

    let scratch = common::scratch_dir("record");
    let dir = scratch.path().to_path_buf();
    let c = common::serve_config(&dir, 30000);
    let r = app::start(Role::Serve, c, BackendKind::Socket)
        .await
        .expect("start");
    let api = format!("http://{}", r.api.expect("api"));
    let sip = r.sip_udp.expect("sip");
    let store = r.store.clone().expect("store");
    let (acc, token) = store.create_account("rec", None).await.expect("account");
    let sid = acc.sid.clone();
    let a = auth(&sid, &token);
    for (number, path) in [("+15550400", "/record"), ("+15550401", "/silent")] {
        let (url, a, voice) = (
            format!("{api}/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json"),
            a.clone(),
            format!("http://127.0.0.1:{app_port}{path}"),
        );
        let number = number.to_string();
        tokio::task::spawn_blocking(move || {
            ureq::post(&url)
                .set("Authorization", &a)
                .send_form(&[
                    ("PhoneNumber", number.as_str()),
                    ("VoiceUrl", voice.as_str()),
                ])
                .expect("number")
        })
        .await
        .expect("join");
    }

    let (ok, out) =
        tokio::task::spawn_blocking(move || sipp("uac_talk_then_key.xml", "+15550400", sip, &[]))
            .await
            .expect("join");
    assert!(
        ok,
        "sipp: {out}\napp server saw: {:#?}",
        app_state.seen.lock().expect("seen")
    );

    // The action, and the status callbacks (delivered through the outbox: wait for them).
    let deadline = Instant::now() + Duration::from_secs(10);
    let statuses = loop {
        let seen = app_state.seen.lock().expect("seen").clone();
        let st: Vec<BTreeMap<String, String>> = seen
            .iter()
            .filter(|(p, _)| p == "/recstatus")
            .map(|(_, p)| p.clone())
            .collect();
        if st.len() >= 2 || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen = app_state.seen.lock().expect("seen").clone();
    let recorded = &seen
        .iter()
        .find(|(p, _)| p == "/recorded")
        .unwrap_or_else(|| panic!("no action request: {seen:#?}"))
        .1;
    assert_eq!(recorded["Digits"], "1", "{recorded:?}");
    let rec_sid = recorded["RecordingSid"].clone();
    assert!(rec_sid.starts_with("RE"), "{recorded:?}");
    let duration: u64 = recorded["RecordingDuration"].parse().expect("duration");
    assert!((2..=6).contains(&duration), "talked about 4 s: {duration}");
    let rec_url = recorded["RecordingUrl"].clone();
    assert!(
        rec_url.ends_with(&format!("/2010-04-01/Accounts/{sid}/Recordings/{rec_sid}")),
        "{rec_url}"
    );
    assert_eq!(
        statuses
            .iter()
            .map(|s| s["RecordingStatus"].as_str())
            .collect::<Vec<_>>(),
        ["in-progress", "completed"],
        "{statuses:#?}"
    );
    assert_eq!(statuses[1]["RecordingSid"], rec_sid);
    assert_eq!(statuses[1]["RecordingDuration"], duration.to_string());
    assert_eq!(statuses[1]["RecordingSource"], "RecordVerb");
    assert!(!statuses[0].contains_key("RecordingDuration"));

    // The media: credentials required; WAV and MP3 of the same audio.
    let (url, a2, rs, dir2, api2, sid2) = (
        rec_url.clone(),
        a.clone(),
        rec_sid.clone(),
        dir.clone(),
        api.clone(),
        sid.clone(),
    );
    tokio::task::spawn_blocking(move || {
        assert_eq!(get(&url, None).0, 401, "credentials required");
        let wav = fetch_ok(&url, &a2);
        assert_eq!(wav.content_type(), "audio/x-wav");
        let pcm = audio::decode_wav(&body(wav)).expect("a WAV");
        assert_eq!(pcm.rate, 8000);
        let secs = pcm.samples.len() as f64 / 8000.0;
        assert!(
            (secs - duration as f64).abs() <= 0.6,
            "{secs} s vs {duration}"
        );
        let rms = (pcm
            .samples
            .iter()
            .map(|s| f64::from(*s).powi(2))
            .sum::<f64>()
            / pcm.samples.len() as f64)
            .sqrt();
        assert!(rms > 500.0, "speech, not silence: rms {rms}");
        assert_eq!(
            body(fetch_ok(&format!("{url}.wav"), &a2)).len(),
            44 + pcm.samples.len() * 2
        );
        let mp3 = fetch_ok(&format!("{url}.mp3"), &a2);
        assert_eq!(mp3.content_type(), "audio/mpeg");
        let m = decode::decode(&body(mp3), "audio/mpeg", Some("mp3"), 60).expect("decodes");
        let msecs = m.samples.len() as f64 / f64::from(m.rate);
        assert!((msecs - secs).abs() < 0.3, "{msecs} vs {secs}");

        // The resource.
        let meta: Value = fetch_ok(
            &format!("{api2}/2010-04-01/Accounts/{sid2}/Recordings/{rs}.json"),
            &a2,
        )
        .into_json()
        .expect("json");
        assert_eq!(meta["status"], "completed", "{meta}");
        assert_eq!(meta["duration"], duration.to_string());
        assert_eq!(meta["source"], "RecordVerb");
        assert_eq!(meta["channels"], 1);
        assert!(
            meta.get("media_path").is_none(),
            "the file path stays inside"
        );
        assert_eq!(
            meta["media_url"],
            format!("/2010-04-01/Accounts/{sid2}/Recordings/{rs}")
        );
        let call_sid = meta["call_sid"].as_str().expect("call").to_string();
        let of_call: Value = fetch_ok(
            &format!("{api2}/2010-04-01/Accounts/{sid2}/Calls/{call_sid}/Recordings.json"),
            &a2,
        )
        .into_json()
        .expect("json");
        assert_eq!(of_call["recordings"][0]["sid"], rs.as_str());

        // Delete: the row and the file go.
        let file = dir2.join("recordings").join(format!("{rs}.wav"));
        assert!(file.exists());
        let del = ureq::delete(&format!(
            "{api2}/2010-04-01/Accounts/{sid2}/Recordings/{rs}.json"
        ))
        .set("Authorization", &a2)
        .call()
        .expect("delete");
        assert_eq!(del.status(), 204);
        assert!(!file.exists(), "file removed");
        assert_eq!(get(&url, Some(&a2)).0, 404, "gone with its recording");
    })
    .await
    .expect("join");

    // A silent caller: absent, no action, the next verb (Hangup) runs.
    app_state.seen.lock().expect("seen").clear();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        sipp(
            "uac_media_to.xml",
            "+15550401",
            sip,
            &["-key", "rtpport", "29790"],
        )
    })
    .await
    .expect("join");
    assert!(ok, "sipp: {out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let statuses = loop {
        let st: Vec<String> = app_state
            .seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|(p, _)| p == "/recstatus")
            .map(|(_, p)| p["RecordingStatus"].clone())
            .collect();
        if st.len() >= 2 || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(statuses, ["in-progress", "absent"]);
    assert!(
        !app_state
            .seen
            .lock()
            .expect("seen")
            .iter()
            .any(|(p, _)| p == "/recorded"),
        "no action for an absent recording"
    );
    r.shutdown().await;
}
