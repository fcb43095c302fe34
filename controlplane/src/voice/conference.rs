//! Conference rooms of `<Dial><Conference>`: who is in each room, when it starts and ends, its
//! rows (`conferences`, `conference_participants`), its status callbacks and its mix recording.
//!
//! A room is named per account. Its first participant creates it (status `init`); it starts
//! (`in-progress`) when a participant with `startConferenceOnEnter` joins, which moves every
//! waiting participant into the dataplane's mix; it ends (`completed`) when its last
//! participant leaves, when one with `endConferenceOnExit` leaves, or through the API. The
//! mixing itself is the dataplane's (one conference per room, on one worker); a participant's
//! own call task plays what it hears outside the mix (wait and hold audio, announcements) and
//! records its own track. The room tells call tasks what happened through [`ConfSignal`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use voxedge_dataplane::command::{ConfOp, ConfReply};
use voxedge_dataplane::ids::{RelayId, Side, WorkerId};
use voxedge_dataplane::mixer::jitter::Target;
use voxedge_dataplane::mixer::{Beep, ConfId, ConfOptions, MemberSpec, MemberUpdate};
use voxedge_dataplane::recorder::{RecReceiver, RecordTap};
use voxedge_dataplane::Dataplane;
use voxedge_dataplane::DataplaneError;

use super::audio::Codec;
use super::twiml::{ConferenceSpec, LegCallback, Method};
use crate::calls::CallService;
use crate::lock;
use crate::store::{now_us, rfc2822, RowWrite, Store, StoreError, CONFERENCES, PARTICIPANTS};

/// What a room tells a participant's call task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfSignal {
    /// The conference started: stop the wait audio (the participant is in the mix now).
    Started,
    /// The participant is out of the room (the conference ended, or the API removed it): the
    /// call goes on with its next instruction.
    Left,
    /// Play this (absolute URL) to the participant once.
    Announce(String, Method),
    /// Held (with hold audio to loop, if any) or taken off hold.
    Hold(Option<(String, Method)>),
    Unhold,
}

/// Why a participant could not enter a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnterError {
    #[error("conference {0:?} is full ({1} participants)")]
    Full(String, u32),
    #[error("the call to coach ({0}) is not in conference {1:?}")]
    NoCoachee(String, String),
    #[error("the call's media is on dataplane worker {leg}, the conference's on worker {conf}; it joins only before it is answered")]
    Worker { leg: u16, conf: u16 },
    #[error("the dataplane refused the participant: {0}")]
    Dataplane(String),
    #[error("the conference record cannot be written: {0}")]
    Store(String),
}

/// A participant's change through the API (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParticipantUpdate {
    pub muted: Option<bool>,
    pub hold: Option<bool>,
    pub hold_url: Option<(String, Method)>,
    /// `Some(None)` stops coaching.
    pub coach: Option<Option<String>>,
    pub announce: Option<(String, Method)>,
    pub beep_on_exit: Option<bool>,
    pub end_on_exit: Option<bool>,
}

/// Why a change through the API was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("the conference is not live on this node")]
    NotLive,
    #[error("the call is not a participant of this conference")]
    NotParticipant,
    #[error("{0}")]
    Bad(String),
}

struct Member {
    call_sid: String,
    relay: RelayId,
    codec: Codec,
    jitter_ms: Option<u32>,
    muted: bool,
    hold: bool,
    coach: Option<String>,
    start_on_enter: bool,
    end_on_exit: bool,
    beep_exit: bool,
    label: Option<String>,
    /// In the dataplane's mix (the conference has started).
    in_mix: bool,
    signals: mpsc::UnboundedSender<ConfSignal>,
}

/// The mix recording of a room.
struct MixRecording {
    tap: RecordTap,
    sid: String,
    start_us: i64,
    /// Stops the collector, which then hands back what it captured.
    stop: tokio::sync::oneshot::Sender<()>,
    collector: tokio::task::JoinHandle<super::record::Capture>,
}

/// Moves the mix tap's frames into a capture every 200 ms until `stop` (or its sender's
/// drop), then once more; returns the capture.
fn collect(
    frames: RecReceiver,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<super::record::Capture> {
    tokio::spawn(async move {
        let mut capture = super::record::Capture::new(4 * 3600);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
            }
            for f in frames.try_iter() {
                capture.push(&f);
            }
        }
        for f in frames.try_iter() {
            capture.push(&f);
        }
        capture
    })
}

#[derive(Default)]
struct RoomState {
    started: bool,
    ended: bool,
    members: Vec<Member>,
    max: u32,
    /// The first participant's `statusCallback` (URL made absolute).
    callback: Option<LegCallback>,
    record: bool,
    trim: bool,
    recording_callback: Option<LegCallback>,
    mix: Option<MixRecording>,
    /// Callbacks sent, for `SequenceNumber`.
    seq: u64,
}

/// A live room.
pub struct Room {
    pub sid: String,
    pub account: String,
    pub name: String,
    pub conf: ConfId,
    /// The dataplane worker that mixes the room: its first participant's.
    worker: std::sync::OnceLock<WorkerId>,
    st: tokio::sync::Mutex<RoomState>,
}

/// A participant's view of the room it entered.
pub struct Entered {
    pub room: Arc<Room>,
    /// The conference is running (else the participant waits, hearing the wait audio).
    pub started: bool,
    /// Record this participant's own track.
    pub record: bool,
    pub recording_callback: Option<LegCallback>,
    pub trim: bool,
}

/// A participant entering: the call and how it takes part.
pub struct Joining<'a> {
    pub call_sid: &'a str,
    pub relay: RelayId,
    pub codec: Codec,
    pub spec: &'a ConferenceSpec,
    /// The spec's callbacks with their URLs made absolute.
    pub status_callback: Option<LegCallback>,
    pub recording_callback: Option<LegCallback>,
    pub signals: mpsc::UnboundedSender<ConfSignal>,
}

/// The rooms of this node.
pub struct Conferences {
    store: Store,
    dp: Arc<Dataplane>,
    calls: Arc<CallService>,
    recordings: Arc<crate::recordings::Recordings>,
    rooms: Mutex<HashMap<(String, String), Arc<Room>>>,
    by_sid: Mutex<HashMap<String, Arc<Room>>>,
    by_conf: Mutex<HashMap<ConfId, Arc<Room>>>,
    next_conf: AtomicU64,
}

impl std::fmt::Debug for Conferences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conferences")
    }
}

impl Member {
    fn spec(&self, coach_of: Option<(RelayId, Side)>) -> MemberSpec {
        let mut m = MemberSpec::new(self.relay, Side::A, self.codec.law());
        m.payload_type = self.codec.payload_type();
        m.muted = self.muted || self.hold;
        m.deaf = self.hold;
        m.coach_of = coach_of;
        if let Some(ms) = self.jitter_ms {
            m.jitter = Target::Fixed(u16::try_from(ms).unwrap_or(200));
        }
        m
    }
}

impl Conferences {
    pub fn new(
        store: Store,
        dp: Arc<Dataplane>,
        calls: Arc<CallService>,
        recordings: Arc<crate::recordings::Recordings>,
    ) -> Arc<Conferences> {
        Arc::new(Conferences {
            store,
            dp,
            calls,
            recordings,
            rooms: Mutex::new(HashMap::new()),
            by_sid: Mutex::new(HashMap::new()),
            by_conf: Mutex::new(HashMap::new()),
            // Conference ids of this process start away from zero (and away from the ids a
            // bench or another client of the dataplane might pick).
            next_conf: AtomicU64::new(1 << 32),
        })
    }

    /// The SID of the live room of that name.
    pub fn room_sid_by_name(&self, account: &str, name: &str) -> Option<String> {
        lock(&self.rooms)
            .get(&(account.to_string(), name.to_string()))
            .map(|r| r.sid.clone())
    }

    /// The worker mixing the live room of that name (new participants' media belongs there).
    pub fn worker_of(&self, account: &str, name: &str) -> Option<WorkerId> {
        lock(&self.rooms)
            .get(&(account.to_string(), name.to_string()))
            .and_then(|r| r.worker.get().copied())
    }

    /// The worker that mixes room `spec.name`: the live room's, or `mine` for a room this
    /// participant creates now (so participants arriving together agree on one worker).
    ///
    /// # Errors
    /// The room's row cannot be written.
    pub async fn claim_worker(
        &self,
        account: &str,
        spec: &ConferenceSpec,
        mine: WorkerId,
    ) -> Result<WorkerId, EnterError> {
        let room = self.room_for(account, spec).await?;
        Ok(*room.worker.get_or_init(|| mine))
    }

    /// A live room by SID.
    pub fn room(&self, sid: &str) -> Option<Arc<Room>> {
        lock(&self.by_sid).get(sid).cloned()
    }

    /// Conferences a previous run left open end now (their calls ended with that run).
    ///
    /// # Errors
    /// Store errors.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let left = self
            .store
            .rows_in(&CONFERENCES, &["init", "in-progress"])
            .await?;
        for r in &left {
            let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
            let (acc, sid) = (text("account_sid"), text("sid"));
            let sets = [
                ("status", Value::from("completed")),
                (
                    "reason_conference_ended",
                    Value::from("control-node-restarted"),
                ),
            ];
            self.store.update(&CONFERENCES, acc, sid, &sets).await?;
            self.store
                .delete_where(&PARTICIPANTS, acc, "conference_sid", sid)
                .await?;
        }
        Ok(left.len())
    }

    /// A participant enters the room `spec.name` of `account` (created if it is not live).
    ///
    /// # Errors
    /// The room is full, the call to coach is not in it, the dataplane refused the leg, or the
    /// room's row cannot be written.
    pub async fn enter(&self, account: &str, j: Joining<'_>) -> Result<Entered, EnterError> {
        let room = self.room_for(account, j.spec).await?;
        let mut st = room.st.lock().await;
        if st.ended {
            // Ended between the lookup and the lock: a new room of the same name.
            drop(st);
            return Box::pin(self.enter(account, j)).await;
        }
        if let Err(e) = self.admit(&room, &mut st, j).await {
            if st.members.is_empty() && !st.started {
                // A room no one could enter is gone again.
                st.ended = true;
                self.forget(&room);
                let sets = [
                    ("status", Value::from("completed")),
                    (
                        "reason_conference_ended",
                        Value::from("no-participant-joined"),
                    ),
                ];
                let _ = self
                    .store
                    .update(&CONFERENCES, &room.account, &room.sid, &sets)
                    .await;
            }
            return Err(e);
        }
        Ok(Entered {
            room: room.clone(),
            started: st.started,
            record: st.record,
            recording_callback: st.recording_callback.clone(),
            trim: st.trim,
        })
    }

    /// Checks and adds a participant to a room (the caller holds the room's lock).
    async fn admit(
        &self,
        room: &Arc<Room>,
        st: &mut RoomState,
        j: Joining<'_>,
    ) -> Result<(), EnterError> {
        let first = st.members.is_empty() && !st.started;
        if first {
            st.max = j.spec.max_participants;
            st.callback = j.status_callback.clone();
            st.record = j.spec.record;
            st.trim = j.spec.trim;
            st.recording_callback = j.recording_callback.clone();
        }
        if st.members.len() >= st.max as usize {
            return Err(EnterError::Full(room.name.clone(), st.max));
        }
        // Every member's media must be on the room's worker (the first participant's).
        let leg = self
            .dp
            .relay(j.relay)
            .ok_or_else(|| EnterError::Dataplane("the call's media is gone".into()))?
            .worker;
        let conf_worker = *room.worker.get_or_init(|| leg);
        if leg != conf_worker {
            return Err(EnterError::Worker {
                leg: leg.0,
                conf: conf_worker.0,
            });
        }
        if let Some(c) = &j.spec.coach {
            if !st.members.iter().any(|m| &m.call_sid == c) {
                return Err(EnterError::NoCoachee(c.clone(), room.name.clone()));
            }
        }
        let mut member = Member {
            call_sid: j.call_sid.to_string(),
            relay: j.relay,
            codec: j.codec,
            jitter_ms: j.spec.jitter_ms,
            muted: j.spec.muted,
            hold: false,
            coach: j.spec.coach.clone(),
            start_on_enter: j.spec.start_on_enter,
            end_on_exit: j.spec.end_on_exit,
            beep_exit: j.spec.beep_exit,
            label: j.spec.label.clone(),
            in_mix: false,
            signals: j.signals,
        };
        let starting = !st.started && member.start_on_enter;
        if st.started || starting {
            let coach_of = coach_target(&st.members, member.coach.as_deref());
            self.join_mix(room, st.record, coach_of, &mut member)
                .await?;
            if j.spec.beep_enter {
                let _ = self.dp_op(room.conf, ConfOp::Beep(Beep::Enter)).await;
            }
        }
        let now = now_us();
        let row = [
            ("sid", Value::from(member.call_sid.clone())),
            ("account_sid", Value::from(room.account.clone())),
            ("conference_sid", Value::from(room.sid.clone())),
            ("call_sid", Value::from(member.call_sid.clone())),
            (
                "label",
                member.label.clone().map_or(Value::Null, Value::from),
            ),
            (
                "call_sid_to_coach",
                member.coach.clone().map_or(Value::Null, Value::from),
            ),
            ("coaching", Value::from(i64::from(member.coach.is_some()))),
            ("muted", Value::from(i64::from(member.muted))),
            ("hold", Value::from(0)),
            (
                "start_conference_on_enter",
                Value::from(i64::from(member.start_on_enter)),
            ),
            (
                "end_conference_on_exit",
                Value::from(i64::from(member.end_on_exit)),
            ),
            ("status", Value::from("connected")),
            ("api_version", Value::from("2010-04-01")),
            ("date_created", Value::from(now)),
            ("date_updated", Value::from(now)),
        ];
        // A participant row left by a call that was in another room is replaced.
        let _ = self
            .store
            .delete(&PARTICIPANTS, &room.account, j.call_sid)
            .await;
        if let Err(e) = self.store.insert(&PARTICIPANTS, &row).await {
            if member.in_mix {
                self.leave_mix(room, &member).await;
            }
            return Err(EnterError::Store(e.to_string()));
        }
        st.members.push(member);
        self.event(room, st, "join", "participant-join", Some(j.call_sid), &[])
            .await;
        if starting {
            self.start(room, st).await;
        }
        Ok(())
    }

    /// The live room of that name, or a new one (its row written, `init`).
    async fn room_for(
        &self,
        account: &str,
        spec: &ConferenceSpec,
    ) -> Result<Arc<Room>, EnterError> {
        let key = (account.to_string(), spec.name.clone());
        if let Some(r) = lock(&self.rooms).get(&key) {
            return Ok(r.clone());
        }
        let sid = crate::secret::new_sid(CONFERENCES.sid_prefix);
        let now = now_us();
        let row = [
            ("sid", Value::from(sid.clone())),
            ("account_sid", Value::from(account)),
            ("friendly_name", Value::from(spec.name.clone())),
            ("status", Value::from("init")),
            ("region", Value::from("local")),
            ("api_version", Value::from("2010-04-01")),
            ("date_created", Value::from(now)),
            ("date_updated", Value::from(now)),
        ];
        let room = Arc::new(Room {
            sid,
            account: account.to_string(),
            name: spec.name.clone(),
            conf: ConfId(self.next_conf.fetch_add(1, Ordering::Relaxed)),
            worker: std::sync::OnceLock::new(),
            st: tokio::sync::Mutex::new(RoomState::default()),
        });
        {
            let mut rooms = lock(&self.rooms);
            if let Some(r) = rooms.get(&key) {
                return Ok(r.clone());
            }
            rooms.insert(key, room.clone());
        }
        lock(&self.by_sid).insert(room.sid.clone(), room.clone());
        lock(&self.by_conf).insert(room.conf, room.clone());
        if let Err(e) = self.store.insert(&CONFERENCES, &row).await {
            self.forget(&room);
            return Err(EnterError::Store(e.to_string()));
        }
        Ok(room)
    }

    fn forget(&self, room: &Room) {
        let mut rooms = lock(&self.rooms);
        let key = (room.account.clone(), room.name.clone());
        if rooms.get(&key).is_some_and(|r| r.sid == room.sid) {
            rooms.remove(&key);
        }
        lock(&self.by_sid).remove(&room.sid);
        lock(&self.by_conf).remove(&room.conf);
    }

    async fn dp_op(&self, conf: ConfId, op: ConfOp) -> Result<ConfReply, DataplaneError> {
        let dp = self.dp.clone();
        tokio::task::spawn_blocking(move || dp.conference(conf, op))
            .await
            .unwrap_or(Err(DataplaneError::Stopped(0)))
    }

    /// Puts a member into the dataplane's mix (coaching `coach_of`, when given).
    async fn join_mix(
        &self,
        room: &Room,
        record: bool,
        coach_of: Option<(RelayId, Side)>,
        member: &mut Member,
    ) -> Result<(), EnterError> {
        let op = ConfOp::Join {
            member: member.spec(coach_of),
            options: ConfOptions {
                allow_forwarding: !record,
            },
        };
        match self.dp_op(room.conf, op).await {
            Ok(_) => {
                member.in_mix = true;
                Ok(())
            }
            Err(DataplaneError::ConferenceWorker {
                conf_worker,
                leg_worker,
                ..
            }) => Err(EnterError::Worker {
                leg: leg_worker,
                conf: conf_worker,
            }),
            Err(e) => Err(EnterError::Dataplane(e.to_string())),
        }
    }

    async fn leave_mix(&self, room: &Room, member: &Member) {
        let _ = self
            .dp_op(
                room.conf,
                ConfOp::Leave {
                    relay: member.relay,
                    side: Side::A,
                },
            )
            .await;
    }

    /// The conference starts: waiting participants join the mix (those the dataplane refuses
    /// leave the room), the mix recording begins.
    async fn start(&self, room: &Arc<Room>, st: &mut RoomState) {
        st.started = true;
        let mut refused = Vec::new();
        for i in 0..st.members.len() {
            if st.members[i].in_mix {
                continue;
            }
            let coach_of = coach_target(&st.members, st.members[i].coach.as_deref());
            let record = st.record;
            let r = self
                .join_mix(room, record, coach_of, &mut st.members[i])
                .await;
            match r {
                Ok(()) => {
                    let _ = st.members[i].signals.send(ConfSignal::Started);
                }
                Err(e) => refused.push((st.members[i].call_sid.clone(), e)),
            }
        }
        for (sid, e) in refused {
            self.calls
                .notify(
                    &room.account,
                    Some(&sid),
                    "0",
                    "13500",
                    &format!("conference {:?}: {e}", room.name),
                )
                .await;
            if let Some(pos) = st.members.iter().position(|m| m.call_sid == sid) {
                let m = st.members.remove(pos);
                let _ = m.signals.send(ConfSignal::Left);
                let _ = self.store.delete(&PARTICIPANTS, &room.account, &sid).await;
            }
        }
        if st.record {
            let (tap, frames) = RecordTap::new(4096);
            if self
                .dp_op(room.conf, ConfOp::Record(Some(tap.clone())))
                .await
                .is_ok()
            {
                let sid = crate::secret::new_sid("RE");
                let start_us = now_us();
                self.recording_row(room, st, &sid, start_us, "in-progress", None, None)
                    .await;
                let (stop, stopped) = tokio::sync::oneshot::channel();
                st.mix = Some(MixRecording {
                    tap,
                    sid,
                    start_us,
                    stop,
                    collector: collect(frames, stopped),
                });
            }
        }
        let sets = [("status", Value::from("in-progress"))];
        let _ = self
            .store
            .update(&CONFERENCES, &room.account, &room.sid, &sets)
            .await;
        self.event(room, st, "start", "conference-start", None, &[])
            .await;
    }

    /// A participant leaves (its call task, after a hang-up, `*`, a redirect, a removal or the
    /// end of `timeLimit`). Idempotent.
    pub async fn leave(&self, room: &Arc<Room>, call_sid: &str) {
        let mut st = room.st.lock().await;
        self.leave_locked(room, &mut st, call_sid).await;
    }

    /// [`Conferences::leave`] with the room's lock held.
    async fn leave_locked(&self, room: &Arc<Room>, st: &mut RoomState, call_sid: &str) {
        let Some(pos) = st.members.iter().position(|m| m.call_sid == call_sid) else {
            return;
        };
        // Reported with the participant's state as it was.
        self.event(room, st, "leave", "participant-leave", Some(call_sid), &[])
            .await;
        let m = st.members.remove(pos);
        if m.in_mix {
            self.leave_mix(room, &m).await;
        }
        // Whoever coached this participant coaches no one now.
        for other in st
            .members
            .iter_mut()
            .filter(|o| o.coach.as_deref() == Some(call_sid))
        {
            other.coach = None;
        }
        let _ = self
            .store
            .delete(&PARTICIPANTS, &room.account, call_sid)
            .await;
        if m.end_on_exit && !st.members.is_empty() {
            self.end(
                room,
                st,
                "participant-with-end-conference-on-exit-left",
                Some(call_sid),
            )
            .await;
        } else if st.members.is_empty() {
            self.end(room, st, "last-participant-left", Some(call_sid))
                .await;
        } else if m.beep_exit && st.started {
            let _ = self.dp_op(room.conf, ConfOp::Beep(Beep::Exit)).await;
        }
    }

    /// Ends a room through the API.
    ///
    /// # Errors
    /// The room is not live here.
    pub async fn end_room(&self, sid: &str) -> Result<(), UpdateError> {
        let room = self.room(sid).ok_or(UpdateError::NotLive)?;
        let mut st = room.st.lock().await;
        if !st.ended {
            self.end(&room, &mut st, "conference-ended-via-api", None)
                .await;
        }
        Ok(())
    }

    async fn end(&self, room: &Arc<Room>, st: &mut RoomState, reason: &str, by: Option<&str>) {
        st.ended = true;
        self.forget(room);
        let present: Vec<String> = st.members.iter().map(|m| m.call_sid.clone()).collect();
        for sid in &present {
            self.event(room, st, "leave", "participant-leave", Some(sid), &[])
                .await;
        }
        for m in std::mem::take(&mut st.members) {
            if m.in_mix {
                self.leave_mix(room, &m).await;
            }
            let _ = m.signals.send(ConfSignal::Left);
            let _ = self
                .store
                .delete(&PARTICIPANTS, &room.account, &m.call_sid)
                .await;
        }
        if let Some(mix) = st.mix.take() {
            let _ = self.dp_op(room.conf, ConfOp::Record(None)).await;
            let _ = mix.stop.send(());
            let capture = mix
                .collector
                .await
                .unwrap_or_else(|_| super::record::Capture::new(0));
            let dropped = mix.tap.dropped.load(Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(conference = %room.sid, dropped, "mix recording lost frames (tap full)");
            }
            let samples = capture.finish(st.trim);
            self.close_mix(room, st, &mix.sid, mix.start_us, samples)
                .await;
        }
        let sets = [
            ("status", Value::from("completed")),
            ("reason_conference_ended", Value::from(reason)),
            (
                "call_sid_ending_conference",
                by.map_or(Value::Null, Value::from),
            ),
        ];
        let _ = self
            .store
            .update(&CONFERENCES, &room.account, &room.sid, &sets)
            .await;
        let mut extra = vec![("ReasonConferenceEnded", reason.to_string())];
        if let Some(b) = by {
            extra.push(("CallSidEndingConference", b.to_string()));
        }
        self.event(room, st, "end", "conference-end", None, &extra)
            .await;
    }

    /// Stores the mix (`completed`, or `absent` when silent) with its callback.
    async fn close_mix(
        &self,
        room: &Room,
        st: &mut RoomState,
        sid: &str,
        start_us: i64,
        samples: Vec<i16>,
    ) {
        if samples.is_empty() {
            self.recording_row(room, st, sid, start_us, "absent", Some(0), None)
                .await;
            return;
        }
        let (secs, written) = self.recordings.save(sid, samples, 1).await;
        match written {
            Ok(p) => {
                self.recording_row(
                    room,
                    st,
                    sid,
                    start_us,
                    "completed",
                    Some(secs),
                    Some(p.display().to_string()),
                )
                .await;
            }
            Err(e) => {
                self.calls
                    .notify(
                        &room.account,
                        None,
                        "0",
                        "13500",
                        &format!(
                            "the recording of conference {:?} could not be stored: {e}",
                            room.name
                        ),
                    )
                    .await;
                self.recording_row(room, st, sid, start_us, "failed", Some(secs), None)
                    .await;
            }
        }
    }

    /// The mix recording's row (inserted at `in-progress`, updated after) and its callback.
    #[allow(clippy::too_many_arguments)]
    async fn recording_row(
        &self,
        room: &Room,
        st: &RoomState,
        sid: &str,
        start_us: i64,
        status: &str,
        secs: Option<u64>,
        path: Option<String>,
    ) {
        let now = now_us();
        let callback = st
            .recording_callback
            .as_ref()
            .filter(|cb| cb.events.split(' ').any(|e| e == status))
            .and_then(|cb| {
                let callbacks = self.calls.callbacks()?;
                let mut p = BTreeMap::new();
                p.insert("AccountSid".to_string(), room.account.clone());
                p.insert("ConferenceSid".to_string(), room.sid.clone());
                p.insert("RecordingSid".to_string(), sid.to_string());
                p.insert(
                    "RecordingUrl".to_string(),
                    self.recordings.url(&room.account, sid),
                );
                p.insert("RecordingStatus".to_string(), status.to_string());
                p.insert("RecordingChannels".to_string(), "1".to_string());
                p.insert("RecordingSource".to_string(), "Conference".to_string());
                p.insert("RecordingTrack".to_string(), "both".to_string());
                p.insert("RecordingStartTime".to_string(), rfc2822(start_us));
                p.insert("ErrorCode".to_string(), "0".to_string());
                if let Some(s) = secs {
                    p.insert("RecordingDuration".to_string(), s.to_string());
                }
                Some(callbacks.recording_callback(
                    &owner(&room.account, &room.sid),
                    cb.url.clone(),
                    cb.method.as_str(),
                    &p,
                ))
            });
        let insert;
        let sets;
        let write = if status == "in-progress" {
            insert = [
                ("sid", Value::from(sid)),
                ("account_sid", Value::from(room.account.clone())),
                ("conference_sid", Value::from(room.sid.clone())),
                ("api_version", Value::from("2010-04-01")),
                ("status", Value::from(status)),
                ("source", Value::from("Conference")),
                ("channels", Value::from(1)),
                ("start_time", Value::from(start_us)),
                ("date_created", Value::from(now)),
                ("date_updated", Value::from(now)),
            ];
            RowWrite::Insert(&insert)
        } else {
            sets = [
                ("status", Value::from(status)),
                ("duration", secs.map_or(Value::Null, Value::from)),
                ("media_path", path.map_or(Value::Null, Value::from)),
            ];
            RowWrite::Update {
                account: &room.account,
                sid,
                sets: &sets,
            }
        };
        if let Err(e) = self.calls.write_recording(write, callback.as_ref()).await {
            tracing::warn!(conference = %room.sid, recording = sid, error = %e, "recording change not written");
        }
    }

    /// A participant changed through the API.
    ///
    /// # Errors
    /// The room is not live here, the call is not in it, or the change is not possible.
    pub async fn update(
        &self,
        conf_sid: &str,
        call_sid: &str,
        u: ParticipantUpdate,
    ) -> Result<(), UpdateError> {
        let room = self.room(conf_sid).ok_or(UpdateError::NotLive)?;
        let mut st = room.st.lock().await;
        let i = st
            .members
            .iter()
            .position(|m| m.call_sid == call_sid)
            .ok_or(UpdateError::NotParticipant)?;
        let coach_of = match &u.coach {
            Some(Some(c)) => {
                let target = st
                    .members
                    .iter()
                    .find(|m| &m.call_sid == c && m.call_sid != call_sid)
                    .ok_or_else(|| {
                        UpdateError::Bad(format!(
                            "CallSidToCoach {c} is not another participant of this conference"
                        ))
                    })?;
                Some(Some((target.relay, Side::A)))
            }
            Some(None) => Some(None),
            None => None,
        };
        let (was_muted, was_held) = (st.members[i].muted, st.members[i].hold);
        {
            let m = &mut st.members[i];
            if let Some(v) = u.muted {
                m.muted = v;
            }
            if let Some(v) = u.hold {
                m.hold = v;
            }
            if let Some(c) = &u.coach {
                m.coach.clone_from(c);
            }
            if let Some(v) = u.beep_on_exit {
                m.beep_exit = v;
            }
            if let Some(v) = u.end_on_exit {
                m.end_on_exit = v;
            }
        }
        let m = &st.members[i];
        if m.in_mix {
            let update = MemberUpdate {
                muted: Some(m.muted || m.hold),
                deaf: Some(m.hold),
                gain_db: None,
                coach_of,
            };
            self.dp_op(
                room.conf,
                ConfOp::Update {
                    relay: m.relay,
                    side: Side::A,
                    update,
                },
            )
            .await
            .map_err(|e| UpdateError::Bad(e.to_string()))?;
        }
        match (was_held, m.hold) {
            (false, true) => {
                let _ = m.signals.send(ConfSignal::Hold(u.hold_url.clone()));
            }
            (true, false) => {
                let _ = m.signals.send(ConfSignal::Unhold);
            }
            _ => {}
        }
        if let Some(a) = &u.announce {
            let _ = m.signals.send(ConfSignal::Announce(a.0.clone(), a.1));
        }
        let sets = [
            ("muted", Value::from(i64::from(m.muted))),
            ("hold", Value::from(i64::from(m.hold))),
            ("coaching", Value::from(i64::from(m.coach.is_some()))),
            (
                "call_sid_to_coach",
                m.coach.clone().map_or(Value::Null, Value::from),
            ),
            (
                "end_conference_on_exit",
                Value::from(i64::from(m.end_on_exit)),
            ),
        ];
        let _ = self
            .store
            .update(&PARTICIPANTS, &room.account, call_sid, &sets)
            .await;
        let (muted, hold) = (m.muted, m.hold);
        if muted != was_muted {
            let ev = if muted {
                "participant-mute"
            } else {
                "participant-unmute"
            };
            self.event(&room, &mut st, "mute", ev, Some(call_sid), &[])
                .await;
        }
        if hold != was_held {
            let ev = if hold {
                "participant-hold"
            } else {
                "participant-unhold"
            };
            self.event(&room, &mut st, "hold", ev, Some(call_sid), &[])
                .await;
        }
        Ok(())
    }

    /// Removes a participant through the API (its call goes on with its next instruction).
    ///
    /// # Errors
    /// The room is not live here, or the call is not in it.
    pub async fn remove(&self, conf_sid: &str, call_sid: &str) -> Result<(), UpdateError> {
        let room = self.room(conf_sid).ok_or(UpdateError::NotLive)?;
        // Under one lock: the participant's task cannot enter again before it has left.
        let mut st = room.st.lock().await;
        let m = st
            .members
            .iter()
            .find(|m| m.call_sid == call_sid)
            .ok_or(UpdateError::NotParticipant)?;
        let _ = m.signals.send(ConfSignal::Left);
        self.leave_locked(&room, &mut st, call_sid).await;
        Ok(())
    }

    /// Plays `url` to every participant of a room (`AnnounceUrl` on the conference).
    ///
    /// # Errors
    /// The room is not live here.
    pub async fn announce(
        &self,
        conf_sid: &str,
        url: &str,
        method: Method,
    ) -> Result<(), UpdateError> {
        let room = self.room(conf_sid).ok_or(UpdateError::NotLive)?;
        let st = room.st.lock().await;
        for m in &st.members {
            let _ = m
                .signals
                .send(ConfSignal::Announce(url.to_string(), method));
        }
        Ok(())
    }

    /// A member started or stopped talking (the dataplane's event): the `speaker` callback.
    pub async fn talking(&self, conf: ConfId, relay: RelayId, talking: bool) {
        let Some(room) = lock(&self.by_conf).get(&conf).cloned() else {
            return;
        };
        let mut st = room.st.lock().await;
        let Some(sid) = st
            .members
            .iter()
            .find(|m| m.relay == relay)
            .map(|m| m.call_sid.clone())
        else {
            return;
        };
        let ev = if talking {
            "participant-speech-start"
        } else {
            "participant-speech-stop"
        };
        self.event(&room, &mut st, "speaker", ev, Some(&sid), &[])
            .await;
    }

    /// A conference status callback, when the room's `statusCallbackEvent` has `kind`.
    async fn event(
        &self,
        room: &Room,
        st: &mut RoomState,
        kind: &str,
        event: &str,
        call_sid: Option<&str>,
        extra: &[(&str, String)],
    ) {
        let Some(cb) = st.callback.clone() else {
            return;
        };
        if !cb.events.split(' ').any(|e| e == kind) {
            return;
        }
        let Some(callbacks) = self.calls.callbacks() else {
            return;
        };
        st.seq += 1;
        let mut p = BTreeMap::new();
        p.insert("AccountSid".to_string(), room.account.clone());
        p.insert("ConferenceSid".to_string(), room.sid.clone());
        p.insert("FriendlyName".to_string(), room.name.clone());
        p.insert("StatusCallbackEvent".to_string(), event.to_string());
        p.insert("SequenceNumber".to_string(), st.seq.to_string());
        p.insert("Timestamp".to_string(), rfc2822(now_us()));
        if let Some(c) = call_sid {
            p.insert("CallSid".to_string(), c.to_string());
            // The participant's state now (for a leave: as it was).
            if let Some(m) = st.members.iter().find(|m| m.call_sid == c) {
                p.insert("Muted".to_string(), m.muted.to_string());
                p.insert("Hold".to_string(), m.hold.to_string());
                p.insert("Coaching".to_string(), m.coach.is_some().to_string());
                p.insert("EndConferenceOnExit".to_string(), m.end_on_exit.to_string());
                p.insert(
                    "StartConferenceOnEnter".to_string(),
                    m.start_on_enter.to_string(),
                );
                if let Some(l) = &m.label {
                    p.insert("ParticipantLabel".to_string(), l.clone());
                }
            }
        }
        for (k, v) in extra {
            p.insert((*k).to_string(), v.clone());
        }
        callbacks
            .conference_callback(
                &owner(&room.account, &room.sid),
                cb.url,
                cb.method.as_str(),
                &p,
            )
            .await;
    }
}

/// The row a conference's callbacks are written for: the account and the room, so a room's
/// callbacks are delivered in order and a room whose URL fails holds up no other room.
fn owner(account: &str, room: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("account_sid".into(), Value::from(account));
    m.insert("sid".into(), Value::from(room));
    m
}

/// The leg a member coaching `coach` (a call SID) speaks to.
fn coach_target(members: &[Member], coach: Option<&str>) -> Option<(RelayId, Side)> {
    let c = coach?;
    members
        .iter()
        .find(|m| m.call_sid == c)
        .map(|m| (m.relay, Side::A))
}
