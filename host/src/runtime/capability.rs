//! Device capabilities: WIT interfaces that an embedder implements in Rust and that
//! workloads may import, each granted per workload in its spec (`spec.capabilities`).
//!
//! An embedder describes an interface by name and adds functions to it; the host links
//! them into every component it prepares. A component importing a capability its
//! workload was not granted is rejected at apply, and every call checks the grant again,
//! so one compiled component shared by two workloads cannot reach past either's grants.
//!
//! ```
//! use setpoint::Capability;
//!
//! // Backs `device:sensors/read@0.1.0` { temperature: func(id: u32) -> result<f32, string> }
//! let sensors = Capability::new("device:sensors/read@0.1.0")
//!     .func("temperature", |caller, (id,): (u32,)| {
//!         tracing::debug!(workload = caller.workload(), id, "sensor read");
//!         let reading: Result<f32, String> = match id {
//!             0 => Ok(21.5),
//!             _ => Err(format!("no sensor {id}")),
//!         };
//!         Ok((reading,))
//!     });
//! assert_eq!(sensors.interface(), "device:sensors/read@0.1.0");
//! ```

use crate::manifest::unversioned;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use wasmtime::component::{ComponentNamedList, Lift, LinkerInstance, Lower};

use super::store_data::InstanceState;

type Register =
    Arc<dyn Fn(&mut LinkerInstance<'_, InstanceState>) -> wasmtime::Result<()> + Send + Sync>;

/// A WIT interface implemented by the embedder, importable by granted workloads.
#[derive(Clone)]
pub struct Capability {
    interface: String,
    functions: Vec<(String, Register)>,
}

impl fmt::Debug for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capability")
            .field("interface", &self.interface)
            .field(
                "functions",
                &self.functions.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Who is calling a capability function.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    workload: &'a str,
    instance: &'a str,
}

impl<'a> Caller<'a> {
    /// The calling instance's workload.
    pub fn workload(&self) -> &'a str {
        self.workload
    }

    /// The calling instance's id.
    pub fn instance(&self) -> &'a str {
        self.instance
    }
}

/// Who a capability call came from, owned, for asynchronous functions.
#[derive(Debug, Clone)]
pub struct OwnedCaller {
    /// The calling instance's workload.
    pub workload: Arc<str>,
    /// The calling instance's id.
    pub instance: Arc<str>,
}

impl Capability {
    /// A capability for the WIT interface `namespace:package/interface@version`, the name
    /// components import it by (e.g. `device:sensors/read@0.1.0`).
    pub fn new(interface: impl Into<String>) -> Self {
        Self {
            interface: interface.into(),
            functions: Vec::new(),
        }
    }

    /// The interface's full import name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The name workloads grant it by: the interface name without its `@version`.
    pub fn grant_name(&self) -> &str {
        unversioned(&self.interface)
    }

    /// Adds a synchronous function. Parameters and results are tuples of component-model
    /// types (`(u32,)`, `(String, Vec<u8>)`, records deriving wasmtime's `ComponentType`,
    /// `Lift` and `Lower`). The function runs on the caller's task: keep it short, or use
    /// [`Capability::func_async`]. An `Err` traps the calling instance (it is recorded and
    /// replaced); report expected failures as a WIT `result` instead.
    pub fn func<P, R, F>(mut self, name: &str, f: F) -> Self
    where
        P: ComponentNamedList + Lift + 'static,
        R: ComponentNamedList + Lower + 'static,
        F: Fn(Caller<'_>, P) -> anyhow::Result<R> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let grant = self.grant_name().to_string();
        let func_name = name.to_string();
        let register: Register = Arc::new(move |linker| {
            let f = f.clone();
            let grant = grant.clone();
            linker.func_wrap(&func_name, move |store, params: P| {
                let state = store.data();
                let caller = checked_caller(state, &grant)?;
                f(caller, params).map_err(wasmtime::Error::from_anyhow)
            })
        });
        self.functions.push((name.to_string(), register));
        self
    }

    /// Adds an asynchronous function: the calling instance waits for the future while
    /// other instances run (a sensor read over a bus, a request to a co-processor).
    pub fn func_async<P, R, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        P: ComponentNamedList + Lift + Send + 'static,
        R: ComponentNamedList + Lower + Send + 'static,
        F: Fn(OwnedCaller, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<R>> + Send + 'static,
    {
        let f = Arc::new(f);
        let grant = self.grant_name().to_string();
        let func_name = name.to_string();
        let register: Register = Arc::new(move |linker| {
            let f = f.clone();
            let grant = grant.clone();
            linker.func_wrap_async(&func_name, move |store, params: P| {
                let caller = checked_caller(store.data(), &grant).map(|c| OwnedCaller {
                    workload: c.workload.into(),
                    instance: c.instance.into(),
                });
                let f = f.clone();
                Box::new(async move {
                    let future = f(caller?, params);
                    future.await.map_err(wasmtime::Error::from_anyhow)
                })
            })
        });
        self.functions.push((name.to_string(), register));
        self
    }

    /// Adds this interface and its functions to the host's linker.
    pub(crate) fn add_to_linker(
        &self,
        linker: &mut wasmtime::component::Linker<InstanceState>,
    ) -> anyhow::Result<()> {
        let mut instance = linker
            .instance(&self.interface)
            .map_err(|e| anyhow::anyhow!("capability `{}`: {}", self.interface, e))?;
        for (name, register) in &self.functions {
            register(&mut instance).map_err(|e| {
                anyhow::anyhow!("capability `{}` function `{name}`: {e}", self.interface)
            })?;
        }
        Ok(())
    }
}

/// The caller, if its workload was granted `grant`; otherwise the trap that ends it.
fn checked_caller<'a>(state: &'a InstanceState, grant: &str) -> wasmtime::Result<Caller<'a>> {
    let identity = &state.identity;
    let granted = identity
        .spec
        .as_ref()
        .is_some_and(|spec| spec.capabilities.iter().any(|c| unversioned(c) == grant));
    if !granted {
        return Err(wasmtime::Error::msg(format!(
            "capability `{grant}` is not granted to workload `{}`",
            identity.workload
        )));
    }
    Ok(Caller {
        workload: &identity.workload,
        instance: &identity.instance,
    })
}
