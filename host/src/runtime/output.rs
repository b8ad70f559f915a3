//! Captured guest output: stdout/stderr of each instance go into a bounded tail of lines
//! (kept for status and forensics) and are forwarded, rate-limited, to the host's log
//! stream. Writes never block the guest and never fail: past the limits, bytes are
//! dropped and counted, so an output flood costs the flooder, not the host.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::broadcast;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// An HTTP service's access log: one line per request answered (written by the
    /// host, not the guest).
    Access,
}

/// One line of guest output, as forwarded to log subscribers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// The workload the instance belongs to.
    pub workload: Arc<str>,
    /// The instance that wrote the line.
    pub instance: Arc<str>,
    /// stdout or stderr.
    pub stream: Stream,
    /// The line, without its newline; cut at the configured line length.
    pub line: String,
}

/// Bounds on captured output; every field has a default.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimits {
    /// Lines kept per instance for status and forensics.
    pub tail_lines: usize,
    /// Longest line kept or forwarded; longer lines are cut.
    pub max_line_bytes: usize,
    /// Lines per second forwarded to the log stream per instance (burst of the same size);
    /// the rest are counted as dropped but still enter the tail.
    pub forward_lines_per_sec: u32,
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self {
            tail_lines: 50,
            max_line_bytes: 4096,
            forward_lines_per_sec: 200,
        }
    }
}

/// Counters and the tail of one instance's output.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputSummary {
    /// Bytes the guest wrote, including dropped ones.
    pub bytes_written: u64,
    /// Lines not forwarded to the log stream because of the rate limit.
    pub lines_dropped: u64,
    /// The last lines written (both streams, in order).
    pub tail: Vec<String>,
}

impl OutputSummary {
    /// The line of the tail that says what went wrong: the last one that is not a
    /// runtime's boilerplate (Rust's `note: run with RUST_BACKTRACE=1`, backtrace
    /// frames, blank lines). When the last words are a language runtime's own panic on
    /// an error it was handed (componentize-py's or a JavaScript engine's
    /// `Result::unwrap()`), the exception printed just above that panic is the meaning.
    pub fn meaningful_line(&self) -> Option<&str> {
        let lines: Vec<&str> = self.tail.iter().map(|l| l.trim_end()).collect();
        let end = last_meaningful(&lines, lines.len())?;
        let header = (end.saturating_sub(2)..end)
            .rev()
            .find(|&j| lines[j].starts_with("thread '") && lines[j].contains("panicked at"));
        if let Some(header) = header
            && is_runtime_panic(lines[end])
            && let Some(above) = last_meaningful(&lines, header)
        {
            return Some(lines[above]);
        }
        Some(lines[end])
    }
}

/// The index of the last meaningful line before `before`.
fn last_meaningful(lines: &[&str], before: usize) -> Option<usize> {
    (0..before).rev().find(|&i| !is_boilerplate(lines[i]))
}

fn is_boilerplate(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty()
        || t.starts_with("note: run with `RUST_BACKTRACE")
        || t.starts_with("note: Some details are omitted")
        || t.starts_with("stack backtrace:")
        || t.starts_with("at ")
        || t.split_once(':')
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A panic of the runtime on an error value (the guest's exception) rather than the
/// guest's own words.
fn is_runtime_panic(message: &str) -> bool {
    message.contains("Result::unwrap()")
        || message.contains("Option::unwrap()")
        || message.starts_with("called `Result::unwrap()`")
        || message.contains("on an `Err` value")
}

struct Capture {
    limits: OutputLimits,
    tail: VecDeque<String>,
    partial: [Vec<u8>; 2],
    bytes_written: u64,
    lines_dropped: u64,
    tokens: f64,
    refilled_at: Instant,
    sink: Option<broadcast::Sender<LogLine>>,
    workload: Arc<str>,
    instance: Arc<str>,
}

impl Capture {
    fn write(&mut self, stream: Stream, mut bytes: &[u8]) {
        self.bytes_written += bytes.len() as u64;
        // Access lines never come through a capture; only the guest's two streams do.
        let idx = usize::from(stream == Stream::Stderr);
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            let room = self
                .limits
                .max_line_bytes
                .saturating_sub(self.partial[idx].len());
            self.partial[idx].extend_from_slice(&bytes[..pos.min(room)]);
            let line = std::mem::take(&mut self.partial[idx]);
            self.emit(stream, line);
            bytes = &bytes[pos + 1..];
        }
        let room = self
            .limits
            .max_line_bytes
            .saturating_sub(self.partial[idx].len());
        self.partial[idx].extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self, stream: Stream, line: Vec<u8>) {
        let line = String::from_utf8_lossy(&line).into_owned();
        if self.tail.len() >= self.limits.tail_lines {
            self.tail.pop_front();
        }
        if self.limits.tail_lines > 0 {
            self.tail.push_back(line.clone());
        }
        let Some(sink) = &self.sink else { return };
        let now = Instant::now();
        let rate = f64::from(self.limits.forward_lines_per_sec);
        self.tokens =
            (self.tokens + now.duration_since(self.refilled_at).as_secs_f64() * rate).min(rate);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            // No subscriber is not an error: the line is still in the tail.
            let _ = sink.send(LogLine {
                workload: self.workload.clone(),
                instance: self.instance.clone(),
                stream,
                line,
            });
        } else {
            self.lines_dropped += 1;
        }
    }

    fn flush_partial(&mut self) {
        for (idx, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            if !self.partial[idx].is_empty() {
                let line = std::mem::take(&mut self.partial[idx]);
                self.emit(stream, line);
            }
        }
    }
}

/// The output capture of one instance; clones share the same buffers.
#[derive(Clone)]
pub struct OutputCapture {
    inner: Arc<Mutex<Capture>>,
}

impl OutputCapture {
    /// A capture for `instance` of `workload`, forwarding lines to `sink` when given.
    pub fn new(
        workload: Arc<str>,
        instance: Arc<str>,
        limits: OutputLimits,
        sink: Option<broadcast::Sender<LogLine>>,
    ) -> Self {
        let rate = f64::from(limits.forward_lines_per_sec);
        Self {
            inner: Arc::new(Mutex::new(Capture {
                limits,
                // Grown as lines come: most instances print little, and 100,000 idle ones
                // would hold 1.2 KiB each of empty room.
                tail: VecDeque::new(),
                partial: [Vec::new(), Vec::new()],
                bytes_written: 0,
                lines_dropped: 0,
                tokens: rate,
                refilled_at: Instant::now(),
                sink,
                workload,
                instance,
            })),
        }
    }

    /// Attributes the lines written from now on to `instance` (a spare learns its id
    /// when it is started).
    pub fn rename(&self, instance: Arc<str>) {
        self.lock().instance = instance;
    }

    /// The stream handed to the guest as stdout or stderr.
    pub fn stream(&self, stream: Stream) -> CaptureStream {
        CaptureStream {
            capture: self.clone(),
            stream,
        }
    }

    /// Counters and tail so far, with any unterminated last line included.
    pub fn summary(&self) -> OutputSummary {
        let mut c = self.lock();
        c.flush_partial();
        OutputSummary {
            bytes_written: c.bytes_written,
            lines_dropped: c.lines_dropped,
            tail: c.tail.iter().cloned().collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Capture> {
        // A poisoned lock only means a panic elsewhere mid-write; the data is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One of an instance's two output streams.
#[derive(Clone)]
pub struct CaptureStream {
    capture: OutputCapture,
    stream: Stream,
}

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Always accepts this much per write; larger writes are split by the guest's libc.
const WRITE_BUDGET: usize = 64 * 1024;

#[wasmtime_wasi::async_trait]
impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.capture.lock().write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CaptureStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.capture.lock().write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    fn tail(lines: &[&str]) -> OutputSummary {
        OutputSummary {
            bytes_written: 0,
            lines_dropped: 0,
            tail: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn the_meaningful_line_skips_a_runtimes_boilerplate() {
        // A Rust guest's own panic: its message, not the note after it.
        let rust = tail(&[
            "working",
            "thread 'main' panicked at src/main.rs:20:5:",
            "boom",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        ]);
        assert_eq!(rust.meaningful_line(), Some("boom"));
        // A Python exception under componentize-py's runtime, which then panics.
        let python = tail(&[
            "Traceback (most recent call last):",
            "  File \"app.py\", line 3, in run",
            "ValueError: no sensor",
            "thread '<unnamed>' panicked at src/lib.rs:9:14:",
            "called `Result::unwrap()` on an `Err` value: ()",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        ]);
        assert_eq!(python.meaningful_line(), Some("ValueError: no sensor"));
        // A JavaScript error with its stack frames.
        let js = tail(&[
            "Error: boom",
            "    at f (main.js:3:9)",
            "    at main.js:5:1",
            "",
        ]);
        assert_eq!(js.meaningful_line(), Some("Error: boom"));
        // Backtrace frames after a panic.
        let frames = tail(&[
            "oops",
            "stack backtrace:",
            "   0: rust_begin_unwind",
            "             at /rustc/x",
        ]);
        assert_eq!(frames.meaningful_line(), Some("oops"));
        assert_eq!(tail(&[]).meaningful_line(), None);
        assert_eq!(tail(&["", " "]).meaningful_line(), None);
    }

    use super::*;

    fn capture(limits: OutputLimits, sink: Option<broadcast::Sender<LogLine>>) -> OutputCapture {
        OutputCapture::new("w".into(), "w-1".into(), limits, sink)
    }

    #[test]
    fn keeps_a_bounded_tail_and_cuts_long_lines() {
        let c = capture(
            OutputLimits {
                tail_lines: 2,
                max_line_bytes: 4,
                forward_lines_per_sec: 10,
            },
            None,
        );
        let mut out = c.stream(Stream::Stdout);
        OutputStream::write(&mut out, Bytes::from_static(b"one\ntwo\nthree-long\npart")).unwrap();
        let s = c.summary();
        assert_eq!(s.tail, vec!["thre".to_string(), "part".to_string()]);
        assert_eq!(s.bytes_written, 23);
    }

    #[test]
    fn rate_limits_forwarding_and_counts_drops() {
        let (tx, mut rx) = broadcast::channel(1024);
        let c = capture(
            OutputLimits {
                tail_lines: 10,
                max_line_bytes: 100,
                forward_lines_per_sec: 5,
            },
            Some(tx),
        );
        let mut out = c.stream(Stream::Stderr);
        for i in 0..50 {
            OutputStream::write(&mut out, Bytes::from(format!("line {i}\n"))).unwrap();
        }
        let mut forwarded = 0;
        while rx.try_recv().is_ok() {
            forwarded += 1;
        }
        assert!((5..=6).contains(&forwarded), "forwarded {forwarded}");
        assert_eq!(c.summary().lines_dropped, 50 - forwarded);
    }
}
