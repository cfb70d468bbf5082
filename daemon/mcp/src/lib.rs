//! `vxd-mcp` — MCP for vxd: AI agents (Claude Code, Cursor, Codex, ...)
//! attached to the live daemon, served with rmcp.
//!
//! Owns: one MCP server ([`server::Vx`]) whose tools are thin adapters over
//! the engine's method catalogue (every call goes through
//! `vxd::server::the_router()`, with the caller's principal and an event
//! sink), and its two ways in:
//! - a connection of the daemon's socket switched to MCP with
//!   `daemon.upgrade {protocol: "mcp"}` (what `vx mcp` does before it
//!   copies stdio to the socket): [`register`] / [`register_stdio`]
//!   install the upgrade handler ([`serve_upgraded`]);
//! - Streamable HTTP: [`streamable_http`] builds the axum router the
//!   daemon's HTTP server mounts at `/mcp` (behind its token).
//!
//! Never: implements a query itself (each tool calls one catalogue
//! method), reads files of the workspace, or panics on a caller's input
//! (bad arguments are tool errors with a clear message).

pub mod server;
mod shape;
mod tools;

pub use server::Vx;

use std::collections::BTreeMap;
use std::sync::Arc;
use vx_proto::catalogue::Scope;
use vxd::server::Ctx;
use vxd::server::attach::{Attachment, Door};
use vxd::server::router::Principal;
use vxd::server::upgrade::Upgraded;

/// The protocol name `daemon.upgrade` takes.
pub const PROTOCOL: &str = "mcp";

/// The attachment the `vxd` binary lists: lets connections of the daemon's
/// socket switch to MCP (`vx mcp`). It serves no port of its own: the HTTP
/// server mounts [`streamable_http`].
pub struct McpAttachment;

impl Attachment for McpAttachment {
    fn name(&self) -> &'static str {
        "mcp"
    }

    fn start(&self, door: Door) -> anyhow::Result<()> {
        register(&door);
        Ok(())
    }
}

/// Installs the `mcp` upgrade handler of a daemon.
pub fn register(door: &Door) {
    door.on_upgrade(PROTOCOL, |up| Box::pin(serve_upgraded(up)));
}

/// Installs the `mcp` upgrade handler in an engine without a daemon
/// (`vxd --stdio`: `vx mcp` with the daemon off upgrades its pipe).
pub fn register_stdio() {
    vxd::server::upgrade::on_upgrade(PROTOCOL, |up| Box::pin(serve_upgraded(up)));
}

/// Serves MCP over an upgraded connection until the client closes it (or
/// the engine stops); then stops the session's runs.
pub async fn serve_upgraded(up: Upgraded) {
    let params: vx_proto::upgrade::UpgradeParams =
        serde_json::from_value(up.params).unwrap_or_default();
    let vx = Vx::new(
        up.ctx,
        up.principal,
        params.cwd,
        params.env,
        Some(&up.cancel),
    );
    vx.serve(up.reader, up.writer, up.cancel.token().clone())
        .await;
}

/// The environment a session without a client's own runs with (Streamable
/// HTTP): the daemon's, which is the environment of the `vx` that started
/// it less the run knobs (`docs/mcp.md` says so).
fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// MCP over Streamable HTTP, for the daemon's HTTP server to mount at
/// `/mcp` (the server's token check and body limits come first; rmcp
/// also checks `Host` against loopback names and bounds request bodies).
/// Each session is a [`Vx`] on the daemon's context, serving the
/// workspace root, keyed with the daemon's environment; sessions end when
/// the daemon stops.
pub fn streamable_http(door: Door) -> axum::Router {
    streamable_http_on(
        door.ctx().clone(),
        door.root().to_path_buf(),
        door.stopping(),
    )
}

/// [`streamable_http`] on a context (the in-crate test builds one without
/// a daemon).
pub fn streamable_http_on(
    ctx: Arc<Ctx>,
    root: std::path::PathBuf,
    stopping: tokio_util::sync::CancellationToken,
) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
    let cwd = root.to_string_lossy().into_owned();
    let env = Arc::new(process_env());
    let config = StreamableHttpServerConfig::default().with_cancellation_token(stopping.clone());
    let svc = StreamableHttpService::new(
        move || {
            Ok(Vx::new(
                ctx.clone(),
                Principal::new("mcp over http", &[Scope::Read, Scope::Run]),
                cwd.clone(),
                (*env).clone(),
                Some(&ctx.cancel),
            ))
        },
        LocalSessionManager::default().into(),
        config,
    );
    axum::Router::new().fallback_service(svc)
}
