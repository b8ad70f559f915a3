//! A deliberately hostile command; `MODE` picks the attack:
//! - `membomb`: allocates and touches 1 MiB blocks forever;
//! - `recurse`: unbounded recursion;
//! - `flood`: writes output lines as fast as it can, forever.

use std::hint::black_box;
use std::io::Write;

/// Scalars only, so the frames live on the Wasm stack and overflow it (a Rust array here
/// would live on the shadow stack in linear memory and overflow as `MemoryOutOfBounds`).
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    recurse(n.wrapping_add(1)).wrapping_mul(3).wrapping_add(n)
}

fn main() {
    let mode = std::env::var("MODE").unwrap_or_default();
    println!("hostile: {mode}");
    match mode.as_str() {
        "membomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![0xA5; 1 << 20]);
                black_box(&hoard);
            }
        }
        "recurse" => {
            black_box(recurse(black_box(0)));
        }
        "flood" => {
            let out = std::io::stdout();
            let mut out = out.lock();
            let mut n: u64 = 0;
            loop {
                n += 1;
                let _ = writeln!(
                    out,
                    "flood line {n} ................................................................"
                );
            }
        }
        other => panic!("unknown MODE `{other}`"),
    }
}
