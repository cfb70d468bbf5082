//! `ConfigError`: one config problem, located (file, line, column) where the
//! format allows, with an optional fix hint.

use std::fmt;
use std::path::PathBuf;

/// A workspace discovery or configuration error.
///
/// Displays as `<file>:<line>:<col>: <message>` (the parts that are known),
/// then `\n  help: <hint>` when there is a hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file at fault; root-relative when it is inside the root.
    pub file: Option<PathBuf>,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigError {
    /// An error with only a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            file: None,
            line: None,
            column: None,
            message: message.into(),
            hint: None,
        }
    }

    /// An error about `file` (no position).
    pub fn in_file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::new(message).with_file(file)
    }

    pub fn with_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Sets the position (1-based line and column).
    pub fn at(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    /// Sets the position when known.
    pub fn at_opt(mut self, pos: Option<(usize, usize)>) -> Self {
        if let Some((l, c)) = pos {
            self.line = Some(l);
            self.column = Some(c);
        }
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_hint_opt(mut self, hint: Option<String>) -> Self {
        if hint.is_some() {
            self.hint = hint;
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(col) = self.column {
                    write!(f, ":{col}")?;
                }
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  help: {hint}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_forms() {
        assert_eq!(ConfigError::new("boom").to_string(), "boom");
        assert_eq!(
            ConfigError::in_file("vx.toml", "boom").to_string(),
            "vx.toml: boom"
        );
        assert_eq!(
            ConfigError::in_file("a/vx.toml", "boom")
                .at(3, 7)
                .with_hint("do x")
                .to_string(),
            "a/vx.toml:3:7: boom\n  help: do x"
        );
    }
}
