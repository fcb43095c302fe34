//! `voxedge bench media`: the media cache's two figures.
//!
//! - **Cache-hit latency**: a cache in a temporary directory with a temporary SQLite store,
//!   primed with `--entries` URLs from a local origin (this process) serving a WAV with
//!   `max-age`; then `--lookups` plays are timed one by one (hdrhistogram, ns) in two cases:
//!   *cold load* (nobody else plays the entry, so each hit reads its frame file — from the page
//!   cache) and *shared* (a call already plays it: the loaded frames are shared).
//! - **Transcode throughput**: an MP3 (the bundled 10 s espeak-ng recording, or `--input`)
//!   decoded, resampled to 8 kHz and encoded to µ-law frames, repeated for `--seconds`; and the
//!   whole preparation (µ-law, A-law, 16 and 48 kHz PCM). Reported as seconds of audio per
//!   CPU-second of the measuring thread (`/proc/thread-self/schedstat`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use super::decode::{self, Variant};
use super::{MediaCache, Source};
use crate::config::MediaConfig;
use crate::voice::audio::{self, Codec, Synthesizer};
use crate::voice::fetch::{Fetcher, Timeouts};

/// Options of `voxedge bench media`.
#[derive(Debug, Clone, Args)]
pub struct MediaArgs {
    /// Distinct cached URLs the lookups cycle through.
    #[arg(long, default_value_t = 100)]
    pub entries: usize,
    /// Timed cache hits per case.
    #[arg(long, default_value_t = 100_000)]
    pub lookups: usize,
    /// Seconds of transcoding per case.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// MP3 to transcode (default: the bundled 10 s speech recording).
    #[arg(long)]
    pub input: Option<std::path::PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

const SPEECH_MP3: &[u8] = include_bytes!("../../../tests/media/speech.mp3");
const KNOWN_WAV: &[u8] = include_bytes!("../../../tests/media/known.wav");

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Runs the bench.
///
/// # Errors
/// The origin, store or cache could not be set up, or the input does not decode.
pub fn main(a: &MediaArgs) -> anyhow::Result<()> {
    let mp3 = match &a.input {
        Some(p) => std::fs::read(p)?,
        None => SPEECH_MP3.to_vec(),
    };
    // Transcoding.
    let probe = decode::decode(&mp3, "audio/mpeg", Some("mp3"), 3600)?;
    let audio_secs = probe.samples.len() as f64 / f64::from(probe.rate);
    let transcode = |all: bool| -> anyhow::Result<(u64, f64)> {
        let (t0, c0) = (Instant::now(), thread_cpu());
        let mut runs = 0u64;
        while t0.elapsed() < Duration::from_secs(a.seconds.max(1)) || runs == 0 {
            let mono = decode::decode(&mp3, "audio/mpeg", Some("mp3"), 3600)?;
            if all {
                let p = decode::prepare(&mono)?;
                anyhow::ensure!(p.file(Variant::Pcmu).is_some(), "no µ-law");
            } else {
                let m = audio::encode(&decode::to_8k(&mono)?, Codec::Pcmu);
                anyhow::ensure!(m.frame_count() > 0, "no frames");
            }
            runs += 1;
        }
        let cpu = (thread_cpu() - c0).as_secs_f64();
        Ok((runs, audio_secs * runs as f64 / cpu.max(1e-9)))
    };
    let (runs_ulaw, ulaw_rate) = transcode(false)?;
    let (runs_all, all_rate) = transcode(true)?;

    // Cache hits.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cold, shared, stats) = rt.block_on(hits(a))?;
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let lat = |h: &Histogram<u64>| {
        json!({
            "lookups": h.len(),
            "p50_us": us(h, 0.5),
            "p90_us": us(h, 0.9),
            "p99_us": us(h, 0.99),
            "p999_us": us(h, 0.999),
            "max_us": h.max() as f64 / 1000.0,
        })
    };
    let report = json!({
        "bench": "media",
        "input_audio_seconds": audio_secs,
        "transcode": {
            "mp3_to_pcmu_audio_seconds_per_cpu_second": ulaw_rate,
            "mp3_to_pcmu_runs": runs_ulaw,
            "mp3_to_all_variants_audio_seconds_per_cpu_second": all_rate,
            "mp3_to_all_variants_runs": runs_all,
        },
        "cache_hit": {
            "entries": a.entries,
            "cold_load": lat(&cold),
            "shared": lat(&shared),
            "hits_counted": stats.0,
            "fetches": stats.1,
        },
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "transcode MP3 → µ-law: {ulaw_rate:.0} s of audio per CPU-second ({runs_ulaw} runs of {audio_secs:.1} s)"
        );
        println!(
            "transcode MP3 → all variants (µ-law, A-law, 16k, 48k): {all_rate:.0} s of audio per CPU-second"
        );
        for (name, h) in [("cold load", &cold), ("shared", &shared)] {
            println!(
                "cache hit ({name}): p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs over {} lookups",
                us(h, 0.5),
                us(h, 0.99),
                us(h, 0.999),
                h.max() as f64 / 1000.0,
                h.len()
            );
        }
        println!("fetches made: {} (one per entry)", stats.1);
    }
    Ok(())
}

async fn hits(a: &MediaArgs) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, (u64, u64))> {
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = origin.local_addr()?;
    let app = axum::Router::new().fallback(|| async {
        (
            [
                ("content-type", "audio/wav"),
                ("cache-control", "max-age=86400"),
            ],
            KNOWN_WAV,
        )
    });
    tokio::spawn(async move {
        let _ = axum::serve(origin, app).await;
    });
    let dir = std::env::temp_dir().join(format!("voxedge-bench-media-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let store = crate::store::Store::connect(
        &format!("sqlite://{}/store.db", dir.display()),
        crate::secret::SecretKey::from_hex(&"42".repeat(32))?,
    )
    .await?;
    let cfg = MediaConfig {
        dir: dir.join("cache").display().to_string(),
        ..MediaConfig::default()
    };
    let cache = MediaCache::open(
        cfg,
        store,
        Fetcher::new(true, Timeouts::default())?,
        Synthesizer::default(),
    )
    .await?;
    let acc = "AC000000000000000000000000000bench";
    let sources: Vec<Source> = (0..a.entries.max(1))
        .map(|i| Source::Url(format!("http://{addr}/prompt-{i}.wav")))
        .collect();
    for s in &sources {
        cache.media(acc, s, Codec::Pcmu).await?;
    }
    let fetches = cache
        .stats
        .fetches
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut cold = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut shared = cold.clone();
    for i in 0..a.lookups {
        let s = &sources[i % sources.len()];
        let t = Instant::now();
        let m = cache.media(acc, s, Codec::Pcmu).await?;
        cold.record(t.elapsed().as_nanos() as u64)?;
        drop(m);
    }
    let held: Vec<_> = {
        let mut v = Vec::new();
        for s in &sources {
            v.push(cache.media(acc, s, Codec::Pcmu).await?);
        }
        v
    };
    for i in 0..a.lookups {
        let s = &sources[i % sources.len()];
        let t = Instant::now();
        let m = cache.media(acc, s, Codec::Pcmu).await?;
        shared.record(t.elapsed().as_nanos() as u64)?;
        drop(m);
    }
    drop(held);
    let hits = cache.stats.hits.load(std::sync::atomic::Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        cache
            .stats
            .fetches
            .load(std::sync::atomic::Ordering::Relaxed)
            == fetches,
        "a timed lookup fetched"
    );
    Ok((cold, shared, (hits, fetches)))
}
