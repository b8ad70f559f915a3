//! systemd's readiness protocol (`sd_notify`), through the `sd-notify` crate: under
//! `Type=notify`, systemd starts dependents only once the service says `READY=1` on the
//! datagram socket that `$NOTIFY_SOCKET` names, shows its `STATUS=`, and waits for
//! `READY=1` again after a `RELOADING=1`. Without the variable, nothing is sent. A
//! socket that cannot be reached is logged, never fatal.

pub use sd_notify::NotifyState;

/// Tells systemd `states`, if it listens.
pub fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot tell systemd {states:?} through NOTIFY_SOCKET: {e}");
    }
}

/// A reload begins: `RELOADING=1` with the monotonic time systemd 253 and later ask for.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}
