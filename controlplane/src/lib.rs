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
pub mod loglimit;
pub mod media;
pub mod metrics;
pub mod ng;
pub mod recordings;
pub mod rest;
pub mod sdnotify;
pub mod sdp;
pub mod secret;
pub mod sip;
pub mod store;
pub mod tasks;
pub mod voice;

/// Locks a mutex whose data stays usable if a holder panicked (every use here leaves it
/// consistent between statements).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
