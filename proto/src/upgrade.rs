//! `daemon.upgrade`: switching one connection of the NDJSON transport to
//! another protocol that the engine serves over the same byte stream (MCP:
//! `vx mcp` bridges an agent's stdio to the daemon this way).
//!
//! Plain data with serde derives; field names are the wire names.
//! Never: knows what the other protocol says.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `daemon.upgrade` — switch this connection to another protocol.
pub const DAEMON_UPGRADE: &str = "daemon.upgrade";

/// Parameters of `daemon.upgrade`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UpgradeParams {
    /// The protocol to switch to (`mcp`).
    pub protocol: String,
    /// The client's working directory (absolute): the workspace the
    /// session serves.
    pub cwd: String,
    /// The client's environment: runs the session starts are keyed with it
    /// (as `run.start`'s `env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The result of `daemon.upgrade`: after this line the connection speaks
/// `protocol`, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UpgradeResult {
    pub protocol: String,
}

/// The method type (listed by `catalogue::visit`).
pub mod method {
    use super::*;
    use crate::catalogue::method;

    method! {
        /// Switch this connection to another protocol the engine serves
        /// (`mcp`): after the response line, the same byte stream carries
        /// that protocol in both directions until it closes. Refused while
        /// a request of the connection is in flight, and for a protocol the
        /// engine does not serve (the error lists those it does).
        DaemonUpgrade = DAEMON_UPGRADE; UpgradeParams => UpgradeResult; Mutation, Run
    }
}
