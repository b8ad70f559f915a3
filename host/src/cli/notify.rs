//! systemd's readiness protocol (`sd_notify`): under `Type=notify`, systemd starts
//! dependents only once the service says `READY=1` on the datagram socket that
//! `$NOTIFY_SOCKET` names, and shows its `STATUS=`. Without the variable, nothing is
//! sent. A socket that cannot be reached is logged, never fatal.

/// Sends `state` (newline-separated `KEY=VALUE` pairs) to systemd, if it listens.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&target, state) {
        tracing::warn!(
            "cannot tell systemd `{}` through NOTIFY_SOCKET: {e}",
            state.lines().next().unwrap_or_default()
        );
    }
}

fn send(target: &std::ffi::OsStr, state: &str) -> std::io::Result<usize> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    // `@name` is a socket in Linux's abstract namespace.
    #[cfg(target_os = "linux")]
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        return socket.send_to_addr(state.as_bytes(), &addr);
    }
    socket.send_to(state.as_bytes(), std::path::Path::new(target))
}
