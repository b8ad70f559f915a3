//! Manifests: the YAML format users write, its validation, and the typed specs the host
//! runs. Only this module knows YAML; everything else sees [`Workload`]s.

pub mod bounds;
mod check;
mod diagnostic;
mod load;
mod raw;
pub mod render;
pub mod revision;
pub(crate) mod rules;
mod spec;
pub mod units;
mod validate;
mod validate_job;

pub use check::check_workloads;
pub use diagnostic::{Diagnostic, Origin, Rejected};
pub use load::{
    API_VERSION, ManifestLimits, Resolver, load_files, load_str, load_str_resolving,
    load_str_with_files, parse_names,
};
pub use rules::{is_interface_name, route_key, unversioned};
pub use spec::{
    BackoffSpec, CpuBudget, DirGrant, ExitCodeOperator, FailureAction, FailureMatch, FailureRule,
    HttpProbe, HttpSpec, IntOrPercent, JobSpec, MAX_SPARES, PlacementSpec, PolicyPlugin, ProbeSpec,
    RestartBudget, RestartPolicy, RetrySpec, StrategyKind, UpdateStrategy, WatchdogSpec, Workload,
    WorkloadSpec,
};

/// The JSON Schema of the manifest format, generated from the types that parse it.
pub fn json_schema() -> serde_json::Value {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(raw::RawManifest)).expect("a schema serializes");
    schema["x-duration-ranges"] = bounds::as_json();
    schema
}
