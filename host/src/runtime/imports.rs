//! What a component imports and exports, read from its bytes before it is compiled: a
//! component that imports what this host does not provide is refused in milliseconds,
//! not after seconds of compilation (a JavaScript or Python component is tens of
//! megabytes). Only names are compared here; the linker still checks types after
//! compilation.

/// The WASI 0.2 packages the host's linker provides (`wasi:http` in a build with the
/// `http` feature).
const WASI_PACKAGES: &[&str] = &[
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
    #[cfg(feature = "http")]
    "wasi:http",
];

/// A component's top-level imports and exports (nested components' are their own).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Surface {
    /// Import names, as written (`wasi:cli/environment@0.2.3`).
    pub imports: Vec<String>,
    /// Export names.
    pub exports: Vec<String>,
}

/// Reads the surface of a `.wasm` component; `None` for anything else (a `.cwasm`,
/// a core module, bytes that do not parse: the compiler says what is wrong with them).
pub fn surface(bytes: &[u8]) -> Option<Surface> {
    use wasmparser::{Encoding, Parser, Payload};
    let mut out = Surface::default();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != Encoding::Component {
                    return None;
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    out.imports.push(import.ok()?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    out.exports.push(export.ok()?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Some(out)
}

/// Whether `version` is empty or of the minor version `want` (`0.2`: `0.2.0`, `0.2.3`...).
fn minor(version: &str, want: &str) -> bool {
    version.is_empty()
        || version
            .strip_prefix(want)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Whether the host's linker provides import `name`, besides the embedder's
/// capabilities: WASI 0.2 and setpoint's heartbeat 0.1.
pub fn provided(name: &str) -> bool {
    let (base, version) = name.split_once('@').unwrap_or((name, ""));
    let package = base.split_once('/').map_or(base, |(p, _)| p);
    (WASI_PACKAGES.contains(&package) && minor(version, "0.2"))
        || (base == "setpoint:workload/heartbeat" && minor(version, "0.1"))
}

/// Whether a policy plugin may import `name`: WASI 0.2, and the types of its own WIT
/// package (`setpoint:policy/types`, an interface of types only).
pub fn provided_to_plugins(name: &str) -> bool {
    let (base, version) = name.split_once('@').unwrap_or((name, ""));
    (WASI_PACKAGES.contains(&base.split_once('/').map_or(base, |(p, _)| p)) && provided(name))
        || (base == "setpoint:policy/types" && minor(version, "0.2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_0_2_and_the_heartbeat_are_provided_and_nothing_else() {
        assert!(provided("wasi:cli/environment@0.2.3"));
        assert_eq!(
            provided("wasi:http/outgoing-handler@0.2.0"),
            cfg!(feature = "http")
        );
        assert!(provided("wasi:io/streams@0.2.12"));
        assert!(provided("setpoint:workload/heartbeat@0.1.0"));
        assert!(!provided("wasi:cli/environment@0.3.0"));
        assert!(!provided("wasi:cli/environment@0.20.0"));
        assert!(!provided("wasi:keyvalue/store@0.2.0-draft"));
        assert!(!provided("example:bad-import/teleporter"));
        assert!(!provided("setpoint:workload/heartbeat@0.2.0"));
        assert!(provided_to_plugins("setpoint:policy/types@0.2.0"));
        assert!(!provided_to_plugins("setpoint:policy/types@0.1.0"));
        assert!(provided_to_plugins("wasi:random/random@0.2.3"));
        assert!(!provided_to_plugins("setpoint:workload/heartbeat@0.1.0"));
        assert!(!provided_to_plugins("device:sensors/read@0.1.0"));
    }

    #[test]
    fn bytes_that_are_no_component_have_no_surface() {
        assert_eq!(surface(b"not wasm"), None);
        // A core module's header.
        assert_eq!(surface(b"\0asm\x01\0\0\0"), None);
    }
}
