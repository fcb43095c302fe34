//! Mixer tests on a stream table without I/O: packets in through `push`, ticks by hand.

use super::*;
use crate::ids::{Component, PortHandle};
use crate::table::Stream;

const MS: u64 = 1_000_000;

/// Collects mixed packets per stream.
#[derive(Default)]
pub(super) struct Capture(pub(super) HashMap<StreamIdx, Vec<Vec<u8>>>);

impl MixOut for Capture {
    fn send(&mut self, _table: &mut StreamTable, idx: StreamIdx, packet: &[u8]) -> bool {
        self.0.entry(idx).or_default().push(packet.to_vec());
        true
    }
}

struct Rig {
    table: StreamTable,
    mixer: Mixer,
    members: Vec<StreamIdx>,
    events: Vec<crate::command::MediaEvent>,
    out: Capture,
    seq: Vec<u16>,
    now: u64,
}

pub(super) fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn sine(freq: f64, amp: f64, start: u32) -> [i16; FRAME] {
    std::array::from_fn(|i| {
        let t = f64::from(start + i as u32) / 8000.0;
        (amp * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
    })
}

impl Rig {
    fn new(n: usize, options: ConfOptions) -> Rig {
        let mut table = StreamTable::default();
        let mut mixer = Mixer::new(1);
        let mut members = Vec::new();
        for i in 0..n {
            let mut s = Stream::new(
                PortHandle(i as u32),
                RelayId(i as u64 + 1),
                Side::A,
                Component::Rtp,
                0,
            );
            s.remote = Some(([127, 0, 0, 1], 9000 + i as u16).into());
            let idx = table.insert(s);
            mixer
                .join(
                    ConfId(1),
                    options,
                    &MemberSpec::new(RelayId(i as u64 + 1), Side::A, Law::Mu),
                    idx,
                    &mut table,
                    0,
                )
                .expect("join");
            members.push(idx);
        }
        Rig {
            table,
            mixer,
            members,
            events: Vec::new(),
            out: Capture::default(),
            seq: vec![0; n],
            now: 0,
        }
    }

    /// 20 ms: member `i` sends `frames[i]` (if any), then the wheel runs to the new time.
    fn step(&mut self, frames: &[Option<[i16; FRAME]>]) {
        for (i, f) in frames.iter().enumerate() {
            if let Some(f) = f {
                let payload: Vec<u8> = f.iter().map(|s| Law::Mu.encode(*s)).collect();
                let ts = u32::from(self.seq[i]) * FRAME as u32;
                let p = rtp(0, self.seq[i], ts, 100 + i as u32, &payload);
                self.seq[i] += 1;
                let r = self.table.get(self.members[i]).expect("stream").mix;
                self.mixer.push(r, &p, self.now);
            }
        }
        self.now += 20 * MS;
        self.mixer
            .run(self.now, &mut self.table, &mut self.events, &mut self.out);
    }

    /// Decoded audio member `i` received.
    fn heard(&self, i: usize) -> Vec<f64> {
        self.out
            .0
            .get(&self.members[i])
            .map(|ps| {
                ps.iter()
                    .flat_map(|p| p[12..].iter().map(|b| f64::from(Law::Mu.decode(*b))))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Goertzel power of `freq` in `x` (normalised by length): the squared amplitude over four.
fn power(x: &[f64], freq: f64) -> f64 {
    crate::testutil::tone_level(x.iter().copied(), freq, 8000).powi(2) / 4.0
}

const FREQS: [f64; 4] = [400.0, 700.0, 1100.0, 1500.0];

fn talk(r: &mut Rig, ticks: u32, who: &[usize], amp: f64) {
    for _ in 0..ticks {
        let frames: Vec<Option<[i16; FRAME]>> = (0..r.members.len())
            .map(|i| {
                who.contains(&i)
                    .then(|| sine(FREQS[i], amp, u32::from(r.seq[i]) * FRAME as u32))
            })
            .collect();
        r.step(&frames);
    }
}

#[test]
fn each_member_hears_the_others_and_not_itself() {
    let mut r = Rig::new(3, ConfOptions::default());
    talk(&mut r, 100, &[0, 1, 2], 6000.0);
    for (i, fi) in FREQS.iter().enumerate().take(3) {
        let h = r.heard(i);
        assert!(h.len() >= 90 * FRAME, "member {i} got {} samples", h.len());
        let tail = &h[h.len() - 50 * FRAME..];
        let own = power(tail, *fi);
        for (j, fj) in FREQS.iter().enumerate().take(3) {
            if j == i {
                continue;
            }
            let other = power(tail, *fj);
            assert!(
                other > 1000.0 * own.max(1e-3),
                "member {i}: tone of {j} {other:.1} vs own {own:.3}"
            );
        }
    }
    let talking = r
        .events
        .iter()
        .filter(|e| matches!(e, crate::command::MediaEvent::Talking { talking: true, .. }))
        .count();
    assert_eq!(talking, 3, "{:?}", r.events);
    assert_eq!(r.mixer.stats.late, 0);
}

#[test]
fn listeners_share_one_encoding() {
    let mut r = Rig::new(10, ConfOptions::default());
    talk(&mut r, 50, &[0, 1, 2], 4000.0);
    let per_tick = r.mixer.stats.encodes as f64 / r.mixer.stats.ticks as f64;
    // Steady state: 3 talkers' own mixes + 1 shared = 4 encodes for 10 members.
    assert!(per_tick <= 4.2, "{per_tick} encodes per tick");
    assert!(r.mixer.stats.packets_out >= 10 * 45);
}

#[test]
fn muted_members_are_not_heard_and_deaf_members_hear_nothing() {
    let mut r = Rig::new(3, ConfOptions::default());
    let upd = |muted, deaf| MemberUpdate {
        muted,
        deaf,
        ..MemberUpdate::default()
    };
    r.mixer
        .update(
            ConfId(1),
            r.members[0],
            &upd(Some(true), None),
            &mut r.table,
        )
        .expect("mute");
    r.mixer
        .update(
            ConfId(1),
            r.members[2],
            &upd(None, Some(true)),
            &mut r.table,
        )
        .expect("deafen");
    talk(&mut r, 60, &[0, 1, 2], 6000.0);
    let h1 = r.heard(1);
    let tail = &h1[h1.len() - 40 * FRAME..];
    assert!(power(tail, FREQS[2]) > 1000.0 * power(tail, FREQS[0]).max(1e-3));
    assert!(power(tail, FREQS[0]) < 1.0, "muted member 0 is not heard");
    assert!(r.heard(2).is_empty(), "deaf member 2 receives nothing");
}

#[test]
fn a_coach_is_heard_only_by_the_coached_member() {
    let mut r = Rig::new(3, ConfOptions::default());
    r.mixer
        .update(
            ConfId(1),
            r.members[2],
            &MemberUpdate {
                coach_of: Some(Some((RelayId(1), Side::A))),
                ..MemberUpdate::default()
            },
            &mut r.table,
        )
        .expect("coach");
    talk(&mut r, 60, &[0, 1, 2], 6000.0);
    let tail = |i: usize| {
        let h = r.heard(i);
        h[h.len() - 40 * FRAME..].to_vec()
    };
    let (h0, h1, h2) = (tail(0), tail(1), tail(2));
    assert!(
        power(&h0, FREQS[2]) > 100.0,
        "the coached member hears its coach"
    );
    assert!(power(&h1, FREQS[2]) < 1.0, "others do not hear the coach");
    assert!(
        power(&h2, FREQS[0]) > 100.0 && power(&h2, FREQS[1]) > 100.0,
        "the coach hears all"
    );
}

/// Three loud talkers: the listener's mix is a scaled copy of the exact sum (no clipping
/// distortion), where hard clipping of the same sum would be far off.
#[test]
fn loud_talkers_are_limited_not_clipped() {
    let mut r = Rig::new(4, ConfOptions::default());
    let amp = 20_000.0;
    talk(&mut r, 100, &[0, 1, 2], amp);
    let h = r.heard(3);
    let n = 50 * FRAME;
    let got = &h[h.len() - n..];
    // The reference: the three tones summed exactly, aligned by best lag.
    let start = h.len() - n;
    let snr = |lag: usize| {
        let refs: Vec<f64> = (0..n)
            .map(|k| {
                let t = (start + k + lag) as f64;
                (0..3)
                    .map(|i| amp * (2.0 * std::f64::consts::PI * FREQS[i] * t / 8000.0).sin())
                    .sum::<f64>()
            })
            .collect();
        let g = got.iter().zip(&refs).map(|(a, b)| a * b).sum::<f64>()
            / refs.iter().map(|b| b * b).sum::<f64>();
        let err: f64 = got
            .iter()
            .zip(&refs)
            .map(|(a, b)| (a - g * b).powi(2))
            .sum();
        let sig: f64 = got.iter().map(|a| a * a).sum();
        (10.0 * (sig / err.max(1e-9)).log10(), g, refs)
    };
    let (best, lag) = (0..FRAME * 8)
        .map(|lag| (snr(lag).0, lag))
        .fold((f64::MIN, 0), |a, b| if b.0 > a.0 { b } else { a });
    let (_, gain, refs) = snr(lag);
    assert!(best > 30.0, "limited mix SNR {best:.1} dB (gain {gain:.3})");
    assert!(
        got.iter().all(|v| v.abs() < 32_000.0),
        "peaks under full scale"
    );
    // The same sum hard-clipped to 16 bits is badly distorted.
    let clipped: Vec<f64> = refs.iter().map(|v| v.clamp(-32_768.0, 32_767.0)).collect();
    let g = clipped.iter().zip(&refs).map(|(a, b)| a * b).sum::<f64>()
        / refs.iter().map(|b| b * b).sum::<f64>();
    let err: f64 = clipped
        .iter()
        .zip(&refs)
        .map(|(a, b)| (a - g * b).powi(2))
        .sum();
    let sig: f64 = clipped.iter().map(|a| a * a).sum();
    let clip_snr = 10.0 * (sig / err).log10();
    assert!(
        clip_snr < best - 10.0,
        "hard clipping {clip_snr:.1} dB vs limiter {best:.1} dB"
    );
}

#[test]
fn on_time_packets_never_make_the_mix_conceal() {
    let mut r = Rig::new(3, ConfOptions::default());
    talk(&mut r, 200, &[0, 1, 2], 5000.0);
    assert_eq!(r.mixer.stats.concealed_frames, 0);
    assert_eq!(r.mixer.stats.late, 0);
}

#[test]
fn two_plain_members_are_forwarded_and_a_third_brings_mixing_back() {
    let opts = ConfOptions {
        allow_forwarding: true,
    };
    let mut r = Rig::new(2, opts);
    let (a, b) = (r.members[0], r.members[1]);
    assert_eq!(r.table.get(a).expect("a").peer, b);
    assert_eq!(r.table.get(b).expect("b").peer, a);
    talk(&mut r, 10, &[0, 1], 5000.0);
    assert_eq!(r.mixer.stats.ticks, 0, "no mixing while forwarding");
    let mut s = Stream::new(PortHandle(9), RelayId(9), Side::A, Component::Rtp, 0);
    s.remote = Some(([127, 0, 0, 1], 9999).into());
    let c = r.table.insert(s);
    r.mixer
        .join(
            ConfId(1),
            opts,
            &MemberSpec::new(RelayId(9), Side::A, Law::Mu),
            c,
            &mut r.table,
            r.now,
        )
        .expect("join");
    for idx in [a, b, c] {
        assert_eq!(r.table.get(idx).expect("s").peer, TO_MIXER);
    }
    // The third leaves: forwarding again; then one leaves: the last one is mixed alone.
    assert!(!r.mixer.leave(ConfId(1), c, &mut r.table).expect("leave"));
    assert_eq!(r.table.get(a).expect("a").peer, b);
    assert!(!r.mixer.leave(ConfId(1), b, &mut r.table).expect("leave"));
    assert_eq!(r.table.get(a).expect("a").peer, TO_MIXER);
    assert!(
        r.mixer.leave(ConfId(1), a, &mut r.table).expect("leave"),
        "last one ends it"
    );
    assert!(r.mixer.is_empty());
    assert_eq!(
        r.table.get(a).expect("a").peer,
        StreamIdx(u32::MAX),
        "relay link restored"
    );
}

#[test]
fn bad_commands_are_refused() {
    let mut r = Rig::new(2, ConfOptions::default());
    let a = r.members[0];
    let again = r.mixer.join(
        ConfId(1),
        ConfOptions::default(),
        &MemberSpec::new(RelayId(1), Side::A, Law::Mu),
        a,
        &mut r.table,
        0,
    );
    assert_eq!(again, Err(MixError::AlreadyMember));
    assert_eq!(
        r.mixer.leave(ConfId(2), a, &mut r.table),
        Err(MixError::NoConference(ConfId(2)))
    );
    let coach = MemberUpdate {
        coach_of: Some(Some((RelayId(77), Side::A))),
        ..MemberUpdate::default()
    };
    assert_eq!(
        r.mixer.update(ConfId(1), a, &coach, &mut r.table),
        Err(MixError::NoCoachee(ConfId(1)))
    );
    // Garbage into push is counted, never a panic.
    r.mixer.push(MixRef { conf: 0, member: 0 }, &[1, 2, 3], 0);
    r.mixer.push(
        MixRef { conf: 9, member: 9 },
        &rtp(0, 1, 1, 1, &[0; 160]),
        0,
    );
    assert_eq!(r.mixer.stats.bad, 2);
    r.mixer.push(
        r.table.get(a).expect("a").mix,
        &rtp(101, 1, 1, 1, &[0; 4]),
        0,
    );
    assert_eq!(r.mixer.stats.ignored, 1, "telephone-events are not mixed");
}

#[test]
fn conferences_are_spread_over_the_tick_wheel() {
    let mut table = StreamTable::default();
    let mut mixer = Mixer::new(3);
    for c in 0..40u64 {
        let mut s = Stream::new(PortHandle(c as u32), RelayId(c), Side::A, Component::Rtp, 0);
        s.remote = Some(([127, 0, 0, 1], 1000).into());
        let idx = table.insert(s);
        mixer
            .join(
                ConfId(c),
                ConfOptions::default(),
                &MemberSpec::new(RelayId(c), Side::A, Law::Mu),
                idx,
                &mut table,
                0,
            )
            .expect("join");
    }
    assert!(mixer.wheel.iter().all(|s| s.len() == 2), "2 per slot");
    let mut out = Capture::default();
    let mut ev: Vec<crate::command::MediaEvent> = Vec::new();
    mixer.run(999 * MS, &mut table, &mut ev, &mut out);
    let ticks = mixer.stats.ticks;
    mixer.run(999 * MS + 20 * MS, &mut table, &mut ev, &mut out);
    assert_eq!(
        mixer.stats.ticks - ticks,
        40,
        "every conference once per 20 ms"
    );
}

#[test]
fn beeps_are_heard_by_everyone() {
    let mut r = Rig::new(2, ConfOptions::default());
    r.mixer
        .beep(ConfId(1), Beep::Enter, &mut r.table)
        .expect("beep");
    talk(&mut r, 12, &[], 0.0);
    for i in 0..2 {
        let h = r.heard(i);
        assert!(
            power(&h, 660.0) > 100.0 && power(&h, 880.0) > 100.0,
            "member {i}"
        );
    }
}

#[test]
fn a_members_relay_partner_is_not_heard_also_when_forwarding() {
    use crate::pipeline::{process, Verdict};
    use crate::stats::DropReason;
    let mut r = Rig::new(
        2,
        ConfOptions {
            allow_forwarding: true,
        },
    );
    let (a, b) = (r.members[0], r.members[1]);
    // Member A's relay partner (its other leg), linked to A as a relay links legs.
    let mut x = Stream::new(PortHandle(50), RelayId(1), Side::B, Component::Rtp, 0);
    x.peer = a;
    x.remote = Some(([127, 0, 0, 1], 7050).into());
    r.table.insert(x);
    let mut ev: Vec<crate::command::MediaEvent> = Vec::new();
    let src = ([127, 0, 0, 1], 7000).into();
    let mut p = rtp(0, 1, 160, 9, &[0xff; 160]);
    let v = process(&mut r.table, PortHandle(50), src, &mut p, 0, &mut ev);
    assert_eq!(v, Verdict::Drop(DropReason::Superseded));
    let mut p = rtp(0, 1, 160, 9, &[0xff; 160]);
    let v = process(&mut r.table, PortHandle(0), src, &mut p, 0, &mut ev);
    assert!(
        matches!(v, Verdict::Forward { out, .. } if out == b),
        "members forward to each other: {v:?}"
    );
}

#[test]
fn forwarding_resumes_when_a_beep_ends() {
    let mut r = Rig::new(
        2,
        ConfOptions {
            allow_forwarding: true,
        },
    );
    let (a, b) = (r.members[0], r.members[1]);
    r.mixer
        .beep(ConfId(1), Beep::Exit, &mut r.table)
        .expect("beep");
    assert_eq!(
        r.table.get(a).expect("a").peer,
        TO_MIXER,
        "mixed while beeping"
    );
    talk(&mut r, 12, &[], 0.0);
    assert_eq!(r.table.get(a).expect("a").peer, b, "linked again");
    assert_eq!(r.table.get(b).expect("b").peer, a);
}
