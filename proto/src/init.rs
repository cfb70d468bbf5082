//! `workspace.init` — `vx init`: read an existing repo's Turborepo, Nx or
//! `package.json` scripts config and write the equivalent `vx.toml` files.
//!
//! Plain data with serde derives; field names are the wire names.
//! `docs/protocol.md` documents the method; `docs/init.md` the translation.

use serde::{Deserialize, Serialize};

/// `workspace.init` — translate a repo's config into `vx.toml` files.
pub const WORKSPACE_INIT: &str = "workspace.init";

/// Where `vx init` reads the existing config from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum InitSource {
    /// `turbo.json` (and per-package `turbo.json`) + `package.json` scripts.
    Turbo,
    /// `nx.json` + `project.json` targets (and `package.json` scripts).
    Nx,
    /// `package.json` scripts only.
    Scripts,
}

impl InitSource {
    pub fn name(self) -> &'static str {
        match self {
            InitSource::Turbo => "turbo",
            InitSource::Nx => "nx",
            InitSource::Scripts => "scripts",
        }
    }
}

/// Parameters of `workspace.init`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InitParams {
    /// Absolute directory to start from (the repo root is found from it).
    pub cwd: String,
    /// The source to translate; detected when absent (`turbo.json`, else
    /// `nx.json`, else `package.json` scripts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<InitSource>,
    /// Replace files that already exist (otherwise their existence is an error
    /// and nothing is written).
    #[serde(default)]
    pub force: bool,
    /// Compute the files and report, write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InitFile {
    /// Root-relative path.
    pub path: String,
    /// The whole file.
    pub content: String,
    /// Whether it replaced an existing file (`force`).
    pub replaced: bool,
}

/// One item `vx init` could not translate (or translated only approximately).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InitItem {
    /// Root-relative file the item is in.
    pub file: String,
    /// The item, e.g. `tasks.build.outputLogs`.
    pub item: String,
    /// Why, and what to do.
    pub reason: String,
}

/// The result of `workspace.init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InitResult {
    /// Absolute repo root.
    pub root: String,
    /// What was translated (as given, or detected).
    pub source: InitSource,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// The files written (or, with `dry_run`, that would be).
    pub files: Vec<InitFile>,
    /// What could not be translated.
    pub untranslated: Vec<InitItem>,
    /// When the written config does not load (a bug in the translation, or
    /// a repo vx cannot model): the loader's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
}

/// The method type of the catalogue (`vx_proto::catalogue::visit` lists it).
pub mod method {
    use super::*;
    use crate::catalogue::method;

    method! {
        /// Translate the repo's `turbo.json`, `nx.json` + `project.json` or
        /// `package.json` scripts into `vx.toml` files and write them (never
        /// over an existing file unless `force`; nothing with `dry_run`).
        /// Reports every item it could not translate.
        WorkspaceInit = WORKSPACE_INIT; InitParams => InitResult; Mutation, Admin
    }
}
