//! `server::upgrade` — handing a connection of the NDJSON transport to
//! another protocol served over the same byte stream (`daemon.upgrade`).
//!
//! Owns: the process-wide registry of protocol handlers (a crate of the
//! `vxd` binary registers one with [`on_upgrade`] or
//! [`super::attach::Door::on_upgrade`]; the MCP crate registers `mcp`), and
//! [`Upgraded`], what a handler gets: the connection's reader (with any
//! bytes already read after the `daemon.upgrade` line in front) and writer,
//! the engine context, the caller's principal, the request's params and a
//! cancellation scope that a stopping engine cancels.
//!
//! Never: knows a protocol, or links one (the handlers live in their own
//! crates).

use super::Ctx;
use super::router::{BoxFuture, Cancel, Principal};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use tokio::io::{AsyncRead, AsyncWrite};

/// A connection handed to a protocol.
pub struct Upgraded {
    /// The connection's bytes from the peer.
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    /// The connection's bytes to the peer.
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
    pub ctx: Arc<Ctx>,
    /// Who is on the other end (as the NDJSON connection knew them).
    pub principal: Principal,
    /// The `daemon.upgrade` params as sent (`vx_proto::upgrade::UpgradeParams`).
    pub params: serde_json::Value,
    /// Cancelled when the engine stops (or the stdio engine gets a signal):
    /// the handler stops its work and returns.
    pub cancel: Cancel,
}

/// A protocol's handler: serves the connection until it closes (or
/// [`Upgraded::cancel`] fires).
pub type Handler = Arc<dyn Fn(Upgraded) -> BoxFuture<()> + Send + Sync>;

fn registry() -> &'static RwLock<BTreeMap<String, Handler>> {
    static R: OnceLock<RwLock<BTreeMap<String, Handler>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Registers (or replaces) the handler of `protocol`.
pub fn on_upgrade(
    protocol: &str,
    handler: impl Fn(Upgraded) -> BoxFuture<()> + Send + Sync + 'static,
) {
    if let Ok(mut r) = registry().write() {
        r.insert(protocol.to_string(), Arc::new(handler));
    }
}

/// The handler of `protocol`, when one is registered.
pub fn handler(protocol: &str) -> Option<Handler> {
    registry().read().ok()?.get(protocol).cloned()
}

/// The protocols a connection can switch to, sorted.
pub fn protocols() -> Vec<String> {
    registry()
        .read()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default()
}
