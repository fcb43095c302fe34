//! What carriers send, as ADR 0005's evidence: compact headers, folded lines, `Via :` spacing,
//! IPv6 hosts and references, several values per line, `tel:` URIs, P-Asserted-Identity /
//! Diversion / Reason, multipart bodies, messages over TCP split across reads and larger than a
//! datagram; plus limits, and random and mutated input that must never panic.

use ezk_sip_types::header::typed::{CSeq, CallID, Contact, FromTo, Routing, Via};
use ezk_sip_types::host::Host;
use ezk_sip_types::Name;
use proptest::prelude::*;
use voxedge_sip_core::uri::{header_param, header_uri};
use voxedge_sip_core::{AnyUri, Framer, Limits, ParseError, SipMessage, StartLine};

fn parse(s: &str) -> SipMessage {
    SipMessage::parse(s.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@10.0.0.1\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@10.0.0.1>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

#[test]
fn a_plain_invite() {
    let m = parse(INVITE);
    assert!(m.is_request());
    assert_eq!(
        m.method().map(ToString::to_string).as_deref(),
        Some("INVITE")
    );
    let via: Vec<Via> = m.headers.get(Name::VIA).expect("via");
    assert_eq!(
        via[0].params.get_val("branch").map(|b| b.as_str()),
        Some("z9hG4bK776asdhds")
    );
    let from: FromTo = m.headers.get(Name::FROM).expect("from");
    assert_eq!(from.tag.as_deref(), Some("1928301774"));
    let cseq: CSeq = m.headers.get(Name::CSEQ).expect("cseq");
    assert_eq!(cseq.cseq, 314159);
    assert_eq!(&m.body[..], b"v=0\n");
    assert_eq!(m.sdp().as_deref(), Some(&b"v=0\n"[..]));
}

#[test]
fn compact_headers() {
    let m = parse(
        "INVITE sip:bob@example.com SIP/2.0\r\nv: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
f: <sip:alice@example.com>;tag=a\r\nt: <sip:bob@example.com>\r\ni: abc@10.0.0.1\r\n\
CSeq: 1 INVITE\r\nm: <sip:alice@10.0.0.1>\r\nc: application/sdp\r\nl: 3\r\n\r\nv=0",
    );
    assert!(m.headers.get::<Vec<Via>>(Name::VIA).is_ok());
    assert_eq!(
        m.headers.get::<CallID>(Name::CALL_ID).expect("i:").0,
        "abc@10.0.0.1"
    );
    assert_eq!(
        m.headers
            .get::<Vec<Contact>>(Name::CONTACT)
            .expect("m:")
            .len(),
        1
    );
    assert_eq!(m.header("Call-ID"), Some("abc@10.0.0.1"));
    assert_eq!(m.header("call-id"), Some("abc@10.0.0.1"));
    assert_eq!(m.header("i"), Some("abc@10.0.0.1"));
    assert_eq!(m.header("I"), Some("abc@10.0.0.1"));
    assert_eq!(m.header("Content-Type"), Some("application/sdp"));
    assert_eq!(m.header("Reason"), None);
    assert_eq!(m.header("r"), None);
    // Compact and full lines are one header whichever way it is asked for.
    let two_vias = parse(
        "OPTIONS sip:bob@example.com SIP/2.0\r\nv: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2\r\n\
Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nf: <sip:a@x>;tag=a\r\nt: <sip:b@x>\r\ni: c\r\n\
CSeq: 1 OPTIONS\r\nX-Custom: 1\r\nl: 0\r\n\r\n",
    );
    for name in ["Via", "via", "v", "V"] {
        assert_eq!(two_vias.header_all(name).len(), 2, "{name}");
    }
    assert_eq!(two_vias.header_all("x-custom"), vec!["1"]);
    let printed = String::from_utf8(two_vias.to_bytes()).expect("utf8");
    assert_eq!(printed.matches("Content-Length").count(), 1, "{printed}");
    assert!(!printed.contains("\r\nl:"), "{printed}");
    assert_eq!(&m.body[..], b"v=0");
    assert!(m.sdp().is_some(), "c: is Content-Type");
}

#[test]
fn folded_lines_and_odd_spacing() {
    let m = parse(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia   :   SIP/2.0/UDP 10.0.0.1:5060\r\n ;branch=z9hG4bK2\r\n\
From: <sip:alice@example.com>\r\n\t;tag=a\r\nTo: <sip:bob@example.com>\r\nCall-ID: x\r\n\
CSeq: 1 INVITE\r\nSubject: a\r\n  long\r\n\tsubject\r\nContent-Length: 0\r\n\r\n",
    );
    let via: Vec<Via> = m.headers.get(Name::VIA).expect("folded via");
    assert_eq!(
        via[0].params.get_val("branch").map(|b| b.as_str()),
        Some("z9hG4bK2")
    );
    assert_eq!(
        m.headers
            .get::<FromTo>(Name::FROM)
            .expect("from")
            .tag
            .as_deref(),
        Some("a")
    );
    assert_eq!(m.header("Subject"), Some("a long subject"));
}

#[test]
fn ipv6_hosts_and_references() {
    let m = parse(
        "INVITE sip:bob@[2001:db8::1]:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::2]:5060;branch=z9hG4bK4;received=2001:db8::9\r\n\
From: <sip:alice@[2001:db8::2]>;tag=a\r\nTo: <sip:bob@[2001:db8::1]>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:alice@[2001:db8::2]:5060;transport=tcp>\r\nContent-Length: 0\r\n\r\n",
    );
    let via: Vec<Via> = m.headers.get(Name::VIA).expect("via");
    assert!(matches!(via[0].sent_by.host, Host::IP6(_)));
    assert_eq!(via[0].sent_by.port, Some(5060));
    let StartLine::Request {
        uri: AnyUri::Sip(u),
        ..
    } = &m.start
    else {
        panic!("sip request uri");
    };
    assert!(matches!(u.host_port.host, Host::IP6(_)));
}

#[test]
fn several_values_per_line() {
    let m = parse(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK5, SIP/2.0/TCP b.example.com:5080;branch=z9hG4bK6\r\n\
Via: SIP/2.0/UDP c.example.com;branch=z9hG4bK7\r\n\
From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\
Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(m.headers.get::<Vec<Via>>(Name::VIA).expect("via").len(), 3);
    assert_eq!(
        m.headers
            .get::<Vec<Routing>>(Name::RECORD_ROUTE)
            .expect("rr")
            .len(),
        2
    );
}

#[test]
fn tel_uris_and_identity_headers() {
    let m = parse(
        "INVITE tel:+1-555-123-4567;phone-context=example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK7\r\n\
From: <tel:+15550000000>;tag=a\r\nTo: <tel:+15551234567>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\
P-Asserted-Identity: \"Alice\" <sip:+15550000000@example.com;user=phone>\r\n\
P-Asserted-Identity: <tel:+15550000000>\r\n\
Diversion: <sip:+15559999999@example.com>;reason=unconditional;counter=1\r\n\
Reason: Q.850;cause=16;text=\"Normal call clearing\"\r\nContent-Length: 0\r\n\r\n",
    );
    let StartLine::Request { uri, .. } = &m.start else {
        panic!("request")
    };
    assert_eq!(uri.user().as_deref(), Some("+15551234567"));
    let from = m.header("From").expect("from");
    assert_eq!(header_uri(from), Some("tel:+15550000000"));
    assert_eq!(header_param(from, "tag"), Some("a"));
    let pai = m.header_all("P-Asserted-Identity");
    assert_eq!(pai.len(), 2);
    assert_eq!(
        AnyUri::parse(header_uri(pai[1]).expect("uri"))
            .expect("tel")
            .user()
            .as_deref(),
        Some("+15550000000")
    );
    let div = m.header("Diversion").expect("diversion");
    assert_eq!(header_param(div, "reason"), Some("unconditional"));
    assert_eq!(
        header_param(m.header("Reason").expect("reason"), "cause"),
        Some("16")
    );
    // Printed back, the tel: URI survives.
    let again = SipMessage::parse(&m.to_bytes(), &Limits::default()).expect("reparse");
    assert!(matches!(
        again.start,
        StartLine::Request {
            uri: AnyUri::Tel(_),
            ..
        }
    ));
}

#[test]
fn multipart_body_with_sdp() {
    let body = "--unique-boundary-1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\no=- 1 1 IN IP4 10.0.0.1\r\n\r\n--unique-boundary-1\r\nContent-Type: application/isup; version=itu-t92+\r\n\r\n\u{1}\u{2}\r\n--unique-boundary-1--\r\n";
    let msg = format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK9\r\nFrom: <sip:a@example.com>;tag=a\r\n\
To: <sip:bob@example.com>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=unique-boundary-1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let m = parse(&msg);
    let sdp = m.sdp().expect("sdp part");
    assert_eq!(&sdp[..], b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\n");
}

#[test]
fn responses() {
    let m = parse("SIP/2.0 183 Session Progress\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(m.status(), Some(183));
    assert!(matches!(&m.start, StartLine::Response { reason, .. } if reason == "Session Progress"));
}

#[test]
fn stream_framing_across_reads_and_beyond_a_datagram() {
    let big_body = "a=x-padding:".to_string() + &"y".repeat(70_000) + "\r\n";
    let big = format!(
        "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n\
To: <sip:b@x>\r\nCall-ID: big\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{big_body}",
        big_body.len()
    );
    let stream = format!("\r\n\r\n{INVITE}{big}\r\n\r\n{INVITE}");
    let limits = Limits {
        max_message_bytes: 128 * 1024,
        ..Limits::default()
    };
    let mut f = Framer::new(limits);
    let mut got = Vec::new();
    for chunk in stream.as_bytes().chunks(777) {
        f.push(chunk).expect("within limits");
        while let Some(m) = f.next_message() {
            got.push(m.expect("valid"));
        }
    }
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].body.len(), big_body.len());
    assert_eq!(f.buffered(), 0);
}

#[test]
fn limits_and_errors() {
    let l = Limits::default();
    assert_eq!(
        SipMessage::parse(&vec![b'A'; 70_000], &l).err(),
        Some(ParseError::TooLarge(65_535))
    );
    let many = format!("OPTIONS sip:x SIP/2.0\r\n{}\r\n", "X-A: 1\r\n".repeat(300));
    assert_eq!(
        SipMessage::parse(many.as_bytes(), &l).err(),
        Some(ParseError::TooManyHeaders(256))
    );
    let short = INVITE.replace("Content-Length: 4", "Content-Length: 40");
    assert!(matches!(
        SipMessage::parse(short.as_bytes(), &l),
        Err(ParseError::BodyTruncated { .. })
    ));
    let conflicting = INVITE.replace("Content-Length: 4\r\n", "Content-Length: 4\r\nl: 3\r\n");
    assert_eq!(
        SipMessage::parse(conflicting.as_bytes(), &l).err(),
        Some(ParseError::BadContentLength)
    );
    for bad in [
        "",
        "\r\n\r\n",
        "INVITE\r\n\r\n",
        "INVITE sip:x SIP/3.0\r\n\r\n",
        "SIP/2.0 99 Too Low\r\n\r\n",
        "IN VITE sip:x SIP/2.0\r\n\r\n",
        "INVITE mailto:x@y SIP/2.0\r\n\r\n",
        "INVITE sip:x SIP/2.0\r\nno colon here\r\n\r\n",
    ] {
        assert!(SipMessage::parse(bad.as_bytes(), &l).is_err(), "{bad:?}");
    }
    // A stream without Content-Length cannot be framed.
    let mut f = Framer::new(l);
    f.push(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n")
        .expect("push");
    assert_eq!(
        f.next_message().map(|r| r.err()),
        Some(Some(ParseError::MissingContentLength))
    );
    // A stream that never ends its head is cut off.
    let mut f = Framer::new(Limits {
        max_message_bytes: 1000,
        ..l
    });
    assert!(f.push(&[b'a'; 1500]).is_ok());
    assert_eq!(
        f.next_message().map(|r| r.err()),
        Some(Some(ParseError::TooLarge(1000)))
    );
    assert!(f.push(&[b'a'; 1000]).is_err());
}

#[test]
fn valid_messages_round_trip() {
    for text in [SEEDS[0], SEEDS[1], SEEDS[3]] {
        let m = parse(text);
        let bytes = m.to_bytes();
        let again = SipMessage::parse(&bytes, &Limits::default()).expect("reparse");
        assert_eq!(again.to_bytes(), bytes);
        assert_eq!(again.body, m.body);
    }
}

/// Seeds for mutation: the shapes carriers send.
const SEEDS: [&str; 4] = [
    INVITE,
    "INVITE tel:+15551234567 SIP/2.0\r\nv: SIP/2.0/UDP [2001:db8::2]:5060;branch=z9hG4bK7, SIP/2.0/TCP h\r\n ;branch=z9hG4bK8\r\nf: <tel:+15550000000>;tag=a\r\nt: <sip:b@[2001:db8::1]>\r\ni: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    "SIP/2.0 200 OK\r\nVia : SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\nContent-Type: multipart/mixed;boundary=b1\r\nContent-Length: 60\r\n\r\n--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--b1--\r\n          ",
    "BYE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK8\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>;tag=b\r\nCall-ID: x\r\nCSeq: 2 BYE\r\nReason: Q.850;cause=16;text=\"Normal\"\r\nContent-Length: 0\r\n\r\n",
];

fn cases() -> u32 {
    std::env::var("VOXEDGE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = SipMessage::parse(&data, &Limits::default());
        let mut f = Framer::new(Limits::default());
        let _ = f.push(&data);
        while let Some(r) = f.next_message() {
            if r.is_err() { break; }
        }
    }

    #[test]
    fn mutated_messages_never_panic_and_valid_ones_round_trip(
        seed in 0usize..SEEDS.len(),
        edits in proptest::collection::vec((0usize..600, any::<u8>(), 0u8..3), 0..8),
        cut in 0usize..400,
    ) {
        let mut data = SEEDS[seed].as_bytes().to_vec();
        for (at, b, how) in edits {
            let at = at % data.len();
            match how {
                0 => data[at] = b,
                1 => data.insert(at, b),
                _ => { data.remove(at); }
            }
            if data.is_empty() { data.push(b); }
        }
        let data = &data[..data.len() - cut.min(data.len())];
        if let Ok(m) = SipMessage::parse(data, &Limits::default()) {
            let bytes = m.to_bytes();
            let again = SipMessage::parse(&bytes, &Limits::default());
            prop_assert!(again.is_ok(), "printed form of a parsed message must parse");
            let again = again.unwrap_or_else(|_| unreachable!());
            prop_assert_eq!(again.to_bytes(), bytes);
        }
    }
}

#[test]
fn headers_inserted_as_constants_are_found_by_name() {
    let mut m = parse(INVITE);
    m.headers.remove(&Name::CSEQ);
    m.headers
        .insert(Name::CSEQ, bytesstr::BytesStr::from_static("2 INVITE"));
    assert_eq!(m.header("CSeq"), Some("2 INVITE"));
    assert_eq!(m.header("cseq"), Some("2 INVITE"));
    assert_eq!(
        m.header("i"),
        Some("a84b4c76e66710@10.0.0.1"),
        "compact form"
    );
}
