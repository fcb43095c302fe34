//! rtpengine's "ng" control protocol, so Kamailio's and OpenSIPS's `rtpengine` modules can use
//! the appliance as their media relay unchanged.
//!
//! Framing: `<cookie> <message>` over UDP (one per datagram) or TCP (back to back); the message
//! is a bencoded dictionary, or JSON when it starts with `{` (the reply then is JSON too); the
//! reply is `<cookie> <reply>`. A request retransmitted with the same cookie gets the cached
//! reply, not a second execution. Every failure is a reply with `result: error` and an
//! `error-reason`; nothing a client sends can stop the listener.
//!
//! Calls: `offer` (from the caller, `from-tag`) creates a relay — leg A towards the caller,
//! leg B towards the callee — and returns the SDP rewritten to leg B's port; `answer` (with the
//! callee's `to-tag`) points leg B at the callee and returns the SDP rewritten to leg A's port;
//! offers in either direction on an existing call (re-INVITEs) re-point the sender's leg.
//! `delete` removes the call and answers its statistics; `query`, `list`, `statistics`,
//! `ping`, `block media`/`unblock media` work as in rtpengine. Calls whose media has been idle
//! for `media_timeout_secs` are deleted by a periodic sweep (as rtpengine's timeout does), so a
//! lost BYE does not leak ports. `play media`/`play DTMF` use the dataplane's player;
//! `start`/`pause`/`stop recording` and `record-call` its recording taps, written to stereo
//! WAV files by [`record::Recorder`].

pub mod record;
pub mod sdp;

/// The bencode codec (its own crate, shared with the benches' ng client).
pub use voxedge_bencode as bencode;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use voxedge_dataplane::command::{LegUpdate, RelaySnapshot, StreamSnapshot};
use voxedge_dataplane::ids::{RelayId, Side};
use voxedge_dataplane::table::SourcePolicy;
use voxedge_dataplane::{Dataplane, LegRequest, RelayInfo, RelayRequest};

use bencode::Value;

use crate::config::NgConfig;
use crate::voice::audio::{self, Codec};

/// Counters of the ng listener.
#[derive(Debug, Default)]
pub struct NgStats {
    pub requests: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    pub retransmissions: std::sync::atomic::AtomicU64,
    pub malformed: std::sync::atomic::AtomicU64,
    pub calls: std::sync::atomic::AtomicU64,
    /// The recorder's counters.
    pub recordings: Arc<record::RecStats>,
}

/// The running listener.
pub struct NgService {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub stats: Arc<NgStats>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// A request for the engine: the message and where its reply goes.
struct Job {
    cookie: Vec<u8>,
    message: Vec<u8>,
    from: SocketAddr,
    reply: oneshot::Sender<Vec<u8>>,
}

/// One relayed call.
#[derive(Debug)]
struct NgCall {
    info: RelayInfo,
    from_tag: String,
    to_tag: Option<String>,
    labels: [Option<String>; 2],
    /// Where each side said it receives (for query replies).
    endpoints: [Option<SocketAddr>; 2],
    created: u64,
    last_signal: u64,
    created_at: Instant,
    /// The last SDP put a side on hold or inactive: silence is expected, the long timeout
    /// applies (as rtpengine's silent-timeout).
    quiet: bool,
    /// The G.711 codec the call uses (the answer's first payload type, or before the answer
    /// the offer's first G.711 one), for `play media`; `None` for other codecs.
    codec: Option<Codec>,
    /// The call's RFC 4733 payload type (the answer's, or before the answer the offer's), for
    /// `play DTMF`; `None`: in-band tones.
    dtmf_pt: Option<u8>,
    /// Being recorded (both legs tapped) and whether paused.
    recording: Option<RecState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecState {
    On,
    Paused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecAction {
    Start,
    Pause,
    Stop,
}

/// The G.711 codec of a payload-type list: its first entry for an answer, the first G.711
/// entry for an offer.
fn g711(pts: &[String], answer: bool) -> Option<Codec> {
    let pick = |p: &String| match p.as_str() {
        "0" => Some(Codec::Pcmu),
        "8" => Some(Codec::Pcma),
        _ => None,
    };
    if answer {
        pts.first().and_then(pick)
    } else {
        pts.iter().find_map(pick)
    }
}

/// Largest media file or blob `play media` accepts.
const PLAY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Whether an SDP body expects no media from its sender or towards it (hold, inactive).
fn expects_silence(sdp: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sdp);
    text.lines().any(|l| {
        let l = l.trim();
        l == "a=inactive"
            || l == "a=sendonly"
            || l == "a=recvonly"
            || (l.starts_with("c=") && (l.ends_with(" 0.0.0.0") || l.ends_with(" ::")))
    })
}

/// Longest call-id accepted (Kamailio's are far shorter).
const CALL_ID_MAX: usize = 256;
/// Bytes of cached replies kept at most.
const CACHE_BYTES_MAX: usize = 64 << 20;

/// The engine: every command runs here, in arrival order.
struct Engine {
    dp: Arc<Dataplane>,
    advertise: IpAddr,
    calls: HashMap<String, NgCall>,
    /// Replies by cookie, for retransmissions (bounded, oldest first out).
    cache: HashMap<Vec<u8>, (Instant, Vec<u8>)>,
    cache_order: VecDeque<Vec<u8>>,
    cache_bytes: usize,
    /// Relays whose delete failed (worker busy): retried by the sweep.
    pending_delete: Vec<RelayId>,
    cfg: NgConfig,
    stats: Arc<NgStats>,
    total_calls: u64,
    started: u64,
    /// Identifies playbacks (their end events are not waited for).
    play_id: u64,
    /// Writes recordings (`start recording`, `record-call`).
    recorder: record::Recorder,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn error(reason: &str) -> Value {
    Value::dict([
        ("result", Value::str("error")),
        ("error-reason", Value::str(reason)),
    ])
}

fn ok() -> Value {
    Value::dict([("result", Value::str("ok"))])
}

/// Flags as rtpengine takes them: the `flags` list plus a few top-level keys.
struct Flags {
    list: Vec<String>,
}

/// An offer's or answer's SDP and what the engine needs from it.
struct Described {
    body: Vec<u8>,
    media: sdp::Media,
    flags: Flags,
    how: sdp::Rewrite,
    remote: Option<SocketAddr>,
    quiet: bool,
}

impl Flags {
    fn of(req: &Value) -> Flags {
        let mut list: Vec<String> = req
            .get("flags")
            .map(Value::as_texts)
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.to_ascii_lowercase())
            .collect();
        for k in [
            "strict source",
            "strict-source",
            "media handover",
            "media-handover",
        ] {
            if req.get(k).is_some() {
                list.push(k.replace(' ', "-"));
            }
        }
        Flags { list }
    }

    fn has(&self, f: &str) -> bool {
        self.list.iter().any(|x| x == f || x.replace(' ', "-") == f)
    }
}

fn text(req: &Value, key: &str) -> Option<String> {
    req.get(key)
        .and_then(Value::as_text)
        .filter(|s| !s.is_empty())
}

impl Engine {
    fn handle(&mut self, req: &Value) -> Value {
        let Some(cmd) = text(req, "command") else {
            return error("No command given");
        };
        if text(req, "call-id").is_some_and(|c| c.len() > CALL_ID_MAX) {
            return error("call-id longer than 256 bytes");
        }
        let lower = cmd.to_ascii_lowercase();
        match lower.as_str() {
            "ping" => Value::dict([("result", Value::str("pong"))]),
            "offer" => {
                let r = self.offer(req);
                self.record_call_flag(req, r)
            }
            "answer" => {
                let r = self.answer(req);
                self.record_call_flag(req, r)
            }
            "delete" => self.delete(req),
            "query" => self.query(req),
            "list" => self.list(req),
            "statistics" => self.statistics(),
            "block media" | "unblock media" => self.block(req, lower.starts_with("block")),
            "play media" => self.play_media(req),
            "stop media" => self.stop_media(req),
            "play dtmf" => self.play_dtmf(req),
            "start recording" => self.recording(req, RecAction::Start),
            "pause recording" => self.recording(req, RecAction::Pause),
            "stop recording" => self.recording(req, RecAction::Stop),
            "start forwarding" | "stop forwarding" | "block dtmf" | "unblock dtmf" => error(
                &format!("'{cmd}' is not supported by this appliance (no media forwarding or DTMF blocking)"),
            ),
            _ => error("Unrecognized command"),
        }
    }

    fn relay_policy(flags: &Flags) -> SourcePolicy {
        SourcePolicy {
            strict: flags.has("strict-source"),
            handover: flags.has("media-handover"),
        }
    }

    /// The address to send to: the SDP's, or the signalling source with `SIP-source-address`.
    fn remote_of(media: &sdp::Media, req: &Value, flags: &Flags) -> Option<SocketAddr> {
        if flags.has("sip-source-address") {
            let rf = req
                .get("received-from")
                .map(Value::as_texts)
                .unwrap_or_default();
            let ip = rf.get(1).and_then(|a| a.parse::<IpAddr>().ok());
            if let (Some(ip), Some(r)) = (ip, media.remote) {
                return Some(SocketAddr::new(ip, r.port()));
            }
        }
        media.remote
    }

    fn rewrite_for(req: &Value, flags: &Flags) -> sdp::Rewrite {
        let replace = req.get("replace").map(Value::as_texts).unwrap_or_default();
        let mut strip = Vec::new();
        if let Some(codec) = req.get("codec") {
            for k in ["strip", "mask"] {
                strip.extend(codec.get(k).map(Value::as_texts).unwrap_or_default());
            }
        }
        for f in &flags.list {
            for p in ["codec-strip-", "codec-mask-"] {
                if let Some(c) = f.strip_prefix(p) {
                    strip.push(c.to_string());
                }
            }
        }
        sdp::Rewrite {
            origin: replace.iter().any(|r| r.eq_ignore_ascii_case("origin"))
                || flags.has("replace-origin"),
            strip,
        }
    }

    /// Refusals common to offer and answer: what this relay cannot do.
    fn unsupported(req: &Value, media: &sdp::Media) -> Option<Value> {
        let plain =
            |p: &str| p.eq_ignore_ascii_case("RTP/AVP") || p.eq_ignore_ascii_case("RTP/AVPF");
        for proto in text(req, "transport-protocol")
            .into_iter()
            .chain(std::iter::once(media.protocol.clone()))
        {
            if !plain(&proto) {
                return Some(error(&format!(
                    "transport protocol {proto} is not supported (no SRTP/DTLS in this appliance)"
                )));
            }
        }
        if text(req, "ICE").is_some_and(|i| i.eq_ignore_ascii_case("force")) {
            return Some(error(
                "ICE=force is not supported (ICE candidates are removed)",
            ));
        }
        if let Some(offer) = req
            .get("codec")
            .and_then(|c| c.get("transcode").or(c.get("offer")))
        {
            if !offer.as_texts().is_empty() {
                return Some(error(
                    "codec offer/transcode is not supported (no transcoding in this appliance)",
                ));
            }
        }
        None
    }

    fn sdp_reply(&self, body: &[u8], port: u16, how: &sdp::Rewrite) -> Value {
        let mut r = ok();
        r.set(
            "sdp",
            Value::Bytes(sdp::rewrite(body, self.advertise, port, how)),
        );
        r
    }

    /// What offer and answer both take from a request: the SDP, the audio stream it
    /// describes, the flags and the address to send to. An error reply when unusable.
    fn described(req: &Value) -> Result<Described, Value> {
        let Some(Value::Bytes(body)) = req.get("sdp") else {
            return Err(error("No SDP body"));
        };
        let media = sdp::parse(body).map_err(|e| error(&format!("Failed to parse SDP: {e}")))?;
        if let Some(e) = Self::unsupported(req, &media) {
            return Err(e);
        }
        let flags = Flags::of(req);
        Ok(Described {
            how: Self::rewrite_for(req, &flags),
            remote: Self::remote_of(&media, req, &flags),
            quiet: expects_silence(body),
            body: body.clone(),
            media,
            flags,
        })
    }

    /// Points one side of a relay at the address an SDP gave (nothing for a held stream).
    fn point(&self, relay: RelayId, side: Side, d: &Described) {
        if let Some(r) = d.remote {
            let _ = self.dp.update_leg(
                relay,
                side,
                LegUpdate {
                    remote: Some(r),
                    rtcp_remote: d.media.rtcp,
                    ..Default::default()
                },
            );
        }
    }

    fn offer(&mut self, req: &Value) -> Value {
        let (Some(call_id), Some(from_tag)) = (text(req, "call-id"), text(req, "from-tag")) else {
            return error("Missing call-id or from-tag");
        };
        let d = match Self::described(req) {
            Ok(d) => d,
            Err(e) => return e,
        };
        let now = unix_now();
        let label = text(req, "label");
        if let Some(call) = self.calls.get_mut(&call_id) {
            // A re-offer: from the caller (its leg A) or from the callee (leg B).
            let side = if call.from_tag == from_tag {
                Side::A
            } else if call.to_tag.as_deref() == Some(from_tag.as_str()) || call.to_tag.is_none() {
                Side::B
            } else {
                // Another fork: it takes over leg B.
                call.to_tag = Some(from_tag.clone());
                Side::B
            };
            call.last_signal = now;
            call.quiet = d.quiet;
            call.endpoints[side.index()] = d.remote;
            if label.is_some() {
                call.labels[side.index()] = label;
            }
            let (relay, other) = (call.info.id, call.info.legs[1 - side.index()].local.port());
            self.point(relay, side, &d);
            return self.sdp_reply(&d.body, other, &d.how);
        }
        if self.calls.len() >= self.cfg.calls_max {
            return error("Too many calls: this appliance is at its configured limit");
        }
        let leg_a = LegRequest {
            remote: d.remote,
            rtcp_remote: d.media.rtcp,
            ..Default::default()
        };
        let created = self.dp.create_relay(RelayRequest {
            legs: [leg_a, LegRequest::default()],
            policy: Self::relay_policy(&d.flags),
            rewrite: false,
            echo: false,
            worker: None,
        });
        let info = match created {
            Ok(i) => i,
            Err(e) => return error(&format!("Failed to allocate media ports: {e}")),
        };
        let port_b = info.legs[1].local.port();
        self.calls.insert(
            call_id,
            NgCall {
                info,
                from_tag,
                to_tag: text(req, "to-tag"),
                labels: [label, None],
                endpoints: [d.remote, None],
                created: now,
                last_signal: now,
                created_at: Instant::now(),
                quiet: d.quiet,
                codec: g711(&d.media.payload_types, false),
                dtmf_pt: d.media.telephone_event,
                recording: None,
            },
        );
        self.total_calls += 1;
        self.sdp_reply(&d.body, port_b, &d.how)
    }

    fn answer(&mut self, req: &Value) -> Value {
        let (Some(call_id), Some(_from_tag)) = (text(req, "call-id"), text(req, "from-tag")) else {
            return error("Missing call-id or from-tag");
        };
        let Some(to_tag) = text(req, "to-tag") else {
            return error("Missing to-tag");
        };
        let d = match Self::described(req) {
            Ok(d) => d,
            Err(e) => return e,
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return error("Unknown call-id");
        };
        // The answerer is the to-tag party: the callee, or the caller when it answers the
        // callee's re-INVITE (then from-tag is the callee's and to-tag the caller's).
        let side = if to_tag == call.from_tag {
            Side::A
        } else {
            call.to_tag = Some(to_tag);
            Side::B
        };
        call.last_signal = unix_now();
        call.quiet = d.quiet;
        call.codec = g711(&d.media.payload_types, true);
        call.dtmf_pt = d.media.telephone_event;
        call.endpoints[side.index()] = d.remote;
        if let Some(l) = text(req, "label") {
            call.labels[side.index()] = Some(l);
        }
        let (relay, other) = (call.info.id, call.info.legs[1 - side.index()].local.port());
        self.point(relay, side, &d);
        self.sdp_reply(&d.body, other, &d.how)
    }

    fn delete(&mut self, req: &Value) -> Value {
        let Some(call_id) = text(req, "call-id") else {
            return error("Missing call-id");
        };
        let not_found = || {
            // As rtpengine: not an error (Kamailio deletes twice after a CANCEL).
            let mut r = ok();
            r.set(
                "warning",
                Value::str("Call-ID not found or tags didn't match"),
            );
            r
        };
        // A failed fork (its own to-tag) does not end the branch that answered.
        if let (Some(t), Some(call)) = (text(req, "to-tag"), self.calls.get(&call_id)) {
            let answered = call.to_tag.as_deref();
            if answered.is_some_and(|a| a != t) && t != call.from_tag {
                return not_found();
            }
        }
        let Some(call) = self.remove_call(&call_id) else {
            return not_found();
        };
        match self.dp.delete_relay(call.info.id) {
            Ok((_, snap)) => self.call_report(&call, Some(&snap)),
            Err(e) => {
                if !e.relay_gone() {
                    self.pending_delete.push(call.info.id);
                }
                self.call_report(&call, None)
            }
        }
    }

    fn query(&mut self, req: &Value) -> Value {
        let Some(call_id) = text(req, "call-id") else {
            return error("Missing call-id");
        };
        let Some(call) = self.calls.get(&call_id) else {
            return error("Unknown call-id");
        };
        let snap = self.dp.query_relay(call.info.id).ok().map(|(_, s)| s);
        self.call_report(call, snap.as_ref())
    }

    /// The `query`/`delete` reply: per tag, its media stream(s) with counters; totals.
    fn call_report(&self, call: &NgCall, snap: Option<&RelaySnapshot>) -> Value {
        let stream = |s: Option<&StreamSnapshot>, local: SocketAddr, ep: Option<SocketAddr>| {
            let endpoint = |a: Option<SocketAddr>| match a {
                Some(a) => Value::dict([
                    (
                        "family",
                        Value::str(if a.is_ipv4() { "IPv4" } else { "IPv6" }),
                    ),
                    ("address", Value::str(&a.ip().to_string())),
                    ("port", Value::Int(i64::from(a.port()))),
                ]),
                None => Value::Dict(vec![]),
            };
            let (packets, bytes, errors) = s.map_or((0, 0, 0), |s| {
                (
                    s.counters.packets_in,
                    s.counters.bytes_in,
                    s.counters.drops.total(),
                )
            });
            Value::dict([
                ("local port", Value::Int(i64::from(local.port()))),
                ("endpoint", endpoint(s.and_then(|s| s.remote).or(ep))),
                ("advertised endpoint", endpoint(ep)),
                (
                    "stats",
                    Value::dict([
                        (
                            "packets",
                            Value::Int(i64::try_from(packets).unwrap_or(i64::MAX)),
                        ),
                        (
                            "bytes",
                            Value::Int(i64::try_from(bytes).unwrap_or(i64::MAX)),
                        ),
                        (
                            "errors",
                            Value::Int(i64::try_from(errors).unwrap_or(i64::MAX)),
                        ),
                    ]),
                ),
            ])
        };
        let mut tags = Vec::new();
        let mut rtp = (0u64, 0u64, 0u64);
        let mut rtcp = (0u64, 0u64, 0u64);
        for (i, tag) in [Some(call.from_tag.clone()), call.to_tag.clone()]
            .into_iter()
            .enumerate()
        {
            let leg = snap.map(|s| s.legs[i]);
            let info = call.info.legs[i];
            let mut streams = vec![stream(
                leg.as_ref().map(|l| &l.rtp),
                info.local,
                call.endpoints[i],
            )];
            if let (Some(local), rtcp_snap) = (info.rtcp_local, leg.and_then(|l| l.rtcp)) {
                let ep =
                    call.endpoints[i].map(|e| SocketAddr::new(e.ip(), e.port().wrapping_add(1)));
                streams.push(stream(rtcp_snap.as_ref(), local, ep));
                if let Some(c) = rtcp_snap {
                    rtcp.0 += c.counters.packets_in;
                    rtcp.1 += c.counters.bytes_in;
                    rtcp.2 += c.counters.drops.total();
                }
            }
            if let Some(l) = leg {
                rtp.0 += l.rtp.counters.packets_in;
                rtp.1 += l.rtp.counters.bytes_in;
                rtp.2 += l.rtp.counters.drops.total();
            }
            let tag = tag.unwrap_or_default();
            let mut t = Value::dict([
                ("tag", Value::str(&tag)),
                (
                    "created",
                    Value::Int(i64::try_from(call.created).unwrap_or(0)),
                ),
                (
                    "medias",
                    Value::List(vec![Value::dict([
                        ("index", Value::Int(1)),
                        ("type", Value::str("audio")),
                        ("protocol", Value::str("RTP/AVP")),
                        ("streams", Value::List(streams)),
                    ])]),
                ),
            ]);
            if let Some(l) = &call.labels[i] {
                t.set("label", Value::str(l));
            }
            if !tag.is_empty() || i == 0 {
                tags.push((tag.into_bytes(), t));
            }
        }
        let tot = |t: (u64, u64, u64)| {
            Value::dict([
                (
                    "packets",
                    Value::Int(i64::try_from(t.0).unwrap_or(i64::MAX)),
                ),
                ("bytes", Value::Int(i64::try_from(t.1).unwrap_or(i64::MAX))),
                ("errors", Value::Int(i64::try_from(t.2).unwrap_or(i64::MAX))),
            ])
        };
        Value::dict([
            ("result", Value::str("ok")),
            (
                "created",
                Value::Int(i64::try_from(call.created).unwrap_or(0)),
            ),
            (
                "last signal",
                Value::Int(i64::try_from(call.last_signal).unwrap_or(0)),
            ),
            ("tags", Value::Dict(tags)),
            (
                "totals",
                Value::dict([("RTP", tot(rtp)), ("RTCP", tot(rtcp))]),
            ),
        ])
    }

    fn list(&self, req: &Value) -> Value {
        let limit = req
            .get("limit")
            .and_then(Value::as_int)
            .map_or(32, |l| usize::try_from(l.clamp(0, 100_000)).unwrap_or(32));
        let calls = self
            .calls
            .keys()
            .take(limit)
            .map(|k| Value::str(k))
            .collect();
        Value::dict([("result", Value::str("ok")), ("calls", Value::List(calls))])
    }

    fn statistics(&self) -> Value {
        let n = i64::try_from(self.calls.len()).unwrap_or(0);
        let total = i64::try_from(self.total_calls).unwrap_or(0);
        Value::dict([
            ("result", Value::str("ok")),
            (
                "statistics",
                Value::dict([
                    (
                        "currentstatistics",
                        Value::dict([
                            ("sessionsown", Value::Int(n)),
                            ("sessionsforeign", Value::Int(0)),
                            ("sessionstotal", Value::Int(n)),
                        ]),
                    ),
                    (
                        "totalstatistics",
                        Value::dict([
                            (
                                "uptime",
                                Value::Int(
                                    i64::try_from(unix_now().saturating_sub(self.started))
                                        .unwrap_or(0),
                                ),
                            ),
                            ("managedsessions", Value::Int(total)),
                        ]),
                    ),
                ]),
            ),
        ])
    }

    fn block(&mut self, req: &Value, blocked: bool) -> Value {
        let Some(call_id) = text(req, "call-id") else {
            return error("Missing call-id");
        };
        let Some(call) = self.calls.get(&call_id) else {
            return error("Unknown call-id");
        };
        // With a from-tag only that party's media is blocked; without, both.
        let sides: Vec<Side> = match text(req, "from-tag") {
            Some(t) if t == call.from_tag => vec![Side::A],
            Some(t) if call.to_tag.as_deref() == Some(t.as_str()) => vec![Side::B],
            Some(_) => return error("Unknown from-tag"),
            None => vec![Side::A, Side::B],
        };
        for side in sides {
            if let Err(e) = self.dp.update_leg(
                call.info.id,
                side,
                LegUpdate {
                    blocked: Some(blocked),
                    ..Default::default()
                },
            ) {
                return error(&format!("Failed to update media: {e}"));
            }
        }
        ok()
    }

    /// The side a `from-tag` names (the party that hears played media) and its call, or an
    /// error reply.
    fn side_of(&self, req: &Value) -> Result<(Side, &NgCall), Value> {
        let Some(call_id) = text(req, "call-id") else {
            return Err(error("Missing call-id"));
        };
        let Some(call) = self.calls.get(&call_id) else {
            return Err(error("Unknown call-id"));
        };
        let side = match text(req, "from-tag") {
            Some(t) if t == call.from_tag => Side::A,
            Some(t) if call.to_tag.as_deref() == Some(t.as_str()) => Side::B,
            Some(_) => return Err(error("Unknown from-tag")),
            None => return Err(error("Missing from-tag")),
        };
        Ok((side, call))
    }

    /// `play media`: a WAV file (`file`, a path on this host) or WAV bytes (`blob`) played to
    /// the `from-tag` party, `repeat-times` times (default 1), in the call's G.711 codec.
    fn play_media(&mut self, req: &Value) -> Value {
        let (side, relay, codec) = match self.side_of(req) {
            Ok((side, call)) => (side, call.info.id, call.codec),
            Err(e) => return e,
        };
        let Some(codec) = codec else {
            return error(
                "play media needs a PCMU or PCMA call (this appliance does not transcode)",
            );
        };
        let bytes = if let Some(path) = text(req, "file") {
            match std::fs::metadata(&path) {
                Ok(m) if m.len() > PLAY_BYTES_MAX as u64 => {
                    return error("media file is larger than 16 MB")
                }
                Ok(_) => {}
                Err(e) => return error(&format!("cannot read media file {path}: {e}")),
            }
            match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => return error(&format!("cannot read media file {path}: {e}")),
            }
        } else if let Some(b) = req.get("blob").and_then(Value::as_bytes) {
            if b.len() > PLAY_BYTES_MAX {
                return error("media blob is larger than 16 MB");
            }
            b.to_vec()
        } else if req.get("db-id").is_some() {
            return error("play media from a database is not supported (use file or blob)");
        } else {
            return error("No media given (file or blob)");
        };
        let pcm = match audio::decode_wav(&bytes) {
            Ok(p) => p,
            Err(e) => return error(&format!("cannot play the media: {e}")),
        };
        let samples = match crate::media::decode::to_8k(&crate::media::decode::from_i16(
            pcm.rate,
            &pcm.samples,
        )) {
            Ok(s) => s,
            Err(e) => return error(&format!("cannot play the media: {e}")),
        };
        if samples.is_empty() {
            return error("the media has no audio");
        }
        let repeat = req
            .get("repeat-times")
            .and_then(Value::as_int)
            .unwrap_or(1)
            .clamp(1, 1000) as u32;
        let duration_ms = samples.len() as i64 / 8;
        let media = audio::encode(&samples, codec);
        self.play_id += 1;
        match self.dp.play(relay, side, media, repeat, self.play_id) {
            Ok(()) => {
                let mut r = ok();
                r.set("duration", Value::Int(duration_ms));
                r
            }
            Err(e) => error(&format!("Failed to start playback: {e}")),
        }
    }

    /// `play DTMF`: one key (`code`: `0`–`9`, `*`, `#`, `A`–`D`, or the event number 0–15)
    /// sent as if the `from-tag` party had pressed it, to the other party: RFC 4733 events when
    /// the call negotiated telephone-event, else an in-band tone in the call's G.711 codec.
    /// `duration` (ms, 100–5000, default 250), `volume` (dBm0, sign ignored, default −8),
    /// `pause` (ms after the key, default 100). The other party's media to that party is held
    /// back while the key plays, as with `play media`.
    fn play_dtmf(&mut self, req: &Value) -> Value {
        const KEYS: &[u8; 16] = b"0123456789*#ABCD";
        let (side, relay, codec, dtmf_pt) = match self.side_of(req) {
            Ok((side, call)) => (side, call.info.id, call.codec, call.dtmf_pt),
            Err(e) => return e,
        };
        let key = match req.get("code") {
            Some(Value::Int(n)) => usize::try_from(*n).ok().and_then(|n| KEYS.get(n)).copied(),
            Some(v) => v
                .as_text()
                .filter(|t| t.len() == 1)
                .map(|t| t.as_bytes()[0].to_ascii_uppercase())
                .filter(|k| KEYS.contains(k)),
            None => return error("Missing DTMF code"),
        };
        let Some(key) = key else {
            return error("Invalid DTMF code (0-9, *, #, A-D, or 0-15)");
        };
        let ms = |k: &str, default: i64, lo: i64, hi: i64| {
            req.get(k)
                .and_then(Value::as_int)
                .unwrap_or(default)
                .clamp(lo, hi) as u32
        };
        let duration = ms("duration", 250, 100, 5000);
        let pause = ms("pause", 100, 0, 5000);
        let volume = req
            .get("volume")
            .and_then(Value::as_int)
            .map_or(8, i64::abs)
            .min(63) as u8;
        let digit = char::from(key).to_string();
        let media = match (dtmf_pt, codec) {
            (Some(pt), _) => Arc::new(
                voxedge_dataplane::player::PlayMedia::telephone_events_timed(
                    pt, &digit, duration, pause, volume,
                ),
            ),
            (None, Some(codec)) => audio::encode(
                &audio::dtmf_tones_timed(&digit, duration, pause, volume),
                codec,
            ),
            (None, None) => {
                return error(
                    "play DTMF needs telephone-event or a PCMU/PCMA call (this appliance does not transcode)",
                )
            }
        };
        // The from-tag party "presses" the key: it is sent out of the other leg.
        let towards = side.other();
        self.play_id += 1;
        match self.dp.play(relay, towards, media, 1, self.play_id) {
            Ok(()) => ok(),
            Err(e) => error(&format!("Failed to play DTMF: {e}")),
        }
    }

    /// `record-call=yes` (or the `record-call` flag) on an offer or answer that succeeded:
    /// the call is recorded from now on; a recording that cannot start is a `warning`.
    fn record_call_flag(&mut self, req: &Value, mut reply: Value) -> Value {
        let asked = text(req, "record-call").is_some_and(|v| v.eq_ignore_ascii_case("yes"))
            || Flags::of(req).has("record-call");
        let done = reply.get("result").and_then(Value::as_text).as_deref() == Some("ok");
        let Some(call_id) = text(req, "call-id").filter(|_| asked && done) else {
            return reply;
        };
        if self
            .calls
            .get(&call_id)
            .is_some_and(|c| c.recording.is_none())
        {
            match self.start_recording(&call_id) {
                Ok(()) => {
                    if let Some(c) = self.calls.get_mut(&call_id) {
                        c.recording = Some(RecState::On);
                    }
                }
                Err(e) => reply.set(
                    "warning",
                    Value::str(&format!("the call is relayed but not recorded: {e}")),
                ),
            }
        }
        reply
    }

    /// `start recording` (also resumes a paused one), `pause recording`, `stop recording`.
    fn recording(&mut self, req: &Value, action: RecAction) -> Value {
        let Some(call_id) = text(req, "call-id") else {
            return error("Missing call-id");
        };
        let Some(state) = self.calls.get(&call_id).map(|c| c.recording) else {
            return error("Unknown call-id");
        };
        let result = match (action, state) {
            (RecAction::Start, None) => self.start_recording(&call_id),
            (RecAction::Start, Some(RecState::Paused)) => self
                .recorder
                .pause(&call_id, false)
                .map_err(|e| e.to_string()),
            (RecAction::Pause, Some(RecState::On)) => self
                .recorder
                .pause(&call_id, true)
                .map_err(|e| e.to_string()),
            (RecAction::Stop, Some(_)) => {
                self.stop_recording(&call_id);
                Ok(())
            }
            (RecAction::Start, Some(RecState::On)) | (RecAction::Pause, Some(RecState::Paused)) => {
                Ok(())
            }
            (RecAction::Pause | RecAction::Stop, None) => {
                return error("Call is not being recorded")
            }
        };
        if let Err(e) = result {
            return error(&format!(
                "Failed to {} recording: {e}",
                match action {
                    RecAction::Start => "start",
                    RecAction::Pause => "pause",
                    RecAction::Stop => "stop",
                }
            ));
        }
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.recording = match action {
                RecAction::Start => Some(RecState::On),
                RecAction::Pause => Some(RecState::Paused),
                RecAction::Stop => None,
            };
        }
        ok()
    }

    /// Taps both legs of a call and starts its file.
    fn start_recording(&mut self, call_id: &str) -> Result<(), String> {
        use voxedge_dataplane::recorder::RecordTap;
        let relay = self
            .calls
            .get(call_id)
            .map(|c| c.info.id)
            .ok_or("unknown call-id")?;
        // Two seconds of 20 ms frames per leg between drains (every 200 ms).
        let (tap_a, rx_a) = RecordTap::new(100);
        let (tap_b, rx_b) = RecordTap::new(100);
        self.dp
            .record(relay, Side::A, Some(tap_a))
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.dp.record(relay, Side::B, Some(tap_b)) {
            let _ = self.dp.record(relay, Side::A, None);
            return Err(e.to_string());
        }
        match self.recorder.begin(call_id, [rx_a, rx_b]) {
            Ok(path) => {
                tracing::info!(call_id, file = %path.display(), "ng recording started");
                Ok(())
            }
            Err(e) => {
                let _ = self.dp.record(relay, Side::A, None);
                let _ = self.dp.record(relay, Side::B, None);
                Err(e.to_string())
            }
        }
    }

    /// Untaps a recorded call that goes on and completes its file.
    fn stop_recording(&mut self, call_id: &str) {
        if let Some(c) = self.calls.get(call_id) {
            for side in [Side::A, Side::B] {
                let _ = self.dp.record(c.info.id, side, None);
            }
        }
        self.finish_recording(call_id);
    }

    fn finish_recording(&self, call_id: &str) {
        if let Err(e) = self.recorder.finish(call_id) {
            tracing::warn!(call_id, error = %e, "ng recording cannot be completed");
        }
    }

    /// Removes a call from the engine and completes its recording, if any (its relay is
    /// deleted next, and its taps with it).
    fn remove_call(&mut self, call_id: &str) -> Option<NgCall> {
        let call = self.calls.remove(call_id)?;
        if call.recording.is_some() {
            self.finish_recording(call_id);
        }
        Some(call)
    }

    /// `stop media`: ends playback to the `from-tag` party; forwarding resumes.
    fn stop_media(&mut self, req: &Value) -> Value {
        let (side, relay) = match self.side_of(req) {
            Ok((side, call)) => (side, call.info.id),
            Err(e) => return e,
        };
        match self.dp.stop_play(relay, side) {
            Ok(true) => ok(),
            Ok(false) => error("Not currently playing media"),
            Err(e) => error(&format!("Failed to stop playback: {e}")),
        }
    }

    /// Deletes calls whose media has been idle too long (and offers never answered).
    fn sweep(&mut self) {
        // Deletes that found the worker busy, again.
        let pending = std::mem::take(&mut self.pending_delete);
        for id in pending {
            if let Err(e) = self.dp.delete_relay_nowait(id) {
                if !e.relay_gone() {
                    self.pending_delete.push(id);
                }
            }
        }
        let media_ms = u64::from(self.cfg.media_timeout_secs) * 1000;
        // Unanswered offers and held calls may be silent much longer (rtpengine's
        // offer-timeout and silent-timeout).
        let silent_ms = u64::from(self.cfg.silent_timeout_secs) * 1000;
        let mut dead = Vec::new();
        for (id, call) in &self.calls {
            let limit_ms = if call.to_tag.is_none() || call.quiet {
                silent_ms.max(media_ms)
            } else {
                media_ms
            };
            if call.created_at.elapsed() < Duration::from_millis(limit_ms) {
                continue;
            }
            let idle = match self.dp.query_relay(call.info.id) {
                Ok((_, s)) => s.legs.iter().all(|l| l.rtp.idle_ms >= limit_ms),
                // Only a relay the dataplane no longer has is dead; a busy worker is not.
                Err(e) => e.relay_gone(),
            };
            if idle {
                dead.push(id.clone());
            }
        }
        for id in dead {
            if let Some(call) = self.remove_call(&id) {
                if self.dp.delete_relay_nowait(call.info.id).is_err() {
                    self.pending_delete.push(call.info.id);
                }
                tracing::info!(call_id = %id, "ng call deleted: media idle past the timeout");
            }
        }
        self.stats.calls.store(
            self.calls.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Runs one request: the cached reply for a retransmission, else the command.
    fn run(&mut self, job: &Job) -> Vec<u8> {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.requests.fetch_add(1, Relaxed);
        // Replies are cached per (source, cookie): another client reusing a cookie is another
        // request.
        let mut key = job.from.to_string().into_bytes();
        key.push(b' ');
        key.extend_from_slice(&job.cookie);
        let ttl = Duration::from_secs(u64::from(self.cfg.cache_secs));
        if let Some((t, r)) = self.cache.get(&key) {
            if t.elapsed() <= ttl {
                self.stats.retransmissions.fetch_add(1, Relaxed);
                return r.clone();
            }
        }
        let json = job.message.first() == Some(&b'{');
        let parsed = if json {
            serde_json::from_slice::<serde_json::Value>(&job.message)
                .map(|j| Value::from_json(&j))
                .map_err(|e| format!("Failed to decode JSON: {e}"))
        } else {
            bencode::decode(&job.message).map_err(|e| format!("Failed to decode bencode: {e}"))
        };
        let reply = match parsed {
            Ok(req @ Value::Dict(_)) => self.handle(&req),
            Ok(_) => error("Message is not a dictionary"),
            Err(e) => {
                self.stats.malformed.fetch_add(1, Relaxed);
                error(&e)
            }
        };
        if reply.get("result").and_then(Value::as_text).as_deref() == Some("error") {
            self.stats.errors.fetch_add(1, Relaxed);
        }
        let mut out = job.cookie.clone();
        out.push(b' ');
        if json {
            out.extend_from_slice(reply.to_json().to_string().as_bytes());
        } else {
            reply.encode_into(&mut out);
        }
        // Remember the reply for retransmissions; bounded by age, count and bytes.
        let now = Instant::now();
        while let Some(old) = self.cache_order.front() {
            let expired = self
                .cache
                .get(old)
                .is_none_or(|(t, _)| now.duration_since(*t) > ttl);
            let full = self.cache_order.len() >= self.cfg.cache_entries_max
                || self.cache_bytes + out.len() > CACHE_BYTES_MAX;
            if !(expired || full) {
                break;
            }
            if let Some(o) = self.cache_order.pop_front() {
                if let Some((_, r)) = self.cache.remove(&o) {
                    self.cache_bytes -= r.len();
                }
            }
        }
        if self.cfg.cache_entries_max > 0 && out.len() <= CACHE_BYTES_MAX {
            match self.cache.insert(key.clone(), (now, out.clone())) {
                Some((_, r)) => self.cache_bytes -= r.len(),
                None => self.cache_order.push_back(key),
            }
            self.cache_bytes += out.len();
        }
        self.stats.calls.store(self.calls.len() as u64, Relaxed);
        out
    }
}

/// Splits `<cookie> <message>`; `None` when there is no space or the cookie is unusable.
fn split_cookie(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let sp = data.iter().take(129).position(|b| *b == b' ')?;
    let cookie = &data[..sp];
    if cookie.is_empty() || !cookie.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some((cookie, &data[sp + 1..]))
}

/// Starts the ng listener (UDP and, when configured, TCP on the same address).
///
/// # Errors
/// The address cannot be bound.
pub async fn start(
    cfg: &NgConfig,
    dp: Arc<Dataplane>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<NgService> {
    use anyhow::Context;
    let (udp, tcp) = crate::sip::bind_pair(cfg.listen, true, cfg.tcp, "the ng listener").await?;
    let udp = udp.context("the ng listener needs UDP")?;
    let udp_addr = udp.local_addr()?;
    let tcp_addr = tcp.as_ref().map(TcpListener::local_addr).transpose()?;
    let recorder = record::Recorder::start(std::path::Path::new(&cfg.recording_dir))
        .context("the ng recorder thread")?;
    let stats = Arc::new(NgStats {
        recordings: recorder.stats.clone(),
        ..NgStats::default()
    });
    let advertise = if dp.advertise().is_unspecified() {
        cfg.listen.ip()
    } else {
        dp.advertise()
    };
    let engine = Engine {
        dp,
        advertise,
        calls: HashMap::new(),
        cache: HashMap::new(),
        cache_order: VecDeque::new(),
        cache_bytes: 0,
        pending_delete: Vec::new(),
        cfg: cfg.clone(),
        stats: stats.clone(),
        total_calls: 0,
        started: unix_now(),
        play_id: 0,
        recorder,
    };
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(4096);
    let mut tasks = vec![tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || engine_loop(engine, jobs_rx, stop)
    })];
    tasks.push(tokio::spawn(udp_loop(
        udp,
        jobs_tx.clone(),
        cfg.max_message_bytes,
        stats.clone(),
        stop.clone(),
    )));
    if let Some(l) = tcp {
        tasks.push(tokio::spawn(tcp_accept(
            l,
            jobs_tx,
            cfg.max_message_bytes,
            stats.clone(),
            stop,
        )));
    }
    tracing::info!(udp = %udp_addr, tcp = ?tcp_addr, "ng control protocol (rtpengine-compatible)");
    Ok(NgService {
        udp: Some(udp_addr),
        tcp: tcp_addr,
        stats,
        tasks,
    })
}

/// The engine runs on a blocking thread: its dataplane calls are short blocking round trips.
fn engine_loop(mut engine: Engine, mut jobs: mpsc::Receiver<Job>, stop: watch::Receiver<bool>) {
    let sweep_every = Duration::from_secs(u64::from(engine.cfg.media_timeout_secs.clamp(1, 10)));
    let mut next_sweep = Instant::now() + sweep_every;
    loop {
        if *stop.borrow() {
            break;
        }
        let wait = next_sweep.saturating_duration_since(Instant::now());
        let job = match tokio::runtime::Handle::try_current() {
            Ok(h) => h.block_on(async { tokio::time::timeout(wait, jobs.recv()).await }),
            Err(_) => Ok(jobs.blocking_recv()),
        };
        match job {
            Ok(Some(job)) => {
                let out = engine.run(&job);
                let _ = job.reply.send(out);
            }
            Ok(None) => break,
            Err(_) => {}
        }
        if Instant::now() >= next_sweep {
            engine.sweep();
            next_sweep = Instant::now() + sweep_every;
        }
    }
    // Stopping: recordings are completed (dropping the engine joins the recorder), the relays
    // go with the dataplane.
    let ids: Vec<String> = engine.calls.keys().cloned().collect();
    for id in ids {
        if let Some(call) = engine.remove_call(&id) {
            let _ = engine.dp.delete_relay_nowait(call.info.id);
        }
    }
}

async fn udp_loop(
    sock: Arc<UdpSocket>,
    jobs: mpsc::Sender<Job>,
    max: usize,
    stats: Arc<NgStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; max.max(1024) + 1];
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        if n > max {
            stats
                .malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        let Some((cookie, message)) = split_cookie(&buf[..n]) else {
            stats
                .malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        let (tx, rx) = oneshot::channel();
        let job = Job {
            cookie: cookie.to_vec(),
            message: message.to_vec(),
            from,
            reply: tx,
        };
        if jobs.send(job).await.is_err() {
            return;
        }
        let sock = sock.clone();
        tokio::spawn(async move {
            if let Ok(out) = rx.await {
                let _ = sock.send_to(&out, from).await;
            }
        });
    }
}

/// A TCP connection silent this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(300);
/// TCP connections served at once (more wait in the accept queue).
const TCP_CONNECTIONS_MAX: usize = 256;

async fn tcp_accept(
    l: TcpListener,
    jobs: mpsc::Sender<Job>,
    max: usize,
    stats: Arc<NgStats>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(TCP_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            r = l.accept() => r.ok(),
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some((s, from)) = accepted else {
            // Out of descriptors or similar: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (jobs, stats, stop) = (jobs.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            tcp_conn(s, from, jobs, max, stats, stop).await;
            drop(permit);
        });
    }
}

/// One TCP connection: messages back to back; each is a cookie, a space and one bencoded
/// value (or one JSON object). A message that cannot end within `max` bytes closes it.
async fn tcp_conn(
    mut s: tokio::net::TcpStream,
    from: SocketAddr,
    jobs: mpsc::Sender<Job>,
    max: usize,
    stats: Arc<NgStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Take every complete message in the buffer.
        loop {
            let blank = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            buf.drain(..blank);
            if buf.is_empty() {
                break;
            }
            let Some((cookie, message)) = split_cookie(&buf) else {
                if buf.len() > 128 || buf.contains(&b' ') {
                    stats
                        .malformed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                break;
            };
            let used = if message.first() == Some(&b'{') {
                let mut it =
                    serde_json::Deserializer::from_slice(message).into_iter::<serde_json::Value>();
                match it.next() {
                    Some(Ok(_)) => Some(it.byte_offset()),
                    Some(Err(e)) if e.is_eof() => None,
                    _ => Some(message.len()), // malformed: the engine answers the error
                }
            } else {
                match bencode::decode_prefix(message) {
                    Ok((_, n)) => Some(n),
                    Err(bencode::Error::Truncated) => None,
                    Err(_) => Some(message.len()),
                }
            };
            let Some(used) = used else { break };
            let cookie_len = cookie.len();
            let (tx, rx) = oneshot::channel();
            let job = Job {
                cookie: cookie.to_vec(),
                message: message[..used].to_vec(),
                from,
                reply: tx,
            };
            buf.drain(..cookie_len + 1 + used);
            if jobs.send(job).await.is_err() {
                return;
            }
            match rx.await {
                Ok(out) => {
                    // A client that does not read its replies is dropped.
                    let w = tokio::time::timeout(Duration::from_secs(10), s.write_all(&out)).await;
                    if !matches!(w, Ok(Ok(()))) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        if buf.len() > max {
            stats
                .malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let n = tokio::select! {
            r = tokio::time::timeout(TCP_IDLE, s.read(&mut chunk)) => match r {
                Ok(Ok(n)) if n > 0 => n,
                _ => return, // closed, failed or idle too long
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies() {
        assert_eq!(
            split_cookie(b"abc d1:xi1ee"),
            Some((&b"abc"[..], &b"d1:xi1ee"[..]))
        );
        assert_eq!(split_cookie(b"nospace"), None);
        assert_eq!(split_cookie(b" d"), None);
        assert_eq!(split_cookie(b"a\x01b d"), None);
    }
}
