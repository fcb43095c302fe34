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
    pub log: LogConfig,
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
    /// Transactions alive at once; beyond this new requests get 503.
    pub transactions_max: usize,
    /// Calls (dialogs) up at once; a new INVITE beyond gets 503 + Retry-After.
    pub calls_max: usize,
    /// New calls per second, in all and from one source address (token buckets with one
    /// second of burst); beyond: 503 + Retry-After.
    pub calls_per_second_max: u32,
    pub calls_per_second_per_source_max: u32,
    /// Dial plan, first match wins: `pattern` is `*` (anything), `prefix*` or an exact user
    /// part (number or name) of the request URI; `target` is `echo`, `hangup` or a SIP URI
    /// (`sip:host:port`, host an address or a name resolved at start). Without a match,
    /// `echo` and `hangup` users reach the built-in targets; anything else gets 404.
    pub routes: Vec<SipRoute>,
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
            transactions_max: 100_000,
            calls_max: 20_000,
            calls_per_second_max: 5_000,
            calls_per_second_per_source_max: 2_500,
            routes: Vec::new(),
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
        self.dataplane.validate().map_err(ConfigFileError::Invalid)
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
