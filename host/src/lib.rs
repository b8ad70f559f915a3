//! # setpoint
//!
//! A WebAssembly-sandboxed workload reconciler. You declare which Wasm components should
//! run and how many; the host spawns their instances in-process on wasmtime, checks their
//! health, and replaces failed ones, continuously reconciling observed state to desired
//! state.
//!
//! The CLI (`setpoint run`) is a thin layer over this library: anything it does, a
//! device agent embedding the host can do too. This page is the embedder's guide.
//!
//! ## Embedding in twenty lines
//!
//! A [`Host`] runs inside your tokio runtime (multi-threaded recommended). Build one,
//! apply workloads, wait on their status, shut down:
//!
//! ```no_run
//! use std::time::Duration;
//! use setpoint::{Host, Workload, WorkloadSpec};
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let host = Host::builder().build()?;
//!     let mut spec = WorkloadSpec::new("/opt/app/ticker.wasm");
//!     spec.replicas = 3;
//!     host.apply(vec![Workload::new("ticker", spec)]).await?;
//!     let ready = host
//!         .wait_for(Duration::from_secs(5), |s| s.workload("ticker").is_some_and(|w| w.ready == 3))
//!         .await;
//!     println!("ready: {}", ready.is_some());
//!     host.shutdown().await; // graceful: each instance gets its grace period
//!     Ok(())
//! }
//! ```
//!
//! `host/examples/embed.rs` is this program, run in CI; `host/examples/device.rs` adds a
//! device capability and YAML text.
//!
//! ## Configuring the host
//!
//! [`HostBuilder`] holds every limit, each with a sane default: the default memory cap
//! per instance, the Wasm stack, table sizes, output capture bounds, the most live
//! instances, event history, policy plugin budgets, manifest input budgets, which host
//! directories may be granted, whether network grants are allowed at all, the compiled
//! code cache, precompiled components and the interpreter.
//!
//! ## Applying workloads
//!
//! Three ways in, all validated the same way and all-or-nothing (a rejected apply changes
//! nothing that is running):
//! - in code: [`Workload::new`] with a [`WorkloadSpec`], then [`Host::apply`];
//! - YAML text: [`Host::apply_yaml`] (the manifest format of `specs/`, documented by
//!   `specs/manifest.schema.json`);
//! - files: [`Host::apply_files`].
//!
//! Errors come back as [`Rejected`]: a list of [`Diagnostic`]s, each with `file:line:col`
//! when the workload came from YAML, and a hint on what to do. [`Host::delete`] removes a
//! workload gracefully.
//!
//! ## Watching
//!
//! - [`Host::status`]: a snapshot of every workload ([`WorkloadStatus`]: phase,
//!   conditions, instances, last termination with its reason and output tail);
//! - [`Host::wait_for`]: wait until a condition on the status holds;
//! - [`Host::events`]: a broadcast of [`Event`]s (Kubernetes-style reasons); a slow
//!   subscriber skips events, it never blocks the host;
//! - [`Host::logs`]: the guests' output lines, rate-limited per instance.
//!
//! ## Device capabilities
//!
//! A device exposes its hardware to workloads as WIT interfaces implemented in Rust: a
//! [`Capability`] names an interface (`device:sensors/read@0.1.0`) and adds functions to
//! it; [`HostBuilder::capability`] installs it. A workload may import it only when its
//! spec grants it (`capabilities: [device:sensors/read]` in YAML,
//! [`WorkloadSpec::capabilities`] in code): a component importing an ungranted capability
//! is rejected at apply, and every call checks the grant again. See [`Capability`].
//!
//! ## Ahead-of-time compilation and builds without a compiler
//!
//! `setpoint compile app.wasm -o app.cwasm [--target aarch64-unknown-linux-gnu]`
//! compiles a component ahead of time. A host loads such an artifact only when allowed
//! ([`HostBuilder::allow_precompiled`]: it is native code, so only load artifacts you
//! built) and only when it was made by the same setpoint build with the same engine
//! settings; anything else is refused with an error saying so, never loaded.
//!
//! Cargo features:
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `cranelift` | yes | compiling `.wasm` (without it the host runs `.cwasm` only) |
//! | `pulley` | yes | the Pulley interpreter (and, with `cranelift`, compiling for it) |
//! | `cache` | yes | the on-disk cache of compiled components |
//! | `all-arch` | no | `setpoint compile --target` for every other architecture |
//! | `http` | yes (through `daemon`) | HTTP workloads (`wasi:http/proxy`), HTTP probes, outgoing HTTP |
//! | `daemon` | yes (through `cli`) | [`daemon`]: the durable, long-running host and its API (implies `http`) |
//! | `fleet` | yes | the daemon's fleet of hosts over NATS JetStream (implies `daemon`) |
//! | `cli` | yes | the `setpoint` binary (implies `daemon`) |
//!
//! An embedder depends on the library alone:
//! `setpoint = { version = "0.1", default-features = false, features = ["cranelift"] }`
//! builds the reconciler, the runtime, manifests, policies and metrics, without the
//! daemon's, the CLI's or HTTP serving's dependencies (add `http` to serve HTTP
//! workloads). With no features at all the host runs precompiled `.cwasm` components
//! only: the smallest embedding, for a device whose components are compiled elsewhere
//! (plus `pulley` where the CPU has no Cranelift backend; [`HostBuilder::interpreter`]
//! runs guests on Pulley).
//!
//! ## Where things live
//!
//! Modules, from the outside in: [`manifest`] (YAML and specs), [`host`] (the handle),
//! `controller` (the reconcile loop), [`job`] (run-to-completion), [`policy`] (decisions), [`runtime`] (wasmtime),
//! [`status`] (what users see).

mod admission;
pub mod clock;
mod controller;
#[cfg(all(unix, feature = "daemon"))]
pub mod daemon;
pub mod end;
mod front;
pub mod host;
pub mod job;
pub mod manifest;
pub mod metrics;
pub mod opened_dir;
pub mod policy;
pub mod runtime;
pub mod serde_time;
pub mod status;

pub use controller::ControllerConfig;
pub use front::FrontConfig;
pub use host::{Host, HostBuilder};
pub use job::{JobLedger, JobProgress};
pub use manifest::{Diagnostic, Rejected, RestartPolicy, Workload, WorkloadSpec};
pub use runtime::capability::{Caller, Capability, OwnedCaller};
pub use status::{Event, EventType, HostStatus, Phase, WorkloadStatus};
/// The wasmtime setpoint runs on, for capability types (`ComponentType`, `Lift` and
/// `Lower` derives) that must match its version.
pub use wasmtime;
