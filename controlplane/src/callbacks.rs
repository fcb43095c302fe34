//! Status callbacks that are never lost: each one is written to the store's outbox before any
//! delivery attempt, delivered in order per call (a call's next callback waits for the one
//! before it), signed with `X-Twilio-Signature` (HMAC-SHA1 of the URL and the sorted POST
//! parameters, keyed by the account's auth token, as Twilio's helper libraries validate it),
//! retried with exponential backoff, and after the last attempt marked failed with a
//! notification. A restart resumes from the outbox.
//!
//! Customer URLs are checked against SSRF: only http(s); hosts that are, or resolve to,
//! loopback, private, link-local, unspecified, multicast or cloud-metadata addresses are
//! refused (checked by the HTTP client's resolver on every connection, so a name that
//! re-resolves elsewhere is caught too); redirects are not followed. `api.callbacks_allow_private`
//! lifts the address check (tests, private deployments).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha1::Sha1;
use tokio::sync::{watch, Notify};

use crate::secret::new_sid;
use crate::store::{now_us, rfc2822, Callback, Store};

/// Delivery attempts before a callback is given up.
pub const ATTEMPTS_MAX: i64 = 10;
/// First retry's delay (ms) by default; doubled each retry up to [`BACKOFF_CAP_MS`].
pub const BACKOFF_MS: i64 = 2000;
/// Longest delay between two attempts.
pub const BACKOFF_CAP_MS: i64 = 300_000;
/// Bounds of an application's `CallbackAttempts` and `CallbackBackoffMs`.
pub const ATTEMPTS_RANGE: (i64, i64) = (1, 20);
pub const BACKOFF_RANGE_MS: (i64, i64) = (100, 60_000);

/// Delay before attempt `attempts + 1` after `attempts` failures: `base` doubled per failure
/// (capped), then "equal jitter" — half fixed, half random — so retries of many callbacks to
/// one failing server spread out instead of arriving together.
pub fn retry_delay_ms(base: i64, attempts: i64, random: f64) -> i64 {
    let exp = base
        .saturating_mul(1i64 << (attempts.max(1) - 1).min(20))
        .min(BACKOFF_CAP_MS);
    let half = exp / 2;
    half + (half as f64 * random.clamp(0.0, 1.0)) as i64
}
/// How long a claimed delivery attempt keeps other nodes off the callback (longer than an
/// attempt's 15 s timeout).
const CLAIM_LEASE_US: i64 = 60_000_000;
/// Twilio's code for a callback URL that failed.
pub const CODE_CALLBACK_FAILED: &str = "15003";

/// `X-Twilio-Signature`: base64(HMAC-SHA1(token, url ‖ k1 ‖ v1 ‖ k2 ‖ v2 …)) with the POST
/// parameters sorted by name (GET: the URL alone, parameters already in its query).
pub fn twilio_signature(token: &str, url: &str, post: &BTreeMap<String, String>) -> String {
    let mut data = url.to_string();
    for (k, v) in post {
        data.push_str(k);
        data.push_str(v);
    }
    // HMAC accepts keys of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(token.as_bytes()) else {
        return String::new();
    };
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether an address is one a customer URL must not reach.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_multicast()
                || v.is_broadcast()
                || v.octets()[0] == 0
                || (v.octets()[0] == 100 && (64..128).contains(&v.octets()[1])) // CGNAT
        }
        IpAddr::V6(v) => {
            if let Some(m) = v.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(m));
            }
            let s = v.segments();
            v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254 metadata)
                || (s[0] & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// Resolves names for the HTTP client and drops forbidden addresses.
pub struct SafeResolver {
    allow_private: bool,
}

impl SafeResolver {
    pub fn new(allow_private: bool) -> Self {
        SafeResolver { allow_private }
    }
}

impl reqwest::dns::Resolve for SafeResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow || !forbidden(a.ip()))
                .collect();
            if addrs.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to no address VoxEdge may reach (private, loopback, link-local and metadata addresses are refused)").into();
                return Err(e);
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// Checks a callback URL before it is stored or used: scheme, host, literal addresses.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err("only http and https URLs are called".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("credentials in callback URLs are not allowed".into());
    }
    match u.host() {
        None => return Err("no host".into()),
        Some(url::Host::Ipv4(v)) if !allow_private && forbidden(IpAddr::V4(v)) => {
            return Err(format!("{v} is a private, loopback or reserved address"))
        }
        Some(url::Host::Ipv6(v)) if !allow_private && forbidden(IpAddr::V6(v)) => {
            return Err(format!("{v} is a private, loopback or reserved address"))
        }
        Some(url::Host::Domain(d)) if !allow_private && d.eq_ignore_ascii_case("localhost") => {
            return Err("localhost is a private, loopback or reserved address".into())
        }
        _ => {}
    }
    Ok(u)
}

/// The callback service.
pub struct Callbacks {
    store: Store,
    http: reqwest::Client,
    allow_private: bool,
    wake: Notify,
    seq: AtomicI64,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Callbacks")
    }
}

/// A SIP-event callback registration: where which signalling events of a call go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipEventsRegistration {
    pub url: String,
    pub method: &'static str,
    /// Events reported; empty: all.
    pub events: Vec<String>,
    /// Headers copied into each callback as `SipHeader_<Name>`.
    pub headers: Vec<String>,
    /// Only events whose message has this header containing this text.
    pub filter: Option<(String, String)>,
    /// Whose registration it is: `call`, `parent` (a `<Dial>` leg inherits its caller's) or
    /// `application`.
    pub source: &'static str,
}

impl SipEventsRegistration {
    /// The registration held in a call or application row, if any.
    pub fn of(row: &Map<String, Value>, source: &'static str) -> Option<Self> {
        let text = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("");
        let url = text("sip_events_url");
        if url.is_empty() {
            return None;
        }
        let list = |k: &str| -> Vec<String> {
            text(k)
                .split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        Some(SipEventsRegistration {
            url: url.to_string(),
            method: if text("sip_events_method") == "GET" {
                "GET"
            } else {
                "POST"
            },
            events: list("sip_events"),
            headers: list("sip_events_headers"),
            filter: text("sip_events_filter")
                .split_once(':')
                .map(|(n, t)| (n.trim().to_string(), t.trim().to_lowercase())),
            source,
        })
    }

    pub fn to_json(&self, call_sid: &str, account_sid: &str) -> Value {
        serde_json::json!({
            "account_sid": account_sid,
            "call_sid": call_sid,
            "url": self.url,
            "method": self.method,
            "events": if self.events.is_empty() {
                crate::sip::SIP_EVENTS.iter().map(|e| (*e).to_string()).collect()
            } else {
                self.events.clone()
            },
            "headers": self.headers,
            "filter": self.filter.as_ref().map(|(n, t)| format!("{n}: {t}")),
            "source": self.source,
        })
    }

    /// Whether `ev` is reported.
    pub fn wants(&self, ev: &crate::sip::SipEvent) -> bool {
        (self.events.is_empty() || self.events.iter().any(|e| e == ev.event))
            && self.filter.as_ref().is_none_or(|(name, needle)| {
                ev.header(name)
                    .iter()
                    .any(|v| v.to_lowercase().contains(needle.as_str()))
            })
    }
}

/// The registration that applies to a call: its own, else its parent's (for a `<Dial>` leg),
/// else its application's (or its parent's application's).
pub async fn sip_events_for(
    store: &Store,
    call: &Map<String, Value>,
) -> Option<SipEventsRegistration> {
    use crate::store::{APPLICATIONS, CALLS};
    if let Some(r) = SipEventsRegistration::of(call, "call") {
        return Some(r);
    }
    let text = |row: &Map<String, Value>, k: &str| {
        row.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let parent = match text(call, "parent_call_sid") {
        Some(p) => store.get_any(&CALLS, &p).await.ok().flatten(),
        None => None,
    };
    if let Some(r) = parent
        .as_ref()
        .and_then(|p| SipEventsRegistration::of(p, "parent"))
    {
        return Some(r);
    }
    let app = text(call, "application_sid")
        .or_else(|| parent.as_ref().and_then(|p| text(p, "application_sid")))?;
    let row = store.get_any(&APPLICATIONS, &app).await.ok().flatten()?;
    SipEventsRegistration::of(&row, "application")
}

/// A text column of a row ("" when absent).
fn field(row: &Map<String, Value>, k: &str) -> String {
    row.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The parameters every callback about a call carries (`source`: its `CallbackSource`).
fn call_params(call: &Map<String, Value>, source: &str) -> BTreeMap<String, String> {
    let mut p: BTreeMap<String, String> = [
        ("AccountSid", field(call, "account_sid")),
        ("ApiVersion", "2010-04-01".to_string()),
        ("CallSid", field(call, "sid")),
        ("CallStatus", field(call, "status")),
        ("Direction", field(call, "direction")),
        ("From", field(call, "from")),
        ("To", field(call, "to")),
        ("CallbackSource", source.to_string()),
        ("Timestamp", rfc2822(now_us())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let parent = field(call, "parent_call_sid");
    if !parent.is_empty() {
        p.insert("ParentCallSid".into(), parent);
    }
    p
}

impl Callbacks {
    /// A signalling event of a call: when a registration applies to the call and wants the
    /// event, its callback goes to the outbox (in order with the call's status callbacks).
    pub async fn sip_event(&self, call: &Map<String, Value>, ev: &crate::sip::SipEvent) {
        let Some(reg) = sip_events_for(&self.store, call).await else {
            return;
        };
        if !reg.wants(ev) {
            return;
        }
        let mut p = call_params(call, "sip-events");
        p.insert("SipEvent".into(), ev.event.to_string());
        if let Some(m) = &ev.method {
            p.insert("SipMethod".into(), m.clone());
        }
        if let Some(s) = ev.status {
            p.insert("SipResponseCode".into(), s.to_string());
        }
        if let Some(b) = &ev.body {
            p.insert("SipBody".into(), b.clone());
        }
        for h in &reg.headers {
            let values = ev.header(h);
            if !values.is_empty() {
                p.insert(format!("SipHeader_{h}"), values.join(", "));
            }
        }
        // CE: a SIP event (status callbacks are CB; their SequenceNumber counts only those).
        self.enqueue("CE", call, reg.url, reg.method, &p).await;
    }

    /// A recording status callback (`recordingStatusCallback`) of the call, to be written
    /// with the recording's change ([`crate::store::Store::write_with_callback`]); wake the
    /// deliverer after.
    pub fn recording_callback(
        &self,
        call: &Map<String, Value>,
        url: String,
        method: &str,
        params: &BTreeMap<String, String>,
    ) -> Callback {
        self.callback("CR", call, url, method, params)
    }

    /// A conference status callback (`statusCallback` of `<Conference>`), written to the
    /// outbox; `owner` names the account and the participant's call (empty for the room).
    pub async fn conference_callback(
        &self,
        owner: &Map<String, Value>,
        url: String,
        method: &str,
        params: &BTreeMap<String, String>,
    ) {
        self.enqueue("CC", owner, url, method, params).await;
    }

    fn callback(
        &self,
        prefix: &str,
        call: &Map<String, Value>,
        url: String,
        method: &str,
        params: &BTreeMap<String, String>,
    ) -> Callback {
        Callback {
            sid: new_sid(prefix),
            account_sid: field(call, "account_sid"),
            call_sid: field(call, "sid"),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            url,
            method: method.to_string(),
            params: serde_json::to_string(params).unwrap_or_default(),
            attempts: 0,
            // Due at once (the store writes the time of the insert).
            next_attempt: 0,
            // The call's policy (its application's), else the defaults.
            attempts_max: call
                .get("callback_attempts")
                .and_then(Value::as_i64)
                .unwrap_or(ATTEMPTS_MAX),
            backoff_ms: call
                .get("callback_backoff_ms")
                .and_then(Value::as_i64)
                .unwrap_or(BACKOFF_MS),
        }
    }

    /// Writes a callback about `call` to the outbox and wakes the deliverer.
    async fn enqueue(
        &self,
        prefix: &str,
        call: &Map<String, Value>,
        url: String,
        method: &str,
        params: &BTreeMap<String, String>,
    ) {
        let cb = self.callback(prefix, call, url, method, params);
        if let Err(e) = self.store.enqueue_callback(&cb).await {
            tracing::error!(error = %e, call = %cb.call_sid, "cannot write a callback to the outbox");
            return;
        }
        self.wake.notify_one();
    }

    /// Starts the deliverer; it stops with `stop`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn start(
        store: Store,
        allow_private: bool,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<(Arc<Callbacks>, tokio::task::JoinHandle<()>)> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("VoxEdge/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(SafeResolver { allow_private }))
            .no_proxy()
            .build()?;
        let svc = Arc::new(Callbacks {
            store,
            http,
            allow_private,
            wake: Notify::new(),
            seq: AtomicI64::new(now_us()),
        });
        let task = tokio::spawn(svc.clone().deliver_loop(stop));
        Ok((svc, task))
    }

    /// The status callback a call's status change (`event`: initiated, ringing, answered,
    /// completed) causes, if the call asked for it: built, inside the store's transaction that
    /// makes the change ([`crate::store::Store::write_call`]), from how many status callbacks
    /// of the call were written before (its `SequenceNumber`); [`Callbacks::wake`] after the
    /// commit.
    pub fn status_callback(
        self: &Arc<Self>,
        call: &Map<String, Value>,
        event: &str,
    ) -> Option<Box<dyn FnOnce(i64) -> Callback + Send>> {
        let text = |k: &str| field(call, k);
        let url = text("status_callback");
        if url.is_empty() {
            return None;
        }
        let wanted = text("status_callback_event");
        let wanted: Vec<&str> = if wanted.is_empty() {
            vec!["completed"]
        } else {
            wanted.split_whitespace().collect()
        };
        if !wanted.contains(&event) {
            return None;
        }
        let mut p = call_params(call, "call-progress-events");
        p.insert("Called".into(), text("to"));
        p.insert("Caller".into(), text("from"));
        if event == "completed" {
            let dur = call.get("duration").and_then(Value::as_i64).unwrap_or(0);
            p.insert("CallDuration".into(), dur.to_string());
            p.insert("Duration".into(), ((dur + 59) / 60).to_string());
            if let Some(code) = call.get("sip_response_code").and_then(Value::as_i64) {
                p.insert("SipResponseCode".into(), code.to_string());
            }
        }
        let method = match text("status_callback_method").as_str() {
            "GET" => "GET",
            _ => "POST",
        };
        let (me, call) = (self.clone(), call.clone());
        Some(Box::new(move |prior: i64| {
            p.insert("SequenceNumber".into(), prior.to_string());
            me.callback("CB", &call, url, method, &p)
        }))
    }

    /// Wakes the deliverer (a callback was written).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    async fn deliver_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            match self.store.due_callbacks(64).await {
                Ok(due) => {
                    // One per call at most (the store's query): deliver them concurrently.
                    let mut set = tokio::task::JoinSet::new();
                    for cb in due {
                        let svc = self.clone();
                        set.spawn(async move { svc.deliver(cb).await });
                    }
                    while set.join_next().await.is_some() {}
                }
                Err(e) => tracing::error!(error = %e, "cannot read the callback outbox"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn deliver(&self, cb: Callback) {
        // Several control nodes may share the outbox (PostgreSQL): one attempt each time.
        match self.store.claim_callback(&cb, CLAIM_LEASE_US).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(error = %e, callback = %cb.sid, "cannot claim a callback");
                return;
            }
        }
        let outcome = self.attempt(&cb).await;
        let attempts = cb.attempts + 1;
        let r = match outcome {
            Ok(()) => {
                self.store
                    .callback_attempted(&cb.sid, "delivered", 0, None)
                    .await
            }
            Err(e) if attempts >= cb.attempts_max => {
                let msg = format!(
                    "status callback to {} failed after {attempts} attempts: {e}",
                    cb.url
                );
                self.notify_failure(&cb, &msg).await;
                self.store
                    .callback_attempted(&cb.sid, "failed", 0, Some(&e))
                    .await
            }
            Err(e) => {
                let delay_ms = retry_delay_ms(cb.backoff_ms, attempts, rand::random::<f64>());
                self.store
                    .callback_attempted(&cb.sid, "pending", now_us() + delay_ms * 1000, Some(&e))
                    .await
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, callback = %cb.sid, "cannot record a callback attempt");
        }
    }

    /// One HTTP attempt; `Err` says why it failed.
    async fn attempt(&self, cb: &Callback) -> Result<(), String> {
        let mut url = check_url(&cb.url, self.allow_private)?;
        let params: BTreeMap<String, String> =
            serde_json::from_str(&cb.params).map_err(|e| format!("stored parameters: {e}"))?;
        let account = self
            .store
            .account(&cb.account_sid)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the account no longer exists")?;
        let token = self.store.auth_token(&account).map_err(|e| e.to_string())?;
        let req = if cb.method == "GET" {
            url.query_pairs_mut().extend_pairs(params.iter());
            let sig = twilio_signature(&token, url.as_str(), &BTreeMap::new());
            self.http.get(url).header("X-Twilio-Signature", sig)
        } else {
            let sig = twilio_signature(&token, url.as_str(), &params);
            self.http
                .post(url)
                .header("X-Twilio-Signature", sig)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(
                    form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(params.iter())
                        .finish(),
                )
        };
        // The same token on every attempt of this callback: a receiver that saw it already
        // (a retry after a lost answer, or a redelivery after a crash) can drop the duplicate.
        let resp = req
            .header("I-Twilio-Idempotency-Token", cb.sid.as_str())
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status().as_u16()))
        }
    }

    async fn notify_failure(&self, cb: &Callback, msg: &str) {
        let now = now_us();
        let r = self
            .store
            .insert(
                &crate::store::NOTIFICATIONS,
                &[
                    ("sid", Value::from(new_sid("NO"))),
                    ("account_sid", Value::from(cb.account_sid.clone())),
                    ("call_sid", Value::from(cb.call_sid.clone())),
                    ("api_version", Value::from("2010-04-01")),
                    ("log", Value::from("1")),
                    ("error_code", Value::from(CODE_CALLBACK_FAILED)),
                    ("more_info", Value::from(crate::rest::more_info(15_003))),
                    ("message_text", Value::from(msg)),
                    ("message_date", Value::from(now)),
                    ("request_url", Value::from(cb.url.clone())),
                    ("request_method", Value::from(cb.method.clone())),
                    ("date_created", Value::from(now)),
                    ("date_updated", Value::from(now)),
                ],
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot record a callback failure");
        }
    }
}

/// The callback retry policy columns (`callback_attempts`, `callback_backoff_ms`) a row sets,
/// for a call that inherits them (from its application, or a dialled leg from its caller).
pub fn policy_columns(row: &Map<String, Value>) -> Vec<(&'static str, Value)> {
    ["callback_attempts", "callback_backoff_ms"]
        .into_iter()
        .filter_map(|col| Some((col, Value::from(row.get(col)?.as_i64()?))))
        .collect()
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        use reqwest::dns::Resolve;
        // "localhost" resolves to loopback on every Linux (its name check in `check_url` is
        // a separate, earlier refusal); the resolver refuses it after resolution.
        let name = |n: &str| n.parse::<reqwest::dns::Name>().expect("name");
        let refused = SafeResolver::new(false).resolve(name("localhost")).await;
        let e = refused.err().expect("refused").to_string();
        assert!(
            e.contains("resolves to no address VoxEdge may reach"),
            "{e}"
        );
        let allowed = SafeResolver::new(true)
            .resolve(name("localhost"))
            .await
            .expect("allowed when private addresses are");
        assert!(allowed.into_iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn retry_delays_double_are_capped_and_jittered() {
        // Equal jitter: between half and all of the exponential delay.
        assert_eq!(retry_delay_ms(2000, 1, 0.0), 1000);
        assert_eq!(retry_delay_ms(2000, 1, 1.0), 2000);
        assert_eq!(retry_delay_ms(2000, 2, 1.0), 4000);
        assert_eq!(retry_delay_ms(2000, 5, 0.5), 24_000);
        assert_eq!(retry_delay_ms(2000, 30, 1.0), BACKOFF_CAP_MS, "capped");
        assert_eq!(retry_delay_ms(100, 1, 2.0), 100, "random clamped");
        let spread: std::collections::BTreeSet<i64> = (0..20)
            .map(|i| retry_delay_ms(2000, 3, f64::from(i) / 19.0))
            .collect();
        assert!(spread.len() > 10, "retries spread out: {spread:?}");
    }

    use super::*;

    #[test]
    fn signature_matches_the_official_library() {
        // Expected value computed by twilio-python 9.13's RequestValidator.compute_signature
        // for the same token, URL and parameters.
        let mut p = BTreeMap::new();
        for (k, v) in [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ] {
            p.insert(k.to_string(), v.to_string());
        }
        assert_eq!(
            twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &p),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn private_and_metadata_addresses_are_refused() {
        for bad in [
            "http://127.0.0.1/x",
            "http://10.1.2.3/x",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:127.0.0.1]/",
            "http://localhost:8080/",
            "http://0.0.0.0/",
            "ftp://example.com/",
            "http://user:pw@example.com/",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("https://example.com/cb?x=1", false).is_ok());
        assert!(check_url("http://127.0.0.1/x", true).is_ok());
    }
}
