//! The job ledger's writer: a thread of its own that commits jobs' progress in batches
//! (one durable commit for whatever queued meanwhile, in order) and tells the controller
//! when each record is durable. The controller never waits on the disk; a job acts on
//! its progress (starts its next run, stops the others when finished, reports it) only
//! once the record is durable.

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::mpsc::UnboundedSender;

use crate::job::{JobLedger, JobProgress};

/// What the writer is asked to do, in order.
pub(super) enum LedgerOp {
    /// Record a job's progress.
    Record(Arc<str>, JobProgress),
    /// Forget a job (deleted, or past its time to live).
    Forget(Arc<str>),
}

/// A record made durable (or not: `error` says why).
pub(super) struct Durable {
    pub job: Arc<str>,
    pub progress: JobProgress,
    pub error: Option<String>,
}

/// The writer thread and its queue.
pub(super) struct LedgerWriter {
    queue: Option<mpsc::Sender<LedgerOp>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LedgerWriter {
    /// Starts the writer; each durable record is reported on `acks`.
    pub fn start(
        ledger: Arc<dyn JobLedger>,
        acks: UnboundedSender<Durable>,
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

fn write(ledger: &dyn JobLedger, ops: &mpsc::Receiver<LedgerOp>, acks: &UnboundedSender<Durable>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        batch.extend(ops.try_iter());
        let mut records: Vec<(Arc<str>, JobProgress)> = Vec::new();
        for op in batch {
            match op {
                LedgerOp::Record(job, progress) => records.push((job, progress)),
                LedgerOp::Forget(job) => {
                    // What was queued before the forget is written first.
                    flush(ledger, &mut records, acks);
                    if let Err(e) = ledger.forget(&job) {
                        tracing::error!(job = %job, "cannot forget the job's progress: {e:#}");
                    }
                }
            }
        }
        flush(ledger, &mut records, acks);
    }
}

/// Commits `records` at once and acknowledges each.
fn flush(
    ledger: &dyn JobLedger,
    records: &mut Vec<(Arc<str>, JobProgress)>,
    acks: &UnboundedSender<Durable>,
) {
    if records.is_empty() {
        return;
    }
    let batch: Vec<(&str, &JobProgress)> = records.iter().map(|(j, p)| (&**j, p)).collect();
    let error = ledger.record_all(&batch).err().map(|e| format!("{e:#}"));
    for (job, progress) in records.drain(..) {
        let _ = acks.send(Durable {
            job,
            progress,
            error: error.clone(),
        });
    }
}
