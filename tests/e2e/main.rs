//! End-to-end tests: real guest components from `guest-examples/` (built by
//! `cargo xtask guests`), the real wasmtime engine, real manifest files, the real binary.

mod api;
mod cli;
mod common;
mod daemon;
mod docs;
mod edge;
mod fleet;
mod generated;
mod hostile;
mod http;
mod jobs;
mod lifecycle;
mod manifests;
mod policy;
mod polyglot;
mod rollout;
mod sandbox;
mod security;
mod spares;
mod stacks;
