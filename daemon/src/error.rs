//! `error` — the engine's one error type and the kinds of failure it names.
//!
//! Owns: [`EngineError`] (a kind, a message, optional structured data) and
//! [`ErrorKind`], and the conversions from the pipeline modules' errors
//! (`graph` converts its own: it names its failures by kind).
//! Never: knows a protocol code. Only the transport edge maps a kind to a
//! code (`server::codes`), so a new transport chooses its own mapping and
//! the engine never changes for it.

use crate::{cache, globs, workspace};

/// What kind of failure ended a request. Stable: clients and transports
/// map these, never the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request itself is malformed (a relative `cwd`, say).
    InvalidParams,
    /// The workspace configuration is invalid.
    Config,
    /// A requested task, project, run or filter matched nothing.
    NotFound,
    /// The task graph has a cycle.
    Cycle,
    /// The request was cancelled.
    Cancelled,
    /// The cache (or the history beside it) could not be opened or written.
    Cache,
    /// A git operation needed by `--affected` failed.
    Git,
    /// Any other user-facing error (a bad flag value, an ambiguous name).
    User,
    /// The request's `cwd` belongs to another workspace than the daemon's.
    WrongWorkspace,
    /// An interactive task needs the client's terminal: the foreground
    /// engine must serve the run.
    NeedsTerminal,
    /// The request names another cache than the daemon's: the foreground
    /// engine must serve it.
    NeedsNoDaemon,
    /// A bug in the engine (a poisoned lock, a task that panicked).
    Internal,
}

/// An error that ends a request: its kind, a message for people and,
/// for some kinds, structured data (the right `root`, near names).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
    pub data: Option<serde_json::Value>,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }
}

impl From<workspace::ConfigError> for EngineError {
    fn from(e: workspace::ConfigError) -> Self {
        EngineError::new(ErrorKind::Config, e.to_string())
    }
}

impl From<cache::CacheError> for EngineError {
    fn from(e: cache::CacheError) -> Self {
        EngineError::new(ErrorKind::Cache, e.to_string())
    }
}

impl From<globs::GlobError> for EngineError {
    fn from(e: globs::GlobError) -> Self {
        EngineError::new(ErrorKind::Config, e.to_string())
    }
}
