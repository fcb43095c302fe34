//! SIP digest authentication (RFC 3261 §22 with RFC 2617/7616's MD5 and `qop=auth`): the
//! `Authorization` we send when a trunk challenges us, and the challenges and checks for
//! endpoints that must authenticate to us.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use md5::{Digest, Md5};
use rand::Rng;

fn md5_hex(s: &str) -> String {
    let d = Md5::digest(s.as_bytes());
    let mut out = String::with_capacity(32);
    for b in d {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `name=value` pairs of a `Digest …` header value (values unquoted).
pub fn params(value: &str) -> Option<HashMap<String, String>> {
    let rest = value.trim().strip_prefix("Digest")?.trim_start();
    let mut out = HashMap::new();
    let mut s = rest;
    while !s.is_empty() {
        let (name, after) = s.split_once('=')?;
        let name = name
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        out.insert(name, val.trim().to_string());
        s = next.trim_start().trim_start_matches(',').trim_start();
        if out.len() > 32 {
            return None;
        }
    }
    Some(out)
}

/// The response value of RFC 2617 §3.2.2 (MD5; with `qop=auth` when `qop` is given).
#[allow(clippy::too_many_arguments)]
pub fn response(
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// The `Authorization`/`Proxy-Authorization` value answering `challenge` (a
/// `WWW-Authenticate`/`Proxy-Authenticate` value) for `method` on `uri`. `None` for schemes or
/// algorithms we do not speak.
pub fn authorize(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> Option<String> {
    let p = params(challenge)?;
    let realm = p.get("realm")?;
    let nonce = p.get("nonce")?;
    if let Some(a) = p.get("algorithm") {
        if !a.eq_ignore_ascii_case("MD5") {
            return None;
        }
    }
    let qop_auth = p
        .get("qop")
        .is_some_and(|q| q.split(',').any(|x| x.trim().eq_ignore_ascii_case("auth")));
    let cnonce: String = format!("{:016x}", rand::thread_rng().gen::<u64>());
    let nc = "00000001";
    let r = response(
        user,
        realm,
        password,
        method,
        uri,
        nonce,
        qop_auth.then_some((nc, cnonce.as_str())),
    );
    let mut v = format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{r}\", algorithm=MD5"
    );
    if qop_auth {
        let _ = write!(v, ", qop=auth, nc={nc}, cnonce=\"{cnonce}\"");
    }
    if let Some(o) = p.get("opaque") {
        let _ = write!(v, ", opaque=\"{o}\"");
    }
    Some(v)
}

/// Issues nonces and checks credentials for requests that must authenticate to us.
#[derive(Debug)]
pub struct Authenticator {
    realm: String,
    users: HashMap<String, String>,
    /// Nonce → when it was issued (bounded; expired ones are dropped).
    nonces: HashMap<String, Duration>,
    lifetime: Duration,
}

impl Authenticator {
    pub fn new(realm: &str, users: impl IntoIterator<Item = (String, String)>) -> Self {
        Authenticator {
            realm: realm.to_string(),
            users: users.into_iter().collect(),
            nonces: HashMap::new(),
            lifetime: Duration::from_secs(300),
        }
    }

    /// A `WWW-Authenticate` value with a fresh nonce.
    pub fn challenge(&mut self, now: Duration) -> String {
        if self.nonces.len() >= 100_000 {
            let lifetime = self.lifetime;
            self.nonces.retain(|_, t| now.saturating_sub(*t) < lifetime);
            if self.nonces.len() >= 100_000 {
                self.nonces.clear();
            }
        }
        let nonce = format!("{:032x}", rand::thread_rng().gen::<u128>());
        self.nonces.insert(nonce.clone(), now);
        format!(
            "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"",
            self.realm
        )
    }

    /// Whether `authorization` (an `Authorization` value) proves a known user for `method`.
    pub fn check(&self, authorization: &str, method: &str, now: Duration) -> bool {
        let Some(p) = params(authorization) else {
            return false;
        };
        let (Some(user), Some(nonce), Some(uri), Some(resp)) = (
            p.get("username"),
            p.get("nonce"),
            p.get("uri"),
            p.get("response"),
        ) else {
            return false;
        };
        if p.get("realm") != Some(&self.realm) {
            return false;
        }
        let fresh = self
            .nonces
            .get(nonce)
            .is_some_and(|t| now.saturating_sub(*t) < self.lifetime);
        let Some(password) = self.users.get(user) else {
            return false;
        };
        let qop = match (p.get("qop"), p.get("nc"), p.get("cnonce")) {
            (Some(q), Some(nc), Some(c)) if q.eq_ignore_ascii_case("auth") => {
                Some((nc.as_str(), c.as_str()))
            }
            (None, _, _) => None,
            _ => return false,
        };
        fresh && response(user, &self.realm, password, method, uri, nonce, qop) == *resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_2617_example_response() {
        // RFC 2617 §3.5 (with method GET, as in the RFC).
        let r = response(
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn challenge_and_check_round_trip() {
        let mut a = Authenticator::new("voxedge", [("alice".to_string(), "secret".to_string())]);
        let ch = a.challenge(Duration::ZERO);
        let auth = authorize(&ch, "alice", "secret", "INVITE", "sip:echo@127.0.0.1").expect("auth");
        assert!(a.check(&auth, "INVITE", Duration::from_secs(1)));
        let wrong = authorize(&ch, "alice", "nope", "INVITE", "sip:echo@127.0.0.1").expect("auth");
        assert!(!a.check(&wrong, "INVITE", Duration::from_secs(1)));
        assert!(
            !a.check(&auth, "INVITE", Duration::from_secs(3600)),
            "stale nonce"
        );
        assert!(!a.check("Digest garbage", "INVITE", Duration::ZERO));
        assert!(params("Basic abc").is_none());
        let p = params("Digest realm=\"a, b\", nonce=x, qop=\"auth,auth-int\"").expect("params");
        assert_eq!(p.get("realm").map(String::as_str), Some("a, b"));
        assert_eq!(p.get("nonce").map(String::as_str), Some("x"));
    }
}
