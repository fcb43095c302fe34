//! The account event stream (`GET /v1/Accounts/{AccountSid}/Events`, server-sent events):
//! call status changes, SIP signalling events, notifications and recording progress, as they
//! happen on this node, for dashboards and debugging.
//!
//! One broadcast channel carries every account's events; each stream keeps its account's (and,
//! if asked, one call's). The channel is bounded: a stream that falls behind is told how many
//! events it missed (`event: lagged`) instead of holding memory for it. Streams per account are
//! limited, send a comment every 15 s so proxies keep them open, and end when the node stops.
//! The stream is live only: nothing is replayed (the durable record is the Calls,
//! Notifications and Recordings resources, and callbacks).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, watch};

use crate::store::{now_us, rfc2822};

/// Events held for slow streams before they are told they lagged.
pub const BUFFER: usize = 4096;
/// Streams open at once per account.
pub const STREAMS_PER_ACCOUNT: usize = 10;

/// One event of an account.
#[derive(Debug, Clone)]
pub struct AccountEvent {
    pub id: u64,
    pub account: String,
    pub call: Option<String>,
    /// `call.initiated`, `call.ringing`, `call.answered`, `call.completed`, `sip.<event>`,
    /// `notification`, `recording.<status>`.
    pub kind: String,
    pub data: Value,
}

/// The hub every publisher and stream shares (one per node).
#[derive(Debug)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<AccountEvent>>,
    seq: AtomicU64,
    streams: Mutex<HashMap<String, usize>>,
    open: AtomicUsize,
    stop: watch::Sender<bool>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

fn field(row: &Map<String, Value>, k: &str) -> Value {
    row.get(k).cloned().unwrap_or(Value::Null)
}

impl EventHub {
    pub fn new() -> EventHub {
        EventHub {
            tx: broadcast::channel(BUFFER).0,
            seq: AtomicU64::new(1),
            streams: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            stop: watch::channel(false).0,
        }
    }

    /// Whether any stream is open (publishers skip work otherwise).
    pub fn watched(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// Sends an event to the open streams; with none open, neither `kind` nor `data` is built.
    fn publish(
        &self,
        account: &str,
        call: Option<&str>,
        kind: impl FnOnce() -> String,
        data: impl FnOnce() -> Value,
    ) {
        if !self.watched() {
            return;
        }
        let (kind, mut data) = (kind(), data());
        if let Value::Object(m) = &mut data {
            m.insert("timestamp".into(), Value::from(rfc2822(now_us())));
        }
        let _ = self.tx.send(Arc::new(AccountEvent {
            id: self.seq.fetch_add(1, Ordering::Relaxed),
            account: account.to_string(),
            call: call.map(str::to_string),
            kind,
            data,
        }));
    }

    /// A call's status changed (`event`: initiated, ringing, answered, completed).
    pub fn call(&self, call: &Map<String, Value>, event: &str) {
        let account = call
            .get("account_sid")
            .and_then(Value::as_str)
            .unwrap_or("");
        let sid = call.get("sid").and_then(Value::as_str);
        let data = || {
            json!({
                "call_sid": field(call, "sid"),
                "status": field(call, "status"),
                "direction": field(call, "direction"),
                "from": field(call, "from"),
                "to": field(call, "to"),
                "parent_call_sid": field(call, "parent_call_sid"),
                "duration": field(call, "duration"),
                "sip_response_code": field(call, "sip_response_code"),
            })
        };
        self.publish(account, sid, || format!("call.{event}"), data);
    }

    /// A SIP signalling event of a call (its method or status; not its headers).
    pub fn sip(&self, call: &Map<String, Value>, ev: &crate::sip::SipEvent) {
        let account = call
            .get("account_sid")
            .and_then(Value::as_str)
            .unwrap_or("");
        let data = || {
            json!({
                "call_sid": ev.sid,
                "event": ev.event,
                "method": ev.method,
                "status": ev.status,
            })
        };
        self.publish(account, Some(&ev.sid), || format!("sip.{}", ev.event), data);
    }

    /// A notification was recorded.
    pub fn notification(
        &self,
        account: &str,
        call: Option<&str>,
        log: &str,
        code: &str,
        msg: &str,
    ) {
        let data = || {
            json!({
                "call_sid": call,
                "log": log,
                "error_code": code,
                "message_text": msg,
            })
        };
        self.publish(account, call, || "notification".into(), data);
    }

    /// A recording changed status (in-progress, completed, absent, failed).
    pub fn recording(&self, account: &str, call: &str, sid: &str, status: &str, secs: Option<u64>) {
        let data = || {
            json!({
                "call_sid": call,
                "recording_sid": sid,
                "status": status,
                "duration": secs,
            })
        };
        self.publish(account, Some(call), || format!("recording.{status}"), data);
    }

    /// Opens a stream of `account`'s events (only `call`'s when given); `None` when the account
    /// has [`STREAMS_PER_ACCOUNT`] open already.
    pub fn subscribe(
        self: &Arc<Self>,
        account: &str,
        call: Option<String>,
    ) -> Option<Subscription> {
        {
            let mut s = crate::lock(&self.streams);
            let n = s.entry(account.to_string()).or_insert(0);
            if *n >= STREAMS_PER_ACCOUNT {
                return None;
            }
            *n += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Subscription {
            rx: self.tx.subscribe(),
            stop: self.stop.subscribe(),
            account: account.to_string(),
            call,
            hub: self.clone(),
        })
    }

    /// Ends every stream (the node is stopping).
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }
}

/// What a stream receives next.
#[derive(Debug)]
pub enum Next {
    Event(Arc<AccountEvent>),
    /// This many events were missed (the stream was too slow).
    Lagged(u64),
    /// The node is stopping.
    End,
}

/// One open stream.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<AccountEvent>>,
    stop: watch::Receiver<bool>,
    account: String,
    call: Option<String>,
    hub: Arc<EventHub>,
}

impl Subscription {
    /// The next event of this stream's account (and call).
    pub async fn next(&mut self) -> Next {
        loop {
            if *self.stop.borrow() {
                return Next::End;
            }
            let got = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.stop.changed() => return Next::End,
            };
            match got {
                Ok(ev) => {
                    if ev.account == self.account && (self.call.is_none() || ev.call == self.call) {
                        return Next::Event(ev);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Next::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => return Next::End,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.open.fetch_sub(1, Ordering::Relaxed);
        let mut s = crate::lock(&self.hub.streams);
        if let Some(n) = s.get_mut(&self.account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(account: &str, sid: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("account_sid".into(), Value::from(account));
        m.insert("sid".into(), Value::from(sid));
        m.insert("status".into(), Value::from("ringing"));
        m
    }

    #[tokio::test]
    async fn streams_see_their_account_and_call_lag_is_reported_and_close_ends() {
        let hub = Arc::new(EventHub::new());
        hub.call(&call("AC1", "CA1"), "ringing");
        assert_eq!(
            hub.seq.load(Ordering::Relaxed),
            1,
            "nothing published without streams"
        );
        let mut all = hub.subscribe("AC1", None).expect("stream");
        let mut one = hub.subscribe("AC1", Some("CA2".into())).expect("stream");
        hub.call(&call("AC2", "CA9"), "ringing");
        hub.call(&call("AC1", "CA1"), "ringing");
        hub.notification("AC1", Some("CA2"), "0", "13227", "bad media");
        let Next::Event(e) = all.next().await else {
            panic!()
        };
        assert_eq!(
            (e.kind.as_str(), e.call.as_deref()),
            ("call.ringing", Some("CA1"))
        );
        assert_eq!(e.data["status"], "ringing");
        assert!(e.data["timestamp"].is_string());
        let Next::Event(e) = all.next().await else {
            panic!()
        };
        assert_eq!(e.kind, "notification");
        let Next::Event(e) = one.next().await else {
            panic!()
        };
        assert_eq!(
            (e.kind.as_str(), e.data["error_code"].as_str()),
            ("notification", Some("13227"))
        );
        // A stream that does not read falls behind: told how much it missed, then goes on.
        for _ in 0..BUFFER + 10 {
            hub.call(&call("AC1", "CA1"), "answered");
        }
        assert!(matches!(all.next().await, Next::Lagged(n) if n >= 10));
        assert!(matches!(all.next().await, Next::Event(_)));
        // The per-account limit, released when a stream ends.
        let extra: Vec<_> = (0..STREAMS_PER_ACCOUNT - 2)
            .map(|_| hub.subscribe("AC1", None).expect("under the limit"))
            .collect();
        assert!(hub.subscribe("AC1", None).is_none(), "limit");
        assert!(hub.subscribe("AC2", None).is_some(), "per account");
        drop(extra);
        assert!(hub.subscribe("AC1", None).is_some());
        hub.close();
        assert!(matches!(all.next().await, Next::End));
    }
}
