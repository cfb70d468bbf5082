//! `server::attach` — how a transport or exporter that lives in its own
//! crate (HTTP and the dashboard, MCP over HTTP, worker links, the
//! OpenTelemetry exporter) attaches to a running daemon.
//!
//! Owns: the [`Attachment`] trait the `vxd` binary's crates implement, and
//! the [`Door`] each gets when the daemon starts serving: the router (every
//! request goes through [`super::the_router`], whatever the transport), the
//! connection context, the workspace root, the runtime directory beside the
//! socket (discovery files go there, never into the workspace), the
//! daemon's stop token, connection counting (a live HTTP or gRPC client
//! keeps the daemon from idling out, like a socket client), the
//! endpoints `daemon.status` reports, and the daemon's one bearer token
//! (generated once, on first use, shared by HTTP and the worker links).
//! Never: knows a protocol, lets an attachment that fails to start stop
//! the daemon (the failure is logged; the socket keeps serving), or logs
//! the token.

use super::{Ctx, DaemonInfo, Router};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

/// A transport or exporter started with the daemon and stopped with it.
pub trait Attachment: Send + Sync {
    /// A short name for logs and `daemon.status` (`http`, `otel`).
    fn name(&self) -> &'static str;
    /// Starts it on the daemon's runtime. Returns promptly: long-lived work
    /// is spawned, and ends when [`Door::stopping`] is cancelled.
    fn start(&self, door: Door) -> anyhow::Result<()>;
}

/// What an attachment reaches of the daemon.
#[derive(Clone)]
pub struct Door {
    ctx: Arc<Ctx>,
    info: Arc<DaemonInfo>,
    root: PathBuf,
    stopping: CancellationToken,
    /// The daemon's token, made on first use (see [`Door::token`]).
    token: Arc<std::sync::Mutex<Option<String>>>,
}

impl Door {
    pub(super) fn new(
        ctx: Arc<Ctx>,
        info: Arc<DaemonInfo>,
        root: PathBuf,
        stopping: CancellationToken,
    ) -> Door {
        Door {
            ctx,
            info,
            root,
            stopping,
            token: Default::default(),
        }
    }

    /// The daemon's bearer token: 32 random bytes from the OS as 64 hex
    /// digits, made once per daemon (every clone of this door, so every
    /// attachment, gets the same one). HTTP serves with it; worker links
    /// accept it unless `[workers] token` is configured.
    pub fn token(&self) -> std::io::Result<String> {
        let mut t = self
            .token
            .lock()
            .map_err(|_| std::io::Error::other("token lock poisoned"))?;
        if let Some(t) = &*t {
            return Ok(t.clone());
        }
        let fresh = new_token()?;
        *t = Some(fresh.clone());
        Ok(fresh)
    }

    /// The one router; make a connection with [`Router::connect`] (the
    /// caller's principal and event sink) and call methods through it.
    pub fn router(&self) -> &'static Router<Ctx> {
        super::the_router()
    }

    /// The context every connection of this daemon shares.
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// The workspace root this daemon serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The daemon's socket; its directory is private to the user (`0700`).
    pub fn socket(&self) -> &Path {
        &self.info.socket
    }

    /// A file beside the socket, named like it with `ext` in place of
    /// `.sock` (the HTTP discovery file is `<socket stem>.json`).
    pub fn beside_socket(&self, ext: &str) -> PathBuf {
        self.info.socket.with_extension(ext)
    }

    /// Cancelled when the daemon stops: every attachment winds down then.
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Counts a live client until the guard drops: the daemon does not
    /// idle out while one is connected.
    pub fn connection(&self) -> ConnectionGuard {
        self.info.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.info.clone())
    }

    /// Marks activity (a request that did not go through the router).
    pub fn touch(&self) {
        if let Some(hot) = &self.ctx.hot {
            hot.touch();
        }
    }

    /// Lets a connection of the daemon's socket switch to `protocol`
    /// (`daemon.upgrade`): `handler` then serves its byte stream (see
    /// [`super::upgrade`]).
    pub fn on_upgrade(
        &self,
        protocol: &str,
        handler: impl Fn(super::upgrade::Upgraded) -> super::router::BoxFuture<()>
        + Send
        + Sync
        + 'static,
    ) {
        super::upgrade::on_upgrade(protocol, handler);
    }

    /// Publishes an endpoint (`http` → its URL) in `daemon.status`.
    pub fn advertise(&self, name: &str, address: &str) {
        if let Ok(mut m) = self.info.endpoints.lock() {
            m.insert(name.to_string(), address.to_string());
        }
    }
}

/// A fresh token: 32 bytes from `/dev/urandom`, as 64 hex digits.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Equal in time independent of where the first difference is (the
/// length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut d = 0u8;
    for (x, y) in a.iter().zip(b) {
        d |= x ^ y;
    }
    std::hint::black_box(d) == 0
}

/// A counted connection (see [`Door::connection`]).
pub struct ConnectionGuard(Arc<DaemonInfo>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts each attachment; one that fails is logged and left out.
pub(super) fn start_all(attachments: &[Box<dyn Attachment>], door: &Door) {
    for a in attachments {
        match a.start(door.clone()) {
            Ok(()) => tracing::info!(attachment = a.name(), "attached"),
            Err(e) => tracing::error!(attachment = a.name(), "could not start: {e:#}"),
        }
    }
}
