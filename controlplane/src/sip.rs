//! The SIP service of `voxedge serve`: a tokio driver around the sans-IO core
//! (`voxedge-sip-core`) on UDP and TCP, and the call layer that anchors media in the dataplane.
//!
//! One task owns the transaction layer and the calls; UDP is read in that task, each TCP
//! connection has a reader task that frames messages and a writer fed through a bounded
//! channel. Built-in targets (no configuration needed): `sip:echo@…` answers and echoes the
//! caller's media back through the dataplane; `sip:hangup@…` answers and hangs up at once.
//! Anything else is 404 until the dial plan exists. OPTIONS is answered 200.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytesstr::BytesStr;
use ezk_sip_types::header::typed::MaxForwards;
use ezk_sip_types::{Method, Name};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use voxedge_dataplane::ids::{RelayId, Side, WorkerId};
use voxedge_dataplane::{Dataplane, DataplaneError, QueuedRelay, RelayInfo, RelayRequest};
use voxedge_sip_core::dialog::{request_dialog_id, Dialog, DialogId, DialogState};
use voxedge_sip_core::transaction::{
    build_response, Output, Peer, Timers, Transactions, TxEvent, TxId,
};
use voxedge_sip_core::{Framer, Limits, SipMessage, StartLine};

use crate::config::SipConfig;
use crate::sdp::{CodecPolicy, Format, Sdp, SdpError};

/// Counters of the SIP service (for metrics and tests).
#[derive(Debug, Default)]
pub struct SipStats {
    pub received: std::sync::atomic::AtomicU64,
    pub malformed: std::sync::atomic::AtomicU64,
    pub calls_answered: std::sync::atomic::AtomicU64,
    pub calls_active: std::sync::atomic::AtomicU64,
    /// New calls refused by admission control (503).
    pub calls_refused: std::sync::atomic::AtomicU64,
    /// INVITEs answered 482 Loop Detected.
    pub loops_detected: std::sync::atomic::AtomicU64,
    /// Offers and answers refused for their SDP (488).
    pub sdp_refused: std::sync::atomic::AtomicU64,
    /// Answers naming no offered codec (relayed unchanged).
    pub answers_outside_offer: std::sync::atomic::AtomicU64,
    /// New calls answered 503 because the dataplane had no media ports for them.
    pub calls_without_media: std::sync::atomic::AtomicU64,
    /// TCP connections closed at once: the total or per-source connection limit was reached.
    pub tcp_refused: std::sync::atomic::AtomicU64,
    /// Calls hung up because their media stayed silent too long.
    pub media_timeouts: std::sync::atomic::AtomicU64,
}

/// The running service.
pub struct SipService {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub stats: Arc<SipStats>,
    pub tasks: Vec<JoinHandle<()>>,
    /// Places and ends calls of the REST API.
    pub handle: SipHandle,
}

enum Inbound {
    Message(SipMessage, Peer),
    Connected(SocketAddr, mpsc::Sender<Vec<u8>>),
    Closed(SocketAddr),
    Originate(Originate),
    Hangup(String, EndStatus),
    Answer(String),
    Reject(String, u16),
    Ring(String),
    Rehome(
        String,
        WorkerId,
        tokio::sync::oneshot::Sender<Option<RelayId>>,
    ),
    /// The dataplane's `MediaTimeout` event for a stream.
    MediaTimeout(RelayId, Side),
}

/// A call to place (REST `POST /Calls`): its SID, where to send the INVITE and who it is from.
#[derive(Debug, Clone)]
pub struct Originate {
    pub sid: String,
    pub target: Target,
    /// User part of our From (the caller ID).
    pub from_user: String,
    /// The call runs customer instructions when answered (the callee's media goes to the
    /// instruction engine, not back to it); otherwise the built-in echo.
    pub instructions: bool,
    /// A `<Dial>` leg: the callee joins leg B of the dialling call's relay (bridged by the
    /// engine once answered) instead of getting media of its own.
    pub bridge: Option<Bridge>,
    /// The dataplane worker for a call with media of its own (see [`crate::calls::NewCall`]).
    pub worker: Option<WorkerId>,
}

/// The media a `<Dial>` leg joins: the parent call's relay, whose leg B the callee uses, and
/// the caller's codec and telephone-event payload type (offered as they are, so media passes
/// through untouched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bridge {
    pub relay: RelayId,
    pub codec: crate::voice::audio::Codec,
    pub dtmf_pt: Option<u8>,
}

/// Where an outbound call goes: the request URI and the address it is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub uri: String,
    pub addr: SocketAddr,
    pub creds: Option<(String, String)>,
}

/// How a placed call ended (Twilio's final call statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndStatus {
    Completed,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
}

impl EndStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EndStatus::Completed => "completed",
            EndStatus::Busy => "busy",
            EndStatus::NoAnswer => "no-answer",
            EndStatus::Failed => "failed",
            EndStatus::Canceled => "canceled",
        }
    }
}

/// What happens to a placed call, in order, for the call service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallUpdate {
    Ringing {
        sid: String,
    },
    Answered {
        sid: String,
        /// For a placed call that runs instructions: its relay (callee on leg A) and the
        /// G.711 codec and telephone-event payload type the callee answered with.
        media: Option<(RelayId, crate::voice::audio::Codec, Option<u8>)>,
    },
    Ended {
        sid: String,
        status: EndStatus,
        sip_code: Option<u16>,
    },
    /// An INVITE no dial-plan entry claims: a call for the instruction engine, its media
    /// anchored (caller on leg A), waiting for [`SipHandle::answer`] or [`SipHandle::reject`].
    Incoming(Box<IncomingCall>),
    /// A signalling event of a call with a SID (for SIP-event callbacks).
    Sip(Box<SipEvent>),
}

/// A signalling event of a call (a placed call, a `<Dial>` leg or an engine call): what SIP
/// event callbacks report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipEvent {
    pub sid: String,
    /// `provisional` (1xx other than 100 received), `failure` (a final error response
    /// received), `reinvite`, `update`, `info`, `refer`, `bye`, `cancel`.
    pub event: &'static str,
    /// The request's method, or the response's status code.
    pub method: Option<String>,
    pub status: Option<u16>,
    /// The message's header section (start line excluded), as received and parsed.
    pub head: String,
    /// The body of an INFO (at most 4 KB, as text).
    pub body: Option<String>,
}

/// Every event name a SIP-event registration may ask for.
pub const SIP_EVENTS: &[&str] = &[
    "provisional",
    "failure",
    "reinvite",
    "update",
    "info",
    "refer",
    "bye",
    "cancel",
];

impl SipEvent {
    fn of(sid: &str, event: &'static str, msg: &SipMessage) -> SipEvent {
        let bytes = msg.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        let head_end = text.find("\r\n\r\n").unwrap_or(text.len());
        let head = text[..head_end]
            .split_once("\r\n")
            .map_or("", |(_, h)| h)
            .chars()
            .take(16 * 1024)
            .collect();
        let body = (event == "info" && !msg.body.is_empty())
            .then(|| String::from_utf8_lossy(&msg.body[..msg.body.len().min(4096)]).into_owned());
        SipEvent {
            sid: sid.to_string(),
            event,
            method: msg.method().map(ToString::to_string),
            status: msg.status(),
            head,
            body,
        }
    }

    /// The values of header `name` (case-insensitive; folded lines were joined by parsing).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }
}

/// An incoming call handed to the instruction engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingCall {
    pub sid: String,
    pub relay: RelayId,
    /// User part of the From URI (the caller).
    pub from: String,
    /// User part of the Request-URI (the number called).
    pub to: String,
    pub call_id: String,
    /// User part of a Diversion header's URI.
    pub forwarded_from: Option<String>,
    /// The G.711 codec chosen for the call.
    pub codec: crate::voice::audio::Codec,
    /// The caller's telephone-event payload type.
    pub dtmf_pt: Option<u8>,
}

/// Handle of the SIP service for call control: resolve a destination, place and end calls.
#[derive(Clone)]
pub struct SipHandle {
    inbound: mpsc::Sender<Inbound>,
    routes: Arc<Vec<(String, RouteTarget)>>,
    sip_uri_calls: bool,
}

impl std::fmt::Debug for SipHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SipHandle")
    }
}

/// Why a call cannot be placed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OriginateError {
    #[error("calls to SIP URIs are not enabled (api.sip_uri_calls)")]
    SipUriNotAllowed,
    #[error("the SIP URI has no literal address and port this node can reach")]
    BadSipUri,
    #[error("no SIP route matches this number (see [sip] routes)")]
    NoRoute,
    #[error("a number may hold only digits, letters, + * # . _ - (at most 64)")]
    BadNumber,
    #[error("the SIP service is not running")]
    Stopped,
}

impl SipHandle {
    /// Where a call to `to` (a number, or a `sip:` URI when allowed) goes.
    ///
    /// # Errors
    /// No route for the number, or a SIP URI that is not allowed or not usable.
    pub fn resolve(&self, to: &str) -> Result<Target, OriginateError> {
        if to.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("sip:")) {
            if !self.sip_uri_calls {
                return Err(OriginateError::SipUriNotAllowed);
            }
            // sip:user@host:port with nothing that could end the URI or start a header.
            let ok = to.len() <= 256
                && to[4..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-_.!~*'()%@:[]".contains(&b));
            if !ok {
                return Err(OriginateError::BadSipUri);
            }
            let addr = target_addr(to).ok_or(OriginateError::BadSipUri)?;
            return Ok(Target {
                uri: to.to_string(),
                addr,
                creds: None,
            });
        }
        let number_ok = !to.is_empty()
            && to.len() <= 64
            && to
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+*#._-".contains(&b));
        if !number_ok {
            return Err(OriginateError::BadNumber);
        }
        let found = self
            .routes
            .iter()
            .find(|(p, _)| route_matches(p, to))
            .map(|(_, t)| t);
        match found {
            Some(RouteTarget::Sip {
                uri, addr, creds, ..
            }) => {
                let host = uri[4..].rsplit_once('@').map_or(&uri[4..], |(_, h)| h);
                Ok(Target {
                    uri: format!("sip:{to}@{host}"),
                    addr: *addr,
                    creds: creds.clone(),
                })
            }
            _ => Err(OriginateError::NoRoute),
        }
    }

    /// Hands a request to the SIP task.
    async fn send(&self, m: Inbound) -> Result<(), OriginateError> {
        self.inbound
            .send(m)
            .await
            .map_err(|_| OriginateError::Stopped)
    }

    /// Places a call (the INVITE leaves at once; progress arrives as [`CallUpdate`]s).
    ///
    /// # Errors
    /// The SIP service stopped.
    pub async fn originate(&self, o: Originate) -> Result<(), OriginateError> {
        self.send(Inbound::Originate(o)).await
    }

    /// Answers an incoming call (200 OK with our SDP).
    ///
    /// # Errors
    /// The SIP service stopped.
    pub async fn answer(&self, sid: &str) -> Result<(), OriginateError> {
        self.send(Inbound::Answer(sid.to_string())).await
    }

    /// Refuses an incoming call that was not answered, with a final response `code`.
    ///
    /// # Errors
    /// The SIP service stopped.
    pub async fn reject(&self, sid: &str, code: u16) -> Result<(), OriginateError> {
        self.send(Inbound::Reject(sid.to_string(), code)).await
    }

    /// Tells the caller of an unanswered engine call that it is ringing (180), e.g. while a
    /// `<Dial answerOnBridge>` leg rings.
    ///
    /// # Errors
    /// The SIP service stopped.
    pub async fn ring(&self, sid: &str) -> Result<(), OriginateError> {
        self.send(Inbound::Ring(sid.to_string())).await
    }

    /// Moves an incoming engine call that is not answered yet onto dataplane worker `worker`
    /// (a new relay there; the answer will offer its port). The call's relay now, or `None`
    /// when the call is answered (its far end knows the port) or gone, or the worker has no
    /// room.
    ///
    /// # Errors
    /// The SIP service stopped.
    pub async fn rehome(
        &self,
        sid: &str,
        worker: WorkerId,
    ) -> Result<Option<RelayId>, OriginateError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Inbound::Rehome(sid.to_string(), worker, tx))
            .await?;
        rx.await.map_err(|_| OriginateError::Stopped)
    }

    /// Ends a placed call: CANCEL while it rings, BYE once answered. A call not ringing yet
    /// ends with `status`.
    ///
    /// # Errors
    /// The SIP service stopped.
    pub async fn hangup(&self, sid: &str, status: EndStatus) -> Result<(), OriginateError> {
        self.send(Inbound::Hangup(sid.to_string(), status)).await
    }

    /// Hands over the dataplane's report that a stream went silent (see `[sip]
    /// media_timeout_secs`). Blocks while the SIP task's queue is full: call it from a
    /// blocking thread, not from async code.
    ///
    /// # Errors
    /// The SIP service stopped.
    pub fn media_timeout_blocking(&self, relay: RelayId, side: Side) -> Result<(), OriginateError> {
        self.inbound
            .blocking_send(Inbound::MediaTimeout(relay, side))
            .map_err(|_| OriginateError::Stopped)
    }
}

/// A placed call before its final response.
#[derive(Debug)]
struct Origin {
    sid: String,
    invite: SipMessage,
    peer: Peer,
    relay: RelayId,
    offer: Bytes,
    creds: Option<(String, String)>,
    auth_tried: bool,
    ringing: bool,
    /// Set when asked to end before the answer: the status to report.
    cancel: Option<EndStatus>,
    /// Whether our CANCEL left (it waits for a provisional response, RFC 3261 §9.1).
    cancel_sent: bool,
    /// Any provisional response (100 included) arrived.
    provisional: bool,
    /// The 2xx arrived; the entry stays for 2xx retransmissions until the transaction ends.
    answered: bool,
    /// Runs customer instructions once answered.
    instructions: bool,
    /// A `<Dial>` leg on leg B of another call's relay (which it does not own).
    bridge: bool,
}

#[derive(Debug)]
struct Call {
    dialog: Dialog,
    relay: Option<RelayId>,
    invite_tx: Option<TxId>,
    peer: Peer,
    hangup_after_ack: bool,
    answer: Bytes,
    /// The outbound leg, when the call was routed to a SIP target.
    b: Option<BLeg>,
    /// The SID of a call placed through the REST API (this dialog is its only leg), or of an
    /// incoming call run by the instruction engine.
    origin: Option<String>,
    /// An incoming engine call not answered yet (its INVITE waits in `pending_invites`).
    unanswered: bool,
    /// The relay's side this dialog's far end uses, and whether ending the call deletes the
    /// relay (a `<Dial>` leg borrows leg B of its parent's relay).
    side: Side,
    owns_relay: bool,
    /// A delayed offer: the offer our 2xx carried (rewritten to our port), whose answer comes
    /// in the caller's ACK.
    ack_answer: Option<Sdp>,
    /// A re-INVITE without SDP was answered with an offer: our ACK of that 2xx waits for the
    /// sender's ACK, which brings the answer.
    reinvite_ack: Option<ReinviteAck>,
    /// When the call was answered (both legs of a routed call): silence counts from then.
    answered_at: Option<Duration>,
}

/// The ACK owed to the leg that answered a relayed re-INVITE without SDP (RFC 3261 §14.1:
/// its 2xx carries an offer, the answer comes in the ACK).
#[derive(Debug)]
struct ReinviteAck {
    /// The re-INVITE came from leg A (so the ACK goes to leg B).
    from_a: bool,
    /// CSeq number of the re-INVITE we sent (and of our ACK).
    cseq: u32,
    /// CSeq number of the sender's re-INVITE: its ACK carries the same.
    sender_cseq: u32,
    /// The offer in the 2xx, as its sender wrote it: the answer is cut to it.
    offer: Sdp,
    /// Our client transaction of that re-INVITE (whose entry in `relayed` keeps the ACK).
    ctx: TxId,
}

/// An in-dialog request relayed to the other leg.
#[derive(Debug)]
struct Relayed {
    /// The call (by its inbound dialog).
    call: DialogId,
    /// The server transaction to answer, and its request.
    stx: TxId,
    req: SipMessage,
    from_a: bool,
    /// The SDP offer sent on, to which the answer is cut.
    offer: Option<Sdp>,
    /// A re-INVITE answered with 2xx: the entry stays until its client transaction ends so
    /// that each retransmission of the 2xx (our ACK was lost) gets our ACK again.
    answered: bool,
    /// That ACK: where it went and its bytes (`None` while it waits for the sender's ACK).
    ack: Option<(Peer, Vec<u8>)>,
}

/// The outbound leg of a routed call.
#[derive(Debug)]
struct BLeg {
    invite: SipMessage,
    tx: TxId,
    peer: Peer,
    dialog: Option<Dialog>,
    /// The SDP offer sent to the callee, to which its answers are cut; `None` for a delayed
    /// offer (the callee offers in its 2xx, the caller answers in its ACK).
    offer: Option<Sdp>,
    /// Codecs offered to the callee (a delayed offer's is applied to the callee's offer).
    codecs: CodecPolicy,
    answered: bool,
    /// The ACK for the callee's 2xx, kept for its retransmissions; `None` while a delayed
    /// offer's answer is awaited from the caller.
    ack: Option<Vec<u8>>,
    /// Our ports towards the caller (leg A of the relay) and the callee (leg B).
    a_port: u16,
    b_port: u16,
    /// Credentials for a challenging target, and whether they were used already.
    creds: Option<(String, String)>,
    auth_tried: bool,
}

/// A token bucket: `rate` tokens per second, at most `rate` stored (one second of burst).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Duration,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Bucket {
            rate: f64::from(rate.max(1)),
            tokens: f64::from(rate.max(1)),
            at: Duration::ZERO,
        }
    }

    fn take(&mut self, now: Duration) -> bool {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where a dial-plan entry sends calls.
#[derive(Debug, Clone)]
enum RouteTarget {
    Echo,
    Hangup,
    Sip {
        uri: String,
        addr: SocketAddr,
        creds: Option<(String, String)>,
        codecs: CodecPolicy,
    },
}

/// Resolves the dial plan at start (names are looked up once).
///
/// # Errors
/// A target that is neither a built-in nor a SIP URI with a reachable host.
fn resolve_routes(cfg: &SipConfig) -> anyhow::Result<Vec<(String, RouteTarget)>> {
    let mut out = Vec::new();
    for r in &cfg.routes {
        let t = match r.target.trim() {
            "echo" => RouteTarget::Echo,
            "hangup" => RouteTarget::Hangup,
            uri => {
                let rest = uri.strip_prefix("sip:").ok_or_else(|| {
                    anyhow::anyhow!("sip.routes: target `{uri}` is not echo, hangup or a sip: URI")
                })?;
                let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                let host = host.split(';').next().unwrap_or(host);
                let with_port = if host.starts_with('[') && !host.contains("]:")
                    || !host.starts_with('[') && !host.contains(':')
                {
                    format!("{host}:5060")
                } else {
                    host.to_string()
                };
                use std::net::ToSocketAddrs;
                let addr = with_port
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        anyhow::anyhow!("sip.routes: cannot resolve the host of `{uri}`")
                    })?;
                RouteTarget::Sip {
                    uri: uri.to_string(),
                    addr,
                    creds: r.username.clone().zip(r.password.clone()),
                    codecs: CodecPolicy::new(r.codecs.as_deref().unwrap_or(&cfg.codecs)),
                }
            }
        };
        out.push((r.pattern.trim().to_string(), t));
    }
    Ok(out)
}

fn route_matches(pattern: &str, user: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => user.starts_with(prefix),
        None => user.eq_ignore_ascii_case(pattern),
    }
}

/// Datagrams read from the SIP socket in one turn of the loop at most (then timers, TCP and
/// the API's requests get their turn).
const UDP_BATCH: usize = 32;

/// What a new call's relay is for ([`Core::anchor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    /// The built-in targets: the relay echoes each leg's media back (`hangup` too, for the
    /// moment it is up).
    Echo,
    /// A call routed to a SIP target: made without waiting for the worker (ADR 0018; see
    /// [`Core::settle_relays`] for a worker that then fails it).
    Routed,
    /// A call for the instruction engine.
    Engine,
}

/// Retry-After of a call refused for want of media ports, seconds.
const NO_MEDIA_RETRY: &str = "10";

/// How soon the loop looks again at relays whose worker has not answered yet.
const QUEUED_POLL: Duration = Duration::from_millis(1);

/// Shortest interval between two log lines about one repeating condition.
const LOG_PERIOD: Duration = Duration::from_secs(10);

struct Core {
    /// Calls refused for want of media ports (one line per [`LOG_PERIOD`]).
    no_media_log: crate::loglimit::LogLimit,
    tx: Transactions,
    epoch: Instant,
    udp: Option<Arc<UdpSocket>>,
    conns: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// Reserved for `calls_max` up front, so the map never rehashes while messages wait (see
    /// `Transactions::with_max_transactions`); boxed, as a call is 2.5 KB: the table is then
    /// 80 bytes a slot (2.5 MiB at the default 20,000), touched only as it fills.
    calls: HashMap<DialogId, Box<Call>>,
    /// INVITE server transactions by branch, for CANCEL (and the reverse, for cleanup).
    invites_by_branch: HashMap<String, TxId>,
    branch_of_invite: HashMap<TxId, String>,
    pending_invites: HashMap<TxId, SipMessage>,
    routes: Vec<(String, RouteTarget)>,
    calls_max: usize,
    cps: Bucket,
    cps_per_source_max: u32,
    cps_by_source: HashMap<IpAddr, Bucket>,
    /// Set when `[sip] users` requires callers to authenticate.
    auth: Option<crate::digest::Authenticator>,
    /// Outbound INVITE transaction → the call (keyed by its inbound dialog).
    b_by_tx: HashMap<TxId, DialogId>,
    /// Outbound dialog (our view) → the call.
    b_dialogs: HashMap<DialogId, DialogId>,
    /// In-dialog requests relayed to the other leg, by our client transaction.
    relayed: HashMap<TxId, Relayed>,
    /// Calls placed through the API: by INVITE transaction, SID → transaction, SID → dialog.
    origins: HashMap<TxId, Origin>,
    origin_tx: HashMap<String, TxId>,
    origin_calls: HashMap<String, DialogId>,
    /// Hang-ups that arrived before their call was handed to us (bounded).
    cancel_early: HashMap<String, EndStatus>,
    /// Relays whose leg B an answered `<Dial>` leg holds, and that leg's SID: the first
    /// answer of simultaneously dialled targets wins, later ones are hung up.
    bridged: HashMap<RelayId, String>,
    updates: Option<mpsc::UnboundedSender<CallUpdate>>,
    dp: Arc<Dataplane>,
    advertise: IpAddr,
    local: SocketAddr,
    limits: Limits,
    stats: Arc<SipStats>,
    /// INVITEs no dial-plan entry claims go to the instruction engine (else 404).
    apps: bool,
    /// Codecs let through to the built-in targets and the engine (`[sip] codecs`).
    codecs: CodecPolicy,
    /// Open INVITE server transactions by (Call-ID, From tag, CSeq), for merged requests
    /// (RFC 3261 §8.2.2.2), and the reverse for cleanup.
    invite_keys: HashMap<(String, String, u32), TxId>,
    key_of_invite: HashMap<TxId, (String, String, u32)>,
    /// Call-IDs of our outbound INVITEs: one arriving back here is a loop.
    b_call_ids: HashSet<String>,
    /// Relays of routed calls made without waiting for their worker, until it answers.
    queued: Vec<QueuedRelay>,
    /// Each call by its INVITE server transaction (for CANCEL and that transaction's end).
    call_by_invite: HashMap<TxId, DialogId>,
    /// Each call by the relay streams whose silence ends it (see [`media_keys`]).
    by_media: HashMap<(RelayId, Side), DialogId>,
    /// Relay legs whose far end's last SDP expects silence (hold, inactive).
    quiet: HashSet<(RelayId, Side)>,
    /// Streams to look at again, soonest first: a call whose streams all went silent gets no
    /// further event, so its timeout is checked here (see [`Core::check_media`]).
    media_checks: BinaryHeap<Reverse<(Duration, RelayId, Side)>>,
    /// `[sip] media_timeout_secs` and `hold_timeout_secs`; zero: never.
    media_timeout: Duration,
    hold_timeout: Duration,
}

/// The relay streams whose silence ends a call: both legs of a routed call, the far end's leg
/// of any other.
fn media_keys(call: &Call) -> impl Iterator<Item = (RelayId, Side)> + use<> {
    let keys = match call.relay {
        Some(r) if call.b.is_some() => [Some((r, Side::A)), Some((r, Side::B))],
        Some(r) => [Some((r, call.side)), None],
        None => [None, None],
    };
    keys.into_iter().flatten()
}

fn random_token(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::thread_rng();
    (0..n)
        .map(|_| char::from(CHARS[r.gen_range(0..CHARS.len())]))
        .collect()
}

/// Asks for a receive buffer of `bytes` on the SIP UDP socket (room for bursts while the loop
/// is busy: a datagram that finds the queue full is lost, and the retransmission that follows
/// comes half a second later). Returns the size granted, in the units of `bytes` (the kernel
/// reports double the value set, for its bookkeeping, and caps it at `net.core.rmem_max`); says
/// so in the log when the cap cut it.
fn udp_receive_buffer(u: &UdpSocket, bytes: usize) -> usize {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt::RcvBuf};
    if let Err(e) = setsockopt(u, RcvBuf, &bytes) {
        tracing::warn!(error = %e, "SIP UDP socket: SO_RCVBUF not set");
    }
    let granted = getsockopt(u, RcvBuf).unwrap_or(0) / 2;
    if granted < bytes {
        tracing::warn!(
            asked = bytes,
            granted,
            "SIP UDP receive buffer capped by net.core.rmem_max; raise that sysctl for more"
        );
    }
    granted
}

/// Binds UDP (when `udp`) and TCP (when `tcp`) on one address, for a listener called `what`.
/// With port 0, UDP picks a free port and TCP follows it; when that port is taken for TCP (an
/// ephemeral port of some client connection), another is tried.
pub(crate) async fn bind_pair(
    listen: SocketAddr,
    udp: bool,
    tcp: bool,
    what: &str,
) -> anyhow::Result<(Option<Arc<UdpSocket>>, Option<TcpListener>)> {
    use anyhow::Context;
    let attempts = if listen.port() == 0 && udp && tcp {
        20
    } else {
        1
    };
    let mut last = None;
    for _ in 0..attempts {
        let u = if udp {
            Some(Arc::new(UdpSocket::bind(listen).await.with_context(
                || format!("cannot bind {what} (UDP) on {listen}"),
            )?))
        } else {
            None
        };
        let tcp_addr = match &u {
            Some(u) => u.local_addr()?,
            None => listen,
        };
        if !tcp {
            return Ok((u, None));
        }
        match TcpListener::bind(tcp_addr).await {
            Ok(t) => return Ok((u, Some(t))),
            Err(e) => last = Some((tcp_addr, e)),
        }
    }
    let (addr, e) =
        last.ok_or_else(|| anyhow::anyhow!("{what}: neither UDP nor TCP is enabled"))?;
    Err(anyhow::Error::new(e).context(format!("cannot bind {what} (TCP) on {addr}")))
}

/// Starts the service; `stop` ends it.
///
/// # Errors
/// The listen address cannot be bound.
pub async fn start(
    cfg: &SipConfig,
    dp: Arc<Dataplane>,
    updates: Option<mpsc::UnboundedSender<CallUpdate>>,
    sip_uri_calls: bool,
    apps: bool,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<SipService> {
    let limits = Limits {
        max_message_bytes: cfg.max_message_bytes,
        ..Limits::default()
    };
    let (udp, tcp) = bind_pair(cfg.listen, cfg.udp, cfg.tcp, "SIP").await?;
    let udp_rcvbuf = udp
        .as_deref()
        .map(|u| udp_receive_buffer(u, cfg.udp_rcvbuf_bytes));
    let stats = Arc::new(SipStats::default());
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(4096);
    let mut tasks = Vec::new();
    let udp_addr = udp.as_ref().map(|u| u.local_addr()).transpose()?;
    let tcp_local = tcp.as_ref().map(|t| t.local_addr()).transpose()?;
    let local = udp_addr.or(tcp_local).unwrap_or(cfg.listen);
    let advertise = cfg.advertise.unwrap_or_else(|| {
        if local.ip().is_unspecified() {
            dp.advertise()
        } else {
            local.ip()
        }
    });
    if let Some(l) = tcp {
        tasks.push(tokio::spawn(accept_loop(
            l,
            in_tx.clone(),
            limits,
            cfg.tcp_connections_max,
            cfg.tcp_connections_per_source_max,
            stats.clone(),
            stop.clone(),
        )));
    }
    let event_ms = dp.config().media_timeout_ms;
    if event_ms == 0 && (cfg.media_timeout_secs > 0 || cfg.hold_timeout_secs > 0) {
        tracing::warn!("[sip] media_timeout_secs and hold_timeout_secs have no effect: [dataplane] media_timeout_ms = 0 turns off the event they start from");
    } else if u64::from(cfg.media_timeout_secs) * 1000 < event_ms && cfg.media_timeout_secs > 0 {
        tracing::warn!(event_ms, "[sip] media_timeout_secs is shorter than [dataplane] media_timeout_ms: silent calls are hung up only once the dataplane reports them");
    }
    let routes = resolve_routes(cfg)?;
    let updates_present = updates.is_some();
    let handle = SipHandle {
        inbound: in_tx.clone(),
        routes: Arc::new(routes.clone()),
        sip_uri_calls,
    };
    let core = Core {
        no_media_log: crate::loglimit::LogLimit::new(LOG_PERIOD),
        tx: Transactions::new(Timers::default()).with_max_transactions(cfg.transactions_max),
        epoch: Instant::now(),
        udp: udp.clone(),
        conns: HashMap::new(),
        calls: HashMap::with_capacity(cfg.calls_max.min(1 << 20)),
        invites_by_branch: HashMap::new(),
        branch_of_invite: HashMap::new(),
        pending_invites: HashMap::new(),
        routes,
        calls_max: cfg.calls_max,
        cps: Bucket::new(cfg.calls_per_second_max),
        cps_per_source_max: cfg.calls_per_second_per_source_max,
        cps_by_source: HashMap::new(),
        auth: (!cfg.users.is_empty()).then(|| {
            crate::digest::Authenticator::new(
                &cfg.auth_realm,
                cfg.users
                    .iter()
                    .map(|u| (u.username.clone(), u.password.clone())),
            )
        }),
        b_by_tx: HashMap::new(),
        b_dialogs: HashMap::new(),
        relayed: HashMap::new(),
        origins: HashMap::new(),
        origin_tx: HashMap::new(),
        origin_calls: HashMap::new(),
        cancel_early: HashMap::new(),
        bridged: HashMap::new(),
        updates,
        dp,
        advertise,
        local: SocketAddr::new(advertise, local.port()),
        limits,
        stats: stats.clone(),
        apps: apps && updates_present,
        codecs: CodecPolicy::new(&cfg.codecs),
        invite_keys: HashMap::new(),
        key_of_invite: HashMap::new(),
        b_call_ids: HashSet::new(),
        queued: Vec::new(),
        call_by_invite: HashMap::with_capacity(cfg.calls_max.min(1 << 20)),
        by_media: HashMap::with_capacity(cfg.calls_max.min(1 << 20)),
        quiet: HashSet::new(),
        media_checks: BinaryHeap::new(),
        media_timeout: Duration::from_secs(u64::from(cfg.media_timeout_secs)),
        hold_timeout: Duration::from_secs(u64::from(cfg.hold_timeout_secs)),
    };
    tasks.push(tokio::spawn(core.run(in_rx, stop)));
    if let Some(a) = udp_addr {
        tracing::info!(addr = %a, rcvbuf_bytes = udp_rcvbuf.unwrap_or(0), "SIP over UDP");
    }
    if let Some(a) = tcp_local {
        tracing::info!(addr = %a, "SIP over TCP");
    }
    Ok(SipService {
        udp: udp_addr,
        tcp: tcp_local,
        stats,
        tasks,
        handle,
    })
}

async fn accept_loop(
    l: TcpListener,
    inbound: mpsc::Sender<Inbound>,
    limits: Limits,
    max: usize,
    per_source: usize,
    stats: Arc<SipStats>,
    mut stop: watch::Receiver<bool>,
) {
    let open: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    // A connection flood must not become a log flood.
    let started = Instant::now();
    let mut refused_log = crate::loglimit::LogLimit::new(LOG_PERIOD);
    loop {
        let accepted = tokio::select! {
            r = l.accept() => r,
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "SIP TCP accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        {
            let mut o = crate::lock(&open);
            let total: usize = o.values().sum();
            let here = o.entry(peer.ip()).or_default();
            if total >= max || *here >= per_source {
                stats
                    .tcp_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(skipped) = refused_log.check(started.elapsed()) {
                    tracing::warn!(%peer, skipped, "SIP TCP connection refused: limit reached (further refusals within {}s are counted, not logged)", LOG_PERIOD.as_secs());
                }
                continue;
            }
            *here += 1;
        }
        let (inbound, open, stats) = (inbound.clone(), open.clone(), stats.clone());
        tokio::spawn(async move {
            let (mut rd, mut wr) = sock.into_split();
            let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(256);
            let _ = inbound.send(Inbound::Connected(peer, wtx)).await;
            let writer = tokio::spawn(async move {
                while let Some(data) = wrx.recv().await {
                    if wr.write_all(&data).await.is_err() {
                        break;
                    }
                }
            });
            let mut framer = Framer::new(limits);
            let mut buf = vec![0u8; 16 * 1024];
            let p = Peer {
                addr: peer,
                reliable: true,
            };
            'conn: loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if framer.push(&buf[..n]).is_err() {
                    break;
                }
                while let Some(m) = framer.next_message() {
                    match m {
                        Ok(msg) => {
                            stats
                                .received
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if inbound.send(Inbound::Message(msg, p)).await.is_err() {
                                break 'conn;
                            }
                        }
                        Err(e) => {
                            // A stream cannot be resynchronised after a framing error.
                            stats
                                .malformed
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "closing SIP TCP connection");
                            break 'conn;
                        }
                    }
                }
            }
            writer.abort();
            let _ = inbound.send(Inbound::Closed(peer)).await;
            let mut o = crate::lock(&open);
            if let Some(c) = o.get_mut(&peer.ip()) {
                *c = c.saturating_sub(1);
            }
        });
    }
}

/// Our ACK of the 2xx that answered a re-INVITE relayed to the other leg than the sender's
/// (leg B when the sender is leg A), with CSeq `cseq` and `body` (an SDP answer) when given:
/// where it goes and its bytes. `None` when that leg has no dialog.
fn leg_ack(
    call: &mut Call,
    from_a: bool,
    local: &str,
    cseq: u32,
    body: Option<Bytes>,
) -> Option<(Peer, Vec<u8>)> {
    let (dialog, peer) = if from_a {
        let b = call.b.as_mut()?;
        (b.dialog.as_mut()?, b.peer)
    } else {
        (&mut call.dialog, call.peer)
    };
    let branch = format!("z9hG4bK{}", random_token(16));
    let transport = if peer.reliable { "TCP" } else { "UDP" };
    let mut ack = dialog
        .request(
            Method::ACK,
            &format!("{transport} {local}"),
            &branch,
            None,
            Some(cseq),
        )
        .ok()?;
    if let Some(body) = body {
        ack.headers
            .insert(Name::CONTENT_TYPE, BytesStr::from_static("application/sdp"));
        ack.body = body;
    }
    let to = target_addr(&dialog.remote_target).unwrap_or(peer.addr);
    Some((
        Peer {
            addr: to,
            reliable: peer.reliable,
        },
        ack.to_bytes(),
    ))
}

/// Points `side` of `relay` at where `sdp` receives media, if it says, and tells the leg
/// whether its media is RTP or T.38 (UDPTL datagrams, forwarded as they are).
fn follow_media(
    dp: &Dataplane,
    quiet: &mut HashSet<(RelayId, Side)>,
    relay: RelayId,
    side: Side,
    sdp: &Sdp,
) {
    if sdp.expects_silence() {
        quiet.insert((relay, side));
    } else {
        quiet.remove(&(relay, side));
    }
    let _ = dp.update_leg_nowait(
        relay,
        side,
        voxedge_dataplane::command::LegUpdate {
            remote: sdp.remote(),
            opaque: Some(sdp.is_fax()),
            ..Default::default()
        },
    );
}

/// The message's SDP body parsed, when it has one.
fn sdp_of(msg: &SipMessage) -> Option<Result<Sdp, SdpError>> {
    msg.sdp().map(|body| Sdp::parse(&body))
}

/// An answer cut to what `offer` offered. An answer with no offered codec at all breaks
/// RFC 3264 but is common (test UASs answer with a fixed codec); the relay does not
/// transcode, so it goes on unchanged and is counted rather than ending the call.
fn cut_answer(answer: &mut Sdp, offer: &Sdp, stats: &SipStats) {
    if answer.answer_within(offer).is_err() {
        stats
            .answers_outside_offer
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The call's G.711 codec (the offerer's first of PCMU/PCMA) and its telephone-event type.
fn choose_g711(offer: &Sdp) -> Option<(crate::voice::audio::Codec, Option<u8>)> {
    use crate::voice::audio::Codec;
    let codec = offer.formats().iter().find_map(|f| match f.pt {
        0 => Some(Codec::Pcmu),
        8 => Some(Codec::Pcma),
        _ => None,
    })?;
    Some((codec, offer.telephone_event()))
}

/// Our SDP for an engine call on `port`: the answer with the chosen G.711 codec and, when
/// offered, telephone-event; for a delayed offer, our offer of exactly those.
fn app_answer_sdp(
    offer: Option<&Sdp>,
    advertise: IpAddr,
    port: u16,
    codec: crate::voice::audio::Codec,
    te: Option<u8>,
) -> Bytes {
    let pt = codec.payload_type();
    offer
        .and_then(|o| Sdp::answer_to(o, advertise, port, |f| f.pt == pt || Some(f.pt) == te).ok())
        .unwrap_or_else(|| Sdp::offer_of(advertise, port, &codec_formats(codec, te)))
        .to_bytes()
}

/// An engine call's codec and telephone-event type from the caller's offer; for a delayed
/// offer PCMU and telephone-event 101, which our offer proposes alone (so the answer in the
/// ACK can only take them), and that offer to check the answer against.
fn app_media(offer: Option<&Sdp>) -> Option<(crate::voice::audio::Codec, Option<u8>, Option<Sdp>)> {
    use crate::voice::audio::Codec;
    match offer {
        Some(o) => choose_g711(o).map(|(c, te)| (c, te, None)),
        None => {
            let (codec, te) = (Codec::Pcmu, Some(101));
            let ours = Sdp::offer_of(IpAddr::from([0, 0, 0, 0]), 9, &codec_formats(codec, te));
            Some((codec, te, Some(ours)))
        }
    }
}

/// Formats of one G.711 codec and, optionally, telephone-event.
fn codec_formats(codec: crate::voice::audio::Codec, te: Option<u8>) -> Vec<Format> {
    let mut f = vec![Format {
        pt: codec.payload_type(),
        name: codec.name().into(),
        rate: 8000,
    }];
    f.extend(te.map(|pt| Format {
        pt,
        name: "telephone-event".into(),
        rate: 8000,
    }));
    f
}

/// User part of the first SIP/TEL URI in a header value (`"Bob" <sip:+1555@host>;tag=x`).
fn uri_user(v: &str) -> Option<String> {
    let (start, scheme) = ["sip:", "sips:", "tel:"]
        .into_iter()
        .find_map(|s| v.find(s).map(|i| (i, s)))?;
    let rest = &v[start + scheme.len()..];
    let end = rest
        .find(['@', '>', ';', '?', ' ', ','])
        .unwrap_or(rest.len());
    // A SIP URI names a user only before an '@'; a tel URI is all number.
    (scheme == "tel:" || rest[end..].starts_with('@'))
        .then(|| rest[..end].chars().take(128).collect())
}

impl Core {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn run(mut self, mut inbound: mpsc::Receiver<Inbound>, mut stop: watch::Receiver<bool>) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let mut next = match (self.tx.next_deadline(), self.media_checks.peek()) {
                (Some(a), Some(Reverse((b, ..)))) => Some(a.min(*b)),
                (a, b) => a.or(b.map(|Reverse((t, ..))| *t)),
            };
            if !self.queued.is_empty() {
                // A worker's answer is not a wake-up: look again shortly.
                let soon = self.now() + QUEUED_POLL;
                next = Some(next.map_or(soon, |n| n.min(soon)));
            }
            let deadline = next
                .map(|d| self.epoch + d)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let udp = self.udp.clone();
            tokio::select! {
                r = async {
                    match &udp {
                        Some(u) => u.recv_from(&mut buf).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Ok((n, from)) = r {
                        self.on_datagram(&buf[..n], from);
                        // Under load more wait in the socket: take them (a bounded batch)
                        // before setting up the select again, whose futures and timer cost
                        // more than a datagram's read.
                        if let Some(u) = &udp {
                            for _ in 1..UDP_BATCH {
                                let Ok((n, from)) = u.try_recv_from(&mut buf) else {
                                    break;
                                };
                                self.on_datagram(&buf[..n], from);
                            }
                        }
                    }
                }
                m = inbound.recv() => match m {
                    Some(Inbound::Message(msg, peer)) => self.on_message(msg, peer),
                    Some(Inbound::Connected(a, w)) => { self.conns.insert(a, w); }
                    Some(Inbound::Closed(a)) => { self.conns.remove(&a); }
                    Some(Inbound::Originate(o)) => self.originate(o, self.now()),
                    Some(Inbound::Hangup(sid, status)) => self.hangup(&sid, status, self.now()),
                    Some(Inbound::Answer(sid)) => self.answer_app(&sid, self.now()),
                    Some(Inbound::Reject(sid, code)) => self.reject_app(&sid, code, self.now()),
                    Some(Inbound::Ring(sid)) => self.ring_app(&sid, self.now()),
                    Some(Inbound::Rehome(sid, worker, reply)) => {
                        let _ = reply.send(self.rehome_app(&sid, worker));
                    }
                    Some(Inbound::MediaTimeout(relay, side)) => {
                        self.check_media(relay, side, self.now());
                    }
                    None => {}
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = self.now();
                    self.tx.handle_timeouts(now);
                    while let Some(Reverse((at, relay, side))) = self.media_checks.peek().copied() {
                        if at > now {
                            break;
                        }
                        self.media_checks.pop();
                        self.check_media(relay, side, now);
                    }
                }
                () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            }
            self.settle_relays(self.now());
            self.process_events(self.now());
        }
        // Draining: end the calls we anchor, both legs of routed ones.
        let calls: Vec<DialogId> = self.calls.keys().cloned().collect();
        let now = self.now();
        for id in calls {
            self.hang_up(&id, now, None);
        }
        self.process_events(self.now());
    }

    fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        self.stats
            .received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if data.iter().all(|b| *b == b'\r' || *b == b'\n') {
            return; // keep-alive
        }
        match SipMessage::parse(data, &self.limits) {
            Ok(m) => self.on_message(
                m,
                Peer {
                    addr: from,
                    reliable: false,
                },
            ),
            Err(e) => {
                // RFC 3261 §16.3 / §18.1.2: malformed datagrams are dropped (a 400 needs the
                // headers that failed to parse); counted.
                self.stats
                    .malformed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(%from, error = %e, "malformed SIP datagram dropped");
            }
        }
    }

    fn on_message(&mut self, msg: SipMessage, peer: Peer) {
        let now = self.now();
        let was_request = msg.is_request();
        if was_request && self.tx.is_full() && msg.method() != Some(&Method::ACK) {
            let r = service_unavailable(&msg, None, "5");
            self.send_raw(peer, r.to_bytes());
            return;
        }
        if was_request && msg.method() != Some(&Method::ACK) && request_is_bad(&msg) {
            if msg.header("Via").is_some() {
                let r = build_response(&msg, 400, "Bad Request", None);
                self.send_raw(peer, r.to_bytes());
            }
            return;
        }
        match self.tx.receive(msg.clone(), peer, now) {
            Ok(()) => {}
            Err(_) if was_request && msg.method() != Some(&Method::ACK) => {
                // Missing Via/CSeq: answer 400 when a response can be routed at all.
                if msg.header("Via").is_some() {
                    let r = build_response(&msg, 400, "Bad Request", None);
                    self.send_raw(peer, r.to_bytes());
                }
            }
            Err(_) => {}
        }
        self.process_events(now);
    }

    fn process_events(&mut self, now: Duration) {
        let mut events = Vec::new();
        let mut sends = Vec::new();
        while let Some(o) = self.tx.poll_output() {
            match o {
                Output::Transmit(t) => sends.push(t),
                Output::Event(e) => events.push(e),
            }
        }
        for t in sends {
            self.send_raw(t.to, t.data);
        }
        for e in events {
            self.on_event(e, now);
        }
        self.stats.calls_active.store(
            self.calls.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn send_raw(&mut self, to: Peer, data: Vec<u8>) {
        if to.reliable {
            if let Some(c) = self.conns.get(&to.addr) {
                let _ = c.try_send(data);
            }
        } else if let Some(u) = &self.udp {
            let _ = u.try_send_to(&data, to.addr);
        }
    }

    fn respond(&mut self, tx: TxId, msg: SipMessage, now: Duration) {
        if msg.status().unwrap_or(0) >= 200 {
            self.pending_invites.remove(&tx);
        }
        if let Err(e) = self.tx.respond(tx, msg, now) {
            tracing::debug!(error = %e, "response not sent");
        }
    }

    fn on_event(&mut self, e: TxEvent, now: Duration) {
        match e {
            TxEvent::Request { tx, msg, from } => self.on_request(tx, msg, from, now),
            TxEvent::Ack { msg, .. } => self.on_ack(&msg, now),
            TxEvent::Timeout { tx } if self.origins.contains_key(&tx) => {
                if let Some(o) = self.origins.remove(&tx) {
                    self.origin_tx.remove(&o.sid);
                    if !o.answered {
                        self.drop_origin_media(&o);
                        let status = o.cancel.unwrap_or(if o.ringing {
                            EndStatus::NoAnswer
                        } else {
                            EndStatus::Failed
                        });
                        self.report_end(&o.sid, status, None);
                    }
                }
            }
            TxEvent::Timeout { tx } if self.relayed.contains_key(&tx) => {
                if let Some(r) = self.relayed.remove(&tx).filter(|r| !r.answered) {
                    self.respond(
                        r.stx,
                        build_response(&r.req, 408, "Request Timeout", None),
                        now,
                    );
                }
            }
            TxEvent::Timeout { tx } if self.b_by_tx.contains_key(&tx) => {
                // The callee never answered: 408 to the caller.
                if let Some(a_id) = self.b_by_tx.get(&tx).cloned() {
                    let inv = self
                        .calls
                        .get(&a_id)
                        .and_then(|c| c.invite_tx)
                        .and_then(|t| self.pending_invites.get(&t).cloned().map(|m| (t, m)));
                    if let Some((t, m)) = inv {
                        let tag = a_id.local_tag.clone();
                        self.respond(
                            t,
                            build_response(&m, 408, "Request Timeout", Some(&tag)),
                            now,
                        );
                    }
                    self.end_call(&a_id, false);
                }
            }
            TxEvent::Timeout { tx } => {
                // Our 2xx to the caller never got its ACK: the call is over.
                if let Some(id) = self.call_by_invite.get(&tx).cloned() {
                    self.end_call(&id, true);
                }
            }
            TxEvent::Terminated { tx } => {
                if let Some(o) = self.origins.remove(&tx) {
                    if self.origin_tx.get(&o.sid) == Some(&tx) {
                        self.origin_tx.remove(&o.sid);
                    }
                    if !o.answered {
                        // Ended without a final response we acted on (transport failure).
                        self.drop_origin_media(&o);
                        self.report_end(&o.sid, o.cancel.unwrap_or(EndStatus::Failed), None);
                    }
                }
                self.pending_invites.remove(&tx);
                self.b_by_tx.remove(&tx);
                if let Some(b) = self.branch_of_invite.remove(&tx) {
                    self.invites_by_branch.remove(&b);
                }
                if let Some(k) = self.key_of_invite.remove(&tx) {
                    self.invite_keys.remove(&k);
                }
                self.relayed.remove(&tx);
            }
            TxEvent::Response { tx, msg } if self.origins.contains_key(&tx) => {
                self.on_origin_response(tx, msg, now);
            }
            TxEvent::Response { tx, msg } if self.relayed.contains_key(&tx) => {
                self.on_relayed_response(tx, msg, now);
            }
            TxEvent::Response { tx, msg } => self.on_b_response(tx, msg, now),
        }
    }

    fn on_request(&mut self, tx: TxId, msg: SipMessage, from: Peer, now: Duration) {
        let method = msg.method().cloned().unwrap_or(Method::OPTIONS);
        if let Ok(mf) = msg.headers.get::<MaxForwards>(Name::MAX_FORWARDS) {
            if mf.0 == 0 && method != Method::OPTIONS {
                self.respond(tx, build_response(&msg, 483, "Too Many Hops", None), now);
                return;
            }
        }
        if method == Method::CANCEL {
            let branch = top_branch(&msg);
            let target = branch.and_then(|b| self.invites_by_branch.get(&b).copied());
            match target.and_then(|t| self.pending_invites.remove(&t).map(|m| (t, m))) {
                Some((inv_tx, inv)) => {
                    self.respond(tx, build_response(&msg, 200, "OK", None), now);
                    let call = self.call_by_invite.get(&inv_tx).cloned();
                    let tag = call
                        .as_ref()
                        .map_or_else(|| random_token(10), |k| k.local_tag.clone());
                    self.respond(
                        inv_tx,
                        build_response(&inv, 487, "Request Terminated", Some(&tag)),
                        now,
                    );
                    if let Some(k) = call {
                        if let Some(sid) = self.calls.get(&k).and_then(|c| c.origin.clone()) {
                            self.report(CallUpdate::Sip(Box::new(SipEvent::of(
                                &sid, "cancel", &msg,
                            ))));
                        }
                        self.cancel_b(&k, now);
                        self.end_call(&k, false);
                    }
                }
                None => self.respond(
                    tx,
                    build_response(&msg, 481, "Call/Transaction Does Not Exist", None),
                    now,
                ),
            }
            return;
        }
        if let Some(id) = request_dialog_id(&msg) {
            if let Some(a_id) = self.b_dialogs.get(&id).cloned() {
                self.in_b_dialog(tx, a_id, msg, now);
            } else {
                self.in_dialog(tx, id, msg, now);
            }
            return;
        }
        match method {
            m if m == Method::OPTIONS => {
                let mut r = build_response(&msg, 200, "OK", None);
                r.headers.insert(
                    Name::ALLOW,
                    BytesStr::from_static("INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"),
                );
                r.headers
                    .insert(Name::ACCEPT, BytesStr::from_static("application/sdp"));
                self.respond(tx, r, now);
            }
            m if m == Method::INVITE => self.on_invite(tx, msg, from, now),
            m if m == Method::BYE => self.respond(
                tx,
                build_response(&msg, 481, "Call/Transaction Does Not Exist", None),
                now,
            ),
            _ => self.respond(
                tx,
                build_response(&msg, 405, "Method Not Allowed", None),
                now,
            ),
        }
    }

    /// Admission control for a new call: concurrent calls, calls per second in all and per
    /// source address. Refused calls get 503 with Retry-After.
    fn admit(&mut self, from: IpAddr, now: Duration) -> bool {
        if self.calls.len() >= self.calls_max {
            return false;
        }
        if self.cps_by_source.len() > 100_000 {
            // Bounded: idle sources are forgotten (a full bucket is the same as a new one).
            let rate = f64::from(self.cps_per_source_max.max(1));
            self.cps_by_source
                .retain(|_, b| now.saturating_sub(b.at).as_secs_f64() * rate + b.tokens < rate);
        }
        let per = self
            .cps_by_source
            .entry(from)
            .or_insert_with(|| Bucket::new(self.cps_per_source_max));
        per.take(now) && self.cps.take(now)
    }

    fn on_invite(&mut self, tx: TxId, msg: SipMessage, from: Peer, now: Duration) {
        let StartLine::Request { uri, .. } = &msg.start else {
            return;
        };
        if self.is_loop(tx, &msg) {
            self.stats
                .loops_detected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.respond(
                tx,
                build_response(&msg, 482, "Loop Detected", Some(&random_token(10))),
                now,
            );
            return;
        }
        if let Some(a) = self.auth.as_mut() {
            let ok = msg
                .header("Authorization")
                .is_some_and(|v| a.check(v, "INVITE", now));
            if !ok {
                let ch = a.challenge(now);
                let mut r = build_response(&msg, 401, "Unauthorized", Some(&random_token(10)));
                r.headers.insert(
                    Name::from(BytesStr::from_static("WWW-Authenticate")),
                    BytesStr::from(ch),
                );
                self.respond(tx, r, now);
                return;
            }
        }
        if !self.admit(from.addr.ip(), now) {
            self.stats
                .calls_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let r = service_unavailable(&msg, Some(&random_token(10)), "1");
            self.respond(tx, r, now);
            return;
        }
        let user_raw = uri.user().unwrap_or_default();
        let user = user_raw.to_ascii_lowercase();
        if let Some(b) = top_branch(&msg) {
            self.invites_by_branch.insert(b.clone(), tx);
            self.branch_of_invite.insert(tx, b);
        }
        self.pending_invites.insert(tx, msg.clone());
        let target = self
            .routes
            .iter()
            .find(|(p, _)| route_matches(p, &user_raw))
            .map(|(_, t)| t.clone())
            .or(match user.as_str() {
                "echo" => Some(RouteTarget::Echo),
                "hangup" => Some(RouteTarget::Hangup),
                _ => None,
            });
        let hangup = match target {
            None if self.apps => {
                self.app_call(tx, msg, from, &user_raw, now);
                return;
            }
            None => {
                self.respond(
                    tx,
                    build_response(&msg, 404, "Not Found", Some(&random_token(10))),
                    now,
                );
                return;
            }
            Some(RouteTarget::Sip {
                uri,
                addr,
                creds,
                codecs,
            }) => {
                self.b2bua_invite(tx, msg, from, (&uri, addr, creds, codecs), &user_raw, now);
                return;
            }
            Some(RouteTarget::Hangup) => true,
            Some(RouteTarget::Echo) => false,
        };
        let tag = random_token(12);
        let policy = self.codecs.clone();
        let Some(offer) = self.read_offer(tx, &msg, &tag, &policy, now) else {
            return;
        };
        // Our answer (or, for a delayed offer, our offer) before any media is set up.
        let (sdp, ack_answer) = match &offer {
            Some(o) => match Sdp::answer_to(o, self.advertise, 0, |_| true) {
                Ok(a) => (a, None),
                Err(e) => {
                    self.refuse_offer(tx, &msg, &tag, &e, now);
                    return;
                }
            },
            None => {
                let ours = Sdp::our_offer(self.advertise, 0);
                (ours.clone(), Some(ours))
            }
        };
        let Some((info, dialog)) = self.anchor(tx, &msg, &tag, Anchor::Echo, offer.as_ref(), now)
        else {
            return;
        };
        let mut sdp = sdp;
        sdp.anchor_to(self.advertise, info.legs[0].local.port());
        let sdp = sdp.to_bytes();
        let mut ok = build_response(&msg, 200, "OK", Some(&tag));
        ok.headers.insert(
            Name::CONTACT,
            BytesStr::from(format!("<sip:{}@{}>", user, fmt_host(self.local))),
        );
        ok.headers
            .insert(Name::CONTENT_TYPE, BytesStr::from_static("application/sdp"));
        ok.body = sdp.clone();
        self.respond(tx, ok, now);
        self.stats
            .calls_answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.insert_call(Call {
            dialog,
            relay: Some(info.id),
            invite_tx: Some(tx),
            peer: from,
            hangup_after_ack: hangup,
            answer: sdp,
            b: None,
            origin: None,
            unanswered: false,
            side: Side::A,
            owns_relay: true,
            ack_answer,
            reinvite_ack: None,
            answered_at: Some(now),
        });
    }

    /// A merged request (RFC 3261 §8.2.2.2: the Call-ID, From tag and CSeq of an INVITE
    /// still in progress, on another branch) or one of our own outbound INVITEs come back
    /// (a dial plan or a peer routing it to us again). Otherwise the INVITE's key is recorded.
    fn is_loop(&mut self, tx: TxId, msg: &SipMessage) -> bool {
        let call_id = msg.header("Call-ID").unwrap_or_default().trim().to_string();
        if self.b_call_ids.contains(&call_id) {
            return true;
        }
        let from_tag = msg
            .header("From")
            .and_then(|f| voxedge_sip_core::uri::header_param(f, "tag"))
            .unwrap_or_default()
            .to_string();
        let key = (call_id, from_tag, cseq_number(msg));
        match self.invite_keys.get(&key) {
            Some(other) if *other != tx => true,
            _ => {
                self.invite_keys.insert(key.clone(), tx);
                self.key_of_invite.insert(tx, key);
                false
            }
        }
    }

    /// The SDP offer of a new call's INVITE, cut to `policy`: `Some(None)` for a delayed
    /// offer (no SDP); `None` after answering 488 to an unusable one.
    fn read_offer(
        &mut self,
        tx: TxId,
        msg: &SipMessage,
        tag: &str,
        policy: &CodecPolicy,
        now: Duration,
    ) -> Option<Option<Sdp>> {
        let Some(parsed) = sdp_of(msg) else {
            return Some(None);
        };
        let parsed = parsed.and_then(|mut o| o.restrict(policy).map(|()| o));
        match parsed {
            Ok(o) => Some(Some(o)),
            Err(e) => {
                self.refuse_offer(tx, msg, tag, &e, now);
                None
            }
        }
    }

    /// 488 with the reason in a Warning header (RFC 3261 §20.43, code 305: incompatible
    /// media format; 399 for the rest).
    fn refuse_offer(&mut self, tx: TxId, msg: &SipMessage, tag: &str, e: &SdpError, now: Duration) {
        self.stats
            .sdp_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut r = build_response(msg, 488, "Not Acceptable Here", Some(tag));
        let code = if *e == SdpError::NoCommonCodec {
            305
        } else {
            399
        };
        let text = e.to_string().replace(['"', '\\'], "'");
        r.headers.insert(
            Name::from(BytesStr::from_static("Warning")),
            BytesStr::from(format!("{code} voxedge \"{text}\"")),
        );
        self.respond(tx, r, now);
    }

    /// Media for a new call: a relay whose leg A points at the caller's `offer` (latched
    /// for a delayed offer; 503 when the dataplane has no room) and the caller's dialog (400
    /// when the INVITE lacks what a dialog needs). On failure the response is sent and
    /// nothing is kept.
    fn anchor(
        &mut self,
        tx: TxId,
        msg: &SipMessage,
        tag: &str,
        kind: Anchor,
        offer: Option<&Sdp>,
        now: Duration,
    ) -> Option<(RelayInfo, Dialog)> {
        let mut req = RelayRequest {
            echo: kind == Anchor::Echo,
            ..RelayRequest::with_remotes(offer.and_then(Sdp::remote), None)
        };
        // A call that starts as fax: the caller's leg carries UDPTL from the first datagram.
        req.legs[0].opaque = offer.is_some_and(Sdp::is_fax);
        let created = if kind == Anchor::Routed {
            self.dp.create_relay_queued(req).map(|(info, q)| {
                self.queued.push(q);
                info
            })
        } else {
            self.dp.create_relay(req)
        };
        let info = match created {
            Ok(i) => i,
            Err(e) => {
                self.note_no_media(&e, now);
                self.respond(tx, service_unavailable(msg, Some(tag), NO_MEDIA_RETRY), now);
                return None;
            }
        };
        match Dialog::uas(msg, tag, DialogState::Early) {
            Ok(d) => {
                if offer.is_some_and(Sdp::expects_silence) {
                    self.quiet.insert((info.id, Side::A));
                }
                Some((info, d))
            }
            Err(e) => {
                self.delete_relay(info.id);
                self.respond(
                    tx,
                    build_response(msg, 400, &format!("Bad Request ({e})"), Some(tag)),
                    now,
                );
                None
            }
        }
    }

    /// Routes an INVITE to a SIP target: media anchored in a relay (leg A the caller, leg B the
    /// callee), a new INVITE towards the target with our SDP.
    #[allow(clippy::too_many_arguments)]
    fn b2bua_invite(
        &mut self,
        tx: TxId,
        msg: SipMessage,
        from: Peer,
        (target_uri, addr, creds, codecs): (
            &str,
            SocketAddr,
            Option<(String, String)>,
            CodecPolicy,
        ),
        user: &str,
        now: Duration,
    ) {
        let tag = random_token(12);
        let Some(offer) = self.read_offer(tx, &msg, &tag, &codecs, now) else {
            return;
        };
        let Some((info, dialog)) = self.anchor(tx, &msg, &tag, Anchor::Routed, offer.as_ref(), now)
        else {
            return;
        };
        let mf = msg
            .headers
            .get::<MaxForwards>(Name::MAX_FORWARDS)
            .map_or(70, |m| m.0)
            .saturating_sub(1);
        let from_user = msg
            .header("From")
            .and_then(voxedge_sip_core::uri::header_uri)
            .and_then(|u| voxedge_sip_core::AnyUri::parse(u).ok())
            .and_then(|u| u.user())
            .unwrap_or_else(|| "anonymous".into());
        let local = fmt_host(self.local);
        let ruri = if target_uri.contains('@') {
            target_uri.to_string()
        } else {
            format!("sip:{user}@{}", &target_uri[4..])
        };
        let b_port = info.legs[1].local.port();
        // A delayed offer goes on without SDP: the callee offers in its 2xx.
        let b_offer = offer.map(|mut o| {
            o.anchor_to(self.advertise, b_port);
            o
        });
        let body = b_offer.as_ref().map(Sdp::to_bytes).unwrap_or_default();
        let call_id = format!("{}@{}", random_token(20), self.advertise);
        let mut text = format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\nMax-Forwards: {mf}\r\n\
From: <sip:{from_user}@{local}>;tag={}\r\nTo: <{ruri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:voxedge@{local}>\r\n",
            random_token(16),
            random_token(12),
        );
        for pai in msg.header_all("P-Asserted-Identity") {
            text.push_str(&format!("P-Asserted-Identity: {pai}\r\n"));
        }
        if !body.is_empty() {
            text.push_str("Content-Type: application/sdp\r\n");
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut raw = text.into_bytes();
        raw.extend_from_slice(&body);
        let Ok(b_invite) = SipMessage::parse(&raw, &self.limits) else {
            self.delete_relay(info.id);
            self.respond(
                tx,
                build_response(&msg, 500, "Server Internal Error", Some(&tag)),
                now,
            );
            return;
        };
        let peer = Peer {
            addr,
            reliable: false,
        };
        let btx = match self.tx.send_request(b_invite.clone(), peer, now) {
            Ok(t) => t,
            Err(_) => {
                self.delete_relay(info.id);
                self.respond(
                    tx,
                    build_response(&msg, 500, "Server Internal Error", Some(&tag)),
                    now,
                );
                return;
            }
        };
        let a_id = dialog.id.clone();
        self.b_by_tx.insert(btx, a_id.clone());
        self.b_call_ids.insert(call_id);
        self.insert_call(Call {
            dialog,
            relay: Some(info.id),
            invite_tx: Some(tx),
            peer: from,
            hangup_after_ack: false,
            answer: Bytes::new(),
            b: Some(BLeg {
                invite: b_invite,
                tx: btx,
                peer,
                dialog: None,
                offer: b_offer,
                codecs,
                answered: false,
                ack: None,
                a_port: info.legs[0].local.port(),
                b_port,
                creds,
                auth_tried: false,
            }),
            origin: None,
            unanswered: false,
            side: Side::A,
            owns_relay: true,
            ack_answer: None,
            reinvite_ack: None,
            answered_at: None,
        });
    }

    /// A response on an outbound INVITE: provisional and final responses are relayed to the
    /// caller with SDP cut to what was offered and rewritten to our ports; a 2xx is
    /// acknowledged towards the callee (for a delayed offer, once the caller's ACK brings the
    /// answer). A 2xx whose SDP is unusable ends the call: ACK and BYE to the callee, 488 to
    /// the caller.
    fn on_b_response(&mut self, btx: TxId, msg: SipMessage, now: Duration) {
        let Some(a_id) = self.b_by_tx.get(&btx).cloned() else {
            return;
        };
        let code = msg.status().unwrap_or(0);
        let advertise = self.advertise;
        let local = fmt_host(self.local);
        let Some(call) = self.calls.get_mut(&a_id) else {
            return;
        };
        let (Some(relay), Some(b)) = (call.relay, call.b.as_mut()) else {
            return;
        };
        let Some(inv_a) = self
            .pending_invites
            .get(&call.invite_tx.unwrap_or(TxId(0)))
            .cloned()
        else {
            // The caller's INVITE is already answered (a 2xx retransmission): the same ACK
            // again (none yet while a delayed offer's answer is awaited).
            if (200..300).contains(&code) {
                if let Some(ack) = b.ack.clone() {
                    let peer = b.peer;
                    self.send_raw(peer, ack);
                }
            }
            return;
        };
        // The callee's SDP: an answer cut to our offer, or (delayed offer) its own offer cut
        // to the route's codecs.
        let stats = &self.stats;
        let delayed = b.offer.is_none();
        let sdp = sdp_of(&msg).map(|parsed| {
            parsed.and_then(|mut s| {
                match b.offer.as_ref() {
                    Some(offer) => cut_answer(&mut s, offer, stats),
                    None => s.restrict(&b.codecs)?,
                }
                Ok(s)
            })
        });
        let a_port = b.a_port;
        let a_tx = call.invite_tx.unwrap_or(TxId(0));
        let tag = call.dialog.id.local_tag.clone();
        // A 2xx must bring usable SDP when it answers a delayed offer or brings any at all;
        // a provisional response goes on without an SDP we cannot use.
        let unusable = match &sdp {
            _ if !(200..300).contains(&code) => None,
            Some(Err(e)) => Some(e.clone()),
            None if delayed => Some(SdpError::NoMedia),
            _ => None,
        };
        if let Some(e) = unusable {
            tracing::info!(error = %e, "callee's SDP refused; call ended");
            self.b_answered(&a_id, &msg);
            self.ack_b(&a_id, None);
            self.bye_b(&a_id, now, None);
            self.refuse_offer(a_tx, &inv_a, &tag, &e, now);
            self.end_call(&a_id, false);
            return;
        }
        let mut resp = build_response(&inv_a, code, status_reason(&msg), Some(&tag));
        let mut relayed_sdp = None;
        if let Some(Ok(mut s)) = sdp {
            follow_media(&self.dp, &mut self.quiet, relay, Side::B, &s);
            s.anchor_to(advertise, a_port);
            resp.headers
                .insert(Name::CONTENT_TYPE, BytesStr::from_static("application/sdp"));
            resp.body = s.to_bytes();
            relayed_sdp = Some(s);
        }
        let Some(b) = self.calls.get_mut(&a_id).and_then(|c| c.b.as_mut()) else {
            return;
        };
        if (code == 401 || code == 407) && !b.auth_tried {
            let again = b
                .creds
                .as_ref()
                .and_then(|creds| authorized_again(&b.invite, &msg, creds, &local));
            if let Some(again) = again {
                let peer = b.peer;
                b.auth_tried = true;
                b.invite = again.clone();
                if let Ok(ntx) = self.tx.send_request(again, peer, now) {
                    if let Some(b) = self.calls.get_mut(&a_id).and_then(|c| c.b.as_mut()) {
                        b.tx = ntx;
                    }
                    self.b_by_tx.remove(&btx);
                    self.b_by_tx.insert(ntx, a_id);
                    return;
                }
            }
        }
        match code {
            100 => {}
            101..=199 => {
                resp.headers.insert(
                    Name::CONTACT,
                    BytesStr::from(format!("<sip:voxedge@{local}>")),
                );
                self.respond(a_tx, resp, now);
            }
            200..=299 => {
                if !self.b_answered(&a_id, &msg) {
                    return;
                }
                if let Some(call) = self.calls.get_mut(&a_id) {
                    if !resp.body.is_empty() {
                        call.answer = resp.body.clone();
                    }
                    if delayed {
                        call.ack_answer = relayed_sdp;
                    }
                }
                if !delayed {
                    self.ack_b(&a_id, None);
                }
                resp.headers.insert(
                    Name::CONTACT,
                    BytesStr::from(format!("<sip:voxedge@{local}>")),
                );
                self.stats
                    .calls_answered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.respond(a_tx, resp, now);
            }
            _ => {
                // The callee refused (486, 603, 487 after CANCEL, …): the caller gets the same.
                self.respond(a_tx, resp, now);
                self.end_call(&a_id, false);
            }
        }
    }

    /// The callee's 2xx: its dialog. False when the 2xx cannot make one.
    fn b_answered(&mut self, a_id: &DialogId, msg: &SipMessage) -> bool {
        let now = self.now();
        let Some(call) = self.calls.get_mut(a_id) else {
            return false;
        };
        let Some(b) = call.b.as_mut() else {
            return false;
        };
        let Ok(d) = Dialog::uac(&b.invite, msg) else {
            return false;
        };
        self.b_dialogs.insert(d.id.clone(), a_id.clone());
        b.dialog = Some(d);
        b.answered = true;
        call.answered_at = Some(now);
        true
    }

    /// ACKs the callee's 2xx (with `sdp`, a delayed offer's answer) and keeps the ACK for
    /// the 2xx's retransmissions.
    fn ack_b(&mut self, a_id: &DialogId, sdp: Option<Bytes>) {
        let local = fmt_host(self.local);
        let Some(b) = self.calls.get_mut(a_id).and_then(|c| c.b.as_mut()) else {
            return;
        };
        let cseq = cseq_number(&b.invite);
        let Some(d) = b.dialog.as_mut() else {
            return;
        };
        let branch = format!("z9hG4bK{}", random_token(16));
        let Ok(mut ack) = d.request(
            Method::ACK,
            &format!("UDP {local}"),
            &branch,
            None,
            Some(cseq),
        ) else {
            return;
        };
        if let Some(body) = sdp {
            ack.headers
                .insert(Name::CONTENT_TYPE, BytesStr::from_static("application/sdp"));
            ack.body = body;
        }
        let data = ack.to_bytes();
        b.ack = Some(data.clone());
        let peer = b.peer;
        self.send_raw(peer, data);
    }

    /// The caller's ACK of our 2xx. With a delayed offer it carries the answer: cut to the
    /// offer, it points leg A at the caller and (routed calls) goes on in the callee's ACK.
    /// An ACK without a usable answer ends the call.
    fn on_ack(&mut self, msg: &SipMessage, now: Duration) {
        let Some(id) = request_dialog_id(msg) else {
            return;
        };
        if let Some(a_id) = self.b_dialogs.get(&id).cloned() {
            // The callee's ACK: only a re-INVITE of its own without SDP needs it.
            self.ack_reinvite(&a_id, false, msg);
            return;
        }
        if self
            .calls
            .get(&id)
            .and_then(|c| c.reinvite_ack.as_ref())
            .is_some_and(|p| p.from_a)
        {
            self.ack_reinvite(&id, true, msg);
            return;
        }
        let advertise = self.advertise;
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        c.dialog.state = DialogState::Confirmed;
        if c.hangup_after_ack {
            self.end_call(&id, true);
            return;
        }
        let Some(offer) = c.ack_answer.take() else {
            return;
        };
        let answer = sdp_of(msg).unwrap_or(Err(SdpError::NoMedia)).map(|mut a| {
            cut_answer(&mut a, &offer, &self.stats);
            a
        });
        let mut answer = match answer {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(error = %e, "no usable answer in the caller's ACK; call ended");
                if c.b.is_some() {
                    self.ack_b(&id, None);
                    self.bye_b(&id, now, None);
                }
                self.end_call(&id, true);
                return;
            }
        };
        if let Some(relay) = c.relay {
            follow_media(&self.dp, &mut self.quiet, relay, c.side, &answer);
        }
        if let Some(b_port) = c.b.as_ref().map(|b| b.b_port) {
            answer.anchor_to(advertise, b_port);
            self.ack_b(&id, Some(answer.to_bytes()));
        }
    }

    fn in_dialog(&mut self, tx: TxId, id: DialogId, msg: SipMessage, now: Duration) {
        let Some(call) = self.calls.get_mut(&id) else {
            self.respond(
                tx,
                build_response(&msg, 481, "Call/Transaction Does Not Exist", None),
                now,
            );
            return;
        };
        if let Err(e) = call.dialog.on_request(&msg) {
            self.respond(
                tx,
                build_response(&msg, 500, &format!("Server Internal Error ({e})"), None),
                now,
            );
            return;
        }
        let method = msg.method().cloned().unwrap_or(Method::INFO);
        if let Some(sid) = call.origin.clone() {
            let event = match method.to_string().as_str() {
                "BYE" => Some("bye"),
                "INVITE" => Some("reinvite"),
                "UPDATE" => Some("update"),
                "INFO" => Some("info"),
                "REFER" => Some("refer"),
                _ => None,
            };
            if let Some(event) = event {
                self.report(CallUpdate::Sip(Box::new(SipEvent::of(&sid, event, &msg))));
            }
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if method == Method::BYE {
            self.respond(tx, build_response(&msg, 200, "OK", None), now);
            self.bye_b(&id, now, None);
            self.end_call(&id, false);
            return;
        }
        let b_answered = call.b.as_ref().is_some_and(|b| b.dialog.is_some());
        if b_answered
            && (method == Method::INVITE || method == Method::UPDATE || method == Method::INFO)
        {
            self.relay_in_dialog(tx, id, msg, true, now);
            return;
        }
        if method == Method::INVITE || method == Method::UPDATE {
            // Re-INVITE / UPDATE (hold, resume, new address): follow the new media address
            // and answer with the call's codecs, the offer's direction mirrored.
            let mut ok = build_response(&msg, 200, "OK", None);
            if let Some(parsed) = sdp_of(&msg) {
                let answer = parsed.and_then(|offer| {
                    let current = Sdp::parse(&call.answer)?;
                    let codecs = current.formats();
                    let mut a = Sdp::answer_to(&offer, self.advertise, current.port(), |f| {
                        codecs.iter().any(|c| c.pt == f.pt)
                    })?;
                    a.follow_version(&current);
                    Ok((offer, a))
                });
                let (offer, answer) = match answer {
                    Ok(x) => x,
                    Err(e) => {
                        let tag = call.dialog.id.local_tag.clone();
                        self.refuse_offer(tx, &msg, &tag, &e, now);
                        return;
                    }
                };
                if let Some(relay) = call.relay {
                    follow_media(&self.dp, &mut self.quiet, relay, call.side, &offer);
                }
                call.answer = answer.to_bytes();
                ok.headers
                    .insert(Name::CONTENT_TYPE, BytesStr::from_static("application/sdp"));
                ok.body = call.answer.clone();
            }
            ok.headers.insert(
                Name::CONTACT,
                BytesStr::from(format!("<sip:voxedge@{}>", fmt_host(self.local))),
            );
            self.respond(tx, ok, now);
            return;
        }
        // INFO and the rest: acknowledged.
        self.respond(tx, build_response(&msg, 200, "OK", None), now);
    }

    /// A request from the callee inside the outbound dialog.
    fn in_b_dialog(&mut self, tx: TxId, a_id: DialogId, msg: SipMessage, now: Duration) {
        let method = msg.method().cloned().unwrap_or(Method::INFO);
        let Some(call) = self.calls.get_mut(&a_id) else {
            self.respond(
                tx,
                build_response(&msg, 481, "Call/Transaction Does Not Exist", None),
                now,
            );
            return;
        };
        if let Some(d) = call.b.as_mut().and_then(|b| b.dialog.as_mut()) {
            if let Err(e) = d.on_request(&msg) {
                self.respond(
                    tx,
                    build_response(&msg, 500, &format!("Server Internal Error ({e})"), None),
                    now,
                );
                return;
            }
        }
        if method == Method::BYE {
            self.respond(tx, build_response(&msg, 200, "OK", None), now);
            self.end_call(&a_id, true);
            return;
        }
        if method == Method::INVITE || method == Method::UPDATE || method == Method::INFO {
            self.relay_in_dialog(tx, a_id, msg, false, now);
            return;
        }
        self.respond(tx, build_response(&msg, 200, "OK", None), now);
    }

    /// Relays a re-INVITE, UPDATE or INFO to the other leg (SDP rewritten to our port on that
    /// side, the sender's new media address applied to its leg); the answer comes back in
    /// [`Core::on_relayed_response`].
    fn relay_in_dialog(
        &mut self,
        tx: TxId,
        a_id: DialogId,
        msg: SipMessage,
        from_a: bool,
        now: Duration,
    ) {
        let local = fmt_host(self.local);
        let advertise = self.advertise;
        let Some(call) = self.calls.get_mut(&a_id) else {
            return;
        };
        let method = msg.method().cloned().unwrap_or(Method::INFO);
        let (Some(relay), Some(b)) = (call.relay, call.b.as_mut()) else {
            return;
        };
        let (side, out_port) = if from_a {
            (Side::A, b.b_port)
        } else {
            (Side::B, b.a_port)
        };
        // A new offer: the sender's media address applied, the rest rewritten for the other
        // leg (and kept, to cut the answer to it); an unusable one is refused here.
        let offer = match sdp_of(&msg) {
            Some(Ok(mut o)) => {
                follow_media(&self.dp, &mut self.quiet, relay, side, &o);
                o.anchor_to(advertise, out_port);
                Some(o)
            }
            Some(Err(e)) => {
                let tag = request_dialog_id(&msg)
                    .map(|d| d.local_tag)
                    .unwrap_or_default();
                self.refuse_offer(tx, &msg, &tag, &e, now);
                return;
            }
            None => None,
        };
        let Some(b) = self.calls.get_mut(&a_id).and_then(|c| c.b.as_mut()) else {
            return;
        };
        let peer = b.peer;
        let (dialog, peer) = if from_a {
            match b.dialog.as_mut() {
                Some(d) => (d, peer),
                None => return,
            }
        } else {
            let Some(call) = self.calls.get_mut(&a_id) else {
                return;
            };
            (&mut call.dialog, call.peer)
        };
        let transport = if peer.reliable { "TCP" } else { "UDP" };
        let branch = format!("z9hG4bK{}", random_token(16));
        let contact = format!("sip:voxedge@{local}");
        let Ok(mut out) = dialog.request(
            method.clone(),
            &format!("{transport} {local}"),
            &branch,
            (method != Method::INFO).then_some(contact.as_str()),
            None,
        ) else {
            return;
        };
        if let Some(o) = offer.as_ref() {
            out.headers
                .insert(Name::CONTENT_TYPE, BytesStr::from_static("application/sdp"));
            out.body = o.to_bytes();
        } else if !msg.body.is_empty() {
            if let Some(ct) = msg.header("Content-Type") {
                out.headers
                    .insert(Name::CONTENT_TYPE, BytesStr::from(ct.to_string()));
            }
            out.body = msg.body.clone();
        }
        let to = target_addr(&dialog.remote_target).unwrap_or(peer.addr);
        match self.tx.send_request(
            out,
            Peer {
                addr: to,
                reliable: peer.reliable,
            },
            now,
        ) {
            Ok(ctx) => {
                self.relayed.insert(
                    ctx,
                    Relayed {
                        call: a_id,
                        stx: tx,
                        req: msg,
                        from_a,
                        offer,
                        answered: false,
                        ack: None,
                    },
                );
            }
            Err(_) => self.respond(
                tx,
                build_response(&msg, 500, "Server Internal Error", None),
                now,
            ),
        }
    }

    /// The other leg's final answer to a relayed in-dialog request goes back to the sender
    /// (SDP rewritten to our port on the sender's side; a 2xx to a re-INVITE is ACKed).
    fn on_relayed_response(&mut self, ctx: TxId, msg: SipMessage, now: Duration) {
        let code = msg.status().unwrap_or(0);
        if code < 200 {
            return;
        }
        if let Some(r) = self.relayed.get(&ctx).filter(|r| r.answered) {
            // A retransmission of the 2xx (RFC 6026 passes each one up): our ACK was lost.
            if (200..300).contains(&code) {
                if let Some((peer, ack)) = r.ack.clone() {
                    self.send_raw(peer, ack);
                }
            }
            return;
        }
        let Some(Relayed {
            call: a_id,
            stx,
            req,
            from_a,
            offer,
            ..
        }) = self.relayed.remove(&ctx)
        else {
            return;
        };
        let local = fmt_host(self.local);
        let advertise = self.advertise;
        let Some(call) = self.calls.get_mut(&a_id) else {
            return;
        };
        let Some(b) = call.b.as_mut() else {
            return;
        };
        let (relay, back_port, answer_side) = if from_a {
            (call.relay, b.a_port, Side::B)
        } else {
            (call.relay, b.b_port, Side::A)
        };
        let reinvite_ok = (200..300).contains(&code) && req.method() == Some(&Method::INVITE);
        let mut ack = None;
        if reinvite_ok {
            let dialog = if from_a {
                b.dialog.as_mut()
            } else {
                Some(&mut call.dialog)
            };
            if let Some(d) = dialog {
                d.on_refresh_response(&msg);
            }
            let cseq = cseq_number(&msg);
            // A re-INVITE without SDP answered with an offer: the answer comes in the
            // sender's ACK, and ours goes on with it (see `ack_reinvite`).
            let delayed_offer = (offer.is_none() && req.sdp().is_none())
                .then(|| sdp_of(&msg).and_then(Result::ok))
                .flatten();
            if let Some(o) = delayed_offer {
                call.reinvite_ack = Some(ReinviteAck {
                    from_a,
                    cseq,
                    sender_cseq: cseq_number(&req),
                    offer: o,
                    ctx,
                });
            } else {
                // ACK the 2xx on the leg we sent the re-INVITE on.
                ack = leg_ack(call, from_a, &local, cseq, None);
                if let Some((peer, bytes)) = ack.clone() {
                    self.send_raw(peer, bytes);
                }
            }
        }
        let mut resp = build_response(&req, code, status_reason(&msg), None);
        if let Some(Ok(mut answer)) = sdp_of(&msg) {
            if let Some(o) = offer.as_ref() {
                cut_answer(&mut answer, o, &self.stats);
            }
            if let Some(r) = relay {
                follow_media(&self.dp, &mut self.quiet, r, answer_side, &answer);
            }
            answer.anchor_to(advertise, back_port);
            resp.headers
                .insert(Name::CONTENT_TYPE, BytesStr::from_static("application/sdp"));
            resp.body = answer.to_bytes();
        }
        if req.method() != Some(&Method::INFO) {
            resp.headers.insert(
                Name::CONTACT,
                BytesStr::from(format!("<sip:voxedge@{local}>")),
            );
        }
        self.respond(stx, resp, now);
        if reinvite_ok {
            // Kept until the transaction ends, for the 2xx's retransmissions.
            self.relayed.insert(
                ctx,
                Relayed {
                    call: a_id,
                    stx,
                    req,
                    from_a,
                    offer,
                    answered: true,
                    ack,
                },
            );
        }
    }

    /// The ACK of a re-INVITE's sender when that re-INVITE had no SDP and the other leg's 2xx
    /// offered (see [`ReinviteAck`]): the answer it brings, cut to the offer, points the
    /// sender's leg at its media and goes on in our ACK of the other leg's 2xx. An ACK without
    /// a usable answer is passed on without one (the offerer's dialog rules then apply).
    fn ack_reinvite(&mut self, a_id: &DialogId, from_a: bool, msg: &SipMessage) {
        let local = fmt_host(self.local);
        let advertise = self.advertise;
        let Some(call) = self.calls.get_mut(a_id) else {
            return;
        };
        // Only the ACK of the re-INVITE that is waiting for one (not, say, a repeated ACK of
        // an earlier 2xx).
        let sender_cseq = cseq_number(msg);
        if call
            .reinvite_ack
            .as_ref()
            .map(|p| (p.from_a, p.sender_cseq))
            != Some((from_a, sender_cseq))
        {
            return;
        }
        let Some(pending) = call.reinvite_ack.take() else {
            return;
        };
        let Some(b) = call.b.as_mut() else {
            return;
        };
        let (side, out_port) = if from_a {
            (Side::A, b.b_port)
        } else {
            (Side::B, b.a_port)
        };
        let body = match sdp_of(msg) {
            Some(Ok(mut answer)) => {
                cut_answer(&mut answer, &pending.offer, &self.stats);
                if let Some(r) = call.relay {
                    follow_media(&self.dp, &mut self.quiet, r, side, &answer);
                }
                answer.anchor_to(advertise, out_port);
                Some(answer.to_bytes())
            }
            other => {
                tracing::info!(
                    error = ?other.and_then(Result::err),
                    "the ACK of a re-INVITE without SDP brought no usable answer; passed on without one"
                );
                None
            }
        };
        if let Some((peer, ack)) = leg_ack(call, from_a, &local, pending.cseq, body) {
            self.send_raw(peer, ack.clone());
            // Kept for the 2xx's retransmissions while its transaction lasts.
            if let Some(r) = self.relayed.get_mut(&pending.ctx) {
                r.ack = Some((peer, ack));
            }
        }
    }

    /// Sends BYE on the outbound dialog of a routed call, if it was answered, with a
    /// `Reason` header when given.
    fn bye_b(&mut self, a_id: &DialogId, now: Duration, reason: Option<&'static str>) {
        let via = format!("UDP {}", fmt_host(self.local));
        let Some(b) = self.calls.get_mut(a_id).and_then(|c| c.b.as_mut()) else {
            return;
        };
        let peer = b.peer;
        let Some(d) = b.dialog.as_mut() else {
            return;
        };
        self.b_dialogs.remove(&d.id);
        if let Some((bye, to)) = bye_in(d, &via, peer, reason) {
            let _ = self.tx.send_request(bye, to, now);
        }
    }

    /// Hangs up both legs of a call (the callee's only if routed and answered), with a
    /// `Reason` header when given, and ends it.
    fn hang_up(&mut self, id: &DialogId, now: Duration, reason: Option<&'static str>) {
        self.bye_b(id, now, reason);
        self.end_call_with(id, true, reason);
    }

    /// CANCELs the outbound INVITE if it has no final response yet (RFC 3261 §9.1).
    fn cancel_b(&mut self, a_id: &DialogId, now: Duration) {
        let Some(b) = self.calls.get(a_id).and_then(|c| c.b.as_ref()) else {
            return;
        };
        if b.answered {
            return;
        }
        let peer = b.peer;
        if let Some(cancel) = cancel_for(&b.invite) {
            let _ = self.tx.send_request(cancel, peer, now);
        }
    }

    fn report_end(&self, sid: &str, status: EndStatus, sip_code: Option<u16>) {
        if let Some(u) = &self.updates {
            let _ = u.send(CallUpdate::Ended {
                sid: sid.to_string(),
                status,
                sip_code,
            });
        }
    }

    fn report(&self, u: CallUpdate) {
        if let Some(tx) = &self.updates {
            let _ = tx.send(u);
        }
    }

    /// Places a call for the API: media in an echo relay (the built-in test instructions: the
    /// callee hears itself) and an INVITE with our offer.
    fn originate(&mut self, o: Originate, now: Duration) {
        if let Some(status) = self.cancel_early.remove(&o.sid) {
            self.report_end(&o.sid, status, None);
            return;
        }
        let created = match o.bridge {
            // A <Dial> leg: leg B of the parent's relay, offered the caller's codec only.
            Some(b) => self
                .dp
                .relay(b.relay)
                .map(|info| {
                    let port = info.legs[1].local.port();
                    let sdp =
                        Sdp::offer_of(self.advertise, port, &codec_formats(b.codec, b.dtmf_pt))
                            .to_bytes();
                    (info, sdp)
                })
                .ok_or_else(|| "the dialling call has ended".to_string()),
            None => self
                .dp
                .create_relay(RelayRequest {
                    echo: !o.instructions,
                    worker: o.worker,
                    ..RelayRequest::with_remotes(None, None)
                })
                .map(|info| {
                    let sdp = Sdp::our_offer(self.advertise, info.legs[0].local.port()).to_bytes();
                    (info, sdp)
                })
                .map_err(|e| e.to_string()),
        };
        let (info, offer) = match created {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(sid = %o.sid, error = %e, "no media for the placed call");
                self.report_end(&o.sid, EndStatus::Failed, None);
                return;
            }
        };
        let bridge = o.bridge.is_some();
        let local = fmt_host(self.local);
        let user: String = o
            .from_user
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()".contains(*c))
            .take(64)
            .collect();
        let user = if user.is_empty() {
            "voxedge".into()
        } else {
            user
        };
        let text = format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\nMax-Forwards: 70\r\n\
From: <sip:{user}@{local}>;tag={}\r\nTo: <{uri}>\r\nCall-ID: {}@{}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:voxedge@{local}>\r\nX-Call-Sid: {}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
            random_token(16),
            random_token(12),
            random_token(20),
            self.advertise,
            o.sid,
            offer.len(),
            uri = o.target.uri,
        );
        let mut raw = text.into_bytes();
        raw.extend_from_slice(&offer);
        let peer = Peer {
            addr: o.target.addr,
            reliable: false,
        };
        let sent = SipMessage::parse(&raw, &self.limits)
            .ok()
            .and_then(|inv| Some((inv.clone(), self.tx.send_request(inv, peer, now).ok()?)));
        let Some((invite, tx)) = sent else {
            if !bridge {
                self.delete_relay(info.id);
            }
            tracing::warn!(sid = %o.sid, uri = %o.target.uri, "cannot build or send the INVITE");
            self.report_end(&o.sid, EndStatus::Failed, None);
            return;
        };
        if o.instructions && !bridge {
            let _ = self.dp.update_leg_nowait(
                info.id,
                Side::A,
                voxedge_dataplane::command::LegUpdate {
                    blocked: Some(true),
                    ..Default::default()
                },
            );
        }
        self.origin_tx.insert(o.sid.clone(), tx);
        self.origins.insert(
            tx,
            Origin {
                sid: o.sid,
                invite,
                peer,
                relay: info.id,
                offer,
                creds: o.target.creds,
                auth_tried: false,
                ringing: false,
                cancel: None,
                cancel_sent: false,
                provisional: false,
                answered: false,
                instructions: o.instructions,
                bridge,
            },
        );
    }

    /// Ends a placed call: BYE when answered, CANCEL while it rings (the final response then
    /// reports `status`).
    fn hangup(&mut self, sid: &str, status: EndStatus, now: Duration) {
        if let Some(id) = self.origin_calls.get(sid).cloned() {
            if self.unanswered_app(sid).is_some() {
                self.reject_app(sid, 480, now);
                return;
            }
            // The ring timer of an answered call is late news, not a hang-up.
            if status != EndStatus::NoAnswer {
                self.end_call(&id, true);
            }
            return;
        }
        let Some(tx) = self.origin_tx.get(sid).copied() else {
            // Not handed to us yet (the API raced the dialler): end it when it arrives.
            if status != EndStatus::NoAnswer {
                if self.cancel_early.len() >= 10_000 {
                    self.cancel_early.clear();
                }
                self.cancel_early.insert(sid.to_string(), status);
            }
            return;
        };
        let Some(o) = self.origins.get_mut(&tx) else {
            return;
        };
        if o.answered || o.cancel.is_some() {
            return;
        }
        o.cancel = Some(status);
        // RFC 3261 §9.1: no CANCEL before a provisional response; it leaves on the first one.
        if o.provisional {
            o.cancel_sent = true;
            let peer = o.peer;
            if let Some(c) = cancel_for(&o.invite) {
                let _ = self.tx.send_request(c, peer, now);
            }
        }
    }

    /// A response to the INVITE of a placed call.
    fn on_origin_response(&mut self, tx: TxId, msg: SipMessage, now: Duration) {
        let code = msg.status().unwrap_or(0);
        let local = fmt_host(self.local);
        let Some(o) = self.origins.get_mut(&tx) else {
            return;
        };
        if o.answered {
            // A retransmitted 2xx: the ACK was lost; send it again.
            if (200..300).contains(&code) {
                let id = self.origin_calls.get(&o.sid).cloned();
                if let Some(call) = id.and_then(|id| self.calls.get_mut(&id)) {
                    let branch = format!("z9hG4bK{}", random_token(16));
                    if let Ok(ack) = call.dialog.request(
                        Method::ACK,
                        &format!("UDP {local}"),
                        &branch,
                        None,
                        Some(cseq_number(&o.invite)),
                    ) {
                        let peer = o.peer;
                        self.send_raw(peer, ack.to_bytes());
                    }
                }
            }
            return;
        }
        // A <Dial> leg's media is connected only if it wins (below); early media is not
        // passed to the caller (the engine plays ringback).
        if let (Some(Ok(sdp)), false) = (sdp_of(&msg), o.bridge) {
            follow_media(&self.dp, &mut self.quiet, o.relay, Side::A, &sdp);
        }
        if (100..200).contains(&code) {
            o.provisional = true;
            if o.cancel.is_some() && !o.cancel_sent {
                o.cancel_sent = true;
                let peer = o.peer;
                if let Some(c) = cancel_for(&o.invite) {
                    let _ = self.tx.send_request(c, peer, now);
                }
                return;
            }
        }
        // A challenge answered with credentials is not the call's outcome; an unanswerable one
        // (no credentials, or challenged again) is, and is reported as a failure.
        let retry_auth = (code == 401 || code == 407) && !o.auth_tried && o.creds.is_some();
        if code > 100 && !(200..300).contains(&code) && !retry_auth {
            let event = if code < 200 { "provisional" } else { "failure" };
            let sid = o.sid.clone();
            self.report(CallUpdate::Sip(Box::new(SipEvent::of(&sid, event, &msg))));
        }
        let Some(o) = self.origins.get_mut(&tx) else {
            return;
        };
        match code {
            100 => {}
            101..=199 => {
                if !o.ringing {
                    o.ringing = true;
                    let sid = o.sid.clone();
                    self.report(CallUpdate::Ringing { sid });
                }
            }
            200..=299 => {
                o.answered = true;
                let (sid, peer, relay, cancel) = (o.sid.clone(), o.peer, o.relay, o.cancel);
                let bridge = o.bridge;
                let media = (o.instructions && !bridge).then(|| {
                    let (codec, te) = sdp_of(&msg)
                        .and_then(Result::ok)
                        .and_then(|a| choose_g711(&a))
                        .unwrap_or((crate::voice::audio::Codec::Pcmu, None));
                    (relay, codec, te)
                });
                let answer = o.offer.clone();
                let cseq = cseq_number(&o.invite);
                let Ok(mut d) = Dialog::uac(&o.invite, &msg) else {
                    if !bridge {
                        self.delete_relay(relay);
                    }
                    self.report_end(&sid, EndStatus::Failed, Some(code));
                    return;
                };
                d.state = DialogState::Confirmed;
                let branch = format!("z9hG4bK{}", random_token(16));
                if let Ok(ack) = d.request(
                    Method::ACK,
                    &format!("UDP {local}"),
                    &branch,
                    None,
                    Some(cseq),
                ) {
                    self.send_raw(peer, ack.to_bytes());
                }
                let id = d.id.clone();
                self.insert_call(Call {
                    dialog: d,
                    relay: Some(relay),
                    invite_tx: None,
                    peer,
                    hangup_after_ack: false,
                    answer,
                    b: None,
                    origin: None,
                    unanswered: false,
                    side: if bridge { Side::B } else { Side::A },
                    owns_relay: !bridge,
                    ack_answer: None,
                    reinvite_ack: None,
                    answered_at: Some(now),
                });
                // A <Dial> leg answering after another target of the same dial won (or after
                // its parent ended) is hung up like a canceled one.
                let lost = bridge
                    && (self.bridged.get(&relay).is_some_and(|w| *w != sid)
                        || self.dp.relay(relay).is_none());
                let cancel = if lost {
                    Some(cancel.unwrap_or(EndStatus::Canceled))
                } else {
                    cancel
                };
                if let Some(status) = cancel {
                    // Answered while our CANCEL was on its way: hang up at once.
                    self.end_call(&id, true);
                    self.report_end(&sid, status, Some(code));
                    return;
                }
                if bridge {
                    self.bridged.insert(relay, sid.clone());
                    if let Some(Ok(sdp)) = sdp_of(&msg) {
                        follow_media(&self.dp, &mut self.quiet, relay, Side::B, &sdp);
                    }
                }
                if let Some(c) = self.calls.get_mut(&id) {
                    c.origin = Some(sid.clone());
                }
                self.origin_calls.insert(sid.clone(), id);
                self.stats
                    .calls_answered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.report(CallUpdate::Answered { sid, media });
            }
            401 | 407 if retry_auth => {
                let again = o
                    .creds
                    .as_ref()
                    .and_then(|creds| authorized_again(&o.invite, &msg, creds, &local));
                let Some(again) = again else {
                    self.finish_origin(tx, code);
                    return;
                };
                let peer = o.peer;
                match self.tx.send_request(again.clone(), peer, now) {
                    Ok(ntx) => {
                        if let Some(mut o) = self.origins.remove(&tx) {
                            o.auth_tried = true;
                            o.invite = again;
                            self.origin_tx.insert(o.sid.clone(), ntx);
                            self.origins.insert(ntx, o);
                        }
                    }
                    Err(_) => self.finish_origin(tx, code),
                }
            }
            _ => self.finish_origin(tx, code),
        }
    }

    /// A placed call refused or canceled: its media goes, its end is reported.
    fn finish_origin(&mut self, tx: TxId, code: u16) {
        let Some(o) = self.origins.remove(&tx) else {
            return;
        };
        self.origin_tx.remove(&o.sid);
        self.drop_origin_media(&o);
        let status = o.cancel.unwrap_or(match code {
            486 | 600 => EndStatus::Busy,
            408 | 480 | 487 => EndStatus::NoAnswer,
            _ => EndStatus::Failed,
        });
        self.report_end(&o.sid, status, Some(code));
    }

    /// An INVITE for the instruction engine: a G.711 offer is required (488 otherwise); media
    /// is anchored with the caller on leg A, whose own media is not forwarded anywhere (DTMF
    /// is still reported) until instructions connect it; the engine is told and answers or
    /// refuses through the handle.
    fn app_call(&mut self, tx: TxId, msg: SipMessage, from: Peer, to: &str, now: Duration) {
        let tag = random_token(12);
        let policy = self.codecs.clone();
        let Some(offer) = self.read_offer(tx, &msg, &tag, &policy, now) else {
            return;
        };
        let Some((codec, te, ack_answer)) = app_media(offer.as_ref()) else {
            // The engine plays and records G.711 only.
            self.refuse_offer(tx, &msg, &tag, &SdpError::NoCommonCodec, now);
            return;
        };
        let Some((info, dialog)) = self.anchor(tx, &msg, &tag, Anchor::Engine, offer.as_ref(), now)
        else {
            return;
        };
        self.hold_caller_leg(info.id, te);
        let sid = crate::secret::new_sid("CA");
        let from_user = msg.header("From").and_then(uri_user).unwrap_or_default();
        let forwarded_from = msg.header("Diversion").and_then(uri_user);
        let call_id = msg.header("Call-ID").unwrap_or_default().to_string();
        let sdp = app_answer_sdp(
            offer.as_ref(),
            self.advertise,
            info.legs[0].local.port(),
            codec,
            te,
        );
        self.origin_calls.insert(sid.clone(), dialog.id.clone());
        self.insert_call(Call {
            dialog,
            relay: Some(info.id),
            invite_tx: Some(tx),
            peer: from,
            hangup_after_ack: false,
            answer: sdp,
            b: None,
            origin: Some(sid.clone()),
            unanswered: true,
            side: Side::A,
            owns_relay: true,
            ack_answer,
            reinvite_ack: None,
            answered_at: None,
        });
        self.report(CallUpdate::Incoming(Box::new(IncomingCall {
            sid,
            relay: info.id,
            from: from_user,
            to: to.to_string(),
            call_id,
            forwarded_from,
            codec,
            dtmf_pt: te,
        })));
    }

    /// An engine call not answered yet: its dialog and its INVITE's server transaction.
    fn unanswered_app(&self, sid: &str) -> Option<(DialogId, Option<TxId>)> {
        let id = self.origin_calls.get(sid)?;
        let call = self.calls.get(id).filter(|c| c.unanswered)?;
        Some((id.clone(), call.invite_tx))
    }

    /// An engine call's caller leg: its media goes nowhere until instructions connect it;
    /// digits arrive with the caller's telephone-event payload type `te`.
    fn hold_caller_leg(&self, relay: RelayId, te: Option<u8>) {
        let _ = self.dp.update_leg_nowait(
            relay,
            Side::A,
            voxedge_dataplane::command::LegUpdate {
                blocked: Some(true),
                dtmf_pt: te,
                ..Default::default()
            },
        );
    }

    /// See [`SipHandle::rehome`]: leg A of a new relay on `worker` points at the caller like
    /// the old one did (blocked, with the caller's telephone-event type); the old relay goes.
    fn rehome_app(&mut self, sid: &str, worker: WorkerId) -> Option<RelayId> {
        let (id, tx) = self.unanswered_app(sid)?;
        let inv = self.pending_invites.get(&tx?)?;
        let offer = sdp_of(inv).transpose().ok()?;
        let (codec, te, _) = app_media(offer.as_ref())?;
        let old = self.calls.get(&id)?.relay?;
        if self.dp.relay(old)?.worker == worker {
            return Some(old);
        }
        let info = match self.dp.create_relay(RelayRequest {
            worker: Some(worker),
            ..RelayRequest::with_remotes(offer.as_ref().and_then(Sdp::remote), None)
        }) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(sid, worker = worker.0, error = %e, "the call's media cannot move to the conference's worker");
                return None;
            }
        };
        self.hold_caller_leg(info.id, te);
        let call = self.calls.get_mut(&id)?;
        let before = media_keys(call);
        call.relay = Some(info.id);
        let after = media_keys(call);
        for k in before {
            self.by_media.remove(&k);
        }
        for k in after {
            self.by_media.insert(k, id.clone());
        }
        call.answer = app_answer_sdp(
            offer.as_ref(),
            self.advertise,
            info.legs[0].local.port(),
            codec,
            te,
        );
        self.delete_relay(old);
        Some(info.id)
    }

    /// The engine answers an incoming call.
    fn answer_app(&mut self, sid: &str, now: Duration) {
        let Some((id, Some(tx))) = self.unanswered_app(sid) else {
            return;
        };
        let Some(inv) = self.pending_invites.get(&tx).cloned() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.unanswered = false;
        call.answered_at = Some(now);
        let mut ok = build_response(&inv, 200, "OK", Some(&id.local_tag));
        ok.headers.insert(
            Name::CONTACT,
            BytesStr::from(format!("<sip:voxedge@{}>", fmt_host(self.local))),
        );
        ok.headers
            .insert(Name::CONTENT_TYPE, BytesStr::from_static("application/sdp"));
        ok.body = call.answer.clone();
        self.respond(tx, ok, now);
        self.stats
            .calls_answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.report(CallUpdate::Answered {
            sid: sid.to_string(),
            media: None,
        });
    }

    /// Tells the caller of an unanswered engine call that it rings (180, once is enough for
    /// the caller; repeats are harmless).
    fn ring_app(&mut self, sid: &str, now: Duration) {
        let Some((id, Some(tx))) = self.unanswered_app(sid) else {
            return;
        };
        let Some(inv) = self.pending_invites.get(&tx).cloned() else {
            return;
        };
        let mut r = build_response(&inv, 180, "Ringing", Some(&id.local_tag));
        r.headers.insert(
            Name::CONTACT,
            BytesStr::from(format!("<sip:voxedge@{}>", fmt_host(self.local))),
        );
        self.respond(tx, r, now);
    }

    /// A placed call that ends before its answer gives up its media, unless it borrowed it.
    fn drop_origin_media(&mut self, o: &Origin) {
        if !o.bridge {
            self.delete_relay(o.relay);
        }
    }

    /// The `<Dial>` legs on a relay that is going away: ringing ones are canceled, an answered
    /// one is hung up (each reports its end).
    fn end_children(&mut self, relay: RelayId) {
        let now = self.now();
        let ringing: Vec<String> = self
            .origins
            .values()
            .filter(|o| o.bridge && o.relay == relay && !o.answered)
            .map(|o| o.sid.clone())
            .collect();
        for sid in ringing {
            self.hangup(&sid, EndStatus::Canceled, now);
        }
        if let Some(sid) = self.bridged.remove(&relay) {
            if let Some(id) = self.origin_calls.get(&sid).cloned() {
                self.end_call(&id, true);
            }
        }
    }

    /// The engine refuses an incoming call it has not answered.
    fn reject_app(&mut self, sid: &str, code: u16, now: Duration) {
        let Some((id, invite_tx)) = self.unanswered_app(sid) else {
            return;
        };
        if let Some(tx) = invite_tx {
            if let Some(inv) = self.pending_invites.get(&tx).cloned() {
                let reason = match code {
                    404 => "Not Found",
                    480 => "Temporarily Unavailable",
                    486 => "Busy Here",
                    500 => "Server Internal Error",
                    503 => "Service Unavailable",
                    _ => "Decline",
                };
                self.respond(
                    tx,
                    build_response(&inv, code, reason, Some(&id.local_tag)),
                    now,
                );
            }
        }
        if let Some(mut call) = self.calls.remove(&id) {
            self.unindex_call(&id, &call);
            self.origin_calls.remove(sid);
            call.origin = None;
            if let Some(r) = call.relay.take() {
                self.end_children(r);
                self.delete_relay(r);
            }
            let status = match code {
                486 | 600 => EndStatus::Busy,
                404 | 500..=599 => EndStatus::Failed,
                _ => EndStatus::NoAnswer,
            };
            self.report_end(sid, status, Some(code));
        }
    }

    /// The workers' answers to relays made without waiting: a relay the worker could not make
    /// (its port held by another program) fails its call like a want of ports would have —
    /// 503 to a caller not answered yet (the callee's INVITE is canceled), else BYE to both.
    fn settle_relays(&mut self, now: Duration) {
        let mut i = 0;
        while i < self.queued.len() {
            match self.dp.settle(&self.queued[i]) {
                None => i += 1,
                Some(Ok(())) => {
                    self.queued.swap_remove(i);
                }
                Some(Err(e)) => {
                    let relay = self.queued.swap_remove(i).id();
                    self.media_failed(relay, &e, now);
                }
            }
        }
    }

    fn media_failed(&mut self, relay: RelayId, e: &DataplaneError, now: Duration) {
        self.note_no_media(e, now);
        let Some(id) = self.by_media.get(&(relay, Side::A)).cloned() else {
            return; // the call ended already
        };
        let pending = self
            .calls
            .get(&id)
            .and_then(|c| c.invite_tx)
            .and_then(|t| self.pending_invites.get(&t).cloned().map(|m| (t, m)));
        if let Some((t, inv)) = pending {
            let r = service_unavailable(&inv, Some(&id.local_tag), NO_MEDIA_RETRY);
            self.respond(t, r, now);
            self.cancel_b(&id, now);
            self.end_call(&id, false);
        } else {
            self.hang_up(&id, now, Some("Q.850;cause=47;text=\"no media ports\""));
        }
    }

    /// A call that gets no media (503, or BYE once answered): counted, and logged at most
    /// once per [`LOG_PERIOD`].
    fn note_no_media(&mut self, e: &DataplaneError, now: Duration) {
        self.stats
            .calls_without_media
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(skipped) = self.no_media_log.check(now) {
            tracing::warn!(error = %e, skipped, "no media for the call: refused or ended (further ones within {}s are counted, not logged)", LOG_PERIOD.as_secs());
        }
    }

    /// Deletes a relay (without waiting for the worker) and forgets its hold marks.
    fn delete_relay(&mut self, r: RelayId) {
        let _ = self.dp.delete_relay_nowait(r);
        self.quiet.remove(&(r, Side::A));
        self.quiet.remove(&(r, Side::B));
    }

    /// Keeps a new call, indexed by the streams whose silence ends it.
    fn insert_call(&mut self, call: Call) {
        let id = call.dialog.id.clone();
        for k in media_keys(&call) {
            self.by_media.insert(k, id.clone());
        }
        if let Some(t) = call.invite_tx {
            self.call_by_invite.insert(t, id.clone());
        }
        self.calls.insert(id, Box::new(call));
    }

    /// Forgets a call's indexes (its relay's hold marks go with the relay).
    fn unindex_call(&mut self, id: &DialogId, call: &Call) {
        for k in media_keys(call) {
            if self.by_media.get(&k) == Some(id) {
                self.by_media.remove(&k);
            }
        }
        if let Some(t) = call.invite_tx {
            if self.call_by_invite.get(&t) == Some(id) {
                self.call_by_invite.remove(&t);
            }
        }
    }

    /// A stream of `relay` went silent (the dataplane's event) or a check of it fell due:
    /// hangs its call up when all the streams that matter (see [`media_keys`]) have been
    /// silent, since the answer, for `[sip] media_timeout_secs` (`hold_timeout_secs` when a
    /// side's last SDP expects silence). When they all are silent but not yet for that long,
    /// no event will come again: a check is planned for when they would be.
    fn check_media(&mut self, relay: RelayId, side: Side, now: Duration) {
        let Some(id) = self.by_media.get(&(relay, side)).cloned() else {
            return;
        };
        let Some(call) = self.calls.get(&id) else {
            self.by_media.remove(&(relay, side));
            return;
        };
        let keys = media_keys(call);
        let held = self.quiet.contains(&(relay, Side::A)) || self.quiet.contains(&(relay, Side::B));
        let limit = if held {
            self.hold_timeout
        } else {
            self.media_timeout
        };
        if limit.is_zero() {
            return;
        }
        let Some(answered) = call.answered_at else {
            // Ringing: silence is normal; look again once it could have lasted `limit`
            // after an answer.
            self.media_checks.push(Reverse((now + limit, relay, side)));
            return;
        };
        let since_answer = now.saturating_sub(answered);
        let (idle, all_silent) = match self.dp.query_relay(relay) {
            Ok((_, snap)) => keys.fold((since_answer, true), |(idle, all), (_, s)| {
                let st = &snap.legs[s.index()].rtp;
                (
                    idle.min(Duration::from_millis(st.idle_ms)),
                    all && st.timed_out,
                )
            }),
            // The media is gone: so is the call.
            Err(e) if e.relay_gone() => (Duration::MAX, true),
            // The worker did not answer in time: later.
            Err(_) => {
                self.media_checks
                    .push(Reverse((now + Duration::from_secs(5), relay, side)));
                return;
            }
        };
        if idle >= limit {
            self.stats
                .media_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if idle == Duration::MAX {
                tracing::warn!(call_id = %id.call_id, "call hung up: its media relay is gone");
            } else {
                tracing::info!(
                    call_id = %id.call_id,
                    silent_secs = idle.as_secs(),
                    held,
                    "call hung up: its media stayed silent past the timeout"
                );
            }
            self.hang_up(&id, now, Some("Q.850;cause=41;text=\"media timeout\""));
        } else if all_silent {
            self.media_checks
                .push(Reverse((now + (limit - idle), relay, side)));
        }
    }

    /// Ends a call: deletes its media and, when `send_bye`, hangs up towards the caller.
    fn end_call(&mut self, id: &DialogId, send_bye: bool) {
        self.end_call_with(id, send_bye, None);
    }

    /// [`Core::end_call`], the BYE carrying a `Reason` header when given.
    fn end_call_with(&mut self, id: &DialogId, send_bye: bool, reason: Option<&'static str>) {
        let Some(mut call) = self.calls.remove(id) else {
            return;
        };
        self.unindex_call(id, &call);
        let origin = call.origin.clone();
        if let Some(sid) = call.origin.take() {
            self.origin_calls.remove(&sid);
            let status = if call.unanswered {
                EndStatus::Canceled
            } else {
                EndStatus::Completed
            };
            self.report_end(&sid, status, None);
        }
        if let Some(b) = call.b.as_ref() {
            if let Some(d) = b.dialog.as_ref() {
                self.b_dialogs.remove(&d.id);
            }
            self.b_by_tx.remove(&b.tx);
            if let Some(id) = b.invite.header("Call-ID") {
                self.b_call_ids.remove(id.trim());
            }
        }
        if let Some(r) = call.relay.take() {
            if call.owns_relay {
                self.end_children(r);
                self.delete_relay(r);
            } else if origin.is_some() && self.bridged.get(&r) == origin.as_ref() {
                self.bridged.remove(&r);
            }
        }
        if send_bye {
            let transport = if call.peer.reliable { "TCP" } else { "UDP" };
            let via = format!("{transport} {}", fmt_host(self.local));
            if let Some((bye, to)) = bye_in(&mut call.dialog, &via, call.peer, reason) {
                let now = self.now();
                let _ = self.tx.send_request(bye, to, now);
            }
        }
    }
}

/// 503 Service Unavailable to `msg`, asking to retry after `retry_after_secs`.
fn service_unavailable(
    msg: &SipMessage,
    tag: Option<&str>,
    retry_after_secs: &'static str,
) -> SipMessage {
    let mut r = build_response(msg, 503, "Service Unavailable", tag);
    r.headers
        .insert(Name::RETRY_AFTER, BytesStr::from_static(retry_after_secs));
    r
}

/// A BYE in `dialog` (a new branch; a `Reason` header when given) and where it goes: the
/// dialog's target — with no DNS here, a host that is not an address falls back to `peer`, where
/// the dialog's requests came from — over `peer`'s transport.
fn bye_in(
    dialog: &mut Dialog,
    via: &str,
    peer: Peer,
    reason: Option<&'static str>,
) -> Option<(SipMessage, Peer)> {
    let branch = format!("z9hG4bK{}", random_token(16));
    let mut bye = dialog.request(Method::BYE, via, &branch, None, None).ok()?;
    if let Some(r) = reason {
        bye.headers.insert(
            Name::from(BytesStr::from_static("Reason")),
            BytesStr::from_static(r),
        );
    }
    let to = target_addr(&dialog.remote_target).unwrap_or(peer.addr);
    Some((
        bye,
        Peer {
            addr: to,
            reliable: peer.reliable,
        },
    ))
}

/// Our INVITE again, answering a 401/407 challenge with digest credentials: a new branch,
/// the next CSeq and the Authorization (or Proxy-Authorization) header. `None` when the
/// challenge cannot be answered.
fn authorized_again(
    invite: &SipMessage,
    challenge: &SipMessage,
    (user, pass): &(String, String),
    local: &str,
) -> Option<SipMessage> {
    let (ch_name, auth_name) = if challenge.status() == Some(401) {
        ("WWW-Authenticate", "Authorization")
    } else {
        ("Proxy-Authenticate", "Proxy-Authorization")
    };
    let StartLine::Request { uri, .. } = &invite.start else {
        return None;
    };
    let auth = crate::digest::authorize(
        challenge.header(ch_name)?,
        user,
        pass,
        "INVITE",
        &uri.to_string(),
    )?;
    let mut again = invite.clone();
    again.headers.remove(&Name::VIA);
    again.headers.insert(
        Name::VIA,
        BytesStr::from(format!(
            "SIP/2.0/UDP {local};branch=z9hG4bK{}",
            random_token(16)
        )),
    );
    let n = cseq_number(invite) + 1;
    again.headers.remove(&Name::CSEQ);
    again
        .headers
        .insert(Name::CSEQ, BytesStr::from(format!("{n} INVITE")));
    again.headers.insert(
        Name::from(BytesStr::from(auth_name.to_string())),
        BytesStr::from(auth),
    );
    Some(again)
}

/// The CANCEL of an INVITE we sent (RFC 3261 §9.1: same Via, From, To, Call-ID, CSeq number).
fn cancel_for(inv: &SipMessage) -> Option<SipMessage> {
    let StartLine::Request { uri, .. } = &inv.start else {
        return None;
    };
    let mut headers = ezk_sip_types::Headers::with_capacity(8);
    for name in [Name::VIA, Name::FROM, Name::TO, Name::CALL_ID] {
        if let Some(v) = inv.headers.get_raw(&name).next() {
            headers.insert(name, v.clone());
        }
    }
    headers.insert(Name::MAX_FORWARDS, BytesStr::from_static("70"));
    headers.insert(
        Name::CSEQ,
        BytesStr::from(format!("{} CANCEL", cseq_number(inv))),
    );
    Some(SipMessage {
        start: StartLine::Request {
            method: Method::CANCEL,
            uri: uri.clone(),
        },
        headers,
        body: Bytes::new(),
    })
}

/// The CSeq number of a message (1 when unreadable).
fn cseq_number(m: &SipMessage) -> u32 {
    m.header("CSeq")
        .and_then(|c| c.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// The reason phrase of a response.
fn status_reason(m: &SipMessage) -> &str {
    match &m.start {
        StartLine::Response { reason, .. } if !reason.is_empty() => reason,
        _ => "Unknown",
    }
}

fn fmt_host(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

fn top_branch(msg: &SipMessage) -> Option<String> {
    let via = msg.header("Via")?;
    voxedge_sip_core::uri::header_param(via.split(',').next()?, "branch").map(str::to_string)
}

/// `sip:user@1.2.3.4:5070` → 1.2.3.4:5070 (literal addresses only; no DNS here).
fn target_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri.split_once(':')?.1;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(';').next()?;
    if let Ok(a) = host.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    Some(SocketAddr::new(ip, 5060))
}

/// Requests the core must refuse regardless of method.
fn request_is_bad(msg: &SipMessage) -> bool {
    msg.header("Call-ID").is_none() || msg.header("From").is_none() || msg.header("To").is_none()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The size asked is applied (below the default, so any host grants it), and a size
    /// beyond the host's cap is granted capped, without failing.
    #[tokio::test]
    async fn udp_receive_buffer_is_applied_and_capped() {
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(udp_receive_buffer(&u, 64 * 1024), 64 * 1024);
        let huge = 1 << 30;
        let granted = udp_receive_buffer(&u, huge);
        assert!(granted >= 64 * 1024 && granted < huge, "{granted}");
    }
}
