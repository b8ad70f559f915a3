//! A command that computes forever and never sleeps or calls the host: the guest that
//! would starve a cooperative scheduler. setpoint's epoch interruption must pre-empt it.

fn main() {
    println!("spinner: spinning");
    let mut x: u64 = 1;
    loop {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::hint::black_box(x);
    }
}
