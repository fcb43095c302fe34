//! The one configuration file (TOML), then environment and flags on top.
//!
//! Unknown keys are rejected everywhere so that a misspelt setting is an error at start, not a
//! silent default. Every field has a default, so `voxedge serve` runs with no file at all.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use voxedge_dataplane::config::DataplaneConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub admin: AdminConfig,
    pub management: ManagementConfig,
    pub sip: SipConfig,
    pub api: ApiConfig,
    pub ng: NgConfig,
    pub media: MediaConfig,
    pub log: LogConfig,
}

/// `[media]`: the media cache behind `<Play>` and `<Say>` (serve role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Where prepared audio is kept (content-addressed files), relative to the working
    /// directory unless absolute.
    pub dir: String,
    /// Total size of the cached files; beyond it the least recently used entries go.
    pub cache_bytes_max: u64,
    /// Largest media file fetched, bytes (refused from `Content-Length`, or as it streams).
    pub file_bytes_max: usize,
    /// Longest audio accepted, seconds.
    pub seconds_max: u32,
    /// Total time for one media fetch (connect included), seconds.
    pub fetch_timeout_secs: u32,
    /// How long a response that says nothing about freshness is served before revalidating.
    pub default_ttl_secs: u32,
    /// How long a failed fetch (or undecodable file) is remembered, so a failing URL is not
    /// fetched again by every call.
    pub failure_ttl_secs: u32,
    /// Let media URLs reach loopback and private addresses; unset: as
    /// `api.callbacks_allow_private`.
    pub allow_private: Option<bool>,
    /// Where recordings are kept (one WAV file per recording SID).
    pub recordings_dir: String,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            dir: "media-cache".into(),
            cache_bytes_max: 2 << 30,
            file_bytes_max: 32 << 20,
            seconds_max: 1800,
            fetch_timeout_secs: 30,
            default_ttl_secs: 3600,
            failure_ttl_secs: 10,
            allow_private: None,
            recordings_dir: "recordings".into(),
        }
    }
}

/// `[ng]`: rtpengine's ng control protocol (`voxedge media` and `voxedge serve`), for Kamailio
/// and OpenSIPS `rtpengine` modules. No authentication, like rtpengine: keep it on loopback or a
/// private network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NgConfig {
    pub enabled: bool,
    /// UDP, and TCP on the same address when `tcp`.
    pub listen: SocketAddr,
    pub tcp: bool,
    /// Largest request (datagram or TCP message), bytes.
    pub max_message_bytes: usize,
    /// Calls relayed at once; beyond, offers get an error.
    pub calls_max: usize,
    /// A call whose media has been idle this long (both directions) is deleted.
    pub media_timeout_secs: u32,
    /// The same for calls not answered yet or on hold (silence expected).
    pub silent_timeout_secs: u32,
    /// Replies kept for retransmitted requests (same cookie): how long and how many.
    pub cache_secs: u32,
    pub cache_entries_max: usize,
    /// Where `start recording` / `record-call` write their WAV files.
    pub recording_dir: String,
}

impl Default for NgConfig {
    fn default() -> Self {
        NgConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 2223)),
            tcp: true,
            max_message_bytes: 65_535,
            calls_max: 100_000,
            media_timeout_secs: 60,
            silent_timeout_secs: 3600,
            cache_secs: 30,
            cache_entries_max: 100_000,
            recording_dir: "recordings/ng".into(),
        }
    }
}

/// `[api]`: the Twilio-compatible REST API of `voxedge serve` and its store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the REST API at all (serve role).
    pub enabled: bool,
    pub listen: SocketAddr,
    /// `sqlite://FILE` (created when missing) or `postgres://user:pass@host/db`.
    pub database: String,
    /// 32-byte key (64 hex digits) that encrypts auth tokens and API-key secrets at rest.
    /// `VOXEDGE_SECRET_KEY` overrides it. When neither is set, a key is kept in
    /// `secret_key_file` (created with mode 0600 on first start) — only allowed with SQLite,
    /// since control nodes sharing PostgreSQL must share the key.
    pub secret_key: Option<String>,
    pub secret_key_file: String,
    /// Largest request body, bytes (Twilio's requests are small forms).
    pub body_bytes_max: usize,
    /// API requests per second per account (token bucket, one second of burst); beyond: 429.
    pub requests_per_second_per_account: u32,
    /// Outbound calls started per second per account; excess calls wait in `queued` and
    /// report `queue_time` (Twilio's default is 1).
    pub calls_per_second_per_account: u32,
    /// Outbound calls alive at once per account (queued ones included); beyond: 429.
    pub calls_concurrent_per_account: u32,
    /// Accept `To=sip:…` (calls to any SIP URI). Off by default: a tenant could otherwise
    /// send calls anywhere; numbers go through the `[sip] routes` dial plan.
    pub sip_uri_calls: bool,
    /// Longest call when `TimeLimit` is not given, seconds (Twilio: 4 hours).
    pub time_limit_default_secs: u32,
    /// Largest `PageSize`.
    pub page_size_max: u32,
    /// Let callbacks reach loopback and private addresses (tests, private deployments).
    /// Off: customer URLs that are or resolve to such addresses are refused (SSRF).
    pub callbacks_allow_private: bool,
    /// The API's address as customers reach it (`https://voice.example.com`), used in URLs
    /// VoxEdge hands out (`RecordingUrl`). Unset: `http://` + the listen address (the
    /// dataplane's advertised address when listening on all).
    pub public_url: Option<String>,
    /// Recording media (`…/Recordings/{Sid}.wav`) needs the account's credentials, like the
    /// rest of the API. Off: anyone with the URL can fetch it (Twilio's default).
    pub recordings_require_auth: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            database: "sqlite://voxedge.db".into(),
            secret_key: None,
            secret_key_file: "voxedge.key".into(),
            body_bytes_max: 64 * 1024,
            requests_per_second_per_account: 100,
            calls_per_second_per_account: 1,
            calls_concurrent_per_account: 100,
            sip_uri_calls: false,
            time_limit_default_secs: 4 * 3600,
            page_size_max: 1000,
            callbacks_allow_private: false,
            public_url: None,
            recordings_require_auth: true,
        }
    }
}

/// `[sip]`: the SIP listener of `voxedge serve` (UDP and TCP on one address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// Accept SIP at all (serve role).
    pub enabled: bool,
    pub listen: SocketAddr,
    pub udp: bool,
    pub tcp: bool,
    /// Address written into Via, Contact and SDP; default: the dataplane's advertised address.
    pub advertise: Option<std::net::IpAddr>,
    /// Largest message accepted (UDP datagram or TCP message), bytes.
    pub max_message_bytes: usize,
    /// Simultaneous TCP connections, in all and from one source address.
    pub tcp_connections_max: usize,
    pub tcp_connections_per_source_max: usize,
    /// Receive buffer asked for the UDP socket, bytes: it absorbs bursts while the SIP loop
    /// is busy (the kernel caps it at `net.core.rmem_max`; the size granted is logged).
    pub udp_rcvbuf_bytes: usize,
    /// Transactions alive at once; beyond this new requests get 503.
    pub transactions_max: usize,
    /// Calls (dialogs) up at once; a new INVITE beyond gets 503 + Retry-After.
    pub calls_max: usize,
    /// New calls per second, in all and from one source address (token buckets with one
    /// second of burst); beyond: 503 + Retry-After.
    pub calls_per_second_max: u32,
    pub calls_per_second_per_source_max: u32,
    /// A call whose media has been silent this long is hung up (BYE to each leg, with a
    /// `Reason` header): both directions for a routed call, the far end's for a single-leg call
    /// (the instruction engine's, one placed through the API, a `<Dial>` leg). It relies on
    /// the dataplane's `media_timeout_ms` event, so it acts no sooner than that and not at all
    /// when that is 0. 0: never.
    pub media_timeout_secs: u32,
    /// The same for a call on hold or inactive (its last SDP from either side is not
    /// `sendrecv`, or points at 0.0.0.0), where silence is expected. 0: never.
    pub hold_timeout_secs: u32,
    /// Dial plan, first match wins: `pattern` is `*` (anything), `prefix*` or an exact user
    /// part (number or name) of the request URI; `target` is `echo`, `hangup` or a SIP URI
    /// (`sip:host:port`, host an address or a name resolved at start). Without a match,
    /// `echo` and `hangup` users reach the built-in targets; anything else gets 404.
    pub routes: Vec<SipRoute>,
    /// Codecs (encoding names, e.g. `["PCMU", "PCMA", "G729"]`) let through offers to the
    /// built-in targets and to routes without their own list; empty: all. telephone-event
    /// always passes. An offer with none of them is refused with 488.
    pub codecs: Vec<String>,
    /// When not empty, new calls must authenticate (digest, 401 challenge) as one of these.
    pub users: Vec<SipUser>,
    /// Realm of those challenges.
    pub auth_realm: String,
}

/// One dial-plan entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipRoute {
    pub pattern: String,
    pub target: String,
    /// Credentials for a target that challenges us (digest, MD5).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Codecs offered to this target (see `[sip] codecs`); unset: the `[sip]` list.
    #[serde(default)]
    pub codecs: Option<Vec<String>>,
}

/// A user allowed to place calls when `[sip] users` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipUser {
    pub username: String,
    pub password: String,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            udp: true,
            tcp: true,
            advertise: None,
            max_message_bytes: 65_535,
            tcp_connections_max: 1024,
            tcp_connections_per_source_max: 32,
            udp_rcvbuf_bytes: 4 << 20,
            transactions_max: 100_000,
            calls_max: 20_000,
            calls_per_second_max: 5_000,
            calls_per_second_per_source_max: 2_500,
            media_timeout_secs: 60,
            hold_timeout_secs: 3600,
            routes: Vec::new(),
            codecs: Vec::new(),
            users: Vec::new(),
            auth_realm: "voxedge".into(),
        }
    }
}

/// Admin listener: health, metrics (and later drain). Loopback by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
        }
    }
}

/// Management API of `voxedge media` (relays over JSON/HTTP). Loopback by default: it has no
/// authentication of its own and must be exposed only to the control plane's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted, bytes.
    pub body_bytes_max: usize,
    /// Largest page `GET /v1/relays` returns.
    pub list_limit_max: usize,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        ManagementConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            body_bytes_max: 64 * 1024,
            list_limit_max: 10_000,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `voxedge=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(voxedge_dataplane::config::ConfigError),
    #[error("invalid configuration: {0}")]
    Other(String),
}

impl Config {
    /// Parses TOML text.
    ///
    /// # Errors
    /// Syntax errors, wrong types and unknown keys, with the key's location.
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigFileError> {
        toml::from_str(text).map_err(|source| ConfigFileError::Parse {
            path: path.to_string(),
            source,
        })
    }

    /// Reads a file, or returns the defaults when `path` is `None`.
    ///
    /// # Errors
    /// See [`Config::from_toml`]; also an unreadable file.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigFileError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_toml(&text, &shown)
    }

    /// Checks cross-field rules.
    ///
    /// # Errors
    /// The first invalid setting.
    pub fn validate(&self) -> Result<(), ConfigFileError> {
        self.dataplane
            .validate()
            .map_err(ConfigFileError::Invalid)?;
        let a = &self.api;
        if !(a.database.starts_with("sqlite:")
            || a.database.starts_with("postgres://")
            || a.database.starts_with("postgresql://"))
        {
            return Err(ConfigFileError::Other(format!(
                "api.database must be sqlite://FILE or postgres://…, not {:?}",
                a.database
            )));
        }
        if a.calls_per_second_per_account == 0 || a.requests_per_second_per_account == 0 {
            return Err(ConfigFileError::Other(
                "api.calls_per_second_per_account and api.requests_per_second_per_account must be at least 1".into(),
            ));
        }
        if a.page_size_max == 0 {
            return Err(ConfigFileError::Other(
                "api.page_size_max must be at least 1".into(),
            ));
        }
        if let Some(u) = &a.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.ends_with('/') {
                return Err(ConfigFileError::Other(format!(
                    "api.public_url must be http(s)://host[:port][/path] without a trailing slash, not {u:?}"
                )));
            }
        }
        if self.ng.recording_dir.is_empty() {
            return Err(ConfigFileError::Other(
                "[ng] recording_dir must be set".into(),
            ));
        }
        let m = &self.media;
        if m.recordings_dir.is_empty() {
            return Err(ConfigFileError::Other(
                "[media] recordings_dir must be set".into(),
            ));
        }
        if m.dir.is_empty()
            || m.file_bytes_max == 0
            || m.seconds_max == 0
            || m.fetch_timeout_secs == 0
            || m.cache_bytes_max < m.file_bytes_max as u64
        {
            return Err(ConfigFileError::Other(
                "[media]: dir must be set, file_bytes_max, seconds_max and fetch_timeout_secs at least 1, and cache_bytes_max at least file_bytes_max".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(
            Config::from_toml("", "x").expect("empty is valid"),
            Config::default()
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::from_toml("[dataplane]\nworkrs = 2\n", "x").expect_err("typo must fail");
        assert!(e.to_string().contains("workrs"), "{e}");
        let e = Config::from_toml("[nope]\n", "x").expect_err("unknown table must fail");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn dpdk_example_config_parses() {
        // Its cores and devices are those of a real server, so it is parsed, not validated.
        let text = include_str!("../../deploy/voxedge-dpdk-2x25g.example.toml");
        let c = Config::from_toml(text, "dpdk example").expect("dpdk example parses");
        assert_eq!(
            c.dataplane.backend,
            voxedge_dataplane::config::Backend::Dpdk
        );
        assert_eq!(c.dataplane.dpdk.addresses.len(), 2);
        assert!(c.dataplane.dpdk.interface([2, 0, 0, 0, 0, 1], 46).is_ok());
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../../deploy/voxedge.example.toml");
        let c = Config::from_toml(text, "example").expect("example parses");
        c.validate().expect("example validates");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let c = Config::from_toml("[dataplane]\nport_min = 5000\nport_max = 4000\n", "x")
            .expect("parses");
        let e = c.validate().expect_err("range is inverted");
        assert!(e.to_string().contains("port_min"), "{e}");
    }
}
