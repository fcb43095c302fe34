//! `voxedge bench dpdk`: RTP-aware forwarding rate of the DPDK backend.
//!
//! `--mode null` (one process): the dataplane runs on a `net_null` port whose mbuf pool is
//! pre-filled with valid RTP frames, spread over the streams, each addressed to a stream of a
//! relay whose far end is the appliance itself. `net_null` "receives" those mbufs as the pool
//! hands them out and the worker parses, looks up, accounts, rewrites and transmits every one of them through the full
//! RTP path; the forwarded frame is identical to the received one, so the traffic sustains
//! itself with no generator cost. Reports packets/s per worker core and the time each packet
//! spends inside the worker (receive → transmit).
//!
//! `--mode memif` (two processes): `voxedge media` on a `net_memif` server port, and this
//! process as a DPDK load generator on the client end: paced RTP for N streams with a TSC
//! timestamp in the payload, forwarded frames received back; reports delivered rate, loss and
//! added latency (generator clock, both processes on one host).

use clap::{Args, ValueEnum};
use voxedge_dataplane::config::OverlapBursts;

/// Which port the bench drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Null,
    Memif,
}

/// Options of `voxedge bench dpdk`.
#[derive(Debug, Clone, Args)]
pub struct DpdkArgs {
    #[arg(long, value_enum, default_value_t = Mode::Null)]
    pub mode: Mode,
    /// Active streams (each relay has two).
    #[arg(long, default_value_t = 100_000)]
    pub streams: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Worker cores of the dataplane (pinned from core 1).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// memif: offered packets/s in total (0 = as fast as the generator can).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Verify UDP checksums over the whole datagram in software on receive (the dataplane's
    /// `verify_checksums`) instead of carrying them to the forwarded datagram (shows what
    /// verifying costs).
    #[arg(long)]
    pub verify_checksums: bool,
    /// `auto`, `on` or `off`: the worker holds each burst until its next receive and fetches
    /// the burst's streams while it processes the one before (`dataplane.overlap_bursts`;
    /// `auto` is on for DPDK). `off` shows the rate and latency without it.
    #[arg(long, default_value = "auto")]
    pub overlap_bursts: OverlapBursts,
    /// null: relays rewrite the SSRC, sequence number and timestamp of what they send, as a
    /// B2BUA that hides the far side's numbering does. Without it every frame keeps the SSRC
    /// and sequence number it was filled with as it walks the chain, so a stream's RTP
    /// statistics see sources change and numbers repeat; with it a stream hears the one SSRC
    /// of the stream before it with consecutive sequence numbers, as from a real source, and
    /// every packet takes the rewrite path (and the adjusted UDP checksum).
    #[arg(long)]
    pub rewrite: bool,
    /// null: mbufs in the port's pool, each filled with a frame (4095 × 2 KiB fits in a
    /// server's last-level cache, as packets DMA'd by a NIC with DDIO do).
    #[arg(long, default_value_t = 4095)]
    pub mbufs: usize,
    /// null: per-lcore mempool cache of the pool (the dataplane's default, 256, is what a
    /// deployment runs with). With a cache the worker takes back the mbufs it freed last, so
    /// only about a burst's worth of frames circulate and their data stays in the core's own
    /// caches; with 0 every mbuf of the pool circulates in turn (FIFO), each transmit frees
    /// into the pool's shared ring one mbuf at a time, and the frames' data comes from the
    /// last-level cache.
    #[arg(long, default_value_t = 256)]
    pub mbuf_cache: u32,
    /// Use hugepages (default: `--no-huge`, which works anywhere but is slower).
    #[arg(long)]
    pub hugepages: bool,
    /// null: first measure DPDK's own io-forward rate on the worker's core with `dpdk-testpmd`
    /// (two `net_null` ports, Debian package `dpdk-dev`) and report the bench's rate as a share of
    /// it, which compares across machines where packets/s alone does not.
    #[arg(long)]
    pub baseline: bool,
    /// memif: run `voxedge media`'s memif port in copy mode. By default it is zero-copy: the
    /// generator's side copies each frame into and out of the appliance's own mbufs, as a
    /// NIC's DMA would, so the workers' figures leave out the copies memif adds.
    #[arg(long)]
    pub memif_copy: bool,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
}

/// Runs the bench.
///
/// # Errors
/// The bench could not be set up.
#[cfg(not(feature = "dpdk"))]
pub fn main(_a: &DpdkArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "this voxedge was built without DPDK support; rebuild with `--features dpdk` \
         (needs libdpdk-dev, pkg-config and libclang-dev)"
    )
}

#[cfg(feature = "dpdk")]
pub use imp::main;

#[cfg(feature = "dpdk")]
mod baseline;
#[cfg(feature = "dpdk")]
mod memif;

/// EAL arguments of the bench's DPDK processes. Each run uses a file prefix of its own, so
/// with hugepages the EAL must unlink its hugepage files once mapped: otherwise every run
/// would leave its pages held by files in hugetlbfs after it exits.
#[cfg(feature = "dpdk")]
fn eal_args(hugepages: bool) -> Vec<String> {
    let mut v = vec!["--no-shconf".to_string(), "--log-level=*:error".to_string()];
    if hugepages {
        v.push("--huge-unlink".into());
    }
    v
}

/// The middle value of `v` (the mean of the two middle ones for an even count); `None` when
/// empty.
#[cfg(feature = "dpdk")]
fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

#[cfg(feature = "dpdk")]
mod imp {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use hdrhistogram::Histogram;
    use rand::rngs::SmallRng;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use serde_json::{json, Value};
    use voxedge_dataplane::config::{Backend, DataplaneConfig, DpdkConfig};
    use voxedge_dataplane::ids::RelayId;
    use voxedge_dataplane::wire::frame::build_udp_frame;
    use voxedge_dataplane::wire::rtp::emit_header;
    use voxedge_dataplane::{Dataplane, LegRequest, RelayRequest};

    use super::{baseline, median, memif, DpdkArgs, Mode};

    /// G.711 20 ms: 160 bytes of audio + 12 of RTP header = 214-byte frames on the wire.
    const RTP_PAYLOAD: usize = 172;
    const FRAME: usize = 14 + 20 + 8 + RTP_PAYLOAD;
    /// Relays per media address (a port range holds ~32k pairs; each relay takes two).
    const RELAYS_PER_ADDRESS: usize = 15_000;
    const PORT_MIN: u16 = 2000;
    const PORT_MAX: u16 = 65_000;

    pub fn main(a: &DpdkArgs) -> anyhow::Result<()> {
        if a.baseline && a.mode != Mode::Null {
            bail!("--baseline applies to --mode null (memif shares the cores with its generator)");
        }
        if a.memif_copy && a.mode != Mode::Memif {
            bail!("--memif-copy applies to --mode memif");
        }
        if a.rewrite && a.mode != Mode::Null {
            bail!("--rewrite applies to --mode null (memif's generator numbers each stream consecutively already)");
        }
        let mut report = match a.mode {
            Mode::Null => null_mode(a)?,
            Mode::Memif => memif::run(a)?,
        };
        if let Value::Object(m) = &mut report {
            m.insert("build".into(), build_info());
        }
        if a.json {
            println!("{report}");
        } else {
            print_report(&report);
        }
        Ok(())
    }

    /// What the binary was compiled for: the x86-64 instruction-set extensions beyond the
    /// baseline that the compiler could use (`-C target-cpu=…` in `RUSTFLAGS`), so a figure
    /// can be repeated with the same build. The list is what `cfg!(target_feature)` says of
    /// this crate, which is built with the same flags as the dataplane.
    fn build_info() -> Value {
        let mut features = Vec::new();
        macro_rules! check {
            ($($f:tt),*) => {$(
                if cfg!(target_feature = $f) {
                    features.push($f);
                }
            )*};
        }
        check!(
            "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "bmi1", "bmi2", "fma",
            "lzcnt", "movbe", "avx512f"
        );
        json!({
            "arch": std::env::consts::ARCH,
            "target_features": features,
            "optimized": !cfg!(debug_assertions),
            "note": "instruction-set extensions beyond the architecture's baseline that this build may use; none: a portable build (no -C target-cpu); see docs/dpdk.md, building for the server's CPU",
        })
    }

    fn addr(k: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 99, (k / 250) as u8, (k % 250) as u8 + 1))
    }

    fn dataplane_config(a: &DpdkArgs, relays: usize, vdev: String, mbufs: u32) -> DataplaneConfig {
        let addresses = relays.div_ceil(RELAYS_PER_ADDRESS).max(1);
        let cores: Vec<usize> = (1..=a.workers).collect();
        DataplaneConfig {
            backend: Backend::Dpdk,
            workers: a.workers,
            pin_cores: true,
            cores,
            bind: addr(0),
            extra_addresses: (1..addresses).map(addr).collect(),
            port_min: PORT_MIN,
            port_max: PORT_MAX,
            media_timeout_ms: 0,
            streams_per_worker_max: relays * 4 + 16,
            overlap_bursts: a.overlap_bursts,
            dpdk: DpdkConfig {
                vdevs: vec![vdev],
                port: "0".into(),
                no_huge: !a.hugepages,
                memory_mb: vec![
                    (u64::from(mbufs) * 2600 / (1 << 20)) as u32 + 256 + (relays / 1000) as u32,
                ],
                file_prefix: format!("vxbench{}", std::process::id()),
                eal_args: super::eal_args(a.hugepages),
                mbufs,
                mbuf_cache: a.mbuf_cache,
                addresses: (0..addresses).map(|k| format!("{}/16", addr(k))).collect(),
                verify_checksums: a.verify_checksums,
                ..DpdkConfig::default()
            },
            ..DataplaneConfig::default()
        }
    }

    fn rtp_frame(
        buf: &mut [u8],
        mac: [u8; 6],
        src: SocketAddr,
        dst: SocketAddr,
        ssrc: u32,
    ) -> usize {
        let mut payload = [0xd5u8; RTP_PAYLOAD];
        let _ = emit_header(&mut payload, 0, false, 1, 160, ssrc);
        build_udp_frame(buf, mac, mac, None, src, dst, 46, &payload).unwrap_or(0)
    }

    /// A stream's (local, remote) addresses.
    type StreamEnds = (SocketAddr, SocketAddr);

    /// Creates `relays` relays chained into a ring through the appliance itself, in a fixed
    /// shuffled order (the same seed every run): with Rₖ the k-th relay along the chain, Rₖ's leg A talks to
    /// Rₖ₋₁'s leg B and its leg B to Rₖ₊₁'s leg A. A frame received on Aₖ leaves Bₖ towards
    /// Aₖ₊₁ and one received on Bₖ leaves Aₖ towards Bₖ₋₁, so every mbuf walks through every
    /// stream in turn. The chain is shuffled so that a frame's consecutive hops land on
    /// relays created far apart (unrelated places in the stream table), as the packets of
    /// unrelated calls do, rather than walking the table in creation order where the CPU's
    /// prefetchers would follow it. Returns each stream's (local, remote) pair in chain
    /// order, and the relays' ids. With `rewrite` the relays rewrite SSRC/seq/ts.
    fn chained_relays(
        dp: &Dataplane,
        relays: usize,
        rewrite: bool,
    ) -> anyhow::Result<(Vec<StreamEnds>, Vec<RelayId>)> {
        use voxedge_dataplane::command::LegUpdate;
        use voxedge_dataplane::ids::Side;
        let mut infos = Vec::with_capacity(relays);
        for i in 0..relays {
            let leg = LegRequest {
                rtcp_mux: true,
                ..Default::default()
            };
            let info = dp
                .create_relay(RelayRequest {
                    legs: [leg, leg],
                    rewrite,
                    ..Default::default()
                })
                .with_context(|| format!("creating relay {i} of {relays}"))?;
            infos.push(info);
        }
        let mut order: Vec<usize> = (0..relays).collect();
        order.shuffle(&mut SmallRng::seed_from_u64(7));
        let mut streams = Vec::with_capacity(relays * 2);
        for k in 0..relays {
            let i = order[k];
            let prev = infos[order[(k + relays - 1) % relays]].legs[1].local;
            let next = infos[order[(k + 1) % relays]].legs[0].local;
            let (a, b) = (infos[i].legs[0].local, infos[i].legs[1].local);
            for (side, remote) in [(Side::A, prev), (Side::B, next)] {
                dp.update_leg(
                    infos[i].id,
                    side,
                    LegUpdate {
                        remote: Some(remote),
                        ..Default::default()
                    },
                )
                .context("pointing a leg at its neighbour")?;
            }
            streams.push((a, prev));
            streams.push((b, next));
        }
        Ok((streams, infos.iter().map(|i| i.id).collect()))
    }

    /// The share of up to 64 relays' RTP streams (spread over the table) whose extended
    /// highest sequence number (RFC 3550) advanced in 200 ms while the traffic flows: about 1
    /// when streams hear consecutive sequence numbers as from a real source (`--rewrite`), 0
    /// when every frame carries the sequence number it was filled with. `None` when no
    /// snapshot could be taken.
    fn seq_advancing_share(dp: &Dataplane, relays: &[RelayId]) -> Option<f64> {
        let step = (relays.len() / 64).max(1);
        let sample: Vec<RelayId> = relays.iter().step_by(step).take(64).copied().collect();
        let seqs = || -> Vec<Option<[u32; 2]>> {
            sample
                .iter()
                .map(|&id| {
                    dp.query_relay(id)
                        .ok()
                        .map(|(_, s)| s.legs.map(|l| l.rtp.extended_max_seq))
                })
                .collect()
        };
        let first = seqs();
        std::thread::sleep(Duration::from_millis(200));
        let second = seqs();
        let pairs: Vec<([u32; 2], [u32; 2])> = first
            .into_iter()
            .zip(second)
            .filter_map(|(a, b)| Some((a?, b?)))
            .collect();
        let streams = pairs.len() * 2;
        let advanced: usize = pairs
            .iter()
            .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| y > x).count())
            .sum();
        (streams > 0).then(|| advanced as f64 / streams as f64)
    }

    struct Snap {
        at: Instant,
        rx: u64,
        forwarded: u64,
        drops: u64,
        busy: Histogram<u64>,
    }

    fn snap(dp: &Dataplane) -> Snap {
        let port = dp.dpdk_port().expect("dpdk dataplane");
        let rx = port
            .stats
            .iter()
            .map(|s| s.get(voxedge_dataplane::io::dpdk::Stat::RxPackets))
            .sum();
        let mut busy = Histogram::new_with_bounds(1, 10_000_000, 2).expect("bounds");
        let mut forwarded = 0;
        let mut drops = 0;
        for w in dp.workers() {
            forwarded += w.packets_forwarded.load(Ordering::Relaxed);
            drops += w.drops().total();
            if let Ok(h) = w.burst_ns.lock() {
                let _ = busy.add(&*h);
            }
        }
        Snap {
            at: Instant::now(),
            rx,
            forwarded,
            drops,
            busy,
        }
    }

    /// Waits out the measured window of `seconds` that starts at `start`, reading the
    /// forwarded count at each whole second: the M packets/s per worker core of each second
    /// (none for a window shorter than two seconds, whose one rate is the bench's result).
    fn sample_rates(dp: &Dataplane, start: &Snap, seconds: f64, workers: usize) -> Vec<f64> {
        let end = start.at + Duration::from_secs_f64(seconds);
        let whole = if seconds >= 2.0 { seconds as usize } else { 0 };
        let mut samples = Vec::with_capacity(whole);
        let (mut at, mut forwarded) = (start.at, start.forwarded);
        for k in 1..=whole {
            let due = start.at + Duration::from_secs(k as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let s = snap(dp);
            let secs = s.at.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                samples.push((s.forwarded - forwarded) as f64 / secs / workers as f64 / 1e6);
            }
            (at, forwarded) = (s.at, s.forwarded);
        }
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        samples
    }

    fn null_mode(a: &DpdkArgs) -> anyhow::Result<Value> {
        if a.streams < 2 {
            bail!("--streams must be at least 2");
        }
        let relays = a.streams / 2;
        let mbufs = ((a.mbufs.max(1024) + 1).next_power_of_two() - 1) as u32;
        let cfg = dataplane_config(a, relays, format!("net_null0,size={FRAME}"), mbufs);
        // Before this process starts its own EAL, on the core the worker will have.
        let base = if a.baseline {
            let core = cfg.cores.first().copied().unwrap_or(1);
            Some(baseline::testpmd(core, a.duration, a.hugepages)?)
        } else {
            None
        };
        let t0 = Instant::now();
        let dp = Dataplane::start(cfg).context("starting the DPDK dataplane on net_null")?;
        let (streams, relay_ids) = chained_relays(&dp, relays, a.rewrite)?;
        let setup_s = t0.elapsed().as_secs_f64();
        let port = dp.dpdk_port().context("dpdk port")?.clone();
        let mac = port.mac;
        let fill = |i: usize, buf: &mut [u8]| {
            // Spread the circulating frames evenly over the streams.
            let (local, remote) = streams[i * streams.len() / mbufs as usize % streams.len()];
            rtp_frame(buf, mac, remote, local, i as u32)
        };
        let filled = port.fill_pool(fill);
        std::thread::sleep(Duration::from_secs_f64(a.warmup));
        let before = dp.backend_metrics();
        let s0 = snap(&dp);
        let samples = sample_rates(&dp, &s0, a.duration, a.workers);
        let s1 = snap(&dp);
        let after = dp.backend_metrics();
        let seq_advancing = seq_advancing_share(&dp, &relay_ids);
        let secs = s1.at.duration_since(s0.at).as_secs_f64();
        let rx = (s1.rx - s0.rx) as f64;
        let fwd = (s1.forwarded - s0.forwarded) as f64;
        let mut lat = s1.busy.clone();
        let _ = lat.subtract(&s0.busy);
        let q = |p: f64| lat.value_at_quantile(p) as f64 / 1000.0;
        // Counters of the measured window, and apart from them what set-up and warm-up
        // counted: while the relays are created the worker receives net_null's own empty
        // frames (the pool is filled with RTP only afterwards), which it counts as
        // unsupported or malformed and drops.
        let nonzero = |m: Vec<(String, &'static str, u64)>| -> serde_json::Map<String, Value> {
            m.into_iter()
                .filter(|(_, _, v)| *v > 0)
                .map(|(n, _, v)| (n, json!(v)))
                .collect()
        };
        // Both lists come from the same call, in the same order.
        let window = after
            .into_iter()
            .zip(&before)
            .map(|((n, h, v), (_, _, b))| (n, h, v.saturating_sub(*b)))
            .collect();
        let backend = nonzero(window);
        let backend_setup = nonzero(before);
        let mpps_per_core = fwd / secs / a.workers as f64 / 1e6;
        Ok(json!({
            "bench": "dpdk",
            "mode": "null",
            "streams": a.streams,
            "relays": relays,
            "workers": a.workers,
            "frame_bytes": FRAME,
            "mbufs_filled": filled,
            "mbuf_cache": a.mbuf_cache,
            "traffic_note": "relays chained through the appliance in a shuffled order: each frame walks every stream in turn, its consecutive hops on relays far apart in the table, so all streams carry traffic",
            "hugepages": a.hugepages,
            "verify_checksums": a.verify_checksums,
            "overlap_bursts": a.overlap_bursts.as_str(),
            "overlapped": dp.workers().all(|w| w.overlapped.load(Ordering::Relaxed)),
            "rewrite": a.rewrite,
            "seq_advancing_share": seq_advancing,
            "seq_advancing_note": "share of sampled RTP streams (up to 128) whose extended highest sequence number advanced in 200 ms after the window: about 1 with --rewrite (consecutive sequence numbers, as from a real source), 0 without (every frame keeps the sequence number it was filled with)",
            "setup_s": setup_s,
            "duration_s": secs,
            "offered_pps": rx / secs,
            "delivered_pps": fwd / secs,
            "loss_ratio": if rx > 0.0 { ((rx - fwd) / rx).max(0.0) } else { 1.0 },
            "drops": s1.drops - s0.drops,
            "mpps_per_core": mpps_per_core,
            "samples_mpps_per_core": samples,
            "samples_note": "the rate of each whole second of the measured window (none when it is shorter than two seconds): their spread shows how steady the machine was",
            "mpps_per_core_min": samples.iter().copied().reduce(f64::min),
            "mpps_per_core_median": median(&samples),
            "mpps_per_core_max": samples.iter().copied().reduce(f64::max),
            "ns_per_packet": if fwd > 0.0 { secs * a.workers as f64 * 1e9 / fwd } else { 0.0 },
            "latency_us_p50": q(0.5),
            "latency_us_p99": q(0.99),
            "latency_us_p999": q(0.999),
            "latency_note": "null mode: time inside the worker from the end of the rx_burst that brought the packet to the end of its tx_burst (with overlapped bursts this includes the wait for the next rx_burst and the held burst's turn)",
            "backend_counters": backend,
            "backend_counters_note": "backend counters over the measured window; backend_counters_setup: before it (set-up and warm-up)",
            "backend_counters_setup": backend_setup,
            "baseline": base,
            "relative_to_baseline": base.as_ref().and_then(|b| b["mpps_per_core"].as_f64())
                .map(|b| mpps_per_core / b),
        }))
    }

    pub(super) fn print_report(r: &Value) {
        println!(
            "voxedge bench dpdk --mode {}: {} streams, {} worker(s), {} s, overlapped bursts {}",
            r["mode"].as_str().unwrap_or("?"),
            r["streams"],
            r["workers"],
            r["duration_s"],
            r["overlap_bursts"].as_str().unwrap_or("?")
        );
        println!(
            "  delivered {:.0} packets/s ({:.2} M packets/s per worker core, {:.1} ns/packet), loss {:.4}",
            r["delivered_pps"].as_f64().unwrap_or(0.0),
            r["mpps_per_core"].as_f64().unwrap_or(0.0),
            r["ns_per_packet"].as_f64().unwrap_or(0.0),
            r["loss_ratio"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  latency p50 {} µs, p99 {} µs, p99.9 {} µs ({})",
            r["latency_us_p50"],
            r["latency_us_p99"],
            r["latency_us_p999"],
            r["latency_note"].as_str().unwrap_or("")
        );
        if let (Some(ratio), Some(per_busy)) = (
            r["worker_busy_ratio"].as_f64(),
            r["mpps_per_busy_core"].as_f64(),
        ) {
            let zc = if r["memif_zero_copy"].as_bool() == Some(true) {
                "zero-copy"
            } else {
                "copy mode"
            };
            println!(
                "  workers busy {:.0} % of the {} phase ({zc}): {per_busy:.2} M packets/s per \
                 busy second of a worker core",
                ratio * 100.0,
                r["phases"][0]["phase"].as_str().unwrap_or("first")
            );
        }
        if let (Some(lo), Some(med), Some(hi)) = (
            r["mpps_per_core_min"].as_f64(),
            r["mpps_per_core_median"].as_f64(),
            r["mpps_per_core_max"].as_f64(),
        ) {
            println!(
                "  per second: median {med:.2}, min {lo:.2}, max {hi:.2} M packets/s per worker core"
            );
        }
        if let Some(share) = r["seq_advancing_share"].as_f64() {
            let how = if r["rewrite"].as_bool() == Some(true) {
                "rewrite SSRC, sequence numbers and timestamps"
            } else {
                "forward RTP headers as they are"
            };
            println!(
                "  traffic: relays {how}; the sequence numbers of {:.0} % of sampled streams advanced",
                share * 100.0
            );
        }
        if let Some(f) = r["build"]["target_features"].as_array() {
            let list: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
            if list.is_empty() {
                println!("  build: portable (no instruction-set extensions beyond the baseline)");
            } else {
                println!("  build: may use {}", list.join(" "));
            }
        }
        if let (Some(b), Some(rel)) = (
            r["baseline"]["mpps_per_core"].as_f64(),
            r["relative_to_baseline"].as_f64(),
        ) {
            println!(
                "  baseline: dpdk-testpmd io-forward {b:.2} M packets/s on the worker's core \
                 just before; this bench forwards {:.1} % of that",
                rel * 100.0
            );
        }
    }
}

#[cfg(all(test, feature = "dpdk"))]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_no_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.5]), Some(7.5));
        assert_eq!(median(&[]), None);
    }
}
