//! `voxedge bench mix`: conference mixing capacity of one worker core.
//!
//! Builds `--members` streams in a worker's stream table, joins them into conferences of
//! `--size` members, and runs the worker's own packet pipeline and mixer on one thread in
//! simulated time: every member sends a packet every 20 ms (phases spread over the period),
//! `--talkers` members per conference send a loud tone and the rest low background noise;
//! each packet goes through `pipeline::process` into the mixer (G.711 is decoded into the
//! member's jitter buffer on arrival; Opus waits there whole), and every conference ticks every
//! 20 ms (Opus decode, resampling, mix, limit, encode, RTP header) with mixed packets copied
//! out as a transmit would. Opus packets are encoded before the clock starts (one second per
//! source, looped), so what is measured is the appliance's side only. What is left out is
//! the packet I/O itself (socket or NIC), which the relay and DPDK benches measure.
//!
//! Reported: members per core (members × simulated seconds ÷ CPU seconds), CPU per member,
//! and the conference tick time percentiles (each conference tick timed on its own).

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use voxedge_dataplane::command::MediaEvent;
use voxedge_dataplane::g711::Law;
use voxedge_dataplane::ids::{Component, PortHandle, RelayId, Side, StreamIdx};
use voxedge_dataplane::mixer::{ConfId, ConfOptions, MemberCodec, MemberSpec, MixOut, Mixer};
use voxedge_dataplane::pipeline::{self, EventSink, Verdict};
use voxedge_dataplane::table::{Stream, StreamTable};

#[derive(Debug, Args)]
pub struct MixArgs {
    /// Members in all conferences.
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// Members per conference.
    #[arg(long, default_value_t = 10)]
    pub size: usize,
    /// Members per conference who talk (send a tone); the others send background noise.
    #[arg(long, default_value_t = 3)]
    pub talkers: usize,
    /// Codec: pcmu, pcma, or opus (16 kHz; opus8, opus16, opus48 for a rate; needs the
    /// `opus` feature).
    #[arg(long, default_value = "pcmu")]
    pub codec: String,
    /// Simulated seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct MixReport {
    pub codec: String,
    pub conference_size: usize,
    pub talkers: usize,
    pub members: usize,
    pub conferences: usize,
    pub simulated_seconds: u32,
    pub cpu_seconds: f64,
    /// Members one core carries at this load (20 ms frames).
    pub members_per_core: f64,
    pub cpu_us_per_member_second: f64,
    pub tick_us_p50: f64,
    pub tick_us_p99: f64,
    pub tick_us_max: f64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// Encodings per conference tick (shared mixes count once).
    pub encodes_per_tick: f64,
    pub concealed_frames: u64,
    pub late_packets: u64,
    pub talking_events: u64,
}

/// Counts events (talking starts and stops).
struct Count(u64);

impl EventSink for Count {
    fn emit(&mut self, e: MediaEvent) {
        if matches!(e, MediaEvent::Talking { .. }) {
            self.0 += 1;
        }
    }
}

/// Copies each mixed packet into a transmit buffer, as loading a burst would.
struct Sink {
    buf: [u8; 512],
    packets: u64,
    check: u64,
}

impl MixOut for Sink {
    fn send(&mut self, table: &mut StreamTable, idx: StreamIdx, packet: &[u8]) -> bool {
        // The destination lookup a transmit does.
        if table.get(idx).and_then(|s| s.remote).is_none() {
            return false;
        }
        let n = packet.len().min(self.buf.len());
        self.buf[..n].copy_from_slice(&packet[..n]);
        self.packets += 1;
        self.check = self.check.wrapping_add(u64::from(self.buf[n - 1]));
        true
    }
}

/// 50 frames (one second) of a tone or of noise at `rate`, 16-bit.
fn pcm_frames(rate: u32, talker: Option<usize>, seed: u32) -> Vec<Vec<i16>> {
    let n = (rate / 50) as usize;
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..50)
        .map(|f| {
            (0..n)
                .map(|i| {
                    let k = f * n + i;
                    let v = match talker {
                        Some(t) => {
                            let freq = 300.0 + 170.0 * t as f64;
                            6000.0
                                * (2.0 * std::f64::consts::PI * freq * k as f64 / f64::from(rate))
                                    .sin()
                        }
                        None => {
                            x ^= x << 13;
                            x ^= x >> 17;
                            x ^= x << 5;
                            f64::from((x % 101) as i32 - 50)
                        }
                    };
                    v as i16
                })
                .collect()
        })
        .collect()
}

/// The bench's codec: what members send and hear.
fn parse_codec(name: &str) -> anyhow::Result<MemberCodec> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "pcmu" | "ulaw" | "mu" => MemberCodec::G711(Law::Mu),
        "pcma" | "alaw" | "a" => MemberCodec::G711(Law::A),
        "opus" | "opus16" => MemberCodec::Opus { rate: 16_000 },
        "opus8" => MemberCodec::Opus { rate: 8_000 },
        "opus48" => MemberCodec::Opus { rate: 48_000 },
        other => bail!("--codec {other}: pcmu, pcma, opus (opus8, opus16, opus48)"),
    })
}

/// One second of a source's packets' payloads in `codec`.
fn payloads(codec: MemberCodec, talker: Option<usize>, seed: u32) -> anyhow::Result<Vec<Vec<u8>>> {
    let pcm = pcm_frames(codec.rate(), talker, seed);
    match codec {
        MemberCodec::G711(law) => Ok(pcm
            .iter()
            .map(|f| f.iter().map(|s| law.encode(*s)).collect())
            .collect()),
        MemberCodec::Opus { rate } => opus_payloads(rate, &pcm),
    }
}

#[cfg(feature = "opus")]
fn opus_payloads(rate: u32, pcm: &[Vec<i16>]) -> anyhow::Result<Vec<Vec<u8>>> {
    use opus::{Application, Channels, Encoder};
    let mut e = Encoder::new(rate, Channels::Mono, Application::Voip)?;
    pcm.iter().map(|f| Ok(e.encode_vec(f, 1000)?)).collect()
}

#[cfg(not(feature = "opus"))]
fn opus_payloads(_rate: u32, _pcm: &[Vec<i16>]) -> anyhow::Result<Vec<Vec<u8>>> {
    bail!("--codec opus: this build has no Opus (build with --features opus and libopus-dev)")
}

pub fn run(a: &MixArgs) -> anyhow::Result<MixReport> {
    let codec = parse_codec(&a.codec)?;
    if a.size < 2 || a.members < a.size || a.talkers > a.size || a.seconds == 0 {
        bail!("need --size ≥ 2, --members ≥ --size, --talkers ≤ --size, --seconds ≥ 1");
    }
    let confs = a.members / a.size;
    let members = confs * a.size;
    let mut table = StreamTable::with_capacity(members);
    let mut mixer = Mixer::new(7);
    let src: SocketAddr = ([10, 0, 0, 1], 4000).into();
    let talk: Vec<Vec<Vec<u8>>> = (0..a.talkers)
        .map(|t| payloads(codec, Some(t), 0))
        .collect::<anyhow::Result<_>>()?;
    let noise: Vec<Vec<Vec<u8>>> = (0..8)
        .map(|k| payloads(codec, None, k + 1))
        .collect::<anyhow::Result<_>>()?;
    let ts_step = match codec {
        MemberCodec::G711(_) => 160u32,
        MemberCodec::Opus { .. } => 960,
    };
    // Per member: its packet buffer (header + payload) and which payloads it sends.
    let mut packets: Vec<Vec<u8>> = Vec::with_capacity(members);
    let mut source: Vec<&Vec<Vec<u8>>> = Vec::with_capacity(members);
    for m in 0..members {
        let (c, k) = (m / a.size, m % a.size);
        let mut s = Stream::new(
            PortHandle(m as u32),
            RelayId(m as u64 + 1),
            Side::A,
            Component::Rtp,
            0,
        );
        s.remote = Some(src);
        s.clock_rate_hz = ts_step * 50;
        let idx = table.insert(s);
        mixer
            .join(
                ConfId(c as u64),
                ConfOptions::default(),
                &MemberSpec::new(RelayId(m as u64 + 1), Side::A, codec),
                idx,
                &mut table,
                0,
            )
            .map_err(|e| anyhow::anyhow!("join: {e}"))?;
        let mut p = vec![0u8; 12 + 1000];
        p[0] = 0x80;
        p[1] = codec.default_payload_type();
        p[8..12].copy_from_slice(&(m as u32 + 1).to_be_bytes());
        packets.push(p);
        source.push(if k < a.talkers {
            &talk[k]
        } else {
            &noise[m % noise.len()]
        });
    }
    let mut events = Count(0);
    let mut sink = Sink {
        buf: [0; 512],
        packets: 0,
        check: 0,
    };
    let ms_total = u64::from(a.seconds) * 1000;
    let cpu0 = crate::proc::cpu_seconds(std::process::id()).context("reading CPU time")?;
    let t0 = Instant::now();
    for ms in 0..ms_total {
        let now = ms * 1_000_000;
        // Members whose 20 ms phase is this millisecond send their packet.
        let phase = (ms % 20) as usize;
        let frame = (ms / 20) as u32;
        let mut m = phase;
        while m < members {
            let p = &mut packets[m];
            let payload = &source[m][frame as usize % 50];
            let len = 12 + payload.len();
            p[2..4].copy_from_slice(&(frame as u16).to_be_bytes());
            p[4..8].copy_from_slice(&(frame.wrapping_mul(ts_step)).to_be_bytes());
            p[12..len].copy_from_slice(payload);
            if let Verdict::Mix(r) = pipeline::process(
                &mut table,
                PortHandle(m as u32),
                src,
                &mut p[..len],
                now,
                &mut events,
            ) {
                mixer.push(r, &p[..len], now);
            }
            m += 20;
        }
        mixer.run(now, &mut table, &mut events, &mut sink);
    }
    let wall = t0.elapsed().as_secs_f64();
    // /proc counts in clock ticks (10 ms): never divide by zero on a tiny run.
    let cpu = (crate::proc::cpu_seconds(std::process::id())? - cpu0).max(0.01);
    std::hint::black_box(wall);
    std::hint::black_box(sink.check);
    let h = &mixer.tick_ns;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let st = mixer.stats;
    Ok(MixReport {
        codec: match codec {
            MemberCodec::G711(Law::Mu) => "PCMU".into(),
            MemberCodec::G711(Law::A) => "PCMA".into(),
            MemberCodec::Opus { rate } => format!("OPUS/{rate}"),
        },
        conference_size: a.size,
        talkers: a.talkers,
        members,
        conferences: confs,
        simulated_seconds: a.seconds,
        cpu_seconds: cpu,
        members_per_core: members as f64 * f64::from(a.seconds) / cpu,
        cpu_us_per_member_second: cpu * 1e6 / (members as f64 * f64::from(a.seconds)),
        tick_us_p50: us(0.5),
        tick_us_p99: us(0.99),
        tick_us_max: h.max() as f64 / 1000.0,
        packets_in: st.packets_in,
        packets_out: sink.packets,
        encodes_per_tick: st.encodes as f64 / st.ticks.max(1) as f64,
        concealed_frames: st.concealed_frames,
        late_packets: st.late,
        talking_events: events.0,
    })
}

pub fn main(a: &MixArgs) -> anyhow::Result<()> {
    let r = run(a)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} conferences × {} members ({} talking), {}, {} s simulated on one thread",
            r.conferences, r.conference_size, r.talkers, r.codec, r.simulated_seconds
        );
        println!(
            "  CPU {:.2} s → {:.0} members per core ({:.2} CPU-µs per member-second)",
            r.cpu_seconds, r.members_per_core, r.cpu_us_per_member_second
        );
        println!(
            "  conference tick p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs (frame: 20,000 µs)",
            r.tick_us_p50, r.tick_us_p99, r.tick_us_max
        );
        println!(
            "  packets in {}, out {}; {:.2} encodes per tick; concealed {}, late {}; talking events {}",
            r.packets_in, r.packets_out, r.encodes_per_tick, r.concealed_frames, r.late_packets,
            r.talking_events
        );
    }
    Ok(())
}
