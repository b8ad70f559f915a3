//! How an instance ended, as a closed set of names: the one vocabulary of end reasons
//! that the runtime classifies into ([`crate::runtime::EndReason::kind`]), that
//! policies decide on, that snapshots and plugins carry by name, and that a Job's
//! failure rules match. It depends on nothing else of setpoint's.

use serde::{Deserialize, Serialize};

/// Every way an instance can end, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EndKind {
    /// `run` returned, or the guest called `exit`.
    Exited,
    /// The guest trapped.
    Trapped,
    /// A `memory.grow` beyond the instance's memory cap.
    OutOfMemory,
    /// The instance spent its CPU budget.
    CpuBudgetExceeded,
    /// A reactor's `start` failed.
    StartFailed,
    /// The component could not be instantiated at all.
    InstantiationFailed,
    /// The health probe failed `failureThreshold` times in a row.
    ProbeFailed,
    /// A health probe call did not return in time.
    ProbeTimeout,
    /// No heartbeat within the watchdog timeout.
    WatchdogTimeout,
    /// An HTTP request it served did not finish within `http.requestTimeout`.
    RequestTimeout,
    /// The host stopped the instance.
    Stopped,
}

impl EndKind {
    /// Every kind.
    pub const ALL: [Self; 11] = [
        Self::Exited,
        Self::Trapped,
        Self::OutOfMemory,
        Self::CpuBudgetExceeded,
        Self::StartFailed,
        Self::InstantiationFailed,
        Self::ProbeFailed,
        Self::ProbeTimeout,
        Self::WatchdogTimeout,
        Self::RequestTimeout,
        Self::Stopped,
    ];

    /// The ends a Job's failure rule may name (`onReasons`): those a run can come to
    /// by itself, once it is running.
    pub const RULE_REASONS: [Self; 6] = [
        Self::Exited,
        Self::Trapped,
        Self::OutOfMemory,
        Self::CpuBudgetExceeded,
        Self::StartFailed,
        Self::WatchdogTimeout,
    ];

    /// The stable, machine-readable name (`Exited`, `Trapped`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Exited => "Exited",
            Self::Trapped => "Trapped",
            Self::OutOfMemory => "OutOfMemory",
            Self::CpuBudgetExceeded => "CpuBudgetExceeded",
            Self::StartFailed => "StartFailed",
            Self::InstantiationFailed => "InstantiationFailed",
            Self::ProbeFailed => "ProbeFailed",
            Self::ProbeTimeout => "ProbeTimeout",
            Self::WatchdogTimeout => "WatchdogTimeout",
            Self::RequestTimeout => "RequestTimeout",
            Self::Stopped => "Stopped",
        }
    }

    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Ended because the host asked it to (never a failure, never a restart).
    pub fn is_host_stop(self) -> bool {
        self == Self::Stopped
    }

    /// A failure that would recur identically on every retry.
    pub fn is_deterministic(self) -> bool {
        self == Self::InstantiationFailed
    }
}

impl std::fmt::Display for EndKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// What a policy knows of an end: its kind and, for an exit, its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndSummary {
    /// How it ended.
    pub kind: EndKind,
    /// The exit status, for `Exited`.
    pub exit_code: Option<i32>,
}

impl EndSummary {
    /// An end of `kind` that was not an exit.
    pub fn of(kind: EndKind) -> Self {
        Self {
            kind,
            exit_code: None,
        }
    }

    /// An exit with `code`.
    pub fn exited(code: i32) -> Self {
        Self {
            kind: EndKind::Exited,
            exit_code: Some(code),
        }
    }

    /// An exit with status 0.
    pub fn is_success(&self) -> bool {
        self.kind == EndKind::Exited && self.exit_code == Some(0)
    }

    /// Ended because the host asked it to.
    pub fn is_host_stop(&self) -> bool {
        self.kind.is_host_stop()
    }

    /// Retrying cannot help.
    pub fn is_deterministic(&self) -> bool {
        self.kind.is_deterministic()
    }
}

impl std::fmt::Display for EndSummary {
    /// `Exited (1)`, or the kind's name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.exit_code {
            Some(code) if self.kind == EndKind::Exited => write!(f, "Exited ({code})"),
            _ => f.write_str(self.kind.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_classify() {
        for kind in EndKind::ALL {
            assert_eq!(EndKind::from_name(kind.name()), Some(kind));
            let json = serde_json::to_string(&kind).expect("serializes");
            assert_eq!(json, format!("\"{}\"", kind.name()));
        }
        assert_eq!(EndKind::from_name("Exploded"), None);
        assert!(EndSummary::exited(0).is_success());
        assert!(!EndSummary::exited(1).is_success());
        assert!(EndSummary::of(EndKind::Stopped).is_host_stop());
        assert!(EndSummary::of(EndKind::InstantiationFailed).is_deterministic());
        assert_eq!(EndSummary::exited(3).to_string(), "Exited (3)");
        assert_eq!(EndSummary::of(EndKind::Trapped).to_string(), "Trapped");
    }
}
