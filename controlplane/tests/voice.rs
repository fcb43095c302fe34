//! Programmable calls end to end: sipp calls a number → VoxEdge fetches the number's
//! instructions from a local app server written for the test → `Gather` with a `Say` prompt
//! hears the RFC 4733 digit sipp plays (the DTMF capture `sip-tester` ships) → the action URL
//! gets `Digits` → `Dial` to a sipp callee, bridged with media both ways (the dataplane's
//! counters show it) until the callee hangs up → the `Dial` action gets `DialCallStatus` →
//! `Hangup` (BYE to sipp). The call's and the dialled leg's status callbacks arrive in order;
//! every request the app server received is validated by the official `twilio` library's
//! `RequestValidator`.
//! Then the fallback URL: a primary answering 500, HTML, malformed XML, or too slowly, each
//! falls over to the fallback with `ErrorCode`/`ErrorUrl`, and a notification is recorded; so do
//! hostile documents (entity bomb with an external entity, 10 MB, 10,000-deep nesting, an
//! unknown verb).

mod common;
use common::{basic_auth as auth, xml};

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use voxedge_controlplane::app::{self, Role};
use voxedge_controlplane::config::SipRoute;
use voxedge_dataplane::BackendKind;

/// One request the app server received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    url: String,
    params: BTreeMap<String, String>,
    signature: String,
}

#[derive(Clone, Default)]
struct AppServer {
    seen: Arc<Mutex<Vec<Seen>>>,
    port: Arc<Mutex<u16>>,
}

async fn handle(State(app): State<AppServer>, req: Request) -> Response {
    let port = *app.port.lock().expect("port");
    let path = req.uri().path().to_string();
    let url = format!(
        "http://127.0.0.1:{port}{}",
        req.uri().path_and_query().map_or("", |p| p.as_str())
    );
    let signature = req
        .headers()
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let post = req.method() == axum::http::Method::POST;
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let params: BTreeMap<String, String> = if post {
        form_urlencoded::parse(&body).into_owned().collect()
    } else {
        BTreeMap::new()
    };
    app.seen.lock().expect("seen").push(Seen {
        path: path.clone(),
        url,
        params,
        signature,
    });
    match path.as_str() {
        "/voice" => xml(r#"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Gather numDigits="1" action="/digits" timeout="10">
    <Say>Please press a key.</Say>
  </Gather>
  <Say>We did not get a key.</Say>
</Response>"#),
        "/digits" => xml(
            r#"<Response><Dial action="/dialed" timeout="20" record="record-from-answer-dual" recordingStatusCallback="/recstatus"><Number url="/whisper" statusCallback="/leg" statusCallbackEvent="initiated ringing answered completed">+19990001</Number></Dial><Say>Not reached.</Say></Response>"#,
        ),
        "/dialed" => xml("<Response><Hangup/></Response>"),
        "/whisper" => xml("<Response><Say>You have a call.</Say></Response>"),
        "/leg" | "/sipevents" | "/recstatus" => (StatusCode::NO_CONTENT, "").into_response(),
        "/fallback" => xml("<Response><Say>Fallback.</Say><Hangup/></Response>"),
        "/status" => (StatusCode::NO_CONTENT, "").into_response(),
        "/fail500" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "/html" => (
            [("content-type", "text/html")],
            "<html><body>It works!</body></html>",
        )
            .into_response(),
        "/malformed" => xml("<Response><Say>oops</Response>"),
        "/bomb" => xml(concat!(
            "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\">",
            "<!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">",
            "<!ENTITY x SYSTEM \"file:///etc/passwd\">]><Response><Say>&c;&x;</Say></Response>"
        )),
        "/huge" => xml(&format!("<Response><Say>{}</Say></Response>", "a".repeat(10 << 20))),
        "/deep" => xml(&format!(
            "<Response>{}{}</Response>",
            "<Gather>".repeat(10_000),
            "</Gather>".repeat(10_000)
        )),
        "/deep3000" => xml(&format!(
            "<Response>{}{}</Response>",
            "<Gather>".repeat(3000),
            "</Gather>".repeat(3000)
        )),
        "/unknown" => xml("<Response>\n  <Dance/>\n</Response>"),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            xml("<Response><Hangup/></Response>")
        }
        _ => (StatusCode::NOT_FOUND, "").into_response(),
    }
}

/// Runs sipp's `scenario` calling `number` at `sip`; its exit status and output.
fn sipp(scenario: &str, number: &str, sip: std::net::SocketAddr, port: u16) -> (bool, String) {
    let (p, mp) = (port.to_string(), (port + 200).to_string());
    common::sipp_call(
        scenario,
        number,
        sip,
        &["-i", "127.0.0.1", "-p", &p, "-mi", "127.0.0.1", "-mp", &mp],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_runs_its_instructions_with_digits_and_fallbacks() {
    let python = std::env::var("VOXEDGE_TWILIO_PYTHON").unwrap_or_else(|_| {
        panic!("VOXEDGE_TWILIO_PYTHON is not set: run scripts/test (it makes a venv with the twilio library)")
    });
    assert!(
        Command::new("espeak-ng").arg("--version").output().is_ok(),
        "espeak-ng is not installed: run scripts/test (it installs espeak-ng)"
    );
    // The app server.
    let app_state = AppServer::default();
    let router = axum::Router::new()
        .fallback(handle)
        .with_state(app_state.clone());
    let app_port = common::serve_app(router).await;
    *app_state.port.lock().expect("port") = app_port;
    let app_url = |p: &str| format!("http://127.0.0.1:{app_port}{p}");

    // VoxEdge on kernel sockets (sipp sends real RTP).
    let scratch = common::scratch_dir("voice");
    let dir = scratch.path().to_path_buf();
    let mut c = common::serve_config(&dir, 29000);
    c.dataplane.port_max = 29199;
    // <Dial> targets: the sipp callee.
    c.sip.routes = vec![SipRoute {
        pattern: "+1999*".into(),
        target: "sip:127.0.0.1:29450".into(),
        username: None,
        password: None,
        codecs: None,
    }];
    let r = app::start(Role::Serve, c, BackendKind::Socket)
        .await
        .expect("start");
    let api = format!("http://{}", r.api.expect("api"));
    let sip = r.sip_udp.expect("sip over udp");
    let store = r.store.clone().expect("store");
    let (acc, token) = store.create_account("voice", None).await.expect("account");
    let sid = acc.sid.clone();
    let numbers = format!("{api}/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json");
    let add = |phone: &str, voice: String| {
        let mut form = vec![
            ("PhoneNumber", phone.to_string()),
            ("VoiceUrl", voice),
            ("VoiceFallbackUrl", app_url("/fallback")),
            ("StatusCallback", app_url("/status")),
        ];
        if phone.ends_with("00") {
            form.retain(|(k, _)| *k != "VoiceFallbackUrl");
        }
        let (numbers, a) = (numbers.clone(), auth(&sid, &token));
        async move {
            let code = tokio::task::spawn_blocking(move || {
                let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                match ureq::post(&numbers)
                    .set("Authorization", &a)
                    .send_form(&form)
                {
                    Ok(r) => r.status(),
                    Err(ureq::Error::Status(s, r)) => {
                        panic!("{s}: {}", r.into_string().unwrap_or_default())
                    }
                    Err(e) => panic!("{e}"),
                }
            })
            .await
            .expect("join");
            assert_eq!(code, 201);
        }
    };
    // +15550100 runs an application that also registers SIP-event callbacks (the dialled
    // leg's 180 and its BYE's Reason reach /sipevents).
    let (apps0, a0, voice0, fb0, st0, se0) = (
        format!("{api}/2010-04-01/Accounts/{sid}/Applications.json"),
        auth(&sid, &token),
        app_url("/voice"),
        app_url("/fallback"),
        app_url("/status"),
        app_url("/sipevents"),
    );
    let (numbers0, a00) = (numbers.clone(), auth(&sid, &token));
    tokio::task::spawn_blocking(move || {
        let bad = ureq::post(&apps0).set("Authorization", &a0).send_form(&[
            ("VoiceUrl", voice0.as_str()),
            ("SipEventsFilter", "no colon"),
        ]);
        assert!(
            matches!(bad, Err(ureq::Error::Status(400, _))),
            "a bad filter is refused: {bad:?}"
        );
        let r: Value = ureq::post(&apps0)
            .set("Authorization", &a0)
            .send_form(&[
                ("VoiceUrl", voice0.as_str()),
                ("VoiceFallbackUrl", fb0.as_str()),
                ("StatusCallback", st0.as_str()),
                ("SipEventsUrl", se0.as_str()),
                ("SipEvents", "provisional"),
                ("SipEvents", "bye"),
                ("SipEventsHeaders", "Reason X-Ring-Tone"),
            ])
            .expect("application created")
            .into_json()
            .expect("json");
        assert_eq!(r["sip_events"], "provisional bye", "{r}");
        let app = r["sid"].as_str().expect("sid").to_string();
        ureq::post(&numbers0)
            .set("Authorization", &a00)
            .send_form(&[
                ("PhoneNumber", "+15550100"),
                ("VoiceApplicationSid", app.as_str()),
            ])
            .expect("number with the dialler application");
    })
    .await
    .expect("join");
    add("+15550101", app_url("/fail500")).await;
    add("+15550102", app_url("/html")).await;
    add("+15550103", app_url("/malformed")).await;
    add("+15550104", app_url("/slow#rt=500&tt=1000")).await;
    add("+15550105", app_url("/bomb")).await;
    add("+15550106", app_url("/huge")).await;
    add("+15550107", app_url("/deep")).await;
    add("+15550108", app_url("/unknown")).await;
    add("+15550109", app_url("/deep3000")).await;

    // An application whose fetch defaults (VoxEdge's VoiceFetchOverrides) make the slow
    // primary fail fast: without them the default 15 s read timeout would wait for the slow
    // document (a hang-up before the answer, which sipp's scenario counts as a failure).
    let apps = format!("{api}/2010-04-01/Accounts/{sid}/Applications.json");
    let (apps2, a2, slow, fb) = (
        apps.clone(),
        auth(&sid, &token),
        app_url("/slow"),
        app_url("/fallback"),
    );
    let app_sid = tokio::task::spawn_blocking(move || {
        let bad = ureq::post(&apps2).set("Authorization", &a2).send_form(&[
            ("VoiceUrl", slow.as_str()),
            ("VoiceFetchOverrides", "rt=99999"),
        ]);
        match bad {
            Err(ureq::Error::Status(400, r)) => {
                let e: Value = r.into_json().expect("json");
                assert!(
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("VoiceFetchOverrides")),
                    "{e}"
                );
            }
            other => panic!("a bad override must be refused: {other:?}"),
        }
        let r: Value = ureq::post(&apps2)
            .set("Authorization", &a2)
            .send_form(&[
                ("VoiceUrl", slow.as_str()),
                ("VoiceFallbackUrl", fb.as_str()),
                ("VoiceFetchOverrides", "rt=500&tt=2500"),
            ])
            .expect("application created")
            .into_json()
            .expect("json");
        assert_eq!(r["voice_fetch_overrides"], "rt=500&tt=2500");
        r["sid"].as_str().expect("sid").to_string()
    })
    .await
    .expect("join");
    let (numbers2, a3) = (numbers.clone(), auth(&sid, &token));
    tokio::task::spawn_blocking(move || {
        ureq::post(&numbers2)
            .set("Authorization", &a3)
            .send_form(&[
                ("PhoneNumber", "+15550111"),
                ("VoiceApplicationSid", app_sid.as_str()),
            ])
            .expect("number with an application");
    })
    .await
    .expect("join");

    // The digits call, dialling the sipp callee.
    let dir_sipp = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/sipp/");
    let callee = common::Kill(
        Command::new("sipp")
            .args(["-sf", &format!("{dir_sipp}uas_dialled.xml")])
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                "29450",
                "-mi",
                "127.0.0.1",
                "-mp",
                "29650",
            ])
            .args(["-m", "1", "-timeout", "60s", "-timeout_error", "-nostdin"])
            .stdout(std::fs::File::create(dir.join("callee.out")).expect("file"))
            .stderr(std::fs::File::create(dir.join("callee.err")).expect("file"))
            .spawn()
            .expect("sipp callee"),
    );
    let caller =
        tokio::task::spawn_blocking(move || sipp("uac_app_dtmf_talk.xml", "+15550100", sip, 29400));
    // While the call runs: the bridge carries media both ways (leg A forwards the caller's
    // packets to the callee, leg B the callee's to the caller).
    let dp = r.dataplane.clone();
    let mut most = (0u64, 0u64);
    while !caller.is_finished() {
        for relay in dp.list_relays() {
            if let Ok((_, snap)) = dp.query_relay(relay.id) {
                let (a, b) = (
                    snap.legs[0].rtp.counters.packets_forwarded,
                    snap.legs[1].rtp.counters.packets_forwarded,
                );
                most = (most.0.max(a), most.1.max(b));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out) = caller.await.expect("join");
    assert!(ok, "sipp call with DTMF failed:\n{out}");
    let mut callee = callee;
    let callee_ok = callee.0.wait().expect("callee sipp ends").success();
    assert!(
        callee_ok,
        "sipp callee failed:\n{}{}",
        std::fs::read_to_string(dir.join("callee.out")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("callee.err")).unwrap_or_default()
    );
    assert!(
        most.0 >= 25 && most.1 >= 25,
        "the dial bridge forwarded media both ways (caller→callee, callee→caller): {most:?}"
    );
    let seen = |path: &str| -> Vec<Seen> {
        app_state
            .seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    };
    let voice = seen("/voice");
    assert_eq!(voice.len(), 1, "{voice:?}");
    let p = &voice[0].params;
    for (k, v) in [
        ("AccountSid", sid.as_str()),
        ("To", "+15550100"),
        ("Called", "+15550100"),
        ("From", "sipp"),
        ("Direction", "inbound"),
        ("CallStatus", "ringing"),
        ("ApiVersion", "2010-04-01"),
    ] {
        assert_eq!(p.get(k).map(String::as_str), Some(v), "{k} in {p:?}");
    }
    let call_sid = p.get("CallSid").cloned().expect("CallSid");
    let digits = seen("/digits");
    assert_eq!(digits.len(), 1, "{digits:?}");
    assert_eq!(
        digits[0].params.get("Digits").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        digits[0].params.get("CallStatus").map(String::as_str),
        Some("in-progress")
    );
    assert_eq!(digits[0].params.get("CallSid"), Some(&call_sid));
    // The <Dial> action: bridged, completed by the callee's hang-up after ~3 s of talk.
    let dialed = seen("/dialed");
    assert_eq!(dialed.len(), 1, "{dialed:?}");
    let dp = &dialed[0].params;
    assert_eq!(
        dp.get("DialCallStatus").map(String::as_str),
        Some("completed"),
        "{dp:?}"
    );
    assert_eq!(
        dp.get("DialBridged").map(String::as_str),
        Some("true"),
        "{dp:?}"
    );
    assert_eq!(dp.get("CallSid"), Some(&call_sid));
    let leg_sid = dp.get("DialCallSid").cloned().expect("DialCallSid");
    // The whisper ran on the answered leg, with the leg's parameters, before the bridge.
    let whisper = seen("/whisper");
    assert_eq!(whisper.len(), 1, "{whisper:?}");
    let wp = &whisper[0].params;
    assert_eq!(wp.get("CallSid"), Some(&leg_sid), "{wp:?}");
    assert_eq!(wp.get("ParentCallSid"), Some(&call_sid), "{wp:?}");
    assert_eq!(
        wp.get("Direction").map(String::as_str),
        Some("outbound-dial")
    );
    assert_eq!(wp.get("To").map(String::as_str), Some("+19990001"));
    let secs: u64 = dp
        .get("DialCallDuration")
        .and_then(|d| d.parse().ok())
        .expect("DialCallDuration");
    assert!((2..=10).contains(&secs), "talk time {secs}");
    // `record="record-from-answer-dual"`: the bridged call, caller on channel 1 and callee on
    // channel 2, both with sound; its status callback through the caller's outbox.
    let rec_url = dp.get("RecordingUrl").cloned().expect("RecordingUrl");
    let rec_secs: u64 = dp
        .get("RecordingDuration")
        .and_then(|d| d.parse().ok())
        .expect("RecordingDuration");
    assert!(
        rec_secs.abs_diff(secs) <= 1,
        "{rec_secs} s recorded of {secs} s bridged"
    );
    assert!(dp.get("RecordingSid").is_some_and(|r| r.starts_with("RE")));
    let (ra, rurl) = (auth(&sid, &token), format!("{rec_url}.wav"));
    let wav = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(
            &mut ureq::get(&rurl)
                .set("Authorization", &ra)
                .call()
                .expect("recording")
                .into_reader(),
            &mut v,
        )
        .expect("body");
        v
    })
    .await
    .expect("join");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2, "two channels");
    let data: Vec<i16> = wav[44..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let rms = |ch: usize| {
        let v: Vec<f64> = data
            .iter()
            .skip(ch)
            .step_by(2)
            .map(|s| f64::from(*s))
            .collect();
        (v.iter().map(|x| x * x).sum::<f64>() / v.len().max(1) as f64).sqrt()
    };
    assert!(
        rms(0) > 100.0 && rms(1) > 100.0,
        "both legs heard: {} {}",
        rms(0),
        rms(1)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen("/recstatus")
        .iter()
        .any(|r| r.params.get("RecordingStatus").map(String::as_str) == Some("completed"))
    {
        assert!(
            Instant::now() < deadline,
            "no recording callback: {:?}",
            seen("/recstatus")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rs = seen("/recstatus");
    let done = rs
        .iter()
        .find(|r| r.params.get("RecordingStatus").map(String::as_str) == Some("completed"))
        .expect("completed");
    assert_eq!(
        done.params.get("RecordingSource").map(String::as_str),
        Some("DialVerb")
    );
    assert_eq!(
        done.params.get("RecordingChannels").map(String::as_str),
        Some("2")
    );
    assert!(
        seen("/fallback").is_empty(),
        "no fallback for the digits call"
    );
    // The completed status callback (delivered from the outbox, possibly a moment later).
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let s = seen("/status");
        if let Some(done) = s
            .iter()
            .find(|s| s.params.get("CallStatus").map(String::as_str) == Some("completed"))
        {
            break done.clone();
        }
        assert!(Instant::now() < deadline, "no completed callback: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.params.get("CallSid"), Some(&call_sid));
    let rec = store
        .get_any(&voxedge_controlplane::store::CALLS, &call_sid)
        .await
        .expect("read")
        .expect("call recorded");
    assert_eq!(rec["status"], "completed", "{rec:?}");
    assert_eq!(rec["direction"], "inbound");
    // The dialled leg: its own record (a child of the call) and its status callbacks in order.
    let leg = store
        .get_any(&voxedge_controlplane::store::CALLS, &leg_sid)
        .await
        .expect("read")
        .expect("leg recorded");
    assert_eq!(leg["status"], "completed", "{leg:?}");
    assert_eq!(leg["direction"], "outbound-dial");
    assert_eq!(leg["parent_call_sid"], call_sid.as_str());
    assert_eq!(leg["to"], "+19990001");
    assert_eq!(leg["from"], "sipp", "caller ID defaults to the caller");
    let deadline = Instant::now() + Duration::from_secs(15);
    let legs = loop {
        let l = seen("/leg");
        if l.len() >= 4 {
            break l;
        }
        assert!(Instant::now() < deadline, "leg callbacks: {l:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let order: Vec<&str> = legs
        .iter()
        .map(|l| l.params.get("CallStatus").map_or("", String::as_str))
        .collect();
    assert_eq!(
        order,
        ["initiated", "ringing", "in-progress", "completed"],
        "{legs:?}"
    );
    for (i, l) in legs.iter().enumerate() {
        assert_eq!(l.params.get("CallSid"), Some(&leg_sid));
        assert_eq!(l.params.get("ParentCallSid"), Some(&call_sid));
        assert_eq!(l.params.get("SequenceNumber"), Some(&i.to_string()));
    }
    // SIP-event callbacks of the dialled leg (the application's registration applies to the
    // calls it runs and their legs): the callee's 180 with its X-Ring-Tone, the BYE with its
    // Reason, each in order with the leg's status callbacks.
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen("/sipevents").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "SIP events: {:?}",
            seen("/sipevents")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = seen("/sipevents");
    assert_eq!(events.len(), 2, "{events:?}");
    let (ring, bye) = (&events[0].params, &events[1].params);
    assert_eq!(
        ring.get("SipEvent").map(String::as_str),
        Some("provisional"),
        "{ring:?}"
    );
    assert_eq!(ring.get("SipResponseCode").map(String::as_str), Some("180"));
    assert_eq!(
        ring.get("SipHeader_X-Ring-Tone").map(String::as_str),
        Some("classic")
    );
    assert_eq!(
        bye.get("SipEvent").map(String::as_str),
        Some("bye"),
        "{bye:?}"
    );
    assert_eq!(bye.get("SipMethod").map(String::as_str), Some("BYE"));
    assert_eq!(
        bye.get("SipHeader_Reason").map(String::as_str),
        Some(r#"Q.850;cause=16;text="Normal call clearing""#)
    );
    for e in [ring, bye] {
        assert_eq!(e.get("CallSid"), Some(&leg_sid));
        assert_eq!(e.get("ParentCallSid"), Some(&call_sid));
        assert_eq!(
            e.get("CallbackSource").map(String::as_str),
            Some("sip-events")
        );
    }
    let all = app_state.seen.lock().expect("seen").clone();
    let at = |pred: &dyn Fn(&Seen) -> bool| all.iter().position(pred).expect("request");
    let status_at = |st: &str| {
        at(&|s: &Seen| {
            s.path == "/leg" && s.params.get("CallStatus").map(String::as_str) == Some(st)
        })
    };
    let ev_at = |ev: &str| {
        at(&|s: &Seen| {
            s.path == "/sipevents" && s.params.get("SipEvent").map(String::as_str) == Some(ev)
        })
    };
    assert!(status_at("initiated") < ev_at("provisional"));
    assert!(ev_at("provisional") < status_at("in-progress"));
    assert!(status_at("in-progress") < ev_at("bye"));
    assert!(ev_at("bye") < status_at("completed"));
    // The registration through /v1/: the leg inherits the application's; a call's own wins
    // and can be removed again.
    let reg_url = format!("{api}/v1/Accounts/{sid}/Calls/{leg_sid}/SipEvents.json");
    let (a4, se4) = (auth(&sid, &token), app_url("/sipevents-own"));
    tokio::task::spawn_blocking(move || {
        let get = || -> Result<Value, u16> {
            match ureq::get(&reg_url).set("Authorization", &a4).call() {
                Ok(r) => Ok(r.into_json().expect("json")),
                Err(ureq::Error::Status(s, _)) => Err(s),
                Err(e) => panic!("{e}"),
            }
        };
        let inherited = get().expect("inherited registration");
        assert_eq!(inherited["source"], "application", "{inherited}");
        assert_eq!(
            inherited["events"],
            serde_json::json!(["provisional", "bye"])
        );
        let set: Value = ureq::post(&reg_url)
            .set("Authorization", &a4)
            .send_form(&[
                ("SipEventsUrl", se4.as_str()),
                ("SipEventsFilter", "Reason: cause=16"),
            ])
            .expect("registered")
            .into_json()
            .expect("json");
        assert_eq!(set["source"], "call", "{set}");
        assert_eq!(set["filter"], "Reason: cause=16");
        assert_eq!(
            set["events"].as_array().map(Vec::len),
            Some(8),
            "default: all events"
        );
        let gone = ureq::delete(&reg_url).set("Authorization", &a4).call();
        assert_eq!(gone.expect("deleted").status(), 204);
        assert_eq!(get().expect("inherited again")["source"], "application");
        let hostile = ureq::post(&reg_url)
            .set("Authorization", &a4)
            .send_form(&[("SipEventsUrl", "file:///etc/passwd")]);
        assert!(
            matches!(hostile, Err(ureq::Error::Status(400, _))),
            "{hostile:?}"
        );
    })
    .await
    .expect("join");
    assert_eq!(
        r.engine.as_ref().expect("engine").dialled_legs(),
        0,
        "no dialled leg is left registered with the engine"
    );

    // Fallbacks: each primary failure reaches /fallback with its code, and is noted.
    let cases = [
        ("+15550101", "/fail500", "11200"),
        ("+15550102", "/html", "12300"),
        ("+15550103", "/malformed", "12100"),
        ("+15550104", "/slow", "11200"),
        // Hostile documents: refused quickly, the call goes on with the fallback.
        ("+15550105", "/bomb", "12100"),
        ("+15550106", "/huge", "11750"),
        // 10,000 levels do not fit in 64 KB: refused by size; 3,000 levels by depth.
        ("+15550107", "/deep", "11750"),
        ("+15550109", "/deep3000", "12200"),
        // The application's fetch defaults (rt=500) apply to its URL.
        ("+15550111", "/slow", "11200"),
        ("+15550108", "/unknown", "12200"),
    ];
    for (i, (number, _, _)) in cases.iter().enumerate() {
        let number = number.to_string();
        let (ok, out) = tokio::task::spawn_blocking(move || {
            sipp("uac_wait_bye.xml", &number, sip, 29410 + 2 * i as u16)
        })
        .await
        .expect("join");
        assert!(ok, "sipp call to {} failed:\n{out}", cases[i].0);
    }
    let fallback = seen("/fallback");
    assert_eq!(fallback.len(), cases.len(), "{fallback:?}");
    for (number, path, code) in cases {
        let f = fallback
            .iter()
            .find(|f| f.params.get("To").map(String::as_str) == Some(number))
            .unwrap_or_else(|| panic!("no fallback request for {number}: {fallback:?}"));
        assert_eq!(
            f.params.get("ErrorCode").map(String::as_str),
            Some(code),
            "{number}"
        );
        let error_url = f.params.get("ErrorUrl").cloned().unwrap_or_default();
        assert!(error_url.contains(path), "{number}: {error_url}");
    }
    let notes = store
        .list(
            &voxedge_controlplane::store::NOTIFICATIONS,
            &sid,
            &[],
            ("date_created", false),
            None,
            0,
            100,
        )
        .await
        .expect("notifications");
    let codes: Vec<String> = notes
        .0
        .iter()
        .filter_map(|n| {
            n.get("error_code")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    for code in ["11200", "12300", "12100", "11750", "12200"] {
        assert!(
            codes.iter().any(|c| c == code),
            "{code} not noted: {codes:?}"
        );
    }

    // Every request was signed as the twilio library validates it.
    let all = app_state.seen.lock().expect("seen").clone();
    let cases: Vec<Value> = all
        .iter()
        .map(|s| serde_json::json!({"url": s.url, "params": s.params, "signature": s.signature}))
        .collect();
    let script = r#"
import json, sys
from twilio.request_validator import RequestValidator
d = json.load(sys.stdin)
v = RequestValidator(d["token"])
bad = [c["url"] for c in d["cases"] if not v.validate(c["url"], c["params"], c["signature"])]
print(json.dumps({"checked": len(d["cases"]), "bad": bad}))
"#;
    let input = serde_json::json!({"token": token, "cases": cases}).to_string();
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python ran");
    let v: Value = serde_json::from_slice(&out.stdout).expect("validator output");
    assert_eq!(v["bad"], serde_json::json!([]), "{v}");
    assert!(v["checked"].as_u64().unwrap_or(0) >= 8, "{v}");

    // Usage per module: each document URL with its fetches and the seconds calls spent in
    // its instructions (written as each call's instructions end).
    let (ua, uurl) = (
        auth(&sid, &token),
        format!("{api}/2010-04-01/Accounts/{sid}/Usage/Records.json?Category=calls-module"),
    );
    let records: Value = tokio::task::spawn_blocking(move || {
        ureq::get(&uurl)
            .set("Authorization", &ua)
            .call()
            .expect("usage")
            .into_json()
            .expect("json")
    })
    .await
    .expect("join");
    let modules: BTreeMap<String, (u64, u64)> = records["usage_records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            assert_eq!(r["category"], "calls-module", "{r}");
            let n = |k: &str| r[k].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
            (
                r["module"].as_str().expect("module").to_string(),
                (n("count"), n("usage")),
            )
        })
        .collect();
    let of = |p: &str| modules.get(&app_url(p)).copied().unwrap_or_default();
    assert!(of("/voice").0 >= 1, "{modules:?}");
    assert!(
        of("/digits").0 >= 1 && of("/digits").1 >= 2,
        "the bridged call ran in /digits: {modules:?}"
    );
    assert!(of("/dialed").0 >= 1, "{modules:?}");
    assert!(
        of("/fail500").0 >= 1 && of("/fail500").1 == 0,
        "fetched, never run: {modules:?}"
    );
    assert!(
        of("/fallback").0 >= 4,
        "every failing primary fell back: {modules:?}"
    );
    r.shutdown().await;
}
