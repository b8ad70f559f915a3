//! Located errors: every rejected input says which file, line and column, what is wrong,
//! and (where we know) what to do about it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a manifest file (1-based line and column; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line, or 0 when unknown.
    pub line: u64,
    /// 1-based column, or 0 when unknown.
    pub column: u64,
}

impl Origin {
    /// An origin at a known line and column of `file`.
    pub fn new(file: &Path, line: u64, column: u64) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            column,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        Ok(())
    }
}

/// One problem with an input, located where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is; `None` for inputs that did not come from a file.
    pub origin: Option<Origin>,
    /// What is wrong.
    pub message: String,
    /// What to do about it, when there is a clear answer.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at `origin`.
    pub fn at(origin: Option<Origin>, message: impl Into<String>) -> Self {
        Self {
            origin,
            message: message.into(),
            help: None,
        }
    }

    /// Adds a hint on how to fix the problem.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(origin) => write!(f, "{origin}: error: {}", self.message)?,
            None => write!(f, "error: {}", self.message)?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// A rejected input: one or more diagnostics. Nothing from the input was applied.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Rejected {
    /// Every problem found, in input order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Rejected {
    /// A rejection with a single diagnostic.
    pub fn one(diagnostic: Diagnostic) -> Self {
        Self {
            diagnostics: vec![diagnostic],
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
