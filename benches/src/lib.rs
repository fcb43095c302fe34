//! VoxEdge capacity benches, run as `voxedge bench …`.
//!
//! Each bench prints a human-readable report, or one JSON object with `--json`, so capacity
//! planners can script and compare runs.

pub mod dpdk;
pub mod floor;
pub mod gen;
pub mod mix;
pub mod proc;
pub mod relay;
pub mod rest;
pub mod sip;
pub mod voice;
pub mod vs_rtpengine;
pub mod workdir;

use clap::Subcommand;

/// `voxedge bench …` (the control plane's binary adds the benches that need its services).
#[derive(Debug, Subcommand)]
pub enum BenchKind {
    /// RTP relay capacity through `voxedge media` on loopback.
    Relay(relay::RelayArgs),
    /// RTP forwarding rate of the DPDK backend (`--mode null` or `memif`).
    Dpdk(dpdk::DpdkArgs),
    /// SIP calls per second through `voxedge serve` (B2BUA, media anchored), driven by sipp.
    Sip(sip::SipArgs),
    /// REST API requests per second and latency (call creation, paged listing) on SQLite or
    /// PostgreSQL.
    Rest(rest::RestArgs),
    /// Programmable calls per second end to end: sipp → voxedge → a local app server
    /// (`<Say>` + `<Hangup/>`), with INVITE → first instruction latency.
    Voice(voice::VoiceArgs),
    /// The same ng-driven RTP workload on rtpengine (userspace) and on voxedge, side by side.
    VsRtpengine(vs_rtpengine::VsArgs),
    /// Conference mixing capacity of one worker core: members per core and tick time.
    Mix(mix::MixArgs),
    /// What the kernel alone costs per datagram received and sent on loopback: the least a
    /// relay on kernel sockets can spend per relayed packet on this host.
    SocketFloor(floor::FloorArgs),
}

/// Runs one bench.
///
/// # Errors
/// The bench could not be set up (process start, API calls, sockets).
pub fn run_kind(kind: &BenchKind) -> anyhow::Result<()> {
    match kind {
        BenchKind::Relay(a) => relay::main(a),
        BenchKind::Dpdk(a) => dpdk::main(a),
        BenchKind::Sip(a) => sip::main(a),
        BenchKind::Rest(a) => rest::main(a),
        BenchKind::VsRtpengine(a) => vs_rtpengine::main(a),
        BenchKind::Voice(a) => voice::main(a),
        BenchKind::Mix(a) => mix::main(a),
        BenchKind::SocketFloor(a) => floor::main(a),
    }
}
