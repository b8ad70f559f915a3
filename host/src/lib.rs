//! # setpoint
//!
//! A WebAssembly-sandboxed workload reconciler. You declare which Wasm components should
//! run and how many; the host spawns their instances in-process on wasmtime, checks their
//! health, and replaces failed ones, continuously reconciling observed state to desired
//! state.
//!
//! The CLI (`setpoint run`) is a thin layer over this library. To embed the host in your
//! own process:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use setpoint::{Host, WorkloadSpec, Workload};
//!
//! let host = Host::builder().build()?;
//! let mut spec = WorkloadSpec::new("/opt/app/ticker.wasm");
//! spec.replicas = 3;
//! host.apply(vec![Workload::new("ticker", spec)]).await?;
//! let status = host.status().await;
//! println!("{} ready", status.workloads[0].ready);
//! host.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Modules, from the outside in: [`manifest`] (YAML and specs), [`host`] (the handle),
//! `controller` (the reconcile loop), [`policy`] (decisions), [`runtime`] (wasmtime),
//! [`status`] (what users see).

mod controller;
pub mod host;
pub mod manifest;
pub mod policy;
pub mod runtime;
pub mod status;

pub use controller::ControllerConfig;
pub use host::{Host, HostBuilder};
pub use manifest::{Diagnostic, Rejected, RestartPolicy, Workload, WorkloadSpec};
pub use status::{Event, EventType, HostStatus, Phase, WorkloadStatus};
