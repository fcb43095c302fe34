//! SIP messages (RFC 3261 §7): parsing from a datagram or a byte stream, serialisation.
//!
//! Header lines are split with ezk's `PullParser` (which joins folded lines) and parsed with
//! its `Line` (tolerating `Via :` spacing, compact names); values are unfolded and stored in
//! ezk's `Headers`, whose typed decoders (Via, From/To, CSeq, Contact, Route, …) handle several
//! values per line and IPv6 references. The start line is ours, so `tel:` request URIs parse.
//!
//! Every input is bounded: message size, header count, line length; bad input is an error,
//! never a panic.

use std::fmt::Write;

use bytes::Bytes;
use bytesstr::BytesStr;
use ezk_sip_types::msg::{Line, PullParser};
use ezk_sip_types::{Headers, Method, Name};

use crate::uri::AnyUri;

/// Bounds on what one message may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole message (head and body), bytes.
    pub max_message_bytes: usize,
    pub max_headers: usize,
    /// One header line (after unfolding), bytes.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 65_535,
            max_headers: 256,
            max_line_bytes: 8_192,
        }
    }
}

/// Why bytes are not a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("incomplete message")]
    Incomplete,
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    #[error("header line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("message head is not UTF-8")]
    NotUtf8,
    #[error("bad start line: {0}")]
    BadStartLine(String),
    #[error("bad header line: {0}")]
    BadHeader(String),
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("Content-Length is required on stream transports")]
    MissingContentLength,
    #[error("body shorter than Content-Length ({got} of {expected} bytes)")]
    BodyTruncated { expected: usize, got: usize },
}

/// Request line or status line.
#[derive(Debug, Clone)]
pub enum StartLine {
    Request { method: Method, uri: AnyUri },
    Response { code: u16, reason: String },
}

/// A parsed SIP message.
#[derive(Debug, Clone)]
pub struct SipMessage {
    pub start: StartLine,
    pub headers: Headers,
    pub body: Bytes,
}

fn clip(s: &str) -> String {
    s.chars().take(120).collect()
}

fn parse_start(line: &str) -> Result<StartLine, ParseError> {
    let bad = || ParseError::BadStartLine(clip(line));
    let mut parts = line.split_ascii_whitespace();
    let first = parts.next().ok_or_else(bad)?;
    if first.eq_ignore_ascii_case("SIP/2.0") {
        let code: u16 = parts
            .next()
            .and_then(|c| c.parse().ok())
            .filter(|c| (100..700).contains(c))
            .ok_or_else(bad)?;
        let reason = line
            .splitn(3, |c: char| c.is_ascii_whitespace())
            .nth(2)
            .unwrap_or("")
            .trim()
            .to_string();
        return Ok(StartLine::Response { code, reason });
    }
    let uri = parts.next().ok_or_else(bad)?;
    let version = parts.next().ok_or_else(bad)?;
    if !version.eq_ignore_ascii_case("SIP/2.0") || parts.next().is_some() {
        return Err(bad());
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c);
    if !first.chars().all(token) {
        return Err(bad());
    }
    let src = Bytes::copy_from_slice(first.as_bytes());
    let text = std::str::from_utf8(&src).map_err(|_| bad())?;
    let method = Method::from_parse(&src, text);
    let uri = AnyUri::parse(uri).map_err(|_| bad())?;
    Ok(StartLine::Request { method, uri })
}

/// Folded values (CRLF followed by whitespace) become one line with single spaces.
fn unfold(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut in_break = false;
    for c in v.chars() {
        if c == '\r' || c == '\n' {
            in_break = true;
            continue;
        }
        if in_break {
            if c == ' ' || c == '\t' {
                continue;
            }
            out.push(' ');
            in_break = false;
        }
        out.push(c);
    }
    out
}

/// Parses the head of `buf` (start line and headers). Returns where the body starts.
fn parse_head(buf: &Bytes, limits: &Limits) -> Result<(StartLine, Headers, usize), ParseError> {
    let mut lines = PullParser::new(buf, 0);
    let first = match lines.next() {
        Some(Ok(l)) => l,
        Some(Err(_)) => return Err(ParseError::Incomplete),
        None => return Err(ParseError::BadStartLine(String::new())),
    };
    let first = std::str::from_utf8(first).map_err(|_| ParseError::NotUtf8)?;
    let start = parse_start(first)?;
    let mut headers = Headers::with_capacity(16);
    let mut count = 0;
    for line in lines.by_ref() {
        let line = line.map_err(|_| ParseError::Incomplete)?;
        count += 1;
        if count > limits.max_headers {
            return Err(ParseError::TooManyHeaders(limits.max_headers));
        }
        if line.len() > limits.max_line_bytes {
            return Err(ParseError::LineTooLong(limits.max_line_bytes));
        }
        let text = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
        let parsed = Line::parse(buf, text)
            .map_err(|_| ParseError::BadHeader(clip(text)))?
            .1;
        let name = parsed.name;
        if name.as_print_str().is_empty() {
            return Err(ParseError::BadHeader(clip(text)));
        }
        let value = if parsed.value.contains(['\r', '\n']) {
            BytesStr::from(unfold(&parsed.value))
        } else {
            parsed.value
        };
        headers.insert(name, value);
    }
    let body_at = lines.head_end();
    Ok((start, headers, body_at))
}

/// A compact header name (RFC 3261 §7.3.3 and its extensions): one letter.
fn is_compact(name: &str) -> bool {
    name.len() == 1
}

fn content_length(headers: &Headers) -> Result<Option<usize>, ParseError> {
    let mut values = headers.get_raw(&Name::CONTENT_LENGTH);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let n: usize = first
        .trim()
        .parse()
        .map_err(|_| ParseError::BadContentLength)?;
    // Several different values are an attack or a bug, never a message.
    if values.any(|v| v.trim() != first.trim()) {
        return Err(ParseError::BadContentLength);
    }
    Ok(Some(n))
}

impl SipMessage {
    /// Parses one message from a datagram (UDP): the body is Content-Length bytes (or the
    /// rest of the datagram without one); bytes after it are ignored (RFC 3261 §18.3).
    ///
    /// # Errors
    /// Any [`ParseError`]; a datagram is never incomplete, so a missing blank line or a short
    /// body is an error.
    pub fn parse(datagram: &[u8], limits: &Limits) -> Result<SipMessage, ParseError> {
        if datagram.len() > limits.max_message_bytes {
            return Err(ParseError::TooLarge(limits.max_message_bytes));
        }
        let buf = Bytes::copy_from_slice(datagram);
        let (start, headers, body_at) = parse_head(&buf, limits)?;
        let rest = buf.len().saturating_sub(body_at);
        let len = content_length(&headers)?.unwrap_or(rest);
        if len > rest {
            return Err(ParseError::BodyTruncated {
                expected: len,
                got: rest,
            });
        }
        Ok(SipMessage {
            start,
            headers,
            body: buf.slice(body_at..body_at + len),
        })
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// First value of a header by name (full or compact, any case), as written.
    pub fn header(&self, name: &str) -> Option<&str> {
        if is_compact(name) {
            return self.header_all(name).into_iter().next();
        }
        self.headers
            .iter()
            .find(|(k, _)| k.as_print_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header (one per line or comma-separated item is not split here).
    /// Matches names parsed from the wire (any case, compact forms) and names inserted as
    /// ezk's constants alike.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        if !is_compact(name) {
            // Every name prints in its full form (`i:` parsed prints `Call-ID`), and ezk's
            // only other spelling of a full name is its lower case: comparing the printed
            // form is enough, without building a `Name` (a hot path: several lookups per
            // message).
            return self
                .headers
                .iter()
                .filter(|(k, _)| k.as_print_str().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect();
        }
        let n = Name::from(BytesStr::from(name.to_string()));
        let printed = n.as_print_str();
        self.headers
            .iter()
            .filter(|(k, _)| {
                k.as_print_str().eq_ignore_ascii_case(printed)
                    || k.as_print_str().eq_ignore_ascii_case(name)
            })
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The message as bytes: start line, headers, a Content-Length for the body, the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = String::with_capacity(512);
        match &self.start {
            StartLine::Request { method, uri } => {
                let _ = write!(head, "{method} {uri} SIP/2.0\r\n");
            }
            StartLine::Response { code, reason } => {
                let _ = write!(head, "SIP/2.0 {code} {reason}\r\n");
            }
        }
        for (name, value) in self.headers.iter() {
            // A parsed `l:` prints as `Content-Length` too.
            if name.as_print_str().eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            let _ = write!(head, "{}: {}\r\n", name.as_print_str(), value);
        }
        let _ = write!(head, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// The SDP of the message: an `application/sdp` body, or the `application/sdp` part of a
    /// `multipart/mixed` (or related/alternative) body (RFC 5621).
    pub fn sdp(&self) -> Option<Bytes> {
        let ct = self.header("Content-Type")?.trim().to_ascii_lowercase();
        if ct.starts_with("application/sdp") {
            return Some(self.body.clone());
        }
        if !ct.starts_with("multipart/") {
            return None;
        }
        let boundary = ct
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))?
            .trim_matches('"')
            .to_string();
        // The boundary is case-sensitive: take it from the original header value.
        let original = self.header("Content-Type")?;
        let at = original.to_ascii_lowercase().find(&boundary)?;
        let boundary = original.get(at..at + boundary.len())?;
        multipart_parts(&self.body, boundary)
            .into_iter()
            .find(|(headers, _)| {
                headers.lines().any(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-type:")
                        .is_some_and(|v| v.trim().starts_with("application/sdp"))
                })
            })
            .map(|(_, body)| body)
    }
}

/// Splits a multipart body (RFC 2046 §5.1) into (part headers, part body).
pub fn multipart_parts(body: &Bytes, boundary: &str) -> Vec<(String, Bytes)> {
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let text = &body[..];
    let find = |from: usize| -> Option<usize> {
        text.get(from..)?
            .windows(delim.len())
            .position(|w| w == delim.as_bytes())
            .map(|p| p + from)
    };
    let Some(mut at) = find(0) else {
        return parts;
    };
    while parts.len() < 32 {
        let after = at + delim.len();
        if text.get(after..after + 2) == Some(b"--") {
            break;
        }
        let Some(next) = find(after) else { break };
        // Part = after the delimiter line's CRLF up to the CRLF before the next delimiter.
        let start = text[after..next]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(next, |p| after + p + 2);
        let end = if next >= 2 && &text[next - 2..next] == b"\r\n" {
            next - 2
        } else {
            next
        };
        if start <= end {
            let part = body.slice(start..end);
            let (h, b) = match part.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(p) => (
                    String::from_utf8_lossy(&part[..p]).into_owned(),
                    part.slice(p + 4..),
                ),
                None => (String::new(), part.clone()),
            };
            parts.push((h, b));
        }
        at = next;
    }
    parts
}

/// Frames messages out of a byte stream (TCP): by the blank line and Content-Length, with
/// CRLF keep-alives (RFC 5626 §3.5.1) skipped, and a bound on what it buffers.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    limits: Limits,
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Framer {
            buf: Vec::new(),
            limits,
        }
    }

    /// Adds received bytes.
    ///
    /// # Errors
    /// `TooLarge` when more than one maximal message would be buffered: the connection should
    /// be closed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ParseError> {
        if self.buf.len() + bytes.len() > 2 * self.limits.max_message_bytes {
            return Err(ParseError::TooLarge(self.limits.max_message_bytes));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Bytes buffered and not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `None` when more bytes are needed.
    ///
    /// # Errors
    /// A malformed message; the stream cannot be resynchronised, so the connection should be
    /// closed.
    pub fn next_message(&mut self) -> Option<Result<SipMessage, ParseError>> {
        let skip = self
            .buf
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(self.buf.len());
        self.buf.drain(..skip);
        if self.buf.is_empty() {
            return None;
        }
        let head_end = self
            .buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4);
        let Some(head_end) = head_end else {
            if self.buf.len() > self.limits.max_message_bytes {
                return Some(Err(ParseError::TooLarge(self.limits.max_message_bytes)));
            }
            return None;
        };
        let head = Bytes::copy_from_slice(&self.buf[..head_end]);
        let (start, headers, body_at) = match parse_head(&head, &self.limits) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        let len = match content_length(&headers) {
            Ok(Some(n)) => n,
            Ok(None) => return Some(Err(ParseError::MissingContentLength)),
            Err(e) => return Some(Err(e)),
        };
        if body_at + len > self.limits.max_message_bytes {
            return Some(Err(ParseError::TooLarge(self.limits.max_message_bytes)));
        }
        if self.buf.len() < body_at + len {
            return None;
        }
        let body = Bytes::copy_from_slice(&self.buf[body_at..body_at + len]);
        self.buf.drain(..body_at + len);
        Some(Ok(SipMessage {
            start,
            headers,
            body,
        }))
    }
}
