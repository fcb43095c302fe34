//! Fetching call instructions from the customer's web app.
//!
//! A request carries Twilio's parameters (GET: in the query; POST: form-encoded), is signed with
//! `X-Twilio-Signature` over the URL as the server receives it (no fragment) plus, for POST, the
//! parameters sorted by name, and runs under timeouts: connect 5 s, read 15 s, total 15 s by
//! default, overridden per URL by Twilio's fragment parameters (`#ct=…&rt=…&tt=…&rc=…&rp=…`,
//! milliseconds, retry count, retry policy). Redirects are followed (at most 10), each hop's
//! URL checked; every connection's address is checked against SSRF by the resolver.
//!
//! Failures map to Twilio's error codes: 11200 HTTP retrieval failure (4xx/5xx, read timeout),
//! 11205 connection failure (connect timeout, refused), 11210 bad host name, 11215 too many
//! redirects, 11750 body over 64 KB, 12300 wrong content type, 12100/12200 invalid document,
//! 11100 a URL that is not one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::callbacks::{check_url, twilio_signature, SafeResolver};

use super::twiml::{self, Method, Verb, DOCUMENT_BYTES_MAX};

/// Timeouts and retries of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub total: Duration,
    /// Further attempts after a failure the policy covers.
    pub retries: u32,
    pub policy: RetryPolicy,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(15),
            total: Duration::from_secs(15),
            retries: 1,
            policy: RetryPolicy {
                connect: true,
                read: false,
                client: false,
                server: false,
            },
        }
    }
}

/// Which failures are retried (`rp`: `ct`, `rt`, `4xx`, `5xx`, `all`, comma-separated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub connect: bool,
    pub read: bool,
    pub client: bool,
    pub server: bool,
}

/// Bounds of the fragment overrides.
const TIMEOUT_MS_MIN: u64 = 100;
const TIMEOUT_MS_MAX: u64 = 15_000;
const RETRIES_MAX: u32 = 5;

impl Timeouts {
    /// Applies a URL fragment's overrides (`ct`, `rt`, `tt`, `rc`, `rp`); unknown keys and
    /// out-of-range values are reported.
    ///
    /// # Errors
    /// A message naming the bad override.
    pub fn with_fragment(mut self, fragment: &str) -> Result<Timeouts, String> {
        for (k, v) in form_urlencoded::parse(fragment.as_bytes()) {
            let ms = || -> Result<Duration, String> {
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("#{k}={v} is not a number of milliseconds"))?;
                if !(TIMEOUT_MS_MIN..=TIMEOUT_MS_MAX).contains(&n) {
                    return Err(format!(
                        "#{k}={v} is outside {TIMEOUT_MS_MIN}–{TIMEOUT_MS_MAX} ms"
                    ));
                }
                Ok(Duration::from_millis(n))
            };
            match k.as_ref() {
                "ct" => self.connect = ms()?,
                "rt" => self.read = ms()?,
                "tt" => self.total = ms()?,
                "rc" => {
                    self.retries = v
                        .parse()
                        .ok()
                        .filter(|n| *n <= RETRIES_MAX)
                        .ok_or_else(|| format!("#rc={v} is not a retry count from 0 to 5"))?;
                }
                "rp" => {
                    let mut p = RetryPolicy {
                        connect: false,
                        read: false,
                        client: false,
                        server: false,
                    };
                    for part in v.split(',') {
                        match part.trim() {
                            "ct" => p.connect = true,
                            "rt" => p.read = true,
                            "4xx" => p.client = true,
                            "5xx" => p.server = true,
                            "all" => {
                                p = RetryPolicy {
                                    connect: true,
                                    read: true,
                                    client: true,
                                    server: true,
                                }
                            }
                            o => return Err(format!("#rp: {o:?} is not ct, rt, 4xx, 5xx or all")),
                        }
                    }
                    self.policy = p;
                }
                // Other fragments are the application's own business.
                _ => {}
            }
        }
        Ok(self)
    }
}

/// Why instructions could not be had from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// Twilio error code.
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

fn fail(code: &'static str, message: impl Into<String>) -> FetchError {
    FetchError {
        code,
        message: message.into(),
    }
}

/// Kinds of failure for the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Connect,
    Read,
    Client,
    Server,
    Other,
}

/// The instruction fetcher (one per node; requests share its connection pool).
#[derive(Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    allow_private: bool,
    pub defaults: Timeouts,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fetcher")
    }
}

/// What a fetch returned.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub verbs: Vec<Verb>,
    /// The URL the document came from (after redirects): relative URLs in it resolve here.
    pub url: reqwest::Url,
}

impl Fetcher {
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(allow_private: bool, defaults: Timeouts) -> anyhow::Result<Fetcher> {
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            match check_url(attempt.url().as_str(), allow_private) {
                Ok(_) => attempt.follow(),
                Err(e) => attempt.error(format!("redirect refused: {e}")),
            }
        });
        let http = reqwest::Client::builder()
            .redirect(policy)
            .user_agent(concat!("VoxEdge/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(SafeResolver::new(allow_private)))
            .no_proxy()
            .build()?;
        Ok(Fetcher {
            http,
            allow_private,
            defaults,
        })
    }

    /// Fetches and parses the instructions at `url`.
    ///
    /// # Errors
    /// What went wrong, with Twilio's code.
    /// `timeouts` are the call's defaults (the node's, or its application's overrides); the
    /// URL's own fragment applies on top.
    pub async fn instructions(
        &self,
        url: &str,
        method: Method,
        params: &BTreeMap<String, String>,
        token: &str,
        timeouts: &Timeouts,
    ) -> Result<Fetched, FetchError> {
        let Raw {
            body,
            ct,
            url: final_url,
            ..
        } = self
            .fetch_raw(
                url,
                method,
                params,
                Some(token),
                DOCUMENT_BYTES_MAX,
                timeouts,
                &[],
            )
            .await?;
        let types = ["text/xml", "application/xml"];
        if !types.iter().any(|t| ct == *t || ct.ends_with("+xml")) {
            return Err(fail(
                "12300",
                format!(
                    "{final_url} returned content type {:?}; instructions must be text/xml or application/xml",
                    if ct.is_empty() { "(none)" } else { &ct }
                ),
            ));
        }
        let verbs = twiml::parse(&body).map_err(|e| fail(e.kind.code(), e.to_string()))?;
        Ok(Fetched {
            verbs,
            url: final_url,
        })
    }

    /// Fetches media (for the media cache): a GET under `timeouts` (the URL's fragment applies
    /// on top), conditional when `validators` (an `ETag` and/or `Last-Modified` of a cached
    /// copy) are given, in which case a 304 answers [`MediaFetch::NotModified`]. A body over
    /// `limit` bytes is refused as soon as its length is known (from `Content-Length`, or while
    /// it streams), never read whole.
    ///
    /// # Errors
    /// What went wrong, with Twilio's code (13420 for a non-audio content type).
    pub async fn media(
        &self,
        url: &str,
        validators: (Option<&str>, Option<&str>),
        limit: usize,
        timeouts: &Timeouts,
    ) -> Result<MediaFetch, FetchError> {
        let mut conditional = Vec::new();
        if let Some(etag) = validators.0 {
            conditional.push((reqwest::header::IF_NONE_MATCH, etag.to_string()));
        }
        if let Some(lm) = validators.1 {
            conditional.push((reqwest::header::IF_MODIFIED_SINCE, lm.to_string()));
        }
        let raw = self
            .fetch_raw(
                url,
                Method::Get,
                &BTreeMap::new(),
                None,
                limit,
                timeouts,
                &conditional,
            )
            .await?;
        if raw.not_modified {
            return Ok(MediaFetch::NotModified {
                headers: raw.headers,
            });
        }
        let ct = raw.ct;
        if !ct.starts_with("audio/") && ct != "application/ogg" {
            return Err(fail(
                "13420",
                format!(
                    "{} returned {:?}, not audio",
                    raw.url,
                    if ct.is_empty() {
                        "(no content type)"
                    } else {
                        &ct
                    }
                ),
            ));
        }
        Ok(MediaFetch::Body {
            body: raw.body,
            content_type: ct,
            headers: raw.headers,
            url: raw.url,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_raw(
        &self,
        url: &str,
        method: Method,
        params: &BTreeMap<String, String>,
        token: Option<&str>,
        limit: usize,
        defaults: &Timeouts,
        conditional: &[(reqwest::header::HeaderName, String)],
    ) -> Result<Raw, FetchError> {
        let mut u =
            check_url(url, self.allow_private).map_err(|e| fail("11100", format!("{url}: {e}")))?;
        let t = match u.fragment() {
            Some(f) => defaults
                .with_fragment(f)
                .map_err(|e| fail("11100", format!("{url}: {e}")))?,
            None => *defaults,
        };
        u.set_fragment(None);
        if method == Method::Get && !params.is_empty() {
            u.query_pairs_mut().extend_pairs(params.iter());
        }
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let left = t.total.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(fail(
                    "11200",
                    format!("{u}: no response within {:?}", t.total),
                ));
            }
            match self
                .once(&u, method, params, token, &t, left, limit, conditional)
                .await
            {
                Ok(r) => return Ok(r),
                Err((kind, e)) => {
                    let retry = match kind {
                        Failure::Connect => t.policy.connect,
                        Failure::Read => t.policy.read,
                        Failure::Client => t.policy.client,
                        Failure::Server => t.policy.server,
                        Failure::Other => false,
                    };
                    if !retry || attempt >= t.retries {
                        return Err(e);
                    }
                    attempt += 1;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn once(
        &self,
        u: &reqwest::Url,
        method: Method,
        params: &BTreeMap<String, String>,
        token: Option<&str>,
        t: &Timeouts,
        left: Duration,
        limit: usize,
        conditional: &[(reqwest::header::HeaderName, String)],
    ) -> Result<Raw, (Failure, FetchError)> {
        let mut req = match method {
            Method::Get => self.http.get(u.clone()),
            Method::Post => self.http.post(u.clone()).form(params),
        };
        for (name, value) in conditional {
            req = req.header(name, value);
        }
        if let Some(token) = token {
            let signed_params = if method == Method::Post {
                params.clone()
            } else {
                BTreeMap::new()
            };
            req = req.header(
                "X-Twilio-Signature",
                twilio_signature(token, u.as_str(), &signed_params),
            );
        }
        req = req.timeout(left).header(
            "Accept",
            "text/xml, application/xml, audio/*;q=0.9, */*;q=0.1",
        );
        let connect = t.connect.min(left);
        let send = tokio::time::timeout(connect + t.read.min(left), req.send());
        let resp = match send.await {
            Err(_) => {
                return Err((
                    Failure::Read,
                    fail(
                        "11200",
                        format!("{u}: no response within {:?}", t.read.min(left)),
                    ),
                ))
            }
            Ok(Err(e)) => return Err(classify(u, &e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let final_url = resp.url().clone();
        if status == reqwest::StatusCode::NOT_MODIFIED && !conditional.is_empty() {
            return Ok(Raw {
                body: Vec::new(),
                ct: String::new(),
                url: final_url,
                not_modified: true,
                headers: resp.headers().clone(),
            });
        }
        if !status.is_success() {
            let kind = if status.is_client_error() {
                Failure::Client
            } else if status.is_server_error() {
                Failure::Server
            } else {
                Failure::Other
            };
            return Err((
                kind,
                fail(
                    "11200",
                    format!("{final_url} returned HTTP {}", status.as_u16()),
                ),
            ));
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err((
                Failure::Other,
                fail("11750", format!("{final_url}: body is over {limit} bytes")),
            ));
        }
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        let mut resp = resp;
        let deadline = tokio::time::Instant::now() + t.read.min(left);
        loop {
            let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Err(_) => {
                    return Err((
                        Failure::Read,
                        fail(
                            "11200",
                            format!(
                                "{final_url}: body not received within {:?}",
                                t.read.min(left)
                            ),
                        ),
                    ))
                }
                Ok(Err(e)) => {
                    return Err((Failure::Read, fail("11200", format!("{final_url}: {e}"))))
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            if body.len() + chunk.len() > limit {
                return Err((
                    Failure::Other,
                    fail("11750", format!("{final_url}: body is over {limit} bytes")),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Raw {
            body,
            ct,
            url: final_url,
            not_modified: false,
            headers,
        })
    }
}

/// A response as fetched.
struct Raw {
    body: Vec<u8>,
    ct: String,
    url: reqwest::Url,
    not_modified: bool,
    headers: reqwest::header::HeaderMap,
}

/// What a media fetch returned.
#[derive(Debug)]
pub enum MediaFetch {
    /// The cached copy is still current (304); its caching headers may have changed.
    NotModified { headers: reqwest::header::HeaderMap },
    Body {
        body: Vec<u8>,
        content_type: String,
        headers: reqwest::header::HeaderMap,
        /// Where the body came from (after redirects).
        url: reqwest::Url,
    },
}

fn classify(u: &reqwest::Url, e: &reqwest::Error) -> (Failure, FetchError) {
    let full = {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(x) = src {
            s.push_str(": ");
            s.push_str(&x.to_string());
            src = x.source();
        }
        s
    };
    if e.is_redirect() {
        let code = if full.contains("too many redirects") {
            "11215"
        } else {
            "11200"
        };
        return (Failure::Other, fail(code, format!("{u}: {full}")));
    }
    if full.contains("resolves to no address")
        || full.contains("dns error")
        || full.contains("failed to lookup")
    {
        return (Failure::Other, fail("11210", format!("{u}: {full}")));
    }
    if e.is_connect() {
        return (
            Failure::Connect,
            fail("11205", format!("{u}: cannot connect: {full}")),
        );
    }
    if e.is_timeout() {
        return (Failure::Read, fail("11200", format!("{u}: timed out")));
    }
    (Failure::Other, fail("11200", format!("{u}: {full}")))
}

/// Resolves a URL from a document (`action`, `Redirect`, `Play`) against the document's URL.
///
/// # Errors
/// Not a URL even relative to the document.
pub fn resolve(base: &reqwest::Url, reference: &str) -> Result<String, FetchError> {
    base.join(reference.trim())
        .map(|u| u.to_string())
        .map_err(|e| fail("11100", format!("{reference:?} is not a URL: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_overrides() {
        let t = Timeouts::default()
            .with_fragment("ct=1000&rt=2000&tt=3000&rc=3&rp=ct,5xx&mine=1")
            .expect("valid");
        assert_eq!(t.connect, Duration::from_millis(1000));
        assert_eq!(t.read, Duration::from_millis(2000));
        assert_eq!(t.total, Duration::from_millis(3000));
        assert_eq!(t.retries, 3);
        assert!(t.policy.connect && t.policy.server && !t.policy.read && !t.policy.client);
        let all = Timeouts::default().with_fragment("rp=all").expect("valid");
        assert!(all.policy.read && all.policy.client);
        for bad in ["ct=5", "rt=99999", "tt=x", "rc=9", "rp=sometimes"] {
            assert!(Timeouts::default().with_fragment(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_urls_resolve_against_the_document() {
        let base = reqwest::Url::parse("https://app.example.com/voice/start?x=1").expect("url");
        assert_eq!(
            resolve(&base, "next").expect("ok"),
            "https://app.example.com/voice/next"
        );
        assert_eq!(
            resolve(&base, "/gather").expect("ok"),
            "https://app.example.com/gather"
        );
        assert_eq!(
            resolve(&base, "https://other.example/x").expect("ok"),
            "https://other.example/x"
        );
    }
}
