//! SDP as an ng media relay sees it: where a party receives audio, and the same SDP rewritten
//! to point at the relay — the connection address and the audio port replaced, `a=rtcp` set,
//! ICE and rtcp-mux lines removed (the relay does neither), codecs stripped on request, every
//! other line kept as it came.

use std::net::{IpAddr, SocketAddr};

/// What the relay needs from an SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// Address and port of the first audio stream (`None`: held, 0.0.0.0, or port 0).
    pub remote: Option<SocketAddr>,
    /// Explicit RTCP address (`a=rtcp:`), when given.
    pub rtcp: Option<SocketAddr>,
    /// The audio payload types offered, in order.
    pub payload_types: Vec<String>,
    /// `RTP/AVP`, `RTP/SAVP`, …
    pub protocol: String,
    /// The payload type of `telephone-event/8000` (RFC 4733) among `payload_types`.
    pub telephone_event: Option<u8>,
}

/// Why an SDP body cannot be relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is not UTF-8 text")]
    NotText,
    #[error("SDP has no audio stream (m=audio)")]
    NoAudio,
    #[error("SDP audio line is malformed")]
    BadMedia,
}

/// Reads the first audio stream of an SDP body.
///
/// # Errors
/// No text, no audio line, or a malformed one.
pub fn parse(sdp: &[u8]) -> Result<Media, SdpError> {
    let text = std::str::from_utf8(sdp).map_err(|_| SdpError::NotText)?;
    let mut session_addr: Option<IpAddr> = None;
    let mut media_addr: Option<IpAddr> = None;
    let mut audio: Option<(u16, String, Vec<String>)> = None;
    let mut rtcp = None;
    let mut events: Vec<u8> = Vec::new();
    let mut in_audio = false;
    let mut seen_media = false;
    for line in text.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            seen_media = true;
            in_audio = false;
            if audio.is_none() {
                if let Some(rest) = m.strip_prefix("audio ") {
                    let mut f = rest.split_whitespace();
                    let port = f
                        .next()
                        .and_then(|p| p.split('/').next()?.parse::<u16>().ok())
                        .ok_or(SdpError::BadMedia)?;
                    let proto = f.next().ok_or(SdpError::BadMedia)?.to_string();
                    let pts = f.take(64).map(str::to_string).collect();
                    audio = Some((port, proto, pts));
                    in_audio = true;
                }
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let a = c
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.split('/').next()?.parse::<IpAddr>().ok());
            if !seen_media {
                session_addr = a;
            } else if in_audio {
                media_addr = a;
            }
        } else if let (true, Some(r)) = (in_audio, line.strip_prefix("a=rtpmap:")) {
            let mut f = r.split_whitespace();
            if let (Some(pt), Some(enc)) = (f.next(), f.next()) {
                let mut e = enc.split('/');
                let (name, rate) = (e.next().unwrap_or(""), e.next().unwrap_or(""));
                if name.eq_ignore_ascii_case("telephone-event") && rate == "8000" {
                    events.extend(pt.parse::<u8>().ok().filter(|p| *p < 128));
                }
            }
        } else if let (true, Some(r)) = (in_audio, line.strip_prefix("a=rtcp:")) {
            let mut f = r.split_whitespace();
            let port = f.next().and_then(|p| p.parse::<u16>().ok());
            let addr = f.nth(2).and_then(|a| a.parse::<IpAddr>().ok());
            rtcp = port.map(|p| (p, addr));
        }
    }
    let (port, protocol, payload_types) = audio.ok_or(SdpError::NoAudio)?;
    let addr = media_addr.or(session_addr);
    let remote = addr
        .filter(|a| !a.is_unspecified() && port != 0)
        .map(|a| SocketAddr::new(a, port));
    let rtcp = match (rtcp, addr) {
        (Some((p, Some(a))), _) => Some(SocketAddr::new(a, p)),
        (Some((p, None)), Some(a)) if !a.is_unspecified() && p != 0 => Some(SocketAddr::new(a, p)),
        _ => None,
    };
    let telephone_event = payload_types
        .iter()
        .filter_map(|p| p.parse::<u8>().ok())
        .find(|p| events.contains(p));
    Ok(Media {
        remote,
        rtcp,
        payload_types,
        protocol,
        telephone_event,
    })
}

/// How to rewrite.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Replace the `o=` address too (`replace: origin`).
    pub origin: bool,
    /// Payload types to remove (codec strip/mask), by number or encoding name.
    pub strip: Vec<String>,
}

/// The SDP with the relay's address and audio port. Lines of other media streams get port 0
/// (this relay carries the first audio stream only).
pub fn rewrite(sdp: &[u8], ours: IpAddr, port: u16, how: &Rewrite) -> Vec<u8> {
    let fam = if ours.is_ipv4() { "IP4" } else { "IP6" };
    let text = String::from_utf8_lossy(sdp);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    // Payload types to drop: numbers given, or names matched through a=rtpmap.
    let mut strip_all = how.strip.iter().any(|s| s.eq_ignore_ascii_case("all"));
    let mut dropped: Vec<String> = Vec::new();
    for l in &lines {
        if let Some(r) = l.strip_prefix("a=rtpmap:") {
            let mut f = r.splitn(2, ' ');
            let (pt, enc) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
            let name = enc.split('/').next().unwrap_or("");
            if how
                .strip
                .iter()
                .any(|s| s == pt || s.eq_ignore_ascii_case(name))
            {
                dropped.push(pt.to_string());
            }
        }
    }
    for s in &how.strip {
        if s.bytes().all(|b| b.is_ascii_digit()) && !dropped.contains(s) {
            dropped.push(s.clone());
        }
    }
    let mut out = String::with_capacity(text.len() + 64);
    let mut audio_seen = false;
    let mut in_first_audio = false;
    let mut rtcp_written = false;
    let mut push = |s: &str| {
        out.push_str(s);
        out.push_str("\r\n");
    };
    for l in lines {
        if l.is_empty() {
            continue;
        }
        if let Some(m) = l.strip_prefix("m=") {
            if in_first_audio && !rtcp_written {
                push(&format!("a=rtcp:{}", port.wrapping_add(1)));
                rtcp_written = true;
            }
            in_first_audio = false;
            let mut f = m.split_whitespace();
            let kind = f.next().unwrap_or("");
            let _port = f.next();
            let proto = f.next().unwrap_or("RTP/AVP");
            let pts: Vec<&str> = f.collect();
            if kind == "audio" && !audio_seen {
                audio_seen = true;
                in_first_audio = true;
                let kept: Vec<&str> = pts
                    .iter()
                    .copied()
                    .filter(|p| !strip_all && !dropped.iter().any(|d| d == p))
                    .collect();
                // Stripping every codec would leave an unusable offer: nothing is stripped.
                let kept = if kept.is_empty() {
                    dropped.clear();
                    strip_all = false;
                    pts.clone()
                } else {
                    kept
                };
                push(&format!("m=audio {port} {proto} {}", kept.join(" ")));
            } else {
                push(&format!("m={kind} 0 {proto} {}", pts.join(" ")));
            }
            continue;
        }
        if let Some(c) = l.strip_prefix("c=") {
            // A held stream (0.0.0.0) stays held; every other address becomes ours.
            let held = c
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_some_and(|a| a.is_unspecified());
            if held {
                push(l);
            } else {
                push(&format!("c=IN {fam} {ours}"));
            }
            continue;
        }
        if let Some(o) = l.strip_prefix("o=") {
            let f: Vec<&str> = o.split_whitespace().collect();
            if how.origin && f.len() >= 6 {
                push(&format!("o={} {} {} IN {fam} {ours}", f[0], f[1], f[2]));
            } else {
                push(l);
            }
            continue;
        }
        let drop_line = l.starts_with("a=rtcp-mux")
            || l.starts_with("a=candidate")
            || l.starts_with("a=ice-")
            || l.starts_with("a=end-of-candidates")
            || l.starts_with("a=remote-candidates")
            || (in_first_audio && l.starts_with("a=rtcp:"));
        if drop_line {
            continue;
        }
        if in_first_audio {
            let pt_of = |prefix: &str| l.strip_prefix(prefix).and_then(|r| r.split(' ').next());
            if let Some(pt) = pt_of("a=rtpmap:").or_else(|| pt_of("a=fmtp:")) {
                if !strip_all && dropped.iter().any(|d| d == pt) {
                    continue;
                }
            }
        }
        push(l);
    }
    if in_first_audio && !rtcp_written {
        push(&format!("a=rtcp:{}", port.wrapping_add(1)));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\na=rtcp-mux\r\na=candidate:1 1 UDP 1 198.51.100.1 49170 typ host\r\na=sendrecv\r\n\
m=video 51372 RTP/AVP 99\r\na=rtpmap:99 H264/90000\r\n";

    #[test]
    fn parses_the_audio_stream() {
        let m = parse(OFFER.as_bytes()).expect("parses");
        assert_eq!(m.remote, Some("198.51.100.1:49170".parse().expect("addr")));
        assert_eq!(m.payload_types, ["0", "8", "101"]);
        assert_eq!(m.protocol, "RTP/AVP");
        assert_eq!(m.telephone_event, Some(101));
        let held = OFFER.replace("c=IN IP4 198.51.100.1", "c=IN IP4 0.0.0.0");
        assert_eq!(parse(held.as_bytes()).expect("parses").remote, None);
        assert_eq!(
            parse(b"v=0\r\nm=video 1 RTP/AVP 99\r\n"),
            Err(SdpError::NoAudio)
        );
        assert_eq!(parse(b"m=audio x RTP/AVP 0\r\n"), Err(SdpError::BadMedia));
        assert_eq!(parse(&[0xff, 0xfe]), Err(SdpError::NotText));
    }

    #[test]
    fn rewrites_address_port_rtcp_and_strips() {
        let ours: IpAddr = "203.0.113.5".parse().expect("ip");
        let out = rewrite(
            OFFER.as_bytes(),
            ours,
            30000,
            &Rewrite {
                origin: true,
                strip: vec!["PCMA".into()],
            },
        );
        let s = String::from_utf8(out).expect("utf8");
        assert!(
            s.contains("o=alice 2890844526 2890844526 IN IP4 203.0.113.5\r\n"),
            "{s}"
        );
        assert!(s.contains("c=IN IP4 203.0.113.5\r\n"));
        assert!(!s.contains("198.51.100.1"), "{s}");
        assert!(s.contains("m=audio 30000 RTP/AVP 0 101\r\n"), "{s}");
        assert!(!s.contains("a=rtpmap:8"));
        assert!(s.contains("a=fmtp:101 0-16"));
        assert!(s.contains("a=rtcp:30001\r\n"));
        assert!(!s.contains("rtcp-mux") && !s.contains("candidate"));
        assert!(
            s.contains("m=video 0 RTP/AVP 99\r\n"),
            "other streams are refused: {s}"
        );
        let again = parse(s.as_bytes()).expect("the rewrite parses");
        assert_eq!(again.remote, Some(SocketAddr::new(ours, 30000)));
    }
}
