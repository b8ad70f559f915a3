//! A command that tries to look outside its sandbox and reports what it saw, one line
//! per attempt, then exits 0. Tests read these lines to prove that nothing leaked.

fn main() {
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    println!("env-keys: {}", vars.join(","));
    println!("args: {}", std::env::args().collect::<Vec<_>>().join(","));
    for path in ["/etc/passwd", "/etc/hostname", "/proc/self/environ", "."] {
        match std::fs::read(path) {
            Ok(bytes) => println!("read {path}: ALLOWED {} bytes", bytes.len()),
            Err(e) => println!("read {path}: denied ({e})"),
        }
    }
    match std::fs::read_dir("/") {
        Ok(_) => println!("list /: ALLOWED"),
        Err(e) => println!("list /: denied ({e})"),
    }
    match std::net::TcpStream::connect("127.0.0.1:22") {
        Ok(_) => println!("connect 127.0.0.1:22: ALLOWED"),
        Err(e) => println!("connect 127.0.0.1:22: denied ({e})"),
    }
    println!("snoop: done");
}
