//! How instances end: a closed taxonomy with stable reason names, shown in status and
//! events. Wasmtime errors are classified here and nowhere else.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::limits::{CpuBudgetExceeded, LimitExceeded, Resource};
use crate::end::{EndKind, EndSummary};

/// Longest error message kept for an ended instance.
const MAX_MESSAGE_BYTES: usize = 2048;

/// Why the host stopped an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum StopCause {
    /// The workload was scaled down and this slot is surplus.
    ScaleDown,
    /// The workload was removed or replaced by a new revision.
    Deleted,
    /// The host is shutting down.
    Shutdown,
    /// The workload's policy stopped it.
    Policy,
    /// A rollout replaced it with an instance of the new revision.
    Replaced,
}

/// Every way an instance can end.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "reason", rename_all_fields = "camelCase")]
pub enum EndReason {
    /// `run` returned, or the guest called `exit`; 0 is success.
    Exited {
        /// The exit status (WASI 0.2 reports only 0 or 1 unless `exit-with-code` is used).
        code: i32,
    },
    /// The guest trapped (a Rust panic is an `unreachable` trap).
    Trapped {
        /// The trap kind, e.g. `UnreachableCodeReached`, `StackOverflow`.
        trap: String,
        /// The error with its Wasm backtrace, bounded.
        message: String,
    },
    /// A `memory.grow` beyond the instance's memory cap.
    OutOfMemory {
        /// The total memory the guest asked to grow to, in bytes.
        requested: u64,
        /// The cap, in bytes.
        limit: u64,
        /// Where it happened: the Wasm backtrace, bounded.
        message: String,
    },
    /// The instance spent its CPU budget (`resources.cpu`).
    CpuBudgetExceeded {
        /// CPU used over its life, in milliseconds.
        used_ms: u64,
        /// The budget, in milliseconds.
        budget_ms: u64,
        /// Where it was: the Wasm backtrace, bounded.
        message: String,
    },
    /// A reactor's `start` returned an error or trapped.
    StartFailed {
        /// What `start` said, bounded.
        message: String,
    },
    /// The component could not be instantiated at all (deterministic: not retried).
    InstantiationFailed {
        /// The error, bounded.
        message: String,
    },
    /// The health probe answered `failing` `failureThreshold` times in a row.
    ProbeFailed {
        /// The last failure's message.
        message: String,
    },
    /// A health probe call did not return within the probe's timeout.
    ProbeTimeout {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// No heartbeat within the watchdog timeout.
    WatchdogTimeout {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// An HTTP request it served did not finish within `http.requestTimeout`.
    RequestTimeout {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// The host stopped the instance.
    Stopped {
        /// Why.
        cause: StopCause,
        /// Whether the instance had to be dropped after its grace period.
        forced: bool,
    },
}

impl EndReason {
    /// Which kind of end this is.
    pub fn kind(&self) -> EndKind {
        match self {
            Self::Exited { .. } => EndKind::Exited,
            Self::Trapped { .. } => EndKind::Trapped,
            Self::OutOfMemory { .. } => EndKind::OutOfMemory,
            Self::CpuBudgetExceeded { .. } => EndKind::CpuBudgetExceeded,
            Self::StartFailed { .. } => EndKind::StartFailed,
            Self::InstantiationFailed { .. } => EndKind::InstantiationFailed,
            Self::ProbeFailed { .. } => EndKind::ProbeFailed,
            Self::ProbeTimeout { .. } => EndKind::ProbeTimeout,
            Self::WatchdogTimeout { .. } => EndKind::WatchdogTimeout,
            Self::RequestTimeout { .. } => EndKind::RequestTimeout,
            Self::Stopped { .. } => EndKind::Stopped,
        }
    }

    /// What a policy knows of this end: its kind and exit status.
    pub fn summary(&self) -> EndSummary {
        match self {
            Self::Exited { code } => EndSummary::exited(*code),
            other => EndSummary::of(other.kind()),
        }
    }

    /// The stable, machine-readable reason name (`Exited`, `Trapped`, ...).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// An exit with status 0.
    pub fn is_success(&self) -> bool {
        self.summary().is_success()
    }

    /// Ended because the host asked it to (not a failure, never counted as a restart).
    pub fn is_host_stop(&self) -> bool {
        self.kind().is_host_stop()
    }

    /// What an event adds to the reason's name: the details, without the name's word
    /// again (`Trapped` + `UnreachableCodeReached: ...`, `Stopped` + `(Shutdown)`).
    pub fn detail(&self) -> String {
        match self {
            Self::Exited { code } => format!("with status {code}"),
            Self::Trapped { trap, message } => format!("{trap}: {}", first_line(message)),
            Self::OutOfMemory {
                requested, limit, ..
            } => format!("asked for {requested} bytes, the cap is {limit}"),
            Self::CpuBudgetExceeded {
                used_ms, budget_ms, ..
            } => format!("used {used_ms}ms, budget {budget_ms}ms"),
            Self::StartFailed { message }
            | Self::InstantiationFailed { message }
            | Self::ProbeFailed { message } => first_line(message).to_string(),
            Self::ProbeTimeout { after_ms } => format!("no answer within {after_ms}ms"),
            Self::WatchdogTimeout { after_ms } => format!("no heartbeat within {after_ms}ms"),
            Self::RequestTimeout { after_ms } => {
                format!("a request was not answered within {after_ms}ms")
            }
            Self::Stopped { cause, forced } => format!(
                "({cause:?}){}",
                if *forced {
                    ", forced after grace period"
                } else {
                    ""
                }
            ),
        }
    }

    /// Classifies an error returned by a call into the guest.
    pub fn from_guest_error(err: &wasmtime::Error) -> Self {
        Self::classify(err, true)
    }

    /// As [`Self::from_guest_error`], but the message leaves out the Wasm backtrace the
    /// error carries. Formatting one (up to 20 frames, their names demangled) took
    /// 14 µs at the median and 25–27 µs at p99, too long to spend between a trap and its
    /// replacement: an instance's task formats it after its end was handled (see
    /// `InstanceEventKind::Forensics`).
    pub(crate) fn from_guest_error_without_backtrace(err: &wasmtime::Error) -> Self {
        Self::classify(err, false)
    }

    /// Whether the message of this reason leaves something out of `err` that
    /// [`Self::from_guest_error`] would put in: a Wasm backtrace.
    pub(crate) fn backtrace_left_out(&self, err: &wasmtime::Error) -> bool {
        matches!(
            self,
            Self::Trapped { .. } | Self::OutOfMemory { .. } | Self::CpuBudgetExceeded { .. }
        ) && err.is::<wasmtime::WasmBacktrace>()
    }

    fn classify(err: &wasmtime::Error, with_backtrace: bool) -> Self {
        if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Self::Exited { code: exit.0 };
        }
        let message = bounded(&trap_text(err, with_backtrace));
        if let Some(e) = err.downcast_ref::<LimitExceeded>()
            && e.resource == Resource::Memory
        {
            return Self::OutOfMemory {
                requested: e.requested,
                limit: e.limit,
                message,
            };
        }
        if let Some(e) = err.downcast_ref::<CpuBudgetExceeded>() {
            return Self::CpuBudgetExceeded {
                used_ms: e.used.as_millis() as u64,
                budget_ms: e.budget.time.as_millis() as u64,
                message,
            };
        }
        if let Some(e) = err.downcast_ref::<LimitExceeded>() {
            return Self::Trapped {
                trap: "TableLimitExceeded".to_string(),
                message: format!("{e}\n{message}"),
            };
        }
        let trap = match err.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => format!("{trap:?}"),
            None => "HostError".to_string(),
        };
        Self::Trapped { trap, message }
    }

    /// An instantiation failure.
    pub fn instantiation(err: &wasmtime::Error, config: &super::RuntimeConfig) -> Self {
        let mut message = error_text(err);
        if let Some(hint) = super::mappings::exhaustion_hint(&message, config) {
            message = format!("{hint}; {message}");
        }
        Self::InstantiationFailed {
            message: bounded(&message),
        }
    }

    /// A probe or watchdog timeout of `after`.
    pub fn probe_timeout(after: Duration) -> Self {
        Self::ProbeTimeout {
            after_ms: after.as_millis() as u64,
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { code } => write!(f, "exited with status {code}"),
            Self::Trapped { trap, message } => {
                write!(f, "trapped ({trap}): {}", first_line(message))
            }
            Self::OutOfMemory {
                requested, limit, ..
            } => {
                write!(
                    f,
                    "out of memory: asked for {requested} bytes, the cap is {limit}"
                )
            }
            Self::CpuBudgetExceeded {
                used_ms, budget_ms, ..
            } => {
                write!(
                    f,
                    "CPU budget spent: used {used_ms}ms, budget {budget_ms}ms"
                )
            }
            Self::StartFailed { message } => write!(f, "start failed: {}", first_line(message)),
            Self::InstantiationFailed { message } => {
                write!(f, "cannot be instantiated: {}", first_line(message))
            }
            Self::ProbeFailed { message } => write!(f, "health probe failing: {message}"),
            Self::ProbeTimeout { after_ms } => {
                write!(f, "health probe did not answer within {after_ms}ms")
            }
            Self::WatchdogTimeout { after_ms } => write!(f, "no heartbeat within {after_ms}ms"),
            Self::RequestTimeout { after_ms } => {
                write!(f, "a request was not answered within {after_ms}ms")
            }
            Self::Stopped { cause, forced } => {
                write!(
                    f,
                    "stopped ({cause:?}){}",
                    if *forced {
                        ", forced after grace period"
                    } else {
                        ""
                    }
                )
            }
        }
    }
}

/// The error chain, outermost first, causes joined by `: `. Display, never Debug: see
/// WASMTIME-NOTES (Debug-formatting a wasmtime error at resource exhaustion deadlocked).
pub fn error_text(err: &wasmtime::Error) -> String {
    err.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// A trap's chain with the root cause (the trap itself) first, then the Wasm backtrace
/// (unless `with_backtrace` is false). wasmtime puts the backtrace it captured around the
/// error, as the chain's first link, and nothing wraps a guest's error after that.
fn trap_text(err: &wasmtime::Error, with_backtrace: bool) -> String {
    let skip = usize::from(!with_backtrace && err.is::<wasmtime::WasmBacktrace>());
    let causes: Vec<String> = err.chain().skip(skip).map(|c| c.to_string()).collect();
    let mut out = causes.last().cloned().unwrap_or_default();
    for cause in causes.iter().rev().skip(1) {
        out.push('\n');
        out.push_str(cause.trim_start_matches("error while executing at "));
    }
    out
}

fn bounded(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trap_is_classified_without_its_backtrace_first_and_with_it_after() {
        let trace = super::super::guest_exit::empty_backtrace().expect("an empty backtrace");
        let err = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached).context(trace);
        let quick = EndReason::from_guest_error_without_backtrace(&err);
        let full = EndReason::from_guest_error(&err);
        assert!(quick.backtrace_left_out(&err));
        let (EndReason::Trapped { trap, message }, EndReason::Trapped { message: all, .. }) =
            (&quick, &full)
        else {
            panic!("both are traps: {quick:?}, {full:?}");
        };
        assert_eq!(trap, "UnreachableCodeReached");
        assert!(!message.contains("wasm backtrace"), "{message}");
        assert!(all.contains("wasm backtrace"), "{all}");
        assert_eq!(first_line(message), first_line(all), "the same trap first");
        assert_eq!(quick.detail(), full.detail(), "events say the same");
    }

    #[test]
    fn an_error_without_a_backtrace_leaves_nothing_out() {
        let err = wasmtime::Error::new(wasmtime::Trap::StackOverflow);
        let quick = EndReason::from_guest_error_without_backtrace(&err);
        assert!(!quick.backtrace_left_out(&err));
        assert_eq!(quick, EndReason::from_guest_error(&err));
    }
}
