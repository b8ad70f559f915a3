//! What the tests that run alone in their process (to read its RSS) share: the guest
//! components and the process's resident memory.
#![allow(dead_code)]

/// A guest example built for `wasm32-wasip2` (by `cargo xtask guests`).
pub fn guest(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask guests` first",
        path.display()
    );
    path
}

/// This process's resident memory, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let resident: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm");
    resident * 4096
}
