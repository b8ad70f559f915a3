//! HTTP replicas. A replica of an HTTP workload is one instance slot that serves the
//! workload's requests one at a time through its component's
//! `wasi:http/incoming-handler@0.2`, on a warm instance reused for request after
//! request (up to `maxRequestsPerInstance`). A request whose instance traps, runs out
//! of memory or of time ends only that instance: the replica reports it (with the same
//! forensics as any end), builds a fresh instance from its pre-instantiated component
//! and serves on. `failureThreshold` failures in a row end the replica itself, which
//! the controller replaces under back-off.
//!
//! Requests come from the workload's [`Service`]: a bounded queue that only ready
//! replicas take from, so readiness gates traffic, a free replica takes the oldest
//! request, and a stopping replica simply stops taking. Readiness is earned by the
//! HTTP probe (`health.http`), sent through the component in-process.

use std::collections::{BTreeMap, VecDeque};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::sleep_until;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::exit::{EndReason, StopCause};
use super::instance::{InstanceEnd, InstanceEventKind, Reporter};
use super::output::OutputCapture;
use super::store_data::{InstanceState, build_store};
use super::vitals::Vitals;
use super::{Runtime, SpawnRequest};

/// A request body as the guest reads it.
pub type RequestBody = wasmtime_wasi_http::WasiBody;
/// A response body as the guest writes it.
pub type GuestBody = HyperOutgoingBody;

/// A request waiting for, or being served by, a replica.
pub struct HttpCall {
    /// The request; its body streams from the client unless it was kept for a retry.
    pub request: http::Request<RequestBody>,
    /// When the request must be answered by (its arrival plus `requestTimeout`).
    pub deadline: Instant,
    /// Where the outcome goes.
    pub respond: oneshot::Sender<Answer>,
}

/// What a replica made of a request.
pub enum Answer {
    /// The guest set a response head; its body streams as the guest writes it.
    Response {
        /// The head and the streaming body.
        response: http::Response<GuestBody>,
        /// Whether the handler returned normally after it (`false`: it trapped or ran
        /// out of time mid-body, and the body is cut short).
        finished: oneshot::Receiver<bool>,
        /// The replica that answered.
        replica: Arc<str>,
    },
    /// No response head came.
    Failed(Failure),
}

/// Why no response head came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The instance trapped, ran out of memory or of CPU first: another instance may
    /// well answer.
    Crashed(String),
    /// The request timed out (`requestTimeout`).
    TimedOut,
    /// The handler returned without a response, or answered with an error code.
    NoResponse(String),
    /// The request could not be handed to the guest.
    BadRequest(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Crashed(why) => write!(f, "the instance failed before answering: {why}"),
            Self::TimedOut => f.write_str("the request was not answered in time"),
            Self::NoResponse(why) | Self::BadRequest(why) => f.write_str(why),
        }
    }
}

/// A request refused because the workload's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// One HTTP workload's requests and the replicas serving them; shared by the front
/// that accepts requests and by every replica of the workload (of any revision).
pub struct Service {
    workload: Arc<str>,
    queue: Mutex<VecDeque<HttpCall>>,
    pushed: Notify,
    max_queued: AtomicUsize,
    replicas: Mutex<BTreeMap<Arc<str>, Arc<ReplicaStats>>>,
}

/// What one replica is doing, for status and routing.
#[derive(Debug, Default)]
pub struct ReplicaStats {
    ready: AtomicBool,
    busy: AtomicBool,
    draining: AtomicBool,
    served: AtomicU64,
    failed: AtomicU64,
}

/// A replica as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaView {
    /// Takes requests.
    pub ready: bool,
    /// Stopping: takes no new request, finishes the one it serves.
    pub draining: bool,
    /// Requests being served right now (0 or 1).
    pub in_flight: u32,
    /// Requests answered since the replica started.
    pub served: u64,
    /// Requests whose instance failed.
    pub failed: u64,
}

impl Service {
    /// The service of `workload`, queueing at most `max_queued` requests.
    pub fn new(workload: Arc<str>, max_queued: u32) -> Arc<Self> {
        Arc::new(Self {
            workload,
            queue: Mutex::new(VecDeque::new()),
            pushed: Notify::new(),
            max_queued: AtomicUsize::new(max_queued as usize),
            replicas: Mutex::new(BTreeMap::new()),
        })
    }

    /// The workload served.
    pub fn workload(&self) -> &str {
        &self.workload
    }

    /// Changes the queue's bound (a new revision's `maxQueued`).
    pub fn set_max_queued(&self, max_queued: u32) {
        self.max_queued
            .store(max_queued as usize, Ordering::Relaxed);
    }

    /// Queues a request for the next free ready replica; refuses it (and drops it)
    /// when the queue is full.
    pub fn submit(&self, call: HttpCall) -> Result<(), QueueFull> {
        {
            let mut queue = self.lock_queue();
            // Requests whose client has gone do not hold places.
            queue.retain(|c| !c.respond.is_closed());
            if queue.len() >= self.max_queued.load(Ordering::Relaxed) {
                return Err(QueueFull);
            }
            queue.push_back(call);
        }
        self.pushed.notify_one();
        Ok(())
    }

    /// Queues a retry ahead of every waiting request: it has waited once already.
    pub fn resubmit(&self, call: HttpCall) {
        self.lock_queue().push_front(call);
        self.pushed.notify_one();
    }

    /// Drops every waiting request (their senders see the service gone).
    pub fn close(&self) {
        self.lock_queue().clear();
    }

    /// Requests waiting for a replica.
    pub fn queued(&self) -> usize {
        self.lock_queue().len()
    }

    /// Requests being served.
    pub fn in_flight(&self) -> usize {
        self.lock_replicas()
            .values()
            .filter(|r| r.busy.load(Ordering::Relaxed))
            .count()
    }

    /// Replicas taking requests.
    pub fn ready_replicas(&self) -> usize {
        self.lock_replicas()
            .values()
            .filter(|r| r.ready.load(Ordering::Relaxed) && !r.draining.load(Ordering::Relaxed))
            .count()
    }

    /// Each live replica's state, by instance id.
    pub fn replicas(&self) -> BTreeMap<Arc<str>, ReplicaView> {
        self.lock_replicas()
            .iter()
            .map(|(id, r)| {
                let view = ReplicaView {
                    ready: r.ready.load(Ordering::Relaxed),
                    draining: r.draining.load(Ordering::Relaxed),
                    in_flight: u32::from(r.busy.load(Ordering::Relaxed)),
                    served: r.served.load(Ordering::Relaxed),
                    failed: r.failed.load(Ordering::Relaxed),
                };
                (id.clone(), view)
            })
            .collect()
    }

    /// The oldest waiting request whose client still waits.
    async fn take(&self) -> HttpCall {
        let mut pushed = pin!(self.pushed.notified());
        loop {
            pushed.as_mut().enable();
            if let Some(call) = self.try_take() {
                // Others may be waiting on what is left.
                if self.queued() > 0 {
                    self.pushed.notify_one();
                }
                return call;
            }
            pushed.as_mut().await;
            pushed.set(self.pushed.notified());
        }
    }

    fn try_take(&self) -> Option<HttpCall> {
        let mut queue = self.lock_queue();
        while let Some(call) = queue.pop_front() {
            if !call.respond.is_closed() {
                return Some(call);
            }
        }
        None
    }

    fn register(self: &Arc<Self>, instance: &Arc<str>) -> Registered {
        let stats = Arc::new(ReplicaStats::default());
        self.lock_replicas().insert(instance.clone(), stats.clone());
        Registered {
            service: self.clone(),
            instance: instance.clone(),
            stats,
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<HttpCall>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_replicas(&self) -> std::sync::MutexGuard<'_, BTreeMap<Arc<str>, Arc<ReplicaStats>>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A replica's entry in its service, removed when the replica ends.
struct Registered {
    service: Arc<Service>,
    instance: Arc<str>,
    stats: Arc<ReplicaStats>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.service.lock_replicas().remove(&self.instance);
    }
}

/// What serving one request did to the instance.
enum Spent {
    /// Still good for the next request.
    No,
    /// It trapped, ran out of memory or of time: it must be replaced.
    Yes(EndReason),
}

/// Everything a replica needs to build a fresh instance.
pub(super) struct Rebuild<'a> {
    pub rt: &'a Runtime,
    pub req: &'a SpawnRequest,
    pub capture: &'a OutputCapture,
    pub vitals: &'a Arc<Vitals>,
    pub pre: &'a ProxyPre<InstanceState>,
}

/// Serves the workload's requests until the replica is stopped, or fails
/// `failureThreshold` times in a row, or cannot build an instance.
pub(super) async fn drive_http(
    store: &mut Store<InstanceState>,
    parts: Rebuild<'_>,
    service: &Arc<Service>,
    reporter: &Reporter,
    mut stop_rx: watch::Receiver<Option<StopCause>>,
) -> EndReason {
    let Some(spec) = parts.req.spec.http.clone() else {
        return EndReason::StartFailed {
            message: "the component serves HTTP, and the workload sets no spec.http".into(),
        };
    };
    let mut proxy = match parts.pre.instantiate_async(&mut *store).await {
        Ok(p) => p,
        Err(e) => return EndReason::instantiation(&e, &parts.rt.config),
    };
    let mut born = Instant::now();
    let registered = service.register(&parts.req.instance);
    let stats = &registered.stats;
    reporter.send(InstanceEventKind::Running).await;
    let threshold = spec
        .probe
        .as_ref()
        .map_or(3, |p| p.timing.failure_threshold);
    let mut ready = spec.probe.is_none();
    if ready {
        stats.ready.store(true, Ordering::Relaxed);
        reporter.send(InstanceEventKind::Ready(true)).await;
    }
    let (mut probe_successes, mut failures) = (0u32, 0u32);
    let mut served_here = 0u32;
    let mut next_probe = crate::clock::from_now(
        spec.probe
            .as_ref()
            .map_or(Duration::ZERO, |p| p.timing.initial_delay),
    );
    let authority = spec.listen.to_string();
    let grace = parts.req.spec.termination_grace_period;
    loop {
        if let Some(cause) = *stop_rx.borrow() {
            stats.draining.store(true, Ordering::Relaxed);
            return EndReason::Stopped {
                cause,
                forced: false,
            };
        }
        enum Next {
            Stop,
            Probe,
            Serve(Box<HttpCall>),
        }
        let next = tokio::select! {
            biased;
            changed = stop_rx.changed() => {
                if changed.is_err() {
                    // The handle is gone: nobody will ever ask again.
                    return EndReason::Stopped { cause: StopCause::Deleted, forced: false };
                }
                Next::Stop
            }
            _ = sleep_until(next_probe.into()), if spec.probe.is_some() => Next::Probe,
            call = service.take(), if ready => Next::Serve(Box::new(call)),
        };
        let spent = match next {
            Next::Stop => {
                stats.draining.store(true, Ordering::Relaxed);
                continue;
            }
            Next::Probe => {
                let Some(probe) = &spec.probe else { continue };
                next_probe = crate::clock::from_now(probe.timing.period);
                let (answer, spent) =
                    probe_once(store, &proxy, &probe.path, &authority, probe.timing.timeout).await;
                let now_ready = match answer {
                    Ok(()) => {
                        failures = 0;
                        probe_successes = probe_successes.saturating_add(1);
                        ready || probe_successes >= probe.timing.success_threshold
                    }
                    Err(message) => {
                        probe_successes = 0;
                        failures += 1;
                        if failures >= probe.timing.failure_threshold {
                            return match spent {
                                Spent::Yes(reason) => reason,
                                Spent::No => EndReason::ProbeFailed { message },
                            };
                        }
                        false
                    }
                };
                if now_ready != ready {
                    ready = now_ready;
                    stats.ready.store(ready, Ordering::Relaxed);
                    reporter.send(InstanceEventKind::Ready(ready)).await;
                }
                spent
            }
            Next::Serve(call) => {
                stats.busy.store(true, Ordering::Relaxed);
                let timeout = spec.request_timeout;
                let spent = serve_one(
                    store,
                    &proxy,
                    *call,
                    (timeout, grace),
                    &mut stop_rx,
                    &parts.req.instance,
                    Some(reporter),
                )
                .await;
                stats.busy.store(false, Ordering::Relaxed);
                served_here = served_here.saturating_add(1);
                match &spent {
                    Spent::No => {
                        failures = 0;
                        stats.served.fetch_add(1, Ordering::Relaxed);
                    }
                    Spent::Yes(_) => {
                        failures += 1;
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                spent
            }
        };
        let worn_out =
            spec.max_requests_per_instance > 0 && served_here >= spec.max_requests_per_instance;
        let reason = match spent {
            Spent::Yes(reason) => Some(reason),
            Spent::No if worn_out => None,
            Spent::No => continue,
        };
        if let Some(reason) = &reason {
            if stop_rx.borrow().is_some() {
                // Stopped while serving: the grace period ran out mid-request.
                let cause = (*stop_rx.borrow()).unwrap_or(StopCause::Deleted);
                return EndReason::Stopped {
                    cause,
                    forced: true,
                };
            }
            if failures >= threshold {
                return reason.clone();
            }
        }
        // A fresh instance takes the spent one's place; the replica stays in rotation.
        // The fresh instance reports to the replica's gauge.
        let gauge = store.data().usage.clone();
        let (fresh, refused) = build_store(
            parts.rt,
            parts.req,
            parts.capture,
            parts.vitals.clone(),
            gauge,
        );
        let old = std::mem::replace(store, fresh);
        if let Some(reason) = reason {
            let end = InstanceEnd {
                reason,
                at: std::time::SystemTime::now(),
                ran_for: born.elapsed(),
                peak_memory_bytes: old.data().limiter.peak_memory(),
                cpu: old.data().cpu.used(),
                output: parts.capture.summary(),
            };
            reporter
                .send(InstanceEventKind::Recycled(Box::new(end)))
                .await;
        }
        drop(old);
        if let Some(message) = refused {
            return EndReason::StartFailed { message };
        }
        proxy = match parts.pre.instantiate_async(&mut *store).await {
            Ok(p) => p,
            Err(e) => return EndReason::instantiation(&e, &parts.rt.config),
        };
        born = Instant::now();
        served_here = 0;
        reporter.send_forensics().await;
    }
}

/// Hands one request to the guest and relays its response head as soon as it is set;
/// returns when the handler has returned (the body written), or the request's time is
/// up, or a stop's grace period ran out.
async fn serve_one(
    store: &mut Store<InstanceState>,
    proxy: &Proxy,
    call: HttpCall,
    (timeout, grace): (Duration, Duration),
    stop_rx: &mut watch::Receiver<Option<StopCause>>,
    replica: &Arc<str>,
    reporter: Option<&Reporter>,
) -> Spent {
    let HttpCall {
        request,
        deadline,
        respond,
    } = call;
    let (head_tx, mut head_rx) = oneshot::channel();
    let mut http = store.data_mut().http();
    let handed = http
        .new_incoming_request(Scheme::Http, request)
        .and_then(|req| Ok((req, http.new_response_outparam(head_tx)?)));
    let (incoming, outparam) = match handed {
        Ok(pair) => pair,
        Err(e) => {
            let _ = respond.send(Answer::Failed(Failure::BadRequest(format!(
                "the request cannot be handed to the component: {e}"
            ))));
            return Spent::No;
        }
    };
    let (finished_tx, finished_rx) = oneshot::channel();
    let mut respond = Some(respond);
    let mut finished_rx = Some(finished_rx);
    let mut stop_by: Option<Instant> = None;
    let far = crate::clock::from_now(crate::clock::FAR);
    let outcome = {
        let mut handle = pin!(proxy.wasi_http_incoming_handler().call_handle(
            &mut *store,
            incoming,
            outparam
        ));
        loop {
            tokio::select! {
                result = &mut handle => break Some(result),
                head = &mut head_rx, if respond.is_some() => {
                    let answer = match head {
                        Ok(Ok(response)) => match finished_rx.take() {
                            Some(finished) => Answer::Response {
                                response,
                                finished,
                                replica: replica.clone(),
                            },
                            None => continue,
                        },
                        Ok(Err(code)) => Answer::Failed(Failure::NoResponse(format!(
                            "the component answered with an error: {code:?}"
                        ))),
                        Err(_) => Answer::Failed(Failure::NoResponse(
                            "the component dropped its response without setting it".into(),
                        )),
                    };
                    if let Some(respond) = respond.take() {
                        let _ = respond.send(answer);
                    }
                }
                _ = sleep_until(deadline.into()) => break None,
                changed = stop_rx.changed(), if stop_by.is_none() => {
                    if changed.is_ok() {
                        stop_by = Some(crate::clock::from_now(grace));
                    } else {
                        stop_by = Some(Instant::now());
                    }
                }
                _ = sleep_until(stop_by.unwrap_or(far).into()), if stop_by.is_some() => break None,
            }
        }
    };
    // A head set just before the handler returned is still waiting here.
    if let Some(respond) = respond.take() {
        let answer = match (head_rx.try_recv(), &outcome) {
            (Ok(Ok(response)), _) => Answer::Response {
                response,
                finished: finished_rx.take().unwrap_or_else(|| oneshot::channel().1),
                replica: replica.clone(),
            },
            (Ok(Err(code)), _) => Answer::Failed(Failure::NoResponse(format!(
                "the component answered with an error: {code:?}"
            ))),
            (_, None) => Answer::Failed(Failure::TimedOut),
            (_, Some(Ok(()))) => Answer::Failed(Failure::NoResponse(
                "the component returned without setting a response".into(),
            )),
            // The answer says the first line only: no backtrace formatted for it.
            (_, Some(Err(e))) => Answer::Failed(Failure::Crashed(
                EndReason::from_guest_error_without_backtrace(e).to_string(),
            )),
        };
        let _ = respond.send(answer);
    }
    match outcome {
        Some(Ok(())) => {
            let _ = finished_tx.send(true);
            Spent::No
        }
        Some(Err(e)) => {
            let _ = finished_tx.send(false);
            // Its backtrace is formatted once a fresh instance took its place (a
            // probe's at once).
            Spent::Yes(match reporter {
                Some(reporter) => reporter.ended_by(e),
                None => EndReason::from_guest_error(&e),
            })
        }
        None => {
            let _ = finished_tx.send(false);
            Spent::Yes(EndReason::RequestTimeout {
                after_ms: timeout.as_millis() as u64,
            })
        }
    }
}

/// Most bytes of a probe's response body read (the rest is dropped).
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// Sends `GET path` through the component; a 2xx or 3xx answer within `timeout` passes.
async fn probe_once(
    store: &mut Store<InstanceState>,
    proxy: &Proxy,
    path: &str,
    authority: &str,
    timeout: Duration,
) -> (Result<(), String>, Spent) {
    let request = http::Request::builder()
        .method(http::Method::GET)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "setpoint-probe")
        .body(empty_body());
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return (
                Err(format!("cannot build the probe request: {e}")),
                Spent::No,
            );
        }
    };
    let (respond, answer) = oneshot::channel();
    let deadline = crate::clock::from_now(timeout);
    let call = HttpCall {
        request,
        deadline,
        respond,
    };
    let verdict = async move {
        match answer.await {
            Ok(Answer::Response { response, .. }) => {
                let status = response.status();
                let mut body = response.into_body();
                let mut read = 0usize;
                while read < PROBE_BODY_LIMIT {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            read += frame.data_ref().map_or(0, Bytes::len);
                        }
                        _ => break,
                    }
                }
                if status.is_success() || status.is_redirection() {
                    Ok(())
                } else {
                    Err(format!("GET {path} answered {status}"))
                }
            }
            Ok(Answer::Failed(f)) => Err(format!("GET {path}: {f}")),
            Err(_) => Err(format!("GET {path}: no answer")),
        }
    };
    // A probe is never interrupted by a stop: it is bounded by its own timeout.
    let (_never, mut no_stop) = watch::channel(None);
    let prober: Arc<str> = Arc::from("probe");
    let (spent, verdict) = tokio::join!(
        serve_one(
            store,
            proxy,
            call,
            (timeout, timeout),
            &mut no_stop,
            &prober,
            None
        ),
        tokio::time::timeout(timeout.saturating_add(Duration::from_millis(50)), verdict)
    );
    let verdict = verdict.unwrap_or_else(|_| Err(format!("GET {path}: no answer in time")));
    (verdict, spent)
}

/// An empty request body.
pub fn empty_body() -> RequestBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}
