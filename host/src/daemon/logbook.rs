//! The daemon's memory of what happened: recent guest output per workload (for
//! `setpoint logs`) and recent events (for `setpoint events`), both bounded, with a
//! broadcast for followers. Events are also written to the store every
//! [`FLUSH_EVERY`], so `events` still shows what led up to a crash after a restart.
//!
//! Followers take the buffer and subscribe under one lock, so they see every line once:
//! nothing between the snapshot and the first streamed line is lost or repeated.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use super::store::Store;

/// Output lines kept per workload or job.
pub const LOG_LINES_PER_WORKLOAD: usize = 1000;
/// Workloads whose output is kept; past it the one written to least recently goes.
pub const MAX_LOGGED_WORKLOADS: usize = 4096;
/// Events kept in memory and in the store.
pub const MAX_EVENTS: usize = 1000;
/// How often new events are written to the store (a crash loses at most this much).
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// One line of guest output as the API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// When the daemon received it.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub time: SystemTime,
    /// The workload or job.
    pub workload: Arc<str>,
    /// The instance that wrote it.
    pub instance: Arc<str>,
    /// `stdout` or `stderr` (the guest's), or `access` (an HTTP service's requests).
    pub stream: crate::runtime::output::Stream,
    /// The line.
    pub line: String,
}

struct Logs {
    by_workload: HashMap<Arc<str>, Kept>,
    written: u64,
}

/// One workload's kept lines: its output, and apart from it its access lines (so that
/// a busy service's requests never push its own output out).
#[derive(Default)]
struct Kept {
    output: VecDeque<LogEntry>,
    access: VecDeque<LogEntry>,
    /// When it was last written to (the count of lines written before).
    at: u64,
}

/// Recent output and events, with followers.
pub struct Logbook {
    logs: Mutex<Logs>,
    log_tx: broadcast::Sender<LogEntry>,
    events: Mutex<VecDeque<Value>>,
    event_tx: broadcast::Sender<Value>,
    unflushed: Mutex<Vec<Value>>,
}

impl Logbook {
    /// A logbook holding the events the store kept from before this start.
    pub fn new(stored_events: Vec<Value>) -> Self {
        Self {
            logs: Mutex::new(Logs {
                by_workload: HashMap::new(),
                written: 0,
            }),
            log_tx: broadcast::channel(4096).0,
            events: Mutex::new(stored_events.into()),
            event_tx: broadcast::channel(1024).0,
            unflushed: Mutex::new(Vec::new()),
        }
    }

    /// Follows the host's logs and events until they close, flushing events to `store`.
    pub fn run(self: &Arc<Self>, host: &crate::Host, store: Arc<Store>) {
        for mut logs in [host.logs(), host.access_logs()] {
            let book = self.clone();
            tokio::spawn(async move {
                loop {
                    match logs.recv().await {
                        Ok(line) => book.add_line(line),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
        }
        let mut events = host.events();
        let book = self.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        journal(&event);
                        book.add_event(&event);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let book = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tick.tick().await;
                let pending = std::mem::take(&mut *lock(&book.unflushed));
                if pending.is_empty() {
                    continue;
                }
                let store = store.clone();
                let written =
                    tokio::task::spawn_blocking(move || store.append_events(&pending, MAX_EVENTS))
                        .await;
                if let Ok(Err(e)) = written {
                    tracing::warn!("cannot store recent events: {e}");
                }
            }
        });
    }

    fn add_line(&self, line: crate::runtime::LogLine) {
        let entry = LogEntry {
            time: SystemTime::now(),
            workload: line.workload,
            instance: line.instance,
            stream: line.stream,
            line: line.line,
        };
        let mut logs = lock(&self.logs);
        logs.written += 1;
        let written = logs.written;
        if !logs.by_workload.contains_key(&entry.workload)
            && logs.by_workload.len() >= MAX_LOGGED_WORKLOADS
            && let Some(oldest) = logs
                .by_workload
                .iter()
                .min_by_key(|(_, kept)| kept.at)
                .map(|(name, _)| name.clone())
        {
            logs.by_workload.remove(&oldest);
        }
        let kept = logs.by_workload.entry(entry.workload.clone()).or_default();
        let lines = if entry.stream == crate::runtime::output::Stream::Access {
            &mut kept.access
        } else {
            &mut kept.output
        };
        if lines.len() >= LOG_LINES_PER_WORKLOAD {
            lines.pop_front();
        }
        lines.push_back(entry.clone());
        kept.at = written;
        let _ = self.log_tx.send(entry);
    }

    /// Keeps an event of the daemon's own (one the host did not send).
    pub fn record(&self, event: &crate::Event) {
        journal(event);
        self.add_event(event);
    }

    fn add_event(&self, event: &crate::Event) {
        let Ok(value) = serde_json::to_value(event) else {
            return;
        };
        if event.reason == "Deleted" || event.reason == "TTLExpired" {
            self.forget_logs(&event.workload);
        }
        let mut events = lock(&self.events);
        if events.len() >= MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(value.clone());
        lock(&self.unflushed).push(value.clone());
        let _ = self.event_tx.send(value);
    }

    /// Drops the output kept for a deleted workload.
    pub fn forget_logs(&self, workload: &str) {
        lock(&self.logs).by_workload.remove(workload);
    }

    /// The kept output of `workload` (or its access lines, with `access`), of one
    /// instance if given, at most the last `tail` lines, and a subscription to what
    /// comes next.
    pub fn logs(
        &self,
        workload: &str,
        instance: Option<&str>,
        tail: usize,
        access: bool,
    ) -> (Vec<LogEntry>, broadcast::Receiver<LogEntry>) {
        let logs = lock(&self.logs);
        let mut kept: Vec<LogEntry> = logs
            .by_workload
            .get(workload)
            .into_iter()
            .flat_map(|k| {
                if access {
                    k.access.iter()
                } else {
                    k.output.iter()
                }
            })
            .filter(|l| instance.is_none_or(|i| *l.instance == *i))
            .cloned()
            .collect();
        kept.drain(..kept.len().saturating_sub(tail));
        (kept, self.log_tx.subscribe())
    }

    /// The kept events (of one workload, if given), oldest first, and a subscription to
    /// what comes next.
    pub fn events(&self, workload: Option<&str>) -> (Vec<Value>, broadcast::Receiver<Value>) {
        let events = lock(&self.events);
        let kept = events
            .iter()
            .filter(|e| workload.is_none_or(|w| e["workload"] == w))
            .cloned()
            .collect();
        (kept, self.event_tx.subscribe())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The daemon's own log (stderr, so journald under systemd) gets a line for every
/// warning event (a crash, a back-off, a failure, a fence) and for the events that change
/// what runs (applied, deleted, rolled back, rescheduled); routine ones (an instance
/// started, a probe passed) stay in `setpoint events`.
fn journal(event: &crate::Event) {
    use crate::status::reason;
    let instance = event.instance.as_deref().unwrap_or("");
    match event.kind {
        crate::EventType::Warning => tracing::warn!(
            workload = %event.workload,
            instance,
            reason = %event.reason,
            "{}",
            event.message
        ),
        crate::EventType::Normal
            if [
                "Deleted",
                reason::ROLLED_BACK,
                reason::ROLLOUT_COMPLETE,
                reason::RESCHEDULED,
                reason::REJOINED,
            ]
            .contains(&event.reason.as_str()) =>
        {
            tracing::info!(
                workload = %event.workload,
                reason = %event.reason,
                "{}",
                event.message
            )
        }
        crate::EventType::Normal => {}
    }
}
