//! A command that tries to look outside its sandbox and reports what it saw, one line
//! per attempt, then exits 0. Tests read these lines to prove that nothing leaked, and
//! that what was granted works: `CONNECT_TO` (default `127.0.0.1:22`) is the address it
//! tries to reach, and a granted `/data` directory is read and written.

fn main() {
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    println!("env-keys: {}", vars.join(","));
    println!("args: {}", std::env::args().collect::<Vec<_>>().join(","));
    for path in [
        "/etc/passwd",
        "/etc/hostname",
        "/proc/self/environ",
        ".",
        "/data/../../etc/passwd",
    ] {
        match std::fs::read(path) {
            Ok(bytes) => println!("read {path}: ALLOWED {} bytes", bytes.len()),
            Err(e) => println!("read {path}: denied ({e})"),
        }
    }
    match std::fs::read_dir("/") {
        Ok(_) => println!("list /: ALLOWED"),
        Err(e) => println!("list /: denied ({e})"),
    }
    match std::fs::read_to_string("/data/input.txt") {
        Ok(text) => println!("read /data/input.txt: ok {}", text.trim()),
        Err(e) => println!("read /data/input.txt: denied ({e})"),
    }
    match std::fs::write("/data/output.txt", "written by snoop") {
        Ok(()) => println!("write /data/output.txt: ok"),
        Err(e) => println!("write /data/output.txt: denied ({e})"),
    }
    let target = std::env::var("CONNECT_TO").unwrap_or_else(|_| "127.0.0.1:22".to_string());
    match std::net::TcpStream::connect(&target) {
        Ok(_) => println!("connect {target}: ALLOWED"),
        Err(e) => println!("connect {target}: denied ({e})"),
    }
    println!("snoop: done");
}
