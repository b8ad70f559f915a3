//! `wasi:cli/exit`, answered by the host itself instead of wasmtime-wasi: the same
//! `I32Exit` error, without a backtrace, and with the time of the call.
//!
//! A guest that exits unwinds out of its call with an error, as a trap does, and
//! wasmtime captures a backtrace for any such error that has none: it walks the guest's
//! stack and looks each of up to 20 frames up in the module's function and address
//! tables. For an exit the backtrace is thrown away (an exit is a status, not a
//! fault), yet it cost more CPU than the rest of the exit: tens of microseconds between
//! the guest's exit and its end reaching the controller (measured in the README's
//! **Exits and traps** part). wasmtime skips the capture when the error already carries a
//! backtrace, so the exit error here carries an empty one, made by an engine with
//! backtraces turned off (which makes one without looking at any stack, and without
//! allocating). Traps still get their backtrace: that is their forensics.
//!
//! The call's time is kept in the Store (`InstanceState::exit_called_at`), so that the instance's end is
//! dated when the guest exited rather than after the unwinding.

use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use wasmtime::{Config, Engine, Store, WasmBacktrace};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::cli::exit;

use super::store_data::InstanceState;

/// An empty backtrace, without walking any stack; `None` if the engine that makes them
/// could not be built (the exit then costs a backtrace, as it did before).
pub(super) fn empty_backtrace() -> Option<WasmBacktrace> {
    static MAKER: OnceLock<Option<Mutex<Store<()>>>> = OnceLock::new();
    let maker = MAKER.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_backtrace_max_frames(None);
        let engine = Engine::new(&config).ok()?;
        Some(Mutex::new(Store::new(&engine, ())))
    });
    let store = maker.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
    Some(WasmBacktrace::capture(&*store))
}

/// The error a guest's exit unwinds with: `I32Exit`, carrying an empty backtrace so
/// that wasmtime does not capture one.
pub(crate) fn exit_error(code: i32) -> wasmtime::Error {
    let error = wasmtime::Error::new(I32Exit(code));
    match empty_backtrace() {
        Some(trace) => error.context(trace),
        None => error,
    }
}

impl InstanceState {
    fn exit_with(&mut self, code: i32) -> wasmtime::Result<()> {
        self.exit_called_at = Some(SystemTime::now());
        Err(exit_error(code))
    }
}

impl exit::Host for InstanceState {
    fn exit(&mut self, status: Result<(), ()>) -> wasmtime::Result<()> {
        self.exit_with(if status.is_ok() { 0 } else { 1 })
    }

    fn exit_with_code(&mut self, status_code: u8) -> wasmtime::Result<()> {
        self.exit_with(status_code.into())
    }
}

/// Puts the host's `wasi:cli/exit` in `linker`, over wasmtime-wasi's.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<InstanceState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = exit::add_to_linker::<InstanceState, wasmtime::component::HasSelf<InstanceState>>(
        linker,
        |state| state,
    );
    linker.allow_shadowing(false);
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_error_is_the_status_and_carries_an_empty_backtrace() {
        let error = exit_error(3);
        assert_eq!(error.downcast_ref::<I32Exit>().map(|e| e.0), Some(3));
        // What makes wasmtime skip its own capture.
        assert!(error.is::<WasmBacktrace>());
        let trace = error.downcast_ref::<WasmBacktrace>().expect("a backtrace");
        assert!(trace.frames().is_empty());
    }
}
