//! Conferences and their participants (`/Conferences`): rows read from the store; changes to
//! a live room go to the node's [`crate::voice::conference::Conferences`].

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::routes::Op;
use super::{
    check_callback_urls, create_call_on, day_filters, fetch_row, list_rows, render, unavailable,
    Ctx, Params, TwError,
};
use crate::store::{now_us, rfc2822, Filter, CONFERENCES, PARTICIPANTS, RECORDINGS};
use crate::voice::conference::{Conferences, ParticipantUpdate, UpdateError};
use crate::voice::twiml::Method;
use quick_xml::escape::escape as xml;

fn rooms<'a>(c: &'a Ctx<'_>) -> Result<&'a std::sync::Arc<Conferences>, TwError> {
    c.st.calls
        .engine()
        .map(|e| e.conferences())
        .ok_or_else(unavailable)
}

fn update_error(e: UpdateError) -> TwError {
    match e {
        UpdateError::NotLive => TwError::bad(
            20001,
            "The conference is not in progress on this node: it cannot be changed",
        ),
        UpdateError::NotParticipant => {
            TwError::bad(20001, "The call is not a participant of this conference")
        }
        UpdateError::Bad(m) => TwError::bad(20001, m),
    }
}

fn method(p: &Params, name: &str) -> Method {
    p.get(name).and_then(Method::parse).unwrap_or(Method::Post)
}

/// A live participant's row, which must belong to the conference of the path.
async fn participant(c: &Ctx<'_>) -> Result<Map<String, Value>, TwError> {
    let row = fetch_row(c, &PARTICIPANTS, &c.call_sid).await?;
    if row.get("conference_sid").and_then(Value::as_str) != Some(c.conference_sid.as_str()) {
        return Err(TwError::not_found(c.path));
    }
    Ok(row)
}

pub(super) async fn run(op: Op, c: &Ctx<'_>) -> Result<Value, TwError> {
    let p = c.params;
    match op {
        Op::ConferencesList => {
            let mut f = Vec::new();
            if let Some(n) = p.get("FriendlyName") {
                f.push(Filter::Eq("friendly_name", Value::from(n)));
            }
            if let Some(s) = p.get("Status") {
                f.push(Filter::Eq("status", Value::from(s)));
            }
            f.extend(day_filters(p, "DateCreated", "date_created"));
            f.extend(day_filters(p, "DateUpdated", "date_updated"));
            list_rows(c, &CONFERENCES, "conferences", &f).await
        }
        Op::ConferenceFetch => Ok(render(
            &CONFERENCES,
            &fetch_row(c, &CONFERENCES, &c.sid).await?,
        )),
        Op::ConferenceUpdate => {
            let row = fetch_row(c, &CONFERENCES, &c.sid).await?;
            if row.get("status").and_then(Value::as_str) == Some("completed") {
                return Err(TwError::bad(20001, "The conference has ended"));
            }
            let confs = rooms(c)?;
            if let Some(u) = p.get("AnnounceUrl").filter(|u| !u.is_empty()) {
                confs
                    .announce(&c.sid, u, method(p, "AnnounceMethod"))
                    .await
                    .map_err(update_error)?;
            }
            if p.get("Status") == Some("completed") {
                confs.end_room(&c.sid).await.map_err(update_error)?;
            }
            Ok(render(
                &CONFERENCES,
                &fetch_row(c, &CONFERENCES, &c.sid).await?,
            ))
        }
        Op::ConferenceRecordingsList => {
            fetch_row(c, &CONFERENCES, &c.conference_sid).await?;
            let mut f = vec![Filter::Eq(
                "conference_sid",
                Value::from(c.conference_sid.clone()),
            )];
            if let Some(cs) = p.get("CallSid") {
                f.push(Filter::Eq("call_sid", Value::from(cs)));
            }
            f.extend(day_filters(p, "DateCreated", "date_created"));
            list_rows(c, &RECORDINGS, "recordings", &f).await
        }
        Op::ParticipantsList => {
            fetch_row(c, &CONFERENCES, &c.conference_sid).await?;
            let mut f = vec![Filter::Eq(
                "conference_sid",
                Value::from(c.conference_sid.clone()),
            )];
            for (param, col) in [
                ("Muted", "muted"),
                ("Hold", "hold"),
                ("Coaching", "coaching"),
            ] {
                if let Some(b) = p.bool(param) {
                    f.push(Filter::Eq(col, Value::from(i64::from(b))));
                }
            }
            list_rows(c, &PARTICIPANTS, "participants", &f).await
        }
        Op::ParticipantFetch => Ok(render(&PARTICIPANTS, &participant(c).await?)),
        Op::ParticipantUpdate => {
            let row = participant(c).await?;
            let mut u = ParticipantUpdate {
                muted: p.bool("Muted"),
                hold: p.bool("Hold"),
                hold_url: p
                    .get("HoldUrl")
                    .filter(|u| !u.is_empty())
                    .map(|u| (u.to_string(), method(p, "HoldMethod"))),
                announce: p
                    .get("AnnounceUrl")
                    .filter(|u| !u.is_empty())
                    .map(|u| (u.to_string(), method(p, "AnnounceMethod"))),
                beep_on_exit: p.bool("BeepOnExit"),
                end_on_exit: p.bool("EndConferenceOnExit"),
                coach: None,
            };
            let to_coach = p.get("CallSidToCoach").filter(|s| !s.is_empty());
            match (p.bool("Coaching"), to_coach) {
                (Some(false), _) => u.coach = Some(None),
                (Some(true), None) => {
                    let current = row
                        .get("call_sid_to_coach")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    if current.is_none() {
                        return Err(TwError::bad(20001, "Coaching=true needs CallSidToCoach"));
                    }
                    u.coach = Some(current);
                }
                (_, Some(s)) => u.coach = Some(Some(s.to_string())),
                (None, None) => {}
            }
            rooms(c)?
                .update(&c.conference_sid, &c.call_sid, u)
                .await
                .map_err(update_error)?;
            Ok(render(&PARTICIPANTS, &participant(c).await?))
        }
        Op::ParticipantDelete => {
            participant(c).await?;
            rooms(c)?
                .remove(&c.conference_sid, &c.call_sid)
                .await
                .map_err(update_error)?;
            Ok(Value::Null)
        }
        Op::ParticipantCreate => add_participant(c).await,
        _ => Err(TwError::not_found(c.path)),
    }
}

/// The `<Dial><Conference>` a participant added through the API runs once it answers.
fn participant_twiml(p: &Params, room: &str) -> String {
    let mut attrs = String::new();
    let mut attr = |k: &str, v: &str| {
        attrs.push_str(&format!(" {k}=\"{}\"", xml(v)));
    };
    let map = [
        ("Muted", "muted"),
        ("Beep", "beep"),
        ("StartConferenceOnEnter", "startConferenceOnEnter"),
        ("EndConferenceOnExit", "endConferenceOnExit"),
        ("WaitUrl", "waitUrl"),
        ("WaitMethod", "waitMethod"),
        ("MaxParticipants", "maxParticipants"),
        ("ConferenceTrim", "trim"),
        ("ConferenceStatusCallback", "statusCallback"),
        ("ConferenceStatusCallbackMethod", "statusCallbackMethod"),
        (
            "ConferenceRecordingStatusCallback",
            "recordingStatusCallback",
        ),
        (
            "ConferenceRecordingStatusCallbackMethod",
            "recordingStatusCallbackMethod",
        ),
        ("JitterBufferSize", "jitterBufferSize"),
        ("Label", "participantLabel"),
    ];
    for (param, a) in map {
        if let Some(v) = p.get(param).filter(|v| !v.is_empty()) {
            attr(a, v);
        }
    }
    if let Some(events) = p.values.get("ConferenceStatusCallbackEvent") {
        attr("statusCallbackEvent", &events.join(" "));
    }
    if let Some("record-from-start" | "true") = p.get("ConferenceRecord") {
        attr("record", "record-from-start");
    }
    if p.bool("Coaching") == Some(true) {
        if let Some(c) = p.get("CallSidToCoach") {
            attr("coach", c);
        }
    }
    let limit = p
        .get("TimeLimit")
        .map(|t| format!(" timeLimit=\"{}\"", xml(t)))
        .unwrap_or_default();
    format!(
        "<Response><Dial{limit}><Conference{attrs}>{}</Conference></Dial></Response>",
        xml(room)
    )
}

/// Adds a participant by calling it: a call whose instructions put it in the room.
async fn add_participant(c: &Ctx<'_>) -> Result<Value, TwError> {
    let p = c.params;
    // The path names the room by SID (it must exist) or by friendly name.
    let (conf_sid, room) = if crate::secret::is_sid(&c.conference_sid, "CF") {
        let row = fetch_row(c, &CONFERENCES, &c.conference_sid).await?;
        if row.get("status").and_then(Value::as_str) == Some("completed") {
            return Err(TwError::bad(20001, "The conference has ended"));
        }
        let name = row
            .get("friendly_name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        (Value::from(c.conference_sid.clone()), name)
    } else {
        let live = rooms(c)?.room_sid_by_name(c.acc_sid(), &c.conference_sid);
        (
            live.map_or(Value::Null, Value::from),
            c.conference_sid.clone(),
        )
    };
    if room.is_empty() || room.len() > 128 {
        return Err(TwError::bad(
            20001,
            "A conference name has 1 to 128 characters",
        ));
    }
    if p.bool("Coaching") == Some(true) && p.get("CallSidToCoach").is_none_or(str::is_empty) {
        return Err(TwError::bad(20001, "Coaching=true needs CallSidToCoach"));
    }
    // Checked now, not when the callee answers and its instructions are parsed.
    if let Some(s) = p.get("CallSidToCoach").filter(|s| !s.is_empty()) {
        if !crate::secret::is_sid(s, "CA") {
            return Err(TwError::bad(
                20001,
                format!("CallSidToCoach {s:?} is not a call SID"),
            ));
        }
    }
    check_callback_urls(
        c,
        p,
        &[
            "ConferenceStatusCallback",
            "ConferenceRecordingStatusCallback",
        ],
    )?;
    let twiml = participant_twiml(p, &room);
    let mut values: HashMap<&'static str, Vec<String>> = HashMap::new();
    for k in [
        "To",
        "From",
        "StatusCallback",
        "StatusCallbackMethod",
        "StatusCallbackEvent",
        "Timeout",
    ] {
        if let Some(v) = p.values.get(k) {
            values.insert(k, v.clone());
        }
    }
    values.insert("Twiml", vec![twiml]);
    let call_params = Params {
        values,
        echo: Vec::new(),
    };
    let call_ctx = Ctx {
        params: &call_params,
        ..c.clone()
    };
    // Its media goes where the room mixes (all of a room's members are on one worker).
    let worker = rooms(c)?.worker_of(c.acc_sid(), &room);
    let call = create_call_on(&call_ctx, worker).await?;
    let call_sid = call.get("sid").and_then(Value::as_str).unwrap_or_default();
    let now = rfc2822(now_us());
    let acc = c.acc_sid();
    let coaching = p.bool("Coaching") == Some(true);
    Ok(json!({
        "account_sid": acc,
        "call_sid": call_sid,
        "conference_sid": conf_sid,
        "label": p.get("Label"),
        "call_sid_to_coach": if coaching { p.get("CallSidToCoach") } else { None },
        "coaching": coaching,
        "muted": p.bool("Muted").unwrap_or(false),
        "hold": false,
        "start_conference_on_enter": p.bool("StartConferenceOnEnter").unwrap_or(true),
        "end_conference_on_exit": p.bool("EndConferenceOnExit").unwrap_or(false),
        "status": "queued",
        "queue_time": null,
        "date_created": now,
        "date_updated": now,
        "uri": format!("{}/Accounts/{acc}/Conferences/{}/Participants/{call_sid}.json", super::API, c.conference_sid),
    }))
}
