//! What client commands name: objects as `KIND/NAME` (`workload/web`, `job/backup`;
//! workloads and jobs share one name space), and what `get` lists.

use setpoint::status::{WorkloadKind, WorkloadStatus};

use super::client::{ApiError, Client, local_error};

/// `workload`, `workloads`, `wl`, `job`, `jobs`.
pub fn parse_kind(word: &str) -> Option<WorkloadKind> {
    match word {
        "workload" | "workloads" | "wl" => Some(WorkloadKind::Workload),
        "job" | "jobs" => Some(WorkloadKind::Job),
        _ => None,
    }
}

/// `KIND/NAME` or `NAME` → the kind (if given) and the name.
pub fn parse_target(target: &str) -> Result<(Option<WorkloadKind>, &str), ApiError> {
    match target.split_once('/') {
        None if !target.is_empty() => Ok((None, target)),
        Some((kind, name)) if !name.is_empty() => match parse_kind(kind) {
            Some(kind) => Ok((Some(kind), name)),
            None => Err(local_error(format!(
                "unknown kind `{kind}`; the kinds are: workload, job"
            ))),
        },
        _ => Err(local_error(format!(
            "`{target}` names nothing; write KIND/NAME, e.g. workload/web or job/backup"
        ))),
    }
}

/// Why `KIND/NAME` was not found.
pub enum Missing {
    /// The daemon runs nothing by that name.
    NotRunning(ApiError),
    /// It does, of another kind.
    OtherKind(ApiError),
    /// The daemon could not be asked, or answered otherwise.
    Failed(ApiError),
}

impl Missing {
    /// The error to show.
    pub fn error(self) -> ApiError {
        match self {
            Self::NotRunning(e) | Self::OtherKind(e) | Self::Failed(e) => e,
        }
    }
}

/// Fetches `KIND/NAME`; the kind, when given, must match the object's.
pub async fn fetch(client: &Client, target: &str) -> Result<WorkloadStatus, Missing> {
    let (kind, name) = parse_target(target).map_err(Missing::Failed)?;
    let w: WorkloadStatus = client
        .get_json(&format!("/v1/workloads/{}", url_word(name)))
        .await
        .map_err(|e| {
            if e.status == Some(404) {
                Missing::NotRunning(e)
            } else {
                Missing::Failed(e)
            }
        })?;
    match kind {
        Some(kind) if kind != w.kind => Err(Missing::OtherKind(local_error(format!(
            "{}/{name} not found: `{name}` is a {}",
            kind.noun(),
            w.kind
        )))),
        _ => Ok(w),
    }
}

/// `word` made safe for a URL path segment or query value (names are DNS labels and
/// instance ids; anything else is percent-encoded).
pub fn url_word(word: &str) -> String {
    word.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What `get` lists.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Listing {
    /// Workloads, then jobs (no kind given).
    All,
    /// One kind of object.
    Of(WorkloadKind),
    /// Live instances, of every workload and job (or of the one named).
    Instances,
}

impl Listing {
    /// Parses `get`'s first word.
    pub fn parse(word: &str) -> Result<Self, ApiError> {
        match word {
            "all" => Ok(Self::All),
            "instances" | "instance" | "inst" => Ok(Self::Instances),
            other => parse_kind(other).map(Self::Of).ok_or_else(|| {
                local_error(format!(
                    "unknown kind `{other}`; the kinds are: workloads, jobs, instances"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_or_without_a_kind() {
        assert!(matches!(parse_target("web"), Ok((None, "web"))));
        assert!(matches!(
            parse_target("job/backup"),
            Ok((Some(WorkloadKind::Job), "backup"))
        ));
        assert!(parse_target("pod/web").is_err());
        assert!(parse_target("job/").is_err());
        assert!(parse_target("").is_err());
        assert_eq!(url_word("a b/c"), "a%20b%2Fc");
    }
}
