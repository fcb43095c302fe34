//! The Twilio-compatible REST API end to end, in-process on port 0: every test runs on SQLite
//! and, when `VOXEDGE_TEST_POSTGRES` names a database, on PostgreSQL too (scripts/test sets it
//! up and sets `VOXEDGE_REQUIRE_POSTGRES=1`, so the PostgreSQL half cannot be skipped in CI).

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use voxedge_controlplane::app::{self, Role, Running};
use voxedge_controlplane::config::{Config, SipRoute};
use voxedge_dataplane::BackendKind;

mod common;
use common::Callee;

const KEY: &str = "0011223344556677889900112233445566778899001122334455667788990011";

/// The databases every test runs on: SQLite in the test's scratch directory
/// (removed with it) and, when configured, PostgreSQL.
fn databases(dir: &Path) -> Vec<String> {
    let mut v = vec![format!("sqlite://{}", dir.join("store.db").display())];
    match std::env::var("VOXEDGE_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => v.push(url),
        _ => assert!(
            std::env::var("VOXEDGE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "VOXEDGE_REQUIRE_POSTGRES=1 but VOXEDGE_TEST_POSTGRES is not set"
        ),
    }
    v
}

fn config(db: &str, dir: &Path, port_min: u16) -> Config {
    let mut c = Config::default();
    c.ng.listen = "127.0.0.1:0".parse().expect("addr");
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.sip.listen = "127.0.0.1:0".parse().expect("addr");
    c.api.listen = "127.0.0.1:0".parse().expect("addr");
    c.api.database = db.to_string();
    c.api.secret_key = Some(KEY.into());
    common::media_dirs(&mut c, dir);
    c.api.sip_uri_calls = true;
    c.api.calls_per_second_per_account = 50;
    c.dataplane.workers = 1;
    c.dataplane.pin_cores = false;
    c.dataplane.bind = "127.0.0.1".parse().expect("ip");
    c.dataplane.port_min = port_min;
    c.dataplane.port_max = port_min + 99;
    c
}

async fn start(c: Config) -> (Running, String) {
    start_on(c, BackendKind::Memory).await
}

async fn start_on(c: Config, backend: BackendKind) -> (Running, String) {
    let r = app::start(Role::Serve, c, backend).await.expect("start");
    let base = format!("http://{}", r.api.expect("serve has the REST API"));
    (r, base)
}

/// An account: SID and token.
#[derive(Clone)]
struct Acc {
    sid: String,
    token: String,
}

async fn account(r: &Running, name: &str) -> Acc {
    let (a, token) = r
        .store
        .as_ref()
        .expect("store")
        .create_account(name, None)
        .await
        .expect("account");
    Acc { sid: a.sid, token }
}

/// (status, JSON body) of a request with Basic auth `auth` and a form body.
fn req(method: &str, url: &str, auth: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
    let mut r = ureq::request(method, url).timeout(Duration::from_secs(10));
    if let Some((u, p)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        r = r.set("Authorization", &format!("Basic {b}"));
    }
    let res = if form.is_empty() {
        r.call()
    } else {
        r.send_form(form)
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

impl Acc {
    fn auth(&self) -> Option<(&str, &str)> {
        Some((&self.sid, &self.token))
    }
    fn url(&self, base: &str, rest: &str) -> String {
        format!("{base}/2010-04-01/Accounts/{}{rest}", self.sid)
    }
}

fn assert_error(got: &(u16, Value), status: u16, code: u64) {
    assert_eq!(got.0, status, "{:?}", got.1);
    assert_eq!(got.1["code"], code, "{:?}", got.1);
    assert_eq!(got.1["status"], status, "{:?}", got.1);
    assert!(got.1["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(got.1["more_info"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_numbers_paging_and_subaccounts() {
    let scratch = common::scratch_dir("rest-crud");
    for db in databases(scratch.path()) {
        let (r, base) = start(config(&db, scratch.path(), 32100)).await;
        let a = account(&r, "tenant a").await;
        let b = base.clone();
        tokio::task::spawn_blocking(move || {
            // Applications: create, fetch, update, list with paging, delete.
            let mut apps = Vec::new();
            for i in 0..3 {
                let (s, app) = req(
                    "POST",
                    &a.url(&b, "/Applications.json"),
                    a.auth(),
                    &[
                        ("FriendlyName", &format!("app {i}")),
                        ("VoiceUrl", "https://app.example.com/voice"),
                        ("VoiceMethod", "get"),
                    ],
                );
                assert_eq!(s, 201, "{app}");
                assert_eq!(app["voice_method"], "GET");
                assert_eq!(app["voice_fallback_method"], "POST");
                assert_eq!(app["account_sid"], a.sid.as_str());
                assert!(app["date_created"]
                    .as_str()
                    .is_some_and(|d| d.ends_with("+0000")));
                apps.push(app["sid"].as_str().expect("sid").to_string());
            }
            let (s, one) = req(
                "GET",
                &a.url(&b, &format!("/Applications/{}.json", apps[0])),
                a.auth(),
                &[],
            );
            assert_eq!((s, one["friendly_name"].as_str()), (200, Some("app 0")));
            // Without the .json suffix too.
            let (s, _) = req(
                "GET",
                &a.url(&b, &format!("/Applications/{}", apps[0])),
                a.auth(),
                &[],
            );
            assert_eq!(s, 200);
            let (s, up) = req(
                "POST",
                &a.url(&b, &format!("/Applications/{}.json", apps[0])),
                a.auth(),
                &[("StatusCallback", "https://app.example.com/status")],
            );
            assert_eq!(
                (s, up["status_callback"].as_str()),
                (200, Some("https://app.example.com/status"))
            );
            assert_eq!(up["friendly_name"], "app 0", "untouched fields stay");
            // Paging: two pages of two, following next_page_uri.
            let mut seen = Vec::new();
            let mut next = Some(format!(
                "/2010-04-01/Accounts/{}/Applications.json?PageSize=2",
                a.sid
            ));
            let mut pages = 0;
            while let Some(uri) = next {
                let (s, page) = req("GET", &format!("{b}{uri}"), a.auth(), &[]);
                assert_eq!(s, 200, "{page}");
                for app in page["applications"].as_array().expect("list") {
                    seen.push(app["sid"].as_str().expect("sid").to_string());
                }
                next = page["next_page_uri"].as_str().map(str::to_string);
                pages += 1;
                assert!(pages < 5, "paging terminates");
            }
            assert_eq!(pages, 2);
            assert_eq!(
                seen.len(),
                3,
                "keyset pages neither skip nor repeat: {seen:?}"
            );
            seen.sort();
            let mut want = apps.clone();
            want.sort();
            assert_eq!(seen, want);
            // Numbers bound to an application; a number is unique across the node.
            let number = format!("+1555{:07}", std::process::id() % 10_000_000);
            let (s, n) = req(
                "POST",
                &a.url(&b, "/IncomingPhoneNumbers.json"),
                a.auth(),
                &[("PhoneNumber", &number), ("VoiceApplicationSid", &apps[1])],
            );
            assert_eq!(s, 201, "{n}");
            assert_eq!(n["voice_application_sid"], apps[1].as_str());
            assert_eq!(n["phone_number"], number.as_str());
            let again = req(
                "POST",
                &a.url(&b, "/IncomingPhoneNumbers.json"),
                a.auth(),
                &[("PhoneNumber", &number)],
            );
            assert_error(&again, 400, 21422);
            let bad = req(
                "POST",
                &a.url(&b, "/IncomingPhoneNumbers.json"),
                a.auth(),
                &[("PhoneNumber", "5551234")],
            );
            assert_error(&bad, 400, 20001);
            let (s, list) = req(
                "GET",
                &a.url(
                    &b,
                    &format!(
                        "/IncomingPhoneNumbers.json?PhoneNumber={}",
                        number.replace('+', "%2B")
                    ),
                ),
                a.auth(),
                &[],
            );
            assert_eq!(s, 200);
            assert_eq!(
                list["incoming_phone_numbers"].as_array().map(Vec::len),
                Some(1)
            );
            // Delete, then 404.
            let (s, _) = req(
                "DELETE",
                &a.url(&b, &format!("/Applications/{}.json", apps[2])),
                a.auth(),
                &[],
            );
            assert_eq!(s, 204);
            let gone = req(
                "GET",
                &a.url(&b, &format!("/Applications/{}.json", apps[2])),
                a.auth(),
                &[],
            );
            assert_error(&gone, 404, 20404);
            let (s, _) = req(
                "DELETE",
                &a.url(
                    &b,
                    &format!(
                        "/IncomingPhoneNumbers/{}.json",
                        n["sid"].as_str().expect("sid")
                    ),
                ),
                a.auth(),
                &[],
            );
            assert_eq!(s, 204);

            // Subaccounts: the parent sees and manages them; they do not see the parent.
            let (s, sub) = req(
                "POST",
                &format!("{b}/2010-04-01/Accounts.json"),
                a.auth(),
                &[("FriendlyName", "child")],
            );
            assert_eq!(s, 201, "{sub}");
            assert_eq!(sub["owner_account_sid"], a.sid.as_str());
            let child = Acc {
                sid: sub["sid"].as_str().expect("sid").into(),
                token: sub["auth_token"].as_str().expect("token").into(),
            };
            let (s, capp) = req(
                "POST",
                &child.url(&b, "/Applications.json"),
                a.auth(),
                &[("FriendlyName", "made by parent")],
            );
            assert_eq!(s, 201, "parent creates in its subaccount: {capp}");
            let (s, l) = req(
                "GET",
                &child.url(&b, "/Applications.json"),
                child.auth(),
                &[],
            );
            assert_eq!(
                (s, l["applications"].as_array().map(Vec::len)),
                (200, Some(1))
            );
            assert_error(
                &req("GET", &a.url(&b, "/Applications.json"), child.auth(), &[]),
                404,
                20404,
            );
            assert_error(
                &req(
                    "POST",
                    &format!("{b}/2010-04-01/Accounts.json"),
                    child.auth(),
                    &[],
                ),
                403,
                20403,
            );
            let (s, accs) = req(
                "GET",
                &format!("{b}/2010-04-01/Accounts.json"),
                a.auth(),
                &[],
            );
            assert_eq!(
                (s, accs["accounts"].as_array().map(Vec::len)),
                (200, Some(2))
            );
            // Suspending the subaccount locks its credentials out.
            let (s, _) = req(
                "POST",
                &child.url(&b, ".json"),
                a.auth(),
                &[("Status", "suspended")],
            );
            assert_eq!(s, 200);
            assert_error(
                &req("GET", &child.url(&b, "/Calls.json"), child.auth(), &[]),
                401,
                20005,
            );
            // API keys: created with the token, usable for resources, not for accounts/keys.
            let (s, key) = req(
                "POST",
                &a.url(&b, "/Keys.json"),
                a.auth(),
                &[("FriendlyName", "ci")],
            );
            assert_eq!(s, 201, "{key}");
            let (ks, kp) = (
                key["sid"].as_str().expect("sid"),
                key["secret"].as_str().expect("secret"),
            );
            let (s, _) = req("GET", &a.url(&b, "/Applications.json"), Some((ks, kp)), &[]);
            assert_eq!(s, 200);
            assert_error(
                &req("GET", &a.url(&b, "/Keys.json"), Some((ks, kp)), &[]),
                403,
                20403,
            );
            assert_error(
                &req("GET", &a.url(&b, "/Calls.json"), Some((ks, "wrong")), &[]),
                401,
                20003,
            );
            let (s, _) = req(
                "DELETE",
                &a.url(&b, &format!("/Keys/{ks}.json")),
                a.auth(),
                &[],
            );
            assert_eq!(s, 204);
            assert_error(
                &req("GET", &a.url(&b, "/Calls.json"), Some((ks, kp)), &[]),
                401,
                20003,
            );
        })
        .await
        .expect("client");
        r.shutdown().await;
    }
}

/// Tenant B sees none of tenant A's resources: fetch, update and delete are 404 (never 403,
/// which would confirm the SID), and lists do not include them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_every_resource() {
    let scratch = common::scratch_dir("rest-isolation");
    for db in databases(scratch.path()) {
        let callee = Callee::new();
        let (r, base) = start(config(&db, scratch.path(), 32200)).await;
        let a = account(&r, "a").await;
        let bb = account(&r, "b").await;
        let store = r.store.clone().expect("store");
        // A notification and a recording row of A's, to cover those resources too.
        let callee_addr = callee.sock.local_addr().expect("addr");
        let b = base.clone();
        let (a2, store2) = (a.clone(), store.clone());
        let sids = tokio::task::spawn_blocking(move || {
            let a = a2;
            let (_, app) = req(
                "POST",
                &a.url(&b, "/Applications.json"),
                a.auth(),
                &[("FriendlyName", "x")],
            );
            let number = format!("+1444{:07}", std::process::id() % 10_000_000);
            let (_, num) = req(
                "POST",
                &a.url(&b, "/IncomingPhoneNumbers.json"),
                a.auth(),
                &[("PhoneNumber", &number)],
            );
            let (s, call) = req(
                "POST",
                &a.url(&b, "/Calls.json"),
                a.auth(),
                &[
                    ("To", &format!("sip:callee@{callee_addr}")),
                    ("From", "+15550001111"),
                    ("Url", "https://app.example.com/v"),
                ],
            );
            assert_eq!(s, 201, "{call}");
            // The callee fails; the call ends failed, with a notification (82003).
            let (inv, from) = callee.recv();
            callee.reply(&inv, 503, "Service Unavailable", from, false);
            let call_sid = call["sid"].as_str().expect("sid").to_string();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (_, c) = req(
                    "GET",
                    &a.url(&b, &format!("/Calls/{call_sid}.json")),
                    a.auth(),
                    &[],
                );
                if c["status"] == "failed" {
                    break;
                }
                assert!(Instant::now() < deadline, "call did not end failed: {c}");
                std::thread::sleep(Duration::from_millis(50));
            }
            let (_, key) = req("POST", &a.url(&b, "/Keys.json"), a.auth(), &[]);
            // The failure's notification is written just after the status change.
            let deadline = Instant::now() + Duration::from_secs(10);
            let note = loop {
                let (_, notes) = req("GET", &a.url(&b, "/Notifications.json"), a.auth(), &[]);
                if let Some(sid) = notes["notifications"][0]["sid"].as_str() {
                    break sid.to_string();
                }
                assert!(Instant::now() < deadline, "no notification: {notes}");
                std::thread::sleep(Duration::from_millis(50));
            };
            (
                app["sid"].as_str().expect("sid").to_string(),
                num["sid"].as_str().expect("sid").to_string(),
                call_sid,
                key["sid"].as_str().expect("sid").to_string(),
                note,
            )
        })
        .await
        .expect("setup");
        let rec = voxedge_controlplane::secret::new_sid("RE");
        let now = voxedge_controlplane::store::now_us();
        store2
            .insert(
                &voxedge_controlplane::store::RECORDINGS,
                &[
                    ("sid", Value::from(rec.clone())),
                    ("account_sid", Value::from(a.sid.clone())),
                    ("call_sid", Value::from(sids.2.clone())),
                    ("api_version", Value::from("2010-04-01")),
                    ("status", Value::from("completed")),
                    ("source", Value::from("OutboundAPI")),
                    ("channels", Value::from(1)),
                    ("date_created", Value::from(now)),
                    ("date_updated", Value::from(now)),
                ],
            )
            .await
            .expect("recording row");
        let b = base.clone();
        tokio::task::spawn_blocking(move || {
            let (app, num, call, key, note) = sids;
            // A sees them.
            for path in [
                format!("/Applications/{app}.json"),
                format!("/IncomingPhoneNumbers/{num}.json"),
                format!("/Calls/{call}.json"),
                format!("/Keys/{key}.json"),
                format!("/Notifications/{note}.json"),
                format!("/Recordings/{rec}.json"),
                format!("/Calls/{call}/Recordings.json"),
                format!("/Calls/{call}/Notifications.json"),
                format!("/Calls/{call}/Events.json"),
                ".json".to_string(),
            ] {
                let (s, v) = req("GET", &a.url(&b, &path), a.auth(), &[]);
                assert_eq!(s, 200, "A GET {path}: {v}");
            }
            // B, addressing A's account in the path: 404 everywhere.
            for path in [
                "/Applications.json",
                "/IncomingPhoneNumbers.json",
                "/Calls.json",
                "/Keys.json",
                "/Notifications.json",
                "/Recordings.json",
                "/Usage/Records.json",
                ".json",
            ] {
                assert_error(&req("GET", &a.url(&b, path), bb.auth(), &[]), 404, 20404);
            }
            // B, under its own account, naming A's SIDs: 404 for fetch, update and delete.
            for (coll, sid) in [
                ("Applications", &app),
                ("IncomingPhoneNumbers", &num),
                ("Calls", &call),
                ("Keys", &key),
                ("Notifications", &note),
                ("Recordings", &rec),
            ] {
                let path = format!("/{coll}/{sid}.json");
                assert_error(&req("GET", &bb.url(&b, &path), bb.auth(), &[]), 404, 20404);
                assert_error(
                    &req("DELETE", &bb.url(&b, &path), bb.auth(), &[]),
                    404,
                    20404,
                );
                if matches!(
                    coll,
                    "Applications" | "IncomingPhoneNumbers" | "Calls" | "Keys"
                ) {
                    let got = req(
                        "POST",
                        &bb.url(&b, &path),
                        bb.auth(),
                        &[("FriendlyName", "mine")],
                    );
                    assert!(got.0 == 404 || got.0 == 400, "{coll} update: {:?}", got);
                    if got.0 == 404 {
                        assert_eq!(got.1["code"], 20404);
                    }
                }
            }
            for sub in ["Recordings", "Notifications", "Events"] {
                assert_error(
                    &req(
                        "GET",
                        &bb.url(&b, &format!("/Calls/{call}/{sub}.json")),
                        bb.auth(),
                        &[],
                    ),
                    404,
                    20404,
                );
            }
            // B's lists do not contain A's rows; B's account list is B alone.
            for (coll, key_name) in [
                ("Applications", "applications"),
                ("IncomingPhoneNumbers", "incoming_phone_numbers"),
                ("Calls", "calls"),
                ("Notifications", "notifications"),
                ("Recordings", "recordings"),
                ("Keys", "keys"),
            ] {
                let (s, l) = req("GET", &bb.url(&b, &format!("/{coll}.json")), bb.auth(), &[]);
                assert_eq!(s, 200);
                assert_eq!(l[key_name].as_array().map(Vec::len), Some(0), "{coll}: {l}");
            }
            let (_, accs) = req(
                "GET",
                &format!("{b}/2010-04-01/Accounts.json"),
                bb.auth(),
                &[],
            );
            assert_eq!(accs["accounts"].as_array().map(Vec::len), Some(1));
            // B cannot bind A's application to its own number.
            let number = format!("+1333{:07}", std::process::id() % 10_000_000);
            let got = req(
                "POST",
                &bb.url(&b, "/IncomingPhoneNumbers.json"),
                bb.auth(),
                &[("PhoneNumber", &number), ("VoiceApplicationSid", &app)],
            );
            assert_error(&got, 400, 21606);
            // A's resources are still there.
            let (s, _) = req(
                "GET",
                &a.url(&b, &format!("/Calls/{call}.json")),
                a.auth(),
                &[],
            );
            assert_eq!(s, 200);
        })
        .await
        .expect("client");
        r.shutdown().await;
    }
}

/// Calls placed through the API reach a SIP callee: ringing, answer, redirect, hang-up from
/// the API and from the callee, busy, no answer (ring timeout → CANCEL), cancel while ringing,
/// the per-account queue and concurrency limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_follow_the_signalling() {
    let scratch = common::scratch_dir("rest-calls");
    for db in databases(scratch.path()) {
        let callee = Callee::new();
        let callee_addr = callee.sock.local_addr().expect("addr");
        let mut c = config(&db, scratch.path(), 26700);
        c.api.calls_per_second_per_account = 2;
        c.api.calls_concurrent_per_account = 3;
        c.sip.routes = vec![SipRoute {
            pattern: "+1777*".into(),
            target: format!("sip:{callee_addr}"),
            username: None,
            password: None,
            codecs: None,
        }];
        let (r, base) = start_on(c, BackendKind::Socket).await;
        let a = account(&r, "caller").await;
        tokio::task::spawn_blocking(move || {
            let b = base;
            let status = |sid: &str| req("GET", &a.url(&b, &format!("/Calls/{sid}.json")), a.auth(), &[]).1;
            let wait = |sid: &str, want: &str| {
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let c = status(sid);
                    if c["status"] == want {
                        return c;
                    }
                    assert!(Instant::now() < deadline, "call {sid} never reached {want}: {c}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            };
            let create = |to: &str, extra: &[(&str, &str)]| {
                // Instructions inline: tones until hung up (no app server needed).
                let mut form = vec![("To", to), ("From", "+15550001111"), ("Twiml", r#"<Response><Play loop="0" digits="1"/></Response>"#)];
                form.extend_from_slice(extra);
                req("POST", &a.url(&b, "/Calls.json"), a.auth(), &form)
            };
            // 1. Answered, redirected, hung up from the API.
            let (s, call) = create("+17770001", &[]);
            assert_eq!(s, 201, "{call}");
            assert_eq!(call["status"], "queued");
            assert_eq!(call["direction"], "outbound-api");
            let sid = call["sid"].as_str().expect("sid").to_string();
            let (inv, from) = callee.recv();
            assert!(inv.header("To").is_some_and(|t| t.contains("+17770001")), "routed by the dial plan");
            callee.reply(&inv, 180, "Ringing", from, false);
            wait(&sid, "ringing");
            callee.reply(&inv, 200, "OK", from, true);
            let (ack, _) = callee.recv();
            assert_eq!(ack.method().map(ToString::to_string).as_deref(), Some("ACK"));
            let live = wait(&sid, "in-progress");
            assert!(live["start_time"].is_string());
            // The call runs its instructions: the callee hears the played tones, from the
            // port we offered, in the codec it answered (PCMU).
            let port = inv
                .sdp()
                .and_then(|s| String::from_utf8(s.to_vec()).ok())
                .and_then(|s| s.lines().find_map(|l| l.strip_prefix("m=audio ").and_then(|r| r.split(' ').next()?.parse::<u16>().ok())))
                .expect("offer port");
            let mut buf = [0u8; 2048];
            let (n, played_from) = callee.rtp.recv_from(&mut buf).expect("the callee hears the instructions");
            assert_eq!((n, played_from.port(), buf[1] & 0x7f), (172, port, 0), "played from the offered port");
            // Redirected live to new inline instructions (a long pause): the tones stop.
            let (s, red) = req("POST", &a.url(&b, &format!("/Calls/{sid}.json")), a.auth(), &[("Twiml", r#"<Response><Pause length="60"/></Response>"#)]);
            assert_eq!((s, red["status"].as_str()), (200, Some("in-progress")));
            callee.rtp.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
            let quiet_by = Instant::now() + Duration::from_secs(5);
            while callee.rtp.recv_from(&mut buf).is_ok() {
                assert!(Instant::now() < quiet_by, "the redirect did not stop the tones");
            }
            callee.rtp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let (s, _) = req("POST", &a.url(&b, &format!("/Calls/{sid}.json")), a.auth(), &[("Status", "completed")]);
            assert_eq!(s, 200);
            let (bye, from) = callee.recv();
            assert_eq!(bye.method().map(ToString::to_string).as_deref(), Some("BYE"));
            callee.reply(&bye, 200, "OK", from, false);
            let done = wait(&sid, "completed");
            assert!(done["end_time"].is_string());
            assert!(done["duration"].as_str().is_some_and(|d| d.parse::<u64>().is_ok()));
            let redirect_again = req("POST", &a.url(&b, &format!("/Calls/{sid}.json")), a.auth(), &[("Url", "https://app.example.com/x")]);
            assert_error(&redirect_again, 400, 21220);
            // Nothing went wrong with the instructions: no notifications.
            let (_, notes) = req("GET", &a.url(&b, &format!("/Calls/{sid}/Notifications.json")), a.auth(), &[]);
            assert_eq!(notes["notifications"].as_array().map(Vec::len), Some(0), "{notes}");

            // 2. The callee hangs up.
            let (_, call) = create("+17770002", &[]);
            let sid = call["sid"].as_str().expect("sid").to_string();
            let (inv, from) = callee.recv();
            callee.reply(&inv, 200, "OK", from, true);
            let (_ack, _) = callee.recv();
            wait(&sid, "in-progress");
            let bye = format!(
                "BYE sip:voxedge@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {callee_addr};branch=z9hG4bKcalleebye\r\nMax-Forwards: 70\r\n\
From: {to};tag=callee1\r\nTo: {fromh}\r\nCall-ID: {cid}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
                server = from,
                to = inv.header("To").expect("to"),
                fromh = inv.header("From").expect("from"),
                cid = inv.header("Call-ID").expect("cid"),
            );
            callee.sock.send_to(bye.as_bytes(), from).expect("bye");
            let (ok, _) = callee.recv();
            assert_eq!(ok.status(), Some(200));
            wait(&sid, "completed");

            // 3. Busy.
            let (_, call) = create("+17770003", &[]);
            let sid = call["sid"].as_str().expect("sid").to_string();
            let (inv, from) = callee.recv();
            callee.reply(&inv, 486, "Busy Here", from, false);
            let _ = callee.recv(); // ACK
            wait(&sid, "busy");

            // 4. No answer: the ring timeout CANCELs.
            let (_, call) = create("+17770004", &[("Timeout", "1")]);
            let sid = call["sid"].as_str().expect("sid").to_string();
            let (inv, from) = callee.recv();
            callee.reply(&inv, 180, "Ringing", from, false);
            let (cancel, from2) = callee.recv();
            assert_eq!(cancel.method().map(ToString::to_string).as_deref(), Some("CANCEL"));
            callee.reply(&cancel, 200, "OK", from2, false);
            callee.reply(&inv, 487, "Request Terminated", from, false);
            wait(&sid, "no-answer");
            let _ = callee.recv(); // ACK of the 487

            // 5. Canceled through the API while ringing.
            let (_, call) = create("+17770005", &[]);
            let sid = call["sid"].as_str().expect("sid").to_string();
            let (inv, from) = callee.recv();
            callee.reply(&inv, 180, "Ringing", from, false);
            wait(&sid, "ringing");
            let (s, _) = req("POST", &a.url(&b, &format!("/Calls/{sid}.json")), a.auth(), &[("Status", "canceled")]);
            assert_eq!(s, 200);
            let (cancel, from2) = callee.recv();
            assert_eq!(cancel.method().map(ToString::to_string).as_deref(), Some("CANCEL"));
            callee.reply(&cancel, 200, "OK", from2, false);
            callee.reply(&inv, 487, "Request Terminated", from, false);
            wait(&sid, "canceled");
            let _ = callee.recv(); // ACK
            let (s, _) = req("DELETE", &a.url(&b, &format!("/Calls/{sid}.json")), a.auth(), &[]);
            assert_eq!(s, 204, "finished calls can be deleted");

            // 6. Queue and concurrency: 2 calls/s, 3 live at most. The callee never answers
            // these; they are canceled from the API.
            std::thread::sleep(Duration::from_millis(1100));
            let mut sids = Vec::new();
            for i in 0..3 {
                let (s, c) = create(&format!("+1777001{i}"), &[]);
                assert_eq!(s, 201, "{c}");
                sids.push(c["sid"].as_str().expect("sid").to_string());
            }
            let over = create("+17770020", &[]);
            assert_error(&over, 429, 20429);
            let mut invites: Vec<(voxedge_sip_core::SipMessage, std::net::SocketAddr)> = Vec::new();
            while invites.len() < 3 {
                let (m, from) = callee.recv();
                let new = m.method().map(ToString::to_string).as_deref() == Some("INVITE")
                    && !invites.iter().any(|(i, _)| i.header("Call-ID") == m.header("Call-ID"));
                if new {
                    callee.reply(&m, 100, "Trying", from, false);
                    invites.push((m, from));
                }
            }
            let third = wait(&sids[2], "initiated");
            let q: u64 = third["queue_time"].as_str().and_then(|q| q.parse().ok()).expect("queue_time");
            assert!(q >= 700, "the third call waited for its slot: {q} ms");
            let first: u64 = status(&sids[0])["queue_time"].as_str().and_then(|q| q.parse().ok()).expect("queue_time");
            assert!(first < 300, "the first call started at once: {first} ms");
            for sid in &sids {
                let (s, _) = req("POST", &a.url(&b, &format!("/Calls/{sid}.json")), a.auth(), &[("Status", "canceled")]);
                assert_eq!(s, 200);
            }
            let mut cancels = 0;
            while cancels < 3 {
                let (m, from) = callee.recv();
                if m.method().map(ToString::to_string).as_deref() == Some("CANCEL") {
                    cancels += 1;
                    callee.reply(&m, 200, "OK", from, false);
                    let inv = invites
                        .iter()
                        .find(|(i, _)| i.header("Call-ID") == m.header("Call-ID"))
                        .expect("its INVITE");
                    callee.reply(&inv.0, 487, "Request Terminated", inv.1, false);
                }
            }
            for sid in &sids {
                wait(sid, "canceled");
            }
            // Filters.
            let (_, l) = req("GET", &a.url(&b, "/Calls.json?Status=canceled"), a.auth(), &[]);
            assert!(l["calls"].as_array().is_some_and(|c| c.len() == 3 && c.iter().all(|c| c["status"] == "canceled")), "{l}");
            let (_, l) = req("GET", &a.url(&b, "/Calls.json?To=%2B17770002"), a.auth(), &[]);
            assert_eq!(l["calls"].as_array().map(Vec::len), Some(1));
            let (_, u) = req("GET", &a.url(&b, "/Usage/Records.json?Category=calls"), a.auth(), &[]);
            assert_eq!(u["usage_records"][0]["count"], "7", "eight calls, one deleted: {u}");
        })
        .await
        .expect("client");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(r.dataplane.relay_count(), 0, "no media left behind");
        r.shutdown().await;
    }
}

/// Hostile and malformed requests get the right 4xx and a Twilio error — never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_4xx_errors() {
    let scratch = common::scratch_dir("rest-bad");
    for db in databases(scratch.path()) {
        let mut c = config(&db, scratch.path(), 32400);
        c.api.requests_per_second_per_account = 40;
        let (r, base) = start(c).await;
        let a = account(&r, "a").await;
        tokio::task::spawn_blocking(move || {
            let b = base;
            let calls = a.url(&b, "/Calls.json");
            // Authentication.
            assert_error(&req("GET", &calls, None, &[]), 401, 20003);
            assert_error(&req("GET", &calls, Some((&a.sid, "nope")), &[]), 401, 20003);
            assert_error(
                &req("GET", &calls, Some(("ACnot-a-sid", "x")), &[]),
                401,
                20003,
            );
            assert_error(&req("GET", &calls, Some(("", "")), &[]), 401, 20003);
            let garbage = ureq::get(&calls)
                .set("Authorization", "Basic !!!not base64")
                .call();
            let Err(ureq::Error::Status(401, _)) = garbage else {
                panic!("garbage auth: {garbage:?}")
            };
            // Paths: unknown, path traversal, malformed SIDs, wrong method.
            assert_error(
                &req("GET", &format!("{b}/2010-04-01/Nope.json"), a.auth(), &[]),
                404,
                20404,
            );
            assert_error(
                &req(
                    "GET",
                    &a.url(&b, "/Calls/..%2F..%2Fetc%2Fpasswd.json"),
                    a.auth(),
                    &[],
                ),
                404,
                20404,
            );
            assert_error(
                &req("GET", &a.url(&b, "/Calls/CA%00.json"), a.auth(), &[]),
                404,
                20404,
            );
            assert_error(
                &req("GET", &a.url(&b, "/Calls/CAZZZZ.json"), a.auth(), &[]),
                404,
                20404,
            );
            assert_error(
                &req(
                    "GET",
                    &format!("{b}/2010-04-01/Accounts/%2E%2E/Calls.json"),
                    a.auth(),
                    &[],
                ),
                404,
                20404,
            );
            assert_error(&req("PUT", &calls, a.auth(), &[]), 405, 20004);
            // Parameters.
            assert_error(
                &req("POST", &calls, a.auth(), &[("From", "+1555")]),
                400,
                21201,
            );
            assert_error(
                &req("POST", &calls, a.auth(), &[("To", "+1555")]),
                400,
                21213,
            );
            assert_error(
                &req(
                    "POST",
                    &calls,
                    a.auth(),
                    &[("To", "+1555"), ("From", "+1"), ("Bogus", "1")],
                ),
                400,
                20001,
            );
            assert_error(
                &req("POST", &calls, a.auth(), &[("To", "+1555"), ("From", "+1")]),
                400,
                21205,
            );
            assert_error(
                &req(
                    "POST",
                    &calls,
                    a.auth(),
                    &[("To", "+1"), ("From", "+1"), ("Url", "ftp://x")],
                ),
                400,
                20001,
            );
            // POST /Calls with a valid To, From and Url plus one bad addition.
            let with = |extra: (&str, &str)| {
                let form = [("To", "+1"), ("From", "+1"), ("Url", "https://x/"), extra];
                req("POST", &calls, a.auth(), &form)
            };
            for (extra, code) in [
                (("Method", "DELETE"), 20001),
                (("Timeout", "abc"), 20001),
                (("Record", "true"), 20001),
                (("Url", "https://y/"), 20001),
                // Callback URLs that would reach this network are refused (SSRF).
                (("StatusCallback", "http://127.0.0.1:9091/metrics"), 21609),
                (("StatusCallback", "http://169.254.169.254/latest"), 21609),
                (("StatusCallback", "http://localhost/x"), 21609),
            ] {
                assert_error(&with(extra), 400, code);
            }
            assert_error(
                &req(
                    "POST",
                    &calls,
                    a.auth(),
                    &[("To", "+19990000"), ("From", "+1"), ("Url", "https://x/")],
                ),
                400,
                21211,
            );
            for query in [
                "PageSize=0",
                "PageSize=100000",
                "Status=bogus",
                "StartTime=yesterday",
                "Page=-1",
                "PageToken=PAxyz",
                "PageToken=PA1_%27%3B--",
                "PageToken=PA1_CA00",
            ] {
                assert_error(
                    &req("GET", &format!("{calls}?{query}"), a.auth(), &[]),
                    400,
                    20001,
                );
            }
            let long = "x".repeat(65);
            assert_error(
                &req(
                    "POST",
                    &a.url(&b, "/Applications.json"),
                    a.auth(),
                    &[("FriendlyName", &long)],
                ),
                400,
                20001,
            );
            // Bodies: wrong content type, not UTF-8, malformed forms, a 10 MB body.
            let raw = |ct: &str, body: &[u8]| {
                let auth = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", a.sid, a.token));
                match ureq::post(&a.url(&b, "/Applications.json"))
                    .set("Authorization", &format!("Basic {auth}"))
                    .set("Content-Type", ct)
                    .send_bytes(body)
                {
                    Ok(r) | Err(ureq::Error::Status(_, r)) => {
                        let s = r.status();
                        (
                            s,
                            serde_json::from_str::<Value>(&r.into_string().unwrap_or_default())
                                .unwrap_or(Value::Null),
                        )
                    }
                    Err(e) => (0, Value::String(e.to_string())),
                }
            };
            assert_error(
                &raw("application/json", b"{\"FriendlyName\":\"x\"}"),
                415,
                20415,
            );
            assert_error(
                &raw(
                    "application/x-www-form-urlencoded",
                    b"FriendlyName=\xff\xfe",
                ),
                400,
                20001,
            );
            assert_error(
                &raw("application/x-www-form-urlencoded", b"=x&&=="),
                400,
                20001,
            );
            assert_error(
                &raw("application/x-www-form-urlencoded", b"FriendlyName=%zz%"),
                400,
                20001,
            );
            let big = vec![b'a'; 10 * 1024 * 1024];
            let got = raw("application/x-www-form-urlencoded", &big);
            assert!(got.0 == 413 || got.0 == 0, "10 MB body: {got:?}");
            if got.0 == 413 {
                assert_eq!(got.1["code"], 20413);
            }
            // The service still answers.
            let (s, _) = req("GET", &calls, a.auth(), &[]);
            assert_eq!(s, 200);
            // Rate limit per account (40/s, one second of burst). Eight clients at once
            // until the first 429, so the check does not depend on how fast one client's
            // requests are served on a loaded machine: the 200s must be at least the burst
            // and at most the burst plus what the bucket refilled while they ran.
            std::thread::sleep(Duration::from_millis(1100));
            let limited = std::sync::atomic::AtomicBool::new(false);
            let started = Instant::now();
            let codes: Vec<u16> = std::thread::scope(|s| {
                let clients: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            let mut got = Vec::new();
                            while !limited.load(std::sync::atomic::Ordering::Relaxed)
                                && started.elapsed() < Duration::from_secs(20)
                            {
                                let code = req("GET", &calls, a.auth(), &[]).0;
                                if code == 429 {
                                    limited.store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                                got.push(code);
                            }
                            got
                        })
                    })
                    .collect();
                clients
                    .into_iter()
                    .flat_map(|c| c.join().expect("client thread"))
                    .collect()
            });
            let elapsed = started.elapsed().as_secs_f64();
            assert!(codes.contains(&429), "no 429 in {elapsed:.1} s: {codes:?}");
            assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
            let ok = codes.iter().filter(|c| **c == 200).count();
            assert!(ok >= 40, "the burst allowance was honoured: {ok} accepted");
            let budget = 40.0 + 40.0 * elapsed;
            assert!(
                ok as f64 <= budget + 1.0,
                "{ok} accepted in {elapsed:.2} s, budget {budget:.0}"
            );
        })
        .await
        .expect("client");
        r.shutdown().await;
    }
}

/// `/openapi.json` is generated from the route table, matches the committed
/// `docs/api/openapi.json`, and every documented route is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_routes_and_the_committed_document() {
    let scratch = common::scratch_dir("rest-openapi");
    let db = databases(scratch.path()).remove(0);
    let (r, base) = start(config(&db, scratch.path(), 32500)).await;
    let a = account(&r, "a").await;
    tokio::task::spawn_blocking(move || {
        let (s, served) = req("GET", &format!("{base}/openapi.json"), None, &[]);
        assert_eq!(s, 200);
        assert_eq!(served, voxedge_controlplane::rest::routes::openapi());
        let committed: Value = serde_json::from_str(include_str!("../../docs/api/openapi.json")).expect("committed document parses");
        assert_eq!(
            served, committed,
            "docs/api/openapi.json is stale: regenerate with `voxedge admin openapi > docs/api/openapi.json`"
        );
        for route in voxedge_controlplane::rest::routes::ROUTES {
            let path = route
                .path
                .replace("{AccountSid}", &a.sid)
                .replace("{Sid}", "XX00000000000000000000000000000000")
                .replace("{CallSid}", "CA00000000000000000000000000000000");
            let (s, v) = req(route.method, &format!("{base}{path}"), a.auth(), &[]);
            let unrouted = s == 405 || v["message"].as_str().is_some_and(|m| m.contains(&format!("{path} was not found")) && !path.contains("XX0") && !path.contains("CA0"));
            assert!(!unrouted, "{} {} is documented but not served: {s} {v}", route.method, route.path);
            assert!(s < 500, "{} {}: {s} {v}", route.method, route.path);
        }
    })
    .await
    .expect("client");
    r.shutdown().await;
}

/// Calls a crash left live are ended at the next start, with a notification, on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_left_live_by_a_crash_are_ended_at_start() {
    let scratch = common::scratch_dir("rest-recover");
    let db = databases(scratch.path()).remove(0);
    let (r, _) = start(config(&db, scratch.path(), 32600)).await;
    let a = account(&r, "a").await;
    let store = r.store.clone().expect("store");
    let sid = voxedge_controlplane::secret::new_sid("CA");
    let now = voxedge_controlplane::store::now_us();
    store
        .insert(
            &voxedge_controlplane::store::CALLS,
            &[
                ("sid", Value::from(sid.clone())),
                ("account_sid", Value::from(a.sid.clone())),
                ("direction", Value::from("outbound-api")),
                ("from", Value::from("+1")),
                ("to", Value::from("+2")),
                ("status", Value::from("in-progress")),
                ("record", Value::Bool(false)),
                ("queue_time", Value::from(0)),
                ("price_unit", Value::from("USD")),
                ("api_version", Value::from("2010-04-01")),
                ("start_time", Value::from(now - 5_000_000)),
                ("date_created", Value::from(now - 6_000_000)),
                ("date_updated", Value::from(now)),
            ],
        )
        .await
        .expect("insert");
    r.shutdown().await;
    let (r, base) = start(config(&db, scratch.path(), 32600)).await;
    tokio::task::spawn_blocking(move || {
        let (_, c) = req(
            "GET",
            &a.url(&base, &format!("/Calls/{sid}.json")),
            a.auth(),
            &[],
        );
        assert_eq!(c["status"], "completed", "{c}");
        assert!(c["duration"]
            .as_str()
            .and_then(|d| d.parse::<u64>().ok())
            .is_some_and(|d| d >= 5));
        let (_, n) = req(
            "GET",
            &a.url(&base, &format!("/Calls/{sid}/Notifications.json")),
            a.auth(),
            &[],
        );
        assert_eq!(n["notifications"].as_array().map(Vec::len), Some(1), "{n}");
    })
    .await
    .expect("client");
    r.shutdown().await;
}

/// Status callbacks: written to the outbox, delivered in order per call, retried after a
/// failure, signed so the signature verifies with the account's token; SSRF-checked URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_callbacks_are_signed_ordered_and_retried() {
    use std::sync::{Arc, Mutex};
    // The customer's web app: the first request fails (500), the rest succeed. Delivery is
    // at least once: a redelivery (e.g. its success could not be recorded on a busy store)
    // carries the same idempotency token and is dropped here, as a customer's app would.
    type Seen = Arc<Mutex<Vec<(u16, String, String, String)>>>;
    let tokens: Arc<Mutex<std::collections::HashMap<String, String>>> = Arc::default();
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let app = {
        let seen = seen.clone();
        let tokens = tokens.clone();
        axum::Router::new().route(
            "/cb",
            axum::routing::post(
                move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
                    let seen = seen.clone();
                    let tokens = tokens.clone();
                    async move {
                        let mut s = seen.lock().expect("lock");
                        let status = if s.is_empty() { 500 } else { 200 };
                        let token = headers
                            .get("I-Twilio-Idempotency-Token")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        assert!(!token.is_empty(), "every callback carries a token");
                        if status == 200 {
                            let mut t = tokens.lock().expect("lock");
                            if let Some(first) = t.get(&token) {
                                assert_eq!(first, &body, "a redelivery is the same callback");
                                return axum::http::StatusCode::OK;
                            }
                            t.insert(token, body.clone());
                        }
                        let sig = headers
                            .get("X-Twilio-Signature")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        s.push((status, uri.to_string(), sig, body));
                        axum::http::StatusCode::from_u16(status).expect("status")
                    }
                },
            ),
        )
    };
    let app_addr = std::net::SocketAddr::from(([127, 0, 0, 1], common::serve_app(app).await));
    let scratch = common::scratch_dir("rest-callbacks");
    for db in databases(scratch.path()) {
        seen.lock().expect("lock").clear();
        let callee = Callee::new();
        let callee_addr = callee.sock.local_addr().expect("addr");
        let mut c = config(&db, scratch.path(), 32700);
        c.api.callbacks_allow_private = true;
        let (r, base) = start(c).await;
        let a = account(&r, "hooks").await;
        let seen2 = seen.clone();
        let (a0, base0) = (a.clone(), base.clone());
        tokio::task::spawn_blocking(move || {
            let (a, base) = (a0, base0);
            let cb_url = format!("http://{app_addr}/cb?tenant=a");
            let (s, call) = req(
                "POST",
                &a.url(&base, "/Calls.json"),
                a.auth(),
                &[
                    ("To", &format!("sip:callee@{callee_addr}")),
                    ("From", "+15550001111"),
                    ("Twiml", r#"<Response><Pause length="60"/></Response>"#),
                    ("StatusCallback", &cb_url),
                    ("StatusCallbackEvent", "initiated"),
                    ("StatusCallbackEvent", "ringing"),
                    ("StatusCallbackEvent", "answered"),
                    ("StatusCallbackEvent", "completed"),
                ],
            );
            assert_eq!(s, 201, "{call}");
            let sid = call["sid"].as_str().expect("sid").to_string();
            let (inv, from) = callee.recv();
            callee.reply(&inv, 180, "Ringing", from, false);
            std::thread::sleep(Duration::from_millis(200));
            callee.reply(&inv, 200, "OK", from, true);
            let _ack = callee.recv();
            std::thread::sleep(Duration::from_millis(200));
            let (s, _) = req(
                "POST",
                &a.url(&base, &format!("/Calls/{sid}.json")),
                a.auth(),
                &[("Status", "completed")],
            );
            assert_eq!(s, 200);
            let (bye, from) = callee.recv();
            callee.reply(&bye, 200, "OK", from, false);
            // Four callbacks delivered (after one failed attempt of the first), in order.
            let deadline = Instant::now() + Duration::from_secs(30);
            let ok: Vec<(u16, String, String, String)> = loop {
                let s = seen2.lock().expect("lock").clone();
                let ok: Vec<_> = s.into_iter().filter(|x| x.0 == 200).collect();
                if ok.len() >= 4 {
                    break ok;
                }
                assert!(Instant::now() < deadline, "callbacks not delivered: {ok:?}");
                std::thread::sleep(Duration::from_millis(100));
            };
            let all = seen2.lock().expect("lock").clone();
            assert_eq!(all[0].0, 500, "the first attempt failed");
            let statuses: Vec<String> = ok
                .iter()
                .map(|(_, _, _, body)| {
                    form_urlencoded::parse(body.as_bytes())
                        .find(|(k, _)| k == "CallStatus")
                        .map(|(_, v)| v.to_string())
                        .unwrap_or_default()
                })
                .collect();
            assert_eq!(
                statuses,
                ["initiated", "ringing", "in-progress", "completed"]
            );
            for (i, (_, uri, sig, body)) in ok.iter().enumerate() {
                let params: std::collections::BTreeMap<String, String> =
                    form_urlencoded::parse(body.as_bytes())
                        .into_owned()
                        .collect();
                assert_eq!(params["CallSid"], sid);
                assert_eq!(params["AccountSid"], a.sid);
                assert_eq!(params["SequenceNumber"], i.to_string());
                assert_eq!(uri, "/cb?tenant=a");
                let want =
                    voxedge_controlplane::callbacks::twilio_signature(&a.token, &cb_url, &params);
                assert_eq!(sig, &want, "signature of callback {i}");
            }
            let last: std::collections::BTreeMap<String, String> =
                form_urlencoded::parse(ok[3].3.as_bytes())
                    .into_owned()
                    .collect();
            assert!(last["CallDuration"].parse::<u64>().is_ok());
        })
        .await
        .expect("client");

        // A call placed without a status callback whose row gains one where this node does
        // not see it (another node's request on a shared database): its answer still calls
        // back.
        let callee = Callee::new();
        let callee_addr = callee.sock.local_addr().expect("addr");
        let (a2, base2) = (a.clone(), base.clone());
        let (sid2, callee, inv, from) = tokio::task::spawn_blocking(move || {
            let (s, call) = req(
                "POST",
                &a2.url(&base2, "/Calls.json"),
                a2.auth(),
                &[
                    ("To", &format!("sip:callee@{callee_addr}")),
                    ("From", "+15550001111"),
                    ("Twiml", r#"<Response><Pause length="60"/></Response>"#),
                ],
            );
            assert_eq!(s, 201, "{call}");
            let (inv, from) = callee.recv();
            (
                call["sid"].as_str().expect("sid").to_string(),
                callee,
                inv,
                from,
            )
        })
        .await
        .expect("client");
        let cb_url = format!("http://{app_addr}/cb?tenant=b");
        r.store
            .as_ref()
            .expect("store")
            .update(
                &voxedge_controlplane::store::CALLS,
                &a.sid,
                &sid2,
                &[
                    ("status_callback", Value::from(cb_url.as_str())),
                    ("status_callback_event", Value::from("answered")),
                ],
            )
            .await
            .expect("row updated behind this node's back");
        let (a3, base3, seen3) = (a.clone(), base.clone(), seen.clone());
        tokio::task::spawn_blocking(move || {
            callee.reply(&inv, 200, "OK", from, true);
            let _ack = callee.recv();
            std::thread::sleep(Duration::from_millis(200));
            let (s, _) = req(
                "POST",
                &a3.url(&base3, &format!("/Calls/{sid2}.json")),
                a3.auth(),
                &[("Status", "completed")],
            );
            assert_eq!(s, 200);
            let (bye, from) = callee.recv();
            callee.reply(&bye, 200, "OK", from, false);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let got = seen3
                    .lock()
                    .expect("lock")
                    .iter()
                    .any(|(code, uri, _, body)| {
                        *code == 200
                            && uri == "/cb?tenant=b"
                            && body.contains(&sid2)
                            && body.contains("CallStatus=in-progress")
                    });
                if got {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the answered callback was not written"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .expect("client");
        r.shutdown().await;
    }
}

/// An application's callback retry policy (VoxEdge): `CallbackAttempts` and
/// `CallbackBackoffMs` are validated, shown on the application, and a call placed with that
/// application retries its failing callbacks that many times, that soon, then gives up with a
/// notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applications_callback_retry_policy_applies_to_its_calls() {
    use std::sync::{Arc, Mutex};
    // When each delivery attempt arrived.
    let hits: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/fail",
        axum::routing::post(move || {
            let h = h.clone();
            async move {
                h.lock().expect("hits").push(Instant::now());
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            }
        }),
    );
    let app_addr = format!("127.0.0.1:{}", common::serve_app(app).await);
    let callee = Callee::new();
    let callee_addr = callee.sock.local_addr().expect("addr");
    let scratch = common::scratch_dir("rest-policy");
    let dir = scratch.path();
    let mut c = config(
        &format!("sqlite://{}", dir.join("p.db").display()),
        dir,
        19100,
    );
    c.api.callbacks_allow_private = true;
    let (r, base) = start(c).await;
    let a = account(&r, "policy").await;
    let h2 = hits.clone();
    tokio::task::spawn_blocking(move || {
        let apps = a.url(&base, "/Applications.json");
        for (k, v) in [
            ("CallbackAttempts", "0"),
            ("CallbackAttempts", "21"),
            ("CallbackBackoffMs", "99"),
            ("CallbackBackoffMs", "x"),
        ] {
            let got = req(
                "POST",
                &apps,
                a.auth(),
                &[("VoiceUrl", "https://a.example/v"), (k, v)],
            );
            assert_error(&got, 400, 20001);
        }
        let (s, app) = req(
            "POST",
            &apps,
            a.auth(),
            &[
                ("VoiceUrl", "https://a.example/v"),
                ("CallbackAttempts", "2"),
                ("CallbackBackoffMs", "100"),
            ],
        );
        assert_eq!(s, 201, "{app}");
        assert_eq!(app["callback_attempts"], 2);
        assert_eq!(app["callback_backoff_ms"], 100);
        let (s, call) = req(
            "POST",
            &a.url(&base, "/Calls.json"),
            a.auth(),
            &[
                ("To", &format!("sip:callee@{callee_addr}")),
                ("From", "+15550001111"),
                ("ApplicationSid", app["sid"].as_str().expect("sid")),
                ("StatusCallback", &format!("http://{app_addr}/fail")),
            ],
        );
        assert_eq!(s, 201, "{call}");
        assert!(call.get("callback_attempts").is_none(), "internal: {call}");
        let (inv, from) = callee.recv();
        callee.reply(&inv, 486, "Busy Here", from, false);
        // Two attempts ~0.1 s apart, then given up with a notification.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, notes) = req("GET", &a.url(&base, "/Notifications.json"), a.auth(), &[]);
            let given_up = notes["notifications"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["error_code"] == "15003"));
            if given_up {
                break;
            }
            assert!(Instant::now() < deadline, "not given up: {notes}");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        let at = h2.lock().expect("hits").clone();
        assert_eq!(at.len(), 2, "CallbackAttempts=2");
        // CallbackBackoffMs=100: the retry comes well before the default backoff (≥ 1 s).
        let gap = at[1] - at[0];
        assert!(gap < Duration::from_millis(900), "retried after {gap:?}");
    })
    .await
    .expect("client");
    r.shutdown().await;
}

/// A row update that names `date_updated` itself (as conference updates do) works on every
/// database: the store sets that column once, not twice (PostgreSQL refuses a column assigned
/// twice; SQLite keeps the last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_naming_date_updated_work_on_every_database() {
    use voxedge_controlplane::secret::{new_sid, SecretKey};
    use voxedge_controlplane::store::{Store, CONFERENCES};
    let scratch = common::scratch_dir("rest-date-updated");
    for db in databases(scratch.path()) {
        let store = Store::connect(&db, SecretKey::from_hex(KEY).expect("key"))
            .await
            .expect("store");
        // Fresh SIDs: a PostgreSQL database outlives a run started by hand.
        let (acc, sid) = (new_sid("AC"), new_sid("CF"));
        store
            .insert(
                &CONFERENCES,
                &[
                    ("sid", Value::from(sid.clone())),
                    ("account_sid", Value::from(acc.clone())),
                    ("friendly_name", Value::from("room")),
                    ("status", Value::from("init")),
                    ("region", Value::from("local")),
                    ("api_version", Value::from("2010-04-01")),
                    ("date_created", Value::from(1_000_000i64)),
                    ("date_updated", Value::from(1_000_000i64)),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("{db}: insert: {e}"));
        let updated = store
            .update(
                &CONFERENCES,
                &acc,
                &sid,
                &[
                    ("status", Value::from("in-progress")),
                    ("date_updated", Value::from(2_000_000i64)),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("{db}: update: {e}"));
        assert!(updated, "{db}");
        let row = store
            .get(&CONFERENCES, &acc, &sid)
            .await
            .expect("get")
            .expect("row");
        assert_eq!(row["status"], "in-progress", "{db}");
    }
}
