//! One listening socket: accepts connections up to a bound, serves each with hyper's
//! HTTP/1.1 under the front's limits (head size, header-read and keep-alive idle
//! timeouts), and on shutdown stops accepting and lets every connection finish its
//! request and close (`Connection: close`).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::FrontConfig;
use super::forward::Outlets;
use super::routes::RouteTable;

/// The routes a listener serves, swapped whole by an apply.
pub(crate) type SharedTable = Arc<RwLock<Arc<RouteTable>>>;

/// A running listener: its address, its routes, and the switch that stops it.
pub(crate) struct Listener {
    /// The address actually bound (the port is real even when the spec said 0).
    pub local: SocketAddr,
    /// Its routing table.
    pub table: SharedTable,
    stop: watch::Sender<bool>,
    connections: Arc<Semaphore>,
    max_connections: usize,
}

impl Listener {
    /// Starts serving `socket` (bound and listening already) with `table`.
    pub fn start(
        socket: std::net::TcpListener,
        table: RouteTable,
        config: &FrontConfig,
        outlets: Arc<Outlets>,
    ) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let listener = TcpListener::from_std(socket)?;
        let table: SharedTable = Arc::new(RwLock::new(Arc::new(table)));
        let (stop, stopped) = watch::channel(false);
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let accept = accept_loop(
            listener,
            table.clone(),
            config.clone(),
            outlets,
            connections.clone(),
            stopped,
        );
        let task = tokio::spawn(accept);
        // The accept loop never ends but by its switch; if it dies of a bug, the host
        // must not go on looking healthy while serving nothing.
        tokio::spawn(async move {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(%local, "the HTTP listener's accept loop panicked; exiting");
                std::process::exit(70);
            }
        });
        Ok(Self {
            local,
            table,
            stop,
            connections,
            max_connections: config.max_connections,
        })
    }

    /// Replaces the routing table; requests already routed keep the old one.
    pub fn swap(&self, table: RouteTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// Stops accepting, and asks every connection to finish its request and close.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.connections.available_permits())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listener: TcpListener,
    table: SharedTable,
    config: super::FrontConfig,
    outlets: Arc<Outlets>,
    connections: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = until_stopped(&mut stopped) => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors, most likely: wait a little instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = until_stopped(&mut stopped) => return,
        };
        let _ = stream.set_nodelay(true);
        let table = table.clone();
        let outlets = outlets.clone();
        let mut stopped = stopped.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let table = table.read().unwrap_or_else(|p| p.into_inner()).clone();
                super::forward::forward(table, outlets.clone(), peer, request)
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(config.header_read_timeout)
                .max_buf_size(config.max_head_bytes)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = until_stopped(&mut stopped) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
}

/// Returns once the switch is on (or its sender is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    loop {
        if *stopped.borrow_and_update() {
            return;
        }
        if stopped.changed().await.is_err() {
            return;
        }
    }
}
