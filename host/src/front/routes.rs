//! A listener's routing table: path prefixes to workloads, longest match first. A
//! table is never changed in place; an apply builds a new one and swaps it in whole,
//! so a request sees either the old routes or the new ones.

use std::sync::Arc;

use crate::manifest::{HttpSpec, route_key};
use crate::runtime::http::Service;

/// One route: a prefix and the workload serving it.
pub(crate) struct Route {
    /// The prefix without a trailing `/` (`/` itself for the root).
    pub prefix: String,
    /// The workload's service.
    pub service: Arc<Service>,
    /// The workload's current HTTP settings (limits, retries).
    pub spec: Arc<HttpSpec>,
}

/// The routes of one listener, longest prefix first.
#[derive(Default)]
pub(crate) struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// A table of `routes`; a prefix appearing twice keeps its first workload (the
    /// front refuses such applies before building a table).
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.prefix.cmp(&b.prefix))
        });
        routes.dedup_by(|b, a| a.prefix == b.prefix);
        Self { routes }
    }

    /// The route serving `path`: the longest prefix matching whole segments (`/api`
    /// serves `/api` and `/api/x`, not `/apix`).
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| matches(&r.prefix, path))
    }
}

/// Whether `prefix` (in [`route_key`] form) serves `path`.
fn matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The key a route is compared and stored by.
pub(crate) fn key(route: &str) -> String {
    route_key(route).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(prefixes: &[(&str, &str)]) -> RouteTable {
        let spec = Arc::new(HttpSpec::new("127.0.0.1:0".parse().expect("an address")));
        RouteTable::new(
            prefixes
                .iter()
                .map(|(p, w)| Route {
                    prefix: key(p),
                    service: Service::new(Arc::from(*w), 1),
                    spec: spec.clone(),
                })
                .collect(),
        )
    }

    #[test]
    fn the_longest_whole_segment_prefix_wins() {
        let t = table(&[("/", "root"), ("/api", "api"), ("/api/v2/", "v2")]);
        let served_by = |path: &str| t.find(path).map(|r| r.service.workload().to_string());
        for (path, want) in [
            ("/", "root"),
            ("/index.html", "root"),
            ("/api", "api"),
            ("/api/", "api"),
            ("/api/users", "api"),
            ("/apix", "root"),
            ("/api/v2", "v2"),
            ("/api/v2/x", "v2"),
            ("/api/v20", "api"),
        ] {
            assert_eq!(served_by(path).as_deref(), Some(want), "{path}");
        }
        let no_root = table(&[("/api", "api")]);
        assert!(no_root.find("/other").is_none());
        assert!(no_root.find("/ap").is_none());
        assert!(RouteTable::default().find("/").is_none());
    }
}
