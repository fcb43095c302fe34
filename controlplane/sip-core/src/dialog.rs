//! RFC 3261 §12 dialogs: identity, early and confirmed state, route sets, CSeq, remote target
//! refresh (re-INVITE, UPDATE), and building requests inside a dialog. Sans-IO like the rest.

use std::fmt::Write;

use bytesstr::BytesStr;
use ezk_sip_types::header::typed::CSeq;
use ezk_sip_types::{Headers, Method, Name};

use crate::message::{SipMessage, StartLine};
use crate::uri::{header_param, header_uri, AnyUri};

/// Identity of a dialog from our side (RFC 3261 §12).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a provisional response with a To tag.
    Early,
    /// A 2xx was sent or received.
    Confirmed,
}

/// Why a message does not fit a dialog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("missing or malformed {0}")]
    Header(&'static str),
    /// A request whose CSeq is not above the last one (answer 500, RFC 3261 §12.2.2).
    #[error("CSeq {got} is not above {last}")]
    OutOfOrder { got: u32, last: u32 },
    #[error("no To tag in the response")]
    NoRemoteTag,
}

/// One dialog.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub id: DialogId,
    pub state: DialogState,
    /// Our From/To value without tag, as it appears in requests we send.
    pub local: String,
    /// The peer's From/To value without tag.
    pub remote: String,
    pub local_cseq: u32,
    pub remote_cseq: Option<u32>,
    /// Where requests in the dialog go: the peer's Contact URI.
    pub remote_target: String,
    /// Route headers for requests in the dialog, in order.
    pub route_set: Vec<String>,
}

fn first(msg: &SipMessage, name: &'static str) -> Result<String, DialogError> {
    msg.header(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or(DialogError::Header(name))
}

/// The header value without its `tag` parameter.
fn without_tag(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let (head, params) = match v.rfind('>') {
        Some(i) => (&v[..=i], &v[i + 1..]),
        None => match v.find(';') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, ""),
        },
    };
    out.push_str(head.trim());
    for p in params.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let name = p.split('=').next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case("tag") {
            out.push(';');
            out.push_str(p);
        }
    }
    out
}

/// URIs of a header that may carry several comma-separated name-addrs (Record-Route, Contact).
fn uris(msg: &SipMessage, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in msg.header_all(name) {
        // Split on commas outside <> and quotes.
        let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
        for (i, c) in line.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '<' if !quoted => depth += 1,
                '>' if !quoted => depth -= 1,
                ',' if !quoted && depth == 0 => {
                    out.push(line[start..i].trim().to_string());
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(line[start..].trim().to_string());
    }
    out.retain(|s| !s.is_empty());
    out
}

fn contact_uri(msg: &SipMessage) -> Result<String, DialogError> {
    let c = uris(msg, "Contact");
    let first = c.first().ok_or(DialogError::Header("Contact"))?;
    let u = header_uri(first).ok_or(DialogError::Header("Contact"))?;
    AnyUri::parse(u).map_err(|_| DialogError::Header("Contact"))?;
    Ok(u.to_string())
}

fn cseq_of(msg: &SipMessage) -> Result<CSeq, DialogError> {
    msg.headers
        .get::<CSeq>(Name::CSEQ)
        .map_err(|_| DialogError::Header("CSeq"))
}

/// What identifies the dialog an incoming request belongs to, seen from our side:
/// (Call-ID, our tag = To tag, their tag = From tag).
pub fn request_dialog_id(req: &SipMessage) -> Option<DialogId> {
    Some(DialogId {
        call_id: req.header("Call-ID")?.trim().to_string(),
        local_tag: header_param(req.header("To")?, "tag")?.to_string(),
        remote_tag: header_param(req.header("From")?, "tag")?.to_string(),
    })
}

/// What identifies the dialog a response belongs to, for the side that sent the request:
/// (Call-ID, our tag = From tag, their tag = To tag).
pub fn response_dialog_id(resp: &SipMessage) -> Option<DialogId> {
    Some(DialogId {
        call_id: resp.header("Call-ID")?.trim().to_string(),
        local_tag: header_param(resp.header("From")?, "tag")?.to_string(),
        remote_tag: header_param(resp.header("To")?, "tag")?.to_string(),
    })
}

impl Dialog {
    /// The server side of a dialog created by `request` (an INVITE) and our response carrying
    /// `local_tag` (RFC 3261 §12.1.1): route set from Record-Route in order, remote target from
    /// the request's Contact.
    ///
    /// # Errors
    /// The request lacks Call-ID, From tag, CSeq or a usable Contact.
    pub fn uas(
        request: &SipMessage,
        local_tag: &str,
        state: DialogState,
    ) -> Result<Dialog, DialogError> {
        let from = first(request, "From")?;
        let to = first(request, "To")?;
        let remote_tag = header_param(&from, "tag")
            .ok_or(DialogError::Header("From tag"))?
            .to_string();
        Ok(Dialog {
            id: DialogId {
                call_id: first(request, "Call-ID")?,
                local_tag: local_tag.to_string(),
                remote_tag,
            },
            state,
            local: without_tag(&to),
            remote: without_tag(&from),
            local_cseq: 1,
            remote_cseq: Some(cseq_of(request)?.cseq),
            remote_target: contact_uri(request)?,
            route_set: uris(request, "Record-Route"),
        })
    }

    /// The client side of a dialog created by our `request` and a 1xx (with To tag) or 2xx
    /// `response` (RFC 3261 §12.1.2): route set from Record-Route reversed, remote target from
    /// the response's Contact.
    ///
    /// # Errors
    /// No To tag, or missing headers.
    pub fn uac(request: &SipMessage, response: &SipMessage) -> Result<Dialog, DialogError> {
        let from = first(request, "From")?;
        let to = first(response, "To")?;
        let local_tag = header_param(&from, "tag")
            .ok_or(DialogError::Header("From tag"))?
            .to_string();
        let remote_tag = header_param(&to, "tag")
            .ok_or(DialogError::NoRemoteTag)?
            .to_string();
        let code = response.status().unwrap_or(0);
        let mut route_set = uris(response, "Record-Route");
        route_set.reverse();
        Ok(Dialog {
            id: DialogId {
                call_id: first(request, "Call-ID")?,
                local_tag,
                remote_tag,
            },
            state: if (200..300).contains(&code) {
                DialogState::Confirmed
            } else {
                DialogState::Early
            },
            local: without_tag(&from),
            remote: without_tag(&to),
            local_cseq: cseq_of(request)?.cseq,
            remote_cseq: None,
            remote_target: contact_uri(response)?,
            route_set,
        })
    }

    /// A 2xx confirms an early dialog; its Contact refreshes the target and, on the client
    /// side, its Record-Route is the route set (RFC 3261 §13.2.2.4).
    pub fn confirm(&mut self, response: Option<&SipMessage>) {
        self.state = DialogState::Confirmed;
        if let Some(r) = response {
            if let Ok(t) = contact_uri(r) {
                self.remote_target = t;
            }
            let mut rr = uris(r, "Record-Route");
            if !rr.is_empty() {
                rr.reverse();
                self.route_set = rr;
            }
        }
    }

    /// Accounts an incoming request in the dialog: CSeq must grow (RFC 3261 §12.2.2; ACK and
    /// CANCEL reuse their INVITE's number), and a re-INVITE or UPDATE refreshes the target.
    ///
    /// # Errors
    /// `OutOfOrder` (answer 500), or a malformed CSeq.
    pub fn on_request(&mut self, req: &SipMessage) -> Result<(), DialogError> {
        let c = cseq_of(req)?;
        let method = req.method().cloned().unwrap_or(Method::ACK);
        if method != Method::ACK && method != Method::CANCEL {
            if let Some(last) = self.remote_cseq {
                if c.cseq <= last {
                    return Err(DialogError::OutOfOrder { got: c.cseq, last });
                }
            }
            self.remote_cseq = Some(c.cseq);
        }
        if method == Method::INVITE || method == Method::UPDATE {
            if let Ok(t) = contact_uri(req) {
                self.remote_target = t;
            }
        }
        Ok(())
    }

    /// A 2xx to our re-INVITE/UPDATE refreshes the target.
    pub fn on_refresh_response(&mut self, resp: &SipMessage) {
        if let Ok(t) = contact_uri(resp) {
            self.remote_target = t;
        }
    }

    /// Builds a request inside the dialog (RFC 3261 §12.2.1.1, loose routing): Request-URI =
    /// remote target, Route = route set, From/To with tags, next CSeq (ACK: `ack_of`'s
    /// number), a Via with `via_sent_by` (e.g. `UDP 203.0.113.5:5060`) and `branch`, and
    /// `contact` when given (target refresh).
    ///
    /// # Errors
    /// The stored remote target does not parse (cannot happen for dialogs built here).
    pub fn request(
        &mut self,
        method: Method,
        via_sent_by: &str,
        branch: &str,
        contact: Option<&str>,
        ack_of: Option<u32>,
    ) -> Result<SipMessage, DialogError> {
        let uri = AnyUri::parse(&self.remote_target).map_err(|_| DialogError::Header("Contact"))?;
        let number = match (method == Method::ACK, ack_of) {
            (true, Some(n)) => n,
            _ => {
                self.local_cseq += 1;
                self.local_cseq
            }
        };
        let mut h = Headers::with_capacity(10);
        let mut via = String::new();
        let _ = write!(via, "SIP/2.0/{via_sent_by};branch={branch}");
        h.insert(Name::VIA, BytesStr::from(via));
        h.insert(Name::MAX_FORWARDS, BytesStr::from_static("70"));
        for r in &self.route_set {
            h.insert(Name::ROUTE, BytesStr::from(r.clone()));
        }
        h.insert(
            Name::FROM,
            BytesStr::from(format!("{};tag={}", self.local, self.id.local_tag)),
        );
        h.insert(
            Name::TO,
            BytesStr::from(format!("{};tag={}", self.remote, self.id.remote_tag)),
        );
        h.insert(Name::CALL_ID, BytesStr::from(self.id.call_id.clone()));
        h.insert(Name::CSEQ, BytesStr::from(format!("{number} {method}")));
        if let Some(c) = contact {
            h.insert(Name::CONTACT, BytesStr::from(format!("<{c}>")));
        }
        Ok(SipMessage {
            start: StartLine::Request { method, uri },
            headers: h,
            body: bytes::Bytes::new(),
        })
    }
}
