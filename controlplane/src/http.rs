//! HTTP surfaces: the admin listener (health, metrics) and the management API of
//! `voxedge media` (relays). Handlers call the blocking dataplane handle on the blocking pool.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use voxedge_dataplane::command::{LegUpdate, RelaySnapshot, StreamSnapshot};
use voxedge_dataplane::ids::{RelayId, Side};
use voxedge_dataplane::table::SourcePolicy;
use voxedge_dataplane::{Dataplane, DataplaneError, LegRequest, RelayInfo, RelayRequest};

use crate::metrics::{self, BusyWindow};

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub dataplane: Arc<Dataplane>,
    pub busy: BusyWindow,
    pub list_limit_max: usize,
    pub role: &'static str,
    /// SIP counters (serve role), set once the SIP service runs.
    pub sip: std::sync::OnceLock<Arc<crate::sip::SipStats>>,
    /// Media cache counters (serve role), set once the cache is open.
    pub media: std::sync::OnceLock<Arc<crate::media::MediaStats>>,
    /// ng listener counters (both roles), set once the listener runs.
    pub ng: std::sync::OnceLock<Arc<crate::ng::NgStats>>,
}

/// An API error: a status and a JSON body `{"error":{"code","message"}}` that never leaks internals.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<DataplaneError> for ApiError {
    fn from(e: DataplaneError) -> Self {
        use voxedge_dataplane::command::CommandError;
        let (status, code) = match &e {
            DataplaneError::NotFound(_) | DataplaneError::Command(CommandError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            DataplaneError::PortsExhausted => (StatusCode::SERVICE_UNAVAILABLE, "ports_exhausted"),
            DataplaneError::Busy(_) | DataplaneError::Timeout(..) => {
                (StatusCode::SERVICE_UNAVAILABLE, "busy")
            }
            DataplaneError::Command(CommandError::Full(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "capacity")
            }
            DataplaneError::Command(CommandError::Open { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "port_unavailable")
            }
            DataplaneError::Command(CommandError::BadMedia(_)) => {
                (StatusCode::BAD_REQUEST, "bad_media")
            }
            DataplaneError::Command(CommandError::Unsupported(_)) => {
                (StatusCode::NOT_IMPLEMENTED, "unsupported")
            }
            DataplaneError::NoConference(_) => (StatusCode::NOT_FOUND, "not_found"),
            DataplaneError::Command(CommandError::Mix(_)) => {
                (StatusCode::CONFLICT, "conference_conflict")
            }
            DataplaneError::ConferenceWorker { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "conference_worker")
            }
            DataplaneError::Stopped(_) | DataplaneError::Command(CommandError::Exists(_)) => {
                tracing::error!(error = %e, "dataplane failure");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal dataplane error",
                );
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_json",
        };
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        ApiError::new(status, code, r.body_text())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DataplaneError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )),
    }
}

/// Admin routes: `/health` and `/metrics`.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_handler))
        .with_state(state)
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let workers: Vec<_> = st
        .dataplane
        .workers()
        .map(|w| w.running.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    let up = workers.iter().all(|r| *r);
    let body = json!({
        "status": if up { "ok" } else { "degraded" },
        "role": st.role,
        "workers": workers.len(),
        "workers_running": workers.iter().filter(|r| **r).count(),
        "uptime_s": st.dataplane.uptime().as_secs(),
    });
    let code = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics_handler(State(st): State<Arc<AppState>>) -> Response {
    let mut body = metrics::render(&st.dataplane, &st.busy);
    if let Some(s) = st.sip.get() {
        metrics::render_sip(&mut body, s);
    }
    if let Some(m) = st.media.get() {
        metrics::render_media(&mut body, m);
    }
    if let Some(n) = st.ng.get() {
        metrics::render_ng(&mut body, n);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

/// Management routes of `voxedge media`.
pub fn management_router(state: Arc<AppState>, body_bytes_max: usize) -> Router {
    Router::new()
        .route("/v1/relays", get(list_relays).post(create_relay))
        .route("/v1/relays/{id}", get(get_relay).delete(delete_relay))
        .route("/v1/relays/{id}/legs/{side}", patch(update_leg))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
        })
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(state)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegBody {
    remote: Option<SocketAddr>,
    rtcp_remote: Option<SocketAddr>,
    #[serde(default)]
    rtcp_mux: bool,
    clock_rate: Option<u32>,
    dtmf_payload_type: Option<u8>,
    /// The leg carries datagrams that are not RTP (T.38 UDPTL): forwarded as they are.
    #[serde(default)]
    opaque: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    a: LegBody,
    #[serde(default)]
    b: LegBody,
    #[serde(default)]
    strict_source: bool,
    #[serde(default)]
    media_handover: bool,
    #[serde(default)]
    rewrite: bool,
    /// Each leg returns what it receives to its own remote (a loopback test target).
    #[serde(default)]
    echo: bool,
}

fn leg_request(b: &LegBody) -> Result<LegRequest, ApiError> {
    let d = LegRequest::default();
    let clock = b.clock_rate.unwrap_or(d.clock_rate_hz);
    if !(1000..=192_000).contains(&clock) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_clock_rate",
            "clock_rate must be 1000..=192000",
        ));
    }
    if let Some(pt) = b.dtmf_payload_type {
        if pt > 127 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_payload_type",
                "dtmf_payload_type must be 0..=127",
            ));
        }
    }
    for r in [b.remote, b.rtcp_remote].into_iter().flatten() {
        if r.port() == 0 || r.ip().is_unspecified() || r.ip().is_multicast() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_remote",
                format!("{r} is not a unicast address and port"),
            ));
        }
    }
    Ok(LegRequest {
        remote: b.remote,
        rtcp_remote: b.rtcp_remote,
        rtcp_mux: b.rtcp_mux,
        clock_rate_hz: clock,
        dtmf_pt: b.dtmf_payload_type.or(d.dtmf_pt),
        opaque: b.opaque,
    })
}

fn leg_json(info: &RelayInfo, side: Side) -> serde_json::Value {
    let l = info.legs[side.index()];
    json!({"local": l.local, "rtcp_local": l.rtcp_local})
}

fn info_json(info: &RelayInfo) -> serde_json::Value {
    json!({"id": info.id.0.to_string(), "worker": info.worker.0, "a": leg_json(info, Side::A), "b": leg_json(info, Side::B)})
}

async fn create_relay(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_body"
        };
        ApiError::new(status, code, e.body_text())
    })?;
    // An empty body means "all defaults"; anything else must be a JSON object.
    let body: CreateBody = if body.is_empty() {
        CreateBody::default()
    } else {
        let json = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be application/json",
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?
    };
    let req = RelayRequest {
        legs: [leg_request(&body.a)?, leg_request(&body.b)?],
        policy: SourcePolicy {
            strict: body.strict_source,
            handover: body.media_handover,
        },
        rewrite: body.rewrite,
        echo: body.echo,
        worker: None,
    };
    let dp = st.dataplane.clone();
    let info = blocking(move || dp.create_relay(req)).await?;
    Ok((StatusCode::CREATED, Json(info_json(&info))).into_response())
}

fn parse_id(id: &str) -> Result<RelayId, ApiError> {
    id.parse::<u64>().map(RelayId).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "relay id must be a decimal number",
        )
    })
}

fn parse_side(s: &str) -> Result<Side, ApiError> {
    match s {
        "a" => Ok(Side::A),
        "b" => Ok(Side::B),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_side",
            "leg must be `a` or `b`",
        )),
    }
}

#[derive(Serialize)]
struct Direction {
    packets: u64,
    bytes: u64,
    drops: u64,
}

fn direction(from: &StreamSnapshot, from_rtcp: Option<&StreamSnapshot>) -> Direction {
    let rtcp_fwd = from_rtcp.map_or(0, |r| r.counters.packets_forwarded);
    let rtcp_drops = from_rtcp.map_or(0, |r| r.counters.drops.total());
    Direction {
        packets: from.counters.packets_forwarded + rtcp_fwd,
        bytes: from.counters.bytes_in,
        drops: from.counters.drops.total() + rtcp_drops,
    }
}

fn snapshot_json(info: &RelayInfo, snap: &RelaySnapshot) -> serde_json::Value {
    let leg = |side: Side| {
        let l = &snap.legs[side.index()];
        let mut v = leg_json(info, side);
        v["remote"] = json!(l.rtp.remote);
        v["rtp"] = json!(l.rtp);
        v["rtcp"] = json!(l.rtcp);
        v
    };
    let [a, b] = &snap.legs;
    json!({
        "id": info.id.0.to_string(),
        "worker": info.worker.0,
        "a": leg(Side::A),
        "b": leg(Side::B),
        "directions": {
            "a_to_b": direction(&a.rtp, a.rtcp.as_ref()),
            "b_to_a": direction(&b.rtp, b.rtcp.as_ref()),
        }
    })
}

async fn get_relay(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let dp = st.dataplane.clone();
    let (info, snap) = blocking(move || dp.query_relay(id)).await?;
    Ok(Json(snapshot_json(&info, &snap)).into_response())
}

async fn delete_relay(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let dp = st.dataplane.clone();
    let (info, snap) = blocking(move || dp.delete_relay(id)).await?;
    Ok(Json(snapshot_json(&info, &snap)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<u64>,
}

async fn list_relays(
    State(st): State<Arc<AppState>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(1000).min(st.list_limit_max);
    let all = st.dataplane.list_relays();
    let total = all.len();
    let page: Vec<_> = all
        .iter()
        .filter(|r| q.after.is_none_or(|a| r.id.0 > a))
        .take(limit)
        .map(info_json)
        .collect();
    let next_after = if page.len() == limit {
        page.last()
            .and_then(|r| r["id"].as_str().map(str::to_string))
    } else {
        None
    };
    Ok(Json(json!({"relays": page, "total": total, "next_after": next_after})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegPatch {
    remote: Option<SocketAddr>,
    rtcp_remote: Option<SocketAddr>,
    blocked: Option<bool>,
    opaque: Option<bool>,
}

async fn update_leg(
    State(st): State<Arc<AppState>>,
    Path((id, side)): Path<(String, String)>,
    body: Result<Json<LegPatch>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let side = parse_side(&side)?;
    let Json(p) = body?;
    let check = LegBody {
        remote: p.remote,
        rtcp_remote: p.rtcp_remote,
        ..Default::default()
    };
    leg_request(&check)?;
    let update = LegUpdate {
        remote: p.remote,
        rtcp_remote: p.rtcp_remote,
        blocked: p.blocked,
        echo: None,
        dtmf_pt: None,
        opaque: p.opaque,
    };
    let dp = st.dataplane.clone();
    blocking(move || dp.update_leg(id, side, update)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
