//! The job ledger's writer: a thread of its own that commits jobs' progress in batches
//! (one durable commit for whatever queued meanwhile, in order) and tells the controller
//! when each record is durable. The controller never waits on the disk; a job acts on
//! its progress (starts its next run, stops the others when finished, reports it) only
//! once the record is durable.
//!
//! A write that fails is never acknowledged: the writer keeps it, and everything queued
//! after it, and retries in order with back-off (50 ms doubling to 5 s) until the
//! ledger takes it. It tells the controller when writes stall and when they resume, so
//! that jobs pause visibly instead of running ahead of what is durable.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::job::{JobLedger, JobProgress};

/// What the writer is asked to do, in order.
pub(super) enum LedgerOp {
    /// Record a job's progress.
    Record(Arc<str>, JobProgress),
    /// Forget a job (deleted, or past its time to live).
    Forget(Arc<str>),
}

/// What the writer tells the controller.
pub(super) enum Notice {
    /// A record is durable.
    Durable(Arc<str>, JobProgress),
    /// Writes fail (the OS error, in words); nothing more is durable until `Resumed`.
    Stalled(String),
    /// Writes succeed again.
    Resumed,
}

/// The first wait before a failed write is tried again.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest wait between tries.
const LAST_RETRY: Duration = Duration::from_secs(5);

/// The writer thread and its queue.
pub(super) struct LedgerWriter {
    queue: Option<mpsc::Sender<LedgerOp>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LedgerWriter {
    /// Starts the writer; each durable record is reported on `acks`.
    pub fn start(
        ledger: Arc<dyn JobLedger>,
        acks: UnboundedSender<Notice>,
    ) -> std::io::Result<Self> {
        let (queue, ops) = mpsc::channel::<LedgerOp>();
        let thread = std::thread::Builder::new()
            .name("setpoint-ledger".into())
            .spawn(move || write(&*ledger, &ops, &acks))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues an operation (never blocks).
    pub fn send(&self, op: LedgerOp) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(op);
        }
    }

    /// Writes what is queued, then stops the thread.
    pub fn finish(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LedgerWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

fn write(ledger: &dyn JobLedger, ops: &mpsc::Receiver<LedgerOp>, acks: &UnboundedSender<Notice>) {
    let mut pending: Vec<LedgerOp> = Vec::new();
    let mut stalled: Option<String> = None;
    let mut wait = FIRST_RETRY;
    let mut closed = false;
    loop {
        if pending.is_empty() {
            if closed {
                return;
            }
            match ops.recv() {
                Ok(op) => pending.push(op),
                Err(_) => return,
            }
        }
        pending.extend(ops.try_iter());
        match apply(ledger, &mut pending, acks) {
            Ok(()) => {
                if stalled.take().is_some() {
                    tracing::info!("the job ledger writes again");
                    let _ = acks.send(Notice::Resumed);
                }
                wait = FIRST_RETRY;
            }
            Err(e) => {
                if stalled.as_deref() != Some(e.as_str()) {
                    tracing::error!("cannot record jobs' progress, retrying: {e}");
                    let _ = acks.send(Notice::Stalled(e.clone()));
                    stalled = Some(e);
                }
                if closed {
                    // Stopping, and the ledger still fails: what is not durable stays
                    // undone, so a restart runs it again rather than counting it twice.
                    tracing::error!("stopping with {} job record(s) not durable", pending.len());
                    return;
                }
                match ops.recv_timeout(wait) {
                    Ok(op) => pending.push(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
                }
                wait = (wait * 2).min(LAST_RETRY);
            }
        }
    }
}

/// Writes `pending` in order: records in batches (one commit each), forgets between
/// them. What succeeded is removed and acknowledged; the first failure stops it.
fn apply(
    ledger: &dyn JobLedger,
    pending: &mut Vec<LedgerOp>,
    acks: &UnboundedSender<Notice>,
) -> Result<(), String> {
    while !pending.is_empty() {
        let records = pending
            .iter()
            .take_while(|op| matches!(op, LedgerOp::Record(..)))
            .count();
        if let Some(LedgerOp::Forget(job)) = pending.first() {
            ledger.forget(job).map_err(|e| format!("{e:#}"))?;
            pending.remove(0);
            continue;
        }
        let batch: Vec<(&str, &JobProgress)> = pending[..records]
            .iter()
            .filter_map(|op| match op {
                LedgerOp::Record(job, progress) => Some((&**job, progress)),
                LedgerOp::Forget(_) => None,
            })
            .collect();
        ledger.record_all(&batch).map_err(|e| format!("{e:#}"))?;
        for op in pending.drain(..records) {
            if let LedgerOp::Record(job, progress) = op {
                let _ = acks.send(Notice::Durable(job, progress));
            }
        }
    }
    Ok(())
}
