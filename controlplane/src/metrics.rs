//! Prometheus text exposition (format 0.0.4) of the dataplane's counters.
//!
//! Label values are bounded: worker ids and the fixed drop-reason set.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use voxedge_dataplane::Dataplane;

/// Upper bounds (seconds) of the processing-time histogram buckets. Dense between 10 and
/// 25 µs, where the dataplane's added-latency goal (p99 ≤ 20 µs at half load) is judged.
const BUCKETS_S: [f64; 15] = [
    50e-9, 100e-9, 250e-9, 500e-9, 1e-6, 2.5e-6, 5e-6, 10e-6, 15e-6, 20e-6, 25e-6, 50e-6, 100e-6,
    1e-3, 10e-3,
];

/// Remembers the previous scrape so the busy ratio covers the interval between scrapes.
#[derive(Default)]
pub struct BusyWindow {
    last: Mutex<Vec<(u64, u64)>>,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A metric with one unlabelled value, with its header.
fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// One worker's series of a nanosecond histogram exported in seconds: buckets, +Inf, sum,
/// count.
fn histogram_series(out: &mut String, name: &str, worker: usize, h: &hdrhistogram::Histogram<u64>) {
    for b in BUCKETS_S {
        let n = h.count_between(0, (b * 1e9) as u64);
        let _ = writeln!(out, "{name}_bucket{{worker=\"{worker}\",le=\"{b:e}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{worker=\"{worker}\",le=\"+Inf\"}} {}",
        h.len()
    );
    let sum_s = h.mean() * h.len() as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum{{worker=\"{worker}\"}} {sum_s:.9}");
    let _ = writeln!(out, "{name}_count{{worker=\"{worker}\"}} {}", h.len());
}

/// Renders all dataplane metrics.
pub fn render(dp: &Dataplane, window: &BusyWindow) -> String {
    let mut out = String::with_capacity(8192);
    let workers: Vec<_> = dp.workers().collect();
    let counter = |out: &mut String, name: &str, help: &str, get: &dyn Fn(usize) -> u64| {
        header(out, name, "counter", help);
        for (i, _) in workers.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", get(i));
        }
    };
    counter(
        &mut out,
        "voxedge_packets_received_total",
        "Datagrams received on media ports.",
        &|i| workers[i].packets_in.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_bytes_received_total",
        "UDP payload bytes received on media ports.",
        &|i| workers[i].bytes_in.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_packets_forwarded_total",
        "Datagrams relayed and accepted by the backend for sending.",
        &|i| workers[i].packets_forwarded.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_bytes_forwarded_total",
        "UDP payload bytes relayed.",
        &|i| workers[i].bytes_out.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_events_dropped_total",
        "Media events dropped because the event queue was full.",
        &|i| workers[i].events_dropped.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_rx_calls_total",
        "Receive calls made by the packet I/O backend.",
        &|i| workers[i].rx_calls.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_rx_errors_total",
        "Receive calls that failed (other than nothing queued).",
        &|i| workers[i].rx_errors.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_mix_packets_in_total",
        "Packets conference members sent into the mixer.",
        &|i| workers[i].mixed_in.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_mix_packets_out_total",
        "Mixed packets sent to conference members.",
        &|i| workers[i].mixed_out.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_mix_concealed_frames_total",
        "Conference member frames concealed (audio lost, or not there in time).",
        &|i| workers[i].mix_concealed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_mix_late_packets_total",
        "Conference member packets that arrived after their playout time.",
        &|i| workers[i].mix_late.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_tx_calls_total",
        "Send calls made by the packet I/O backend.",
        &|i| workers[i].tx_calls.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "voxedge_tx_raw_packets_total",
        "Datagrams the socket backend sent through its raw IPv4 socket (dataplane.socket_raw_tx).",
        &|i| workers[i].tx_raw.load(Ordering::Relaxed),
    );

    header(
        &mut out,
        "voxedge_drops_total",
        "counter",
        "Datagrams not forwarded, by reason (detail: the wire error of malformed packets).",
    );
    for (i, w) in workers.iter().enumerate() {
        for (reason, n) in w.drops().nonzero() {
            let (r, d) = reason.labels();
            let _ = writeln!(
                out,
                "voxedge_drops_total{{worker=\"{i}\",reason=\"{r}\",detail=\"{d}\"}} {n}"
            );
        }
    }

    let gauge = |out: &mut String, name: &str, help: &str, get: &dyn Fn(usize) -> String| {
        header(out, name, "gauge", help);
        for (i, _) in workers.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", get(i));
        }
    };
    gauge(
        &mut out,
        "voxedge_streams",
        "Streams (media ports) held by the worker.",
        &|i| workers[i].streams.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut out,
        "voxedge_relays",
        "Relays held by the worker.",
        &|i| workers[i].relays.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut out,
        "voxedge_conferences",
        "Conferences mixed by the worker.",
        &|i| workers[i].conferences.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut out,
        "voxedge_conference_members",
        "Members of the worker's conferences.",
        &|i| {
            workers[i]
                .conference_members
                .load(Ordering::Relaxed)
                .to_string()
        },
    );
    gauge(
        &mut out,
        "voxedge_worker_pinned_core",
        "Core the worker is pinned to (-1: not pinned).",
        &|i| workers[i].pinned_core.load(Ordering::Relaxed).to_string(),
    );
    gauge(
        &mut out,
        "voxedge_worker_up",
        "1 while the worker loop runs.",
        &|i| u8::from(workers[i].running.load(Ordering::Relaxed)).to_string(),
    );

    header(
        &mut out,
        "voxedge_worker_busy_seconds_total",
        "counter",
        "Time the worker spent working rather than waiting for packets (on DPDK, receive calls that returned packets included).",
    );
    for (i, w) in workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "voxedge_worker_busy_seconds_total{{worker=\"{i}\"}} {:.6}",
            w.busy_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
    }
    let now: Vec<(u64, u64)> = workers
        .iter()
        .map(|w| {
            (
                w.busy_ns.load(Ordering::Relaxed),
                w.wall_ns.load(Ordering::Relaxed),
            )
        })
        .collect();
    let mut last = crate::lock(&window.last);
    header(&mut out, "voxedge_worker_busy_ratio", "gauge", "Share of wall time the worker was busy since the previous scrape (since start on the first).");
    for (i, (busy, wall)) in now.iter().enumerate() {
        let (b0, w0) = last.get(i).copied().unwrap_or((0, 0));
        let (db, dw) = (busy.saturating_sub(b0), wall.saturating_sub(w0));
        let ratio = if dw == 0 { 0.0 } else { db as f64 / dw as f64 };
        let _ = writeln!(
            out,
            "voxedge_worker_busy_ratio{{worker=\"{i}\"}} {ratio:.4}"
        );
    }
    *last = now;
    drop(last);

    header(
        &mut out,
        "voxedge_packet_processing_seconds",
        "histogram",
        "Per-packet processing time in the worker (burst time divided by burst size).",
    );
    let mut quantiles = String::new();
    for (i, w) in workers.iter().enumerate() {
        let h = crate::lock(&w.processing_ns).clone();
        histogram_series(&mut out, "voxedge_packet_processing_seconds", i, &h);
        for q in [0.5, 0.99, 0.999] {
            let _ = writeln!(
                quantiles,
                "voxedge_packet_processing_ns{{worker=\"{i}\",quantile=\"{q}\"}} {}",
                h.value_at_quantile(q)
            );
        }
    }
    header(
        &mut out,
        "voxedge_packet_processing_ns",
        "gauge",
        "Per-packet processing time quantiles since start, nanoseconds.",
    );
    out.push_str(&quantiles);

    header(
        &mut out,
        "voxedge_worker_latency_seconds",
        "histogram",
        "Time a received packet spends in the worker until its burst is transmitted (per packet).",
    );
    for (i, w) in workers.iter().enumerate() {
        let h = crate::lock(&w.burst_ns).clone();
        histogram_series(&mut out, "voxedge_worker_latency_seconds", i, &h);
    }

    header(
        &mut out,
        "voxedge_mix_tick_seconds",
        "histogram",
        "Time of one conference tick (decode, mix, encode and send for all its members).",
    );
    for (i, w) in workers.iter().enumerate() {
        let h = crate::lock(&w.mix_tick_ns).clone();
        histogram_series(&mut out, "voxedge_mix_tick_seconds", i, &h);
    }

    scalar(
        &mut out,
        "voxedge_uptime_seconds",
        "gauge",
        "Seconds since the dataplane started.",
        dp.uptime().as_secs(),
    );
    for (name, help, value) in dp.backend_metrics() {
        scalar(&mut out, &name, "counter", help, value);
    }
    out
}

/// SIP service counters.
pub fn render_sip(out: &mut String, s: &crate::sip::SipStats) {
    let v = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    for (name, kind, help, value) in [
        (
            "voxedge_sip_messages_received_total",
            "counter",
            "SIP messages received (UDP datagrams and framed TCP messages).",
            v(&s.received),
        ),
        (
            "voxedge_sip_malformed_total",
            "counter",
            "SIP datagrams or streams dropped as malformed.",
            v(&s.malformed),
        ),
        (
            "voxedge_sip_calls_answered_total",
            "counter",
            "Calls answered (2xx sent to the caller).",
            v(&s.calls_answered),
        ),
        (
            "voxedge_sip_calls_refused_total",
            "counter",
            "New calls refused by admission control (503).",
            v(&s.calls_refused),
        ),
        (
            "voxedge_sip_calls_without_media_total",
            "counter",
            "New calls answered 503 because no media ports were free.",
            v(&s.calls_without_media),
        ),
        (
            "voxedge_sip_tcp_refused_total",
            "counter",
            "SIP TCP connections closed at once: connection limit (total or per source) reached.",
            v(&s.tcp_refused),
        ),
        (
            "voxedge_sip_media_timeouts_total",
            "counter",
            "Calls hung up because their media stayed silent past [sip] media_timeout_secs (or hold_timeout_secs).",
            v(&s.media_timeouts),
        ),
        (
            "voxedge_sip_loops_detected_total",
            "counter",
            "INVITEs answered 482 (a merged request or our own INVITE come back).",
            v(&s.loops_detected),
        ),
        (
            "voxedge_sip_sdp_refused_total",
            "counter",
            "Offers or answers refused with 488 (unusable SDP or no codec in common).",
            v(&s.sdp_refused),
        ),
        (
            "voxedge_sip_answers_outside_offer_total",
            "counter",
            "SDP answers naming no offered codec (relayed unchanged).",
            v(&s.answers_outside_offer),
        ),
        (
            "voxedge_sip_calls_active",
            "gauge",
            "Calls up now.",
            v(&s.calls_active),
        ),
    ] {
        scalar(out, name, kind, help, value);
    }
}

/// ng listener and ng recorder counters.
pub fn render_ng(out: &mut String, s: &crate::ng::NgStats) {
    let v = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let r = &s.recordings;
    for (name, kind, help, value) in [
        (
            "voxedge_ng_requests_total",
            "counter",
            "ng requests received (retransmissions included).",
            v(&s.requests),
        ),
        (
            "voxedge_ng_errors_total",
            "counter",
            "ng requests answered with result=error.",
            v(&s.errors),
        ),
        (
            "voxedge_ng_retransmissions_total",
            "counter",
            "ng requests answered from the reply cache (same cookie).",
            v(&s.retransmissions),
        ),
        (
            "voxedge_ng_malformed_total",
            "counter",
            "ng messages that are not valid bencode or JSON (answered with an error).",
            v(&s.malformed),
        ),
        (
            "voxedge_ng_calls",
            "gauge",
            "Calls the ng listener relays now.",
            v(&s.calls),
        ),
        (
            "voxedge_ng_recordings_active",
            "gauge",
            "ng recordings being written.",
            v(&r.active),
        ),
        (
            "voxedge_ng_recordings_completed_total",
            "counter",
            "ng recordings completed (file renamed to .wav).",
            v(&r.completed),
        ),
        (
            "voxedge_ng_recordings_failed_total",
            "counter",
            "ng recordings with audio missing (disk error, 4 GiB WAV limit, not completed).",
            v(&r.failed),
        ),
        (
            "voxedge_ng_recording_frames_ignored_total",
            "counter",
            "Recorded frames not placed: not G.711, too late, or while paused.",
            v(&r.frames_ignored),
        ),
    ] {
        scalar(out, name, kind, help, value);
    }
}

/// Media cache counters.
pub fn render_media(out: &mut String, s: &crate::media::MediaStats) {
    let v = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    for (name, kind, help, value) in [
        (
            "voxedge_media_cache_hits_total",
            "counter",
            "Media served from the cache without asking the origin.",
            v(&s.hits),
        ),
        (
            "voxedge_media_cache_misses_total",
            "counter",
            "Media not in the cache: fetched (or synthesized) and prepared.",
            v(&s.misses),
        ),
        (
            "voxedge_media_cache_revalidated_unchanged_total",
            "counter",
            "Stale entries the origin confirmed unchanged (304).",
            v(&s.revalidated_unchanged),
        ),
        (
            "voxedge_media_cache_revalidated_changed_total",
            "counter",
            "Stale entries the origin replaced with new content.",
            v(&s.revalidated_changed),
        ),
        (
            "voxedge_media_cache_coalesced_total",
            "counter",
            "Requests that waited for another request's fetch of the same media.",
            v(&s.coalesced),
        ),
        (
            "voxedge_media_fetches_total",
            "counter",
            "HTTP requests for media (conditional ones included).",
            v(&s.fetches),
        ),
        (
            "voxedge_media_failures_total",
            "counter",
            "Media fetches or preparations that failed.",
            v(&s.failures),
        ),
        (
            "voxedge_media_failures_remembered_total",
            "counter",
            "Requests answered from a recent failure without fetching again.",
            v(&s.failures_remembered),
        ),
        (
            "voxedge_media_stale_served_total",
            "counter",
            "Stale copies played because revalidation failed.",
            v(&s.stale_served),
        ),
        (
            "voxedge_media_cache_evictions_total",
            "counter",
            "Entries evicted to keep the cache under its size.",
            v(&s.evictions),
        ),
        (
            "voxedge_media_cache_bytes",
            "gauge",
            "Bytes of prepared media files in the cache.",
            v(&s.bytes),
        ),
        (
            "voxedge_media_cache_entries",
            "gauge",
            "Cached media entries.",
            v(&s.entries),
        ),
    ] {
        scalar(out, name, kind, help, value);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Buckets are cumulative over increasing bounds, and those around the 20 µs latency goal
    /// separate values a few microseconds apart.
    #[test]
    fn histogram_buckets_are_cumulative_and_resolve_the_latency_goal() {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for ns in [800, 12_000, 18_000, 22_000, 30_000] {
            h.record(ns).unwrap();
        }
        let mut out = String::new();
        histogram_series(&mut out, "x", 0, &h);
        let buckets: Vec<(String, u64)> = out
            .lines()
            .filter_map(|l| l.strip_prefix("x_bucket{worker=\"0\",le=\""))
            .map(|l| {
                let (le, n) = l.split_once("\"} ").unwrap();
                (le.to_string(), n.parse().unwrap())
            })
            .collect();
        assert_eq!(buckets.len(), BUCKETS_S.len() + 1);
        let count = |le: &str| buckets.iter().find(|(b, _)| b == le).unwrap().1;
        assert_eq!(count("1e-6"), 1);
        assert_eq!(count("1e-5"), 1);
        assert_eq!(count("1.5e-5"), 2);
        assert_eq!(count("2e-5"), 3);
        assert_eq!(count("2.5e-5"), 4);
        assert_eq!(count("5e-5"), 5);
        assert_eq!(count("+Inf"), 5);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(BUCKETS_S.windows(2).all(|w| w[0] < w[1]));
        assert!(out.contains("x_count{worker=\"0\"} 5"));
    }
}
