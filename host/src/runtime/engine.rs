//! The wasmtime engine's settings, and turning component bytes into a `Component`:
//! compiling `.wasm` (when this build has a compiler), loading precompiled `.cwasm`
//! (when allowed), and precompiling for `setpoint compile`.
//!
//! Invariant: every engine setting that changes generated code is made in
//! [`engine_config`], so `setpoint compile` and the host agree and wasmtime's own
//! compatibility check is the one gate a precompiled artifact must pass.

use std::path::Path;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, Precompiled};

use super::{PrepareError, RuntimeConfig, exit};

/// The Pulley interpreter target matching this machine's pointer width.
/// The wasmtime this setpoint is built on (a test keeps it equal to Cargo.lock's).
pub const WASMTIME_VERSION: &str = "48.0.8";

pub const PULLEY_TARGET: &str = if cfg!(target_pointer_width = "64") {
    "pulley64"
} else {
    "pulley32"
};

/// The engine settings for a runtime (and for precompiling for it). `target` overrides
/// the configured one (`None` in both means this machine).
pub fn engine_config(config: &RuntimeConfig, target: Option<&str>) -> anyhow::Result<Config> {
    let mut wasm = Config::new();
    wasm.epoch_interruption(true);
    wasm.wasm_component_model(true);
    // The component model's async ABI, only when asked for: its concurrency support slows
    // every call into every guest.
    #[cfg(feature = "component-model-async")]
    if config.component_model_async {
        wasm.concurrency_support(true)
            .wasm_component_model_async(true);
    } else {
        wasm.concurrency_support(false);
    }
    #[cfg(not(feature = "component-model-async"))]
    {
        if config.component_model_async {
            anyhow::bail!(
                "this build of setpoint leaves the component model's async ABI out: build it with the Cargo feature `component-model-async`"
            );
        }
        wasm.concurrency_support(false);
    }
    wasm.max_wasm_stack(config.max_wasm_stack);
    wasm.async_stack_size(fiber_stack_size(config));
    if config.compact_memory {
        wasm.memory_reservation(0)
            .memory_guard_size(0)
            .memory_reservation_for_growth(0)
            .memory_init_cow(false);
    }
    if config.instance_pool > 0 {
        wasm.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool_config(
            config,
        )));
        if config.compact_memory {
            // A pool slot must reserve the largest memory it will hold.
            wasm.memory_reservation(config.default_memory_limit);
        }
    }
    let target = target.or(config.interpreter.then_some(PULLEY_TARGET));
    if let Some(target) = target {
        wasm.target(target).map_err(|e| {
            anyhow::anyhow!(
                "cannot compile for `{target}`: {e}; this build supports {}",
                supported_targets()
            )
        })?;
    }
    Ok(wasm)
}

/// A fiber stack must hold the Wasm stack plus the host calls made from it.
fn fiber_stack_size(config: &RuntimeConfig) -> usize {
    config.max_wasm_stack.saturating_add(1024 * 1024)
}

/// The arena the engine takes its fiber stacks from: on demand (a pool has stacks of its
/// own), with one fiber per Store (the component model's async ABI runs several), on
/// Linux.
pub(super) fn stack_arena(config: &RuntimeConfig) -> Option<super::stacks::StackArena> {
    (cfg!(target_os = "linux") && config.instance_pool == 0 && !config.component_model_async).then(
        || {
            let guards = if config.stack_guard_markers {
                super::stacks::Guards::Markers
            } else {
                super::stacks::Guards::Protection
            };
            super::stacks::StackArena::with_guards(fiber_stack_size(config), guards)
        },
    )
}

/// The arena compact memories come from: on demand (a pool has memories of its own), on
/// Linux, slots of the default memory limit (at most 4 GiB, a 32-bit memory's most).
pub(super) fn memory_arena(config: &RuntimeConfig) -> Option<super::memories::MemoryArena> {
    (cfg!(target_os = "linux") && config.compact_memory && config.instance_pool == 0).then(|| {
        let slot = config.default_memory_limit.min(4 << 30);
        super::memories::MemoryArena::new(usize::try_from(slot).unwrap_or(usize::MAX))
    })
}

/// The pooling allocator's slots: `instance_pool` components (plus plugins and spares), each with
/// room for the core instances, memories, tables and stack a WASI component needs.
fn pool_config(config: &RuntimeConfig) -> wasmtime::PoolingAllocationConfig {
    let components = config
        .instance_pool
        .saturating_add(super::POOL_PLUGIN_SLOTS)
        .saturating_add(super::POOL_SPARE_SLOTS);
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(components)
        // A component built by wasm32-wasip2 toolchains holds a few core instances
        // (its module, adapters, shims) and up to two memories and several tables.
        .total_core_instances(components.saturating_mul(4))
        .total_memories(components.saturating_mul(2))
        .total_tables(components.saturating_mul(4))
        .total_stacks(components)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_core_instances_per_component(32)
        .max_memory_size(config.default_memory_limit as usize)
        .table_elements(config.table_elements_limit as usize)
        // A freed slot's first 64 KiB of memory and tables are reset with memset and
        // stay resident, instead of going back to the kernel and faulting in again:
        // recovery p50 37–40 µs instead of 45, p99 72–97 µs instead of 83–106 (1 MiB
        // was slower than none). At most 128 KiB per slot stays resident.
        .linear_memory_keep_resident(64 << 10)
        .table_keep_resident(64 << 10);
    pool
}

/// Caches compiled code in `dir` (wasmtime's cache: keyed by the component's bytes and
/// the engine's settings). Builds without the `cache` feature compile nothing, so there
/// is nothing to cache and `dir` is ignored.
pub fn enable_cache(wasm: &mut Config, dir: Option<&Path>) -> anyhow::Result<()> {
    #[cfg(feature = "cache")]
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
        let mut cache_config = wasmtime::CacheConfig::new();
        cache_config.with_directory(dir);
        wasm.cache(Some(wasmtime::Cache::new(cache_config)?));
    }
    #[cfg(not(feature = "cache"))]
    let _ = (wasm, dir);
    Ok(())
}

/// Which compilation targets this build supports, in words.
pub fn supported_targets() -> &'static str {
    if !cfg!(feature = "cranelift") {
        "no compilation at all (it was built without the `cranelift` feature)"
    } else if cfg!(feature = "all-arch") {
        "x86_64, aarch64, riscv64gc and s390x Linux triples, and pulley32/pulley64"
    } else if cfg!(feature = "pulley") {
        "this machine's target and pulley32/pulley64"
    } else {
        "only this machine's target (build with the `all-arch` feature for others)"
    }
}

/// Builds the component from `bytes`: compiles a `.wasm`, or loads a precompiled
/// `.cwasm` produced by `setpoint compile` for this very engine.
pub fn load_component(
    engine: &Engine,
    config: &RuntimeConfig,
    path: &Path,
    bytes: &[u8],
) -> Result<Component, PrepareError> {
    match Engine::detect_precompiled(bytes) {
        Some(Precompiled::Component) => {
            if !config.allow_precompiled {
                return Err(PrepareError::PrecompiledRefused {
                    path: path.to_path_buf(),
                });
            }
            // SAFETY: wasmtime checks that the artifact was produced by a compatible
            // engine (version, target, settings) and refuses it otherwise. What it cannot
            // check is that the native code inside is what `setpoint compile` produced:
            // that trust is what `allow_precompiled` opts into.
            unsafe { Component::deserialize(engine, bytes) }.map_err(|e| {
                PrepareError::Incompatible {
                    path: path.to_path_buf(),
                    message: exit::error_text(&e),
                }
            })
        }
        Some(Precompiled::Module) => Err(PrepareError::Compile {
            path: path.to_path_buf(),
            message: "it is a precompiled core module, not a component".into(),
        }),
        // Not Wasm at all: said without echoing any of its bytes (it may be a secret).
        None if !bytes.starts_with(b"\0asm") => Err(PrepareError::Compile {
            path: path.to_path_buf(),
            message: "it is not a WebAssembly file (no `\\0asm` header)".into(),
        }),
        None => compile(engine, config, path, bytes),
    }
}

#[cfg(feature = "cranelift")]
fn compile(
    engine: &Engine,
    config: &RuntimeConfig,
    path: &Path,
    bytes: &[u8],
) -> Result<Component, PrepareError> {
    Component::from_binary(engine, bytes).map_err(|e| {
        let message = exit::error_text(&e);
        match unsupported_feature(&message) {
            Some(feature) => PrepareError::Unsupported {
                path: path.to_path_buf(),
                help: unsupported_help(&feature, config.component_model_async),
                feature,
                message,
            },
            None => PrepareError::Compile {
                path: path.to_path_buf(),
                message,
            },
        }
    })
}

/// What to do about a component that uses `feature`, on a host whose async ABI is
/// `async_enabled`.
// Only a build that compiles meets a component it cannot run.
#[cfg_attr(not(feature = "cranelift"), allow(dead_code))]
fn unsupported_help(feature: &str, async_enabled: bool) -> String {
    let async_abi = feature == "the component model async feature";
    if async_abi && !cfg!(feature = "component-model-async") {
        "this build of setpoint leaves the component model's async ABI out: build it with the Cargo feature `component-model-async` (a default one)".to_string()
    } else if async_abi && !async_enabled {
        "start the host with `--component-model-async` (`HostBuilder::component_model_async`): it runs the component model's async ABI, at a cost to every call into every guest".to_string()
    } else {
        format!(
            "setpoint runs WASI 0.2 components, and with `--component-model-async` the async ABI's base; rebuild the component without {feature}"
        )
    }
}

/// The feature a validation error says is missing, in the validator's words: "`task.cancel`
/// requires the component model async feature", "exceptions proposal not enabled",
/// "bulk memory support is not enabled".
// Only a build that compiles meets a component it cannot run.
#[cfg_attr(not(feature = "cranelift"), allow(dead_code))]
fn unsupported_feature(message: &str) -> Option<String> {
    let phrase = |start: &str, end: &str| {
        let from = message.find(start)? + start.len();
        let to = from + message[from..].find(end)? + end.len();
        Some(message[from..to].to_string())
    };
    let trailing = |suffix: &str, what: &str| {
        let end = message.find(suffix)?;
        // The words before the suffix, back to the last separator.
        let name = message[..end].rsplit([':', '`', '(']).next()?.trim();
        (!name.is_empty()).then(|| format!("the {name} {what}"))
    };
    phrase("requires the ", " feature")
        .or_else(|| phrase("requires the ", " proposal"))
        .map(|p| format!("the {p}"))
        .or_else(|| trailing(" proposal not enabled", "proposal"))
        .or_else(|| trailing(" support is not enabled", "feature"))
}

#[cfg(not(feature = "cranelift"))]
fn compile(
    _engine: &Engine,
    _config: &RuntimeConfig,
    path: &Path,
    _bytes: &[u8],
) -> Result<Component, PrepareError> {
    Err(PrepareError::NoCompiler {
        path: path.to_path_buf(),
    })
}

/// Compiles a component ahead of time for the engine `config` describes, for this
/// machine or for `target` (a target triple, or `pulley64`). The result loads only into a
/// host of the same setpoint version with the same engine settings.
#[cfg(feature = "cranelift")]
pub fn precompile(
    config: &RuntimeConfig,
    target: Option<&str>,
    bytes: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let engine = Engine::new(&engine_config(config, target)?).map_err(|e| {
        anyhow::anyhow!(
            "cannot compile for `{}`: {}; this build supports {}",
            target.unwrap_or("this machine"),
            exit::error_text(&e),
            supported_targets()
        )
    })?;
    if Engine::detect_precompiled(bytes).is_some() {
        anyhow::bail!("the input is already precompiled; give the `.wasm` component");
    }
    engine
        .precompile_component(bytes)
        .map_err(|e| anyhow::anyhow!("{}", exit::error_text(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wasmtime_version_is_the_locked_one() {
        let lock = include_str!("../../../Cargo.lock");
        assert!(
            lock.contains(&format!(
                "name = \"wasmtime\"\nversion = \"{WASMTIME_VERSION}\""
            )),
            "WASMTIME_VERSION is not the wasmtime in Cargo.lock"
        );
    }

    #[test]
    fn a_missing_feature_is_named_in_the_validators_words() {
        let cases = [
            (
                "failed to parse WebAssembly module: `task.cancel` requires the component model async feature (at offset 0x1900a2)",
                Some("the component model async feature"),
            ),
            (
                "`thread.spawn-ref` requires the shared-everything-threads proposal (at offset 0x10)",
                Some("the shared-everything-threads proposal"),
            ),
            (
                "exceptions proposal not enabled (at offset 0x2a)",
                Some("the exceptions proposal"),
            ),
            (
                "failed to parse: bulk memory support is not enabled",
                Some("the bulk memory feature"),
            ),
            ("unexpected end-of-file (at offset 0x8)", None),
        ];
        for (message, feature) in cases {
            assert_eq!(
                unsupported_feature(message).as_deref(),
                feature,
                "{message}"
            );
        }
    }
}

#[cfg(test)]
mod help_tests {
    use super::{PrepareError, unsupported_help};

    fn unsupported(feature: &str) -> PrepareError {
        PrepareError::Unsupported {
            path: "w.wasm".into(),
            feature: feature.into(),
            message: format!("`x` requires {feature}"),
            help: unsupported_help(feature, false),
        }
    }

    #[test]
    fn the_help_for_a_missing_feature_names_it_and_not_wasip2() {
        let threads = unsupported("the component model threading feature")
            .unsupported_help()
            .expect("help");
        assert!(
            threads.contains("rebuild the component without the component model threading feature")
        );
        let async_abi = unsupported("the component model async feature")
            .unsupported_help()
            .expect("help");
        let in_this_build = cfg!(feature = "component-model-async");
        assert_eq!(
            async_abi.contains("Cargo feature `component-model-async`"),
            !in_this_build,
            "{async_abi}"
        );
        assert_eq!(
            async_abi.contains("`--component-model-async`"),
            in_this_build,
            "{async_abi}"
        );
        let enabled = unsupported_help("the component model async feature", true);
        assert_eq!(
            enabled.contains("rebuild the component without"),
            in_this_build,
            "{enabled}"
        );
        for help in [&threads, &async_abi, &enabled] {
            assert!(!help.contains("built for wasm32-wasip2"), "{help}");
        }
        let shown = unsupported("the exceptions proposal").to_string();
        assert!(
            shown.contains("uses the exceptions proposal, which this host does not enable"),
            "{shown}"
        );
        assert_eq!(
            PrepareError::Compile {
                path: "w.wasm".into(),
                message: "bad".into()
            }
            .unsupported_help(),
            None
        );
    }
}
