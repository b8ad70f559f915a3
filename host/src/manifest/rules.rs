//! The manifest's rules, each written once: both the YAML reader (which locates a
//! broken rule at its field) and the check of workloads built in code call these.

use std::path::{Path, PathBuf};

use super::spec::{BackoffSpec, CpuBudget, WorkloadSpec};

/// A rule a value breaks: what is wrong, and what to do, if that can be said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broken {
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub help: Option<String>,
}

impl Broken {
    /// A broken rule with no help.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// The range of a probe's failure and success thresholds.
pub(crate) const THRESHOLDS: std::ops::RangeInclusive<u32> = 1..=1000;

/// The smallest memory cap: one Wasm page.
pub(crate) const MIN_MEMORY: u64 = 64 * 1024;

/// An env var: a name of letters, digits and `_` not starting with a digit, and a value
/// with no NUL.
pub(crate) fn env_var(key: &str, value: &str) -> Result<(), Broken> {
    if !is_env_name(key) {
        return Err(Broken::new(format!("invalid env var name `{key}`"))
            .help("names are letters, digits and `_`, not starting with a digit"));
    }
    if value.contains('\0') {
        return Err(Broken::new(format!("env var `{key}` contains a NUL byte")));
    }
    Ok(())
}

/// A memory cap: at least one Wasm page, at most the host's ceiling.
pub(crate) fn memory_limit(bytes: u64, ceiling: u64) -> Result<(), Broken> {
    if bytes < MIN_MEMORY {
        return Err(Broken::new(format!(
            "memory {bytes} bytes is below one Wasm page (64Ki)"
        )));
    }
    if bytes > ceiling {
        return Err(Broken::new(format!(
            "memory {bytes} bytes is over this host's ceiling of {ceiling} bytes"
        )));
    }
    Ok(())
}

/// A CPU budget must be spendable within its window.
pub(crate) fn cpu_budget(budget: &CpuBudget) -> Result<(), Broken> {
    if budget.time.is_zero() {
        return Err(Broken::new("cpu.budget must be above zero"));
    }
    if budget.per.is_some_and(|per| per < budget.time) {
        return Err(Broken::new(
            "cpu.per is shorter than cpu.budget: the budget could never be spent",
        ));
    }
    Ok(())
}

/// Back-off grows from `initial` up to `max`.
pub(crate) fn backoff(backoff: &BackoffSpec) -> Result<(), Broken> {
    if backoff.max < backoff.initial {
        return Err(Broken::new("backoff.max is smaller than backoff.initial"));
    }
    Ok(())
}

/// A capability grant names a WIT interface.
pub(crate) fn capability(name: &str) -> Result<(), Broken> {
    if is_interface_name(name) {
        Ok(())
    } else {
        Err(Broken::new(format!("`{name}` is not a WIT interface name"))
            .help("write `namespace:package/interface`, e.g. `device:sensors/read`"))
    }
}

/// An outgoing HTTP grant: `host:port` (a DNS name, an IPv4 address or a bracketed IPv6
/// address, and a port), at most 261 bytes; returned lowercase, as requests are compared.
pub(crate) fn http_authority(authority: &str) -> Result<String, Broken> {
    let broken = || {
        Broken::new(format!("`{authority}` is not a HOST:PORT authority"))
            .help("write e.g. `api.example.com:443` or `127.0.0.1:8080`; no scheme, path or user")
    };
    let (host, port) = authority.rsplit_once(':').ok_or_else(broken)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .split('.')
                    .all(|label| check_dns_label(&label.to_ascii_lowercase()).is_ok())
        }
    };
    if !(port_ok && host_ok) {
        return Err(broken());
    }
    Ok(authority.to_ascii_lowercase())
}

/// Most routes one workload may claim.
pub(crate) const MAX_ROUTES: usize = 64;
/// Most requests waiting for a replica, per workload.
pub(crate) const MAX_QUEUED: u32 = 100_000;
/// Largest request body a workload may accept (4 GiB).
pub(crate) const MAX_REQUEST_BODY: u64 = 4 << 30;
/// Largest body kept for a retry (16 MiB): kept bodies are held in memory.
pub(crate) const MAX_RETRY_BODY: u64 = 16 << 20;

/// A route: a path prefix starting with `/`, of visible ASCII without `?`, `#` or
/// `%`, at most 1024 bytes. Matching is by whole segments: `/api` matches `/api` and
/// `/api/x`, never `/apix`; a trailing `/` is not part of the prefix.
pub(crate) fn route(path: &str) -> Result<(), Broken> {
    let fine = path.starts_with('/')
        && path.len() <= 1024
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%'))
        && !path.contains("//");
    if fine {
        Ok(())
    } else {
        Err(Broken::new(format!("`{path}` is not a route")).help(
            "a route is a path prefix such as `/` or `/api/v1`: it starts with `/`, and has no spaces, `?`, `#`, `%` or `//`",
        ))
    }
}

/// A probe path: `/`-rooted visible ASCII (a query allowed), at most 1024 bytes.
pub(crate) fn probe_path(path: &str) -> Result<(), Broken> {
    if path.starts_with('/') && path.len() <= 1024 && path.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Broken::new(format!("`{path}` is not a request path"))
            .help("write the path the probe requests, e.g. `/healthz` or `/ready?deep=1`"))
    }
}

/// An HTTP method: an RFC 9110 token, uppercase as the standard methods are.
pub(crate) fn method(method: &str) -> Result<(), Broken> {
    let token = !method.is_empty()
        && method.len() <= 32
        && method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_.!".contains(&b));
    if token {
        Ok(())
    } else {
        Err(Broken::new(format!("`{method}` is not an HTTP method"))
            .help("write methods in uppercase, e.g. `GET`, `HEAD`, `PUT`"))
    }
}

/// Everything an HTTP service's spec must hold, whoever built it.
pub(crate) fn http_service(http: &super::spec::HttpSpec) -> Vec<Broken> {
    let mut out = Vec::new();
    if http.routes.is_empty() || http.routes.len() > MAX_ROUTES {
        out.push(Broken::new(format!(
            "http.routes must list 1 to {MAX_ROUTES} routes"
        )));
    }
    for (i, r) in http.routes.iter().enumerate() {
        if let Err(b) = route(r) {
            out.push(b);
        } else if http.routes[..i]
            .iter()
            .any(|o| route_key(o) == route_key(r))
        {
            out.push(Broken::new(format!("route `{r}` is listed twice")));
        }
    }
    if let Some(p) = &http.probe {
        out.extend(probe_path(&p.path).err());
        if !(THRESHOLDS.contains(&p.timing.failure_threshold)
            && THRESHOLDS.contains(&p.timing.success_threshold))
        {
            out.push(Broken::new(format!(
                "health.http thresholds must be between {} and {}",
                THRESHOLDS.start(),
                THRESHOLDS.end()
            )));
        }
    }
    if http.max_queued > MAX_QUEUED {
        out.push(Broken::new(format!(
            "http.maxQueued must be at most {MAX_QUEUED}"
        )));
    }
    if http.max_request_body > MAX_REQUEST_BODY {
        out.push(Broken::new(format!(
            "http.maxRequestBody must be at most {}",
            bytesize::ByteSize(MAX_REQUEST_BODY)
        )));
    }
    if http.retry.max_body > MAX_RETRY_BODY {
        out.push(Broken::new(format!(
            "http.retry.maxBody must be at most {} (a kept body is held in memory)",
            bytesize::ByteSize(MAX_RETRY_BODY)
        )));
    }
    for m in &http.retry.methods {
        out.extend(method(m).err());
    }
    out
}

/// The form in which routes are compared: without a trailing `/` (except `/` itself).
pub fn route_key(route: &str) -> &str {
    match route.strip_suffix('/') {
        Some("") | None => route,
        Some(trimmed) => trimmed,
    }
}

/// Dir, network and capability grants are each at most `max`.
pub(crate) fn grant_counts(spec: &WorkloadSpec, max: usize) -> Result<(), Broken> {
    if spec.dirs.len() > max
        || spec.connect.len() > max
        || spec.http_authorities.len() > max
        || spec.capabilities.len() > max
    {
        return Err(Broken::new(format!(
            "more than {max} dir, network or capability grants"
        )));
    }
    Ok(())
}

/// An interface name without its `@version` suffix.
pub fn unversioned(interface: &str) -> &str {
    interface
        .split_once('@')
        .map_or(interface, |(name, _)| name)
}

/// Whether `name` has the shape `namespace:package/interface`, optionally `@version`.
pub fn is_interface_name(name: &str) -> bool {
    let base = unversioned(name);
    let Some((package, interface)) = base.split_once('/') else {
        return false;
    };
    let Some((namespace, package)) = package.split_once(':') else {
        return false;
    };
    let word = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    word(namespace) && word(package) && word(interface)
}

/// The rule for a guest path: absolute and in normal form (no `.`, `..`, doubled or
/// trailing `/`), at most 1,024 bytes.
pub(crate) fn check_guest_path(guest: &str) -> Result<(), String> {
    if !guest.starts_with('/') {
        return Err(format!("guest path `{guest}` is not absolute"));
    }
    if guest.len() > 1024 || guest.contains('\0') {
        return Err("a guest path must be at most 1024 bytes, with no NUL".into());
    }
    let normal = crate::opened_dir::normalize(Path::new(guest));
    if normal.as_deref() != Some(Path::new(guest)) {
        return Err(match normal {
            Some(n) => format!(
                "guest path `{guest}` is not in normal form; write `{}`",
                n.display()
            ),
            None => format!("guest path `{guest}` climbs above `/`"),
        });
    }
    Ok(())
}

/// The rule for a granted host directory: an absolute path whose normal form names an
/// existing directory with no symbolic link in any component, under one of the host's
/// allowed roots. Returns the normal form; an error is (message, help).
pub(crate) fn check_host_dir(
    host: &Path,
    roots: &[PathBuf],
) -> Result<PathBuf, (String, Option<String>)> {
    use crate::opened_dir::{OpenDirError, OpenedDir, normalize};
    let Some(normal) = normalize(host) else {
        return Err((
            format!(
                "host path `{}` is not absolute or climbs above `/`",
                host.display()
            ),
            Some("host paths in a manifest are relative to the manifest file".into()),
        ));
    };
    if let Err(why) = check_dir_root(&normal, roots) {
        return Err((
            why,
            Some("grant a directory under one of the host's allowed roots".into()),
        ));
    }
    match OpenedDir::open(&normal) {
        Ok(_) => Ok(normal),
        Err(OpenDirError::Symlink { link }) => {
            let real = std::fs::canonicalize(&normal)
                .map(|p| format!(" (`{}` today)", p.display()))
                .unwrap_or_default();
            Err((
                OpenDirError::Symlink { link }.to_string(),
                Some(format!(
                    "grant the directory by its real path{real}, with no symbolic link in it"
                )),
            ))
        }
        Err(e @ OpenDirError::NotFound(_)) => Err((
            e.to_string(),
            Some("host paths in a manifest are relative to the manifest file".into()),
        )),
        Err(e) => Err((e.to_string(), None)),
    }
}

/// Errs unless `dir` (canonical) lies under one of `roots`; any directory when `roots` is empty.
fn check_dir_root(dir: &Path, roots: &[PathBuf]) -> Result<(), String> {
    if roots.is_empty() || roots.iter().any(|r| dir.starts_with(r)) {
        return Ok(());
    }
    let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Err(format!(
        "`{}` is outside the directories this host grants ({})",
        dir.display(),
        shown.join(", ")
    ))
}

/// Kubernetes' label syntax: a key `[prefix/]name` (prefix a DNS subdomain of at most
/// 253 characters, name at most 63 alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric) and a value of the same form as a name, or empty.
pub(crate) fn check_label(key: &str, value: &str) -> Result<(), String> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix
        .is_none_or(|p| p.len() <= 253 && p.split('.').all(|part| check_dns_label(part).is_ok()));
    if !prefix_ok || !name_ok(name) {
        return Err(format!("label key `{key}` is not a valid label key"));
    }
    if !value.is_empty() && !name_ok(value) {
        return Err(format!(
            "label `{key}` has the value `{value}`, which is not a valid label value (at most 63 letters, digits, `-`, `_` and `.`)"
        ));
    }
    Ok(())
}

/// Kubernetes' DNS-1123 label rule.
pub(crate) fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 63 {
        return Err("it is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("it has characters other than lowercase letters, digits and `-`");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("it starts or ends with `-`");
    }
    Ok(())
}

pub(crate) fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("hello-1").is_ok());
        assert!(check_dns_label("Hello").is_err());
        assert!(check_dns_label("-x").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("RUST_LOG"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A=B"));
        assert!(env_var("A", "x\0y").is_err());
    }

    #[test]
    fn interface_names_are_checked_and_unversioned() {
        assert!(is_interface_name("device:sensors/read@0.1.0"));
        assert!(is_interface_name("device:sensors/read"));
        assert!(!is_interface_name("sensors/read"));
        assert!(!is_interface_name("device:sensors"));
        assert!(!is_interface_name("Device:sensors/read"));
        assert_eq!(
            unversioned("device:sensors/read@0.1.0"),
            "device:sensors/read"
        );
        assert_eq!(unversioned("device:sensors/read"), "device:sensors/read");
    }

    #[test]
    fn http_authorities_are_host_and_port() {
        for ok in [
            "api.example.com:443",
            "127.0.0.1:8080",
            "[::1]:80",
            "Local-Host:1",
        ] {
            assert!(http_authority(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            http_authority("API.example.com:443").as_deref(),
            Ok("api.example.com:443")
        );
        for bad in [
            "api.example.com",
            "http://a:1",
            "a:0",
            "a:70000",
            "user@a:1",
            ":80",
            "[::1:80",
            "a b:1",
            "a/b:1",
        ] {
            assert!(http_authority(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_and_cpu_rules() {
        assert!(memory_limit(MIN_MEMORY, u64::MAX).is_ok());
        assert!(memory_limit(MIN_MEMORY - 1, u64::MAX).is_err());
        assert!(memory_limit(2 * MIN_MEMORY, MIN_MEMORY).is_err());
        let second = std::time::Duration::from_secs(1);
        let budget = |time, per| CpuBudget { time, per };
        assert!(cpu_budget(&budget(second, Some(second))).is_ok());
        assert!(cpu_budget(&budget(second * 2, Some(second))).is_err());
        assert!(cpu_budget(&budget(std::time::Duration::ZERO, None)).is_err());
    }
}
