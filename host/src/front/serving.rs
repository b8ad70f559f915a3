//! The front of a build with HTTP: listeners bound at plan, routing tables swapped at
//! commit, one [`Service`] per served workload.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::listener::Listener;
use super::routes::{self, Route, RouteTable};
use super::{FrontConfig, Wanted, forward};
use crate::manifest::{Diagnostic, HttpSpec};
use crate::metrics::Metrics;
use crate::runtime::http::Service;

/// An accepted plan: the sockets bound for new addresses, and the batch's settings.
pub(crate) struct Plan {
    bound: BTreeMap<SocketAddr, std::net::TcpListener>,
    batch: Vec<(Arc<str>, Option<HttpSpec>)>,
}

/// One served workload.
struct Served {
    service: Arc<Service>,
    spec: Arc<HttpSpec>,
}

#[derive(Default)]
struct State {
    served: BTreeMap<Arc<str>, Served>,
    /// By the address the specs name (which may have port 0).
    listeners: BTreeMap<SocketAddr, Listener>,
}

/// The listeners and routes of a host's HTTP workloads.
pub(crate) struct Front {
    config: FrontConfig,
    outlets: Arc<forward::Outlets>,
    state: Mutex<State>,
}

impl Front {
    /// A front serving nothing yet.
    pub fn new(
        mut config: FrontConfig,
        metrics: Arc<Metrics>,
        logs: tokio::sync::broadcast::Sender<crate::runtime::LogLine>,
    ) -> Self {
        // hyper refuses a head buffer under 8 KiB (it panics): clamp, never panic.
        config.max_head_bytes = config.max_head_bytes.max(8192);
        config.max_connections = config.max_connections.max(1);
        let outlets = Arc::new(forward::Outlets {
            metrics,
            logs,
            max_head_bytes: config.max_head_bytes,
        });
        Self {
            config,
            outlets,
            state: Mutex::new(State::default()),
        }
    }

    /// Checks that `batch` can be served beside the workloads it leaves in place: no
    /// route claimed twice on one address, every new address bound. Binds the new
    /// addresses (so that nothing can take them before the commit).
    pub fn plan(&self, batch: &[Wanted<'_>]) -> Result<Plan, Vec<Diagnostic>> {
        let state = self.lock();
        let mut problems = Vec::new();
        // Address → route key → the workload claiming it.
        let mut claims: BTreeMap<SocketAddr, BTreeMap<String, &str>> = BTreeMap::new();
        for (name, served) in &state.served {
            if batch.iter().any(|w| w.name == &**name) {
                continue;
            }
            let routes = claims.entry(served.spec.listen).or_default();
            for r in &served.spec.routes {
                routes.insert(routes::key(r), name);
            }
        }
        for w in batch {
            let Some(http) = w.http else { continue };
            let routes = claims.entry(http.listen).or_default();
            for r in &http.routes {
                if let Some(other) = routes.insert(routes::key(r), w.name)
                    && other != w.name
                {
                    problems.push(
                        Diagnostic::at(
                            w.origin.cloned(),
                            format!(
                                "route `{r}` on {} is already served by workload `{other}`",
                                http.listen
                            ),
                        )
                        .with_help(
                            "give one of them another route or another spec.http.listen address",
                        ),
                    );
                }
            }
        }
        let mut bound = BTreeMap::new();
        for w in batch {
            let Some(http) = w.http else { continue };
            if state.listeners.contains_key(&http.listen) || bound.contains_key(&http.listen) {
                continue;
            }
            match bind(http.listen) {
                Ok(socket) => {
                    bound.insert(http.listen, socket);
                }
                Err(e) => problems.push(
                    Diagnostic::at(
                        w.origin.cloned(),
                        format!("workload `{}` cannot listen on {}: {e}", w.name, http.listen),
                    )
                    .with_help(
                        "another process (or another setpoint) may hold the address; choose another spec.http.listen",
                    ),
                ),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let batch = batch
            .iter()
            .map(|w| (Arc::from(w.name), w.http.cloned()))
            .collect();
        Ok(Plan { bound, batch })
    }

    /// Serves what `plan` accepted: services made or updated, routing tables swapped,
    /// new listeners started and empty ones stopped.
    pub fn commit(&self, plan: Plan) {
        let mut state = self.lock();
        for (name, http) in plan.batch {
            match http {
                Some(spec) => match state.served.get_mut(&name) {
                    Some(served) => {
                        served.service.set_max_queued(spec.max_queued);
                        served.spec = Arc::new(spec);
                    }
                    None => {
                        let service = Service::new(name.clone(), spec.max_queued);
                        let spec = Arc::new(spec);
                        state.served.insert(name, Served { service, spec });
                    }
                },
                None => {
                    if let Some(gone) = state.served.remove(&name) {
                        gone.service.close();
                    }
                }
            }
        }
        self.rebuild(&mut state, plan.bound);
    }

    /// Stops routing to workload `name` (deleted): its queued requests are answered
    /// 503, its replicas finish what they serve.
    pub fn withdraw(&self, name: &str) {
        let mut state = self.lock();
        if let Some(gone) = state.served.remove(name) {
            gone.service.close();
            self.rebuild(&mut state, BTreeMap::new());
        }
    }

    /// The service of workload `name`, if it serves HTTP.
    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        self.lock().served.get(name).map(|s| s.service.clone())
    }

    /// The URL workload `name` is served at (its first route on its listener's real
    /// address).
    pub fn url(&self, name: &str) -> Option<String> {
        let state = self.lock();
        let served = state.served.get(name)?;
        let local = state
            .listeners
            .get(&served.spec.listen)
            .map_or(served.spec.listen, |l| l.local);
        let route = served.spec.routes.first().map_or("/", String::as_str);
        Some(format!("http://{local}{route}"))
    }

    /// What the front knows of an HTTP workload, added to its status: its URL, its
    /// queue, each replica's load.
    pub fn add_status(&self, status: &mut crate::status::WorkloadStatus) {
        let Some(service) = self.service(&status.name) else {
            return;
        };
        let replicas = service.replicas();
        status.http = Some(crate::status::HttpStatus {
            url: self.url(&status.name).unwrap_or_default(),
            queued: service.queued() as u64,
            in_flight: service.in_flight() as u64,
        });
        for instance in &mut status.instances {
            if let Some(r) = replicas.get(instance.id.as_str()) {
                instance.http = Some(crate::status::ReplicaHttp {
                    draining: r.draining,
                    in_flight: r.in_flight,
                    served: r.served,
                    failed: r.failed,
                });
            }
        }
    }

    /// Every served workload's (name, requests in flight, requests queued).
    pub fn loads(&self) -> Vec<(String, usize, usize)> {
        self.lock()
            .served
            .iter()
            .map(|(name, s)| (name.to_string(), s.service.in_flight(), s.service.queued()))
            .collect()
    }

    /// Stops accepting on every listener, and waits (at most `grace`) until every
    /// connection is closed and no request is queued or in flight.
    pub async fn drain(&self, grace: Duration) {
        let deadline = crate::clock::from_now(grace);
        {
            let state = self.lock();
            for l in state.listeners.values() {
                l.stop();
            }
        }
        loop {
            let busy = {
                let state = self.lock();
                state.listeners.values().any(|l| l.open_connections() > 0)
                    || state
                        .served
                        .values()
                        .any(|s| s.service.in_flight() > 0 || s.service.queued() > 0)
            };
            if !busy || std::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut state = self.lock();
        for s in state.served.values() {
            s.service.close();
        }
        state.listeners.clear();
    }

    /// Builds every listener's table from what is served, starting listeners on the
    /// sockets `bound` and stopping those left with no route.
    fn rebuild(&self, state: &mut State, mut bound: BTreeMap<SocketAddr, std::net::TcpListener>) {
        let mut tables: BTreeMap<SocketAddr, Vec<Route>> = BTreeMap::new();
        for served in state.served.values() {
            let routes = tables.entry(served.spec.listen).or_default();
            for r in &served.spec.routes {
                routes.push(Route {
                    prefix: routes::key(r),
                    service: served.service.clone(),
                    spec: served.spec.clone(),
                });
            }
        }
        state.listeners.retain(|addr, _| tables.contains_key(addr));
        for (addr, routes) in tables {
            let table = RouteTable::new(routes);
            if let Some(listener) = state.listeners.get(&addr) {
                listener.swap(table);
                continue;
            }
            let socket = match bound.remove(&addr) {
                Some(socket) => Ok(socket),
                // Served before without a listener of its own (cannot happen: plan
                // binds every new address); bind now rather than serve nothing.
                None => bind(addr),
            };
            match socket.and_then(|s| Listener::start(s, table, &self.config, self.outlets.clone()))
            {
                Ok(listener) => {
                    tracing::info!(address = %listener.local, "serving HTTP");
                    state.listeners.insert(addr, listener);
                }
                Err(e) => tracing::error!(%addr, "cannot serve HTTP: {e}"),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Binds and listens on `addr` (address reuse on, as servers do, so a restarted host
/// can take its port back at once).
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    listener.into_std()
}
