//! Diagnostics: load and validation errors that name file, line and column.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found while loading a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong and, where it helps, what was expected.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at a known position (1-based line and column).
    pub fn at(file: &Path, pos: Option<(usize, usize)>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one load, reported together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Adds one problem.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Turns a serde_yaml error into a diagnostic, moving its position into the
/// line and column fields rather than the message.
pub fn from_yaml_error(file: &Path, err: &serde_yaml::Error) -> Diagnostic {
    let pos = err.location().map(|l| (l.line(), l.column()));
    let mut message = err.to_string();
    if let Some(idx) = message.rfind(" at line ") {
        message.truncate(idx);
    }
    Diagnostic::at(file, pos, message)
}

/// Deserializes one YAML document, reporting an error at the exact field
/// path (`spec.cooldown`), with serde_yaml's line and column.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, Diagnostic> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut d = from_yaml_error(file, e.inner());
        // serde_yaml prefixes a coarser path of its own; use the precise one.
        let rest = match d.message.split_once(": ") {
            Some((head, rest)) if !head.contains(' ') && path.starts_with(head) => rest.to_string(),
            _ => d.message.clone(),
        };
        d.message = if path.is_empty() || path == "." {
            rest
        } else {
            format!("{path}: {rest}")
        };
        d
    })
}
