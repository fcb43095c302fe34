//! VoxEdge control plane: configuration, process roles, the admin listener and the
//! dataplane's management API. SIP, call control, REST and the store arrive in later issues.
//!
//! Run loop: a tokio runtime owns the listeners; calls into the dataplane are blocking
//! crossbeam round trips and run on the blocking pool.

pub mod app;
pub mod callbacks;
pub mod calls;
pub mod config;
pub mod digest;
pub mod events;
pub mod http;
pub mod media;
pub mod metrics;
pub mod ng;
pub mod recordings;
pub mod rest;
pub mod sdnotify;
pub mod secret;
pub mod sip;
pub mod store;
pub mod tasks;
pub mod voice;
