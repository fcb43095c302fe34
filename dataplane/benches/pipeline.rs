//! Pipeline micro-bench: nanoseconds per packet for forward-with-rewrite at 10k and 1M
//! streams, on the worker's real stream table and pipeline (no I/O).
//!
//! Traffic model: every stream sends one packet per round (a 20 ms frame), in a random order
//! fixed per run, so each packet touches a cold stream as it would at scale. Sequence number
//! and timestamp advance per round, as RTP does.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use voxedge_dataplane::command::MediaEvent;
use voxedge_dataplane::ids::{Component, PortHandle, RelayId, Side, StreamIdx};
use voxedge_dataplane::pipeline::{process, Verdict};
use voxedge_dataplane::table::{Stream, StreamTable};
use voxedge_dataplane::wire::rtp::{emit_header, RtpPacket};

const BURST: usize = 32;
const PAYLOAD: usize = 160;

/// `streams` streams joined pairwise into relays, all with rewrite on and remotes known.
fn table(streams: usize) -> StreamTable {
    let mut t = StreamTable::with_capacity(streams);
    for r in 0..streams / 2 {
        let a = 2 * r as u32;
        let b = a + 1;
        for (port, side) in [(a, Side::A), (b, Side::B)] {
            let mut s = Stream::new(PortHandle(port), RelayId(r as u64), side, Component::Rtp, 0);
            s.remote = Some(SocketAddr::from((
                [10, 0, (port >> 16) as u8, (port >> 8) as u8],
                20000 + (port & 0xff) as u16,
            )));
            s.rewrite = true;
            s.dtmf_pt = 101;
            let idx = t.insert(s);
            assert_eq!(idx, StreamIdx(port));
        }
        for (x, y) in [(a, b), (b, a)] {
            let s = t.get_mut(StreamIdx(x)).expect("inserted");
            s.peer = StreamIdx(y);
            s.rtcp_peer = StreamIdx(y);
            s.rtp_sibling = StreamIdx(x);
        }
    }
    t
}

fn bench_forward(c: &mut Criterion) {
    run_group(c, "forward_with_rewrite", false);
    // As the worker does it: each packet's streams are prefetched ahead of its turn
    // (StreamTable::for_each_prefetched).
    run_group(c, "forward_with_rewrite_burst_prefetched", true);
}

fn run_group(c: &mut Criterion, name: &str, warm: bool) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(BURST as u64));
    g.measurement_time(Duration::from_secs(8));
    for streams in [10_000usize, 1_000_000] {
        let mut t = table(streams);
        let mut order: Vec<u32> = (0..streams as u32).collect();
        order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(7));
        let mut bufs = vec![[0u8; 12 + PAYLOAD]; BURST];
        for b in &mut bufs {
            emit_header(&mut b[..], 0, false, 0, 0, 0).expect("12-byte header fits");
        }
        let src = SocketAddr::from(([10, 9, 9, 9], 4000));
        let mut events: Vec<MediaEvent> = Vec::with_capacity(1024);
        let mut cursor = 0usize;
        let mut round = 1u32;
        let mut now_ns = 1u64;
        g.bench_with_input(
            BenchmarkId::from_parameter(streams),
            &streams,
            |bench, _| {
                bench.iter_custom(|iters| {
                    let start = Instant::now();
                    let mut ports = [0u32; BURST];
                    for _ in 0..iters {
                        for p in ports.iter_mut() {
                            *p = order[cursor];
                            cursor += 1;
                            if cursor == order.len() {
                                cursor = 0;
                                round = round.wrapping_add(1);
                                now_ns += 20_000_000;
                            }
                        }
                        for (b, &port) in bufs.iter_mut().zip(&ports) {
                            if let Ok(mut p) = RtpPacket::new_checked(&mut b[..]) {
                                p.set_ssrc(port);
                                p.set_sequence_number(round as u16);
                                p.set_timestamp(round.wrapping_mul(160));
                            }
                        }
                        let mut one = |t: &mut StreamTable, i: usize| {
                            let v = process(
                                t,
                                PortHandle(ports[i]),
                                src,
                                &mut bufs[i][..],
                                now_ns,
                                &mut events,
                            );
                            debug_assert!(matches!(v, Verdict::Forward { .. }));
                            black_box(v);
                        };
                        if warm {
                            t.for_each_prefetched(&ports.map(PortHandle), one);
                        } else {
                            for i in 0..BURST {
                                one(&mut t, i);
                            }
                        }
                        events.clear();
                    }
                    start.elapsed()
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_forward);
criterion_main!(benches);
