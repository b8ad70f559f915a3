//! `run`'s terminal. On a terminal, guest output and events scroll above a status table
//! that is redrawn in place at the bottom (the table is cleared, the new lines written,
//! the table written again, all in one locked write), so that a line is never torn by
//! the table. Elsewhere (a pipe, a file), plain lines: output and events on stderr, and
//! the table only at the end.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

/// What `run` prints while it runs.
pub struct Screen {
    live: bool,
    /// The table's lines now on the screen (each cut to the terminal's width, so that
    /// none wraps and the cursor goes back over exactly these).
    shown: Vec<String>,
}

/// The screen, shared by the printer of output and events and the status loop.
pub type SharedScreen = Arc<Mutex<Screen>>;

/// Locks the screen (a panic while printing cannot stop the rest from printing).
pub fn lock(screen: &SharedScreen) -> std::sync::MutexGuard<'_, Screen> {
    screen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The terminal's width in columns, if stdout is one.
fn width() -> Option<usize> {
    #[cfg(unix)]
    {
        // SAFETY: TIOCGWINSZ fills a winsize struct owned here; a failure leaves it zeroed.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
        (ok && size.ws_col > 0).then_some(usize::from(size.ws_col))
    }
    #[cfg(not(unix))]
    None
}

/// `line` cut to `width - 1` characters.
fn fit(line: &str, width: usize) -> String {
    line.chars().take(width.saturating_sub(1).max(1)).collect()
}

impl Screen {
    /// A screen: live (redrawn in place on stdout) or plain.
    pub fn new(live: bool) -> SharedScreen {
        Arc::new(Mutex::new(Self {
            live,
            shown: Vec::new(),
        }))
    }

    /// The escape sequence that takes the cursor back to where the table began and
    /// clears from there.
    fn unshow(&self) -> String {
        match self.shown.len() {
            0 => String::new(),
            n => format!("\x1b[{n}A\r\x1b[J"),
        }
    }

    /// One line of output or an event.
    pub fn line(&mut self, text: &str) {
        if !self.live {
            eprintln!("{text}");
            return;
        }
        let mut out = format!("{}{text}\n", self.unshow());
        for l in &self.shown {
            out.push_str(l);
            out.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    /// The status table, redrawn in place (live only).
    pub fn status(&mut self, table: &str) {
        if !self.live {
            return;
        }
        let width = width().unwrap_or(usize::MAX);
        let lines: Vec<String> = table.lines().map(|l| fit(l, width)).collect();
        let mut out = self.unshow();
        for l in &lines {
            out.push_str(l);
            out.push('\n');
        }
        self.shown = lines;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    /// Takes the live table away (before the final status is printed).
    pub fn finish(&mut self) {
        if self.live && !self.shown.is_empty() {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(self.unshow().as_bytes());
            let _ = stdout.flush();
            self.shown.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_line_never_wraps_and_the_cursor_goes_back_over_each() {
        assert_eq!(fit("abcdef", 4), "abc");
        assert_eq!(fit("ab", 80), "ab");
        assert_eq!(fit("abc", 0), "a");
        let screen = Screen {
            live: true,
            shown: vec!["NAME".into(), "web".into()],
        };
        assert_eq!(screen.unshow(), "\x1b[2A\r\x1b[J");
        let empty = Screen {
            live: true,
            shown: Vec::new(),
        };
        assert_eq!(empty.unshow(), "");
    }
}
