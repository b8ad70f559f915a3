//! A spinner on a terminal while components compile (a Python or JavaScript component is
//! tens of megabytes and takes seconds): what is compiling, how big, for how long. Shown
//! only on a terminal, only after a moment (a cached component never shows it), and
//! cleared when the work is done.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long work may take before the spinner shows (`SETPOINT_PROGRESS_AFTER_MS`
/// changes it).
const SHOW_AFTER: Duration = Duration::from_millis(400);

fn show_after() -> Duration {
    std::env::var("SETPOINT_PROGRESS_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(SHOW_AFTER, Duration::from_millis)
}
const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// A spinner that runs until dropped.
pub struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `paths` as the spinner names them: each file with its size, or a count past three.
pub fn describe(paths: &[std::path::PathBuf]) -> String {
    let mut unique: Vec<&std::path::PathBuf> = paths.iter().collect();
    unique.sort();
    unique.dedup();
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    if unique.len() > 3 {
        let total: u64 = unique.iter().map(|p| size(p)).sum();
        return format!(
            "{} components ({})",
            unique.len(),
            bytesize::ByteSize(total)
        );
    }
    let named: Vec<String> = unique
        .iter()
        .map(|p| {
            let name = p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            format!("{name} ({})", bytesize::ByteSize(size(p)))
        })
        .collect();
    named.join(", ")
}

impl Spinner {
    /// Shows `doing` (e.g. "compiling ticker.wasm (1.1 MiB)") on stderr if it is a
    /// terminal and the work lasts.
    pub fn start(doing: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() || doing.is_empty() {
            return Self { stop, thread: None };
        }
        let stopped = stop.clone();
        let after = show_after();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut shown = false;
            let mut frame = 0;
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(
                    Duration::from_millis(20).max(after.min(Duration::from_millis(100))),
                );
                if started.elapsed() < after || stopped.load(Ordering::Relaxed) {
                    continue;
                }
                shown = true;
                frame = (frame + 1) % FRAMES.len();
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[K{} {doing} … {:.1}s",
                    FRAMES[frame],
                    started.elapsed().as_secs_f64()
                );
                let _ = err.flush();
            }
            if shown {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K");
                let _ = err.flush();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_named_with_their_size_or_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.wasm");
        std::fs::write(&a, vec![0u8; 2048]).expect("write");
        assert_eq!(describe(&[a.clone(), a.clone()]), "a.wasm (2.0 KiB)");
        let many: Vec<std::path::PathBuf> = (0..4)
            .map(|i| dir.path().join(format!("{i}.wasm")))
            .collect();
        assert_eq!(describe(&many), "4 components (0 B)");
    }
}
