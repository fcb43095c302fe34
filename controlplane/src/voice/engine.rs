//! The instruction engine: runs an incoming call's instructions.
//!
//! An INVITE no dial-plan entry claims arrives as [`IncomingCall`]: the number called is looked
//! up; its application (or its own voice URL) gives the instruction URL, method and fallback.
//! The call record is written (`ringing`, `inbound`), then one task per call fetches the
//! document (falling back to the fallback URL with `ErrorCode`/`ErrorUrl` when the primary
//! fails; with no usable fallback the caller hears that an application error occurred), and
//! runs its verbs in order: `Say` (espeak-ng), `Play` (WAV or µ-law audio fetched from the
//! URL, or DTMF tones), `Pause`, `Gather` (RFC 4733 digits reported by the dataplane, with
//! barge-in over its prompts), `Redirect`, `Hangup`, `Reject`. The call is answered when the
//! first verb that needs media starts. When the document runs out, the call is hung up.
//!
//! `Echo` loops the caller's media back until the call ends. `Dial` and `Record` are parsed and
//! validated but not run by this version: reaching one records notification 82004 and the
//! engine goes on with the next verb.
//!
//! Every failure is recorded as a notification with Twilio's code and a message naming the URL
//! and the problem.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use voxedge_dataplane::command::MediaEvent;
use voxedge_dataplane::ids::{RelayId, Side};
use voxedge_dataplane::player::PlayMedia;
use voxedge_dataplane::Dataplane;

use super::audio::{self, Codec, Synthesizer};
use super::fetch::{resolve, FetchError, Fetcher};
use super::twiml::{Gather, Method, Play, Prompt, RejectReason, Say, Verb};
use crate::calls::CallService;
use crate::sip::{EndStatus, IncomingCall, SipHandle};
use crate::store::{now_us, Store, APPLICATIONS, CALLS};

/// VoxEdge notification: a verb this version parses but does not run.
pub const CODE_VERB_UNSUPPORTED: &str = "82004";
/// Twilio: `Say` could not be rendered.
const CODE_SAY_FAILED: &str = "13520";
/// Twilio: `Play` media could not be used.
const CODE_PLAY_FAILED: &str = "13227";
/// Largest media file fetched for `Play`.
pub const MEDIA_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Documents a call may fetch (actions and redirects included) before it is ended as a loop.
const FETCHES_MAX: u32 = 1000;

/// New instructions for a live call (REST `POST /Calls/{Sid}` with `Url` or `Twiml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instructions {
    Url(String, Method),
    Twiml(String),
}

/// What a call task hears about its call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signal {
    Digit(char),
    PlayDone(u64),
    Ended,
    Redirect(Instructions),
}

/// The next document a call runs.
enum Next {
    Fetch(String, Method, BTreeMap<String, String>),
    Inline(Vec<Verb>, reqwest::Url),
}

/// Base URL of inline instructions (relative URLs in them cannot be fetched).
fn inline_base() -> reqwest::Url {
    // A constant that parses; cannot fail.
    reqwest::Url::parse("http://inline.invalid/").unwrap_or_else(|_| unreachable!())
}

/// The engine (one per node).
pub struct Engine {
    store: Store,
    calls: Arc<CallService>,
    sip: SipHandle,
    dp: Arc<Dataplane>,
    fetcher: Fetcher,
    synth: Synthesizer,
    live: Mutex<HashMap<String, mpsc::Sender<Signal>>>,
    by_relay: Mutex<HashMap<RelayId, String>>,
    play_ids: AtomicU64,
    speech: Mutex<SpeechCache>,
    signals_dropped: AtomicU64,
}

/// Signals queued per call at most (digits, playback ends, new instructions).
const SIGNALS_MAX: usize = 256;

/// Rendered `Say` audio by (voice, text, codec), so a prompt many calls hear is synthesized
/// once. Bounded by entries and bytes; the oldest entries leave first.
#[derive(Default)]
struct SpeechCache {
    map: HashMap<(String, String, Codec), Arc<PlayMedia>>,
    order: std::collections::VecDeque<(String, String, Codec)>,
    bytes: usize,
}

/// Bounds of the speech cache.
const SPEECH_ENTRIES_MAX: usize = 1024;
const SPEECH_BYTES_MAX: usize = 64 * 1024 * 1024;

impl SpeechCache {
    fn get(&self, k: &(String, String, Codec)) -> Option<Arc<PlayMedia>> {
        self.map.get(k).cloned()
    }

    fn put(&mut self, k: (String, String, Codec), m: Arc<PlayMedia>) {
        if m.frames.len() > SPEECH_BYTES_MAX / 4 || self.map.contains_key(&k) {
            return;
        }
        self.bytes += m.frames.len();
        self.map.insert(k.clone(), m);
        self.order.push_back(k);
        while self.map.len() > SPEECH_ENTRIES_MAX || self.bytes > SPEECH_BYTES_MAX {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(m) = self.map.remove(&old) {
                self.bytes -= m.frames.len();
            }
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

/// Where a call's instructions come from.
#[derive(Debug, Clone)]
struct Source {
    url: String,
    method: Method,
    fallback: Option<(String, Method)>,
    application: Option<String>,
    status_callback: Option<(String, String)>,
    /// The application's fetch defaults (`VoiceFetchOverrides`).
    overrides: Option<String>,
}

fn text(row: &Map<String, Value>, k: &str) -> Option<String> {
    row.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The instructions of an application or number row (they share Twilio's voice columns; a
/// number has no fetch overrides).
fn source_of(row: &Map<String, Value>, application: Option<String>) -> Option<Source> {
    Some(Source {
        url: text(row, "voice_url")?,
        method: method_of(row, "voice_method"),
        fallback: text(row, "voice_fallback_url")
            .map(|u| (u, method_of(row, "voice_fallback_method"))),
        application,
        overrides: text(row, "voice_fetch_overrides"),
        status_callback: text(row, "status_callback").map(|u| {
            (
                u,
                text(row, "status_callback_method").unwrap_or_else(|| "POST".into()),
            )
        }),
    })
}

/// Twilio's parameters of every request about a call.
fn base_params(
    sid: &str,
    account: &str,
    from: &str,
    to: &str,
    direction: &str,
) -> BTreeMap<String, String> {
    [
        ("CallSid", sid),
        ("AccountSid", account),
        ("From", from),
        ("To", to),
        ("Caller", from),
        ("Called", to),
        ("Direction", direction),
        ("ApiVersion", "2010-04-01"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn method_of(row: &Map<String, Value>, k: &str) -> Method {
    text(row, k)
        .and_then(|m| Method::parse(&m))
        .unwrap_or(Method::Post)
}

impl Engine {
    pub fn new(
        store: Store,
        calls: Arc<CallService>,
        sip: SipHandle,
        dp: Arc<Dataplane>,
        fetcher: Fetcher,
        synth: Synthesizer,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            calls,
            sip,
            dp,
            fetcher,
            synth,
            live: Mutex::new(HashMap::new()),
            by_relay: Mutex::new(HashMap::new()),
            play_ids: AtomicU64::new(1),
            speech: Mutex::new(SpeechCache::default()),
            signals_dropped: AtomicU64::new(0),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Signal>>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn by_relay(&self) -> std::sync::MutexGuard<'_, HashMap<RelayId, String>> {
        self.by_relay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls whose instructions are running.
    pub fn running(&self) -> usize {
        self.live().len()
    }

    /// A dataplane event: digits and playback ends go to the call owning the relay.
    pub fn media_event(&self, ev: &MediaEvent) {
        let (relay, signal) = match *ev {
            MediaEvent::Dtmf {
                relay,
                side: Side::A,
                digit,
                ..
            } => (relay, Signal::Digit(digit)),
            MediaEvent::PlayDone {
                relay,
                side: Side::A,
                id,
            } => (relay, Signal::PlayDone(id)),
            _ => return,
        };
        let Some(sid) = self.by_relay().get(&relay).cloned() else {
            return;
        };
        if let Some(tx) = self.live().get(&sid) {
            // A full queue (a caller flooding digits while the call fetches) drops the
            // signal: digits beyond what a Gather could use, never the call's end (below).
            if tx.try_send(signal).is_err() {
                self.signals_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The node's fetch defaults with an application's overrides on top (overrides stored
    /// before validation existed and no longer valid are ignored).
    fn timeouts_for(&self, overrides: Option<&str>) -> super::fetch::Timeouts {
        let d = self.fetcher.defaults;
        overrides.map_or(d, |o| d.with_fragment(o).unwrap_or(d))
    }

    /// Hands a live call new instructions; false when this node does not run the call.
    pub fn redirect(&self, sid: &str, to: Instructions) -> bool {
        self.live()
            .get(sid)
            .is_some_and(|tx| tx.try_send(Signal::Redirect(to)).is_ok())
    }

    /// A call placed through the API was answered: run its `Twiml`, `Url` or application.
    pub async fn outbound(self: &Arc<Self>, sid: &str, relay: RelayId, codec: Codec) {
        let row = match self.store.get_any(&CALLS, sid).await {
            Ok(Some(r)) => r,
            _ => {
                tracing::error!(sid, "an answered call's record cannot be read: hanging up");
                let _ = self.sip.hangup(sid, EndStatus::Completed).await;
                return;
            }
        };
        let account = text(&row, "account_sid").unwrap_or_default();
        let token = match self.store.account(&account).await {
            Ok(Some(a)) => self.store.auth_token(&a).ok(),
            _ => None,
        };
        let Some(token) = token else {
            let _ = self.sip.hangup(sid, EndStatus::Completed).await;
            return;
        };
        let mut overrides = None;
        let mut fallback =
            text(&row, "fallback_url").map(|u| (u, method_of(&row, "fallback_method")));
        let first = if let Some(t) = text(&row, "twiml") {
            match super::twiml::parse(t.as_bytes()) {
                Ok(v) => Some(Next::Inline(v, inline_base())),
                Err(e) => {
                    self.calls
                        .notify(
                            &account,
                            Some(sid),
                            "0",
                            e.kind.code(),
                            &format!("Twiml: {e}"),
                        )
                        .await;
                    None
                }
            }
        } else if let Some(u) = text(&row, "url") {
            Some(Next::Fetch(u, method_of(&row, "method"), BTreeMap::new()))
        } else if let Some(app_sid) = text(&row, "application_sid") {
            self.application(app_sid).await.map(|src| {
                overrides = src.overrides;
                fallback = src.fallback;
                Next::Fetch(src.url, src.method, BTreeMap::new())
            })
        } else {
            None
        };
        let from = text(&row, "from").unwrap_or_default();
        let to = text(&row, "to").unwrap_or_default();
        let base = base_params(sid, &account, &from, &to, "outbound-api");
        let call = Started {
            sid: sid.to_string(),
            account,
            token,
            relay,
            codec,
            base,
            answered: true,
        };
        self.start(call, first, fallback, overrides.as_deref());
    }

    /// Runs a call's instructions in a task of its own, registered for its signals until it
    /// ends.
    fn start(
        self: &Arc<Self>,
        call: Started,
        first: Option<Next>,
        fallback: Option<(String, Method)>,
        overrides: Option<&str>,
    ) {
        let (tx, rx) = mpsc::channel(SIGNALS_MAX);
        self.live().insert(call.sid.clone(), tx);
        self.by_relay().insert(call.relay, call.sid.clone());
        let run = CallRun {
            engine: self.clone(),
            sid: call.sid,
            account: call.account,
            token: call.token,
            relay: call.relay,
            codec: call.codec,
            base: call.base,
            answered: call.answered,
            rx,
            ended: false,
            fetches: 0,
            redirect: None,
            timeouts: self.timeouts_for(overrides),
        };
        let engine = self.clone();
        tokio::spawn(async move {
            let (sid, relay) = (run.sid.clone(), run.relay);
            run.run(first, fallback).await;
            engine.live().remove(&sid);
            engine.by_relay().remove(&relay);
        });
    }

    /// The call ended in signalling (caller hung up, or we did): its task stops.
    pub fn ended(&self, sid: &str) {
        if let Some(tx) = self.live().remove(sid) {
            // Dropping the only sender closes the queue: the task sees the end after what is
            // queued even when the queue is full.
            let _ = tx.try_send(Signal::Ended);
        }
    }

    /// Digits and playback ends dropped because a call's queue was full.
    pub fn signals_dropped(&self) -> u64 {
        self.signals_dropped.load(Ordering::Relaxed)
    }

    async fn lookup(&self, to: &str) -> Option<Map<String, Value>> {
        let digits = to.trim_start_matches('+');
        for candidate in [to.to_string(), format!("+{digits}"), digits.to_string()] {
            match self.store.number_by_phone(&candidate).await {
                Ok(Some(n)) => return Some(n),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot look up an incoming number");
                    return None;
                }
            }
        }
        None
    }

    /// Where a number's calls get their instructions: its application's, else its own.
    async fn source(&self, number: &Map<String, Value>) -> Option<Source> {
        match text(number, "voice_application_sid") {
            Some(app_sid) => self.application(app_sid).await,
            None => source_of(number, None),
        }
    }

    /// An application's instructions.
    async fn application(&self, app_sid: String) -> Option<Source> {
        let app = self.store.get_any(&APPLICATIONS, &app_sid).await.ok()??;
        source_of(&app, Some(app_sid))
    }

    /// An incoming call: find its number and instructions, write its record and start its
    /// task; refuse it (404) when the number is unknown or has no instructions.
    pub async fn incoming(self: &Arc<Self>, inc: IncomingCall) {
        let Some(number) = self.lookup(&inc.to).await else {
            tracing::info!(to = %inc.to, "incoming call to a number not configured");
            let _ = self.sip.reject(&inc.sid, 404).await;
            return;
        };
        let account = text(&number, "account_sid").unwrap_or_default();
        let active = match self.store.account(&account).await {
            Ok(Some(a)) if a.status == "active" => Some(a),
            _ => None,
        };
        let Some(acc) = active else {
            let _ = self.sip.reject(&inc.sid, 404).await;
            return;
        };
        let token = match self.store.auth_token(&acc) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot unseal an account's token");
                let _ = self.sip.reject(&inc.sid, 500).await;
                return;
            }
        };
        let Some(src) = self.source(&number).await else {
            self.calls
                .notify(
                    &account,
                    None,
                    "0",
                    "21205",
                    &format!(
                        "incoming call to {} refused: the number has no voice URL or application",
                        inc.to
                    ),
                )
                .await;
            let _ = self.sip.reject(&inc.sid, 404).await;
            return;
        };
        let now = now_us();
        let to = text(&number, "phone_number").unwrap_or_else(|| inc.to.clone());
        let mut cols: Vec<(&str, Value)> = vec![
            ("sid", Value::from(inc.sid.clone())),
            ("account_sid", Value::from(account.clone())),
            ("direction", Value::from("inbound")),
            ("from", Value::from(inc.from.clone())),
            ("to", Value::from(to.clone())),
            ("from_formatted", Value::from(inc.from.clone())),
            ("to_formatted", Value::from(to.clone())),
            ("status", Value::from("ringing")),
            ("queue_time", Value::from(0)),
            ("record", Value::from(0)),
            ("price_unit", Value::from("USD")),
            ("api_version", Value::from("2010-04-01")),
            ("url", Value::from(src.url.clone())),
            ("method", Value::from(src.method.as_str())),
            ("date_created", Value::from(now)),
            ("date_updated", Value::from(now)),
        ];
        if let Some(a) = &src.application {
            cols.push(("application_sid", Value::from(a.clone())));
        }
        if let Some(f) = &inc.forwarded_from {
            cols.push(("forwarded_from", Value::from(f.clone())));
        }
        if let Some((u, m)) = &src.fallback {
            cols.push(("fallback_url", Value::from(u.clone())));
            cols.push(("fallback_method", Value::from(m.as_str())));
        }
        if let Some((u, m)) = &src.status_callback {
            cols.push(("status_callback", Value::from(u.clone())));
            cols.push(("status_callback_method", Value::from(m.clone())));
        }
        if let Err(e) = self.store.insert(&CALLS, &cols).await {
            tracing::error!(error = %e, "cannot record an incoming call");
            let _ = self.sip.reject(&inc.sid, 503).await;
            return;
        }
        let mut base = base_params(&inc.sid, &account, &inc.from, &to, "inbound");
        if let Some(f) = &inc.forwarded_from {
            base.insert("ForwardedFrom".into(), f.clone());
        }
        if let Some(a) = &src.application {
            base.insert("ApplicationSid".into(), a.clone());
        }
        let call = Started {
            sid: inc.sid,
            account,
            token,
            relay: inc.relay,
            codec: inc.codec,
            base,
            answered: false,
        };
        let first = Next::Fetch(src.url, src.method, BTreeMap::new());
        self.start(call, Some(first), src.fallback, src.overrides.as_deref());
    }
}

/// A call whose instructions start: who it is, its media and its request parameters.
struct Started {
    sid: String,
    account: String,
    token: String,
    relay: RelayId,
    codec: Codec,
    base: BTreeMap<String, String>,
    answered: bool,
}

/// How a verb left the call.
enum Flow {
    Next,
    Goto(String, Method, BTreeMap<String, String>),
    Stop,
}

/// What a wait for media ended with.
enum Waited {
    Done,
    Digit(char),
    Ended,
}

/// One call's instructions in progress.
struct CallRun {
    engine: Arc<Engine>,
    sid: String,
    account: String,
    token: String,
    relay: RelayId,
    codec: Codec,
    base: BTreeMap<String, String>,
    answered: bool,
    rx: mpsc::Receiver<Signal>,
    ended: bool,
    fetches: u32,
    /// New instructions that interrupted the current verb.
    redirect: Option<Instructions>,
    /// Fetch timeouts of this call (the node's, or its application's overrides).
    timeouts: super::fetch::Timeouts,
}

impl CallRun {
    async fn notify(&self, log: &str, code: &str, msg: &str) {
        self.engine
            .calls
            .notify(&self.account, Some(&self.sid), log, code, msg)
            .await;
    }

    fn params(&self, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut p = self.base.clone();
        p.insert(
            "CallStatus".into(),
            if self.answered {
                "in-progress"
            } else {
                "ringing"
            }
            .into(),
        );
        p.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        p
    }

    /// Fetches a document; on failure records it and tries the fallback (once).
    async fn document(
        &mut self,
        url: &str,
        method: Method,
        extra: &BTreeMap<String, String>,
        fallback: Option<&(String, Method)>,
    ) -> Option<super::fetch::Fetched> {
        self.fetches += 1;
        if self.fetches > FETCHES_MAX {
            self.notify(
                "0",
                "11200",
                &format!("the call fetched {FETCHES_MAX} documents: ended as a redirect loop"),
            )
            .await;
            return None;
        }
        let params = self.params(extra);
        let primary = self
            .engine
            .fetcher
            .instructions(url, method, &params, &self.token, &self.timeouts)
            .await;
        let e: FetchError = match primary {
            Ok(f) => return Some(f),
            Err(e) => e,
        };
        self.notify("0", e.code, &format!("{url}: {}", e.message))
            .await;
        let (fb_url, fb_method) = fallback?;
        let mut params = params;
        params.insert("ErrorCode".into(), e.code.to_string());
        params.insert("ErrorUrl".into(), url.to_string());
        match self
            .engine
            .fetcher
            .instructions(fb_url, *fb_method, &params, &self.token, &self.timeouts)
            .await
        {
            Ok(f) => Some(f),
            Err(e2) => {
                self.notify("0", e2.code, &format!("fallback {fb_url}: {}", e2.message))
                    .await;
                None
            }
        }
    }

    async fn run(mut self, first: Option<Next>, fallback: Option<(String, Method)>) {
        let Some(mut next) = first else {
            self.application_error().await;
            return;
        };
        loop {
            if self.ended {
                return;
            }
            let (verbs, base) = match next {
                Next::Inline(v, b) => (v, b),
                Next::Fetch(url, method, extra) => {
                    match self.document(&url, method, &extra, fallback.as_ref()).await {
                        Some(doc) => (doc.verbs, doc.url),
                        None => {
                            self.application_error().await;
                            return;
                        }
                    }
                }
            };
            let mut goto = None;
            for verb in verbs {
                if self.ended || self.redirect.is_some() {
                    break;
                }
                match self.verb(verb, &base).await {
                    Flow::Next => {}
                    Flow::Goto(u, m, p) => {
                        goto = Some(Next::Fetch(u, m, p));
                        break;
                    }
                    Flow::Stop => break,
                }
            }
            if self.ended {
                return;
            }
            match self.redirect.take() {
                Some(Instructions::Url(u, m)) => next = Next::Fetch(u, m, BTreeMap::new()),
                Some(Instructions::Twiml(t)) => match super::twiml::parse(t.as_bytes()) {
                    Ok(v) => next = Next::Inline(v, inline_base()),
                    Err(e) => {
                        self.notify("0", e.kind.code(), &format!("Twiml: {e}"))
                            .await;
                        self.application_error().await;
                        return;
                    }
                },
                None => match goto {
                    Some(g) => next = g,
                    None => {
                        // The document ran out (or a verb ended the call).
                        self.hangup().await;
                        return;
                    }
                },
            }
        }
    }

    /// No instructions could be had: the caller is told, then the call ends.
    async fn application_error(&mut self) {
        if self.ended {
            return;
        }
        self.answer().await;
        let say = Say {
            text: "We are sorry, an application error has occurred. Goodbye.".into(),
            voice: None,
            language: None,
            loops: 1,
        };
        let _ = self.say(&say, false).await;
        self.hangup().await;
    }

    async fn answer(&mut self) {
        if !self.answered {
            self.answered = true;
            let _ = self.engine.sip.answer(&self.sid).await;
        }
    }

    async fn hangup(&mut self) {
        if !self.ended {
            self.ended = true;
            let _ = self
                .engine
                .sip
                .hangup(&self.sid, EndStatus::Completed)
                .await;
        }
    }

    async fn verb(&mut self, verb: Verb, base: &reqwest::Url) -> Flow {
        match verb {
            Verb::Say(s) => {
                self.answer().await;
                match self.say(&s, false).await {
                    Waited::Ended => Flow::Stop,
                    _ => Flow::Next,
                }
            }
            Verb::Play(p) => {
                self.answer().await;
                match self.play(&p, base, false).await {
                    Waited::Ended => Flow::Stop,
                    _ => Flow::Next,
                }
            }
            Verb::Pause(secs) => {
                self.answer().await;
                match self.pause(secs, false).await {
                    Waited::Ended => Flow::Stop,
                    _ => Flow::Next,
                }
            }
            Verb::Gather(g) => {
                self.answer().await;
                self.gather(&g, base).await
            }
            Verb::Redirect { url, method } => match resolve(base, &url) {
                Ok(u) => Flow::Goto(u, method, BTreeMap::new()),
                Err(e) => {
                    self.notify("0", e.code, &format!("<Redirect>: {}", e.message))
                        .await;
                    Flow::Next
                }
            },
            Verb::Hangup => {
                self.hangup().await;
                Flow::Stop
            }
            Verb::Reject(reason) => {
                if self.answered {
                    self.hangup().await;
                } else {
                    self.ended = true;
                    let code = match reason {
                        RejectReason::Busy => 486,
                        RejectReason::Rejected => 603,
                    };
                    let _ = self.engine.sip.reject(&self.sid, code).await;
                }
                Flow::Stop
            }
            Verb::Echo => {
                self.answer().await;
                self.echo().await;
                Flow::Stop
            }
            v @ (Verb::Dial(_) | Verb::Record(_)) => {
                self.notify(
                    "1",
                    CODE_VERB_UNSUPPORTED,
                    &format!(
                        "<{}> is not run by this VoxEdge version; the call went on with the next verb",
                        v.name()
                    ),
                )
                .await;
                Flow::Next
            }
        }
    }

    /// Waits for the next signal, at most `limit` (None: until one arrives).
    async fn signal(&mut self, limit: Option<Duration>) -> Option<Signal> {
        let s = match limit {
            Some(d) => tokio::time::timeout(d, self.rx.recv()).await.ok()?,
            None => self.rx.recv().await,
        };
        match s {
            None | Some(Signal::Ended) => {
                self.ended = true;
                Some(Signal::Ended)
            }
            // New instructions interrupt the current verb like an end does; `run` takes them.
            Some(Signal::Redirect(i)) => {
                self.redirect = Some(i);
                Some(Signal::Ended)
            }
            other => other,
        }
    }

    /// Plays media on the caller's leg and waits for its end (or, with `barge`, the first
    /// digit, which stops it).
    async fn play_media(&mut self, media: Arc<PlayMedia>, loops: u32, barge: bool) -> Waited {
        let id = self.engine.play_ids.fetch_add(1, Ordering::Relaxed);
        let dp = self.engine.dp.clone();
        let relay = self.relay;
        // Should the end event be lost (a full queue), the media's own length ends the wait.
        let length = Duration::from_nanos(media.ptime_ns)
            .saturating_mul(u32::try_from(media.frame_count()).unwrap_or(u32::MAX))
            .saturating_mul(loops.max(1));
        let until = tokio::time::Instant::now() + length + Duration::from_secs(2);
        let started =
            tokio::task::spawn_blocking(move || dp.play(relay, Side::A, media, loops, id)).await;
        match started {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.notify(
                    "0",
                    CODE_PLAY_FAILED,
                    &format!("media could not be played: {e}"),
                )
                .await;
                return Waited::Done;
            }
            Err(_) => return Waited::Done,
        }
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.signal(Some(left)).await {
                // The media's length passed without its end event (lost to a full queue).
                None => return Waited::Done,
                Some(Signal::PlayDone(done)) if done == id => return Waited::Done,
                Some(Signal::Digit(d)) if barge => {
                    let dp = self.engine.dp.clone();
                    let _ = tokio::task::spawn_blocking(move || dp.stop_play(relay, Side::A)).await;
                    return Waited::Digit(d);
                }
                Some(Signal::Ended) => {
                    if !self.ended {
                        // Redirected: the new instructions start in silence.
                        let dp = self.engine.dp.clone();
                        let _ =
                            tokio::task::spawn_blocking(move || dp.stop_play(relay, Side::A)).await;
                    }
                    return Waited::Ended;
                }
                Some(_) => {}
            }
        }
    }

    /// `<Echo>`: the caller's media comes back to it until the call ends (or new instructions
    /// arrive, which restore the leg).
    async fn echo(&mut self) {
        let (dp, relay) = (self.engine.dp.clone(), self.relay);
        let set = move |echo: bool| {
            let dp = dp.clone();
            tokio::task::spawn_blocking(move || {
                dp.update_leg(
                    relay,
                    Side::A,
                    voxedge_dataplane::command::LegUpdate {
                        blocked: Some(!echo),
                        echo: Some(echo),
                        ..Default::default()
                    },
                )
            })
        };
        if !matches!(set(true).await, Ok(Ok(()))) {
            self.notify(
                "0",
                "13500",
                "<Echo>: the media path could not be looped back",
            )
            .await;
            return;
        }
        loop {
            if let Some(Signal::Ended) | None = self.signal(None).await {
                break;
            }
        }
        if !self.ended {
            let _ = set(false).await;
        }
    }

    async fn say(&mut self, s: &Say, barge: bool) -> Waited {
        let voice = audio::espeak_voice(s.language.as_deref(), s.voice.as_deref());
        let key = (voice, s.text.clone(), self.codec);
        let cached = self
            .engine
            .speech
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key);
        if let Some(media) = cached {
            return self.play_media(media, s.loops, barge).await;
        }
        match self.engine.synth.speak(&s.text, &key.0).await {
            Ok(samples) => {
                let media = audio::encode(&samples, self.codec);
                self.engine
                    .speech
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .put(key, media.clone());
                self.play_media(media, s.loops, barge).await
            }
            Err(e) => {
                self.notify("0", CODE_SAY_FAILED, &format!("<Say>: {e}"))
                    .await;
                Waited::Done
            }
        }
    }

    async fn play(&mut self, p: &Play, base: &reqwest::Url, barge: bool) -> Waited {
        let samples = if p.url.is_empty() {
            audio::dtmf_tones(p.digits.as_deref().unwrap_or(""))
        } else {
            match self.fetch_audio(&p.url, base).await {
                Ok(s) => s,
                Err(e) => {
                    self.notify("0", e.code, &format!("<Play>: {}", e.message))
                        .await;
                    return Waited::Done;
                }
            }
        };
        if samples.is_empty() {
            return Waited::Done;
        }
        let media = audio::encode(&samples, self.codec);
        self.play_media(media, p.loops, barge).await
    }

    async fn fetch_audio(&self, url: &str, base: &reqwest::Url) -> Result<Vec<i16>, FetchError> {
        let url = resolve(base, url)?;
        let (body, ct) = self.engine.fetcher.media(&url, MEDIA_BYTES_MAX).await?;
        let bad = |m: String| FetchError {
            code: CODE_PLAY_FAILED,
            message: format!("{url}: {m}"),
        };
        match ct.as_str() {
            "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => {
                let pcm = audio::decode_wav(&body).map_err(|e| bad(e.to_string()))?;
                Ok(audio::to_8k(&pcm))
            }
            "audio/basic" | "audio/x-mulaw" | "audio/pcmu" => {
                Ok(body.iter().map(|b| audio::ulaw_decode(*b)).collect())
            }
            other => Err(FetchError {
                code: "13420",
                message: format!(
                    "{url}: {other} is not supported; use WAV (PCM, µ-law or A-law) or audio/basic"
                ),
            }),
        }
    }

    async fn pause(&mut self, secs: u32, barge: bool) -> Waited {
        let until = tokio::time::Instant::now() + Duration::from_secs(u64::from(secs));
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Waited::Done;
            }
            match self.signal(Some(left)).await {
                None => return Waited::Done,
                Some(Signal::Ended) => return Waited::Ended,
                Some(Signal::Digit(d)) if barge => return Waited::Digit(d),
                Some(_) => {}
            }
        }
    }

    async fn gather(&mut self, g: &Gather, base: &reqwest::Url) -> Flow {
        let mut digits = String::new();
        let mut finished_on: Option<char> = None;
        // Prompts, interrupted by the first digit.
        for p in &g.prompts {
            let w = match p {
                Prompt::Say(s) => self.say(s, true).await,
                Prompt::Play(pl) => self.play(pl, base, true).await,
                Prompt::Pause(n) => self.pause(*n, true).await,
            };
            match w {
                Waited::Ended => return Flow::Stop,
                Waited::Digit(d) => {
                    if Some(d) == g.finish_on_key {
                        finished_on = Some(d);
                    } else {
                        digits.push(d);
                    }
                    break;
                }
                Waited::Done => {}
            }
        }
        let complete = |digits: &str| g.num_digits.is_some_and(|n| digits.len() >= n as usize);
        while finished_on.is_none() && !complete(&digits) {
            match self
                .signal(Some(Duration::from_secs(u64::from(g.timeout))))
                .await
            {
                None => break, // timeout
                Some(Signal::Ended) => return Flow::Stop,
                Some(Signal::Digit(d)) => {
                    if Some(d) == g.finish_on_key {
                        finished_on = Some(d);
                    } else {
                        digits.push(d);
                    }
                }
                Some(_) => {}
            }
        }
        if digits.is_empty() && !g.action_on_empty_result {
            return Flow::Next;
        }
        let action = match &g.action {
            Some(a) => match resolve(base, a) {
                Ok(u) => u,
                Err(e) => {
                    self.notify("0", e.code, &format!("<Gather action>: {}", e.message))
                        .await;
                    return Flow::Next;
                }
            },
            // Twilio's default: the document's own URL.
            None => base.to_string(),
        };
        let mut params = BTreeMap::new();
        params.insert("Digits".to_string(), digits);
        if let Some(k) = finished_on {
            params.insert("FinishedOnKey".to_string(), k.to_string());
        }
        Flow::Goto(action, g.method, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_cache_is_bounded_and_keeps_the_newest() {
        let mut c = SpeechCache::default();
        let media = |n: usize| audio::encode(&vec![0; n * audio::FRAME], Codec::Pcmu);
        let key = |i: usize| ("en-us".to_string(), format!("text {i}"), Codec::Pcmu);
        for i in 0..SPEECH_ENTRIES_MAX + 10 {
            c.put(key(i), media(1));
        }
        assert_eq!(c.map.len(), SPEECH_ENTRIES_MAX);
        assert!(c.get(&key(0)).is_none(), "oldest evicted");
        assert!(c.get(&key(SPEECH_ENTRIES_MAX + 9)).is_some());
        // Bytes: big entries push the total under the cap.
        let mut c = SpeechCache::default();
        let big = SPEECH_BYTES_MAX / 5 / audio::FRAME;
        for i in 0..8 {
            c.put(key(i), media(big));
        }
        assert!(c.bytes <= SPEECH_BYTES_MAX, "{}", c.bytes);
        assert!(c.get(&key(7)).is_some());
        // Over a quarter of the budget: not cached at all.
        c.put(key(99), media(SPEECH_BYTES_MAX / 3 / audio::FRAME));
        assert!(c.get(&key(99)).is_none());
    }
}
