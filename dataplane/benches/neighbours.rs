//! Neighbour-lookup micro-bench: nanoseconds per transmitted packet for the next-hop MAC, as the
//! DPDK backend's transmit path asks for it (`Neighbours::lookup_cached`).
//!
//! Traffic model: a PoP behind one gateway whose streams talk to N distinct off-link remote
//! addresses, one lookup per packet in a random order fixed per run. With N beyond the
//! direct-mapped cache's 1,024 slots most lookups miss it, which the null bench (whose remotes
//! are the appliance's own addresses) never shows.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use voxedge_dataplane::io::netstack::{Interface, Neighbours};

const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

fn bench_lookup(c: &mut Criterion) {
    let iface = Interface {
        mac: [0x02, 0, 0, 0, 0, 0x01],
        vlan: None,
        addresses: vec!["192.0.2.1/24".parse().expect("address")],
        gateway4: Some(Ipv4Addr::new(192, 0, 2, 254)),
        gateway6: None,
        gateway_mac: None,
        dscp: 46,
    };
    let mut g = c.benchmark_group("neighbour_lookup_off_link");
    g.measurement_time(Duration::from_secs(5));
    for remotes in [8usize, 500, 100_000] {
        let mut n = Neighbours::new(4096);
        // Learned by ARP, as a gateway usually is.
        n.learn(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254)), GATEWAY_MAC);
        let mut dsts: Vec<IpAddr> = (0..remotes as u32)
            .map(|k| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + k * 7 + 1)))
            .collect();
        dsts.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(7));
        let mut cursor = 0usize;
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(remotes), &remotes, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let dst = dsts[cursor];
                    cursor = if cursor + 1 == dsts.len() {
                        0
                    } else {
                        cursor + 1
                    };
                    let mac = n.lookup_cached(&iface, black_box(dst));
                    debug_assert_eq!(mac, Some(GATEWAY_MAC));
                    black_box(mac);
                }
                start.elapsed()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench_lookup);
criterion_main!(benches);
