//! A command that computes forever and never sleeps or calls the host: the guest that
//! would starve a cooperative scheduler. setpoint's epoch interruption must pre-empt it.
//! With `SPIN_ROUNDS=N` it stops after N million rounds instead (a fixed amount of
//! compute, to compare native code with the Pulley interpreter) and prints the result.

fn main() {
    let rounds: Option<u64> = std::env::var("SPIN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok());
    println!("spinner: spinning");
    let mut x: u64 = 1;
    let mut done: u64 = 0;
    loop {
        for _ in 0..1_000_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x = std::hint::black_box(x);
        }
        done += 1;
        if rounds.is_some_and(|r| done >= r) {
            println!("spinner: {done}M rounds, x={x:x}");
            return;
        }
    }
}
