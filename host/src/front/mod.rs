//! The HTTP front: the listeners of HTTP workloads and their routing tables. The
//! controller asks it, as part of an apply, whether the batch's routes and addresses
//! can be served ([`Front::plan`]: a route claimed twice or an address that cannot be
//! bound refuses the whole apply, before anything changes) and then commits the plan.
//! Each HTTP workload has one `Service` (its queue of requests), which its replicas
//! of every revision take from; a rollout therefore never changes where requests go,
//! only which replicas take them.
//!
//! Dependencies point inward: the front uses the runtime's `Service` and the manifest's
//! `HttpSpec`; the controller drives the front; nothing here knows the controller.
//!
//! A build without the `http` feature has no front: `absent.rs` stands in, serving
//! nothing and refusing any batch that asks to be served.

#[cfg(not(feature = "http"))]
mod absent;
#[cfg(feature = "http")]
mod forward;
#[cfg(feature = "http")]
mod listener;
#[cfg(feature = "http")]
mod routes;
#[cfg(feature = "http")]
mod serving;

use std::time::Duration;

#[cfg(not(feature = "http"))]
pub(crate) use absent::Front;
#[cfg(feature = "http")]
pub(crate) use serving::Front;

use crate::manifest::{HttpSpec, Origin};

/// Limits of every listener, each with a default.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// Connections one listener holds open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Longest a client may take to send a request head, which also bounds how long
    /// an idle keep-alive connection is kept (a slowloris client holds nothing).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; at least 8 KiB.
    /// Larger heads are refused (431).
    pub max_head_bytes: usize,
}

impl Default for FrontConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_head_bytes: 64 * 1024,
        }
    }
}

/// What the controller hands the front about one workload of a batch.
pub(crate) struct Wanted<'a> {
    /// The workload.
    pub name: &'a str,
    /// Its HTTP settings; `None` if it serves no HTTP (any it served stops).
    pub http: Option<&'a HttpSpec>,
    /// Where it was written, for located errors.
    pub origin: Option<&'a Origin>,
}
