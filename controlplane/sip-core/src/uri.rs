//! Request URIs: `sip:`/`sips:` through ezk-sip-types, `tel:` (RFC 3966) here.

use std::fmt;

use bytes::Bytes;
use ezk_sip_types::parse::Parse;
use ezk_sip_types::uri::{SipUri, SipUriUserPart};

/// A `tel:` URI: a global number (`+` and digits) or a local number with its
/// `phone-context`, plus other parameters as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelUri {
    /// The number with visual separators (`-`, `.`, `(`, `)`) removed.
    pub number: String,
    /// `phone-context` for local numbers.
    pub context: Option<String>,
    /// Other parameters, in order, as `name` or `name=value`.
    pub params: Vec<String>,
}

/// Why a URI did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad URI `{0}`")]
pub struct UriError(pub String);

impl TelUri {
    /// Parses `tel:+1-555-123-4567;ext=12` and `tel:1234;phone-context=example.com`.
    ///
    /// # Errors
    /// Not a `tel:` URI, no digits, a local number without `phone-context`, or bad characters.
    pub fn parse(s: &str) -> Result<TelUri, UriError> {
        let err = || UriError(s.chars().take(128).collect());
        let rest = s
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("tel:"))
            .map(|_| &s[4..])
            .ok_or_else(err)?;
        let mut parts = rest.split(';');
        let raw = parts.next().unwrap_or_default();
        let global = raw.starts_with('+');
        let digits: String = raw
            .chars()
            .enumerate()
            .filter(|&(i, c)| !(matches!(c, '-' | '.' | '(' | ')') || (i == 0 && c == '+')))
            .map(|(_, c)| c)
            .collect();
        let ok = |c: char| c.is_ascii_hexdigit() || matches!(c, '*' | '#');
        if digits.is_empty() || !digits.chars().all(ok) {
            return Err(err());
        }
        let mut context = None;
        let mut params = Vec::new();
        for p in parts {
            if p.is_empty()
                || p.len() > 256
                || p.chars().any(|c| c.is_whitespace() || c == '<' || c == '>')
            {
                return Err(err());
            }
            match p.split_once('=') {
                Some((n, v)) if n.eq_ignore_ascii_case("phone-context") => {
                    context = Some(v.to_string());
                }
                _ => params.push(p.to_string()),
            }
        }
        if !global && context.is_none() {
            return Err(err());
        }
        Ok(TelUri {
            number: if global { format!("+{digits}") } else { digits },
            context,
            params,
        })
    }

    /// The number as a dial plan sees it (`+` and digits, or the local digits).
    pub fn user(&self) -> &str {
        &self.number
    }
}

impl fmt::Display for TelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tel:{}", self.number)?;
        if let Some(c) = &self.context {
            write!(f, ";phone-context={c}")?;
        }
        for p in &self.params {
            write!(f, ";{p}")?;
        }
        Ok(())
    }
}

/// A URI that may appear as a request target or in a name-addr.
#[derive(Debug, Clone)]
pub enum AnyUri {
    Sip(Box<SipUri>),
    Tel(TelUri),
}

impl AnyUri {
    /// Parses a `sip:`, `sips:` or `tel:` URI (nothing around it).
    ///
    /// # Errors
    /// Another scheme, or a malformed URI.
    pub fn parse(s: &str) -> Result<AnyUri, UriError> {
        let s = s.trim();
        if s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("tel:")) {
            return TelUri::parse(s).map(AnyUri::Tel);
        }
        let src = Bytes::copy_from_slice(s.as_bytes());
        let parsed = match std::str::from_utf8(&src) {
            Ok(text) => match SipUri::parse(&src)(text) {
                Ok(("", uri)) => Some(uri),
                _ => None,
            },
            Err(_) => None,
        };
        parsed
            .map(|u| AnyUri::Sip(Box::new(u)))
            .ok_or_else(|| UriError(s.chars().take(128).collect()))
    }

    /// The user part (number or name) a dial plan matches on.
    pub fn user(&self) -> Option<String> {
        match self {
            AnyUri::Tel(t) => Some(t.number.clone()),
            AnyUri::Sip(u) => match &u.user_part {
                SipUriUserPart::User(user) => Some(user.to_string()),
                SipUriUserPart::UserPw(up) => Some(up.user.to_string()),
                SipUriUserPart::Empty => None,
            },
        }
    }
}

impl fmt::Display for AnyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyUri::Tel(t) => t.fmt(f),
            AnyUri::Sip(u) => {
                use ezk_sip_types::print::AppendCtx;
                write!(f, "{}", u.default_print_ctx())
            }
        }
    }
}

/// The URI inside a header value written as a name-addr (`"Name" <uri>;params`) or an
/// addr-spec (`uri;params`), for headers ezk's typed parsers do not cover with `tel:` URIs
/// (From/To/P-Asserted-Identity/Diversion carrying telephone numbers).
pub fn header_uri(value: &str) -> Option<&str> {
    let v = value.trim();
    if let Some(start) = v.find('<') {
        let end = v[start..].find('>')? + start;
        return Some(v[start + 1..end].trim());
    }
    Some(v.split(';').next()?.trim()).filter(|s| !s.is_empty())
}

/// A header parameter (`;name=value`) after the name-addr, e.g. `tag` of From/To.
pub fn header_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let after = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.split_once(';').map_or("", |(_, p)| p),
    };
    after.split(';').find_map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tel_uris() {
        let t = TelUri::parse("tel:+1-555-123-4567;ext=12").unwrap();
        assert_eq!(t.number, "+15551234567");
        assert_eq!(t.params, vec!["ext=12".to_string()]);
        assert_eq!(t.to_string(), "tel:+15551234567;ext=12");
        let l = TelUri::parse("tel:7042;phone-context=example.com").unwrap();
        assert_eq!(
            (l.number.as_str(), l.context.as_deref()),
            ("7042", Some("example.com"))
        );
        for bad in [
            "tel:",
            "tel:;x",
            "tel:12a4z",
            "tel:1234",
            "sip:1@x",
            "tel:+1 2",
            "te",
        ] {
            assert!(TelUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn any_uri_and_header_helpers() {
        assert_eq!(
            AnyUri::parse("sip:bob@[2001:db8::1]:5070")
                .unwrap()
                .user()
                .as_deref(),
            Some("bob")
        );
        assert_eq!(
            AnyUri::parse("TEL:+15550001111").unwrap().user().as_deref(),
            Some("+15550001111")
        );
        assert!(AnyUri::parse("mailto:x@y").is_err());
        let v = "\"Alice\" <tel:+15550000000>;tag=abc;x=1";
        assert_eq!(header_uri(v), Some("tel:+15550000000"));
        assert_eq!(header_param(v, "tag"), Some("abc"));
        assert_eq!(header_uri("sip:a@b;tag=9"), Some("sip:a@b"));
        assert_eq!(header_param("sip:a@b;tag=9", "TAG"), Some("9"));
        assert_eq!(header_param("<sip:a@b;tag=no>", "tag"), None);
    }
}
