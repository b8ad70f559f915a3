//! One instance's task: it builds the instance's Store ([`super::store_data`]), drives
//! it (runs a command; or starts, probes and stops a reactor) and reports what happens
//! to the controller. An instance is never repaired: when it ends, its Store is dropped
//! with it.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout};
use wasmtime::Store;

use super::bindings::HealthStatus;
use super::exit::{EndReason, StopCause};
use super::output::{OutputCapture, OutputSummary};
use super::reflex::{Armed, ReflexTicket, Replacement, Standby};
use super::stacks::{Park, parking};
use super::store_data::{InstanceState, build_store};
use super::vitals::Vitals;
use super::{Prepared, Runtime, SpawnRequest};

/// What happened to an instance, as told to the controller.
#[derive(Debug)]
pub struct InstanceEvent {
    /// The workload.
    pub workload: Arc<str>,
    /// The slot the instance fills.
    pub slot: u32,
    /// The instance.
    pub instance: Arc<str>,
    /// What happened.
    pub kind: InstanceEventKind,
    /// When it happened, in the instance's own task (not when the controller heard of
    /// it: the guest may keep its worker thread busy for a while after, say, `Running`).
    pub at: std::time::SystemTime,
}

/// The kinds of instance events.
#[derive(Debug)]
pub enum InstanceEventKind {
    /// Instantiated (and, for reactors, `start` returned Ok).
    Running,
    /// Readiness changed.
    Ready(bool),
    /// The instance ended; its Store is gone.
    Ended(Box<InstanceEnd>),
    /// An HTTP replica's instance failed a request and a fresh one took its place; the
    /// replica (this event's instance id) serves on.
    Recycled(Box<InstanceEnd>),
    /// After `Ended`: the same reason with its message complete, the Wasm backtrace
    /// formatted, which the end left out so as not to delay the replacement.
    Forensics(Box<EndReason>),
    /// The instance ended, and its own task started its workload's armed spare in its
    /// slot (see [`super::reflex`]); sent by the replacement's task before its own
    /// events.
    EndedAndReplaced(Box<InstanceEnd>, Box<Replacement>),
}

/// The record of an ended instance.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceEnd {
    /// Why it ended.
    #[serde(flatten)]
    pub reason: EndReason,
    /// When it ended (its guest code returned, trapped or was stopped).
    #[serde(skip, default = "unix_epoch")]
    pub at: std::time::SystemTime,
    /// How long it existed.
    #[serde(with = "crate::serde_time::millis")]
    pub ran_for: Duration,
    /// The most linear memory it had, in bytes.
    pub peak_memory_bytes: u64,
    /// CPU time it spent executing Wasm (sampled at the epoch tick).
    #[serde(with = "crate::serde_time::millis", rename = "cpuMs")]
    pub cpu: Duration,
    /// Its output counters and last lines.
    pub output: OutputSummary,
}

fn unix_epoch() -> std::time::SystemTime {
    std::time::UNIX_EPOCH
}

/// The controller's grip on a live instance: ask it to stop, or abort it.
pub struct InstanceHandle {
    stop: watch::Sender<Option<StopCause>>,
    task: JoinHandle<()>,
    usage: Arc<super::limits::Usage>,
}

impl InstanceHandle {
    /// What the instance uses now (memory, CPU so far).
    pub fn usage(&self) -> &super::limits::Usage {
        &self.usage
    }

    /// Asks the instance to stop gracefully; it reports `Ended` when it is gone.
    pub fn stop(&self, cause: StopCause) {
        self.stop.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(cause);
                true
            } else {
                false
            }
        });
    }

    /// Drops the instance at once, without reporting, and waits until its task (and
    /// with it the Store) is gone.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Drops the instance at once, without reporting and without waiting.
    pub fn abort_now(self) {
        self.task.abort();
    }
}

/// An instance built ahead of need: its Store made and its component instantiated,
/// none of its guest code run yet (a command's `run`, a reactor's `start`). It waits
/// until [`Spare::start`] gives it a slot and an id, or until it is dropped, which
/// ends it without a word to anyone.
pub struct Spare {
    go: oneshot::Sender<Go>,
    handle: InstanceHandle,
}

/// What a spare learns when it is started: who it is and which slot it fills.
struct Go {
    instance: Arc<str>,
    slot: u32,
    reflex: Option<ReflexTicket>,
    /// When it replaces an ended instance directly: that instance's end, for this
    /// task to send before its own events, and a word back once it is sent (boxed: an
    /// instance's task keeps room for what it received while it lives).
    predecessor: Option<Box<(InstanceEvent, oneshot::Sender<()>)>>,
}

impl Spare {
    /// Starts the spare as `instance` in `slot`: from here on it is an instance like
    /// any other, and reports to the controller. With a `reflex` ticket, its end may
    /// start its workload's armed spare (see [`super::reflex`]).
    pub fn start(
        self,
        instance: Arc<str>,
        slot: u32,
        reflex: Option<ReflexTicket>,
    ) -> InstanceHandle {
        // The task is gone only if it panicked; the handle's task then reports nothing,
        // as an aborted instance would not.
        let _ = self.go.send(Go {
            instance,
            slot,
            reflex,
            predecessor: None,
        });
        self.handle
    }

    /// Starts the spare as `instance` in the slot of the instance that ended with
    /// `end` (told by `ended`'s reporter), and hands it the end to send first. Returns
    /// a receiver that resolves once the end is sent, or, if the spare's task is gone,
    /// gives back the end for the caller to send.
    fn replace(
        self,
        ended: &Reporter,
        end: Box<InstanceEnd>,
        (instance, revision, from_spare): (Arc<str>, Arc<str>, bool),
        reflex: ReflexTicket,
    ) -> Result<oneshot::Receiver<()>, Box<InstanceEnd>> {
        let (sent_tx, sent_rx) = oneshot::channel();
        let replacement = Replacement {
            instance: instance.clone(),
            revision,
            from_spare,
            at: std::time::SystemTime::now(),
            handle: self.handle,
        };
        let event = ended.event(InstanceEventKind::EndedAndReplaced(
            end,
            Box::new(replacement),
        ));
        let go = Go {
            instance,
            slot: ended.slot,
            reflex: Some(reflex),
            predecessor: Some(Box::new((event, sent_tx))),
        };
        match self.go.send(go) {
            Ok(()) => Ok(sent_rx),
            Err(go) => match go.predecessor.map(|p| p.0.kind) {
                Some(InstanceEventKind::EndedAndReplaced(end, replacement)) => {
                    replacement.handle.abort_now();
                    Err(end)
                }
                // Built above as `EndedAndReplaced`.
                _ => unreachable!("the predecessor's event is the one built here"),
            },
        }
    }

    /// Ends the spare at once (it never ran guest code, so there is nothing to stop).
    pub fn discard(self) {
        self.handle.task.abort();
    }

    /// Ends the spare and waits until its task, and with it its Store, is gone.
    pub async fn end(self) {
        self.handle.abort().await;
    }
}

/// Sends the end of the instance a direct replacement takes the place of, if it is one,
/// and says so to the ended instance's task.
async fn deliver(
    events: &mpsc::Sender<InstanceEvent>,
    predecessor: Option<Box<(InstanceEvent, oneshot::Sender<()>)>>,
) {
    let Some(predecessor) = predecessor else {
        return;
    };
    let (ended, sent) = *predecessor;
    send_event(events, ended).await;
    let _ = sent.send(());
}

/// Sends `event` to the controller, or nowhere once it is gone (only during shutdown,
/// when nothing is left to tell). Boxed when it must wait for room: an instance's task
/// would otherwise keep room for the wait for its whole life.
async fn send_event(events: &mpsc::Sender<InstanceEvent>, event: InstanceEvent) {
    if let Err(mpsc::error::TrySendError::Full(event)) = events.try_send(event) {
        let _ = Box::pin(events.send(event)).await;
    }
}

/// Starts what `armed` holds in the place of the instance `ended` reports for, which
/// ended with `end` (see [`Spare::replace`]): the armed spare, or the dormant task that
/// builds the instance once started.
fn start_replacement(
    ended: &Reporter,
    armed: Armed,
    end: Box<InstanceEnd>,
    reflex: ReflexTicket,
) -> Result<oneshot::Receiver<()>, Box<InstanceEnd>> {
    let Armed {
        standby,
        instance,
        revision,
    } = armed;
    let (spare, from_spare) = match standby {
        Standby::Spare(spare) => (spare, true),
        Standby::Dormant(spare) => (spare, false),
    };
    spare.replace(ended, end, (instance, revision, from_spare), reflex)
}

/// Spawns the instance `req` asks for: a spare started at once.
pub(super) fn spawn(
    rt: Arc<Runtime>,
    req: SpawnRequest,
    reflex: Option<ReflexTicket>,
    events: mpsc::Sender<InstanceEvent>,
) -> InstanceHandle {
    let (instance, slot) = (req.instance.clone(), req.slot);
    prepare(rt, req, events, false).start(instance, slot, reflex)
}

/// Builds a spare for `req` (whose instance id and slot are placeholders until it is
/// started); a `dormant` one builds nothing (no Store, no instantiation) until then.
pub(super) fn prepare(
    rt: Arc<Runtime>,
    req: SpawnRequest,
    events: mpsc::Sender<InstanceEvent>,
    dormant: bool,
) -> Spare {
    let (stop_tx, stop_rx) = watch::channel(None);
    let (go_tx, mut go_rx) = oneshot::channel::<Go>();
    let usage = Arc::new(super::limits::Usage::default());
    let gauge = usage.clone();
    let task = tokio::spawn(async move {
        // Boxed: the task keeps room for what it holds across the instantiation.
        let early: Option<Box<Go>> = match dormant {
            // Woken as a direct replacement, it tells the end at once, not once it
            // is built (an instantiation may take up to the start timeout).
            true => match (&mut go_rx).await {
                Ok(mut go) => {
                    deliver(&events, go.predecessor.take()).await;
                    Some(Box::new(go))
                }
                Err(_) => return,
            },
            false => None,
        };
        let capture = OutputCapture::new(
            req.workload.clone(),
            req.instance.clone(),
            rt.config.output,
            req.log_sink.clone(),
        );
        let vitals = Arc::new(Vitals::new());
        let (mut store, refused) = build_store(&rt, &req, &capture, vitals.clone(), gauge);
        let staged = match refused {
            // A grant that cannot be handed over fails the start (recorded, replaced):
            // an instance never runs with less than its spec grants.
            Some(message) => Staged::Failed(EndReason::StartFailed { message }),
            None => Box::pin(stage(&rt, &mut store, &req)).await,
        };
        // A plain spawn was started already; a spare parks its stack while it waits.
        // Dropped unstarted, a spare no longer wanted ends here, unheard of.
        let go = match (early, go_rx.try_recv()) {
            (Some(go), _) => *go,
            (None, Ok(go)) => go,
            (None, Err(oneshot::error::TryRecvError::Closed)) => return,
            (None, Err(oneshot::error::TryRecvError::Empty)) => {
                store.data().stack.park(false);
                let Ok(go) = (&mut go_rx).await else { return };
                go
            }
        };
        // The channel's allocation would otherwise live as long as the instance.
        drop(go_rx);
        let Go {
            instance,
            slot,
            reflex,
            predecessor,
        } = go;
        // A direct replacement tells its predecessor's end before its own events.
        deliver(&events, predecessor).await;
        store.data_mut().identity.instance = instance.clone();
        capture.rename(instance.clone());
        let reporter = Reporter {
            events,
            workload: req.workload.clone(),
            slot,
            instance,
            unformatted: Default::default(),
        };
        let started = Instant::now();
        vitals.restart_clock(started);
        let parts = Parts {
            rt: &rt,
            req: &req,
            capture: &capture,
            vitals: &vitals,
            reporter: &reporter,
        };
        let reason = drive(parts, &mut store, staged, stop_rx).await;
        // Set by the drivers when a stop reached the guest (an instance that could not
        // hear it ends as `Stopped`, which is never replaced directly).
        let stop_asked = vitals.stop_requested.load(Ordering::Acquire);
        let state = store.data();
        // An exit is dated by the guest's call, before the unwinding out of it.
        let at = state
            .exit_called_at
            .unwrap_or_else(std::time::SystemTime::now);
        let end = InstanceEnd {
            reason,
            at,
            ran_for: started.elapsed(),
            peak_memory_bytes: state.limiter.peak_memory(),
            cpu: state.cpu.used(),
            output: capture.summary(),
        };
        let replaced = match reflex
            .as_ref()
            .and_then(|t| t.fire(&req.spec, &end, stop_asked))
        {
            // The replacement's task sends the end, then runs first on this worker.
            Some((armed, ticket)) => start_replacement(&reporter, armed, Box::new(end), ticket)
                .map_err(InstanceEventKind::Ended),
            None => Err(InstanceEventKind::Ended(Box::new(end))),
        };
        let end_sent = match replaced {
            Ok(sent) => Some(sent),
            Err(ended) => {
                reporter.send(ended).await;
                None
            }
        };
        // The Store's teardown is off the recovery's path: this task yields first, so
        // that the controller (woken by the end) and what it starts run before it, on
        // this worker, and no other worker is woken to take either. (Measured against
        // dropping it here at once, which delayed the controller; dropping it in a task
        // spawned before the send, which queued it beside the controller and woke the
        // other worker, a cross-CPU wake-up on the path; and the epoch thread dropping
        // it, which competed with the workers for the CPU.)
        tokio::task::yield_now().await;
        drop(store);
        // The backtrace completes a record the controller must have first (a
        // replacement built at the end sends it once instantiated).
        if let Some(sent) = end_sent {
            let _ = sent.await;
        }
        reporter.send_forensics().await;
    });
    Spare {
        go: go_tx,
        handle: InstanceHandle {
            stop: stop_tx,
            task,
            usage,
        },
    }
}

/// An instance's component, instantiated (or why it could not be), its guest code not
/// yet run.
enum Staged {
    Command(wasmtime_wasi::p2::bindings::Command),
    Reactor(super::bindings::Reactor),
    /// Instantiated when it is started (an HTTP replica builds its own instances).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Deferred,
    Failed(EndReason),
}

/// Instantiates `req`'s component in `store`, within the start deadline (a component's
/// start functions run guest code too).
async fn stage(rt: &Runtime, store: &mut Store<InstanceState>, req: &SpawnRequest) -> Staged {
    let deadline = rt.config.start_timeout;
    let late = || {
        Staged::Failed(EndReason::StartFailed {
            message: format!("instantiation did not finish within {deadline:?}"),
        })
    };
    let lease = store.data().stack.clone();
    let command = match &req.component.pre {
        #[cfg(feature = "http")]
        Prepared::Http { command, .. } => match (&req.http, command) {
            (None, Some(command)) => command,
            _ => return Staged::Deferred,
        },
        Prepared::Command(pre) => pre,
        Prepared::Reactor(pre) => {
            let instantiate = parking(&lease, Park::Stay, pre.instantiate_async(&mut *store));
            return match timeout(deadline, instantiate).await {
                Err(_) => late(),
                Ok(Ok(r)) => Staged::Reactor(r),
                Ok(Err(e)) => Staged::Failed(EndReason::instantiation(&e, &rt.config)),
            };
        }
    };
    let instantiate = parking(&lease, Park::Stay, command.instantiate_async(&mut *store));
    match timeout(deadline, instantiate).await {
        Err(_) => late(),
        Ok(Ok(c)) => Staged::Command(c),
        Ok(Err(e)) => Staged::Failed(EndReason::instantiation(&e, &rt.config)),
    }
}

/// What driving a started instance needs besides its Store.
struct Parts<'a> {
    rt: &'a Runtime,
    req: &'a SpawnRequest,
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    capture: &'a OutputCapture,
    vitals: &'a Arc<Vitals>,
    reporter: &'a Reporter,
}

pub(super) struct Reporter {
    events: mpsc::Sender<InstanceEvent>,
    workload: Arc<str>,
    slot: u32,
    instance: Arc<str>,
    /// The error the instance ended with, while its backtrace is yet to be formatted.
    unformatted: std::sync::Mutex<Option<wasmtime::Error>>,
}

impl Reporter {
    /// Classifies the error a call into the guest ended with, leaving the formatting of
    /// its backtrace to [`Self::send_forensics`], after the end was handled.
    pub(super) fn ended_by(&self, err: wasmtime::Error) -> EndReason {
        let reason = EndReason::from_guest_error_without_backtrace(&err);
        if reason.backtrace_left_out(&err) {
            *self.unformatted.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
        }
        reason
    }

    /// Sends the complete reason of an end whose backtrace [`Self::ended_by`] left out.
    pub(super) async fn send_forensics(&self) {
        let err = self
            .unformatted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(err) = err {
            let reason = EndReason::from_guest_error(&err);
            self.send(InstanceEventKind::Forensics(Box::new(reason)))
                .await;
        }
    }

    pub(super) async fn send(&self, kind: InstanceEventKind) {
        send_event(&self.events, self.event(kind)).await;
    }

    /// An event of this instance, dated now (an end: when it ended).
    fn event(&self, kind: InstanceEventKind) -> InstanceEvent {
        let at = match &kind {
            InstanceEventKind::Ended(end)
            | InstanceEventKind::Recycled(end)
            | InstanceEventKind::EndedAndReplaced(end, _) => end.at,
            _ => std::time::SystemTime::now(),
        };
        InstanceEvent {
            workload: self.workload.clone(),
            slot: self.slot,
            instance: self.instance.clone(),
            kind,
            at,
        }
    }
}

async fn drive(
    parts: Parts<'_>,
    store: &mut Store<InstanceState>,
    staged: Staged,
    stop_rx: watch::Receiver<Option<StopCause>>,
) -> EndReason {
    let Parts {
        rt,
        req,
        vitals,
        reporter,
        ..
    } = parts;
    // Each driver is boxed: an instance's task then holds the state of the one it runs,
    // not room for the largest (the task lives as long as the instance).
    match staged {
        Staged::Failed(reason) => reason,
        Staged::Command(command) => {
            Box::pin(drive_command(
                store, &command, req, vitals, reporter, stop_rx,
            ))
            .await
        }
        Staged::Reactor(reactor) => {
            Box::pin(drive_reactor(
                rt, store, &reactor, req, vitals, reporter, stop_rx,
            ))
            .await
        }
        Staged::Deferred => Box::pin(drive_deferred(parts, store, stop_rx)).await,
    }
}

/// Drives what is instantiated only when started: an HTTP replica.
#[cfg(feature = "http")]
async fn drive_deferred(
    parts: Parts<'_>,
    store: &mut Store<InstanceState>,
    stop_rx: watch::Receiver<Option<StopCause>>,
) -> EndReason {
    let Parts {
        rt,
        req,
        capture,
        vitals,
        reporter,
    } = parts;
    match (&req.component.pre, &req.http) {
        (Prepared::Http { proxy, .. }, Some(service)) => {
            let rebuild = super::http::Rebuild {
                rt,
                req,
                capture,
                vitals,
                pre: proxy,
            };
            super::http::drive_http(store, rebuild, service, reporter, stop_rx).await
        }
        _ => EndReason::StartFailed {
            message: "the component only serves HTTP, and the workload sets no spec.http".into(),
        },
    }
}

#[cfg(not(feature = "http"))]
async fn drive_deferred(
    _parts: Parts<'_>,
    _store: &mut Store<InstanceState>,
    _stop_rx: watch::Receiver<Option<StopCause>>,
) -> EndReason {
    EndReason::StartFailed {
        message: "this build of setpoint serves no HTTP".into(),
    }
}

/// Runs a command to its end, watching its heartbeat and honouring stop requests.
async fn drive_command(
    store: &mut Store<InstanceState>,
    command: &wasmtime_wasi::p2::bindings::Command,
    req: &SpawnRequest,
    vitals: &Vitals,
    reporter: &Reporter,
    mut stop_rx: watch::Receiver<Option<StopCause>>,
) -> EndReason {
    let watchdog = req.spec.watchdog.map(|w| w.timeout);
    let grace = req.spec.termination_grace_period;
    let can_stop_gracefully = req.component.uses_heartbeat;
    reporter.send(InstanceEventKind::Running).await;
    let readiness = || {
        vitals.ready.load(Ordering::Acquire) && (watchdog.is_none() || vitals.last_beat().is_some())
    };
    let mut reported_ready = readiness();
    if reported_ready {
        reporter.send(InstanceEventKind::Ready(true)).await;
    }
    let mut stopping: Option<(StopCause, Instant)> = None;
    let lease = store.data().stack.clone();
    let mut run = pin!(parking(
        &lease,
        Park::KeepPages,
        command.wasi_cli_run().call_run(store)
    ));
    loop {
        let watchdog_due = watchdog.map(|t| vitals.last_beat().unwrap_or(vitals.started()) + t);
        let far = crate::clock::from_now(Duration::from_secs(3600));
        tokio::select! {
            result = &mut run => {
                let reason = match result {
                    Ok(Ok(())) => EndReason::Exited { code: 0 },
                    Ok(Err(())) => EndReason::Exited { code: 1 },
                    Err(e) => reporter.ended_by(e),
                };
                return match stopping {
                    Some((cause, _)) if !matches!(reason, EndReason::Trapped { .. }) => {
                        EndReason::Stopped { cause, forced: false }
                    }
                    _ => reason,
                };
            }
            _ = vitals.changed.notified() => {
                let now_ready = readiness();
                if now_ready != reported_ready {
                    reported_ready = now_ready;
                    reporter.send(InstanceEventKind::Ready(now_ready)).await;
                }
            }
            _ = sleep_until(watchdog_due.unwrap_or(far).into()), if watchdog_due.is_some() && stopping.is_none() => {
                let due = vitals.last_beat().unwrap_or(vitals.started()) + watchdog.unwrap_or_default();
                if Instant::now() >= due {
                    return EndReason::WatchdogTimeout { after_ms: watchdog.unwrap_or_default().as_millis() as u64 };
                }
            }
            changed = stop_rx.changed(), if stopping.is_none() => {
                let cause = if changed.is_ok() { (*stop_rx.borrow()).unwrap_or(StopCause::Deleted) } else { StopCause::Deleted };
                if !can_stop_gracefully || grace.is_zero() {
                    // The component cannot hear a stop request: dropping it is the only way.
                    return EndReason::Stopped { cause, forced: false };
                }
                vitals.stop_requested.store(true, Ordering::Release);
                stopping = Some((cause, crate::clock::from_now(grace)));
            }
            _ = sleep_until(stopping.map_or(far, |(_, d)| d).into()), if stopping.is_some() => {
                let (cause, _) = stopping.unwrap_or((StopCause::Deleted, far));
                return EndReason::Stopped { cause, forced: true };
            }
        }
    }
}

/// Starts a reactor, probes it on schedule, and stops it when asked.
async fn drive_reactor(
    rt: &Runtime,
    store: &mut Store<InstanceState>,
    reactor: &super::bindings::Reactor,
    req: &SpawnRequest,
    vitals: &Vitals,
    reporter: &Reporter,
    mut stop_rx: watch::Receiver<Option<StopCause>>,
) -> EndReason {
    let lifecycle = reactor.setpoint_workload_lifecycle();
    // Between calls a reactor holds no accessible stack, nor its pages.
    let lease = store.data().stack.clone();
    let idle = Park::DropPages;
    // The calls are boxed, here and below: this future lives as long as the instance,
    // and would otherwise keep room for the largest of them while the reactor idles.
    let start = parking(&lease, idle, lifecycle.call_start(&mut *store));
    match Box::pin(timeout(rt.config.start_timeout, start)).await {
        Err(_) => {
            return EndReason::StartFailed {
                message: format!("start did not return within {:?}", rt.config.start_timeout),
            };
        }
        Ok(Err(e)) => return reporter.ended_by(e),
        Ok(Ok(Err(message))) => return EndReason::StartFailed { message },
        Ok(Ok(Ok(()))) => {}
    }
    reporter.send(InstanceEventKind::Running).await;
    let probe = req.spec.probe;
    // Without a probe a started reactor is ready; with one, it must earn readiness.
    let mut ready = probe.is_none() && vitals.ready.load(Ordering::Acquire);
    if ready {
        reporter.send(InstanceEventKind::Ready(true)).await;
    }
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut next_probe = crate::clock::from_now(probe.map_or(Duration::ZERO, |p| p.initial_delay));
    loop {
        tokio::select! {
            _ = sleep_until(next_probe.into()), if probe.is_some() => {
                let Some(p) = probe else { continue };
                let health = parking(&lease, idle, lifecycle.call_health(&mut *store));
                let answer = match Box::pin(timeout(p.timeout, health)).await {
                    Err(_) => return EndReason::probe_timeout(p.timeout),
                    Ok(Err(e)) => return reporter.ended_by(e),
                    Ok(Ok(answer)) => answer,
                };
                let now_ready = match answer {
                    HealthStatus::Ready => {
                        failures = 0;
                        successes = successes.saturating_add(1);
                        ready || successes >= p.success_threshold
                    }
                    HealthStatus::NotReady(_) => {
                        (successes, failures) = (0, 0);
                        false
                    }
                    HealthStatus::Failing(message) => {
                        successes = 0;
                        failures += 1;
                        if failures >= p.failure_threshold {
                            return EndReason::ProbeFailed { message };
                        }
                        false
                    }
                };
                let now_ready = now_ready && vitals.ready.load(Ordering::Acquire);
                if now_ready != ready {
                    ready = now_ready;
                    reporter.send(InstanceEventKind::Ready(ready)).await;
                }
                next_probe = crate::clock::from_now(p.period);
            }
            _ = vitals.changed.notified() => {
                if ready && !vitals.ready.load(Ordering::Acquire) {
                    ready = false;
                    reporter.send(InstanceEventKind::Ready(false)).await;
                }
            }
            changed = stop_rx.changed() => {
                let cause = if changed.is_ok() { (*stop_rx.borrow()).unwrap_or(StopCause::Deleted) } else { StopCause::Deleted };
                vitals.stop_requested.store(true, Ordering::Release);
                let grace = req.spec.termination_grace_period;
                let stop = parking(&lease, idle, lifecycle.call_stop(&mut *store));
                let forced = !matches!(Box::pin(timeout(grace, stop)).await, Ok(Ok(())));
                return EndReason::Stopped { cause, forced };
            }
        }
    }
}
