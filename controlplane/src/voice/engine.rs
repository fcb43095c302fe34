//! The instruction engine: runs an incoming call's instructions.
//!
//! An INVITE no dial-plan entry claims arrives as [`IncomingCall`]: the number called is looked
//! up; its application (or its own voice URL) gives the instruction URL, method and fallback.
//! The call record is written (`ringing`, `inbound`), then one task per call fetches the
//! document (falling back to the fallback URL with `ErrorCode`/`ErrorUrl` when the primary
//! fails; with no usable fallback the caller hears that an application error occurred), and
//! runs its verbs in order: `Say` (espeak-ng, rendered once per text and voice by the media
//! cache), `Play` (WAV, MP3, Ogg/Vorbis, FLAC or µ-law through the media cache, or `digits` as
//! RFC 4733 events on the call's telephone-event payload type, in-band tones otherwise),
//! `Pause`, `Gather` (RFC 4733 digits reported by the dataplane, with barge-in over its
//! prompts), `Record` (the dataplane's recording tap; silence timeout, trimming,
//! `finishOnKey`, `maxLength`, recording callbacks), `Redirect`, `Hangup`, `Reject`. The call
//! is answered when the first verb that needs media starts. When the document runs out, the
//! call is hung up.
//!
//! `Echo` loops the caller's media back until the call ends. `Dial` places child calls (their
//! own call records, `outbound-dial`, with the leg's status callbacks) whose callee uses leg B
//! of the caller's relay: the caller hears ringback while they ring; the answering leg hears
//! its whisper `url` first, if any; the first to answer is bridged (the others are canceled)
//! until either side hangs up, `timeLimit` passes or the caller presses `*` (`hangupOnStar`),
//! recorded when `record` asks (mono or dual channel); then the `action` URL gets
//! `DialCallStatus`, `DialCallSid`, `DialCallDuration` and `DialBridged`, or the document goes
//! on.
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
use voxedge_dataplane::ids::{RelayId, Side, WorkerId};
use voxedge_dataplane::player::PlayMedia;
use voxedge_dataplane::Dataplane;

use super::audio::{self, Codec};
use super::conference::{ConfSignal, Conferences, Joining};
use super::fetch::{resolve, FetchError, Fetcher};
use super::record;
use super::twiml::{
    ConferenceSpec, Dial, DialTarget, Gather, LegCallback, Method, Play, Prompt, Record,
    RejectReason, Say, Verb,
};
use crate::calls::CallService;
use crate::lock;
use crate::media::{MediaCache, Source as MediaSource};
use crate::recordings::Recordings;
use crate::sip::{Bridge, CallUpdate, EndStatus, IncomingCall, OriginateError, SipHandle};
use crate::store::{now_us, rfc2822, Callback, RowWrite, Store, APPLICATIONS, CALLS, RECORDINGS};
use voxedge_dataplane::recorder::{RecReceiver, RecordTap};

/// A recording tap and the frames it copies.
type TapPair = (RecordTap, RecReceiver);

/// VoxEdge notification: a verb this version parses but does not run.
pub const CODE_VERB_UNSUPPORTED: &str = "82004";
/// A participant could not enter a conference.
const CODE_CONFERENCE: &str = "13500";
/// Twilio: `Play` media could not be used.
const CODE_PLAY_FAILED: &str = crate::media::CODE_UNPLAYABLE;
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
    /// A digit from the other leg of the relay (a dialled party), for whispers.
    LegDigit(char),
    PlayDone(u64),
    Ended,
    Redirect(Instructions),
}

/// Progress of a dialled leg, for the `<Dial>` that placed it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leg {
    Answered(String),
    Ended(String, EndStatus),
}

/// Where a dialled leg's progress goes: the running `<Dial>`, or nowhere once that `<Dial>` is
/// over (a leg answering then is hung up).
type LegSink = Option<mpsc::UnboundedSender<Leg>>;

/// How a `<Dial>` (or one group of its targets) ended.
struct DialOutcome {
    status: &'static str,
    sid: Option<String>,
    bridged_secs: Option<u64>,
    /// (SID, URL, seconds) of the bridged call's recording (`record`).
    recording: Option<(String, String, u64)>,
}

/// A recording in progress: its SID, `RecordingUrl` and what its callbacks report.
struct OpenRecording {
    sid: String,
    url: String,
    start_us: i64,
    source: &'static str,
    channels: u16,
    /// The conference a participant's track belongs to.
    conference: Option<String>,
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

/// Module usage is kept per (account, module, day in µs).
type UsageKey = (String, String, i64);

/// The engine (one per node).
pub struct Engine {
    store: Store,
    calls: Arc<CallService>,
    sip: SipHandle,
    dp: Arc<Dataplane>,
    fetcher: Fetcher,
    media: Arc<MediaCache>,
    recordings: Arc<Recordings>,
    /// Module usage not yet written: (account, module, day) → (fetches, call ms). Written
    /// every few seconds, before the Usage Records are read, and at shutdown.
    usage: Mutex<HashMap<UsageKey, (i64, i64)>>,
    live: Mutex<HashMap<String, mpsc::Sender<Signal>>>,
    by_relay: Mutex<HashMap<RelayId, String>>,
    play_ids: AtomicU64,
    signals_dropped: AtomicU64,
    /// Dialled legs by SID (bounded by live dials: an entry leaves when its leg ends).
    children: Mutex<HashMap<String, LegSink>>,
    ringback: Mutex<HashMap<Codec, Arc<PlayMedia>>>,
    conferences: Arc<Conferences>,
}

/// Signals queued per call at most (digits, playback ends, new instructions).
const SIGNALS_MAX: usize = 256;

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
    /// The application's callback retry policy (`CallbackAttempts`, `CallbackBackoffMs`).
    callback_policy: (Option<i64>, Option<i64>),
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
        callback_policy: (
            row.get("callback_attempts").and_then(Value::as_i64),
            row.get("callback_backoff_ms").and_then(Value::as_i64),
        ),
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
        media: Arc<MediaCache>,
        recordings: Arc<Recordings>,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            conferences: Conferences::new(
                store.clone(),
                dp.clone(),
                calls.clone(),
                recordings.clone(),
            ),
            store,
            calls,
            sip,
            dp,
            fetcher,
            media,
            recordings,
            usage: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            by_relay: Mutex::new(HashMap::new()),
            play_ids: AtomicU64::new(1),
            signals_dropped: AtomicU64::new(0),
            children: Mutex::new(HashMap::new()),
            ringback: Mutex::new(HashMap::new()),
        })
    }

    /// Writes the module usage gathered since the last flush (one upsert per account, module
    /// and day). A failed write keeps the usage for the next flush.
    pub async fn flush_usage(&self) {
        let pending: Vec<_> = lock(&self.usage).drain().collect();
        for ((account, module, day), (fetches, ms)) in pending {
            if let Err(e) = self
                .store
                .meter_module(&account, &module, day, fetches, ms)
                .await
            {
                tracing::warn!(module, error = %e, "module usage not recorded yet; kept for the next flush");
                let mut u = lock(&self.usage);
                let slot = u.entry((account, module, day)).or_default();
                slot.0 += fetches;
                slot.1 += ms;
            }
        }
    }

    /// Flushes module usage every 5 s until `stop`, then once more.
    pub fn spawn_usage_flusher(
        self: &Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        crate::tasks::spawn_flusher(self, Duration::from_secs(5), stop, |e| async move {
            e.flush_usage().await;
        })
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<String, LegSink>> {
        lock(&self.children)
    }

    /// Progress of a call the SIP service reports: a dialled leg's goes to its `<Dial>`. A leg
    /// answering after its `<Dial>` gave up on it is hung up.
    pub fn dial_progress(&self, u: &CallUpdate) {
        let (sid, leg) = match u {
            CallUpdate::Answered { sid, .. } => (sid, Leg::Answered(sid.clone())),
            CallUpdate::Ended { sid, status, .. } => (sid, Leg::Ended(sid.clone(), *status)),
            CallUpdate::Ringing { .. } | CallUpdate::Incoming(_) | CallUpdate::Sip(_) => return,
        };
        let mut children = self.children();
        let Some(sink) = children.get(sid) else {
            return;
        };
        match (sink, &leg) {
            (Some(tx), _) => {
                let _ = tx.send(leg.clone());
            }
            (None, Leg::Answered(_)) => {
                let sip = self.sip.clone();
                let sid = sid.clone();
                tokio::spawn(async move {
                    let _ = sip.hangup(&sid, EndStatus::Completed).await;
                });
            }
            (None, Leg::Ended(..)) => {}
        }
        if matches!(leg, Leg::Ended(..)) {
            children.remove(sid);
        }
    }

    /// Dialled legs not ended yet (the tests check that none is left behind).
    pub fn dialled_legs(&self) -> usize {
        self.children().len()
    }

    fn ringback(&self, codec: Codec) -> Arc<PlayMedia> {
        lock(&self.ringback)
            .entry(codec)
            .or_insert_with(|| audio::encode(&audio::ringback(), codec))
            .clone()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Signal>>> {
        lock(&self.live)
    }

    fn by_relay(&self) -> std::sync::MutexGuard<'_, HashMap<RelayId, String>> {
        lock(&self.by_relay)
    }

    /// The conference rooms of this node.
    pub fn conferences(&self) -> &Arc<Conferences> {
        &self.conferences
    }

    /// Calls whose instructions are running.
    pub fn running(&self) -> usize {
        self.live().len()
    }

    /// A dataplane event: digits and playback ends go to the call owning the relay.
    pub fn media_event(&self, ev: &MediaEvent) {
        let (relay, signal) = match *ev {
            MediaEvent::Dtmf {
                relay, side, digit, ..
            } => (
                relay,
                if side == Side::A {
                    Signal::Digit(digit)
                } else {
                    Signal::LegDigit(digit)
                },
            ),
            MediaEvent::PlayDone { relay, id, .. } => (relay, Signal::PlayDone(id)),
            MediaEvent::Talking {
                conf,
                relay,
                talking,
                ..
            } => {
                let confs = self.conferences.clone();
                tokio::spawn(async move { confs.talking(conf, relay, talking).await });
                return;
            }
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
    pub async fn outbound(
        self: &Arc<Self>,
        sid: &str,
        relay: RelayId,
        codec: Codec,
        dtmf_pt: Option<u8>,
    ) {
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
            dtmf_pt,
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
            call,
            rx,
            ended: false,
            fetches: 0,
            redirect: None,
            timeouts: self.timeouts_for(overrides),
            usage: BTreeMap::new(),
            side: Side::A,
        };
        let engine = self.clone();
        tokio::spawn(async move {
            let sid = run.call.sid.clone();
            // The call's relay at its end (a conference may have moved its media).
            let relay = run.run(first, fallback).await;
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
        for (col, v) in [
            ("callback_attempts", src.callback_policy.0),
            ("callback_backoff_ms", src.callback_policy.1),
        ] {
            if let Some(v) = v {
                cols.push((col, Value::from(v)));
            }
        }
        if let Err(e) = self.store.insert(&CALLS, &cols).await {
            tracing::error!(error = %e, "cannot record an incoming call");
            let _ = self.sip.reject(&inc.sid, 503).await;
            return;
        }
        self.calls.note_call(&cols);
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
            dtmf_pt: inc.dtmf_pt,
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
    dtmf_pt: Option<u8>,
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
    /// Who the call is, its media and request parameters; `answered` follows the call.
    call: Started,
    rx: mpsc::Receiver<Signal>,
    ended: bool,
    fetches: u32,
    /// New instructions that interrupted the current verb.
    redirect: Option<Instructions>,
    /// Fetch timeouts of this call (the node's, or its application's overrides).
    timeouts: super::fetch::Timeouts,
    /// Usage per module (document URL): fetches and milliseconds of instructions run, handed
    /// to the engine's batch when the call's instructions end.
    usage: BTreeMap<String, (i64, i64)>,
    /// The leg prompts play to and digits come from: the caller (A), or a dialled party (B)
    /// while a whisper runs.
    side: Side,
}

/// The module a document URL belongs to: scheme, host, port and path (no query, no fragment).
fn module_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            if u.host_str() == Some("inline.invalid") {
                "inline".to_string()
            } else {
                u.to_string()
            }
        }
        Err(_) => url.to_string(),
    }
}

impl CallRun {
    async fn notify(&self, log: &str, code: &str, msg: &str) {
        self.engine
            .calls
            .notify(&self.call.account, Some(&self.call.sid), log, code, msg)
            .await;
    }

    fn params(&self, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut p = self.call.base.clone();
        p.insert(
            "CallStatus".into(),
            if self.call.answered {
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
        self.usage.entry(module_of(url)).or_default().0 += 1;
        let primary = self
            .engine
            .fetcher
            .instructions(url, method, &params, &self.call.token, &self.timeouts)
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
        self.usage.entry(module_of(fb_url)).or_default().0 += 1;
        match self
            .engine
            .fetcher
            .instructions(
                fb_url,
                *fb_method,
                &params,
                &self.call.token,
                &self.timeouts,
            )
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

    async fn run(mut self, first: Option<Next>, fallback: Option<(String, Method)>) -> RelayId {
        self.run_instructions(first, fallback).await;
        // Usage per module, counted on the day the instructions ended; written in batches.
        let day_us = 86_400 * 1_000_000;
        let day = now_us() / day_us * day_us;
        let mut u = lock(&self.engine.usage);
        for (module, (fetches, ms)) in std::mem::take(&mut self.usage) {
            let slot = u
                .entry((self.call.account.clone(), module, day))
                .or_default();
            slot.0 += fetches;
            slot.1 += ms;
        }
        drop(u);
        self.call.relay
    }

    async fn run_instructions(&mut self, first: Option<Next>, fallback: Option<(String, Method)>) {
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
            let (module, started) = (module_of(base.as_str()), tokio::time::Instant::now());
            self.place_ahead_for_conference(&verbs).await;
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
            let ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            self.usage.entry(module).or_default().1 += ms;
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
        if !self.call.answered {
            self.call.answered = true;
            let _ = self.engine.sip.answer(&self.call.sid).await;
        }
    }

    async fn hangup(&mut self) {
        if !self.ended {
            self.ended = true;
            let _ = self
                .engine
                .sip
                .hangup(&self.call.sid, EndStatus::Completed)
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
                if self.call.answered {
                    self.hangup().await;
                } else {
                    self.ended = true;
                    let code = match reason {
                        RejectReason::Busy => 486,
                        RejectReason::Rejected => 603,
                    };
                    let _ = self.engine.sip.reject(&self.call.sid, code).await;
                }
                Flow::Stop
            }
            Verb::Echo => {
                self.answer().await;
                self.echo().await;
                Flow::Stop
            }
            Verb::Dial(d) => self.dial(&d, base).await,
            Verb::Record(r) => {
                self.answer().await;
                self.record(&r, base).await
            }
        }
    }

    /// `<Record>`: a beep, then what the caller says (the dataplane's recording tap on leg A)
    /// until a `finishOnKey` digit, `timeout` seconds of silence, `maxLength`, a hang-up or new
    /// instructions. The WAV is stored under the recording's SID; a recording of nothing but
    /// silence is `absent` (no action, the next verb runs). Otherwise the `action` (default:
    /// this document) gets `RecordingUrl`, `RecordingDuration`, `RecordingSid` and `Digits`
    /// (the key, or `hangup`); after a hang-up it is still requested, its answer not run.
    async fn record(&mut self, r: &Record, base: &reqwest::Url) -> Flow {
        if r.transcribe {
            self.notify(
                "1",
                CODE_VERB_UNSUPPORTED,
                "<Record transcribe>: transcription is not offered by this VoxEdge version; the recording is made without it",
            )
            .await;
        }
        if r.play_beep {
            let beep = audio::encode(&audio::beep(), self.call.codec);
            if let Waited::Ended = self.play_media(beep, 1, false).await {
                return Flow::Stop;
            }
        }
        let Some(tap) = self.tap(Side::A).await else {
            return Flow::Next;
        };
        let rec = self
            .open_recording("RecordVerb", 1, r.status_callback.as_ref(), base, None)
            .await;
        let mut capture = record::Capture::new(r.max_length);
        let begun = tokio::time::Instant::now();
        let mut last_speech = begun;
        let silence = Duration::from_secs(u64::from(r.timeout));
        let max = Duration::from_secs(u64::from(r.max_length));
        let ended_by = loop {
            let signal = self.signal(Some(Duration::from_millis(100))).await;
            for f in tap.1.try_iter() {
                if capture.push(&f) {
                    last_speech = tokio::time::Instant::now();
                }
            }
            match signal {
                Some(Signal::Digit(d)) if r.finish_on_key.contains(d) => break d.to_string(),
                Some(Signal::Ended) => break "hangup".to_string(),
                _ => {}
            }
            if capture.full() || begun.elapsed() >= max {
                break String::new();
            }
            if r.timeout > 0 && last_speech.elapsed() >= silence {
                break String::new();
            }
        };
        self.untap(Side::A, &tap).await;
        for f in tap.1.try_iter() {
            capture.push(&f);
        }
        let samples = capture.finish(r.trim);
        let Some(secs) = self
            .close_recording(&rec, samples, 1, r.status_callback.as_ref(), base)
            .await
        else {
            // Absent (nothing but silence) or not stored: the next verb runs.
            return if self.ended || self.redirect.is_some() {
                Flow::Stop
            } else {
                Flow::Next
            };
        };
        if self.redirect.is_some() {
            return Flow::Stop;
        }
        let mut params = BTreeMap::new();
        params.insert("RecordingUrl".to_string(), rec.url.clone());
        params.insert("RecordingDuration".to_string(), secs.to_string());
        params.insert("RecordingSid".to_string(), rec.sid.clone());
        params.insert("Digits".to_string(), ended_by);
        let action = match &r.action {
            Some(a) => match resolve(base, a) {
                Ok(u) => u,
                Err(e) => {
                    self.notify("0", e.code, &format!("<Record action>: {}", e.message))
                        .await;
                    return if self.ended { Flow::Stop } else { Flow::Next };
                }
            },
            None => base.to_string(),
        };
        if self.ended {
            params.insert("CallStatus".to_string(), "completed".to_string());
            let _ = self.document(&action, r.method, &params, None).await;
            return Flow::Stop;
        }
        Flow::Goto(action, r.method, params)
    }

    /// Starts the dataplane's recording tap on a leg of the call's relay; `None` (with a
    /// notification) when it cannot.
    async fn tap(&self, side: Side) -> Option<TapPair> {
        let (tap, rx) = RecordTap::new(2048);
        let (dp, relay, t) = (self.engine.dp.clone(), self.call.relay, tap.clone());
        let on = tokio::task::spawn_blocking(move || dp.record(relay, side, Some(t))).await;
        if matches!(on, Ok(Ok(()))) {
            Some((tap, rx))
        } else {
            self.notify("0", "13500", "the call's media could not be recorded")
                .await;
            None
        }
    }

    /// Stops a recording tap (a relay already gone is fine) and logs frames it lost.
    async fn untap(&self, side: Side, tap: &TapPair) {
        let (dp, relay) = (self.engine.dp.clone(), self.call.relay);
        let _ = tokio::task::spawn_blocking(move || dp.record(relay, side, None)).await;
        let dropped = tap.0.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(call = %self.call.sid, dropped, "recording lost frames (tap full)");
        }
    }

    /// A new recording of this call: its row (`in-progress`) and the `in-progress` callback.
    async fn open_recording(
        &self,
        source: &'static str,
        channels: u16,
        cb: Option<&LegCallback>,
        base: &reqwest::Url,
        conference: Option<&str>,
    ) -> OpenRecording {
        let sid = crate::secret::new_sid(RECORDINGS.sid_prefix);
        let rec = OpenRecording {
            url: self.engine.recordings.url(&self.call.account, &sid),
            sid,
            start_us: now_us(),
            source,
            channels,
            conference: conference.map(str::to_string),
        };
        let row = [
            ("sid", Value::from(rec.sid.clone())),
            ("account_sid", Value::from(self.call.account.clone())),
            ("call_sid", Value::from(self.call.sid.clone())),
            (
                "conference_sid",
                conference.map_or(Value::Null, Value::from),
            ),
            ("api_version", Value::from("2010-04-01")),
            ("status", Value::from("in-progress")),
            ("source", Value::from(source)),
            ("channels", Value::from(channels)),
            ("start_time", Value::from(rec.start_us)),
            ("date_created", Value::from(rec.start_us)),
            ("date_updated", Value::from(rec.start_us)),
        ];
        self.recording_change(RowWrite::Insert(&row), cb, base, &rec, "in-progress", None)
            .await;
        rec
    }

    /// Stores a finished recording (`completed`, its WAV written) or marks it `absent` (no
    /// audio) or `failed` (not stored, with a notification); its duration when stored.
    async fn close_recording(
        &self,
        rec: &OpenRecording,
        samples: Vec<i16>,
        channels: u16,
        cb: Option<&LegCallback>,
        base: &reqwest::Url,
    ) -> Option<u64> {
        if samples.is_empty() {
            let sets = [
                ("status", Value::from("absent")),
                ("duration", Value::from(0)),
            ];
            let write = RowWrite::Update {
                account: &self.call.account,
                sid: &rec.sid,
                sets: &sets,
            };
            self.recording_change(write, cb, base, rec, "absent", Some(0))
                .await;
            return None;
        }
        let (secs, written) = self
            .engine
            .recordings
            .save(&rec.sid, samples, channels)
            .await;
        let (status, path) = match written {
            Ok(p) => ("completed", Value::from(p.display().to_string())),
            Err(e) => {
                self.notify(
                    "0",
                    "13500",
                    &format!("the recording could not be stored: {e}"),
                )
                .await;
                ("failed", Value::Null)
            }
        };
        let sets = [
            ("status", Value::from(status)),
            ("duration", Value::from(secs)),
            ("media_path", path),
        ];
        let write = RowWrite::Update {
            account: &self.call.account,
            sid: &rec.sid,
            sets: &sets,
        };
        self.recording_change(write, cb, base, rec, status, Some(secs))
            .await;
        (status == "completed").then_some(secs)
    }

    /// A recording's row change (`write`) and, when `recordingStatusCallback` asks for
    /// `status`, its callback — written in one transaction; then the event streams hear of it.
    #[allow(clippy::too_many_arguments)]
    async fn recording_change(
        &self,
        write: RowWrite<'_>,
        cb: Option<&LegCallback>,
        base: &reqwest::Url,
        rec: &OpenRecording,
        status: &str,
        secs: Option<u64>,
    ) {
        let callback = self.recording_callback(cb, base, rec, status, secs).await;
        if let Err(e) = self
            .engine
            .calls
            .write_recording(write, callback.as_ref())
            .await
        {
            tracing::warn!(call = %self.call.sid, recording = %rec.sid, error = %e, "recording change not written");
        }
        self.engine.calls.events().recording(
            &self.call.account,
            &self.call.sid,
            &rec.sid,
            status,
            secs,
        );
    }

    /// The recording status callback for `status`, when `recordingStatusCallback` asks for it.
    async fn recording_callback(
        &self,
        cb: Option<&LegCallback>,
        base: &reqwest::Url,
        rec: &OpenRecording,
        status: &str,
        secs: Option<u64>,
    ) -> Option<Callback> {
        let cb = cb?;
        if !cb.events.split(' ').any(|e| e == status) {
            return None;
        }
        let callbacks = self.engine.calls.callbacks()?;
        let target = match resolve(base, &cb.url) {
            Ok(u) => u,
            Err(e) => {
                self.notify(
                    "0",
                    e.code,
                    &format!("recordingStatusCallback: {}", e.message),
                )
                .await;
                return None;
            }
        };
        let call = self
            .engine
            .store
            .get(&CALLS, &self.call.account, &self.call.sid)
            .await
            .ok()??;
        let mut p = BTreeMap::new();
        p.insert("AccountSid".to_string(), self.call.account.clone());
        p.insert("CallSid".to_string(), self.call.sid.clone());
        p.insert("RecordingSid".to_string(), rec.sid.clone());
        p.insert("RecordingUrl".to_string(), rec.url.clone());
        p.insert("RecordingStatus".to_string(), status.to_string());
        p.insert("RecordingChannels".to_string(), rec.channels.to_string());
        p.insert("RecordingSource".to_string(), rec.source.to_string());
        if let Some(c) = &rec.conference {
            p.insert("ConferenceSid".to_string(), c.clone());
        }
        p.insert(
            "RecordingTrack".to_string(),
            if matches!(rec.source, "RecordVerb" | "Conference") {
                "inbound"
            } else {
                "both"
            }
            .to_string(),
        );
        p.insert("RecordingStartTime".to_string(), rfc2822(rec.start_us));
        p.insert("ErrorCode".to_string(), "0".to_string());
        if let Some(s) = secs {
            p.insert("RecordingDuration".to_string(), s.to_string());
        }
        Some(callbacks.recording_callback(&call, target, cb.method.as_str(), &p))
    }

    /// Sets whether media passes between the caller (leg A) and a dialled callee (leg B).
    async fn bridge(&self, on: bool) {
        let (dp, relay) = (self.engine.dp.clone(), self.call.relay);
        let _ = tokio::task::spawn_blocking(move || {
            for side in [Side::A, Side::B] {
                let _ = dp.update_leg(
                    relay,
                    side,
                    voxedge_dataplane::command::LegUpdate {
                        blocked: Some(!on),
                        ..Default::default()
                    },
                );
            }
        })
        .await;
    }

    async fn stop_playing(&self) {
        let (dp, relay) = (self.engine.dp.clone(), self.call.relay);
        let _ = tokio::task::spawn_blocking(move || dp.stop_play(relay, Side::A)).await;
    }

    /// `<Dial>`: the targets at once (or one after another with `sequential`), the first to
    /// answer bridged; then the action URL or the next verb.
    async fn dial(&mut self, d: &Dial, base: &reqwest::Url) -> Flow {
        if let Some(spec) = &d.conference {
            self.place_for_conference(spec).await;
            self.answer().await;
            return self.conference(d, spec, base).await;
        }
        // Bridged only when answered (answerOnBridge): until then the caller hears ringing.
        if d.answer_on_bridge && !self.call.answered {
            let _ = self.engine.sip.ring(&self.call.sid).await;
        } else {
            self.answer().await;
        }
        let caller_id = d
            .caller_id
            .clone()
            .or_else(|| self.call.base.get("From").cloned())
            .unwrap_or_default();
        let groups: Vec<Vec<&DialTarget>> = if d.sequential {
            d.targets.iter().map(|t| vec![t]).collect()
        } else {
            vec![d.targets.iter().collect()]
        };
        let mut outcome = DialOutcome {
            status: "failed",
            sid: None,
            bridged_secs: None,
            recording: None,
        };
        for group in groups {
            outcome = self.dial_group(d, &group, &caller_id, base).await;
            if self.ended || self.redirect.is_some() || outcome.bridged_secs.is_some() {
                break;
            }
        }
        if self.redirect.is_some() {
            // New instructions from the API: `run` takes them.
            return Flow::Stop;
        }
        let mut params = BTreeMap::new();
        params.insert("DialCallStatus".to_string(), outcome.status.to_string());
        params.insert(
            "DialBridged".to_string(),
            outcome.bridged_secs.is_some().to_string(),
        );
        if let Some(sid) = &outcome.sid {
            params.insert("DialCallSid".to_string(), sid.clone());
        }
        if let Some(secs) = outcome.bridged_secs {
            params.insert("DialCallDuration".to_string(), secs.to_string());
        }
        if let Some((sid, url, secs)) = &outcome.recording {
            params.insert("RecordingSid".to_string(), sid.clone());
            params.insert("RecordingUrl".to_string(), url.clone());
            params.insert("RecordingDuration".to_string(), secs.to_string());
        }
        self.dial_action(d, base, params).await
    }

    /// After a `<Dial>`: its `action` with `params`, else the next verb.
    async fn dial_action(
        &mut self,
        d: &Dial,
        base: &reqwest::Url,
        mut params: BTreeMap<String, String>,
    ) -> Flow {
        let Some(action) = &d.action else {
            return if self.ended { Flow::Stop } else { Flow::Next };
        };
        let action = match resolve(base, action) {
            Ok(u) => u,
            Err(e) => {
                self.notify("0", e.code, &format!("<Dial action>: {}", e.message))
                    .await;
                return if self.ended { Flow::Stop } else { Flow::Next };
            }
        };
        if self.ended {
            // The caller hung up: the app still hears how the dial ended (its answer is moot).
            params.insert("CallStatus".to_string(), "completed".to_string());
            let _ = self.document(&action, d.method, &params, None).await;
            return Flow::Stop;
        }
        Flow::Goto(action, d.method, params)
    }

    /// Places one group of a `<Dial>`'s targets and waits for the first answer (then bridges
    /// until the end of that leg), all failing, the timeout, or the caller's end.
    async fn dial_group(
        &mut self,
        d: &Dial,
        group: &[&DialTarget],
        caller_id: &str,
        base: &reqwest::Url,
    ) -> DialOutcome {
        let (tx, mut legs) = mpsc::unbounded_channel();
        let mut pending: Vec<String> = Vec::new();
        let mut last: Option<String> = None;
        // Legs with a whisper: the URL (resolved) and method.
        let mut whispers: HashMap<String, (String, Method)> = HashMap::new();
        for t in group {
            let Some(child) = self.place_leg(t, caller_id, &tx, base).await else {
                continue;
            };
            if let Some((url, method)) = t.url() {
                match resolve(base, url) {
                    Ok(u) => {
                        whispers.insert(child.clone(), (u, method));
                    }
                    Err(e) => {
                        self.notify("0", e.code, &format!("<Dial> whisper url: {}", e.message))
                            .await;
                    }
                }
            }
            last = Some(child.clone());
            pending.push(child);
        }
        let mut outcome = DialOutcome {
            status: "failed",
            sid: last,
            bridged_secs: None,
            recording: None,
        };
        if pending.is_empty() {
            return outcome;
        }
        let mut ringback = false;
        if self.call.answered {
            let id = self.engine.play_ids.fetch_add(1, Ordering::Relaxed);
            let (dp, relay, media) = (
                self.engine.dp.clone(),
                self.call.relay,
                self.engine.ringback(self.call.codec),
            );
            ringback = matches!(
                tokio::task::spawn_blocking(move || dp.play(relay, Side::A, media, 0, id)).await,
                Ok(Ok(()))
            );
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(d.timeout));
        let mut ends: Vec<EndStatus> = Vec::new();
        let winner = loop {
            if pending.is_empty() {
                break None;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::select! {
                s = self.signal(Some(left)) => match s {
                    None => {
                        ends.push(EndStatus::NoAnswer);
                        self.give_up(&mut pending, EndStatus::NoAnswer).await;
                        break None;
                    }
                    Some(Signal::Ended) => {
                        ends.push(EndStatus::Canceled);
                        self.give_up(&mut pending, EndStatus::Canceled).await;
                        break None;
                    }
                    Some(_) => {}
                },
                Some(leg) = legs.recv() => match leg {
                    Leg::Answered(c) => {
                        pending.retain(|p| *p != c);
                        break Some(c);
                    }
                    Leg::Ended(c, st) => {
                        pending.retain(|p| *p != c);
                        outcome.sid = Some(c);
                        ends.push(st);
                    }
                },
            }
        };
        // A whisper runs on the answering leg before the bridge (the caller keeps hearing
        // ringback); its instructions may refuse the call.
        let refused = match winner
            .as_ref()
            .and_then(|w| whispers.get(w).map(|x| (w, x)))
        {
            Some((w, (url, method))) => {
                let (w, url, method) = (w.clone(), url.clone(), *method);
                !self.whisper(&url, method, &w, &mut legs).await
            }
            None => false,
        };
        if ringback {
            self.stop_playing().await;
        }
        if refused {
            let w = winner.clone().unwrap_or_default();
            if let Some(sink) = self.engine.children().get_mut(&w) {
                *sink = None;
            }
            let _ = self.engine.sip.hangup(&w, EndStatus::Completed).await;
            outcome.sid = Some(w);
            outcome.status = "completed";
            return outcome;
        }
        // Twilio's DialCallStatus: the most telling of the legs' ends.
        outcome.status = [
            (EndStatus::Canceled, "canceled"),
            (EndStatus::Busy, "busy"),
            (EndStatus::NoAnswer, "no-answer"),
            (EndStatus::Completed, "completed"),
        ]
        .into_iter()
        .find(|(st, _)| ends.contains(st))
        .map_or("failed", |(_, name)| name);
        let Some(winner) = winner else {
            return outcome;
        };
        // The other targets of the group lost.
        self.give_up(&mut pending, EndStatus::Canceled).await;
        outcome.sid = Some(winner.clone());
        outcome.status = "completed";
        if !self.call.answered {
            self.answer().await;
        }
        self.bridge(true).await;
        let bridged = tokio::time::Instant::now();
        let until = bridged + Duration::from_secs(u64::from(d.time_limit));
        // `record`: both legs tapped while bridged (the caller's audio arrives on leg A, the
        // called party's on leg B), lined up by arrival and mixed at the end.
        let mut recording = match &d.record {
            Some(r) => match (self.tap(Side::A).await, self.tap(Side::B).await) {
                (Some(a), Some(b)) => {
                    let channels = if r.dual { 2 } else { 1 };
                    let open = self
                        .open_recording(
                            "DialVerb",
                            channels,
                            r.status_callback.as_ref(),
                            base,
                            None,
                        )
                        .await;
                    let caps = (
                        record::Capture::new(d.time_limit),
                        record::Capture::new(d.time_limit),
                    );
                    Some((a, b, caps, open))
                }
                (a, b) => {
                    for (side, t) in [(Side::A, a), (Side::B, b)] {
                        if let Some(t) = t {
                            self.untap(side, &t).await;
                        }
                    }
                    None
                }
            },
            None => None,
        };
        let drain = |rec: &mut Option<(
            TapPair,
            TapPair,
            (record::Capture, record::Capture),
            OpenRecording,
        )>| {
            if let Some((a, b, (ca, cb), _)) = rec {
                let at = (bridged.elapsed().as_millis() as usize) * 8;
                for f in a.1.try_iter() {
                    ca.push_at(&f, at);
                }
                for f in b.1.try_iter() {
                    cb.push_at(&f, at);
                }
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            tokio::select! {
                s = self.signal(Some(left)) => match s {
                    None | Some(Signal::Ended) => break,
                    Some(Signal::Digit('*')) if d.hangup_on_star => break,
                    Some(_) => {}
                },
                Some(leg) = legs.recv() => {
                    if matches!(&leg, Leg::Ended(c, _) if *c == winner) {
                        break;
                    }
                }
                _ = tick.tick() => drain(&mut recording),
            }
        }
        outcome.bridged_secs = Some(bridged.elapsed().as_secs());
        drain(&mut recording);
        self.bridge(false).await;
        if let (Some((a, b, (ca, cb), open)), Some(r)) = (recording, &d.record) {
            self.untap(Side::A, &a).await;
            self.untap(Side::B, &b).await;
            let (samples, channels) = record::mix(ca, cb, r.dual, r.trim);
            if let Some(secs) = self
                .close_recording(&open, samples, channels, r.status_callback.as_ref(), base)
                .await
            {
                outcome.recording = Some((open.sid.clone(), open.url.clone(), secs));
            }
        }
        // Hung up here (time limit, `*`, the caller's end, a redirect) unless it already ended.
        if let Some(sink) = self.engine.children().get_mut(&winner) {
            *sink = None;
        }
        let _ = self.engine.sip.hangup(&winner, EndStatus::Completed).await;
        outcome
    }

    /// A whisper: the instructions at `url` run on the answered leg `leg` (prompts to the
    /// called party, digits from it) before the bridge. `Say`, `Play`, `Pause`, `Gather` (its
    /// action continues the whisper) and `Redirect` run; `Hangup` or `Reject` refuses the call;
    /// other verbs are a warning and are skipped. Requests carry the leg's parameters (its
    /// `CallSid`, `ParentCallSid`, `Direction=outbound-dial`). Whether to bridge: false also
    /// when the leg or the caller hung up meanwhile. A whisper that cannot be fetched is a
    /// notification, and the call is bridged.
    async fn whisper(
        &mut self,
        url: &str,
        method: Method,
        leg: &str,
        legs: &mut mpsc::UnboundedReceiver<Leg>,
    ) -> bool {
        let row = self
            .engine
            .store
            .get(&CALLS, &self.call.account, leg)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        for (k, col) in [("From", "from"), ("To", "to")] {
            params.insert(k.into(), text(&row, col).unwrap_or_default());
        }
        params.insert("Called".into(), params["To"].clone());
        params.insert("Caller".into(), params["From"].clone());
        params.insert("CallSid".into(), leg.to_string());
        params.insert("ParentCallSid".into(), self.call.sid.clone());
        params.insert("AccountSid".into(), self.call.account.clone());
        params.insert("ApiVersion".into(), "2010-04-01".into());
        params.insert("Direction".into(), "outbound-dial".into());
        params.insert("CallStatus".into(), "in-progress".into());
        self.side = Side::B;
        let mut next = Some((url.to_string(), method, BTreeMap::new()));
        let mut connect = true;
        'documents: while let Some((u, m, extra)) = next.take() {
            let mut p = params.clone();
            p.extend(extra);
            self.usage.entry(module_of(&u)).or_default().0 += 1;
            let doc = match self
                .engine
                .fetcher
                .instructions(&u, m, &p, &self.call.token, &self.timeouts)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    self.notify("0", e.code, &format!("whisper {u}: {}", e.message))
                        .await;
                    break;
                }
            };
            for verb in doc.verbs {
                while let Ok(l) = legs.try_recv() {
                    if matches!(&l, Leg::Ended(c, _) if c == leg) {
                        connect = false;
                        break 'documents;
                    }
                }
                if self.ended || self.redirect.is_some() {
                    connect = false;
                    break 'documents;
                }
                let waited = match verb {
                    Verb::Say(s) => self.say(&s, false).await,
                    Verb::Play(pl) => self.play(&pl, &doc.url, false).await,
                    Verb::Pause(secs) => self.pause(secs, false).await,
                    Verb::Gather(g) => match self.gather(&g, &doc.url).await {
                        Flow::Goto(u, m, extra) => {
                            next = Some((u, m, extra));
                            continue 'documents;
                        }
                        Flow::Next => Waited::Done,
                        Flow::Stop => Waited::Ended,
                    },
                    Verb::Redirect { url, method } => match resolve(&doc.url, &url) {
                        Ok(u) => {
                            next = Some((u, method, BTreeMap::new()));
                            continue 'documents;
                        }
                        Err(e) => {
                            self.notify("0", e.code, &format!("whisper <Redirect>: {}", e.message))
                                .await;
                            Waited::Done
                        }
                    },
                    Verb::Hangup | Verb::Reject(_) => {
                        connect = false;
                        break 'documents;
                    }
                    other => {
                        self.notify(
                            "1",
                            CODE_VERB_UNSUPPORTED,
                            &format!("<{}> is not run in a whisper; it was skipped", other.name()),
                        )
                        .await;
                        Waited::Done
                    }
                };
                if matches!(waited, Waited::Ended) {
                    connect = false;
                    break 'documents;
                }
            }
        }
        self.side = Side::A;
        connect && !self.ended && self.redirect.is_none()
    }

    /// Ends dialled legs this `<Dial>` no longer wants; their late answers are hung up.
    async fn give_up(&self, pending: &mut Vec<String>, status: EndStatus) {
        for c in pending.drain(..) {
            if let Some(sink) = self.engine.children().get_mut(&c) {
                *sink = None;
            }
            let _ = self.engine.sip.hangup(&c, status).await;
        }
    }

    /// Records and places one dialled leg (a child call of this one); `None` when the target
    /// cannot be dialled (a notification says why).
    async fn place_leg(
        &self,
        t: &DialTarget,
        caller_id: &str,
        sink: &mpsc::UnboundedSender<Leg>,
        base: &reqwest::Url,
    ) -> Option<String> {
        let to = t.to();
        let mut target = match self.engine.sip.resolve(to) {
            Ok(tg) => tg,
            Err(e) => {
                let code = match e {
                    OriginateError::SipUriNotAllowed => "13225",
                    OriginateError::NoRoute => "13224",
                    _ => "13223",
                };
                self.notify("0", code, &format!("<Dial> {to}: {e}")).await;
                return None;
            }
        };
        if let DialTarget::Sip {
            username: Some(u),
            password: Some(p),
            ..
        } = t
        {
            target.creds = Some((u.clone(), p.clone()));
        }
        let child = crate::secret::new_sid("CA");
        let now = now_us();
        let mut cols: Vec<(&str, Value)> = vec![
            ("sid", Value::from(child.clone())),
            ("account_sid", Value::from(self.call.account.clone())),
            ("parent_call_sid", Value::from(self.call.sid.clone())),
            ("direction", Value::from("outbound-dial")),
            ("from", Value::from(caller_id)),
            ("to", Value::from(to)),
            ("from_formatted", Value::from(caller_id)),
            ("to_formatted", Value::from(to)),
            ("status", Value::from("initiated")),
            ("queue_time", Value::from(0)),
            ("record", Value::from(0)),
            ("price_unit", Value::from("USD")),
            ("api_version", Value::from("2010-04-01")),
            ("date_created", Value::from(now)),
            ("date_updated", Value::from(now)),
        ];
        let callback = match t.callback().map(|cb| (resolve(base, &cb.url), cb)) {
            Some((Ok(url), cb)) => Some((url, cb)),
            Some((Err(e), _)) => {
                self.notify(
                    "0",
                    e.code,
                    &format!("<Dial> {to} statusCallback: {}", e.message),
                )
                .await;
                None
            }
            None => None,
        };
        if let Some((url, cb)) = callback {
            cols.push(("status_callback", Value::from(url)));
            cols.push(("status_callback_method", Value::from(cb.method.as_str())));
            cols.push(("status_callback_event", Value::from(cb.events.clone())));
        }
        // The leg's callbacks retry as the caller's (its application's policy).
        if let Ok(Some(parent)) = self
            .engine
            .store
            .get(&CALLS, &self.call.account, &self.call.sid)
            .await
        {
            cols.extend(crate::callbacks::policy_columns(&parent));
        }
        // The leg's record and its `initiated` status callback, in one transaction.
        if let Err(e) = self.engine.calls.insert_initiated(&cols).await {
            tracing::error!(error = %e, "cannot record a dialled leg");
            self.notify(
                "0",
                "13227",
                &format!("<Dial> {to}: the leg could not be recorded"),
            )
            .await;
            return None;
        }
        self.engine
            .children()
            .insert(child.clone(), Some(sink.clone()));
        let o = crate::sip::Originate {
            sid: child.clone(),
            target,
            from_user: caller_id.to_string(),
            instructions: false,
            bridge: Some(Bridge {
                relay: self.call.relay,
                codec: self.call.codec,
                dtmf_pt: self.call.dtmf_pt,
            }),
            worker: None,
        };
        if self.engine.sip.originate(o).await.is_err() {
            self.engine.children().remove(&child);
            return None;
        }
        Some(child)
    }

    /// Waits for the next signal, at most `limit` (None: until one arrives). Digits are those
    /// of the leg prompts go to: while a whisper runs, the dialled party's (the caller's are
    /// dropped); otherwise the caller's (a dialled party's are dropped).
    async fn signal(&mut self, limit: Option<Duration>) -> Option<Signal> {
        let deadline = limit.map(|d| tokio::time::Instant::now() + d);
        loop {
            let s = match deadline {
                Some(d) => tokio::time::timeout_at(d, self.rx.recv()).await.ok()?,
                None => self.rx.recv().await,
            };
            return match s {
                None | Some(Signal::Ended) => {
                    self.ended = true;
                    Some(Signal::Ended)
                }
                // New instructions interrupt the current verb like an end does; `run` takes them.
                Some(Signal::Redirect(i)) => {
                    self.redirect = Some(i);
                    Some(Signal::Ended)
                }
                Some(Signal::LegDigit(d)) if self.side == Side::B => Some(Signal::Digit(d)),
                Some(Signal::Digit(_)) if self.side == Side::B => continue,
                Some(Signal::LegDigit(_)) => continue,
                other => other,
            };
        }
    }

    /// Plays media on the current leg (the caller's, or a dialled party's during a whisper)
    /// and waits for its end (or, with `barge`, the first digit, which stops it).
    async fn play_media(&mut self, media: Arc<PlayMedia>, loops: u32, barge: bool) -> Waited {
        let id = self.engine.play_ids.fetch_add(1, Ordering::Relaxed);
        let (relay, side) = (self.call.relay, self.side);
        // Should the end event be lost (a full queue), the media's own length ends the wait.
        let length = Duration::from_nanos(media.length_ns()).saturating_mul(loops.max(1));
        let until = tokio::time::Instant::now() + length + Duration::from_secs(2);
        if !self.start_play(side, media, loops, id).await {
            return Waited::Done;
        }
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.signal(Some(left)).await {
                // The media's length passed without its end event (lost to a full queue).
                None => return Waited::Done,
                Some(Signal::PlayDone(done)) if done == id => return Waited::Done,
                Some(Signal::Digit(d)) if barge => {
                    let dp = self.engine.dp.clone();
                    let _ = tokio::task::spawn_blocking(move || dp.stop_play(relay, side)).await;
                    return Waited::Digit(d);
                }
                Some(Signal::Ended) => {
                    if !self.ended {
                        // Redirected: the new instructions start in silence.
                        let dp = self.engine.dp.clone();
                        let _ =
                            tokio::task::spawn_blocking(move || dp.stop_play(relay, side)).await;
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
        let (dp, relay) = (self.engine.dp.clone(), self.call.relay);
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
        let source = MediaSource::Say {
            text: s.text.clone(),
            voice: audio::espeak_voice(s.language.as_deref(), s.voice.as_deref()),
        };
        match self
            .engine
            .media
            .media(&self.call.account, &source, self.call.codec)
            .await
        {
            Ok(media) => self.play_media(media, s.loops, barge).await,
            Err(e) => {
                self.notify("0", e.code, &e.message).await;
                Waited::Done
            }
        }
    }

    async fn play(&mut self, p: &Play, base: &reqwest::Url, barge: bool) -> Waited {
        if p.url.is_empty() {
            let digits = p.digits.as_deref().unwrap_or("");
            let media = match self.call.dtmf_pt {
                // RFC 4733 events where the call negotiated telephone-event, else tones.
                Some(pt) => Arc::new(PlayMedia::telephone_events(pt, digits)),
                None => audio::encode(&audio::dtmf_tones(digits), self.call.codec),
            };
            if media.frame_count() == 0 {
                return Waited::Done;
            }
            return self.play_media(media, p.loops, barge).await;
        }
        let url = match resolve(base, &p.url) {
            Ok(u) => u,
            Err(e) => {
                self.notify("0", e.code, &format!("<Play>: {}", e.message))
                    .await;
                return Waited::Done;
            }
        };
        match self
            .engine
            .media
            .media(&self.call.account, &MediaSource::Url(url), self.call.codec)
            .await
        {
            Ok(media) => self.play_media(media, p.loops, barge).await,
            Err(e) => {
                self.notify("0", e.code, &format!("<Play>: {}", e.message))
                    .await;
                Waited::Done
            }
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

/// Audio a participant hears outside the mix: wait or hold audio looping, or an announcement
/// playing once (after which the loop, if any, resumes).
struct Aside {
    /// The loop (wait or hold audio) and the id of its current playback.
    looping: Option<(Arc<PlayMedia>, u64)>,
    /// The announcement playing now.
    announcing: Option<u64>,
}

impl CallRun {
    /// `<Dial><Conference>`: the caller enters the room, hears the wait audio until the
    /// conference starts, then is in the mix until it hangs up, presses `*`
    /// (`hangupOnStar`), `timeLimit` passes, new instructions arrive, the API removes it or
    /// the conference ends; then the `action` URL (`DialCallStatus`, `ConferenceSid`) or the
    /// next verb. With `record`, the participant's own track is a recording of its own.
    async fn conference(&mut self, d: &Dial, spec: &ConferenceSpec, base: &reqwest::Url) -> Flow {
        let absolute = |cb: &Option<LegCallback>| {
            cb.as_ref().and_then(|c| {
                resolve(base, &c.url).ok().map(|url| LegCallback {
                    url,
                    method: c.method,
                    events: c.events.clone(),
                })
            })
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let confs = self.engine.conferences.clone();
        let joining = Joining {
            call_sid: &self.call.sid,
            relay: self.call.relay,
            codec: self.call.codec,
            spec,
            status_callback: absolute(&spec.status_callback),
            recording_callback: absolute(&spec.recording_callback),
            signals: tx,
        };
        let entered = match confs.enter(&self.call.account, joining).await {
            Ok(e) => e,
            Err(e) => {
                self.notify("0", CODE_CONFERENCE, &format!("<Conference>: {e}"))
                    .await;
                let mut params = BTreeMap::new();
                params.insert("DialCallStatus".to_string(), "failed".to_string());
                return self.dial_action(d, base, params).await;
            }
        };
        let room = entered.room.clone();
        let joined = tokio::time::Instant::now();
        let until = joined + Duration::from_secs(u64::from(d.time_limit));
        let mut track = if entered.record {
            match self.tap(Side::A).await {
                Some(t) => {
                    let open = self
                        .open_recording(
                            "Conference",
                            1,
                            entered.recording_callback.as_ref(),
                            base,
                            Some(&room.sid),
                        )
                        .await;
                    Some((t, record::Capture::new(d.time_limit), open))
                }
                None => None,
            }
        } else {
            None
        };
        let mut aside = Aside {
            looping: None,
            announcing: None,
        };
        if !entered.started {
            if let Some((url, method)) = &spec.wait_url {
                let media = self.conference_media(url, *method, base).await;
                self.loop_aside(&mut aside, media).await;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut removed = false;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            tokio::select! {
                s = self.signal(Some(left)) => match s {
                    None | Some(Signal::Ended) => break,
                    Some(Signal::Digit('*')) if d.hangup_on_star => break,
                    Some(Signal::PlayDone(id)) => self.aside_done(&mut aside, id).await,
                    Some(_) => {}
                },
                c = rx.recv() => match c {
                    Some(ConfSignal::Started) => self.stop_aside(&mut aside).await,
                    Some(ConfSignal::Left) | None => {
                        removed = true;
                        break;
                    }
                    Some(ConfSignal::Announce(url, method)) => {
                        if let Some(media) = self.conference_media(&url, method, base).await {
                            let id = self.engine.play_ids.fetch_add(1, Ordering::Relaxed);
                            if self.start_play(Side::A, media, 1, id).await {
                                aside.announcing = Some(id);
                            }
                        }
                    }
                    Some(ConfSignal::Hold(url)) => {
                        if let Some((u, m)) = url {
                            let media = self.conference_media(&u, m, base).await;
                            self.loop_aside(&mut aside, media).await;
                        }
                    }
                    Some(ConfSignal::Unhold) => self.stop_aside(&mut aside).await,
                },
                _ = tick.tick(), if track.is_some() => {
                    if let Some((t, cap, _)) = &mut track {
                        let at = (joined.elapsed().as_millis() as usize) * 8;
                        for f in t.1.try_iter() {
                            cap.push_at(&f, at);
                        }
                    }
                }
            }
        }
        if aside.looping.is_some() || aside.announcing.is_some() {
            self.stop_playing().await;
        }
        if !removed {
            confs.leave(&room, &self.call.sid).await;
        }
        let mut params = BTreeMap::new();
        params.insert("DialCallStatus".to_string(), "completed".to_string());
        params.insert("ConferenceSid".to_string(), room.sid.clone());
        params.insert(
            "DialCallDuration".to_string(),
            joined.elapsed().as_secs().to_string(),
        );
        if let Some((t, mut cap, open)) = track {
            self.untap(Side::A, &t).await;
            let at = (joined.elapsed().as_millis() as usize) * 8;
            for f in t.1.try_iter() {
                cap.push_at(&f, at);
            }
            let samples = cap.finish(entered.trim);
            if let Some(secs) = self
                .close_recording(&open, samples, 1, entered.recording_callback.as_ref(), base)
                .await
            {
                params.insert("RecordingSid".to_string(), open.sid.clone());
                params.insert("RecordingUrl".to_string(), open.url.clone());
                params.insert("RecordingDuration".to_string(), secs.to_string());
            }
        }
        if self.redirect.is_some() {
            return Flow::Stop;
        }
        self.dial_action(d, base, params).await
    }

    /// Before an unanswered caller enters a room mixed on another dataplane worker, its media
    /// moves there (a new relay; the answer offers its port). An answered caller's far end
    /// already uses its port: it cannot move, and entering will say so.
    async fn place_for_conference(&mut self, spec: &ConferenceSpec) {
        if self.call.answered {
            return;
        }
        let Some(mine) = self.engine.dp.relay(self.call.relay).map(|r| r.worker) else {
            return;
        };
        let Ok(worker) = self
            .engine
            .conferences
            .claim_worker(&self.call.account, spec, mine)
            .await
        else {
            return;
        };
        self.move_media_to(worker).await;
    }

    /// A document that leads an unanswered caller into a live room mixed on another worker
    /// (`<Say>` then `<Dial><Conference>`, say) moves the caller's media there before its first
    /// verb answers: once answered, the far end's port is fixed. Only a live room is looked up;
    /// none is created, so a caller who never reaches the `<Dial>` leaves nothing behind.
    async fn place_ahead_for_conference(&mut self, verbs: &[Verb]) {
        if self.call.answered {
            return;
        }
        let Some(name) = verbs.iter().find_map(|v| match v {
            Verb::Dial(d) => d.conference.as_ref().map(|c| c.name.as_str()),
            _ => None,
        }) else {
            return;
        };
        if let Some(worker) = self.engine.conferences.worker_of(&self.call.account, name) {
            self.move_media_to(worker).await;
        }
    }

    /// Moves an unanswered caller's media to a relay on `worker` (nothing when it is there).
    async fn move_media_to(&mut self, worker: WorkerId) {
        if self.engine.dp.relay(self.call.relay).map(|r| r.worker) == Some(worker) {
            return;
        }
        let Ok(Some(relay)) = self.engine.sip.rehome(&self.call.sid, worker).await else {
            return;
        };
        if relay != self.call.relay {
            let mut by = self.engine.by_relay();
            by.remove(&self.call.relay);
            by.insert(relay, self.call.sid.clone());
            self.call.relay = relay;
        }
    }

    /// Wait, hold or announcement audio: an audio file, or a TwiML document whose first
    /// `<Play>` or `<Say>` is used. `None` (with a notification) when neither works.
    async fn conference_media(
        &mut self,
        url: &str,
        method: Method,
        base: &reqwest::Url,
    ) -> Option<Arc<PlayMedia>> {
        let url = match resolve(base, url) {
            Ok(u) => u,
            Err(e) => {
                self.notify("0", e.code, &format!("<Conference> audio: {}", e.message))
                    .await;
                return None;
            }
        };
        let (account, codec) = (self.call.account.clone(), self.call.codec);
        let as_audio = self
            .engine
            .media
            .media(&account, &MediaSource::Url(url.clone()), codec)
            .await;
        let audio_error = match as_audio {
            Ok(m) => return Some(m),
            Err(e) => e,
        };
        // Not audio: perhaps instructions (Twilio's wait URLs may answer with TwiML).
        let doc = self
            .engine
            .fetcher
            .instructions(
                &url,
                method,
                &self.params(&BTreeMap::new()),
                &self.call.token,
                &self.timeouts,
            )
            .await;
        let source = doc.ok().and_then(|doc| {
            let doc_base = doc.url.clone();
            doc.verbs.into_iter().find_map(|v| match v {
                Verb::Play(p) if !p.url.is_empty() => {
                    resolve(&doc_base, &p.url).ok().map(MediaSource::Url)
                }
                Verb::Say(s) => Some(MediaSource::Say {
                    voice: audio::espeak_voice(s.language.as_deref(), s.voice.as_deref()),
                    text: s.text,
                }),
                _ => None,
            })
        });
        if let Some(src) = source {
            if let Ok(m) = self.engine.media.media(&account, &src, codec).await {
                return Some(m);
            }
        }
        self.notify(
            "0",
            audio_error.code,
            &format!("<Conference> audio {url}: {}", audio_error.message),
        )
        .await;
        None
    }

    /// Starts playback `id` on side `side` of the call's relay without waiting; false (with a
    /// notification when the dataplane refused it) when it did not start.
    async fn start_play(&mut self, side: Side, media: Arc<PlayMedia>, loops: u32, id: u64) -> bool {
        let (dp, relay) = (self.engine.dp.clone(), self.call.relay);
        match tokio::task::spawn_blocking(move || dp.play(relay, side, media, loops, id)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.notify(
                    "0",
                    CODE_PLAY_FAILED,
                    &format!("media could not be played: {e}"),
                )
                .await;
                false
            }
            Err(_) => false,
        }
    }

    /// Loops `media` aside from the mix (replacing any loop; an announcement finishes first).
    async fn loop_aside(&mut self, aside: &mut Aside, media: Option<Arc<PlayMedia>>) {
        let Some(media) = media else {
            return;
        };
        let id = self.engine.play_ids.fetch_add(1, Ordering::Relaxed);
        if aside.announcing.is_none()
            && !self
                .start_play(Side::A, media.clone(), super::twiml::LOOP_FOREVER, id)
                .await
        {
            return;
        }
        aside.looping = Some((media, id));
    }

    /// Stops the audio aside: the participant hears the mix again.
    async fn stop_aside(&mut self, aside: &mut Aside) {
        // Both are cleared (an announcement may play while a loop waits to resume).
        let (looping, announcing) = (aside.looping.take(), aside.announcing.take());
        if looping.is_some() || announcing.is_some() {
            self.stop_playing().await;
        }
    }

    /// A playback ended: after an announcement the loop resumes; a loop that ran out starts
    /// again.
    async fn aside_done(&mut self, aside: &mut Aside, id: u64) {
        let ended_announcement = aside.announcing == Some(id);
        let ended_loop = aside.looping.as_ref().is_some_and(|(_, l)| *l == id);
        if !(ended_announcement || ended_loop) {
            return;
        }
        aside.announcing = None;
        if let Some((media, _)) = aside.looping.take() {
            self.loop_aside(aside, Some(media)).await;
        }
    }
}
