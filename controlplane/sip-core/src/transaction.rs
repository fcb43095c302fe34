//! RFC 3261 §17 transactions, with RFC 6026's Accepted state, as a sans-IO state machine.
//!
//! Time is a `Duration` since any epoch the caller likes (virtual time in tests); the caller
//! feeds messages and the time in, and takes out transmits, events and the next deadline. No
//! sockets, no clock, no threads.
//!
//! Client transactions: INVITE (timers A, B, D; Accepted with M) and non-INVITE (E, F, K).
//! Server transactions: INVITE (100 Trying at once; G, H, I; Accepted with L) and non-INVITE
//! (J). A 2xx to an INVITE is retransmitted here until its ACK arrives (RFC 3261 §13.3.1.4), so
//! the dialog layer only sees the ACK. Matching follows §17.1.3 and §17.2.3 (top Via branch with
//! the magic cookie, sent-by and method; ACK to a non-2xx matches its INVITE; CANCEL is its own
//! transaction).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytesstr::BytesStr;
use ezk_sip_types::header::typed::{CSeq, Via};
use ezk_sip_types::{Method, Name};

use crate::message::{SipMessage, StartLine};
use crate::uri::header_param;

/// RFC 3261 timer values (§17.1.1.1 table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    /// How long an INVITE client transaction waits for a final response once a provisional
    /// one arrived (restarted by each provisional, like a proxy's Timer C). Timer B (64·T1)
    /// applies only before any response: a phone may ring longer than 32 s.
    pub proceeding: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            proceeding: Duration::from_secs(660),
        }
    }
}

/// Where a message goes or came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    /// TCP/TLS: no retransmissions, zero wait states.
    pub reliable: bool,
}

/// Handle of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u64);

/// What the transaction layer tells its user (the dialog / call layer).
#[derive(Debug, Clone)]
pub enum TxEvent {
    /// A new request: a server transaction was created for it (ACKs to 2xx come as `Ack`).
    Request {
        tx: TxId,
        msg: SipMessage,
        from: Peer,
    },
    /// A response for a client transaction (1xx, the final one, and with RFC 6026 every 2xx
    /// retransmission of an INVITE, which the dialog layer acknowledges).
    Response { tx: TxId, msg: SipMessage },
    /// The ACK for a 2xx this layer was retransmitting (or one for no known transaction).
    Ack { msg: SipMessage, from: Peer },
    /// Timer B/F (no final response), H (no ACK for a non-2xx) or the 2xx got no ACK in 64·T1.
    Timeout { tx: TxId },
    /// The transaction is gone; its id is not used again.
    Terminated { tx: TxId },
}

/// Something to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: Peer,
    pub data: Vec<u8>,
}

/// Output of the layer, in order.
#[derive(Debug, Clone)]
pub enum Output {
    Transmit(Transmit),
    Event(TxEvent),
}

/// Why a message could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("missing or malformed {0}")]
    Header(&'static str),
    #[error("unknown transaction")]
    Unknown,
    #[error("not allowed in this state: {0}")]
    State(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InviteClient,
    NonInviteClient,
    InviteServer,
    NonInviteServer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Accepted,
    Confirmed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// A / E / G: retransmit.
    Retransmit,
    /// B / F / H / L / M: give up or end.
    Expire,
    /// D / I / J / K: wait for retransmissions, then end.
    Linger,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    branch: String,
    /// Server side: the top Via's sent-by (RFC 3261 §17.2.3).
    sent_by: String,
    method: String,
}

#[derive(Debug)]
struct Tx {
    kind: Kind,
    state: State,
    peer: Peer,
    key: Key,
    /// Client: the request; server: the last response sent (for retransmissions).
    last: Vec<u8>,
    request: SipMessage,
    interval: Duration,
    /// ACK sent for a non-2xx final response (INVITE client), resent on retransmissions.
    ack: Option<Vec<u8>>,
    deadlines: Vec<(Timer, Duration)>,
}

/// A 2xx to an INVITE being retransmitted until its ACK (matched by Call-ID and CSeq number).
#[derive(Debug)]
struct Pending2xx {
    tx: TxId,
    peer: Peer,
    data: Vec<u8>,
    interval: Duration,
    next: Duration,
    give_up: Duration,
}

/// The transaction layer.
#[derive(Debug)]
pub struct Transactions {
    timers: Timers,
    next_id: u64,
    /// Boxed: the map is reserved for `max_transactions` up front and a transaction is 368
    /// bytes, so slots hold a pointer instead.
    txs: HashMap<TxId, Box<Tx>>,
    by_key: HashMap<Key, TxId>,
    /// (deadline, tx, timer) for every armed timer.
    queue: BTreeSet<(Duration, TxId, Timer)>,
    pending_2xx: HashMap<(String, u32), Pending2xx>,
    out: std::collections::VecDeque<Output>,
    /// Transactions that may exist at once; beyond this new requests are refused (the caller
    /// answers 503) so memory stays bounded.
    max_transactions: usize,
}

fn top_via(msg: &SipMessage) -> Result<Via, TxError> {
    msg.headers
        .get::<Vec<Via>>(Name::VIA)
        .ok()
        .and_then(|v| v.into_iter().next())
        .ok_or(TxError::Header("Via"))
}

fn cseq(msg: &SipMessage) -> Result<CSeq, TxError> {
    msg.headers
        .get::<CSeq>(Name::CSEQ)
        .map_err(|_| TxError::Header("CSeq"))
}

fn call_id(msg: &SipMessage) -> Result<String, TxError> {
    msg.header("Call-ID")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or(TxError::Header("Call-ID"))
}

const MAGIC: &str = "z9hG4bK";

fn key_of(msg: &SipMessage, server: bool, method: &Method) -> Result<Key, TxError> {
    let via = top_via(msg)?;
    let branch = via
        .params
        .get_val("branch")
        .map(|b| b.to_string())
        .unwrap_or_default();
    let m = if *method == Method::ACK {
        "INVITE".to_string()
    } else {
        method.to_string()
    };
    if !branch.starts_with(MAGIC) {
        // RFC 2543 peers: match on what identifies the request instead (§17.2.3's fallback,
        // simplified: Call-ID, CSeq number, From tag, top Via).
        let c = cseq(msg)?;
        let from_tag = msg
            .header("From")
            .and_then(|f| header_param(f, "tag"))
            .unwrap_or("")
            .to_string();
        return Ok(Key {
            branch: format!(
                "legacy|{}|{}|{}|{}",
                call_id(msg)?,
                c.cseq,
                from_tag,
                msg.header("Via").unwrap_or("")
            ),
            sent_by: String::new(),
            method: m,
        });
    }
    Ok(Key {
        branch,
        sent_by: if server {
            format!("{:?}", via.sent_by)
        } else {
            String::new()
        },
        method: m,
    })
}

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3).
fn ack_for(request: &SipMessage, response: &SipMessage) -> Result<Vec<u8>, TxError> {
    let StartLine::Request { uri, .. } = &request.start else {
        return Err(TxError::State("not a request"));
    };
    let mut headers = ezk_sip_types::Headers::with_capacity(8);
    let via = request
        .headers
        .get_raw(&Name::VIA)
        .next()
        .ok_or(TxError::Header("Via"))?;
    // Only the top Via (a line may carry several values).
    let top = via.split(',').next().unwrap_or(via).trim().to_string();
    headers.insert(Name::VIA, BytesStr::from(top));
    for name in [Name::FROM, Name::CALL_ID] {
        if let Some(v) = request.headers.get_raw(&name).next() {
            headers.insert(name, v.clone());
        }
    }
    if let Some(v) = response.headers.get_raw(&Name::TO).next() {
        headers.insert(Name::TO, v.clone());
    }
    for v in request.headers.get_raw(&Name::ROUTE) {
        headers.insert(Name::ROUTE, v.clone());
    }
    let c = cseq(request)?;
    headers.insert(Name::CSEQ, BytesStr::from(format!("{} ACK", c.cseq)));
    headers.insert(Name::MAX_FORWARDS, BytesStr::from_static("70"));
    Ok(SipMessage {
        start: StartLine::Request {
            method: Method::ACK,
            uri: uri.clone(),
        },
        headers,
        body: bytes::Bytes::new(),
    }
    .to_bytes())
}

impl Transactions {
    pub fn new(timers: Timers) -> Self {
        Transactions {
            timers,
            next_id: 1,
            txs: HashMap::new(),
            by_key: HashMap::new(),
            queue: BTreeSet::new(),
            pending_2xx: HashMap::new(),
            out: std::collections::VecDeque::new(),
            max_transactions: 100_000,
        }
    }

    /// Bounds the number of live transactions (default 100,000), and reserves room for that
    /// many up front: a hash map that grows rehashes every entry at once, and at call rates
    /// of a thousand a second that stalled the SIP loop for 20–45 ms at a time (long enough
    /// for its socket's receive queue to overflow). The maps hold ids, keys and pointers: at
    /// the default bound about 12 MiB of address space (131,072 slots of 16 and 80 bytes),
    /// touched only as it fills.
    pub fn with_max_transactions(mut self, n: usize) -> Self {
        self.max_transactions = n.max(1);
        // (A bound configured beyond a million is still enforced; only the reservation stops.)
        let room = self.max_transactions.min(1 << 20);
        let extra = |len: usize| room.saturating_sub(len);
        self.txs.reserve(extra(self.txs.len()));
        self.by_key.reserve(extra(self.by_key.len()));
        self
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Whether a new request would be refused for lack of room.
    pub fn is_full(&self) -> bool {
        self.txs.len() >= self.max_transactions
    }

    /// Next output, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Transactions::handle_timeouts`] should be called next.
    pub fn next_deadline(&self) -> Option<Duration> {
        let t = self.queue.iter().next().map(|(d, _, _)| *d);
        let p = self
            .pending_2xx
            .values()
            .map(|p| p.next.min(p.give_up))
            .min();
        match (t, p) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn arm(&mut self, id: TxId, timer: Timer, at: Duration) {
        if let Some(tx) = self.txs.get_mut(&id) {
            if let Some(i) = tx.deadlines.iter().position(|(t, _)| *t == timer) {
                let old = tx.deadlines.remove(i).1;
                self.queue.remove(&(old, id, timer));
            }
            tx.deadlines.push((timer, at));
            self.queue.insert((at, id, timer));
        }
    }

    fn disarm(&mut self, id: TxId, timer: Timer) {
        if let Some(tx) = self.txs.get_mut(&id) {
            if let Some(i) = tx.deadlines.iter().position(|(t, _)| *t == timer) {
                let old = tx.deadlines.remove(i).1;
                self.queue.remove(&(old, id, timer));
            }
        }
    }

    fn transmit(&mut self, to: Peer, data: Vec<u8>) {
        self.out.push_back(Output::Transmit(Transmit { to, data }));
    }

    fn event(&mut self, e: TxEvent) {
        self.out.push_back(Output::Event(e));
    }

    fn terminate(&mut self, id: TxId) {
        if let Some(tx) = self.txs.remove(&id) {
            for (t, at) in tx.deadlines {
                self.queue.remove(&(at, id, t));
            }
            self.by_key.remove(&tx.key);
            self.event(TxEvent::Terminated { tx: id });
        }
    }

    fn new_id(&mut self) -> TxId {
        let id = TxId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Starts a client transaction: sends `request` to `to` and arms its timers.
    ///
    /// # Errors
    /// The request lacks a Via with a branch, or a CSeq; or an ACK is given (ACKs are not
    /// transactions: send them directly).
    pub fn send_request(
        &mut self,
        request: SipMessage,
        to: Peer,
        now: Duration,
    ) -> Result<TxId, TxError> {
        let method = request
            .method()
            .cloned()
            .ok_or(TxError::State("not a request"))?;
        if method == Method::ACK {
            return Err(TxError::State("ACK is not a transaction"));
        }
        let key = key_of(&request, false, &method)?;
        if self.by_key.contains_key(&key) {
            return Err(TxError::State("a transaction with this branch exists"));
        }
        let invite = method == Method::INVITE;
        let id = self.new_id();
        let data = request.to_bytes();
        let t1 = self.timers.t1;
        self.txs.insert(
            id,
            Box::new(Tx {
                kind: if invite {
                    Kind::InviteClient
                } else {
                    Kind::NonInviteClient
                },
                state: if invite {
                    State::Calling
                } else {
                    State::Trying
                },
                peer: to,
                key: key.clone(),
                last: data.clone(),
                request,
                interval: t1,
                ack: None,
                deadlines: Vec::new(),
            }),
        );
        self.by_key.insert(key, id);
        self.transmit(to, data);
        if !to.reliable {
            self.arm(id, Timer::Retransmit, now + t1);
        }
        self.arm(id, Timer::Expire, now + 64 * t1);
        Ok(id)
    }

    /// Feeds a received message.
    ///
    /// # Errors
    /// A message without the headers matching needs (Via, CSeq); the caller answers 400 to
    /// requests (or drops, for responses).
    pub fn receive(&mut self, msg: SipMessage, from: Peer, now: Duration) -> Result<(), TxError> {
        if msg.is_request() {
            self.receive_request(msg, from, now)
        } else {
            self.receive_response(msg, now)
        }
    }

    fn receive_response(&mut self, msg: SipMessage, now: Duration) -> Result<(), TxError> {
        let code = msg.status().unwrap_or(0);
        let method = cseq(&msg)?.method;
        let key = key_of(&msg, false, &method)?;
        let Some(&id) = self.by_key.get(&key) else {
            // A stray response (e.g. a 2xx retransmission after the transaction ended) is
            // dropped (RFC 3261 §18.1.2); with RFC 6026 the Accepted state covers 2xx.
            return Ok(());
        };
        let Some(tx) = self.txs.get_mut(&id) else {
            return Ok(());
        };
        if tx.kind != Kind::InviteClient && tx.kind != Kind::NonInviteClient {
            return Ok(());
        }
        let (kind, state, reliable) = (tx.kind, tx.state, tx.peer.reliable);
        let t = self.timers;
        match (kind, state, code) {
            (Kind::InviteClient, State::Calling | State::Proceeding, 100..=199) => {
                tx.state = State::Proceeding;
                self.disarm(id, Timer::Retransmit);
                self.arm(id, Timer::Expire, now + t.proceeding);
                self.event(TxEvent::Response { tx: id, msg });
            }
            (Kind::InviteClient, State::Calling | State::Proceeding, 200..=299) => {
                tx.state = State::Accepted;
                self.disarm(id, Timer::Retransmit);
                self.arm(id, Timer::Expire, now + 64 * t.t1);
                self.event(TxEvent::Response { tx: id, msg });
            }
            (Kind::InviteClient, State::Accepted, 200..=299) => {
                self.event(TxEvent::Response { tx: id, msg });
            }
            (Kind::InviteClient, State::Calling | State::Proceeding, 300..=699) => {
                let ack = ack_for(&tx.request, &msg)?;
                tx.state = State::Completed;
                tx.ack = Some(ack.clone());
                let peer = tx.peer;
                self.disarm(id, Timer::Retransmit);
                self.disarm(id, Timer::Expire);
                self.transmit(peer, ack);
                self.event(TxEvent::Response { tx: id, msg });
                if reliable {
                    self.terminate(id);
                } else {
                    self.arm(
                        id,
                        Timer::Linger,
                        now + Duration::from_secs(32).max(64 * t.t1 / 2),
                    );
                }
            }
            (Kind::InviteClient, State::Completed, 300..=699) => {
                if let Some(ack) = tx.ack.clone() {
                    let peer = tx.peer;
                    self.transmit(peer, ack);
                }
            }
            (Kind::NonInviteClient, State::Trying | State::Proceeding, 100..=199) => {
                tx.state = State::Proceeding;
                self.event(TxEvent::Response { tx: id, msg });
            }
            (Kind::NonInviteClient, State::Trying | State::Proceeding, 200..=699) => {
                tx.state = State::Completed;
                self.disarm(id, Timer::Retransmit);
                self.disarm(id, Timer::Expire);
                self.event(TxEvent::Response { tx: id, msg });
                if reliable {
                    self.terminate(id);
                } else {
                    self.arm(id, Timer::Linger, now + t.t4);
                }
            }
            // Retransmissions in Completed, late provisionals: absorbed.
            _ => {}
        }
        Ok(())
    }

    fn receive_request(
        &mut self,
        msg: SipMessage,
        from: Peer,
        now: Duration,
    ) -> Result<(), TxError> {
        let method = msg
            .method()
            .cloned()
            .ok_or(TxError::State("not a request"))?;
        cseq(&msg)?;
        let key = key_of(&msg, true, &method)?;
        if let Some(&id) = self.by_key.get(&key) {
            return self.retransmitted_request(id, &method, msg, from, now);
        }
        if method == Method::ACK {
            // An ACK with its own branch: the ACK for a 2xx.
            if let (Ok(cid), Ok(c)) = (call_id(&msg), cseq(&msg)) {
                self.pending_2xx.remove(&(cid, c.cseq));
            }
            self.event(TxEvent::Ack { msg, from });
            return Ok(());
        }
        if self.is_full() {
            return Err(TxError::State("too many transactions"));
        }
        let invite = method == Method::INVITE;
        let id = self.new_id();
        self.txs.insert(
            id,
            Box::new(Tx {
                kind: if invite {
                    Kind::InviteServer
                } else {
                    Kind::NonInviteServer
                },
                state: if invite {
                    State::Proceeding
                } else {
                    State::Trying
                },
                peer: from,
                key: key.clone(),
                last: Vec::new(),
                request: msg.clone(),
                interval: self.timers.t1,
                ack: None,
                deadlines: Vec::new(),
            }),
        );
        self.by_key.insert(key, id);
        if invite {
            // 100 Trying at once stops the client's INVITE retransmissions (§17.2.1).
            let trying = response_to(&msg, 100, "Trying", None);
            if let Some(t) = self.txs.get_mut(&id) {
                t.last = trying.clone();
            }
            self.transmit(from, trying);
        }
        self.event(TxEvent::Request { tx: id, msg, from });
        Ok(())
    }

    fn retransmitted_request(
        &mut self,
        id: TxId,
        method: &Method,
        msg: SipMessage,
        from: Peer,
        now: Duration,
    ) -> Result<(), TxError> {
        let t = self.timers;
        let Some(tx) = self.txs.get_mut(&id) else {
            return Ok(());
        };
        match (tx.kind, tx.state, *method == Method::ACK) {
            (Kind::InviteServer, State::Completed, true) => {
                tx.state = State::Confirmed;
                let reliable = tx.peer.reliable;
                self.disarm(id, Timer::Retransmit);
                self.disarm(id, Timer::Expire);
                if reliable {
                    self.terminate(id);
                } else {
                    self.arm(id, Timer::Linger, now + t.t4);
                }
            }
            (Kind::InviteServer, State::Accepted, true) => {
                // An ACK for the 2xx that reuses the INVITE's branch (RFC 2543 peers, and
                // some test tools): it still ends the 2xx retransmissions.
                if let (Ok(cid), Ok(c)) = (call_id(&msg), cseq(&msg)) {
                    self.pending_2xx.remove(&(cid, c.cseq));
                }
                self.event(TxEvent::Ack { msg, from });
            }
            (_, State::Confirmed | State::Accepted, _) | (_, _, true) => {}
            (_, _, false) => {
                // Retransmitted request: resend the last response, if any.
                if !tx.last.is_empty() {
                    let (peer, data) = (tx.peer, tx.last.clone());
                    self.transmit(peer, data);
                }
            }
        }
        Ok(())
    }

    /// Sends a response on server transaction `tx`.
    ///
    /// # Errors
    /// Unknown or finished transaction, or a provisional after a final response.
    pub fn respond(
        &mut self,
        id: TxId,
        response: SipMessage,
        now: Duration,
    ) -> Result<(), TxError> {
        let code = response.status().ok_or(TxError::State("not a response"))?;
        let t = self.timers;
        let tx = self.txs.get_mut(&id).ok_or(TxError::Unknown)?;
        let data = response.to_bytes();
        let peer = tx.peer;
        match (tx.kind, tx.state, code) {
            (Kind::InviteServer, State::Proceeding, 100..=199)
            | (Kind::NonInviteServer, State::Trying | State::Proceeding, 100..=199) => {
                tx.state = State::Proceeding;
                tx.last = data.clone();
                self.transmit(peer, data);
            }
            (Kind::InviteServer, State::Proceeding, 200..=299) => {
                tx.state = State::Accepted;
                tx.last = Vec::new();
                self.transmit(peer, data.clone());
                self.arm(id, Timer::Expire, now + 64 * t.t1);
                // The 2xx is retransmitted (unreliable transports) until its ACK, which has
                // its own branch and is matched by Call-ID and CSeq number.
                if let (Ok(cid), Ok(c)) = (call_id(&response), cseq(&response)) {
                    self.pending_2xx.insert(
                        (cid, c.cseq),
                        Pending2xx {
                            tx: id,
                            peer,
                            data,
                            interval: t.t1,
                            next: if peer.reliable {
                                Duration::MAX
                            } else {
                                now + t.t1
                            },
                            give_up: now + 64 * t.t1,
                        },
                    );
                }
            }
            (Kind::InviteServer, State::Proceeding, 300..=699) => {
                tx.state = State::Completed;
                tx.last = data.clone();
                tx.interval = t.t1;
                self.transmit(peer, data);
                if !peer.reliable {
                    self.arm(id, Timer::Retransmit, now + t.t1);
                }
                self.arm(id, Timer::Expire, now + 64 * t.t1);
            }
            (Kind::NonInviteServer, State::Trying | State::Proceeding, 200..=699) => {
                tx.state = State::Completed;
                tx.last = data.clone();
                self.transmit(peer, data);
                if peer.reliable {
                    self.terminate(id);
                } else {
                    self.arm(id, Timer::Linger, now + 64 * t.t1);
                }
            }
            _ => return Err(TxError::State("response not allowed now")),
        }
        Ok(())
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeouts(&mut self, now: Duration) {
        while let Some(&(at, id, timer)) = self.queue.iter().next() {
            if at > now {
                break;
            }
            self.queue.remove(&(at, id, timer));
            if let Some(tx) = self.txs.get_mut(&id) {
                tx.deadlines.retain(|(t, _)| *t != timer);
            }
            self.fire(id, timer, now);
        }
        let due: Vec<(String, u32)> = self
            .pending_2xx
            .iter()
            .filter(|(_, p)| p.next <= now || p.give_up <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let Some(mut p) = self.pending_2xx.remove(&k) else {
                continue;
            };
            if p.give_up <= now {
                self.event(TxEvent::Timeout { tx: p.tx });
                continue;
            }
            self.transmit(p.peer, p.data.clone());
            p.interval = (p.interval * 2).min(self.timers.t2);
            p.next = now + p.interval;
            self.pending_2xx.insert(k, p);
        }
    }

    fn fire(&mut self, id: TxId, timer: Timer, now: Duration) {
        let t = self.timers;
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        match (tx.kind, tx.state, timer) {
            // A: double each time. E: double up to T2; in Proceeding, every T2.
            (Kind::InviteClient, State::Calling, Timer::Retransmit) => {
                tx.interval *= 2;
                let (peer, data, next) = (tx.peer, tx.last.clone(), now + tx.interval);
                self.transmit(peer, data);
                self.arm(id, Timer::Retransmit, next);
            }
            (Kind::NonInviteClient, State::Trying | State::Proceeding, Timer::Retransmit) => {
                tx.interval = if tx.state == State::Proceeding {
                    t.t2
                } else {
                    (tx.interval * 2).min(t.t2)
                };
                let (peer, data, next) = (tx.peer, tx.last.clone(), now + tx.interval);
                self.transmit(peer, data);
                self.arm(id, Timer::Retransmit, next);
            }
            // G: retransmit the final response, doubling up to T2.
            (Kind::InviteServer, State::Completed, Timer::Retransmit) => {
                tx.interval = (tx.interval * 2).min(t.t2);
                let (peer, data, next) = (tx.peer, tx.last.clone(), now + tx.interval);
                self.transmit(peer, data);
                self.arm(id, Timer::Retransmit, next);
            }
            // B, F: no final response. H: no ACK.
            (Kind::InviteClient, State::Calling | State::Proceeding, Timer::Expire)
            | (Kind::NonInviteClient, _, Timer::Expire)
            | (Kind::InviteServer, State::Completed, Timer::Expire) => {
                self.event(TxEvent::Timeout { tx: id });
                self.terminate(id);
            }
            // M, L (Accepted), D, I, J, K: done.
            _ => self.terminate(id),
        }
    }
}

/// A response to `request` with the headers RFC 3261 §8.2.6.2 copies (Via, From, To, Call-ID,
/// CSeq), a To tag when given and the request's To has none, and no body.
pub fn response_to(request: &SipMessage, code: u16, reason: &str, to_tag: Option<&str>) -> Vec<u8> {
    build_response(request, code, reason, to_tag).to_bytes()
}

/// As [`response_to`], as a message the caller may add headers and a body to.
pub fn build_response(
    request: &SipMessage,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> SipMessage {
    let mut headers = ezk_sip_types::Headers::with_capacity(8);
    for v in request.headers.get_raw(&Name::VIA) {
        headers.insert(Name::VIA, v.clone());
    }
    for name in [Name::FROM, Name::TO, Name::CALL_ID, Name::CSEQ] {
        if let Some(v) = request.headers.get_raw(&name).next() {
            let v = if name == Name::TO {
                match to_tag {
                    Some(tag) if header_param(v, "tag").is_none() => {
                        BytesStr::from(format!("{v};tag={tag}"))
                    }
                    _ => v.clone(),
                }
            } else {
                v.clone()
            };
            headers.insert(name, v);
        }
    }
    SipMessage {
        start: StartLine::Response {
            code,
            reason: reason.to_string(),
        },
        headers,
        body: bytes::Bytes::new(),
    }
}
