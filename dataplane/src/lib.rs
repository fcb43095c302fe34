//! VoxEdge dataplane: relays RTP/RTCP between call legs on worker threads that each own a
//! slice of the media ports.
//!
//! What it is: wire views ([`wire`]), the per-packet [`pipeline`] over a worker's
//! [`table::StreamTable`], packet I/O backends ([`io`]: memory, socket), the worker poll loop
//! ([`worker`]) and the control plane's handle ([`Dataplane`]).
//!
//! What it is not: no tokio, no SIP, no HTTP. It never blocks on the control plane: commands
//! arrive on bounded channels and events leave on one, dropped and counted when it is full.
//!
//! Time rule: the pipeline takes `now` as an argument; workers read the clock once per burst.

pub mod alloc;
pub mod command;
pub mod config;
mod dataplane;
pub mod g711;
pub mod ids;
pub mod io;
pub mod mediafile;
pub mod memhint;
pub mod mixer;
pub mod pipeline;
pub mod player;
pub mod recorder;
pub mod resample;
pub mod rewrite;
pub mod stats;
pub mod table;
#[cfg(test)]
mod testutil;
pub mod wire;
pub mod worker;

pub use dataplane::{
    BackendKind, Dataplane, DataplaneError, LegInfo, LegRequest, MemoryNet, QueuedRelay, RelayInfo,
    RelayRequest, StartError, COMMAND_TIMEOUT,
};
