//! Host bindings of `wit/workload.wit`: the `lifecycle` exports setpoint calls and the
//! `heartbeat` import it provides (implemented on the Store data, in `store_data.rs`).

wasmtime::component::bindgen!({
    path: "../wit/workload",
    world: "reactor",
    exports: { default: async },
});

pub use exports::setpoint::workload::lifecycle::HealthStatus;

/// The export and import names by which a component's style is recognised.
pub const LIFECYCLE_EXPORT: &str = "setpoint:workload/lifecycle@0.1.0";
/// The heartbeat interface's import name.
pub const HEARTBEAT_IMPORT: &str = "setpoint:workload/heartbeat@0.1.0";
