//! SDP offer/answer (RFC 3264) for a B2BUA that anchors one media stream per call in the
//! dataplane, on `rtc-sdp`'s session model (ADR 0016).
//!
//! What trunks send is normalised first (LF line ends, trailing blanks, lines out of RFC 4566
//! order, a missing `t=`), then parsed; every line the model keeps — T.38 attributes, vendor
//! `a=X-…` lines, bandwidth — survives a rewrite. The anchored stream is the first audio stream
//! (or, without one, the first T.38 `image` stream); other streams are disabled (port 0), since
//! the relay carries one stream pair.

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use rtc_sdp::description::common::{Address, Attribute, ConnectionInformation};
use rtc_sdp::description::media::{MediaDescription, MediaName, RangedPort};
use rtc_sdp::description::session::{Origin, SessionDescription, TimeDescription};

/// Largest SDP body accepted.
pub const SDP_MAX_BYTES: usize = 16 * 1024;
/// Most media streams (`m=` lines) in one body.
pub const MEDIA_MAX: usize = 16;
/// Most formats on one `m=` line.
pub const FORMATS_MAX: usize = 64;

/// Why an SDP body cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP larger than {SDP_MAX_BYTES} bytes")]
    TooLarge,
    #[error("SDP is not UTF-8 text")]
    NotText,
    #[error("SDP syntax: {0}")]
    Syntax(String),
    #[error("SDP has more than {MEDIA_MAX} media streams or {FORMATS_MAX} formats on one")]
    TooMany,
    #[error("SDP has no audio or T.38 stream")]
    NoMedia,
    #[error("no codec in common")]
    NoCommonCodec,
}

/// One payload format of the anchored stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub pt: u8,
    /// Encoding name as written (`PCMU`, `opus`, `telephone-event`); empty when unknown.
    pub name: String,
    pub rate: u32,
}

impl Format {
    pub fn is_telephone_event(&self) -> bool {
        self.name.eq_ignore_ascii_case("telephone-event")
    }

    /// Same codec: equal static payload types, or equal name and clock rate.
    fn same_codec(&self, other: &Format) -> bool {
        if self.pt < 96 && other.pt < 96 && (self.name.is_empty() || other.name.is_empty()) {
            return self.pt == other.pt;
        }
        self.name.eq_ignore_ascii_case(&other.name) && self.rate == other.rate
    }
}

/// Codecs a route lets through; empty means all. `telephone-event` always passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecPolicy {
    names: Vec<String>,
}

impl CodecPolicy {
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        CodecPolicy {
            names: names
                .iter()
                .map(|n| n.as_ref().trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.names.is_empty()
    }

    fn allows(&self, f: &Format) -> bool {
        self.is_open()
            || f.is_telephone_event()
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(&f.name))
    }
}

/// A parsed SDP body.
#[derive(Debug, Clone)]
pub struct Sdp {
    desc: SessionDescription,
}

/// RFC 4566 order of session-level line types (`t=` and its `r=` lines share a rank so a
/// stable sort keeps them together).
fn session_rank(kind: u8) -> u8 {
    match kind {
        b'v' => 0,
        b'o' => 1,
        b's' => 2,
        b'i' => 3,
        b'u' => 4,
        b'e' => 5,
        b'p' => 6,
        b'c' => 7,
        b'b' => 8,
        b't' | b'r' => 9,
        b'z' => 10,
        b'k' => 11,
        _ => 12,
    }
}

fn media_rank(kind: u8) -> u8 {
    match kind {
        b'm' => 0,
        b'i' => 1,
        b'c' => 2,
        b'b' => 3,
        b'k' => 4,
        _ => 5,
    }
}

/// What the model parser needs from what trunks send: CRLF lines without trailing blanks,
/// each section's lines in RFC 4566 order, a `t=` line.
fn normalise(text: &str) -> String {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(s) = sections.last_mut() {
            s.push(line);
        }
    }
    let kind = |l: &&str| l.as_bytes().first().copied().unwrap_or(b'a');
    let mut out = String::with_capacity(text.len() + 16);
    for (i, s) in sections.iter_mut().enumerate() {
        if i == 0 {
            s.sort_by_key(|l| session_rank(kind(l)));
            if !s.iter().any(|l| l.starts_with("t=")) {
                let at = s
                    .iter()
                    .position(|l| session_rank(kind(l)) > 9)
                    .unwrap_or(s.len());
                s.insert(at, "t=0 0");
            }
        } else {
            s.sort_by_key(|l| media_rank(kind(l)));
        }
        for l in s.iter() {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out
}

/// Encoding of the static payload types (RFC 3551 table 4) a peer may use without `a=rtpmap`.
fn static_format(pt: u8) -> Option<(&'static str, u32)> {
    Some(match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        5 => ("DVI4", 8000),
        6 => ("DVI4", 16000),
        7 => ("LPC", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        10 | 11 => ("L16", 44100),
        12 => ("QCELP", 8000),
        13 => ("CN", 8000),
        15 => ("G728", 8000),
        18 => ("G729", 8000),
        _ => return None,
    })
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    }
}

fn connection(addr: IpAddr) -> ConnectionInformation {
    ConnectionInformation {
        network_type: "IN".into(),
        address_type: family(addr).into(),
        address: Some(Address {
            address: addr.to_string(),
            ttl: None,
            range: None,
        }),
    }
}

fn conn_addr(c: Option<&ConnectionInformation>) -> Option<IpAddr> {
    c?.address.as_ref()?.address.parse().ok()
}

/// ICE and candidate lines name the far end's own addresses, which the relay replaces.
fn is_ice(key: &str) -> bool {
    matches!(
        key,
        "candidate"
            | "remote-candidates"
            | "end-of-candidates"
            | "ice-ufrag"
            | "ice-pwd"
            | "ice-options"
            | "ice-lite"
            | "ice-mismatch"
    )
}

/// Attribute lines that describe payload type `pt` (`a=rtpmap:pt …`, `a=fmtp:pt …`,
/// `a=rtcp-fb:pt …`).
fn describes(a: &Attribute, pt: &str) -> bool {
    matches!(a.key.as_str(), "rtpmap" | "fmtp" | "rtcp-fb")
        && a.value
            .as_deref()
            .and_then(|v| v.split_whitespace().next())
            .is_some_and(|p| p == pt)
}

impl Sdp {
    /// Parses a body, accepting what trunks commonly send (see the module docs).
    ///
    /// # Errors
    /// Too large, not text, unparseable, too many streams or formats, or no stream the relay
    /// can carry.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        if body.len() > SDP_MAX_BYTES {
            return Err(SdpError::TooLarge);
        }
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
        let norm = normalise(text);
        let mut desc = SessionDescription::unmarshal(&mut Cursor::new(norm.as_bytes()))
            .map_err(|e| SdpError::Syntax(e.to_string()))?;
        for m in &mut desc.media_descriptions {
            // Doubled or trailing blanks on the `m=` line read as empty formats.
            m.media_name.formats.retain(|f| !f.is_empty());
            if m.media_name.formats.is_empty() {
                return Err(SdpError::Syntax("an m= line without formats".into()));
            }
        }
        if desc.media_descriptions.len() > MEDIA_MAX
            || desc
                .media_descriptions
                .iter()
                .any(|m| m.media_name.formats.len() > FORMATS_MAX)
        {
            return Err(SdpError::TooMany);
        }
        let sdp = Sdp { desc };
        sdp.anchored_index().ok_or(SdpError::NoMedia)?;
        Ok(sdp)
    }

    /// The stream the relay carries: the first enabled audio stream, else the first enabled
    /// T.38 stream (a switch to fax keeps `m=audio 0` before `m=image`), else the first audio
    /// or T.38 stream (all disabled).
    fn anchored_index(&self) -> Option<usize> {
        let ms = &self.desc.media_descriptions;
        let audio = |m: &MediaDescription| m.media_name.media.eq_ignore_ascii_case("audio");
        let enabled = |m: &MediaDescription| m.media_name.port.value != 0;
        ms.iter()
            .position(|m| audio(m) && enabled(m))
            .or_else(|| ms.iter().position(|m| is_t38(m) && enabled(m)))
            .or_else(|| ms.iter().position(audio))
            .or_else(|| ms.iter().position(is_t38))
    }

    fn anchored(&self) -> &MediaDescription {
        // `parse` refused bodies without one; the index stays valid since streams are never
        // added or removed.
        let i = self.anchored_index().unwrap_or(0);
        &self.desc.media_descriptions[i]
    }

    fn anchored_mut(&mut self) -> &mut MediaDescription {
        let i = self.anchored_index().unwrap_or(0);
        &mut self.desc.media_descriptions[i]
    }

    /// The anchored stream is T.38 fax (`m=image … udptl t38`).
    pub fn is_fax(&self) -> bool {
        is_t38(self.anchored())
    }

    /// The anchored stream's port (0: rejected or disabled).
    pub fn port(&self) -> u16 {
        u16::try_from(self.anchored().media_name.port.value).unwrap_or(0)
    }

    /// Where the party receives the anchored stream; `None` when held (0.0.0.0) or disabled.
    pub fn remote(&self) -> Option<SocketAddr> {
        let m = self.anchored();
        let addr = conn_addr(m.connection_information.as_ref())
            .or_else(|| conn_addr(self.desc.connection_information.as_ref()))?;
        let port = self.port();
        (!addr.is_unspecified() && port != 0).then(|| SocketAddr::new(addr, port))
    }

    /// Whether its sender expects silence on the anchored stream in some direction: on hold or
    /// inactive (`sendonly`, `recvonly`, `inactive`, in the stream or for the session), or not
    /// receiving at all (0.0.0.0, port 0).
    pub fn expects_silence(&self) -> bool {
        let dir = direction_of(&self.anchored().attributes)
            .or_else(|| direction_of(&self.desc.attributes));
        self.remote().is_none() || dir.is_some_and(|d| d != "sendrecv")
    }

    /// The anchored stream's payload formats, in preference order.
    pub fn formats(&self) -> Vec<Format> {
        let m = self.anchored();
        m.media_name
            .formats
            .iter()
            .filter_map(|f| {
                let pt: u8 = f.parse().ok()?;
                let mapped = m.attributes.iter().find_map(|a| {
                    let v = a.value.as_deref().filter(|_| a.key == "rtpmap")?;
                    let (p, enc) = v.split_once(' ')?;
                    (p.trim() == f).then_some(enc.trim())
                });
                let (name, rate) = match mapped {
                    Some(enc) => {
                        let mut parts = enc.split('/');
                        let name = parts.next().unwrap_or("").to_string();
                        let rate = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
                        (name, rate)
                    }
                    None => {
                        static_format(pt).map_or((String::new(), 0), |(n, r)| (n.to_string(), r))
                    }
                };
                Some(Format { pt, name, rate })
            })
            .collect()
    }

    /// The telephone-event payload type at 8 kHz, when offered.
    pub fn telephone_event(&self) -> Option<u8> {
        self.formats()
            .into_iter()
            .find(|f| f.is_telephone_event() && f.rate == 8000)
            .map(|f| f.pt)
    }

    /// Keeps the anchored stream's formats `keep` accepts (and their rtpmap/fmtp lines).
    ///
    /// # Errors
    /// [`SdpError::NoCommonCodec`] when no format other than telephone-event would remain on
    /// an audio stream that is not disabled (the body is left unchanged then).
    fn retain_formats(&mut self, keep: impl Fn(&Format) -> bool) -> Result<(), SdpError> {
        if self.is_fax() {
            return Ok(());
        }
        let formats = self.formats();
        let kept: Vec<&Format> = formats.iter().filter(|f| keep(f)).collect();
        if !kept.iter().any(|f| !f.is_telephone_event()) {
            // A disabled stream needs no codec (and an `m=` line keeps at least one format).
            return if self.port() == 0 {
                Ok(())
            } else {
                Err(SdpError::NoCommonCodec)
            };
        }
        let m = self.anchored_mut();
        let dropped: Vec<String> = m
            .media_name
            .formats
            .iter()
            .filter(|f| !kept.iter().any(|k| f.parse() == Ok(k.pt)))
            .cloned()
            .collect();
        m.media_name.formats.retain(|f| !dropped.contains(f));
        m.attributes
            .retain(|a| !dropped.iter().any(|pt| describes(a, pt)));
        Ok(())
    }

    /// An offer as `policy` lets it through.
    ///
    /// # Errors
    /// [`SdpError::NoCommonCodec`] when the policy leaves no codec.
    pub fn restrict(&mut self, policy: &CodecPolicy) -> Result<(), SdpError> {
        if policy.is_open() {
            return Ok(());
        }
        self.retain_formats(|f| policy.allows(f))
    }

    /// An answer cut to what `offer` offered (RFC 3264 §6.1: an answer lists only offered
    /// formats; a dynamic payload type matches by name and clock rate).
    ///
    /// # Errors
    /// [`SdpError::NoCommonCodec`] when nothing offered remains.
    pub fn answer_within(&mut self, offer: &Sdp) -> Result<(), SdpError> {
        let offered = offer.formats();
        self.retain_formats(|f| offered.iter().any(|o| o.same_codec(f)))
    }

    /// Points the anchored stream at `addr`:`port` (RTCP on `port + 1`, or muxed when the body
    /// says so), the origin and connection addresses at `addr`; ICE lines go and every other
    /// stream is disabled (port 0). The rest is kept as it came.
    pub fn anchor_to(&mut self, addr: IpAddr, port: u16) {
        let anchored = self.anchored_index();
        let origin = &mut self.desc.origin;
        origin.address_type = family(addr).into();
        origin.unicast_address = addr.to_string();
        self.desc.connection_information = Some(connection(addr));
        self.desc.attributes.retain(|a| !is_ice(&a.key));
        for (i, m) in self.desc.media_descriptions.iter_mut().enumerate() {
            if Some(i) != anchored {
                m.media_name.port.value = 0;
                m.media_name.port.range = None;
                continue;
            }
            m.media_name.port.value = port as isize;
            m.media_name.port.range = None;
            if m.connection_information.is_some() {
                m.connection_information = Some(connection(addr));
            }
            m.attributes.retain(|a| !is_ice(&a.key));
            for a in m.attributes.iter_mut().filter(|a| a.key == "rtcp") {
                let explicit = a.value.as_deref().is_some_and(|v| v.contains(' '));
                let rtcp = u32::from(port) + 1;
                a.value = Some(if explicit {
                    format!("{rtcp} IN {} {addr}", family(addr))
                } else {
                    rtcp.to_string()
                });
            }
            if !is_t38(m) && !m.attributes.iter().any(|a| a.key == "rtcp") {
                m.attributes.push(Attribute {
                    key: "rtcp".into(),
                    value: Some((u32::from(port) + 1).to_string()),
                });
            }
        }
    }

    /// Our answer to `offer` as an endpoint (the echo target, engine calls): the formats
    /// `keep` accepts, their rtpmap/fmtp lines, ptime, and the offer's direction mirrored;
    /// the anchored stream on `addr`:`port`.
    ///
    /// # Errors
    /// [`SdpError::NoCommonCodec`] when `keep` accepts nothing but telephone-event.
    pub fn answer_to(
        offer: &Sdp,
        addr: IpAddr,
        port: u16,
        keep: impl Fn(&Format) -> bool,
    ) -> Result<Sdp, SdpError> {
        let mut a = offer.clone();
        a.retain_formats(keep)?;
        let session_id = rand::random::<u32>() as u64;
        let d = &mut a.desc;
        d.origin.username = "voxedge".into();
        d.origin.session_id = session_id;
        d.origin.session_version = 1;
        d.session_name = "VoxEdge".into();
        d.session_information = None;
        d.bandwidth.clear();
        let direction = direction_of(&d.attributes);
        d.attributes.clear();
        let anchored = a.anchored_index();
        for (i, m) in a.desc.media_descriptions.iter_mut().enumerate() {
            if Some(i) != anchored {
                m.attributes.clear();
                continue;
            }
            let dir = direction_of(&m.attributes).or(direction);
            m.attributes.retain(|at| {
                matches!(at.key.as_str(), "rtpmap" | "fmtp" | "ptime" | "maxptime")
                    || at.key.starts_with("T38")
            });
            if is_t38(m) {
                m.attributes
                    .retain(|at| at.key != "rtpmap" && at.key != "fmtp");
            }
            m.attributes.push(Attribute {
                key: mirror(dir).into(),
                value: None,
            });
            m.bandwidth.clear();
        }
        a.anchor_to(addr, port);
        Ok(a)
    }

    /// An SDP offer of our own: PCMU, PCMA and telephone-event 101 on `addr`:`port`.
    pub fn our_offer(addr: IpAddr, port: u16) -> Sdp {
        let f = |pt, name: &str| Format {
            pt,
            name: name.into(),
            rate: 8000,
        };
        Sdp::offer_of(
            addr,
            port,
            &[f(0, "PCMU"), f(8, "PCMA"), f(101, "telephone-event")],
        )
    }

    /// An SDP offer of `formats` (20 ms packets, sendrecv) on `addr`:`port`.
    pub fn offer_of(addr: IpAddr, port: u16, formats: &[Format]) -> Sdp {
        let attr = |key: &str, value: Option<String>| Attribute {
            key: key.into(),
            value,
        };
        let mut attributes = Vec::new();
        for f in formats {
            attributes.push(attr(
                "rtpmap",
                Some(format!("{} {}/{}", f.pt, f.name, f.rate)),
            ));
            if f.is_telephone_event() {
                attributes.push(attr("fmtp", Some(format!("{} 0-16", f.pt))));
            }
        }
        attributes.push(attr("ptime", Some("20".into())));
        attributes.push(attr("sendrecv", None));
        let media = MediaDescription {
            media_name: MediaName {
                media: "audio".into(),
                port: RangedPort {
                    value: 0,
                    range: None,
                },
                protos: vec!["RTP".into(), "AVP".into()],
                formats: formats.iter().map(|f| f.pt.to_string()).collect(),
            },
            attributes,
            ..Default::default()
        };
        let mut sdp = Sdp {
            desc: SessionDescription {
                origin: Origin {
                    username: "voxedge".into(),
                    session_id: u64::from(rand::random::<u32>()),
                    session_version: 1,
                    network_type: "IN".into(),
                    ..Default::default()
                },
                session_name: "VoxEdge".into(),
                time_descriptions: vec![TimeDescription::default()],
                media_descriptions: vec![media],
                ..Default::default()
            },
        };
        // Addresses, port and `a=rtcp`.
        sdp.anchor_to(addr, port);
        sdp
    }

    /// Takes the session id of `previous` (our earlier SDP in this dialog) with its version
    /// one higher, as a changed answer must (RFC 3264 §8).
    pub fn follow_version(&mut self, previous: &Sdp) {
        self.desc.origin.session_id = previous.desc.origin.session_id;
        self.desc.origin.session_version = previous.desc.origin.session_version.wrapping_add(1);
    }

    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(self.desc.marshal())
    }
}

fn is_t38(m: &MediaDescription) -> bool {
    m.media_name.media.eq_ignore_ascii_case("image")
        && m.media_name
            .formats
            .iter()
            .any(|f| f.eq_ignore_ascii_case("t38"))
}

fn direction_of(attrs: &[Attribute]) -> Option<&'static str> {
    attrs.iter().find_map(|a| match a.key.as_str() {
        "sendrecv" => Some("sendrecv"),
        "sendonly" => Some("sendonly"),
        "recvonly" => Some("recvonly"),
        "inactive" => Some("inactive"),
        _ => None,
    })
}

/// The answerer's direction for an offered one (RFC 3264 §6.1).
fn mirror(offered: Option<&'static str>) -> &'static str {
    match offered {
        Some("sendonly") => "recvonly",
        Some("recvonly") => "sendonly",
        Some("inactive") => "inactive",
        _ => "sendrecv",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const VENDOR: &str = "v=0\r\no=Cisco 1 2 IN IP4 10.0.0.1\r\ns=SIP Call\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 8 18 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=X-sqn:0\r\na=X-cap: 1 audio RTP/AVP 100\r\n\
a=ptime:20\r\na=maxptime:40\r\nm=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";

    #[test]
    fn hold_and_inactive_expect_silence() {
        let base = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n";
        let audio = "m=audio 4000 RTP/AVP 0\r\n";
        let case = |session: &str, c: &str, media: &str| {
            let text = format!("{base}{session}{audio}{media}").replace("c=IN IP4 10.0.0.1", c);
            Sdp::parse(text.as_bytes()).unwrap().expects_silence()
        };
        let ip = "c=IN IP4 10.0.0.1";
        assert!(!case("", ip, ""), "no direction: sendrecv");
        assert!(!case("", ip, "a=sendrecv\r\n"));
        for d in ["sendonly", "recvonly", "inactive"] {
            assert!(case("", ip, &format!("a={d}\r\n")), "{d} in the stream");
            assert!(case(&format!("a={d}\r\n"), ip, ""), "{d} for the session");
        }
        assert!(
            !case("a=inactive\r\n", ip, "a=sendrecv\r\n"),
            "the stream's own wins"
        );
        assert!(case("", "c=IN IP4 0.0.0.0", ""), "RFC 2543 hold");
        let disabled = format!("{base}m=audio 0 RTP/AVP 0\r\n");
        assert!(Sdp::parse(disabled.as_bytes()).unwrap().expects_silence());
    }

    const T38: &str = "v=0\r\no=- 1 3 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=image 40000 udptl t38\r\na=T38FaxVersion:0\r\na=T38MaxBitRate:14400\r\na=T38FaxRateManagement:transferredTCF\r\n\
a=T38FaxUdpEC:t38UDPRedundancy\r\n";

    fn text(s: &Sdp) -> String {
        String::from_utf8(s.to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn reads_the_anchored_stream() {
        let s = Sdp::parse(VENDOR.as_bytes()).unwrap();
        assert_eq!(s.remote(), Some("10.0.0.1:4000".parse().unwrap()));
        let names: Vec<(u8, String, u32)> = s
            .formats()
            .into_iter()
            .map(|f| (f.pt, f.name, f.rate))
            .collect();
        assert_eq!(
            names,
            [
                (0, "PCMU".into(), 8000),
                (8, "PCMA".into(), 8000),
                (18, "G729".into(), 8000),
                (101, "telephone-event".into(), 8000)
            ]
        );
        assert_eq!(s.telephone_event(), Some(101));
        assert!(!s.is_fax());
    }

    #[test]
    fn a_rewrite_keeps_vendor_lines_and_disables_other_streams() {
        let mut s = Sdp::parse(VENDOR.as_bytes()).unwrap();
        s.anchor_to("192.0.2.7".parse().unwrap(), 30000);
        let t = text(&s);
        assert!(t.contains("o=Cisco 1 2 IN IP4 192.0.2.7\r\n"), "{t}");
        assert!(t.contains("c=IN IP4 192.0.2.7\r\n"), "{t}");
        assert!(t.contains("m=audio 30000 RTP/AVP 0 8 18 101\r\n"), "{t}");
        assert!(t.contains("a=rtcp:30001\r\n"), "{t}");
        assert!(
            t.contains("a=X-sqn:0\r\na=X-cap: 1 audio RTP/AVP 100\r\n"),
            "{t}"
        );
        assert!(t.contains("a=maxptime:40\r\n"), "{t}");
        assert!(t.contains("m=video 0 RTP/AVP 96\r\n"), "{t}");
        assert!(!t.contains("10.0.0.1"), "{t}");
        // The rewritten body parses again to the same stream.
        let again = Sdp::parse(t.as_bytes()).unwrap();
        assert_eq!(again.remote(), Some("192.0.2.7:30000".parse().unwrap()));
    }

    #[test]
    fn t38_is_anchored_with_its_attributes() {
        let mut s = Sdp::parse(T38.as_bytes()).unwrap();
        assert!(s.is_fax());
        assert_eq!(s.remote(), Some("10.0.0.1:40000".parse().unwrap()));
        s.anchor_to("192.0.2.7".parse().unwrap(), 30000);
        let t = text(&s);
        assert!(t.contains("m=image 30000 udptl t38\r\n"), "{t}");
        assert!(
            t.contains("a=T38FaxRateManagement:transferredTCF\r\n"),
            "{t}"
        );
        assert!(!t.contains("a=rtcp"), "{t}");
        // A codec policy does not apply to fax.
        s.restrict(&CodecPolicy::new(&["PCMU"])).unwrap();
    }

    /// A re-INVITE to fax disables audio and adds T.38 (ITU-T T.38 Annex D): the enabled T.38
    /// stream is the one anchored; back to audio, audio is again.
    #[test]
    fn a_switch_to_fax_anchors_the_enabled_t38_stream() {
        let to_fax = "v=0\r\no=- 1 3 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 0 RTP/AVP 0\r\nm=image 40000 udptl t38\r\na=T38FaxVersion:0\r\n";
        let mut s = Sdp::parse(to_fax.as_bytes()).unwrap();
        assert!(s.is_fax());
        assert_eq!(s.remote(), Some("10.0.0.1:40000".parse().unwrap()));
        s.anchor_to("192.0.2.7".parse().unwrap(), 30000);
        let t = text(&s);
        assert!(t.contains("m=audio 0 RTP/AVP 0\r\n"), "{t}");
        assert!(t.contains("m=image 30000 udptl t38\r\n"), "{t}");
        let back = "v=0\r\no=- 1 4 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\nm=image 0 udptl t38\r\n";
        let s = Sdp::parse(back.as_bytes()).unwrap();
        assert!(!s.is_fax());
        assert_eq!(s.remote(), Some("10.0.0.1:4000".parse().unwrap()));
        // Everything disabled: the audio stream stands for the call (held, no remote).
        let off = "v=0\r\no=- 1 5 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 0 RTP/AVP 0\r\nm=image 0 udptl t38\r\n";
        let s = Sdp::parse(off.as_bytes()).unwrap();
        assert!(!s.is_fax());
        assert_eq!(s.remote(), None);
    }

    #[test]
    fn what_trunks_send_is_accepted() {
        // LF endings, trailing blanks, c= after t=, no t= at all, IPv6, explicit a=rtcp.
        for body in [
            "v=0\no=- 1 2 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n",
            "v=0 \r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1 \r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
            "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n",
            "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n",
            "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\na=sendrecv\r\nm=audio 4000 RTP/AVP 0\r\n",
            "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=ptime:20\r\nc=IN IP4 10.0.0.1\r\n",
        ] {
            let s = Sdp::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body:?}"));
            assert_eq!(s.remote(), Some("10.0.0.1:4000".parse().unwrap()), "{body:?}");
        }
        let v6 = "v=0\r\no=- 1 2 IN IP6 ::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\na=rtcp:4001 IN IP6 2001:db8::1\r\n";
        let mut s = Sdp::parse(v6.as_bytes()).unwrap();
        assert_eq!(s.remote(), Some("[2001:db8::1]:4000".parse().unwrap()));
        s.anchor_to("2001:db8::9".parse().unwrap(), 30000);
        assert!(text(&s).contains("a=rtcp:30001 IN IP6 2001:db8::9\r\n"));
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert_eq!(Sdp::parse(&[0xff, 0xfe]).unwrap_err(), SdpError::NotText);
        assert_eq!(
            Sdp::parse(&vec![b'a'; SDP_MAX_BYTES + 1]).unwrap_err(),
            SdpError::TooLarge
        );
        assert!(matches!(
            Sdp::parse(b"hello").unwrap_err(),
            SdpError::Syntax(_)
        ));
        let video_only = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=video 4000 RTP/AVP 96\r\n";
        assert_eq!(
            Sdp::parse(video_only.as_bytes()).unwrap_err(),
            SdpError::NoMedia
        );
        let mut many =
            String::from("v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n");
        for _ in 0..=MEDIA_MAX {
            many.push_str("m=audio 4000 RTP/AVP 0\r\n");
        }
        assert_eq!(Sdp::parse(many.as_bytes()).unwrap_err(), SdpError::TooMany);
    }

    #[test]
    fn held_and_rejected_streams_have_no_remote() {
        let held = VENDOR.replace("c=IN IP4 10.0.0.1", "c=IN IP4 0.0.0.0");
        assert_eq!(Sdp::parse(held.as_bytes()).unwrap().remote(), None);
        let rejected = VENDOR.replace("m=audio 4000", "m=audio 0");
        assert_eq!(Sdp::parse(rejected.as_bytes()).unwrap().remote(), None);
    }

    #[test]
    fn a_policy_restricts_the_offer_and_keeps_telephone_event() {
        let mut s = Sdp::parse(VENDOR.as_bytes()).unwrap();
        s.restrict(&CodecPolicy::new(&["pcma", "G729"])).unwrap();
        let t = text(&s);
        assert!(t.contains("m=audio 4000 RTP/AVP 8 18 101\r\n"), "{t}");
        assert!(!t.contains("a=rtpmap:0 "), "{t}");
        assert!(t.contains("a=fmtp:18 annexb=no\r\n"), "{t}");
        let mut s = Sdp::parse(VENDOR.as_bytes()).unwrap();
        assert_eq!(
            s.restrict(&CodecPolicy::new(&["opus"])).unwrap_err(),
            SdpError::NoCommonCodec
        );
        // Unchanged after the refusal; an open policy changes nothing.
        s.restrict(&CodecPolicy::default()).unwrap();
        assert_eq!(s.formats().len(), 4);
    }

    #[test]
    fn an_answer_is_cut_to_the_offer() {
        let offer = Sdp::parse(
            b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 8 96 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n",
        )
        .unwrap();
        // The answerer uses its own dynamic numbers and adds a codec never offered.
        let mut answer = Sdp::parse(
            b"v=0\r\no=- 2 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
m=audio 5000 RTP/AVP 111 0 100\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n\
a=rtpmap:100 telephone-event/8000\r\n",
        )
        .unwrap();
        answer.answer_within(&offer).unwrap();
        let pts: Vec<u8> = answer.formats().iter().map(|f| f.pt).collect();
        assert_eq!(pts, [111, 100]);
        assert!(text(&answer).contains("a=fmtp:111 useinbandfec=1\r\n"));
        let mut wrong = Sdp::parse(
            b"v=0\r\no=- 2 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0 18\r\n",
        )
        .unwrap();
        assert_eq!(
            wrong.answer_within(&offer).unwrap_err(),
            SdpError::NoCommonCodec
        );
        // A rejected stream (port 0) is a valid answer with no codec in common.
        let mut rejected = Sdp::parse(
            b"v=0\r\no=- 2 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n",
        )
        .unwrap();
        rejected.answer_within(&offer).unwrap();
    }

    #[test]
    fn our_answer_mirrors_the_offer() {
        let offer = Sdp::parse(
            VENDOR
                .replace("a=ptime:20", "a=ptime:30\r\na=sendonly")
                .as_bytes(),
        )
        .unwrap();
        let a = Sdp::answer_to(&offer, "192.0.2.7".parse().unwrap(), 30000, |f| {
            f.pt == 8 || f.is_telephone_event()
        })
        .unwrap();
        let t = text(&a);
        assert!(t.contains("m=audio 30000 RTP/AVP 8 101\r\n"), "{t}");
        assert!(t.contains("a=ptime:30\r\n"), "{t}");
        assert!(t.contains("a=recvonly\r\n"), "{t}");
        assert!(t.contains("a=rtcp:30001\r\n"), "{t}");
        assert!(t.contains("m=video 0 RTP/AVP 96\r\n"), "{t}");
        assert!(!t.contains("X-sqn"), "{t}");
        assert!(t.starts_with("v=0\r\no=voxedge "), "{t}");
        assert_eq!(
            Sdp::answer_to(&offer, "192.0.2.7".parse().unwrap(), 30000, |f| f.pt == 9).unwrap_err(),
            SdpError::NoCommonCodec
        );
        let ours =
            Sdp::parse(&Sdp::our_offer("192.0.2.7".parse().unwrap(), 30000).to_bytes()).unwrap();
        assert_eq!(ours.telephone_event(), Some(101));
        assert_eq!(ours.remote(), Some("192.0.2.7:30000".parse().unwrap()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod props {
    use proptest::prelude::*;

    use super::*;

    const BASE: &str = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
a=rtcp:4001 IN IP4 10.0.0.1\r\na=ptime:20\r\nm=image 0 udptl t38\r\na=T38FaxVersion:0\r\n";

    fn cases() -> u32 {
        std::env::var("VOXEDGE_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000)
    }

    /// Whatever parses can be rewritten, filtered and answered, and what that writes parses.
    fn exercise(body: &[u8]) {
        let Ok(mut s) = Sdp::parse(body) else {
            return;
        };
        let _ = (s.remote(), s.formats(), s.telephone_event(), s.is_fax());
        let offer = s.clone();
        let _ = s.restrict(&CodecPolicy::new(&["PCMA"]));
        let _ = s.answer_within(&offer);
        s.anchor_to("192.0.2.1".parse().unwrap(), 30000);
        let again = Sdp::parse(&s.to_bytes());
        assert!(
            again.is_ok(),
            "{again:?}: {:?}",
            String::from_utf8_lossy(&s.to_bytes())
        );
        if let Ok(a) = Sdp::answer_to(&offer, "192.0.2.1".parse().unwrap(), 30000, |_| true) {
            assert!(Sdp::parse(&a.to_bytes()).is_ok());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            exercise(&body);
        }

        #[test]
        fn mutated_bodies_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8)
        ) {
            let mut body = BASE.as_bytes().to_vec();
            for (at, op, byte) in edits {
                let i = at.index(body.len().max(1)).min(body.len());
                match op {
                    0 if i < body.len() => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ if i < body.len() => { body.remove(i); }
                    _ => {}
                }
            }
            exercise(&body);
        }

        #[test]
        fn mutated_lines_never_panic(line in "[a-z]=[ -~]{0,40}", at in 0usize..12) {
            let mut lines: Vec<&str> = BASE.lines().collect();
            lines.insert(at.min(lines.len()), &line);
            exercise(lines.join("\r\n").as_bytes());
        }
    }
}
