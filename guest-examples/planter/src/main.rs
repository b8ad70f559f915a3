//! A hostile command for the sandbox tests: it plants a symbolic link that climbs out of
//! a directory it was granted, then tries to read and write through other grants, one
//! line per attempt, and exits 0.
//!
//! - `PLANT=/s` (a writable grant): replaces `/s/sub` (a directory or nothing) with a
//!   link to `LINK_TARGET` (default `../../../../../../../..`). A guest cannot follow it
//!   itself; the attack is on a host that opens grant paths by name again.
//! - `READ=/x/secret.txt,...`: reads each file and prints the first line it holds.
//! - `WRITE=/x/planted.txt`: writes a file there.

fn main() {
    if let Ok(at) = std::env::var("PLANT") {
        let target =
            std::env::var("LINK_TARGET").unwrap_or_else(|_| "../../../../../../../..".into());
        println!("plant {at}/sub -> {target}: {}", plant(&at, &target));
    }
    for path in std::env::var("READ").unwrap_or_default().split(',') {
        if path.is_empty() {
            continue;
        }
        match std::fs::read_to_string(path) {
            Ok(text) => println!(
                "read {path}: ALLOWED {}",
                text.lines().next().unwrap_or_default()
            ),
            Err(e) => println!("read {path}: denied ({e})"),
        }
    }
    if let Ok(path) = std::env::var("WRITE") {
        match std::fs::write(&path, "planted by a guest") {
            Ok(()) => println!("write {path}: ALLOWED"),
            Err(e) => println!("write {path}: denied ({e})"),
        }
    }
    println!("planter: done");
}

/// Replaces `sub` in the preopen named `at` with a symlink to `target`.
fn plant(at: &str, target: &str) -> String {
    let Some((dir, _)) = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, name)| name == at)
    else {
        return format!("no preopen {at}");
    };
    let _ = dir.remove_directory_at("sub");
    let _ = dir.unlink_file_at("sub");
    match dir.symlink_at(target, "sub") {
        Ok(()) => "ok".into(),
        Err(e) => format!("failed ({e:?})"),
    }
}
