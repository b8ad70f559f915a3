//! HTTP in a build without the `http` feature: there is no service to take requests
//! from, so a spawn never carries one (the type has no values).

/// The queue of an HTTP workload's requests; in this build, never made.
pub enum Service {}
