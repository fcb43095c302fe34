//! Background tasks shared by the services.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Runs `flush` on `owner` every `every` until `stop` turns true (or its sender is gone), then
/// once more; ends early when `owner` is dropped.
pub fn spawn_flusher<T, F, Fut>(
    owner: &Arc<T>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    flush: F,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let me: Weak<T> = Arc::downgrade(owner);
    tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                () = tokio::time::sleep(every) => false,
                // An error (the sender is gone) means stopping too.
                _ = stop.wait_for(|s| *s) => true,
            };
            let Some(owner) = me.upgrade() else { return };
            flush(owner).await;
            if stopping {
                return;
            }
        }
    })
}
