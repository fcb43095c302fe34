//! Conferences with Opus members next to G.711 ones: each member sends a tone encoded in its
//! own codec, and what it receives is decoded the way its phone would (libopus at its rate,
//! or G.711) and checked by spectrum.

use super::tests::{rtp, Capture};
use super::*;
use crate::ids::{Component, PortHandle};
use crate::table::Stream;

const MS: u64 = 1_000_000;

/// One member's phone: its codec, encoder state and RTP counters.
struct Phone {
    codec: MemberCodec,
    idx: StreamIdx,
    enc: Option<::opus::Encoder>,
    seq: u16,
    /// Samples sent (at the phone's rate).
    sent: u64,
}

struct Rig {
    table: StreamTable,
    mixer: Mixer,
    phones: Vec<Phone>,
    out: Capture,
    events: Vec<crate::command::MediaEvent>,
    now: u64,
}

impl Rig {
    fn new(codecs: &[MemberCodec]) -> Rig {
        let mut r = Rig {
            table: StreamTable::default(),
            mixer: Mixer::new(3),
            phones: Vec::new(),
            out: Capture::default(),
            events: Vec::new(),
            now: 0,
        };
        for c in codecs {
            r.add(*c);
        }
        r
    }

    fn add(&mut self, codec: MemberCodec) -> usize {
        let i = self.phones.len();
        let mut s = Stream::new(
            PortHandle(i as u32),
            RelayId(i as u64 + 1),
            Side::A,
            Component::Rtp,
            0,
        );
        s.remote = Some(([127, 0, 0, 1], 9000 + i as u16).into());
        let idx = self.table.insert(s);
        self.mixer
            .join(
                ConfId(1),
                ConfOptions::default(),
                &MemberSpec::new(RelayId(i as u64 + 1), Side::A, codec),
                idx,
                &mut self.table,
                self.now,
            )
            .expect("join");
        let enc = match codec {
            MemberCodec::Opus { rate } => Some(
                ::opus::Encoder::new(rate, ::opus::Channels::Mono, ::opus::Application::Voip)
                    .expect("encoder"),
            ),
            MemberCodec::G711(_) => None,
        };
        self.phones.push(Phone {
            codec,
            idx,
            enc,
            seq: 0,
            sent: 0,
        });
        i
    }

    /// 20 ms: each phone with a tone in `tones` sends it (the others send nothing), then the
    /// wheel runs.
    fn step(&mut self, tones: &[(usize, &[f64])]) {
        for &(i, freqs) in tones {
            let ph = &mut self.phones[i];
            let rate = ph.codec.rate();
            let n = (rate / 50) as usize;
            let pcm: Vec<i16> = (0..n)
                .map(|k| {
                    let t = (ph.sent + k as u64) as f64 / f64::from(rate);
                    freqs
                        .iter()
                        .map(|f| 5000.0 * (2.0 * std::f64::consts::PI * f * t).sin())
                        .sum::<f64>() as i16
                })
                .collect();
            let (payload, ts) = match (ph.codec, ph.enc.as_mut()) {
                (MemberCodec::Opus { .. }, Some(e)) => (
                    e.encode_vec(&pcm, 1000).expect("encode"),
                    u32::from(ph.seq) * 960,
                ),
                (MemberCodec::G711(law), _) => (
                    pcm.iter().map(|s| law.encode(*s)).collect(),
                    u32::from(ph.seq) * 160,
                ),
                _ => unreachable!("an Opus phone has an encoder"),
            };
            let p = rtp(
                ph.codec.default_payload_type(),
                ph.seq,
                ts,
                50 + i as u32,
                &payload,
            );
            ph.seq += 1;
            ph.sent += n as u64;
            let r = self.table.get(ph.idx).expect("stream").mix;
            self.mixer.push(r, &p, self.now);
        }
        self.now += 20 * MS;
        self.mixer
            .run(self.now, &mut self.table, &mut self.events, &mut self.out);
    }

    /// What phone `i` heard, decoded at its rate.
    fn heard(&self, i: usize) -> Vec<f64> {
        let ph = &self.phones[i];
        let packets = self.out.0.get(&ph.idx).cloned().unwrap_or_default();
        match ph.codec {
            MemberCodec::G711(law) => packets
                .iter()
                .flat_map(|p| p[12..].iter().map(move |b| f64::from(law.decode(*b))))
                .collect(),
            MemberCodec::Opus { rate } => {
                let mut d = ::opus::Decoder::new(rate, ::opus::Channels::Mono).expect("decoder");
                let mut pcm = vec![0i16; 5760];
                let mut all = Vec::new();
                for p in &packets {
                    assert_eq!(p[1] & 0x7f, 111, "Opus payload type");
                    let n = d.decode(&p[12..], &mut pcm, false).expect("valid Opus");
                    all.extend(pcm[..n].iter().map(|s| f64::from(*s)));
                }
                all
            }
        }
    }
}

/// Amplitude of `freq` in `x` sampled at `rate`.
fn level(x: &[f64], freq: f64, rate: u32) -> f64 {
    crate::testutil::tone_level(x.iter().copied(), freq, rate)
}

fn opus(rate: u32) -> MemberCodec {
    MemberCodec::Opus { rate }
}

const TONES: [f64; 4] = [440.0, 770.0, 1270.0, 1870.0];

/// µ-law, Opus 8, 16 and 48 kHz in one conference: everyone hears the three others' tones,
/// decoded by its own codec, and not its own.
#[test]
fn mixed_codecs_hear_each_other_and_not_themselves() {
    let mut r = Rig::new(&[
        MemberCodec::G711(Law::Mu),
        opus(8_000),
        opus(16_000),
        opus(48_000),
    ]);
    assert_eq!(r.mixer.confs[0].as_ref().map(|c| c.rate), Some(48_000));
    for _ in 0..150 {
        let tones: Vec<(usize, &[f64])> = TONES
            .iter()
            .enumerate()
            .map(|(i, f)| (i, std::slice::from_ref(f)))
            .collect();
        r.step(&tones);
    }
    for (i, own_tone) in TONES.iter().enumerate() {
        let rate = r.phones[i].codec.rate();
        let h = r.heard(i);
        assert!(
            h.len() >= 140 * rate as usize / 50,
            "phone {i}: {} samples",
            h.len()
        );
        let tail = &h[h.len() - 100 * rate as usize / 50..];
        let own = level(tail, *own_tone, rate);
        for (j, f) in TONES.iter().enumerate() {
            if j == i {
                continue;
            }
            let other = level(tail, *f, rate);
            assert!(
                other > 500.0 && other > 20.0 * own,
                "phone {i} ({:?}): tone of {j} {other:.0}, own {own:.0}",
                r.phones[i].codec
            );
        }
    }
    assert_eq!(r.mixer.stats.late, 0);
    assert_eq!(r.mixer.stats.bad, 0);
}

/// A 5 kHz tone from a wideband member reaches the other wideband member, and is filtered
/// out for the narrowband ones (no 3 kHz alias in what the µ-law member hears).
#[test]
fn wideband_audio_reaches_wideband_members_without_aliasing_narrowband_ones() {
    let mut r = Rig::new(&[opus(16_000), opus(16_000), MemberCodec::G711(Law::Mu)]);
    assert_eq!(r.mixer.confs[0].as_ref().map(|c| c.rate), Some(16_000));
    for _ in 0..150 {
        r.step(&[(0, &[1000.0, 5000.0])]);
    }
    let wide = r.heard(1);
    let tail = &wide[wide.len() - 100 * 320..];
    let (w1, w5) = (level(tail, 1000.0, 16_000), level(tail, 5000.0, 16_000));
    assert!(
        w1 > 1000.0 && w5 > 1000.0,
        "16 kHz member: 1 kHz {w1:.0}, 5 kHz {w5:.0}"
    );
    let narrow = r.heard(2);
    let tail = &narrow[narrow.len() - 100 * 160..];
    let (n1, alias) = (level(tail, 1000.0, 8000), level(tail, 3000.0, 8000));
    assert!(n1 > 1000.0, "µ-law member hears the 1 kHz tone: {n1:.0}");
    assert!(alias < n1 / 100.0, "3 kHz alias {alias:.0} against {n1:.0}");
}

/// Opus listeners share one encoding of the mix (the talker gets its own), and all of them
/// receive the same bytes.
#[test]
fn opus_listeners_share_one_encoding() {
    let mut r = Rig::new(&[opus(16_000); 5]);
    for _ in 0..100 {
        r.step(&[(0, &[600.0])]);
    }
    let st = r.mixer.stats;
    let per_tick = st.encodes as f64 / st.ticks as f64;
    assert!(per_tick <= 2.1, "{per_tick} encodes per tick");
    let last: Vec<Vec<u8>> = (1..5)
        .map(|i| {
            r.out.0[&r.phones[i].idx]
                .last()
                .map(|p| p[12..].to_vec())
                .unwrap_or_default()
        })
        .collect();
    assert!(!last[0].is_empty());
    assert!(
        last.iter().all(|p| *p == last[0]),
        "listeners share a payload"
    );
    assert_eq!(
        st.concealed_frames, 0,
        "on-time Opus packets are never concealed"
    );
}

/// The mixing rate follows the members: 8 kHz for G.711 alone, up when a wideband member
/// joins, back down when it leaves; the G.711 members keep hearing each other across it.
#[test]
fn the_mixing_rate_follows_the_members() {
    let mut r = Rig::new(&[MemberCodec::G711(Law::Mu), MemberCodec::G711(Law::A)]);
    let rate = |r: &Rig| r.mixer.confs[0].as_ref().map(|c| c.rate);
    assert_eq!(rate(&r), Some(8_000));
    let w = r.add(opus(48_000));
    assert_eq!(rate(&r), Some(48_000));
    for _ in 0..50 {
        r.step(&[(0, &[440.0]), (w, &[1500.0])]);
    }
    r.mixer
        .leave(ConfId(1), r.phones[w].idx, &mut r.table)
        .expect("leave");
    assert_eq!(rate(&r), Some(8_000));
    r.out.0.clear();
    for _ in 0..50 {
        r.step(&[(0, &[440.0])]);
    }
    let h = r.heard(1);
    assert!(level(&h[h.len() / 2..], 440.0, 8000) > 1000.0);
}
