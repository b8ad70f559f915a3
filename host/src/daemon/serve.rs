//! Serving the control API on one listener, with limits, so that no client can starve
//! the daemon: at most `max_connections` connections per listener (one more is closed
//! at once), a deadline for each request's headers (which also closes idle keep-alive
//! connections), and a bounded graceful shutdown. Each listener has its own limits, so a
//! flood on the TCP listener cannot take the Unix socket's connections.

use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// How long open connections get to finish once the daemon stops.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` until `stop` turns true, then lets open connections
/// finish within the grace period and drops the rest.
pub async fn serve<L: Listener>(
    mut listener: L,
    router: axum::Router,
    limits: ServeLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut full_warned = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => Some(accepted),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some((io, _)) = accepted else { break };
        // Reap finished connection tasks so the set stays as small as what is open.
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !full_warned {
                tracing::warn!(
                    "the API listener has {} connections open, its limit: closing new ones",
                    limits.max_connections
                );
                full_warned = true;
            }
            drop(io);
            continue;
        };
        full_warned = false;
        let service = TowerToHyperService::new(router.clone());
        let mut stopping = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            let stopped = tokio::select! {
                _ = connection.as_mut() => false,
                _ = stopping.wait_for(|s| *s) => true,
            };
            if stopped {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.shutdown_grace, connection).await;
            }
        });
    }
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}
