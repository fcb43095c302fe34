//! Outbound calls of the REST API: admission (per-account concurrency, calls per second with
//! a queue), placing them through the SIP service, and keeping their records true to what the
//! signalling reports.
//!
//! Call records move through Twilio's statuses: `queued` → `initiated` → `ringing` →
//! `in-progress` → `completed`, or end early as `busy`, `no-answer`, `failed` or `canceled`.
//! Every change is a conditional update in the store (the status must still be one the
//! change may start from), so an API hang-up racing the callee's BYE cannot produce two ends.
//!
//! An answered call runs its instructions in the instruction engine (`voice::engine`); on a
//! node without one (no SIP there) a call would echo the callee's media, and instructions given
//! get a warning notification (82001) saying they were not run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::sip::{CallUpdate, EndStatus, Originate, SipHandle, Target};
use crate::store::{now_us, CallWrite, Store, StoreError, CALLS, NOTIFICATIONS};

/// Notification codes of VoxEdge's own (82xxx; Twilio has no equivalent). docs/api.md lists them.
/// The call was accepted with instructions this version cannot run (it runs the built-in test
/// instructions instead).
pub const CODE_NO_INSTRUCTIONS: &str = "82001";
/// A live call was ended because the control node restarted.
pub const CODE_RESTART: &str = "82002";
/// An outbound call failed in signalling (a SIP error response, no response, no media ports).
pub const CODE_CALL_FAILED: &str = "82003";

/// Statuses a call can still leave.
pub const LIVE: &[&str] = &["queued", "initiated", "ringing", "in-progress"];

/// What the caller asked for, already validated by the API.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub account: String,
    pub to: String,
    pub from: String,
    pub target: Target,
    /// Columns of the call record beyond the ones the service sets.
    pub columns: Vec<(&'static str, Value)>,
    pub timeout: Duration,
    pub time_limit: Duration,
    /// Whether the request carried customer instructions (`Url`, `Twiml`, `ApplicationSid`).
    pub has_instructions: bool,
    /// The dataplane worker for the call's media (a conference's, for a participant added by
    /// dialling out); otherwise the least loaded.
    pub worker: Option<voxedge_dataplane::ids::WorkerId>,
}

/// Why a call was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("account has {0} calls in progress, its limit")]
    Concurrency(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the SIP service is not running on this node")]
    NoSip,
}

#[derive(Debug, Default)]
struct Book {
    /// Live calls per account, and the account of each live call.
    per_account: HashMap<String, u32>,
    account_of: HashMap<String, String>,
    /// Earliest instant the account may start its next call.
    next_slot: HashMap<String, Instant>,
}

/// The call service.
#[derive(Debug)]
pub struct CallService {
    store: Store,
    sip: Option<SipHandle>,
    cps: u32,
    concurrent: u32,
    book: Mutex<Book>,
    /// Time limit of each dialled call, applied from its answer.
    limits: Mutex<HashMap<String, Duration>>,
    callbacks: Option<Arc<crate::callbacks::Callbacks>>,
    /// Runs incoming calls' instructions (set once at start when the API runs).
    engine: std::sync::OnceLock<Arc<crate::voice::engine::Engine>>,
    /// Account events for `/v1/…/Events` streams.
    events: Arc<crate::events::EventHub>,
    /// Live calls known to have no status callback: their status changes skip the outbox
    /// transaction (one statement instead of three). Calls not here take the transaction.
    quiet: Mutex<std::collections::HashSet<String>>,
}

impl CallService {
    /// A recording's row change and, when there is one, its status callback, in one
    /// transaction; the deliverer is woken for the callback.
    ///
    /// # Errors
    /// Store errors (nothing is written then).
    pub async fn write_recording(
        &self,
        write: crate::store::RowWrite<'_>,
        callback: Option<&crate::store::Callback>,
    ) -> Result<(), StoreError> {
        self.store
            .write_with_callback(&crate::store::RECORDINGS, write, callback)
            .await?;
        if let (Some(_), Some(c)) = (callback, self.callbacks()) {
            c.wake();
        }
        Ok(())
    }

    /// The callback outbox (serve role).
    pub fn callbacks(&self) -> Option<&Arc<crate::callbacks::Callbacks>> {
        self.callbacks.as_ref()
    }

    /// The account event stream's hub.
    pub fn events(&self) -> &Arc<crate::events::EventHub> {
        &self.events
    }

    /// The instruction engine, when this node runs one.
    pub fn engine(&self) -> Option<&Arc<crate::voice::engine::Engine>> {
        self.engine.get()
    }

    /// Hands incoming calls to the instruction engine from now on.
    pub fn set_engine(&self, engine: Arc<crate::voice::engine::Engine>) {
        let _ = self.engine.set(engine);
    }

    /// Starts the service: `updates` is where the SIP service reports placed calls.
    pub fn start(
        store: Store,
        sip: Option<SipHandle>,
        (cps, concurrent): (u32, u32),
        callbacks: Option<Arc<crate::callbacks::Callbacks>>,
        updates: mpsc::UnboundedReceiver<CallUpdate>,
    ) -> Arc<CallService> {
        let svc = Arc::new(CallService {
            store,
            sip,
            cps: cps.max(1),
            concurrent,
            book: Mutex::new(Book::default()),
            limits: Mutex::new(HashMap::new()),
            callbacks,
            engine: std::sync::OnceLock::new(),
            events: Arc::new(crate::events::EventHub::new()),
            quiet: Mutex::new(std::collections::HashSet::new()),
        });
        tokio::spawn(svc.clone().follow(updates));
        svc
    }

    /// Moves a call's status (if it is one of `from`) and writes the status callback the
    /// change causes in the same transaction; then wakes the deliverer and tells the event
    /// streams (`event`: initiated, ringing, answered, completed). False when the call was in
    /// another status.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn transition(
        &self,
        sid: &str,
        from: &[&str],
        sets: &[(&str, Value)],
        event: &str,
    ) -> Result<bool, StoreError> {
        self.write(CallWrite::Transition { sid, from, sets }, event)
            .await
    }

    /// Records a new call (already `initiated`) with its `initiated` status callback, in one
    /// transaction.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn insert_initiated(
        &self,
        values: &[(&str, Value)],
    ) -> Result<(), StoreError> {
        self.write(CallWrite::Insert(values), "initiated").await?;
        self.note_call(values);
        Ok(())
    }

    /// Notes a call record just written: without a status callback, its status changes need
    /// no outbox transaction (until the row says otherwise, see `write`). Noted only once the
    /// row exists, so a failed insert leaves nothing behind.
    pub(crate) fn note_call(&self, values: &[(&str, Value)]) {
        let get = |k: &str| {
            values
                .iter()
                .find(|(c, _)| *c == k)
                .and_then(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        if get("status_callback").is_empty() && !get("sid").is_empty() {
            crate::lock(&self.quiet).insert(get("sid").to_string());
        }
    }

    /// A call's status callback was set or changed: its changes take the outbox transaction.
    pub(crate) fn callbacks_changed(&self, sid: &str) {
        crate::lock(&self.quiet).remove(sid);
    }

    async fn write(&self, w: CallWrite<'_>, event: &str) -> Result<bool, StoreError> {
        let quiet = match w {
            CallWrite::Transition { sid, .. } => {
                let mut q = crate::lock(&self.quiet);
                if event == "completed" {
                    q.remove(sid)
                } else {
                    q.contains(sid)
                }
            }
            CallWrite::Insert(_) => false,
        };
        let row = match (quiet, w) {
            (true, CallWrite::Transition { sid, from, sets }) => {
                let row = self.store.transition_returning(sid, from, sets).await?;
                // A status callback set since the call was noted quiet (by a request another
                // node served, say) shows in the row: write its callback on its own, and take
                // the transaction from now on.
                let cb = row.as_ref().zip(self.callbacks.as_ref());
                if let Some(cb) = cb.and_then(|(r, c)| c.status_callback(r, event)) {
                    self.callbacks_changed(sid);
                    if let Err(e) = self.store.enqueue_status_callback(sid, cb).await {
                        tracing::error!(error = %e, call = %sid, "cannot write a callback to the outbox");
                    }
                }
                row
            }
            _ => {
                let cb = self.callbacks.clone();
                self.store
                    .write_call(w, |row| {
                        cb.as_ref().and_then(|c| c.status_callback(row, event))
                    })
                    .await?
            }
        };
        let Some(row) = row else {
            return Ok(false);
        };
        if let Some(c) = &self.callbacks {
            c.wake();
        }
        self.events.call(&row, event);
        Ok(true)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        crate::lock(&self.book)
    }

    /// Live calls of an account.
    pub fn live(&self, account: &str) -> u32 {
        self.book().per_account.get(account).copied().unwrap_or(0)
    }

    fn release(&self, sid: &str) {
        let mut b = self.book();
        if let Some(acc) = b.account_of.remove(sid) {
            if let Some(n) = b.per_account.get_mut(&acc) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    b.per_account.remove(&acc);
                }
            }
        }
    }

    /// Marks calls a previous run left live: never-dialled ones are queued again, the others
    /// ended (their signalling died with that process). SQLite only: with PostgreSQL other
    /// control nodes may own live calls.
    ///
    /// # Errors
    /// Store errors.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, StoreError> {
        let left = self.store.rows_in(&CALLS, LIVE).await?;
        let n = left.len();
        for c in left {
            let sid = text(&c, "sid");
            let account = text(&c, "account_sid");
            let status = text(&c, "status");
            let now = now_us();
            let (end, msg) = match status.as_str() {
                "in-progress" => ("completed", "call ended by a restart of the control node"),
                "queued" => (
                    "canceled",
                    "queued call canceled: the control node restarted before placing it",
                ),
                _ => (
                    "failed",
                    "call failed: the control node restarted before it was answered",
                ),
            };
            let mut sets = vec![("status", Value::from(end)), ("end_time", Value::from(now))];
            if let Some(start) = c.get("start_time").and_then(Value::as_i64) {
                sets.push(("duration", Value::from((now - start) / 1_000_000)));
            }
            if self.transition(&sid, LIVE, &sets, "completed").await? {
                self.notify(&account, Some(&sid), "1", CODE_RESTART, msg)
                    .await;
            }
        }
        Ok(n)
    }

    /// Records a notification (log "0" error, "1" warning); a failure to record is logged.
    pub async fn notify(
        &self,
        account: &str,
        call: Option<&str>,
        log: &str,
        code: &str,
        msg: &str,
    ) {
        let now = now_us();
        let r = self
            .store
            .insert(
                &NOTIFICATIONS,
                &[
                    ("sid", Value::from(crate::secret::new_sid("NO"))),
                    ("account_sid", Value::from(account)),
                    ("call_sid", call.map_or(Value::Null, Value::from)),
                    ("api_version", Value::from("2010-04-01")),
                    ("log", Value::from(log)),
                    ("error_code", Value::from(code)),
                    (
                        "more_info",
                        Value::from(crate::rest::more_info(code.parse().unwrap_or(0))),
                    ),
                    ("message_text", Value::from(msg)),
                    ("message_date", Value::from(now)),
                    ("date_created", Value::from(now)),
                    ("date_updated", Value::from(now)),
                ],
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, account, "cannot record a notification");
        }
        self.events.notification(account, call, log, code, msg);
    }

    /// Accepts a call: the record is written `queued` before this returns; it is placed when
    /// the account's calls-per-second budget allows.
    ///
    /// # Errors
    /// The account is at its concurrency limit, SIP is off, or the store fails.
    pub async fn create(self: &Arc<Self>, call: NewCall) -> Result<Map<String, Value>, CallError> {
        let Some(sip) = self.sip.clone() else {
            return Err(CallError::NoSip);
        };
        let sid = crate::secret::new_sid("CA");
        {
            let mut b = self.book();
            let n = b.per_account.get(&call.account).copied().unwrap_or(0);
            if n >= self.concurrent {
                return Err(CallError::Concurrency(n));
            }
            *b.per_account.entry(call.account.clone()).or_default() += 1;
            b.account_of.insert(sid.clone(), call.account.clone());
        }
        let now = now_us();
        let mut cols: Vec<(&str, Value)> = vec![
            ("sid", Value::from(sid.clone())),
            ("account_sid", Value::from(call.account.clone())),
            ("direction", Value::from("outbound-api")),
            ("from", Value::from(call.from.clone())),
            ("to", Value::from(call.to.clone())),
            ("from_formatted", Value::from(call.from.clone())),
            ("to_formatted", Value::from(call.to.clone())),
            ("status", Value::from("queued")),
            ("queue_time", Value::from(0)),
            ("price_unit", Value::from("USD")),
            ("api_version", Value::from("2010-04-01")),
            ("date_created", Value::from(now)),
            ("date_updated", Value::from(now)),
        ];
        cols.extend(call.columns.iter().cloned());
        if let Err(e) = self.store.insert(&CALLS, &cols).await {
            self.release(&sid);
            return Err(e.into());
        }
        self.note_call(&cols);
        if call.has_instructions && self.engine.get().is_none() {
            self.notify(
                &call.account,
                Some(&sid),
                "1",
                CODE_NO_INSTRUCTIONS,
                "this VoxEdge node cannot run customer instructions yet: when answered, the call runs the built-in test instructions (the callee's audio is echoed back)",
            )
            .await;
        }
        let start_at = {
            let mut b = self.book();
            let t = Instant::now();
            let slot = b.next_slot.get(&call.account).copied().unwrap_or(t).max(t);
            b.next_slot.insert(
                call.account.clone(),
                slot + Duration::from_secs(1) / self.cps,
            );
            if b.next_slot.len() > 100_000 {
                b.next_slot.retain(|_, s| *s > t);
            }
            slot
        };
        // The answer shows the call as accepted (queued), whatever the dialler does next.
        let row = match self.store.get(&CALLS, &call.account, &sid).await {
            Ok(Some(r)) => r,
            other => {
                // Not readable back: the call is not placed, and its slot is given back.
                let _ = self
                    .store
                    .transition_call(&sid, &["queued"], &[("status", Value::from("canceled"))])
                    .await;
                self.release(&sid);
                return Err(match other {
                    Err(e) => e.into(),
                    _ => CallError::Store(StoreError::Conflict("call vanished".into())),
                });
            }
        };
        let svc = self.clone();
        let created = Instant::now();
        let sid2 = sid.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start_at.into()).await;
            let waited = i64::try_from(created.elapsed().as_millis()).unwrap_or(i64::MAX);
            let moved = svc
                .transition(
                    &sid2,
                    &["queued"],
                    &[
                        ("status", Value::from("initiated")),
                        ("queue_time", Value::from(waited)),
                    ],
                    "initiated",
                )
                .await;
            match moved {
                Ok(true) => {}
                Ok(false) => {
                    // Canceled while queued (possibly by another control node).
                    svc.release(&sid2);
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, sid = %sid2, "cannot start a queued call");
                    svc.release(&sid2);
                    return;
                }
            }
            if let Ok(mut l) = svc.limits.lock() {
                l.insert(sid2.clone(), call.time_limit);
            }
            let o = Originate {
                sid: sid2.clone(),
                target: call.target.clone(),
                from_user: call.from.clone(),
                instructions: call.has_instructions && svc.engine.get().is_some(),
                bridge: None,
                worker: call.worker,
            };
            if sip.originate(o).await.is_err() {
                svc.end(&sid2, EndStatus::Failed, None).await;
                return;
            }
            let timeout = call.timeout;
            let sip2 = sip.clone();
            let sid3 = sid2.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let _ = sip2.hangup(&sid3, EndStatus::NoAnswer).await;
            });
        });
        Ok(row)
    }

    /// Ends a live call on request (`Status=completed|canceled`).
    ///
    /// # Errors
    /// Store errors.
    pub async fn hangup(&self, sid: &str, status: &str) -> Result<(), StoreError> {
        // Queued calls never reached SIP: ended here.
        let now = now_us();
        if self
            .transition(
                sid,
                &["queued"],
                &[
                    ("status", Value::from("canceled")),
                    ("end_time", Value::from(now)),
                ],
                "completed",
            )
            .await?
        {
            self.release(sid);
            return Ok(());
        }
        let Some(sip) = &self.sip else {
            return Ok(());
        };
        let Some(c) = self.store.get_any(&CALLS, sid).await? else {
            return Ok(());
        };
        match (text(&c, "status").as_str(), status) {
            ("initiated" | "ringing", _) => {
                let _ = sip.hangup(sid, EndStatus::Canceled).await;
            }
            ("in-progress", "completed") => {
                let _ = sip.hangup(sid, EndStatus::Completed).await;
            }
            _ => {}
        }
        Ok(())
    }

    /// Follows what the SIP service reports about placed calls.
    async fn follow(self: Arc<Self>, mut updates: mpsc::UnboundedReceiver<CallUpdate>) {
        while let Some(u) = updates.recv().await {
            if let Some(e) = self.engine.get() {
                e.dial_progress(&u);
            }
            let r = match u {
                CallUpdate::Ringing { sid } => self
                    .transition(
                        &sid,
                        &["initiated"],
                        &[("status", Value::from("ringing"))],
                        "ringing",
                    )
                    .await
                    .map(|_| ()),
                CallUpdate::Answered { sid, media } => {
                    let r = self
                        .transition(
                            &sid,
                            &["initiated", "ringing"],
                            &[
                                ("status", Value::from("in-progress")),
                                ("start_time", Value::from(now_us())),
                            ],
                            "answered",
                        )
                        .await;
                    if matches!(r, Ok(true)) {
                        if let (Some((relay, codec, dtmf_pt)), Some(e)) = (media, self.engine.get())
                        {
                            e.outbound(&sid, relay, codec, dtmf_pt).await;
                        }
                    }
                    let limit = self.limits.lock().ok().and_then(|mut l| l.remove(&sid));
                    if let (Some(limit), Some(sip)) = (limit, self.sip.clone()) {
                        tokio::spawn(async move {
                            tokio::time::sleep(limit).await;
                            let _ = sip.hangup(&sid, EndStatus::Completed).await;
                        });
                    }
                    r.map(|_| ())
                }
                CallUpdate::Ended {
                    sid,
                    status,
                    sip_code,
                } => {
                    if let Some(e) = self.engine.get() {
                        e.ended(&sid);
                    }
                    self.end(&sid, status, sip_code).await;
                    Ok(())
                }
                CallUpdate::Sip(ev) => {
                    if self.callbacks.is_some() || self.events.watched() {
                        match self.store.get_any(&CALLS, &ev.sid).await {
                            Ok(Some(call)) => {
                                self.events.sip(&call, &ev);
                                if let Some(cb) = &self.callbacks {
                                    cb.sip_event(&call, &ev).await;
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::error!(error = %e, sid = %ev.sid, "cannot read a call for its SIP event")
                            }
                        }
                    }
                    Ok(())
                }
                CallUpdate::Incoming(inc) => {
                    // In order with the call's later updates: its record exists before its
                    // answer or end is processed.
                    match (self.engine.get(), &self.sip) {
                        (Some(e), _) => e.incoming(*inc).await,
                        (None, Some(sip)) => {
                            let _ = sip.reject(&inc.sid, 404).await;
                        }
                        (None, None) => {}
                    }
                    Ok(())
                }
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot record a call status change");
            }
        }
    }

    async fn end(&self, sid: &str, status: EndStatus, sip_code: Option<u16>) {
        if let Ok(mut l) = self.limits.lock() {
            l.remove(sid);
        }
        let now = now_us();
        let c = match self.store.get_any(&CALLS, sid).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.release(sid);
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, sid, "cannot read a call to end it");
                self.release(sid);
                return;
            }
        };
        let mut sets = vec![
            ("status", Value::from(status.as_str())),
            ("end_time", Value::from(now)),
            ("duration", Value::from(0)),
        ];
        if let Some(start) = c.get("start_time").and_then(Value::as_i64) {
            sets[2] = ("duration", Value::from((now - start).max(0) / 1_000_000));
        }
        if let Some(code) = sip_code {
            sets.push(("sip_response_code", Value::from(code)));
        }
        match self.transition(sid, LIVE, &sets, "completed").await {
            Ok(true) => {
                if status == EndStatus::Failed {
                    let msg = match sip_code {
                        Some(code) => format!("the call failed: the far end answered SIP {code}"),
                        None => "the call failed: no response from the far end, or no media ports"
                            .into(),
                    };
                    self.notify(
                        &text(&c, "account_sid"),
                        Some(sid),
                        "0",
                        CODE_CALL_FAILED,
                        &msg,
                    )
                    .await;
                }
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, sid, "cannot record the end of a call"),
        }
        self.release(sid);
    }
}

fn text(row: &Map<String, Value>, k: &str) -> String {
    row.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
