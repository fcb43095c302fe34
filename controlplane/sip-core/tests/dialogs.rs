//! Dialogs (RFC 3261 §12): both sides, route sets, CSeq rules, target refresh.

use bytesstr::BytesStr;
use ezk_sip_types::{Method, Name};
use voxedge_sip_core::dialog::{
    request_dialog_id, response_dialog_id, Dialog, DialogError, DialogState,
};
use voxedge_sip_core::transaction::build_response;
use voxedge_sip_core::{Limits, SipMessage};

fn parse(s: &str) -> SipMessage {
    SipMessage::parse(s.as_bytes(), &Limits::default()).expect("valid")
}

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\r\n\
Content-Length: 0\r\n\r\n";

fn ok_from_bob(invite: &SipMessage) -> SipMessage {
    let mut r = build_response(invite, 200, "OK", Some("a6c85cf"));
    r.headers
        .insert(Name::CONTACT, BytesStr::from_static("<sip:bob@192.0.2.4>"));
    for rr in invite.header_all("Record-Route") {
        r.headers
            .insert(Name::RECORD_ROUTE, BytesStr::from(rr.to_string()));
    }
    parse(std::str::from_utf8(&r.to_bytes()).expect("utf8"))
}

#[test]
fn uas_dialog_routes_in_record_route_order_and_counts_cseq() {
    let inv = parse(INVITE);
    let mut d = Dialog::uas(&inv, "a6c85cf", DialogState::Confirmed).expect("uas");
    assert_eq!(d.id.remote_tag, "1928301774");
    assert_eq!(d.remote_target, "sip:alice@pc33.atlanta.example.com");
    assert_eq!(
        d.route_set,
        vec!["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    );
    let bye = d
        .request(Method::BYE, "UDP 192.0.2.4:5060", "z9hG4bKbye1", None, None)
        .expect("bye");
    let bye = parse(std::str::from_utf8(&bye.to_bytes()).expect("utf8"));
    assert!(bye
        .to_bytes()
        .starts_with(b"BYE sip:alice@pc33.atlanta.example.com SIP/2.0\r\n"));
    assert_eq!(
        bye.header_all("Route"),
        vec!["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    );
    assert_eq!(
        bye.header("From"),
        Some("Bob <sip:bob@biloxi.example.com>;tag=a6c85cf")
    );
    assert_eq!(
        bye.header("To"),
        Some("Alice <sip:alice@atlanta.example.com>;tag=1928301774")
    );
    assert_eq!(bye.header("CSeq"), Some("2 BYE"));
    // The peer's in-dialog requests must have growing CSeq numbers.
    let reinvite = parse(
        &INVITE
            .replace(
                "To: Bob <sip:bob@biloxi.example.com>",
                "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
            )
            .replace("314159 INVITE", "314160 INVITE")
            .replace(
                "<sip:alice@pc33.atlanta.example.com>",
                "<sip:alice@[2001:db8::33]:5070>",
            ),
    );
    assert_eq!(request_dialog_id(&reinvite), Some(d.id.clone()));
    d.on_request(&reinvite).expect("newer");
    assert_eq!(
        d.remote_target, "sip:alice@[2001:db8::33]:5070",
        "target refreshed"
    );
    assert_eq!(
        d.on_request(&reinvite),
        Err(DialogError::OutOfOrder {
            got: 314160,
            last: 314160
        })
    );
}

#[test]
fn uac_dialog_reverses_the_route_set_and_acks_with_the_invite_number() {
    let inv = parse(INVITE);
    let ok = ok_from_bob(&inv);
    assert!(response_dialog_id(&ok).is_some());
    let mut d = Dialog::uac(&inv, &ok).expect("uac");
    assert_eq!(d.state, DialogState::Confirmed);
    assert_eq!(d.remote_target, "sip:bob@192.0.2.4");
    assert_eq!(
        d.route_set,
        vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    );
    let ack = d
        .request(
            Method::ACK,
            "UDP 10.0.0.1:5060",
            "z9hG4bKack",
            None,
            Some(314159),
        )
        .expect("ack");
    assert_eq!(ack.header("CSeq"), Some("314159 ACK"));
    let bye = d
        .request(Method::BYE, "UDP 10.0.0.1:5060", "z9hG4bKbye", None, None)
        .expect("bye");
    assert_eq!(bye.header("CSeq"), Some("314160 BYE"));
    assert_eq!(
        bye.header("To"),
        Some("Bob <sip:bob@biloxi.example.com>;tag=a6c85cf")
    );
}

#[test]
fn early_dialog_from_a_provisional_then_confirmed() {
    let inv = parse(INVITE);
    let mut ringing = build_response(&inv, 180, "Ringing", Some("early1"));
    ringing
        .headers
        .insert(Name::CONTACT, BytesStr::from_static("<sip:bob@192.0.2.9>"));
    let ringing = parse(std::str::from_utf8(&ringing.to_bytes()).expect("utf8"));
    let mut d = Dialog::uac(&inv, &ringing).expect("early");
    assert_eq!(d.state, DialogState::Early);
    let ok = ok_from_bob(&inv);
    d.confirm(Some(&ok));
    assert_eq!(d.state, DialogState::Confirmed);
    assert_eq!(d.remote_target, "sip:bob@192.0.2.4");
    // No To tag: no dialog.
    let trying = parse(
        std::str::from_utf8(&build_response(&inv, 100, "Trying", None).to_bytes()).expect("utf8"),
    );
    assert_eq!(
        Dialog::uac(&inv, &trying).err(),
        Some(DialogError::NoRemoteTag)
    );
}
