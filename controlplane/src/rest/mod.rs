//! The Twilio-compatible REST API (2010-04-01): accounts and subaccounts, API keys,
//! applications, incoming phone numbers, calls (placed through the SIP service), call events,
//! notifications, recordings (metadata) and usage records.
//!
//! One dispatcher serves every route of [`routes::ROUTES`]: it matches the path, reads the
//! body under the size limit, authenticates (HTTP Basic: `AccountSid:AuthToken` or
//! `ApiKeySid:Secret`), applies the per-account request rate, checks every parameter against
//! the route's list (unknown ones are refused), resolves the account of the path (the
//! authenticated account or one of its subaccounts — anything else is 404, so other tenants'
//! SIDs are never confirmed) and calls the operation. Errors are Twilio's JSON
//! (`code`, `message`, `more_info`, `status`); every answer carries a request id and is logged
//! without secrets.

mod conferences;
pub mod routes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::calls::{CallError, CallService, NewCall, LIVE};
use crate::config::ApiConfig;
use crate::secret::{constant_time_eq, is_sid, new_sid};
use crate::sip::SipHandle;
use crate::store::{
    self, now_us, parse_date, rfc2822, Account, ApiKey, Filter, Kind, Store, StoreError, Table,
    APPLICATIONS, CALLS, CALL_EVENTS, MEDIA, NOTIFICATIONS, NUMBERS, RECORDINGS,
};
use routes::{Op, Param, Route, Ty, PAGING, ROUTES};

const API: &str = "/2010-04-01";

/// Shared state of the API.
#[derive(Debug)]
pub struct RestState {
    pub store: Store,
    pub calls: Arc<CallService>,
    pub sip: Option<SipHandle>,
    pub cfg: ApiConfig,
    /// The media cache (serve role with SIP).
    pub media: Option<Arc<crate::media::MediaCache>>,
    /// Recording files (serve role with SIP).
    pub recordings: Option<Arc<crate::recordings::Recordings>>,
    limiter: Mutex<HashMap<String, (f64, Instant)>>,
    /// A sealed value opened on authentication misses (equal work for unknown SIDs).
    decoy: String,
}

impl RestState {
    pub fn new(
        store: Store,
        calls: Arc<CallService>,
        sip: Option<SipHandle>,
        cfg: ApiConfig,
        media: Option<Arc<crate::media::MediaCache>>,
        recordings: Option<Arc<crate::recordings::Recordings>>,
    ) -> Self {
        let decoy = store.key().seal(&crate::secret::new_token());
        RestState {
            store,
            calls,
            sip,
            cfg,
            media,
            recordings,
            limiter: Mutex::new(HashMap::new()),
            decoy,
        }
    }

    /// One request of `account` against its per-second budget.
    fn allow(&self, account: &str) -> bool {
        let rate = f64::from(self.cfg.requests_per_second_per_account.max(1));
        let now = Instant::now();
        let mut m = crate::lock(&self.limiter);
        if m.len() > 100_000 {
            m.retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * rate < rate);
        }
        let (tokens, at) = m.entry(account.to_string()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A Twilio-style error answer.
#[derive(Debug)]
pub struct TwError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl TwError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        TwError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {path} was not found"),
        )
    }

    /// The error as Twilio's JSON; a 401 says how to authenticate.
    fn to_response(&self) -> Response {
        let mut r = (
            self.status,
            Json(json!({
                "code": self.code,
                "message": self.message,
                "more_info": more_info(self.code),
                "status": self.status.as_u16(),
            })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Twilio API\""),
            );
        }
        r
    }
}

impl From<StoreError> for TwError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => TwError::bad(20001, format!("conflict: {m}")),
            other => {
                tracing::error!(error = %other, "store failure");
                TwError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    20500,
                    "the service could not complete the request; retry later",
                )
            }
        }
    }
}

/// Where an error code is explained: Twilio's page for Twilio's codes, ours for VoxEdge's.
pub fn more_info(code: u32) -> String {
    if (82_000..83_000).contains(&code) || matches!(code, 20_413 | 20_415 | 20_500 | 20_503) {
        format!("docs/api.md#error-{code} (in the VoxEdge source tree)")
    } else {
        format!("https://www.twilio.com/docs/errors/{code}")
    }
}

/// The HTTP router: the API plus `/openapi.json`.
pub fn router(state: Arc<RestState>) -> Router {
    Router::new()
        .route("/openapi.json", get(|| async { Json(routes::openapi()) }))
        .fallback(dispatch)
        .with_state(state)
}

/// Who is calling.
struct Principal {
    account: Account,
    via_key: bool,
}

/// Checked parameters of a request.
#[derive(Debug, Default)]
struct Params {
    values: HashMap<&'static str, Vec<String>>,
    /// The filters as given, to repeat them in page URIs.
    echo: Vec<(String, String)>,
}

impl Params {
    fn get(&self, k: &str) -> Option<&str> {
        self.values
            .get(k)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    fn has(&self, k: &str) -> bool {
        self.values.contains_key(k)
    }

    fn int(&self, k: &str) -> Option<i64> {
        self.get(k).and_then(|v| v.parse().ok())
    }

    fn bool(&self, k: &str) -> Option<bool> {
        self.get(k).map(|v| v.eq_ignore_ascii_case("true"))
    }
}

fn request_id() -> String {
    new_sid("RQ")
}

async fn dispatch(State(st): State<Arc<RestState>>, req: Request) -> Response {
    let started = Instant::now();
    let rid = request_id();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let mut account_for_log = String::new();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let get = method == "GET";
    // Two GET resources are not JSON: an account's event stream and recordings' audio.
    let mut resp = if let Some(acc) = events_path(&path).filter(|_| get) {
        let query = req.uri().query().unwrap_or("").to_string();
        account_for_log.clone_from(&acc);
        event_stream(&st, &acc, auth.as_deref(), &query)
            .await
            .unwrap_or_else(|e| e.to_response())
    } else if let Some((acc, sid, ext)) = recording_media_path(&path).filter(|_| get) {
        recording_media(&st, &acc, &sid, &ext, auth.as_deref(), &mut account_for_log)
            .await
            .unwrap_or_else(|e| e.to_response())
    } else {
        api_response(&st, req, &mut account_for_log).await
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("Twilio-Request-Id", v);
    }
    tracing::info!(
        target: "voxedge::api",
        request_id = %rid,
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        account = %account_for_log,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "api request"
    );
    resp
}

/// `/v1/Accounts/{AccountSid}/Events`: the account.
fn events_path(path: &str) -> Option<String> {
    let acc = path
        .strip_prefix("/v1/Accounts/")?
        .strip_suffix("/Events")?;
    is_sid(acc, "AC").then(|| acc.to_string())
}

/// The account's request rate (every API path, streams and recording audio included).
fn rate_limit(st: &RestState, account: &str) -> Result<(), TwError> {
    if st.allow(account) {
        return Ok(());
    }
    Err(TwError::new(
        StatusCode::TOO_MANY_REQUESTS,
        20429,
        format!(
            "Too many requests: at most {} per second per account",
            st.cfg.requests_per_second_per_account
        ),
    ))
}

/// Server-sent events of an account (`CallSid=` narrows to one call): see `crate::events`.
async fn event_stream(
    st: &Arc<RestState>,
    acc: &str,
    auth: Option<&str>,
    query: &str,
) -> Result<Response, TwError> {
    let principal = authenticate(st, auth).await?;
    rate_limit(st, &principal.account.sid)?;
    path_account(st, &principal, acc).await?;
    let mut call = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "CallSid" if is_sid(&v, "CA") => call = Some(v.to_string()),
            other => {
                return Err(TwError::bad(
                    20001,
                    format!("{other}={v} is not a parameter of the event stream (CallSid=CA…)"),
                ))
            }
        }
    }
    let Some(sub) = st.calls.events().subscribe(acc, call) else {
        return Err(TwError::new(
            StatusCode::TOO_MANY_REQUESTS,
            20429,
            format!(
                "At most {} event streams per account are open at once",
                crate::events::STREAMS_PER_ACCOUNT
            ),
        ));
    };
    let body = futures_util::stream::unfold(Some(sub), |sub| async move {
        let mut sub = sub?;
        let chunk = match tokio::time::timeout(Duration::from_secs(15), sub.next()).await {
            Err(_) => ": keep-alive\n\n".to_string(),
            Ok(crate::events::Next::Event(e)) => {
                format!("id: {}\nevent: {}\ndata: {}\n\n", e.id, e.kind, e.data)
            }
            Ok(crate::events::Next::Lagged(n)) => {
                format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n")
            }
            Ok(crate::events::Next::End) => return None,
        };
        Some((
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk)),
            Some(sub),
        ))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// `/2010-04-01/Accounts/{AccountSid}/Recordings/{Sid}` with `.wav`, `.mp3` or no extension:
/// (account, recording SID, extension).
fn recording_media_path(path: &str) -> Option<(String, String, String)> {
    let rest = path.strip_prefix(API)?.strip_prefix("/Accounts/")?;
    let (acc, rest) = rest.split_once('/')?;
    let file = rest.strip_prefix("Recordings/")?;
    let (sid, ext) = match file.rsplit_once('.') {
        Some((sid, ext)) if ext == "wav" || ext == "mp3" => (sid, ext),
        Some(_) => return None,
        None => (file, "wav"),
    };
    (is_sid(acc, "AC") && is_sid(sid, "RE")).then(|| (acc.into(), sid.into(), ext.into()))
}

/// A recording's audio (`RecordingUrl`): the WAV as stored, or MP3 encoded from it.
async fn recording_media(
    st: &Arc<RestState>,
    acc: &str,
    sid: &str,
    ext: &str,
    auth: Option<&str>,
    account_for_log: &mut String,
) -> Result<Response, TwError> {
    let path = format!("{API}/Accounts/{acc}/Recordings/{sid}.{ext}");
    let Some(rec) = st.recordings.clone() else {
        return Err(TwError::not_found(&path));
    };
    if rec.require_auth {
        let principal = authenticate(st, auth).await?;
        account_for_log.clone_from(&principal.account.sid);
        rate_limit(st, &principal.account.sid)?;
        path_account(st, &principal, acc).await?;
    } else {
        // Anonymous downloads (MP3 is encoded per request) have a budget of their own per
        // account, so strangers cannot spend the owner's API budget.
        rate_limit(st, &format!("{acc}/recordings"))?;
    }
    let row = st
        .store
        .get(&RECORDINGS, acc, sid)
        .await?
        .ok_or_else(|| TwError::not_found(&path))?;
    if row.get("status").and_then(Value::as_str) != Some("completed") {
        return Err(TwError::not_found(&path));
    }
    let s = sid.to_string();
    let wav = tokio::task::spawn_blocking(move || rec.read(&s))
        .await
        .map_err(|_| TwError::not_found(&path))?
        .map_err(|_| TwError::not_found(&path))?;
    if ext == "mp3" {
        let mp3 = tokio::task::spawn_blocking(move || crate::recordings::wav_to_mp3(&wav))
            .await
            .map_err(|_| TwError::not_found(&path))?
            .map_err(|e| TwError::new(StatusCode::INTERNAL_SERVER_ERROR, 20500, e))?;
        return Ok(([(header::CONTENT_TYPE, "audio/mpeg")], mp3).into_response());
    }
    Ok(([(header::CONTENT_TYPE, "audio/x-wav")], wav).into_response())
}

async fn api_response(st: &Arc<RestState>, req: Request, account_for_log: &mut String) -> Response {
    match handle(st, req, account_for_log).await {
        Ok((StatusCode::NO_CONTENT, _)) => StatusCode::NO_CONTENT.into_response(),
        Ok((status, body)) => (status, Json(body)).into_response(),
        Err(e) => e.to_response(),
    }
}

async fn handle(
    st: &Arc<RestState>,
    req: Request,
    account_for_log: &mut String,
) -> Result<(StatusCode, Value), TwError> {
    let path = req.uri().path().to_string();
    let method = req.method().as_str().to_ascii_uppercase();
    // Route.
    let mut matched_path = false;
    let mut found: Option<(&'static Route, Vec<(&'static str, String)>)> = None;
    for r in ROUTES {
        if let Some(p) = routes::match_path(r.path, &path) {
            matched_path = true;
            if r.method == method {
                found = Some((r, p));
                break;
            }
        }
    }
    let Some((route, path_params)) = found else {
        if matched_path {
            return Err(TwError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                20004,
                format!("Method {method} not allowed on {path}"),
            ));
        }
        return Err(TwError::not_found(&path));
    };
    // Body, under the limit.
    let limit = st.cfg.body_bytes_max;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let query = req.uri().query().unwrap_or("").to_string();
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large(limit))?;
    // Authenticate, then the rate.
    let principal = authenticate(st, auth.as_deref()).await?;
    account_for_log.clone_from(&principal.account.sid);
    rate_limit(st, &principal.account.sid)?;
    // Parameters.
    let raw = if method == "POST" {
        if !body.is_empty() && !content_type.starts_with("application/x-www-form-urlencoded") {
            return Err(TwError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                20415,
                "Requests must be application/x-www-form-urlencoded",
            ));
        }
        if !query.is_empty() {
            return Err(TwError::bad(
                20001,
                "POST parameters belong in the form body, not the query string",
            ));
        }
        body.to_vec()
    } else {
        if !body.is_empty() {
            return Err(TwError::bad(
                20001,
                format!("{method} requests take no body"),
            ));
        }
        query.into_bytes()
    };
    let params = check_params(route, &raw, st.cfg.page_size_max)?;
    let pp = |k: &str| {
        path_params
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    // The account the path names (absent only on /Accounts.json).
    let account = if route.path.contains("{AccountSid}") {
        let sid = pp("AccountSid");
        let a = path_account(st, &principal, &sid).await?;
        Some(a)
    } else {
        None
    };
    if method != "GET" && route.op != Op::AccountUpdate {
        if let Some(a) = account.as_ref().filter(|a| a.status != "active") {
            return Err(TwError::new(
                StatusCode::FORBIDDEN,
                20403,
                format!(
                    "Account {} is {}: its resources are read-only",
                    a.sid, a.status
                ),
            ));
        }
    }
    let ctx = Ctx {
        st,
        principal: &principal,
        account: account.as_ref(),
        params: &params,
        sid: pp("Sid"),
        call_sid: pp("CallSid"),
        conference_sid: pp("ConferenceSid"),
        path: &path,
    };
    let status = StatusCode::from_u16(routes::success_status(route)).unwrap_or(StatusCode::OK);
    let body = run(route.op, &ctx).await?;
    Ok((status, body))
}

fn too_large(limit: usize) -> TwError {
    TwError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        20413,
        format!("Request body larger than {limit} bytes"),
    )
}

fn unauthorized() -> TwError {
    TwError::new(
        StatusCode::UNAUTHORIZED,
        20003,
        "Authenticate: HTTP Basic with AccountSid:AuthToken or ApiKeySid:Secret",
    )
}

async fn authenticate(st: &RestState, header: Option<&str>) -> Result<Principal, TwError> {
    let creds = header
        .and_then(|h| {
            h.strip_prefix("Basic ")
                .or_else(|| h.strip_prefix("basic "))
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(unauthorized)?;
    let (user, pass) = creds.split_once(':').ok_or_else(unauthorized)?;
    // An unknown SID costs the same work as a known one (a decryption), so response times
    // do not tell which SIDs exist.
    let miss = || {
        let _ = st.store.key().open(&st.decoy);
        unauthorized()
    };
    let (account, via_key) = if is_sid(user, "AC") {
        let a = st.store.account(user).await?.ok_or_else(miss)?;
        let token = st.store.auth_token(&a)?;
        if !constant_time_eq(token.as_bytes(), pass.as_bytes()) {
            return Err(unauthorized());
        }
        (a, false)
    } else if is_sid(user, "SK") {
        let k: ApiKey = st.store.key_by_sid(user).await?.ok_or_else(miss)?;
        let secret = st
            .store
            .key()
            .open(&k.secret_sealed)
            .map_err(StoreError::from)?;
        if !constant_time_eq(secret.as_bytes(), pass.as_bytes()) {
            return Err(unauthorized());
        }
        let a = st
            .store
            .account(&k.account_sid)
            .await?
            .ok_or_else(unauthorized)?;
        (a, true)
    } else {
        return Err(unauthorized());
    };
    if account.status != "active" {
        return Err(TwError::new(
            StatusCode::UNAUTHORIZED,
            20005,
            format!("Account not active ({})", account.status),
        ));
    }
    // A subaccount is usable only while its owner is.
    if let Some(owner) = &account.owner_account_sid {
        let active = st
            .store
            .account(owner)
            .await?
            .is_some_and(|o| o.status == "active");
        if !active {
            return Err(TwError::new(
                StatusCode::UNAUTHORIZED,
                20005,
                "Account not active (its owner account is not active)",
            ));
        }
    }
    Ok(Principal { account, via_key })
}

/// The account of the path: the principal or one of its subaccounts; anything else 404.
async fn path_account(
    st: &RestState,
    principal: &Principal,
    sid: &str,
) -> Result<Account, TwError> {
    let nf = || TwError::not_found(&format!("{API}/Accounts/{sid}"));
    if sid == principal.account.sid {
        return Ok(principal.account.clone());
    }
    if !is_sid(sid, "AC") {
        return Err(nf());
    }
    let a = st.store.account(sid).await?.ok_or_else(nf)?;
    if a.owner_account_sid.as_deref() == Some(principal.account.sid.as_str()) {
        Ok(a)
    } else {
        Err(nf())
    }
}

/// A SIP header name we accept in a registration (a token, at most 64 characters).
fn is_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!%*+`'~".contains(&b))
}

fn check_value(p: &Param, v: &str) -> Result<String, TwError> {
    let bad = |why: &str| TwError::bad(20001, format!("Invalid {}: {why}", p.name));
    if v.len() > 4000 {
        return Err(bad("longer than 4000 characters"));
    }
    let multiline = p.name == "Twiml";
    if v.chars()
        .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
    {
        return Err(bad("control characters are not allowed"));
    }
    Ok(match p.ty {
        Ty::Str => {
            if p.name == "FriendlyName" && v.chars().count() > 64 {
                return Err(bad("longer than 64 characters"));
            }
            v.to_string()
        }
        Ty::Int => {
            v.trim().parse::<i64>().map_err(|_| bad("not an integer"))?;
            v.trim().to_string()
        }
        Ty::Range(min, max) => match v.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => n.to_string(),
            _ => return Err(bad(&format!("must be an integer from {min} to {max}"))),
        },
        Ty::Bool => match v.to_ascii_lowercase().as_str() {
            "true" | "false" => v.to_ascii_lowercase(),
            _ => return Err(bad("must be true or false")),
        },
        Ty::HeaderNames => {
            let names: Vec<&str> = v.split([' ', ',']).filter(|n| !n.is_empty()).collect();
            if names.len() > 20 || !names.iter().all(|n| is_header_name(n)) {
                return Err(bad("SIP header names (letters, digits, - _ .), at most 20"));
            }
            names.join(" ")
        }
        Ty::HeaderFilter => {
            if !v.is_empty() {
                let ok = v.split_once(':').is_some_and(|(n, t)| {
                    is_header_name(n.trim()) && !t.trim().is_empty() && t.len() <= 256
                });
                if !ok {
                    return Err(bad("must be `Header-Name: text`"));
                }
            }
            v.to_string()
        }
        Ty::FetchOverrides => {
            if !v.is_empty() {
                crate::voice::fetch::Timeouts::default()
                    .with_fragment(v)
                    .map_err(|e| bad(&e))?;
            }
            v.to_string()
        }
        Ty::Url => {
            if v.is_empty() {
                return Ok(String::new());
            }
            let rest = v
                .strip_prefix("http://")
                .or_else(|| v.strip_prefix("https://"))
                .ok_or_else(|| bad("must be an absolute http:// or https:// URL"))?;
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            if host.is_empty() || v.len() > 2048 || v.contains(char::is_whitespace) {
                return Err(bad("not a valid URL"));
            }
            v.to_string()
        }
        Ty::HttpMethod => match v.to_ascii_uppercase().as_str() {
            "GET" | "POST" => v.to_ascii_uppercase(),
            _ => return Err(bad("must be GET or POST")),
        },
        Ty::OneOf(set) | Ty::Many(set) => {
            if !set.contains(&v) {
                return Err(bad(&format!("must be one of {}", set.join(", "))));
            }
            v.to_string()
        }
        Ty::Date => {
            parse_date(v).ok_or_else(|| bad("must be a date YYYY-MM-DD"))?;
            v.to_string()
        }
        Ty::E164 => {
            let digits = v.strip_prefix('+').unwrap_or("");
            if !(2..=15).contains(&digits.len())
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || digits.starts_with('0')
            {
                return Err(bad("must be E.164, like +15551234567"));
            }
            v.to_string()
        }
    })
}

fn check_params(route: &Route, raw: &[u8], page_size_max: u32) -> Result<Params, TwError> {
    if std::str::from_utf8(raw).is_err() {
        return Err(TwError::bad(20001, "Parameters are not valid UTF-8"));
    }
    let bad_escape = raw.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && !(raw.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && raw.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if bad_escape {
        return Err(TwError::bad(
            20001,
            "Malformed parameters: a % not followed by two hex digits",
        ));
    }
    let mut out = Params::default();
    let list = routes::is_list(route.op);
    for (k, v) in form_urlencoded::parse(raw) {
        let Some(p) = route
            .params
            .iter()
            .chain(if list { PAGING } else { &[] })
            .find(|p| p.name == k)
        else {
            if k.is_empty() {
                return Err(TwError::bad(20001, "Malformed parameters: an empty name"));
            }
            let shown: String = k.chars().take(64).collect();
            return Err(TwError::bad(
                20001,
                format!(
                    "Unknown parameter '{shown}' for {} {}",
                    route.method, route.path
                ),
            ));
        };
        let vals = out.values.entry(p.name).or_default();
        if !vals.is_empty() && !matches!(p.ty, Ty::Many(_)) {
            return Err(TwError::bad(
                20001,
                format!("Parameter {} given more than once", p.name),
            ));
        }
        if vals.len() >= 16 {
            return Err(TwError::bad(20001, format!("Too many {} values", p.name)));
        }
        let v = check_value(p, &v)?;
        if !matches!(p.name, "Page" | "PageSize" | "PageToken") {
            out.echo.push((p.name.to_string(), v.clone()));
        }
        vals.push(v);
    }
    for p in route.params {
        if p.required && !out.has(p.name) {
            let code = match p.name {
                "To" => 21201,
                "From" => 21213,
                _ => 20001,
            };
            return Err(TwError::bad(
                code,
                format!("Missing required parameter {}", p.name),
            ));
        }
    }
    if let Some(n) = out.int("PageSize") {
        if n < 1 || n > i64::from(page_size_max) {
            return Err(TwError::bad(
                20001,
                format!("PageSize must be between 1 and {page_size_max}"),
            ));
        }
    }
    if let Some(n) = out.int("Page") {
        if !(0..=1_000_000).contains(&n) {
            return Err(TwError::bad(20001, "Page must be between 0 and 1000000"));
        }
    }
    Ok(out)
}

/// Everything an operation sees.
#[derive(Clone)]
struct Ctx<'a> {
    st: &'a Arc<RestState>,
    principal: &'a Principal,
    account: Option<&'a Account>,
    params: &'a Params,
    sid: String,
    call_sid: String,
    conference_sid: String,
    path: &'a str,
}

impl Ctx<'_> {
    fn acc(&self) -> &Account {
        self.account.unwrap_or(&self.principal.account)
    }

    fn acc_sid(&self) -> &str {
        &self.acc().sid
    }

    fn page(&self) -> (i64, i64) {
        (
            self.params.int("Page").unwrap_or(0),
            self.params.int("PageSize").unwrap_or(50),
        )
    }

    fn no_keys(&self) -> Result<(), TwError> {
        if self.principal.via_key {
            return Err(TwError::new(
                StatusCode::FORBIDDEN,
                20403,
                "API keys cannot manage accounts or keys; use the account's auth token",
            ));
        }
        Ok(())
    }

    /// The position a `PageToken` names: `PA<order value>_<SID>` of the last row of the
    /// previous page. A token that does not parse is a 400.
    fn cursor(&self) -> Result<Option<(i64, String)>, TwError> {
        let Some(t) = self.params.get("PageToken") else {
            return Ok(None);
        };
        let bad = || TwError::bad(20001, "Invalid PageToken: use the next_page_uri of a list");
        let (v, sid) = t
            .strip_prefix("PA")
            .and_then(|r| r.split_once('_'))
            .ok_or_else(bad)?;
        let v: i64 = v.parse().map_err(|_| bad())?;
        if sid.len() != 34 || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad());
        }
        Ok(Some((v, sid.to_string())))
    }

    /// A list answer in Twilio's paging shape (offset paging by `Page`).
    fn list(&self, key: &str, items: Vec<Value>, more: bool) -> Value {
        self.list_with(key, items, more, None)
    }

    /// The same, with `next` the `PageToken` of the next page (keyset paging).
    fn list_with(&self, key: &str, items: Vec<Value>, more: bool, next: Option<String>) -> Value {
        let (page, size) = self.page();
        let base = self.path.to_string();
        let with_token = |p: i64, token: Option<&str>| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &self.params.echo {
                q.append_pair(k, v);
            }
            q.append_pair("PageSize", &size.to_string());
            q.append_pair("Page", &p.to_string());
            if let Some(t) = token {
                q.append_pair("PageToken", t);
            }
            format!("{base}?{}", q.finish())
        };
        let uri = |p: i64| with_token(p, None);
        let next_uri = match &next {
            Some(t) => with_token(page + 1, Some(t)),
            None => uri(page + 1),
        };
        let n = items.len() as i64;
        json!({
            key: items,
            "page": page,
            "page_size": size,
            "start": page * size,
            "end": if n == 0 { page * size } else { page * size + n - 1 },
            "uri": with_token(page, self.params.get("PageToken")),
            "first_page_uri": uri(0),
            "next_page_uri": if more { Value::from(next_uri) } else { Value::Null },
            "previous_page_uri": if page > 0 { Value::from(uri(page - 1)) } else { Value::Null },
        })
    }
}

/// Twilio's resource collection names for URIs.
fn collection(t: &Table) -> &'static str {
    match t.name {
        "applications" => "Applications",
        "incoming_phone_numbers" => "IncomingPhoneNumbers",
        "calls" => "Calls",
        "notifications" => "Notifications",
        "recordings" => "Recordings",
        "media_cache" => "Media",
        "conferences" => "Conferences",
        _ => "Events",
    }
}

/// Columns kept inside (instructions, limits, SIP details) and not shown.
const CALL_HIDDEN: &[&str] = &[
    "callback_attempts",
    "callback_backoff_ms",
    "url",
    "method",
    "twiml",
    "fallback_url",
    "fallback_method",
    "status_callback",
    "status_callback_method",
    "status_callback_event",
    "timeout",
    "time_limit",
    "send_digits",
    "record",
    "sip_response_code",
    "application_sid",
];

/// A stored row as Twilio's JSON.
fn render(t: &Table, row: &Map<String, Value>) -> Value {
    let mut m = Map::new();
    let acc = row.get("account_sid").and_then(Value::as_str).unwrap_or("");
    let sid = row.get("sid").and_then(Value::as_str).unwrap_or("");
    for (k, v) in row {
        if t.name == "calls" && CALL_HIDDEN.contains(&k.as_str()) {
            continue;
        }
        let shown = match (t.kind(k), v) {
            (Some(Kind::Time), Value::Number(n)) => Value::from(rfc2822(n.as_i64().unwrap_or(0))),
            (Some(Kind::IntString), Value::Number(n)) => Value::from(n.to_string()),
            _ => v.clone(),
        };
        m.insert(k.clone(), shown);
    }
    let root = if t.name == "media_cache" { "/v1" } else { API };
    let base = if t.name == "conference_participants" {
        // A participant is named by its call SID under its conference.
        m.remove("sid");
        let conf = row
            .get("conference_sid")
            .and_then(Value::as_str)
            .unwrap_or("");
        format!("{root}/Accounts/{acc}/Conferences/{conf}/Participants/{sid}")
    } else {
        format!("{root}/Accounts/{acc}/{}/{sid}", collection(t))
    };
    m.insert("uri".into(), Value::from(format!("{base}.json")));
    match t.name {
        "conferences" => {
            m.insert(
                "subresource_uris".into(),
                json!({
                    "participants": format!("{base}/Participants.json"),
                    "recordings": format!("{base}/Recordings.json"),
                }),
            );
        }
        "conference_participants" => {
            m.entry("queue_time").or_insert(Value::Null);
        }
        "calls" => {
            for k in [
                "annotation",
                "answered_by",
                "group_sid",
                "trunk_sid",
                "phone_number_sid",
            ] {
                m.entry(k).or_insert(Value::Null);
            }
            m.insert(
                "subresource_uris".into(),
                json!({
                    "notifications": format!("{base}/Notifications.json"),
                    "recordings": format!("{base}/Recordings.json"),
                    "events": format!("{base}/Events.json"),
                }),
            );
        }
        "recordings" => {
            // Where the file is on disk stays inside.
            m.remove("media_path");
            let done = row.get("status").and_then(Value::as_str) == Some("completed");
            m.insert(
                "media_url".into(),
                if done {
                    Value::from(crate::recordings::Recordings::path_of_url(acc, sid))
                } else {
                    Value::Null
                },
            );
        }
        "incoming_phone_numbers" => {
            m.insert(
                "capabilities".into(),
                json!({"voice": true, "sms": false, "mms": false, "fax": false}),
            );
        }
        _ => {}
    }
    Value::Object(m)
}

fn render_account(a: &Account, token: Option<&str>) -> Value {
    let base = format!("{API}/Accounts/{}", a.sid);
    json!({
        "sid": a.sid,
        "owner_account_sid": a.owner_account_sid.clone().unwrap_or_else(|| a.sid.clone()),
        "friendly_name": a.friendly_name,
        "status": a.status,
        "type": a.kind,
        "auth_token": token,
        "date_created": rfc2822(a.date_created),
        "date_updated": rfc2822(a.date_updated),
        "uri": format!("{base}.json"),
        "subresource_uris": {
            "applications": format!("{base}/Applications.json"),
            "calls": format!("{base}/Calls.json"),
            "incoming_phone_numbers": format!("{base}/IncomingPhoneNumbers.json"),
            "keys": format!("{base}/Keys.json"),
            "notifications": format!("{base}/Notifications.json"),
            "recordings": format!("{base}/Recordings.json"),
            "usage": format!("{base}/Usage.json"),
        }
    })
}

fn render_key(k: &ApiKey, secret: Option<&str>) -> Value {
    let mut v = json!({
        "sid": k.sid,
        "friendly_name": k.friendly_name,
        "date_created": rfc2822(k.date_created),
        "date_updated": rfc2822(k.date_updated),
    });
    if let Some(s) = secret {
        v["secret"] = Value::from(s);
    }
    v
}

/// `VoiceUrl` → `voice_url`.
fn column_of(param: &str) -> String {
    let mut out = String::new();
    for (i, c) in param.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The column values a create/update request sets, as the table's columns.
fn columns_from(t: &Table, params: &Params) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    for (name, vals) in &params.values {
        let col = column_of(name);
        let Some((c, kind)) = t.columns.iter().find(|(c, _)| *c == col) else {
            continue;
        };
        let v = vals.join(" ");
        let v = match kind {
            Kind::Bool => Value::Bool(v == "true"),
            Kind::Int | Kind::IntString | Kind::Time => {
                v.parse::<i64>().map_or(Value::Null, Value::from)
            }
            Kind::Text if v.is_empty() => Value::Null,
            Kind::Text => Value::from(v),
        };
        out.push((*c, v));
    }
    out
}

fn day_filters(params: &Params, name: &str, column: &'static str) -> Vec<Filter> {
    let day = 86_400 * 1_000_000;
    let mut f = Vec::new();
    if let Some(d) = params.get(name).and_then(parse_date) {
        f.push(Filter::Ge(column, d));
        f.push(Filter::Lt(column, d + day));
    }
    if let Some(d) = params.get(&format!("{name}>")).and_then(parse_date) {
        f.push(Filter::Ge(column, d));
    }
    if let Some(d) = params.get(&format!("{name}<")).and_then(parse_date) {
        f.push(Filter::Lt(column, d));
    }
    f
}

async fn list_rows(
    c: &Ctx<'_>,
    t: &Table,
    key: &str,
    filters: &[Filter],
) -> Result<Value, TwError> {
    let (page, size) = c.page();
    let cursor = c.cursor()?;
    let (rows, more) =
        c.st.store
            .list(
                t,
                c.acc_sid(),
                filters,
                ("date_created", true),
                cursor.as_ref().map(|(v, s)| (*v, s.as_str())),
                page * size,
                size,
            )
            .await?;
    let next = rows.last().and_then(|r| {
        let v = r.get("date_created")?.as_i64()?;
        let sid = r.get("sid")?.as_str()?;
        Some(format!("PA{v}_{sid}"))
    });
    let items = rows.iter().map(|r| render(t, r)).collect();
    Ok(c.list_with(key, items, more, next))
}

async fn fetch_row(c: &Ctx<'_>, t: &Table, sid: &str) -> Result<Map<String, Value>, TwError> {
    if !is_sid(sid, t.sid_prefix) {
        return Err(TwError::not_found(c.path));
    }
    c.st.store
        .get(t, c.acc_sid(), sid)
        .await?
        .ok_or_else(|| TwError::not_found(c.path))
}

async fn delete_row(c: &Ctx<'_>, t: &Table) -> Result<Value, TwError> {
    if !is_sid(&c.sid, t.sid_prefix) || !c.st.store.delete(t, c.acc_sid(), &c.sid).await? {
        return Err(TwError::not_found(c.path));
    }
    Ok(Value::Null)
}

/// An application SID given by the caller must be one of the account's.
/// The account's application `sid` (its row), or 21606.
async fn own_application(c: &Ctx<'_>, sid: &str) -> Result<Map<String, Value>, TwError> {
    let row = if is_sid(sid, "AP") {
        c.st.store.get(&APPLICATIONS, c.acc_sid(), sid).await?
    } else {
        None
    };
    row.ok_or_else(|| {
        TwError::bad(
            21606,
            format!("Application {sid} is not an application of this account"),
        )
    })
}

async fn run(op: Op, c: &Ctx<'_>) -> Result<Value, TwError> {
    let st = c.st;
    let store = &st.store;
    match op {
        Op::AccountsList => {
            c.no_keys()?;
            let (page, size) = c.page();
            let (rows, more) = store
                .list_accounts(
                    &c.principal.account.sid,
                    c.params.get("FriendlyName"),
                    c.params.get("Status"),
                    page * size,
                    size,
                )
                .await?;
            let items = rows
                .iter()
                .map(|a| Ok(render_account(a, Some(&store.auth_token(a)?))))
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(c.list("accounts", items, more))
        }
        Op::AccountCreate => {
            c.no_keys()?;
            if c.principal.account.owner_account_sid.is_some() {
                return Err(TwError::new(
                    StatusCode::FORBIDDEN,
                    20403,
                    "Subaccounts cannot create subaccounts",
                ));
            }
            let name = c.params.get("FriendlyName").map_or_else(
                || format!("SubAccount Created at {}", rfc2822(now_us())),
                str::to_string,
            );
            let (a, token) = store
                .create_account(&name, Some(&c.principal.account.sid))
                .await?;
            Ok(render_account(&a, Some(&token)))
        }
        Op::AccountFetch => {
            c.no_keys()?;
            let a = c.acc();
            Ok(render_account(a, Some(&store.auth_token(a)?)))
        }
        Op::AccountUpdate => {
            c.no_keys()?;
            let a = c.acc();
            let status = c.params.get("Status");
            if status.is_some() && a.owner_account_sid.is_none() {
                return Err(TwError::bad(
                    20001,
                    "The status of a main account is changed by the operator (voxedge admin), not through the API",
                ));
            }
            if a.status == "closed" && status.is_some_and(|s| s != "closed") {
                return Err(TwError::bad(20001, "A closed account cannot be reopened"));
            }
            store
                .update_account(&a.sid, c.params.get("FriendlyName"), status)
                .await?;
            let a = store
                .account(&a.sid)
                .await?
                .ok_or_else(|| TwError::not_found(c.path))?;
            Ok(render_account(&a, Some(&store.auth_token(&a)?)))
        }
        Op::KeysList => {
            c.no_keys()?;
            let (page, size) = c.page();
            let (keys, more) = store.list_keys(c.acc_sid(), page * size, size).await?;
            Ok(c.list(
                "keys",
                keys.iter().map(|k| render_key(k, None)).collect(),
                more,
            ))
        }
        Op::KeyCreate => {
            c.no_keys()?;
            let (k, secret) = store
                .create_key(c.acc_sid(), c.params.get("FriendlyName").unwrap_or(""))
                .await?;
            Ok(render_key(&k, Some(&secret)))
        }
        Op::KeyFetch | Op::KeyUpdate | Op::KeyDelete => {
            c.no_keys()?;
            let k = match is_sid(&c.sid, "SK") {
                true => store.key_by_sid(&c.sid).await?,
                false => None,
            }
            .filter(|k| k.account_sid == c.acc_sid())
            .ok_or_else(|| TwError::not_found(c.path))?;
            match op {
                Op::KeyDelete => {
                    store.delete_key(c.acc_sid(), &k.sid).await?;
                    Ok(Value::Null)
                }
                Op::KeyUpdate => {
                    let name = c.params.get("FriendlyName").unwrap_or(&k.friendly_name);
                    let mut k2 = k.clone();
                    k2.friendly_name = name.to_string();
                    store.rename_key(&k.sid, name).await?;
                    Ok(render_key(&k2, None))
                }
                _ => Ok(render_key(&k, None)),
            }
        }
        Op::ApplicationsList => {
            let mut f = Vec::new();
            if let Some(n) = c.params.get("FriendlyName") {
                f.push(Filter::Eq("friendly_name", Value::from(n)));
            }
            list_rows(c, &APPLICATIONS, "applications", &f).await
        }
        Op::ApplicationCreate => {
            let now = now_us();
            let sid = new_sid("AP");
            let mut cols: Vec<(&str, Value)> = vec![
                ("sid", Value::from(sid.clone())),
                ("account_sid", Value::from(c.acc_sid())),
                ("api_version", Value::from("2010-04-01")),
                ("voice_method", Value::from("POST")),
                ("voice_fallback_method", Value::from("POST")),
                ("status_callback_method", Value::from("POST")),
                ("voice_caller_id_lookup", Value::Bool(false)),
                ("public_application_connect_enabled", Value::Bool(false)),
                ("date_created", Value::from(now)),
                ("date_updated", Value::from(now)),
            ];
            merge(&mut cols, columns_from(&APPLICATIONS, c.params));
            store.insert(&APPLICATIONS, &cols).await?;
            Ok(render(
                &APPLICATIONS,
                &fetch_row(c, &APPLICATIONS, &sid).await?,
            ))
        }
        Op::ApplicationFetch => Ok(render(
            &APPLICATIONS,
            &fetch_row(c, &APPLICATIONS, &c.sid).await?,
        )),
        Op::ApplicationUpdate => {
            fetch_row(c, &APPLICATIONS, &c.sid).await?;
            let sets = columns_from(&APPLICATIONS, c.params);
            if !sets.is_empty() {
                store
                    .update(&APPLICATIONS, c.acc_sid(), &c.sid, &sets)
                    .await?;
            }
            Ok(render(
                &APPLICATIONS,
                &fetch_row(c, &APPLICATIONS, &c.sid).await?,
            ))
        }
        Op::ApplicationDelete => delete_row(c, &APPLICATIONS).await,
        Op::NumbersList => {
            let mut f = Vec::new();
            if let Some(n) = c.params.get("PhoneNumber") {
                f.push(Filter::Eq("phone_number", Value::from(n)));
            }
            if let Some(n) = c.params.get("FriendlyName") {
                f.push(Filter::Eq("friendly_name", Value::from(n)));
            }
            list_rows(c, &NUMBERS, "incoming_phone_numbers", &f).await
        }
        Op::NumberCreate | Op::NumberUpdate => {
            if let Some(app) = c
                .params
                .get("VoiceApplicationSid")
                .filter(|s| !s.is_empty())
            {
                own_application(c, app).await?;
            }
            let sid = if op == Op::NumberCreate {
                let now = now_us();
                let sid = new_sid("PN");
                let number = c.params.get("PhoneNumber").unwrap_or_default();
                let mut cols: Vec<(&str, Value)> = vec![
                    ("sid", Value::from(sid.clone())),
                    ("account_sid", Value::from(c.acc_sid())),
                    ("friendly_name", Value::from(number)),
                    ("api_version", Value::from("2010-04-01")),
                    ("voice_method", Value::from("POST")),
                    ("voice_fallback_method", Value::from("POST")),
                    ("status_callback_method", Value::from("POST")),
                    ("voice_caller_id_lookup", Value::Bool(false)),
                    ("status", Value::from("in-use")),
                    ("date_created", Value::from(now)),
                    ("date_updated", Value::from(now)),
                ];
                merge(&mut cols, columns_from(&NUMBERS, c.params));
                match store.insert(&NUMBERS, &cols).await {
                    Err(StoreError::Conflict(_)) => {
                        return Err(TwError::bad(
                            21422,
                            format!(
                                "Phone number {number} is not available: it is already assigned"
                            ),
                        ))
                    }
                    r => r?,
                }
                sid
            } else {
                fetch_row(c, &NUMBERS, &c.sid).await?;
                let sets = columns_from(&NUMBERS, c.params);
                if !sets.is_empty() {
                    store.update(&NUMBERS, c.acc_sid(), &c.sid, &sets).await?;
                }
                c.sid.clone()
            };
            Ok(render(&NUMBERS, &fetch_row(c, &NUMBERS, &sid).await?))
        }
        Op::NumberFetch => Ok(render(&NUMBERS, &fetch_row(c, &NUMBERS, &c.sid).await?)),
        Op::NumberDelete => delete_row(c, &NUMBERS).await,
        Op::CallsList => {
            let mut f = Vec::new();
            for (param, col) in [
                ("To", "to"),
                ("From", "from"),
                ("ParentCallSid", "parent_call_sid"),
                ("Status", "status"),
            ] {
                if let Some(v) = c.params.get(param) {
                    f.push(Filter::Eq(col, Value::from(v)));
                }
            }
            f.extend(day_filters(c.params, "StartTime", "start_time"));
            f.extend(day_filters(c.params, "EndTime", "end_time"));
            list_rows(c, &CALLS, "calls", &f).await
        }
        Op::CallCreate => create_call(c).await,
        Op::CallFetch => Ok(render(&CALLS, &fetch_row(c, &CALLS, &c.sid).await?)),
        Op::CallUpdate => update_call(c).await,
        Op::CallDelete => {
            let row = fetch_row(c, &CALLS, &c.sid).await?;
            let status = row.get("status").and_then(Value::as_str).unwrap_or("");
            if LIVE.contains(&status) {
                return Err(TwError::bad(
                    21220,
                    format!("Call is {status}: only finished calls can be deleted"),
                ));
            }
            delete_row(c, &CALLS).await
        }
        Op::CallEventsList => {
            fetch_row(c, &CALLS, &c.call_sid).await?;
            let (page, size) = c.page();
            let (rows, more) = store
                .list(
                    &CALL_EVENTS,
                    c.acc_sid(),
                    &[Filter::Eq("call_sid", Value::from(c.call_sid.clone()))],
                    ("date_created", false),
                    None,
                    page * size,
                    size,
                )
                .await?;
            let items = rows
                .iter()
                .map(|r| {
                    let parse = |k: &str| {
                        r.get(k)
                            .and_then(Value::as_str)
                            .and_then(|s| serde_json::from_str(s).ok())
                            .unwrap_or(Value::Null)
                    };
                    json!({"request": parse("request"), "response": parse("response")})
                })
                .collect();
            Ok(c.list("events", items, more))
        }
        Op::CallNotificationsList | Op::NotificationsList => {
            let mut f = Vec::new();
            if op == Op::CallNotificationsList {
                fetch_row(c, &CALLS, &c.call_sid).await?;
                f.push(Filter::Eq("call_sid", Value::from(c.call_sid.clone())));
            }
            if let Some(l) = c.params.get("Log") {
                f.push(Filter::Eq("log", Value::from(l)));
            }
            f.extend(day_filters(c.params, "MessageDate", "message_date"));
            list_rows(c, &NOTIFICATIONS, "notifications", &f).await
        }
        Op::NotificationFetch => Ok(render(
            &NOTIFICATIONS,
            &fetch_row(c, &NOTIFICATIONS, &c.sid).await?,
        )),
        Op::NotificationDelete => delete_row(c, &NOTIFICATIONS).await,
        Op::CallRecordingsList | Op::RecordingsList => {
            let mut f = Vec::new();
            if op == Op::CallRecordingsList {
                fetch_row(c, &CALLS, &c.call_sid).await?;
                f.push(Filter::Eq("call_sid", Value::from(c.call_sid.clone())));
            } else if let Some(cs) = c.params.get("CallSid") {
                f.push(Filter::Eq("call_sid", Value::from(cs)));
            }
            f.extend(day_filters(c.params, "DateCreated", "date_created"));
            list_rows(c, &RECORDINGS, "recordings", &f).await
        }
        Op::RecordingFetch => Ok(render(
            &RECORDINGS,
            &fetch_row(c, &RECORDINGS, &c.sid).await?,
        )),
        Op::RecordingDelete => {
            let r = delete_row(c, &RECORDINGS).await?;
            if let Some(rec) = &c.st.recordings {
                rec.remove(&c.sid);
            }
            Ok(r)
        }
        Op::UsageRecordsList => usage(c).await,
        Op::CallSipEventsSet | Op::CallSipEventsFetch | Op::CallSipEventsDelete => {
            call_sip_events(op, c).await
        }
        Op::MediaList | Op::MediaPrefetch | Op::MediaFetch | Op::MediaDelete | Op::MediaPurge => {
            media(op, c).await
        }
        Op::ConferencesList
        | Op::ConferenceFetch
        | Op::ConferenceUpdate
        | Op::ConferenceRecordingsList
        | Op::ParticipantsList
        | Op::ParticipantCreate
        | Op::ParticipantFetch
        | Op::ParticipantUpdate
        | Op::ParticipantDelete => conferences::run(op, c).await,
    }
}

/// `/v1/Accounts/{AccountSid}/Media`: the media cache of the account.
async fn media(op: Op, c: &Ctx<'_>) -> Result<Value, TwError> {
    let Some(cache) = c.st.media.clone() else {
        return Err(TwError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            20503,
            "The media cache runs with SIP: it is not enabled on this node",
        ));
    };
    match op {
        Op::MediaList => {
            // Hit counts are kept in memory between flushes: show current ones.
            cache.flush().await;
            let mut f = Vec::new();
            if let Some(u) = c.params.get("Url") {
                f.push(Filter::Eq("url", Value::from(u)));
            }
            if let Some(k) = c.params.get("Kind") {
                f.push(Filter::Eq("kind", Value::from(k)));
            }
            list_rows(c, &MEDIA, "media", &f).await
        }
        Op::MediaFetch => {
            cache.flush().await;
            Ok(render(&MEDIA, &fetch_row(c, &MEDIA, &c.sid).await?))
        }
        Op::MediaPrefetch => {
            let url = c.params.get("Url").unwrap_or_default();
            let sid = cache
                .prefetch(c.acc_sid(), &crate::media::Source::Url(url.to_string()))
                .await
                .map_err(|e| TwError::bad(e.code.parse().unwrap_or(11200), e.message))?;
            Ok(render(&MEDIA, &fetch_row(c, &MEDIA, &sid).await?))
        }
        Op::MediaDelete => {
            if !is_sid(&c.sid, MEDIA.sid_prefix) || !cache.purge(c.acc_sid(), &c.sid).await? {
                return Err(TwError::not_found(c.path));
            }
            Ok(Value::Null)
        }
        _ => {
            let url = c.params.get("Url").unwrap_or_default();
            let purged = match cache.sid_for_url(c.acc_sid(), url) {
                Some(sid) => cache.purge(c.acc_sid(), &sid).await?,
                None => false,
            };
            if !purged {
                return Err(TwError::not_found(c.path));
            }
            Ok(Value::Null)
        }
    }
}

/// Adds or replaces columns.
fn merge(cols: &mut Vec<(&'static str, Value)>, more: Vec<(&'static str, Value)>) {
    for (k, v) in more {
        if let Some(slot) = cols.iter_mut().find(|(c, _)| *c == k) {
            slot.1 = v;
        } else {
            cols.push((k, v));
        }
    }
}

async fn create_call(c: &Ctx<'_>) -> Result<Value, TwError> {
    create_call_on(c, None).await
}

/// `POST /Calls` with the call's media placed on `worker` (when given).
async fn create_call_on(
    c: &Ctx<'_>,
    worker: Option<voxedge_dataplane::ids::WorkerId>,
) -> Result<Value, TwError> {
    let p = c.params;
    let to = p.get("To").unwrap_or_default().trim().to_string();
    let from = p.get("From").unwrap_or_default().trim().to_string();
    if to.is_empty() {
        return Err(TwError::bad(21201, "No 'To' number is specified"));
    }
    if from.is_empty() {
        return Err(TwError::bad(21213, "No 'From' number is specified"));
    }
    let given = ["Url", "Twiml", "ApplicationSid"]
        .iter()
        .filter(|k| p.get(k).is_some_and(|v| !v.is_empty()))
        .count();
    if given != 1 {
        return Err(TwError::bad(
            21205,
            "Exactly one of Url, Twiml or ApplicationSid is required",
        ));
    }
    let mut policy = Vec::new();
    if let Some(app) = p.get("ApplicationSid").filter(|s| !s.is_empty()) {
        // The application's callback retry policy applies to the call's callbacks.
        policy = crate::callbacks::policy_columns(&own_application(c, app).await?);
    }
    if p.bool("Record") == Some(true) {
        return Err(TwError::bad(
            20001,
            "Record=true is not supported by this VoxEdge version (recording arrives with the media layer)",
        ));
    }
    if p.get("SendDigits").is_some_and(|d| !d.is_empty()) {
        return Err(TwError::bad(
            20001,
            "SendDigits is not supported by this VoxEdge version",
        ));
    }
    let timeout = p.int("Timeout").unwrap_or(60);
    if !(1..=600).contains(&timeout) {
        return Err(TwError::bad(
            20001,
            "Timeout must be between 1 and 600 seconds",
        ));
    }
    let time_limit = p
        .int("TimeLimit")
        .unwrap_or(i64::from(c.st.cfg.time_limit_default_secs));
    if !(1..=86_400).contains(&time_limit) {
        return Err(TwError::bad(
            20001,
            "TimeLimit must be between 1 and 86400 seconds",
        ));
    }
    check_callback(c, p)?;
    let Some(sip) = &c.st.sip else {
        return Err(unavailable());
    };
    let target = sip
        .resolve(&to)
        .map_err(|e| TwError::bad(21211, format!("Invalid 'To' {to}: {e}")))?;
    let mut columns = columns_from(&CALLS, p);
    columns.retain(|(k, _)| !matches!(*k, "to" | "from" | "status"));
    columns.extend(policy);
    merge(
        &mut columns,
        vec![
            ("timeout", Value::from(timeout)),
            ("time_limit", Value::from(time_limit)),
            ("record", Value::Bool(false)),
            (
                "method",
                Value::from(p.get("Method").unwrap_or("POST").to_string()),
            ),
        ],
    );
    let new = NewCall {
        account: c.acc_sid().to_string(),
        to,
        from,
        target,
        columns,
        timeout: Duration::from_secs(u64::try_from(timeout).unwrap_or(60)),
        time_limit: Duration::from_secs(u64::try_from(time_limit).unwrap_or(14_400)),
        has_instructions: true,
        worker,
    };
    match c.st.calls.create(new).await {
        Ok(row) => Ok(render(&CALLS, &row)),
        Err(CallError::Concurrency(n)) => Err(TwError::new(
            StatusCode::TOO_MANY_REQUESTS,
            20429,
            format!("Too many calls: the account has {n} live calls, its limit"),
        )),
        Err(CallError::NoSip) => Err(unavailable()),
        Err(CallError::Store(e)) => Err(e.into()),
    }
}

/// A `StatusCallback` must be a URL callbacks may reach (SSRF check on the literal host).
fn check_callback(c: &Ctx<'_>, p: &Params) -> Result<(), TwError> {
    check_callback_urls(c, p, &["StatusCallback", "SipEventsUrl"])
}

/// Refuses (21609) a callback URL parameter among `names` that callbacks may not use.
fn check_callback_urls(c: &Ctx<'_>, p: &Params, names: &[&str]) -> Result<(), TwError> {
    for &name in names {
        if let Some(u) = p.get(name).filter(|u| !u.is_empty()) {
            crate::callbacks::check_url(u, c.st.cfg.callbacks_allow_private)
                .map_err(|e| TwError::bad(21609, format!("Invalid {name}: {e}")))?;
        }
    }
    Ok(())
}

/// The columns of a call's own SIP-event registration.
const SIP_EVENT_COLUMNS: [&str; 5] = [
    "sip_events_url",
    "sip_events_method",
    "sip_events",
    "sip_events_headers",
    "sip_events_filter",
];

/// `/v1/…/Calls/{Sid}/SipEvents`: set (replacing every field), fetch the registration that
/// applies, or remove the call's own.
async fn call_sip_events(op: Op, c: &Ctx<'_>) -> Result<Value, TwError> {
    let row = fetch_row(c, &CALLS, &c.sid).await?;
    match op {
        Op::CallSipEventsSet => {
            if c.params.get("SipEventsUrl").is_none_or(str::is_empty) {
                return Err(TwError::bad(21201, "SipEventsUrl is required"));
            }
            check_callback(c, c.params)?;
            let given = columns_from(&CALLS, c.params);
            let sets: Vec<(&str, Value)> = SIP_EVENT_COLUMNS
                .iter()
                .map(|col| {
                    let v = given
                        .iter()
                        .find(|(k, _)| k == col)
                        .map_or(Value::Null, |(_, v)| v.clone());
                    (*col, v)
                })
                .collect();
            c.st.store
                .update(&CALLS, c.acc_sid(), &c.sid, &sets)
                .await?;
        }
        Op::CallSipEventsDelete => {
            let sets: Vec<(&str, Value)> = SIP_EVENT_COLUMNS
                .iter()
                .map(|k| (*k, Value::Null))
                .collect();
            c.st.store
                .update(&CALLS, c.acc_sid(), &c.sid, &sets)
                .await?;
            return Ok(Value::Null);
        }
        _ => {}
    }
    let row = if op == Op::CallSipEventsSet {
        fetch_row(c, &CALLS, &c.sid).await?
    } else {
        row
    };
    match crate::callbacks::sip_events_for(&c.st.store, &row).await {
        Some(reg) => Ok(reg.to_json(&c.sid, c.acc_sid())),
        None => Err(TwError::not_found(c.path)),
    }
}

fn unavailable() -> TwError {
    TwError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        20503,
        "Calls cannot be placed: SIP is not enabled on this node",
    )
}

async fn update_call(c: &Ctx<'_>) -> Result<Value, TwError> {
    let row = fetch_row(c, &CALLS, &c.sid).await?;
    let status = row
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let live = LIVE.contains(&status.as_str());
    let p = c.params;
    let redirect = p.get("Url").is_some_and(|v| !v.is_empty())
        || p.get("Twiml").is_some_and(|v| !v.is_empty());
    if redirect && !live {
        return Err(TwError::bad(
            21220,
            "Call is not in-progress. Cannot redirect.",
        ));
    }
    if p.int("TimeLimit")
        .is_some_and(|t| !(1..=86_400).contains(&t))
    {
        return Err(TwError::bad(
            20001,
            "TimeLimit must be between 1 and 86400 seconds",
        ));
    }
    check_callback(c, p)?;
    let mut sets = columns_from(&CALLS, p);
    sets.retain(|(k, _)| *k != "status");
    // New instructions replace the old ones: a call answered later runs what was set last.
    if p.get("Twiml").is_some_and(|v| !v.is_empty()) {
        sets.push(("url", Value::Null));
    } else if p.get("Url").is_some_and(|v| !v.is_empty()) {
        sets.push(("twiml", Value::Null));
    }
    if !sets.is_empty() {
        if sets.iter().any(|(k, _)| *k == "status_callback") {
            // Its status changes may cause callbacks from now on.
            c.st.calls.callbacks_changed(&c.sid);
        }
        c.st.store
            .update(&CALLS, c.acc_sid(), &c.sid, &sets)
            .await?;
    }
    if redirect {
        use crate::voice::engine::Instructions;
        let to = match p.get("Twiml").filter(|t| !t.is_empty()) {
            Some(t) => Instructions::Twiml(t.to_string()),
            None => Instructions::Url(
                p.get("Url").unwrap_or_default().to_string(),
                p.get("Method")
                    .and_then(crate::voice::twiml::Method::parse)
                    .unwrap_or(crate::voice::twiml::Method::Post),
            ),
        };
        let taken = c.st.calls.engine().is_some_and(|e| e.redirect(&c.sid, to));
        if !taken {
            c.st.calls
                .notify(
                    c.acc_sid(),
                    Some(&c.sid),
                    "1",
                    crate::calls::CODE_NO_INSTRUCTIONS,
                    "redirect recorded, but no instruction engine on this node runs the call (not answered yet, or running the built-in echo): the new instructions were not started",
                )
                .await;
        }
    }
    if let Some(s) = p.get("Status") {
        if live {
            c.st.calls.hangup(&c.sid, s).await?;
        }
    }
    Ok(render(&CALLS, &fetch_row(c, &CALLS, &c.sid).await?))
}

async fn usage(c: &Ctx<'_>) -> Result<Value, TwError> {
    let p = c.params;
    let day = 86_400 * 1_000_000;
    let start = p
        .get("StartDate")
        .and_then(parse_date)
        .unwrap_or(c.acc().date_created / day * day);
    let end = p
        .get("EndDate")
        .and_then(parse_date)
        .map_or_else(|| now_us() / day * day + day, |d| d + day);
    let cats: &[(&str, Option<&str>, &str)] = &[
        ("calls", None, "Voice Minutes"),
        ("calls-inbound", Some("inbound"), "Inbound Voice Minutes"),
        ("calls-outbound", Some("outbound"), "Outbound Voice Minutes"),
    ];
    let mut items = Vec::new();
    for (cat, dir, desc) in cats {
        if p.get("Category").is_some_and(|c| c != *cat) {
            continue;
        }
        let (count, minutes) = c.st.store.call_usage(c.acc_sid(), *dir, start, end).await?;
        let fmt = |us: i64| {
            let (y, m, dd) = store::civil_from_days(us.div_euclid(day));
            format!("{y:04}-{m:02}-{dd:02}")
        };
        items.push(json!({
            "account_sid": c.acc_sid(),
            "api_version": "2010-04-01",
            "as_of": rfc2822(now_us()),
            "category": cat,
            "description": desc,
            "start_date": fmt(start),
            "end_date": fmt(end - day),
            "count": count.to_string(),
            "count_unit": "calls",
            "usage": minutes.to_string(),
            "usage_unit": "minutes",
            "price": "0",
            "price_unit": "USD",
            "uri": format!("{API}/Accounts/{}/Usage/Records.json?Category={cat}", c.acc_sid()),
            "subresource_uris": {},
        }));
    }
    // VoxEdge: usage per module (each document URL a call ran: fetches, seconds of calls).
    if p.get("Category").is_none_or(|c| c == "calls-module") {
        let fmt = |us: i64| {
            let (y, m, dd) = store::civil_from_days(us.div_euclid(day));
            format!("{y:04}-{m:02}-{dd:02}")
        };
        if let Some(e) = c.st.calls.engine() {
            // Usage is written in batches: the latest first.
            e.flush_usage().await;
        }
        for (module, fetches, ms) in c.st.store.module_usage(c.acc_sid(), start, end).await? {
            items.push(json!({
                "account_sid": c.acc_sid(),
                "api_version": "2010-04-01",
                "as_of": rfc2822(now_us()),
                "category": "calls-module",
                "description": format!("Instructions run by {module}"),
                "module": module,
                "start_date": fmt(start),
                "end_date": fmt(end - day),
                "count": fetches.to_string(),
                "count_unit": "fetches",
                "usage": ((ms + 500) / 1000).to_string(),
                "usage_unit": "seconds",
                "price": "0",
                "price_unit": "USD",
                "uri": format!("{API}/Accounts/{}/Usage/Records.json?Category=calls-module", c.acc_sid()),
                "subresource_uris": {},
            }));
        }
    }
    let n = items.len();
    let mut v = c.list("usage_records", items, false);
    v["end"] = Value::from(n.saturating_sub(1));
    Ok(v)
}
