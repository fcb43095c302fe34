//! `voxedge bench dpdk --mode memif`: a DPDK load generator in this process, `voxedge media`
//! on the other end of a `net_memif` pair.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use voxedge_dataplane::config::DpdkConfig;
use voxedge_dataplane::io::dpdk::{tsc, tsc_hz, RawPort};
use voxedge_dataplane::io::netstack::format_mac;
use voxedge_dataplane::wire::frame::build_udp_frame;
use voxedge_dataplane::wire::rtp::emit_header;
use voxedge_dataplane::wire::{checksum_add, checksum_fold};

use super::DpdkArgs;
use crate::proc;
use crate::relay::{agent, free_port, metric_sum};
use crate::workdir::WorkDir;

const GEN_MAC: [u8; 6] = [0x02, 0x9e, 0x4e, 0, 0, 0x02];
const RTP_PAYLOAD: usize = 172;
const FRAME: usize = 14 + 20 + 8 + RTP_PAYLOAD;
/// Offsets in the frame (untagged IPv4): RTP seq, RTP timestamp, our TSC stamp, stream id.
const SEQ_AT: usize = 42 + 2;
const TSC_AT: usize = 42 + 12;
const ID_AT: usize = 42 + 20;
const UDP_CSUM_AT: usize = 34 + 6;
const RELAYS_PER_ADDRESS: usize = 15_000;
const PORT_MIN: u16 = 2000;
const PORT_MAX: u16 = 65_000;

fn media_addr(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, (k / 250) as u8, (k % 250) as u8 + 1))
}

/// The generator endpoint that plays the far end of stream `j`.
fn gen_endpoint(j: usize) -> SocketAddr {
    let host = (j / 50_000) as u32;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + host);
    SocketAddr::new(IpAddr::V4(ip), 10_000 + (j % 50_000) as u16)
}

struct Child_ {
    child: Child,
    admin: String,
    management: String,
    /// Held only to be removed after the child is stopped (fields drop after `Drop::drop`).
    _dir: WorkDir,
}

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_media(a: &DpdkArgs, relays: usize, socket: &str) -> anyhow::Result<Child_> {
    let dir = WorkDir::create("memif")?;
    let addresses = relays.div_ceil(RELAYS_PER_ADDRESS).max(1);
    let (admin_port, mgmt_port) = (free_port()?, free_port()?);
    let cores: Vec<String> = (1..=a.workers).map(|c| c.to_string()).collect();
    let extra: Vec<String> = (1..addresses)
        .map(|k| format!("\"{}\"", media_addr(k)))
        .collect();
    let nets: Vec<String> = (0..addresses)
        .map(|k| format!("\"{}/16\"", media_addr(k)))
        .collect();
    let mbufs = 16_383u32;
    let eal = media_eal_args(a.hugepages, !a.memif_copy);
    let toml = format!(
        r#"[admin]
listen = "127.0.0.1:{admin_port}"

[management]
listen = "127.0.0.1:{mgmt_port}"

[ng]
listen = "127.0.0.1:0"

[log]
level = "warn"

[dataplane]
backend = "dpdk"
workers = {workers}
pin_cores = true
cores = [{cores}]
bind = "{bind}"
extra_addresses = [{extra}]
port_min = {PORT_MIN}
port_max = {PORT_MAX}
media_timeout_ms = 0
streams_per_worker_max = {smax}
overlap_bursts = "{overlap}"

[dataplane.dpdk]
main_lcore = 0
vdevs = ["net_memif0,role=client,socket={socket},id=0,zero-copy={zc}"]
port = "0"
no_huge = {no_huge}
memory_mb = [{mem}]
file_prefix = "vxmedia{pid}"
eal_args = {eal}
mbufs = {mbufs}
mbuf_cache = 256
addresses = [{nets}]
gateway = "10.77.255.254"
gateway_mac = "{gmac}"
verify_checksums = {verify}
"#,
        workers = a.workers,
        cores = cores.join(", "),
        bind = media_addr(0),
        extra = extra.join(", "),
        smax = relays * 4 + 16,
        no_huge = !a.hugepages,
        mem = 512 + relays / 1000,
        pid = std::process::id(),
        nets = nets.join(", "),
        gmac = format_mac(GEN_MAC),
        verify = a.verify_checksums,
        overlap = a.overlap_bursts.as_str(),
        // A JSON array of plain strings is also a TOML array.
        eal = serde_json::Value::from(eal),
        zc = if a.memif_copy { "no" } else { "yes" },
    );
    let cfg_path = dir.join("media.toml");
    std::fs::File::create(&cfg_path)?.write_all(toml.as_bytes())?;
    let exe = std::env::current_exe().context("locate voxedge binary")?;
    let child = Command::new(exe)
        .args(["media", "--config"])
        .arg(&cfg_path)
        .env_remove("VOXEDGE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("start voxedge media")?;
    let mut c = Child_ {
        child,
        admin: format!("http://127.0.0.1:{admin_port}"),
        management: format!("http://127.0.0.1:{mgmt_port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if agent().get(&format!("{}/health", c.admin)).call().is_ok() {
            return Ok(c);
        }
        if let Ok(Some(st)) = c.child.try_wait() {
            bail!("voxedge media exited during start-up ({st}); its log is above");
        }
        if Instant::now() > deadline {
            bail!("voxedge media did not become healthy within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// EAL arguments of the `voxedge media` child.
fn media_eal_args(hugepages: bool, zero_copy: bool) -> Vec<String> {
    let mut eal = super::eal_args(hugepages);
    if zero_copy {
        // memif shares the client's mempool with the server in zero-copy mode: one file
        // descriptor per memory segment list, which takes single-file segments.
        eal.push("--single-file-segments".to_string());
        if hugepages {
            // EAL refuses single-file segments with --huge-unlink; --in-memory leaves no
            // hugepage files behind either (its segments are memfds).
            eal.retain(|x| x != "--huge-unlink");
            eal.push("--in-memory".to_string());
        }
    }
    eal
}

/// Creates the relays; returns per stream j (even: leg A, odd: leg B) the appliance address
/// the generator sends to, and the endpoint that receives its forwarded copy.
fn create_relays(c: &Child_, relays: usize) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
    let out: Mutex<Vec<Option<(SocketAddr, SocketAddr)>>> = Mutex::new(vec![None; relays]);
    let err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let threads = 8.min(relays.max(1));
    std::thread::scope(|s| {
        for th in 0..threads {
            let (out, err) = (&out, &err);
            s.spawn(move || {
                let ag = agent();
                for i in (th..relays).step_by(threads) {
                    let r = (|| -> anyhow::Result<(SocketAddr, SocketAddr)> {
                        let body = json!({
                            "a": {"remote": gen_endpoint(2 * i).to_string(), "rtcp_mux": true},
                            "b": {"remote": gen_endpoint(2 * i + 1).to_string(), "rtcp_mux": true},
                        });
                        let v: Value = ag
                            .post(&format!("{}/v1/relays", c.management))
                            .send_json(body)?
                            .into_json()?;
                        let a: SocketAddr = v["a"]["local"].as_str().context("a.local")?.parse()?;
                        let b: SocketAddr = v["b"]["local"].as_str().context("b.local")?.parse()?;
                        Ok((a, b))
                    })();
                    match r {
                        Ok(x) => {
                            out.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(x)
                        }
                        Err(e) => {
                            *err.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(e.context(format!("create relay {i}")));
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = err
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(e);
    }
    let mut streams = Vec::with_capacity(relays * 2);
    for (i, r) in out
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .enumerate()
    {
        let (a, b) = r.context("relay missing")?;
        // Sent from A's far end to A's local; comes out of B towards B's far end.
        streams.push((a, gen_endpoint(2 * i + 1)));
        streams.push((b, gen_endpoint(2 * i)));
    }
    Ok(streams)
}

/// One pre-built frame per stream and the checksum sum of its constant part.
struct Frames {
    bytes: Vec<u8>,
    base: Vec<u32>,
    seq: Vec<u16>,
}

fn build_frames(streams: &[(SocketAddr, SocketAddr)], dst_mac: [u8; 6]) -> Frames {
    let n = streams.len();
    let mut bytes = vec![0u8; n * FRAME];
    let mut base = Vec::with_capacity(n);
    for (j, &(to, _)) in streams.iter().enumerate() {
        // Stream j's packets come from the far end that leg expects (its remote).
        let from = gen_endpoint(j);
        let mut payload = [0u8; RTP_PAYLOAD];
        let _ = emit_header(&mut payload, 0, false, 0, 0, 0x5000_0000 + j as u32);
        payload[20..24].copy_from_slice(&(j as u32).to_be_bytes());
        let f = &mut bytes[j * FRAME..(j + 1) * FRAME];
        let _ = build_udp_frame(f, GEN_MAC, dst_mac, None, from, to, 46, &payload);
        f[UDP_CSUM_AT..UDP_CSUM_AT + 2].copy_from_slice(&[0, 0]);
        let (IpAddr::V4(s), IpAddr::V4(d)) = (from.ip(), to.ip()) else {
            unreachable!("IPv4 bench addresses")
        };
        let mut acc = checksum_add(0, &s.octets());
        acc = checksum_add(acc, &d.octets());
        acc = checksum_add(acc, &[0, 17]);
        acc = checksum_add(acc, &((8 + RTP_PAYLOAD) as u16).to_be_bytes());
        base.push(checksum_add(acc, &f[34..]));
    }
    Frames {
        bytes,
        base,
        seq: vec![0; n],
    }
}

struct PhaseOut {
    secs: f64,
    sent: u64,
    received: u64,
    lat: Histogram<u64>,
}

/// Sends round-robin over all streams at `rate` packets/s (0 = as fast as possible) for
/// `secs`, receiving all the while; counts packets sent in the window and their copies that
/// come back (waiting 100 ms after the window for stragglers).
fn phase(port: &mut RawPort, frames: &mut Frames, rate: f64, secs: f64, hz: f64) -> PhaseOut {
    let n = frames.seq.len();
    let mut lat = Histogram::new_with_bounds(1, 1_000_000_000, 3).expect("bounds");
    let start = Instant::now();
    let t0 = tsc();
    let end_sent = t0 + (secs * hz) as u64;
    let end_all = end_sent + (0.1 * hz) as u64;
    let (mut sent, mut received) = (0u64, 0u64);
    let mut next = 0usize;
    loop {
        let now = tsc();
        if now >= end_all {
            break;
        }
        if now < end_sent {
            let due = if rate > 0.0 {
                ((now - t0) as f64 / hz * rate) as u64
            } else {
                u64::MAX
            };
            let want = due.saturating_sub(sent).min(32) as usize;
            if want > 0 {
                let stamp = tsc();
                let took = port.send_burst(want, |i, buf| {
                    let j = (next + i) % n;
                    let f = &mut buf[..FRAME];
                    f.copy_from_slice(&frames.bytes[j * FRAME..(j + 1) * FRAME]);
                    let seq = frames.seq[j];
                    f[SEQ_AT..SEQ_AT + 2].copy_from_slice(&seq.to_be_bytes());
                    f[SEQ_AT + 2..SEQ_AT + 6]
                        .copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                    f[TSC_AT..TSC_AT + 8].copy_from_slice(&stamp.to_be_bytes());
                    let mut acc = checksum_add(frames.base[j], &f[SEQ_AT..SEQ_AT + 6]);
                    acc = checksum_add(acc, &f[TSC_AT..TSC_AT + 8]);
                    let c = checksum_fold(acc);
                    f[UDP_CSUM_AT..UDP_CSUM_AT + 2]
                        .copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
                    FRAME
                });
                for i in 0..took {
                    let j = (next + i) % n;
                    frames.seq[j] = frames.seq[j].wrapping_add(1);
                }
                next = (next + took) % n;
                sent += took as u64;
            }
        }
        let now = tsc();
        port.recv_burst(|f| {
            if f.len() < ID_AT + 4 {
                return;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&f[TSC_AT..TSC_AT + 8]);
            let stamp = u64::from_be_bytes(b);
            if stamp < t0 || stamp >= end_sent {
                return;
            }
            received += 1;
            let ns = (now.saturating_sub(stamp) as f64 * 1e9 / hz) as u64;
            lat.saturating_record(ns.max(1));
        });
    }
    PhaseOut {
        secs: start.elapsed().as_secs_f64().min(secs),
        sent,
        received,
        lat,
    }
}

/// How long the generator pauses before and after a phase to read the workers' latency
/// histogram: more than twice their publish interval (250 ms), so that everything the phase
/// counted is published and nothing of the phase before (at saturation, where a packet waits
/// a burst or two) is left to be.
const HIST_SETTLE: Duration = Duration::from_millis(600);

/// What the generator reads from `voxedge media`'s metrics around a phase.
#[derive(Default)]
struct Scrape {
    /// (upper bound in seconds, cumulative count) of the workers' latency histogram, summed.
    latency: Vec<(f64, f64)>,
    /// The workers' busy time (processing, not waiting for packets), summed; `None` when the
    /// metrics could not be read.
    busy_s: Option<f64>,
}

fn scrape(c: &Child_) -> Scrape {
    let Some(text) = agent()
        .get(&format!("{}/metrics", c.admin))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
    else {
        return Scrape::default();
    };
    parse_scrape(&text)
}

fn parse_scrape(text: &str) -> Scrape {
    const BUSY: &str = "voxedge_worker_busy_seconds_total";
    let mut out = Scrape {
        busy_s: text
            .contains(&format!("{BUSY}{{"))
            .then(|| metric_sum(text, BUSY)),
        ..Scrape::default()
    };
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("voxedge_worker_latency_seconds_bucket{") else {
            continue;
        };
        let Some(le) = rest.split("le=\"").nth(1).and_then(|x| x.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0.0);
        match out.latency.iter_mut().find(|(b, _)| *b == le) {
            Some(e) => e.1 += v,
            None => out.latency.push((le, v)),
        }
    }
    out.latency.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Smallest bucket bound (µs) covering quantile `q` of the samples added between two scrapes.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(b, n)| {
            let old = before.iter().find(|(x, _)| x == b).map_or(0.0, |e| e.1);
            (*b, n - old)
        })
        .collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    diff.iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(b, _)| b * 1e6)
}

fn phase_json(name: &str, p: &PhaseOut, rate: f64) -> Value {
    let q = |x: f64| p.lat.value_at_quantile(x) as f64 / 1000.0;
    json!({
        "phase": name,
        "target_pps": rate,
        "offered_pps": p.sent as f64 / p.secs,
        "delivered_pps": p.received as f64 / p.secs,
        "loss_ratio": if p.sent > 0 { 1.0 - p.received as f64 / p.sent as f64 } else { 1.0 },
        "latency_us_p50": q(0.5),
        "latency_us_p99": q(0.99),
        "latency_us_p999": q(0.999),
    })
}

pub fn run(a: &DpdkArgs) -> anyhow::Result<Value> {
    if a.streams < 2 {
        bail!("--streams must be at least 2");
    }
    let relays = a.streams / 2;
    let socket = std::env::temp_dir()
        .join(format!("voxedge-memif-{}.sock", std::process::id()))
        .display()
        .to_string();
    // The generator's port is the memif server and starts first: the appliance's port is
    // the client, which connects once when it starts, and which alone can be zero-copy
    // (sharing its own mbufs, as a NIC's descriptors point at them; the server copies).
    let me = nix::unistd::Pid::from_raw(0);
    let launched = nix::sched::sched_getaffinity(me).ok();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let gen_core = cores.first().copied();
    if let Some(c) = gen_core {
        core_affinity::set_for_current(c);
    }
    let mut port = RawPort::start(&DpdkConfig {
        main_lcore: 0,
        vdevs: vec![format!(
            "net_memif0,role=server,socket={socket},id=0,mac={}",
            format_mac(GEN_MAC)
        )],
        port: "0".into(),
        no_huge: !a.hugepages,
        memory_mb: vec![512],
        file_prefix: format!("vxgen{}", std::process::id()),
        eal_args: super::eal_args(a.hugepages),
        mbufs: 16_383,
        mbuf_cache: 256,
        ..DpdkConfig::default()
    })
    .context("starting the generator's memif port")?;
    // The child and the threads that create the relays run where the bench was started,
    // not on the generator's core (which this thread and EAL have pinned it to).
    let pinned = nix::sched::sched_getaffinity(me).ok();
    if let Some(l) = &launched {
        let _ = nix::sched::sched_setaffinity(me, l);
    }
    let t_setup = Instant::now();
    let media = start_media(a, relays, &socket)?;
    let streams = create_relays(&media, relays)?;
    let setup_s = t_setup.elapsed().as_secs_f64();
    if let (Some(_), Some(p)) = (&launched, &pinned) {
        let _ = nix::sched::sched_setaffinity(me, p);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !port.link_up() {
        if Instant::now() > deadline {
            bail!("memif link to voxedge media did not come up within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The appliance's MAC: its memif port has a generated one; frames to it are accepted by
    // address, and the appliance does not filter UDP by destination MAC.
    let mut frames = build_frames(&streams, [0xff; 6]);
    let hz = tsc_hz() as f64;
    let cpu0 = proc::cpu_seconds(media.child.id()).unwrap_or(0.0);
    let _ = phase(&mut port, &mut frames, 0.0, a.warmup, hz);
    let mut phases = Vec::new();
    let report_rate;
    let max;
    // A phase with the workers' latency and busy time over it, read HIST_SETTLE before and
    // after.
    let measured = |port: &mut RawPort, frames: &mut Frames, name: &str, rate: f64| {
        std::thread::sleep(HIST_SETTLE);
        let before = scrape(&media);
        let p = phase(port, frames, rate, a.duration, hz);
        std::thread::sleep(HIST_SETTLE);
        let after = scrape(&media);
        let mut pj = phase_json(name, &p, rate);
        pj["worker_latency_us_p99_at_most"] =
            json!(bucket_quantile(&before.latency, &after.latency, 0.99));
        pj["worker_latency_us_p999_at_most"] =
            json!(bucket_quantile(&before.latency, &after.latency, 0.999));
        let busy = before
            .busy_s
            .zip(after.busy_s)
            .map(|(b, e)| e - b)
            .filter(|d| *d > 0.0);
        pj["worker_busy_s"] = json!(busy);
        pj["worker_busy_ratio"] = json!(busy.map(|d| d / p.secs / a.workers as f64));
        pj["mpps_per_busy_core"] = json!(busy.map(|d| p.received as f64 / d / 1e6));
        (p, pj)
    };
    if a.rate > 0.0 {
        let (p, pj) = measured(&mut port, &mut frames, "fixed", a.rate);
        phases.push(pj);
        report_rate = a.rate;
        max = p;
    } else {
        let (p, pj) = measured(&mut port, &mut frames, "max", 0.0);
        phases.push(pj);
        let half = p.received as f64 / p.secs / 2.0;
        let (_, pj) = measured(&mut port, &mut frames, "half", half);
        phases.push(pj);
        report_rate = half;
        max = p;
    }
    let cpu1 = proc::cpu_seconds(media.child.id()).unwrap_or(0.0);
    let lat_phase = &phases[phases.len() - 1];
    let delivered = max.received as f64 / max.secs;
    drop(port);
    drop(media);
    Ok(json!({
        "bench": "dpdk",
        "mode": "memif",
        "streams": a.streams,
        "relays": relays,
        "workers": a.workers,
        "frame_bytes": FRAME,
        "hugepages": a.hugepages,
        "verify_checksums": a.verify_checksums,
        "overlap_bursts": a.overlap_bursts.as_str(),
        "memif_zero_copy": !a.memif_copy,
        "setup_s": setup_s,
        "duration_s": max.secs,
        "offered_pps": max.sent as f64 / max.secs,
        "delivered_pps": delivered,
        "loss_ratio": phases[0]["loss_ratio"],
        "mpps_per_core": delivered / a.workers as f64 / 1e6,
        "ns_per_packet": if delivered > 0.0 { a.workers as f64 * 1e9 / delivered } else { 0.0 },
        "latency_us_p50": lat_phase["latency_us_p50"],
        "latency_us_p99": lat_phase["latency_us_p99"],
        "latency_us_p999": lat_phase["latency_us_p999"],
        "latency_at_pps": report_rate,
        "latency_note": "memif mode: generator TX stamp to generator RX, through voxedge media (both processes on this host); at the rate in latency_at_pps",
        "worker_busy_ratio": phases[0]["worker_busy_ratio"],
        "mpps_per_busy_core": phases[0]["mpps_per_busy_core"],
        "busy_note": "from the first phase: the workers' busy time (receive calls that returned packets, processing, sending, commands, housekeeping; not empty polls) from voxedge_worker_busy_seconds_total. mpps_per_busy_core is what they forwarded per second of it: a lower bound on their capacity when the generator, not the workers, sets the rate (below saturation bursts are short and each costs its fixed part for fewer packets)",
        "media_cpu_s": cpu1 - cpu0,
        "generator_core": gen_core.map(|c| c.id),
        "phases": phases,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_sums_workers_busy_time_and_latency_buckets() {
        let text = "\
# TYPE voxedge_worker_busy_seconds_total counter
voxedge_worker_busy_seconds_total{worker=\"0\"} 1.500000
voxedge_worker_busy_seconds_total{worker=\"1\"} 0.250000
voxedge_worker_busy_ratio{worker=\"0\"} 0.9
voxedge_worker_latency_seconds_bucket{worker=\"0\",le=\"1e-5\"} 3
voxedge_worker_latency_seconds_bucket{worker=\"1\",le=\"1e-5\"} 4
voxedge_worker_latency_seconds_bucket{worker=\"0\",le=\"+Inf\"} 5
voxedge_worker_latency_seconds_bucket{worker=\"1\",le=\"+Inf\"} 6
";
        let s = parse_scrape(text);
        assert_eq!(s.busy_s, Some(1.75));
        assert_eq!(s.latency, vec![(1e-5, 7.0), (f64::INFINITY, 11.0)]);
        let none = parse_scrape("voxedge_worker_busy_ratio{worker=\"0\"} 0.9\n");
        assert_eq!(none.busy_s, None);
        assert!(none.latency.is_empty());
    }

    #[test]
    fn media_eal_arguments_never_pair_single_file_segments_with_huge_unlink() {
        let has = |v: &[String], x: &str| v.iter().any(|a| a == x);
        for hugepages in [false, true] {
            let zc = media_eal_args(hugepages, true);
            assert!(has(&zc, "--single-file-segments"), "{zc:?}");
            assert!(!has(&zc, "--huge-unlink"), "{zc:?}");
            assert_eq!(has(&zc, "--in-memory"), hugepages, "{zc:?}");
            let copy = media_eal_args(hugepages, false);
            assert!(!has(&copy, "--single-file-segments"), "{copy:?}");
            assert_eq!(has(&copy, "--huge-unlink"), hugepages, "{copy:?}");
        }
    }
}
