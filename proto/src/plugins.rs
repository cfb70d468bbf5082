//! `plugins.list` and the plugin protocol's constants — `vx plugins`.
//!
//! Plain data with serde derives; field names are the wire names.
//! `docs/plugins.md` is the protocol plugins speak (JSON-RPC 2.0 over their
//! stdin/stdout); this module is what the daemon reports about them.

use serde::{Deserialize, Serialize};

/// `plugins.list` — the daemon's plugins, with state and last error.
pub const PLUGINS_LIST: &str = "plugins.list";

/// The plugin protocol version this vx speaks (the `initialize` handshake).
pub const PROTOCOL: u32 = 1;

/// The handshake request the daemon sends first.
pub const INITIALIZE: &str = "initialize";

/// The key hook: a request asking for key material per task (a hook name
/// and its request's method).
pub const HOOK_KEY: &str = "key";

/// The weights hook: a request asking for each task's expected cost.
pub const HOOK_WEIGHTS: &str = "weights";

/// Where a plugin is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum PluginState {
    /// Started; the handshake has not been answered yet.
    Starting,
    /// Handshake done: it gets the notifications it asked for.
    Ready,
    /// It failed; it is restarted after a delay.
    Backoff,
    /// It failed too often in a row: not restarted until its `[[plugins]]`
    /// entry changes.
    Disabled,
}

/// One plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PluginInfo {
    pub name: String,
    /// The command line it runs (`command` then `args`).
    pub command: Vec<String>,
    pub state: PluginState,
    /// What it said in the handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// The hooks it implements.
    #[serde(default)]
    pub hooks: Vec<String>,
    /// The events it gets (`run`, `task`, `output`).
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Times it was started (1 for a plugin that never failed).
    pub starts: u32,
    /// Notifications written to it.
    pub delivered: u64,
    /// Notifications it missed (its queue was full, or it was down).
    pub dropped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The result of `plugins.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PluginList {
    /// False in the no-daemon engine: plugins run in the daemon only.
    pub hosted: bool,
    pub plugins: Vec<PluginInfo>,
    /// The `[[plugins]]` configuration error, if the root `vx.toml` has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
}

pub mod method {
    use super::*;
    use crate::catalogue::{Empty, method};

    method! {
        /// The daemon's plugins (`[[plugins]]` in the root `vx.toml`): state,
        /// version and hooks from their handshake, starts, notifications
        /// delivered and dropped, last error.
        PluginsList = PLUGINS_LIST; Empty => PluginList; Query, Read
    }
}
