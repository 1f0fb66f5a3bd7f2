//! Background long-poll of one namespace: back-off with jitter on errors, and the last good
//! snapshot kept while the registry is unreachable.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::Client;
use crate::wire::NamespaceSnapshot;

/// How long one long-poll waits on the server.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// First back-off after an error; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Health of the watch loop itself (not of the namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchState {
    /// True after a successful poll, false after a failed one.
    pub connected: bool,
    /// When the last successful poll answered.
    pub last_update: Option<Instant>,
    /// Failed polls since the last success.
    pub consecutive_errors: u32,
    /// The last error, rendered.
    pub last_error: Option<String>,
}

/// Starts watching `namespace`; the task stops when every receiver is dropped.
pub fn spawn_watcher(
    client: Client,
    namespace: impl Into<String>,
) -> watch::Receiver<Option<Arc<NamespaceSnapshot>>> {
    spawn_watcher_with_state(client, namespace).0
}

/// Like [`spawn_watcher`], also returning the loop's [`WatchState`].
pub fn spawn_watcher_with_state(
    client: Client,
    namespace: impl Into<String>,
) -> (
    watch::Receiver<Option<Arc<NamespaceSnapshot>>>,
    watch::Receiver<WatchState>,
) {
    let (snap_tx, snap_rx) = watch::channel(None);
    let (state_tx, state_rx) = watch::channel(WatchState::default());
    let namespace = namespace.into();
    tokio::spawn(async move {
        let closed_tx = snap_tx.clone();
        tokio::select! {
            () = watch_loop(client, namespace, snap_tx, state_tx) => {}
            () = closed_tx.closed() => {}
        }
    });
    (snap_rx, state_rx)
}

async fn watch_loop(
    client: Client,
    namespace: String,
    snap_tx: watch::Sender<Option<Arc<NamespaceSnapshot>>>,
    state_tx: watch::Sender<WatchState>,
) {
    let mut since = 0u64;
    let mut backoff = MIN_BACKOFF;
    loop {
        match client.watch(&namespace, since, POLL_WAIT).await {
            Ok(snap) => {
                backoff = MIN_BACKOFF;
                since = snap.revision;
                snap_tx.send_if_modified(|cur| {
                    let changed = cur.as_deref() != Some(&snap);
                    if changed {
                        *cur = Some(Arc::new(snap));
                    }
                    changed
                });
                state_tx.send_modify(|s| {
                    s.connected = true;
                    s.last_update = Some(Instant::now());
                    s.consecutive_errors = 0;
                    s.last_error = None;
                });
            }
            Err(e) => {
                if e.code() == Some("NamespaceNotFound") {
                    // The namespace went away: wait for it to come back from scratch.
                    since = 0;
                }
                tracing::debug!(%namespace, error = %e, "registry watch failed");
                state_tx.send_modify(|s| {
                    s.connected = false;
                    s.consecutive_errors = s.consecutive_errors.saturating_add(1);
                    s.last_error = Some(e.to_string());
                });
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Half the delay fixed, half random, so that sidecars that lost the registry together do
/// not come back together.
fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    let ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_millis(rand::rng().random_range(0..ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_delay() {
        for _ in 0..100 {
            let j = jittered(Duration::from_millis(200));
            assert!(
                j >= Duration::from_millis(100) && j < Duration::from_millis(200),
                "{j:?}"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_registry_counts_errors_and_keeps_none() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let (snaps, mut state) = spawn_watcher_with_state(client, "prod.internal");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if state.borrow().consecutive_errors >= 2 {
                break;
            }
            assert!(Instant::now() < deadline, "watcher never reported errors");
            let _ = tokio::time::timeout(Duration::from_secs(1), state.changed()).await;
        }
        assert!(!state.borrow().connected);
        assert!(snaps.borrow().is_none());
    }
}
