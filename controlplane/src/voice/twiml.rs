//! TwiML-compatible call instructions: a `<Response>` document parsed into [`Verb`]s.
//!
//! Safe against hostile documents by construction: the document is capped at
//! [`DOCUMENT_BYTES_MAX`]; a DTD (`<!DOCTYPE …>`) is refused, so no entity can be declared,
//! expanded or fetched; only XML's predefined entities and character references are decoded;
//! nesting deeper than TwiML allows is a schema error at the first offending element, so depth
//! never costs more than the few levels TwiML has. Errors carry the line and column.

use std::fmt;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Largest instruction document accepted.
pub const DOCUMENT_BYTES_MAX: usize = 64 * 1024;
/// Longest `<Say>` text (characters).
pub const SAY_CHARS_MAX: usize = 4096;
/// What `loop="0"` means: play until hung up, at most this many times.
pub const LOOP_FOREVER: u32 = 1000;

/// HTTP method of an `action` or `Redirect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }

    /// Parses `GET`/`POST` (any case).
    pub fn parse(s: &str) -> Option<Method> {
        match s.to_ascii_uppercase().as_str() {
            "GET" => Some(Method::Get),
            "POST" => Some(Method::Post),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Say {
    pub text: String,
    pub voice: Option<String>,
    pub language: Option<String>,
    pub loops: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Play {
    /// Empty when only `digits` are played.
    pub url: String,
    pub loops: u32,
    /// DTMF to play (`0-9 * # A-D`, `w` = half a second of silence).
    pub digits: Option<String>,
}

/// What `<Gather>` may nest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Say(Say),
    Play(Play),
    Pause(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gather {
    pub num_digits: Option<u32>,
    /// Seconds to wait for the first and each further digit.
    pub timeout: u32,
    /// `None`: no finishing key.
    pub finish_on_key: Option<char>,
    pub action: Option<String>,
    pub method: Method,
    pub action_on_empty_result: bool,
    pub prompts: Vec<Prompt>,
}

/// Status callbacks of one dialled leg (`statusCallback*` on `<Number>` or `<Sip>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegCallback {
    pub url: String,
    pub method: Method,
    /// Space-separated events (initiated ringing answered completed); `completed` when absent.
    pub events: String,
}

/// A `<Dial>` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialTarget {
    Number {
        number: String,
        /// A whisper: instructions run on the called party's leg when it answers, before the
        /// bridge (URL and method).
        url: Option<(String, Method)>,
        callback: Option<LegCallback>,
    },
    Sip {
        uri: String,
        url: Option<(String, Method)>,
        username: Option<String>,
        password: Option<String>,
        callback: Option<LegCallback>,
    },
}

impl DialTarget {
    /// The number or URI dialled.
    pub fn to(&self) -> &str {
        match self {
            DialTarget::Number { number, .. } => number,
            DialTarget::Sip { uri, .. } => uri,
        }
    }

    /// The whisper URL and method.
    pub fn url(&self) -> Option<(&str, Method)> {
        match self {
            DialTarget::Number { url, .. } | DialTarget::Sip { url, .. } => {
                url.as_ref().map(|(u, m)| (u.as_str(), *m))
            }
        }
    }

    pub fn callback(&self) -> Option<&LegCallback> {
        match self {
            DialTarget::Number { callback, .. } | DialTarget::Sip { callback, .. } => {
                callback.as_ref()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    pub targets: Vec<DialTarget>,
    pub timeout: u32,
    pub caller_id: Option<String>,
    pub action: Option<String>,
    pub method: Method,
    pub hangup_on_star: bool,
    pub time_limit: u32,
    /// `record` (any mode but `do-not-record`): the bridged call is recorded.
    pub record: Option<DialRecord>,
    pub answer_on_bridge: bool,
    pub sequential: bool,
    /// `<Conference>`: the caller joins a conference room instead of dialling (then
    /// `targets` is empty).
    pub conference: Option<Box<ConferenceSpec>>,
}

/// `<Dial><Conference>`: a room by name and how this participant takes part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceSpec {
    /// The room's friendly name (unique per account while the room is live).
    pub name: String,
    pub muted: bool,
    /// A beep when someone joins / leaves (`beep="true|false|onEnter|onExit"`).
    pub beep_enter: bool,
    pub beep_exit: bool,
    pub start_on_enter: bool,
    pub end_on_exit: bool,
    /// What the participant hears until the conference starts (audio or TwiML of Play, Say
    /// and Pause; silence when absent).
    pub wait_url: Option<(String, Method)>,
    pub max_participants: u32,
    /// `record="record-from-start"`: the mix and one track per participant.
    pub record: bool,
    pub trim: bool,
    /// The call SID this participant coaches (only that participant hears it).
    pub coach: Option<String>,
    /// `statusCallback*`: events among start end join leave mute hold speaker.
    pub status_callback: Option<LegCallback>,
    pub recording_callback: Option<LegCallback>,
    /// Fixed playout delay in ms (`jitterBufferSize` small 20 / medium 40 / large 60), or
    /// adaptive (`off` or absent).
    pub jitter_ms: Option<u32>,
    pub label: Option<String>,
}

/// Largest conference a `<Conference maxParticipants>` may ask for (the mixer's limit).
pub const CONFERENCE_PARTICIPANTS_MAX: u32 = 250;

/// How a `<Dial>` records the bridged call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRecord {
    /// `…-dual`: the caller on the first channel, the called party on the second.
    pub dual: bool,
    /// `trim="trim-silence"` (the default for `<Dial>` is `do-not-trim`).
    pub trim: bool,
    pub status_callback: Option<LegCallback>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub max_length: u32,
    pub timeout: u32,
    pub finish_on_key: String,
    pub play_beep: bool,
    pub trim: bool,
    pub action: Option<String>,
    pub method: Method,
    /// `recordingStatusCallback` with its method and events (`in-progress`, `completed`,
    /// `absent`; `completed` when not given, as Twilio).
    pub status_callback: Option<LegCallback>,
    /// `transcribe="true"` asks for a transcription (not offered: a warning).
    pub transcribe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Rejected,
    Busy,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    Say(Say),
    Play(Play),
    Pause(u32),
    Gather(Gather),
    Dial(Dial),
    Record(Record),
    Redirect { url: String, method: Method },
    Hangup,
    Reject(RejectReason),
    Echo,
}

impl Verb {
    pub fn name(&self) -> &'static str {
        match self {
            Verb::Say(_) => "Say",
            Verb::Play(_) => "Play",
            Verb::Pause(_) => "Pause",
            Verb::Gather(_) => "Gather",
            Verb::Dial(_) => "Dial",
            Verb::Record(_) => "Record",
            Verb::Redirect { .. } => "Redirect",
            Verb::Hangup => "Hangup",
            Verb::Reject(_) => "Reject",
            Verb::Echo => "Echo",
        }
    }
}

/// Kinds of document errors, with Twilio's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not well-formed XML, or a DTD (12100 Document parse failure).
    Parse,
    /// Well-formed but not valid TwiML: unknown verb, wrong nesting, bad attribute (12200).
    Schema,
    /// Over [`DOCUMENT_BYTES_MAX`] (11750 response body too large).
    TooLarge,
}

impl ErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Parse => "12100",
            ErrorKind::Schema => "12200",
            ErrorKind::TooLarge => "11750",
        }
    }
}

/// A document error at a position (1-based line and column; 0 when not positional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwimlError {
    pub kind: ErrorKind,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for TwimlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for TwimlError {}

/// Parses an instruction document.
///
/// # Errors
/// Oversized, not well-formed (or with a DTD), or not valid TwiML; the error names the
/// position and the problem.
pub fn parse(doc: &[u8]) -> Result<Vec<Verb>, TwimlError> {
    if doc.len() > DOCUMENT_BYTES_MAX {
        return Err(TwimlError {
            kind: ErrorKind::TooLarge,
            line: 0,
            column: 0,
            message: format!(
                "document is {} bytes, over the {DOCUMENT_BYTES_MAX}-byte limit",
                doc.len()
            ),
        });
    }
    let text = std::str::from_utf8(doc).map_err(|e| {
        let (line, column) = position(doc, e.valid_up_to());
        TwimlError {
            kind: ErrorKind::Parse,
            line,
            column,
            message: "document is not UTF-8".into(),
        }
    })?;
    Parser::new(text).document()
}

/// Line and column (1-based, columns in characters) of byte offset `at`.
fn position(doc: &[u8], at: usize) -> (usize, usize) {
    let at = at.min(doc.len());
    let before = &doc[..at];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, column)
}

/// A parsed element start: name, attributes and where it began.
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    at: usize,
}

struct Parser<'a> {
    doc: &'a str,
    reader: Reader<&'a [u8]>,
    /// Offset where the last event began.
    event_at: usize,
}

/// What an element contains, as far as TwiML cares.
#[derive(Default)]
struct Body {
    text: String,
    children: Vec<(Element, Body)>,
}

impl<'a> Parser<'a> {
    fn new(doc: &'a str) -> Self {
        let mut reader = Reader::from_str(doc);
        reader.config_mut().check_end_names = true;
        reader.config_mut().expand_empty_elements = false;
        Parser {
            doc,
            reader,
            event_at: 0,
        }
    }

    fn err(&self, kind: ErrorKind, at: usize, message: impl Into<String>) -> TwimlError {
        let (line, column) = position(self.doc.as_bytes(), at);
        TwimlError {
            kind,
            line,
            column,
            message: message.into(),
        }
    }

    fn next(&mut self) -> Result<Event<'a>, TwimlError> {
        self.event_at = self.reader.buffer_position() as usize;
        match self.reader.read_event() {
            Ok(Event::DocType(_)) => Err(self.err(
                ErrorKind::Parse,
                self.event_at,
                "a DTD (<!DOCTYPE …>) is not allowed in instructions",
            )),
            Ok(e) => Ok(e),
            Err(e) => {
                let at = self.reader.error_position() as usize;
                Err(self.err(ErrorKind::Parse, at, format!("malformed XML: {e}")))
            }
        }
    }

    fn element(&self, e: &BytesStart<'_>) -> Result<Element, TwimlError> {
        let at = self.event_at;
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let mut attrs: Vec<(String, String)> = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|err| {
                self.err(ErrorKind::Parse, at, format!("malformed attribute: {err}"))
            })?;
            let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
            let value = a
                .unescape_value()
                .map_err(|err| self.err(ErrorKind::Parse, at, format!("attribute {key}: {err}")))?
                .into_owned();
            if attrs.iter().any(|(k, _)| *k == key) {
                return Err(self.err(ErrorKind::Parse, at, format!("duplicate attribute {key}")));
            }
            attrs.push((key, value));
        }
        Ok(Element { name, attrs, at })
    }

    /// A child element of an element at `depth`; too deep for TwiML is a schema error.
    fn child(&self, e: &BytesStart<'_>, depth: usize) -> Result<Element, TwimlError> {
        let el = self.element(e)?;
        if depth >= 3 {
            return Err(self.err(
                ErrorKind::Schema,
                el.at,
                format!("<{}> is nested too deeply", el.name),
            ));
        }
        Ok(el)
    }

    /// Reads the content of an element whose start was just read, to its end. `depth` is the
    /// element's depth (Response = 1); TwiML never nests deeper than 3.
    fn body(&mut self, depth: usize) -> Result<Body, TwimlError> {
        let mut body = Body::default();
        loop {
            match self.next()? {
                Event::Start(e) => {
                    let el = self.child(&e, depth)?;
                    let b = self.body(depth + 1)?;
                    body.children.push((el, b));
                }
                Event::Empty(e) => {
                    let el = self.child(&e, depth)?;
                    body.children.push((el, Body::default()));
                }
                Event::Text(t) => {
                    let s = t.unescape().map_err(|e| {
                        self.err(ErrorKind::Parse, self.event_at, format!("text: {e}"))
                    })?;
                    body.text.push_str(&s);
                }
                Event::CData(c) => body.text.push_str(&String::from_utf8_lossy(&c)),
                Event::End(_) => return Ok(body),
                Event::Eof => {
                    return Err(self.err(
                        ErrorKind::Parse,
                        self.doc.len(),
                        "document ended inside an element",
                    ))
                }
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) | Event::DocType(_) => {}
            }
        }
    }

    fn document(mut self) -> Result<Vec<Verb>, TwimlError> {
        let mut root = None;
        loop {
            match self.next()? {
                Event::Start(e) | Event::Empty(e) if root.is_some() => {
                    let el = self.element(&e)?;
                    return Err(self.err(ErrorKind::Parse, el.at, "more than one root element"));
                }
                Event::Start(e) => {
                    let el = self.element(&e)?;
                    let b = self.body(1)?;
                    root = Some((el, b));
                }
                Event::Empty(e) => {
                    root = Some((self.element(&e)?, Body::default()));
                }
                Event::Text(t) => {
                    if !t.iter().all(u8::is_ascii_whitespace) {
                        return Err(self.err(
                            ErrorKind::Parse,
                            self.event_at,
                            "text outside the root element",
                        ));
                    }
                }
                Event::CData(_) => {
                    return Err(self.err(
                        ErrorKind::Parse,
                        self.event_at,
                        "text outside the root element",
                    ))
                }
                Event::End(_) => {
                    return Err(self.err(ErrorKind::Parse, self.event_at, "unexpected end tag"))
                }
                Event::Eof => break,
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) | Event::DocType(_) => {}
            }
        }
        let Some((el, body)) = root else {
            return Err(self.err(ErrorKind::Parse, 0, "document has no root element"));
        };
        if el.name != "Response" {
            return Err(self.err(
                ErrorKind::Schema,
                el.at,
                format!("root element must be <Response>, not <{}>", el.name),
            ));
        }
        if !body.text.trim().is_empty() {
            return Err(self.err(ErrorKind::Schema, el.at, "<Response> cannot contain text"));
        }
        body.children
            .into_iter()
            .map(|(el, b)| self.verb(el, b))
            .collect()
    }

    fn schema(&self, el: &Element, message: impl Into<String>) -> TwimlError {
        self.err(
            ErrorKind::Schema,
            el.at,
            format!("<{}>: {}", el.name, message.into()),
        )
    }

    fn verb(&self, el: Element, body: Body) -> Result<Verb, TwimlError> {
        let v = match el.name.as_str() {
            "Say" => Verb::Say(self.say(&el, &body)?),
            "Play" => Verb::Play(self.play(&el, &body)?),
            "Pause" => Verb::Pause(self.pause(&el, &body)?),
            "Gather" => Verb::Gather(self.gather(&el, body)?),
            "Dial" => Verb::Dial(self.dial(&el, body)?),
            "Record" => {
                let a = Attrs::new(
                    self,
                    &el,
                    &[
                        "maxLength",
                        "timeout",
                        "finishOnKey",
                        "playBeep",
                        "trim",
                        "action",
                        "method",
                        "recordingStatusCallback",
                        "recordingStatusCallbackMethod",
                        "recordingStatusCallbackEvent",
                        "transcribe",
                        "transcribeCallback",
                    ],
                )?;
                self.no_content(&el, &body)?;
                let finish_on_key = a.get("finishOnKey").unwrap_or("1234567890*#").to_string();
                if let Some(c) = finish_on_key.chars().find(|c| !is_dtmf_key(*c)) {
                    return Err(self.schema(&el, format!("finishOnKey contains {c:?}, not a key")));
                }
                Verb::Record(Record {
                    max_length: a.uint("maxLength", 3600, 1, 14_400)?,
                    timeout: a.uint("timeout", 5, 0, 3600)?,
                    finish_on_key,
                    play_beep: a.boolean("playBeep", true)?,
                    trim: match a.get("trim") {
                        None | Some("trim-silence") => true,
                        Some("do-not-trim") => false,
                        Some(o) => {
                            return Err(self.schema(
                                &el,
                                format!("trim={o:?} is not trim-silence or do-not-trim"),
                            ))
                        }
                    },
                    action: a.url("action")?,
                    method: a.method()?,
                    status_callback: a.recording_callback()?,
                    transcribe: a.boolean("transcribe", false)?,
                })
            }
            "Redirect" => {
                let a = Attrs::new(self, &el, &["method"])?;
                self.no_children(&el, &body)?;
                let url = body.text.trim();
                if url.is_empty() {
                    return Err(self.schema(&el, "needs a URL"));
                }
                Verb::Redirect {
                    url: url.to_string(),
                    method: a.method()?,
                }
            }
            "Hangup" => {
                Attrs::new(self, &el, &[])?;
                self.no_content(&el, &body)?;
                Verb::Hangup
            }
            "Reject" => {
                let a = Attrs::new(self, &el, &["reason"])?;
                self.no_content(&el, &body)?;
                Verb::Reject(match a.get("reason") {
                    None | Some("rejected") => RejectReason::Rejected,
                    Some("busy") => RejectReason::Busy,
                    Some(o) => {
                        return Err(
                            self.schema(&el, format!("reason={o:?} is not rejected or busy"))
                        )
                    }
                })
            }
            "Echo" => {
                Attrs::new(self, &el, &[])?;
                self.no_content(&el, &body)?;
                Verb::Echo
            }
            "Number" | "Sip" | "Client" | "Conference" | "Queue" => {
                return Err(self.schema(&el, "must be nested in <Dial>"))
            }
            other => {
                return Err(self.err(ErrorKind::Schema, el.at, format!("unknown verb <{other}>")))
            }
        };
        Ok(v)
    }

    fn no_children(&self, el: &Element, body: &Body) -> Result<(), TwimlError> {
        match body.children.first() {
            Some((c, _)) => Err(self.schema(el, format!("cannot contain <{}>", c.name))),
            None => Ok(()),
        }
    }

    fn no_content(&self, el: &Element, body: &Body) -> Result<(), TwimlError> {
        self.no_children(el, body)?;
        if body.text.trim().is_empty() {
            Ok(())
        } else {
            Err(self.schema(el, "cannot contain text"))
        }
    }

    fn say(&self, el: &Element, body: &Body) -> Result<Say, TwimlError> {
        let a = Attrs::new(self, el, &["voice", "language", "loop"])?;
        self.no_children(el, body)?;
        let text = body.text.trim();
        if text.is_empty() {
            return Err(self.schema(el, "needs text to say"));
        }
        if text.chars().count() > SAY_CHARS_MAX {
            return Err(self.schema(el, format!("text is over {SAY_CHARS_MAX} characters")));
        }
        Ok(Say {
            text: text.to_string(),
            voice: a.get("voice").map(str::to_string),
            language: a.get("language").map(str::to_string),
            loops: a.loops()?,
        })
    }

    fn play(&self, el: &Element, body: &Body) -> Result<Play, TwimlError> {
        let a = Attrs::new(self, el, &["loop", "digits"])?;
        self.no_children(el, body)?;
        let url = body.text.trim().to_string();
        let digits = a.get("digits").map(str::to_string);
        if let Some(d) = &digits {
            if let Some(c) = d
                .chars()
                .find(|c| !(is_dtmf_key(*c) || "ABCDwW".contains(*c)))
            {
                return Err(self.schema(el, format!("digits contains {c:?}")));
            }
        }
        if url.is_empty() && digits.is_none() {
            return Err(self.schema(el, "needs a URL or digits"));
        }
        Ok(Play {
            url,
            loops: a.loops()?,
            digits,
        })
    }

    fn pause(&self, el: &Element, body: &Body) -> Result<u32, TwimlError> {
        let a = Attrs::new(self, el, &["length"])?;
        self.no_content(el, body)?;
        a.uint("length", 1, 0, 600)
    }

    fn gather(&self, el: &Element, body: Body) -> Result<Gather, TwimlError> {
        let a = Attrs::new(
            self,
            el,
            &[
                "input",
                "numDigits",
                "timeout",
                "finishOnKey",
                "action",
                "method",
                "actionOnEmptyResult",
                "language",
                "hints",
                "speechTimeout",
                "profanityFilter",
                "partialResultCallback",
                "partialResultCallbackMethod",
                "enhanced",
                "speechModel",
                "bargeIn",
            ],
        )?;
        match a.get("input") {
            None | Some("dtmf") => {}
            Some(o) => {
                return Err(self.schema(el, format!("input={o:?}: only dtmf input is supported")))
            }
        }
        if !body.text.trim().is_empty() {
            return Err(self.schema(el, "cannot contain text"));
        }
        let finish_on_key = match a.get("finishOnKey") {
            None => Some('#'),
            Some("") => None,
            Some(k) => {
                let mut it = k.chars();
                match (it.next(), it.next()) {
                    (Some(c), None) if is_dtmf_key(c) => Some(c),
                    _ => return Err(self.schema(el, format!("finishOnKey={k:?} is not one key"))),
                }
            }
        };
        let mut prompts = Vec::new();
        for (c, b) in &body.children {
            prompts.push(match c.name.as_str() {
                "Say" => Prompt::Say(self.say(c, b)?),
                "Play" => Prompt::Play(self.play(c, b)?),
                "Pause" => Prompt::Pause(self.pause(c, b)?),
                _ => return Err(self.schema(el, format!("cannot contain <{}>", c.name))),
            });
        }
        Ok(Gather {
            num_digits: match a.get("numDigits") {
                None => None,
                Some(_) => Some(a.uint("numDigits", 1, 1, 100)?),
            },
            timeout: a.uint("timeout", 5, 1, 600)?,
            finish_on_key,
            action: a.url("action")?,
            method: a.method()?,
            action_on_empty_result: a.boolean("actionOnEmptyResult", false)?,
            prompts,
        })
    }

    fn dial(&self, el: &Element, body: Body) -> Result<Dial, TwimlError> {
        let a = Attrs::new(
            self,
            el,
            &[
                "timeout",
                "callerId",
                "action",
                "method",
                "hangupOnStar",
                "timeLimit",
                "record",
                "answerOnBridge",
                "sequential",
                "ringTone",
                "recordingStatusCallback",
                "recordingStatusCallbackMethod",
                "recordingStatusCallbackEvent",
                "trim",
            ],
        )?;
        let mut targets = Vec::new();
        let mut conference = None;
        let plain = body.text.trim();
        if !plain.is_empty() {
            if !body.children.is_empty() {
                return Err(self.schema(el, "cannot mix a plain number with nested nouns"));
            }
            targets.push(DialTarget::Number {
                number: plain.to_string(),
                url: None,
                callback: None,
            });
        }
        for (c, b) in &body.children {
            self.no_children(c, b)?;
            let text = b.text.trim();
            match c.name.as_str() {
                "Number" => {
                    let n = Attrs::new(
                        self,
                        c,
                        &[
                            "url",
                            "method",
                            "sendDigits",
                            "statusCallback",
                            "statusCallbackEvent",
                            "statusCallbackMethod",
                        ],
                    )?;
                    if text.is_empty() {
                        return Err(self.schema(c, "needs a number"));
                    }
                    targets.push(DialTarget::Number {
                        number: text.to_string(),
                        url: match n.url("url")? {
                            Some(u) => Some((u, n.method()?)),
                            None => None,
                        },
                        callback: n.leg_callback()?,
                    });
                }
                "Sip" => {
                    let n = Attrs::new(
                        self,
                        c,
                        &[
                            "url",
                            "method",
                            "username",
                            "password",
                            "statusCallback",
                            "statusCallbackEvent",
                            "statusCallbackMethod",
                        ],
                    )?;
                    if !(text.starts_with("sip:") || text.starts_with("sips:")) {
                        return Err(self.schema(c, "needs a sip: URI"));
                    }
                    targets.push(DialTarget::Sip {
                        uri: text.to_string(),
                        url: match n.url("url")? {
                            Some(u) => Some((u, n.method()?)),
                            None => None,
                        },
                        username: n.get("username").map(str::to_string),
                        password: n.get("password").map(str::to_string),
                        callback: n.leg_callback()?,
                    });
                }
                "Conference" => {
                    if body.children.len() > 1 {
                        return Err(self.schema(c, "<Conference> must be the only noun in <Dial>"));
                    }
                    conference = Some(Box::new(self.conference(c, text)?));
                }
                other => {
                    return Err(self.schema(el, format!("<{other}> is not supported in <Dial>")))
                }
            }
        }
        if targets.is_empty() && conference.is_none() {
            return Err(self.schema(el, "needs a number or a nested <Number> or <Sip>"));
        }
        if targets.len() > 10 {
            return Err(self.schema(el, "dials at most 10 targets"));
        }
        Ok(Dial {
            targets,
            timeout: a.uint("timeout", 30, 5, 600)?,
            caller_id: a.get("callerId").map(str::to_string),
            action: a.url("action")?,
            method: a.method()?,
            hangup_on_star: a.boolean("hangupOnStar", false)?,
            time_limit: a.uint("timeLimit", 14_400, 1, 14_400)?,
            record: match a.get("record") {
                None | Some("do-not-record") => None,
                Some(
                    m @ ("record-from-answer"
                    | "record-from-ringing"
                    | "record-from-answer-dual"
                    | "record-from-ringing-dual"),
                ) => Some(DialRecord {
                    dual: m.ends_with("-dual"),
                    trim: match a.get("trim") {
                        None | Some("do-not-trim") => false,
                        Some("trim-silence") => true,
                        Some(o) => {
                            return Err(self.schema(
                                el,
                                format!("trim={o:?} is not trim-silence or do-not-trim"),
                            ))
                        }
                    },
                    status_callback: a.recording_callback()?,
                }),
                Some(o) => {
                    return Err(self.schema(el, format!("record={o:?} is not a recording mode")))
                }
            },
            answer_on_bridge: a.boolean("answerOnBridge", false)?,
            sequential: a.boolean("sequential", false)?,
            conference,
        })
    }

    fn conference(&self, c: &Element, name: &str) -> Result<ConferenceSpec, TwimlError> {
        let a = Attrs::new(
            self,
            c,
            &[
                "muted",
                "beep",
                "startConferenceOnEnter",
                "endConferenceOnExit",
                "waitUrl",
                "waitMethod",
                "maxParticipants",
                "record",
                "region",
                "coach",
                "trim",
                "statusCallback",
                "statusCallbackEvent",
                "statusCallbackMethod",
                "recordingStatusCallback",
                "recordingStatusCallbackMethod",
                "recordingStatusCallbackEvent",
                "jitterBufferSize",
                "participantLabel",
                "eventCallbackUrl",
            ],
        )?;
        if name.is_empty() || name.len() > 128 {
            return Err(self.schema(c, "needs a room name of 1 to 128 characters"));
        }
        if a.get("eventCallbackUrl").is_some() {
            return Err(self.schema(
                c,
                "eventCallbackUrl is deprecated; use statusCallback and statusCallbackEvent",
            ));
        }
        let (beep_enter, beep_exit) = match a.get("beep") {
            None | Some("true") => (true, true),
            Some("false") => (false, false),
            Some("onEnter") => (true, false),
            Some("onExit") => (false, true),
            Some(o) => {
                return Err(self.schema(
                    c,
                    format!("beep={o:?} is not true, false, onEnter or onExit"),
                ))
            }
        };
        let record = match a.get("record") {
            None | Some("do-not-record") => false,
            Some("record-from-start") => true,
            Some(o) => {
                return Err(self.schema(
                    c,
                    format!("record={o:?} is not record-from-start or do-not-record"),
                ))
            }
        };
        let trim = match a.get("trim") {
            None | Some("trim-silence") => true,
            Some("do-not-trim") => false,
            Some(o) => {
                return Err(self.schema(c, format!("trim={o:?} is not trim-silence or do-not-trim")))
            }
        };
        let jitter_ms = match a.get("jitterBufferSize") {
            None | Some("off") => None,
            Some("small") => Some(20),
            Some("medium") => Some(40),
            Some("large") => Some(60),
            Some(o) => {
                return Err(self.schema(
                    c,
                    format!("jitterBufferSize={o:?} is not off, small, medium or large"),
                ))
            }
        };
        let coach = a.get("coach").map(str::trim).filter(|s| !s.is_empty());
        if coach.is_some_and(|s| !(s.starts_with("CA") && s.len() == 34)) {
            return Err(self.schema(c, "coach must be a call SID (CA…)"));
        }
        Ok(ConferenceSpec {
            name: name.to_string(),
            muted: a.boolean("muted", false)?,
            beep_enter,
            beep_exit,
            start_on_enter: a.boolean("startConferenceOnEnter", true)?,
            end_on_exit: a.boolean("endConferenceOnExit", false)?,
            wait_url: match a.url("waitUrl")? {
                Some(u) => Some((u, a.method_named("waitMethod")?)),
                None => None,
            },
            max_participants: a.uint(
                "maxParticipants",
                CONFERENCE_PARTICIPANTS_MAX,
                2,
                CONFERENCE_PARTICIPANTS_MAX,
            )?,
            record,
            trim,
            coach: coach.map(str::to_string),
            status_callback: a.callback_or(
                "statusCallback",
                &[
                    "start",
                    "end",
                    "join",
                    "leave",
                    "mute",
                    "hold",
                    "modify",
                    "speaker",
                    "announcement",
                ],
                "start end",
            )?,
            recording_callback: a.recording_callback()?,
            jitter_ms,
            label: a.get("participantLabel").map(str::to_string),
        })
    }
}

fn is_dtmf_key(c: char) -> bool {
    c.is_ascii_digit() || c == '*' || c == '#'
}

/// An element's attributes, checked against the names its verb knows.
struct Attrs<'p, 'a> {
    parser: &'p Parser<'a>,
    el: &'p Element,
}

impl<'p, 'a> Attrs<'p, 'a> {
    fn new(parser: &'p Parser<'a>, el: &'p Element, known: &[&str]) -> Result<Self, TwimlError> {
        if let Some((k, _)) = el.attrs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            return Err(parser.schema(el, format!("unknown attribute {k}")));
        }
        Ok(Attrs { parser, el })
    }

    fn get(&self, name: &str) -> Option<&'p str> {
        self.el
            .attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn uint(&self, name: &str, default: u32, min: u32, max: u32) -> Result<u32, TwimlError> {
        let Some(v) = self.get(name) else {
            return Ok(default);
        };
        match v.trim().parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.parser.schema(
                self.el,
                format!("{name}={v:?} is not a whole number from {min} to {max}"),
            )),
        }
    }

    fn loops(&self) -> Result<u32, TwimlError> {
        let n = self.uint("loop", 1, 0, LOOP_FOREVER)?;
        Ok(if n == 0 { LOOP_FOREVER } else { n })
    }

    fn boolean(&self, name: &str, default: bool) -> Result<bool, TwimlError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(self
                .parser
                .schema(self.el, format!("{name}={v:?} is not true or false"))),
        }
    }

    fn method(&self) -> Result<Method, TwimlError> {
        self.method_named("method")
    }

    fn method_named(&self, name: &str) -> Result<Method, TwimlError> {
        match self.get(name) {
            None => Ok(Method::Post),
            Some(m) => Method::parse(m).ok_or_else(|| {
                self.parser
                    .schema(self.el, format!("{name}={m:?} is not GET or POST"))
            }),
        }
    }

    /// `recordingStatusCallback`, `…Method` and `…Event` of a recording.
    fn recording_callback(&self) -> Result<Option<LegCallback>, TwimlError> {
        self.callback(
            "recordingStatusCallback",
            &["in-progress", "completed", "absent"],
        )
    }

    /// `statusCallback`, `statusCallbackMethod` and `statusCallbackEvent` of a dialled leg.
    fn leg_callback(&self) -> Result<Option<LegCallback>, TwimlError> {
        self.callback(
            "statusCallback",
            &["initiated", "ringing", "answered", "completed"],
        )
    }

    /// A callback given as `{name}` (URL), `{name}Method` and `{name}Event` (any of
    /// `events`, space- or comma-separated; `completed` when absent).
    fn callback(&self, name: &str, events: &[&str]) -> Result<Option<LegCallback>, TwimlError> {
        self.callback_or(name, events, "completed")
    }

    /// As [`Attrs::callback`], with `default` events when `{name}Event` is absent.
    fn callback_or(
        &self,
        name: &str,
        events: &[&str],
        default: &str,
    ) -> Result<Option<LegCallback>, TwimlError> {
        let Some(url) = self.url(name)? else {
            return Ok(None);
        };
        let asked = self.get(&format!("{name}Event")).unwrap_or(default);
        let mut out = Vec::new();
        for e in asked.split([' ', ',']).filter(|e| !e.is_empty()) {
            if !events.contains(&e) {
                return Err(self.parser.schema(
                    self.el,
                    format!("{name}Event {e:?} is not one of {}", events.join(", ")),
                ));
            }
            out.push(e);
        }
        Ok(Some(LegCallback {
            url,
            method: self.method_named(&format!("{name}Method"))?,
            events: out.join(" "),
        }))
    }

    fn url(&self, name: &str) -> Result<Option<String>, TwimlError> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(None),
            Some(u) if u.len() > 2048 => Err(self
                .parser
                .schema(self.el, format!("{name} is longer than 2048 characters"))),
            Some(u) => Ok(Some(u.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(doc: &str) -> Vec<Verb> {
        parse(doc.as_bytes()).unwrap_or_else(|e| panic!("{doc}: {e}"))
    }

    fn err(doc: &[u8]) -> TwimlError {
        match parse(doc) {
            Ok(v) => panic!("accepted: {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn dialled_legs_take_status_callbacks() {
        let v = ok(
            r#"<Response><Dial sequential="true"><Number statusCallback="/leg" statusCallbackEvent="ringing answered" statusCallbackMethod="GET">+1555</Number><Sip>sip:a@127.0.0.1:5070</Sip></Dial></Response>"#,
        );
        let Verb::Dial(d) = &v[0] else {
            panic!("{v:?}")
        };
        assert!(d.sequential);
        assert_eq!(
            d.targets[0].callback(),
            Some(&LegCallback {
                url: "/leg".into(),
                method: Method::Get,
                events: "ringing answered".into()
            })
        );
        assert_eq!(d.targets[1].to(), "sip:a@127.0.0.1:5070");
        assert_eq!(d.targets[1].callback(), None);
        let e = err(br#"<Response><Dial><Number statusCallback="/x" statusCallbackEvent="dancing">1</Number></Dial></Response>"#);
        assert!(e.to_string().contains("dancing"), "{e}");
    }

    #[test]
    fn a_full_document() {
        let v = ok(r##"<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment -->
<Response>
  <Say voice="alice" language="en-GB" loop="2">Hello &amp; welcome &#x263A;</Say>
  <Play loop="0">https://example.com/a.wav</Play>
  <Play digits="12w#"/>
  <Pause length="3"/>
  <Gather numDigits="4" timeout="7" finishOnKey="*" action="/next" method="GET" actionOnEmptyResult="true">
    <Say>Enter your PIN</Say>
    <Pause/>
  </Gather>
  <Dial timeout="20" callerId="+15550001" action="after">
    <Number url="/whisper">+15551234</Number>
    <Sip username="u" password="p">sip:bob@example.com</Sip>
  </Dial>
  <Dial>+15559999</Dial>
  <Record maxLength="30" playBeep="false" finishOnKey="#"/>
  <Redirect method="GET">/again</Redirect>
  <Reject reason="busy"/>
  <Echo/>
  <Hangup/>
</Response>"##);
        let names: Vec<_> = v.iter().map(Verb::name).collect();
        assert_eq!(
            names,
            [
                "Say", "Play", "Play", "Pause", "Gather", "Dial", "Dial", "Record", "Redirect",
                "Reject", "Echo", "Hangup"
            ]
        );
        assert_eq!(
            v[0],
            Verb::Say(Say {
                text: "Hello & welcome \u{263a}".into(),
                voice: Some("alice".into()),
                language: Some("en-GB".into()),
                loops: 2
            })
        );
        assert!(
            matches!(&v[1], Verb::Play(p) if p.loops == LOOP_FOREVER && p.url == "https://example.com/a.wav")
        );
        assert!(
            matches!(&v[2], Verb::Play(p) if p.url.is_empty() && p.digits.as_deref() == Some("12w#"))
        );
        assert_eq!(v[3], Verb::Pause(3));
        let Verb::Gather(g) = &v[4] else {
            unreachable!()
        };
        assert_eq!(g.num_digits, Some(4));
        assert_eq!(g.timeout, 7);
        assert_eq!(g.finish_on_key, Some('*'));
        assert_eq!(g.action.as_deref(), Some("/next"));
        assert_eq!(g.method, Method::Get);
        assert!(g.action_on_empty_result);
        assert_eq!(g.prompts.len(), 2);
        let Verb::Dial(d) = &v[5] else { unreachable!() };
        assert_eq!(d.targets.len(), 2);
        assert_eq!(d.timeout, 20);
        assert!(
            matches!(&v[6], Verb::Dial(d) if d.targets == [DialTarget::Number { number: "+15559999".into(), url: None, callback: None }])
        );
        assert_eq!(v[9], Verb::Reject(RejectReason::Busy));
    }

    #[test]
    fn defaults() {
        let v = ok("<Response><Gather/><Record/><Say>x</Say></Response>");
        let Verb::Gather(g) = &v[0] else {
            unreachable!()
        };
        assert_eq!(
            (g.num_digits, g.timeout, g.finish_on_key, g.method),
            (None, 5, Some('#'), Method::Post)
        );
        let Verb::Record(r) = &v[1] else {
            unreachable!()
        };
        assert_eq!(
            (r.max_length, r.timeout, r.play_beep, r.trim),
            (3600, 5, true, true)
        );
        assert!(ok("<Response/>").is_empty());
        let v = ok(r#"<Response><Gather finishOnKey=""/></Response>"#);
        assert!(matches!(&v[0], Verb::Gather(g) if g.finish_on_key.is_none()));
    }

    #[test]
    fn schema_errors_name_the_place() {
        let cases: &[(&str, ErrorKind, usize, usize, &str)] = &[
            (
                "<Response>\n  <Sing>la</Sing>\n</Response>",
                ErrorKind::Schema,
                2,
                3,
                "unknown verb <Sing>",
            ),
            (
                "<Reply/>",
                ErrorKind::Schema,
                1,
                1,
                "root element must be <Response>",
            ),
            (
                "<Response><Say/></Response>",
                ErrorKind::Schema,
                1,
                11,
                "needs text",
            ),
            (
                "<Response><Say colour=\"red\">x</Say></Response>",
                ErrorKind::Schema,
                1,
                11,
                "unknown attribute colour",
            ),
            (
                "<Response><Gather><Dial>1</Dial></Gather></Response>",
                ErrorKind::Schema,
                1,
                11,
                "cannot contain <Dial>",
            ),
            (
                "<Response><Number>1</Number></Response>",
                ErrorKind::Schema,
                1,
                11,
                "nested in <Dial>",
            ),
            (
                "<Response><Pause length=\"-1\"/></Response>",
                ErrorKind::Schema,
                1,
                11,
                "length=\"-1\"",
            ),
            (
                "<Response><Gather finishOnKey=\"12\"/></Response>",
                ErrorKind::Schema,
                1,
                11,
                "not one key",
            ),
            (
                "<Response><Gather input=\"speech\"/></Response>",
                ErrorKind::Schema,
                1,
                11,
                "only dtmf",
            ),
            (
                "<Response><Redirect/></Response>",
                ErrorKind::Schema,
                1,
                11,
                "needs a URL",
            ),
            (
                "<Response><Hangup>now</Hangup></Response>",
                ErrorKind::Schema,
                1,
                11,
                "cannot contain text",
            ),
            (
                "<Response><Gather><Say><Say>x</Say></Say></Gather></Response>",
                ErrorKind::Schema,
                1,
                24,
                "nested too deeply",
            ),
            (
                "<Response><Reject reason=\"later\"/></Response>",
                ErrorKind::Schema,
                1,
                11,
                "reason",
            ),
            (
                "<Response><Dial method=\"PUT\">1</Dial></Response>",
                ErrorKind::Schema,
                1,
                11,
                "method",
            ),
            (
                "<Response><Play digits=\"1x\"/></Response>",
                ErrorKind::Schema,
                1,
                11,
                "digits",
            ),
            (
                "<Response>hello</Response>",
                ErrorKind::Schema,
                1,
                1,
                "cannot contain text",
            ),
        ];
        for (doc, kind, line, col, msg) in cases {
            let e = err(doc.as_bytes());
            assert_eq!(
                (e.kind, e.line, e.column),
                (*kind, *line, *col),
                "{doc}: {e}"
            );
            assert!(e.message.contains(msg), "{doc}: {e}");
        }
    }

    #[test]
    fn malformed_xml_is_a_parse_error_with_position() {
        let cases: &[&[u8]] = &[
            b"",
            b"<Response>",
            b"<Response><Say>x</Response>",
            b"<Response></Response><Response/>",
            b"<Response><Say a=1>x</Say></Response>",
            b"<Response><Say>&nosuch;</Say></Response>",
            b"not xml at all",
            b"<Response><Say>\xff\xfe</Say></Response>",
            b"<Response><Say a=\"1\" a=\"2\">x</Say></Response>",
            b"</Response>",
        ];
        for doc in cases {
            let e = err(doc);
            assert_eq!(
                e.kind,
                ErrorKind::Parse,
                "{}: {e}",
                String::from_utf8_lossy(doc)
            );
        }
        let e = err(b"<Response>\n<Say>x</Sai>\n</Response>");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn hostile_documents_are_refused_quickly() {
        // Billion laughs: the DTD itself is refused, nothing is expanded.
        let bomb = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Response><Say>&lol3;</Say></Response>"#;
        let e = err(bomb);
        assert_eq!(e.kind, ErrorKind::Parse);
        assert!(e.message.contains("DTD"), "{e}");
        // External entity.
        let xxe = br#"<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><Response><Say>&x;</Say></Response>"#;
        assert!(err(xxe).message.contains("DTD"));
        // Deep nesting: refused at the first element too deep.
        let deep = format!(
            "<Response>{}{}</Response>",
            "<Gather>".repeat(10_000),
            "</Gather>".repeat(10_000)
        );
        let e = err(&deep.as_bytes()[..DOCUMENT_BYTES_MAX.min(deep.len())]);
        assert!(
            matches!(e.kind, ErrorKind::Schema | ErrorKind::TooLarge),
            "{e}"
        );
        let deep = format!("<Response>{}", "<Gather>".repeat(5000));
        assert_eq!(err(deep.as_bytes()).kind, ErrorKind::Schema);
        // Oversized.
        let big = vec![b' '; 10 * 1024 * 1024];
        assert_eq!(err(&big).kind, ErrorKind::TooLarge);
        // Huge attribute within the limit: a schema error, not a problem.
        let huge = format!(
            "<Response><Gather action=\"{}\"/></Response>",
            "a".repeat(60_000)
        );
        assert_eq!(err(huge.as_bytes()).kind, ErrorKind::Schema);
    }

    #[test]
    fn recording_attributes() {
        let v = ok(
            r#"<Response><Dial record="record-from-answer-dual" trim="trim-silence" recordingStatusCallback="/rs" recordingStatusCallbackEvent="in-progress absent">1</Dial><Dial record="do-not-record">2</Dial><Record recordingStatusCallback="/r" transcribe="true"/></Response>"#,
        );
        let Verb::Dial(d) = &v[0] else {
            panic!("{v:?}")
        };
        let r = d.record.as_ref().expect("recorded");
        assert!(r.dual && r.trim);
        let cb = r.status_callback.as_ref().expect("callback");
        assert_eq!(
            (cb.url.as_str(), cb.events.as_str()),
            ("/rs", "in-progress absent")
        );
        let Verb::Dial(d2) = &v[1] else { panic!() };
        assert!(d2.record.is_none());
        let Verb::Record(rec) = &v[2] else { panic!() };
        assert!(rec.transcribe);
        assert_eq!(
            rec.status_callback.as_ref().map(|c| c.events.as_str()),
            Some("completed")
        );
        for bad in [
            r#"<Response><Record recordingStatusCallback="/r" recordingStatusCallbackEvent="done"/></Response>"#,
            r#"<Response><Dial record="always">1</Dial></Response>"#,
            r#"<Response><Dial record="record-from-answer" trim="some">1</Dial></Response>"#,
        ] {
            assert_eq!(err(bad.as_bytes()).kind, ErrorKind::Schema, "{bad}");
        }
    }
}

#[cfg(test)]
mod conference_tests {
    use super::*;

    fn conference(doc: &str) -> Result<ConferenceSpec, TwimlError> {
        match parse(doc.as_bytes())?.pop() {
            Some(Verb::Dial(d)) => Ok(*d.conference.expect("a conference")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conference_attributes_are_read() {
        let c = conference(
            r#"<Response><Dial><Conference muted="true" beep="onExit" startConferenceOnEnter="false" endConferenceOnExit="true" waitUrl="/wait" waitMethod="GET" maxParticipants="5" record="record-from-start" trim="do-not-trim" coach="CA0123456789abcdef0123456789abcdef" statusCallback="/cs" statusCallbackEvent="join leave speaker" jitterBufferSize="large" participantLabel="agent">Room 1</Conference></Dial></Response>"#,
        )
        .expect("valid");
        assert_eq!(c.name, "Room 1");
        assert!(c.muted && !c.beep_enter && c.beep_exit && !c.start_on_enter && c.end_on_exit);
        assert_eq!(c.wait_url, Some(("/wait".into(), Method::Get)));
        assert_eq!(c.max_participants, 5);
        assert!(c.record && !c.trim);
        assert_eq!(
            c.coach.as_deref(),
            Some("CA0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            c.status_callback.map(|s| s.events),
            Some("join leave speaker".into())
        );
        assert_eq!(c.jitter_ms, Some(60));
        assert_eq!(c.label.as_deref(), Some("agent"));
        // Defaults: Twilio's.
        let d = conference(
            "<Response><Dial><Conference statusCallback=\"/cs\">r</Conference></Dial></Response>",
        )
        .expect("valid");
        assert!(!d.muted && d.beep_enter && d.beep_exit && d.start_on_enter && !d.end_on_exit);
        assert!(!d.record && d.trim && d.jitter_ms.is_none());
        assert_eq!(d.max_participants, CONFERENCE_PARTICIPANTS_MAX);
        assert_eq!(
            d.status_callback.map(|s| s.events),
            Some("start end".into())
        );
    }

    #[test]
    fn bad_conferences_are_schema_errors() {
        for doc in [
            "<Response><Dial><Conference></Conference></Dial></Response>",
            r#"<Response><Dial><Conference beep="loud">r</Conference></Dial></Response>"#,
            r#"<Response><Dial><Conference maxParticipants="1">r</Conference></Dial></Response>"#,
            r#"<Response><Dial><Conference maxParticipants="251">r</Conference></Dial></Response>"#,
            r#"<Response><Dial><Conference record="yes">r</Conference></Dial></Response>"#,
            r#"<Response><Dial><Conference coach="me">r</Conference></Dial></Response>"#,
            r#"<Response><Dial><Conference statusCallback="/s" statusCallbackEvent="dance">r</Conference></Dial></Response>"#,
            r#"<Response><Dial><Conference jitterBufferSize="huge">r</Conference></Dial></Response>"#,
            r#"<Response><Dial><Conference eventCallbackUrl="/e">r</Conference></Dial></Response>"#,
            "<Response><Dial><Number>1</Number><Conference>r</Conference></Dial></Response>",
            "<Response><Dial><Conference>a</Conference><Conference>b</Conference></Dial></Response>",
            "<Response><Conference>r</Conference></Response>",
        ] {
            let e = parse(doc.as_bytes()).expect_err(doc);
            assert_eq!(e.kind, ErrorKind::Schema, "{doc}: {e}");
        }
    }
}
