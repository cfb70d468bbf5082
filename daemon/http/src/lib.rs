//! `vxd-http` — the daemon on HTTP, on loopback only.
//!
//! Owns: the axum server a daemon starts through
//! [`vxd::server::attach::Attachment`] (on `127.0.0.1`, a port the OS
//! picks), its discovery file (`{"url","token","pid"}`, `0600`, beside the
//! daemon's socket, written atomically and removed on stop), the guard every
//! request passes ([`auth`]: loopback `Host`, the bearer token, a foreign
//! `Origin` refused), and the routes: `GET /health`, `GET /version`,
//! `POST /rpc` ([`rpc`]), `GET /ws` ([`ws`]), `GET /events` (SSE) and
//! `GET /stream` (NDJSON) from one replay [`feed`], `GET /metrics`
//! ([`metrics`]) and the insights dashboard at `/` ([`ui`]). Extra routers
//! (MCP over HTTP) are mounted behind the same guard with [`Http::mount`].
//!
//! Every method call goes through the engine's one router
//! ([`vxd::server::the_router`]) with the token holder's principal; this
//! crate knows no method's semantics beyond the few it calls for metrics.
//!
//! Never: listens beyond loopback, serves a route without the token (but
//! `/health`), keeps unbounded memory per client (bodies are capped; event
//! streams read a shared bounded ring; a WebSocket has the socket's bounded
//! outbox), or lets a slow client slow a run.

pub mod auth;
pub mod feed;
pub mod metrics;
pub mod rpc;
pub mod serve;
pub mod stream;
pub mod ui;
pub mod ws;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vx_proto::catalogue::Scope;
use vxd::server::attach::{Attachment, Door};
use vxd::server::router::Principal;

/// Largest request body accepted (a JSON-RPC request or batch).
pub const MAX_BODY: usize = 1 << 20;

/// Builds a router to mount behind the guard (see [`Http::mount`]).
pub type Mount = Box<dyn Fn(&Door) -> Router + Send + Sync>;

/// The HTTP attachment (see the module doc).
#[derive(Default)]
pub struct Http {
    mounts: Vec<(String, Mount)>,
}

impl Http {
    pub fn new() -> Http {
        Http::default()
    }

    /// Serves `make(door)` under `path` (such as `/mcp`), behind the same
    /// guard as every other route: loopback `Host`, the token, no foreign
    /// `Origin`.
    pub fn mount(
        mut self,
        path: &str,
        make: impl Fn(&Door) -> Router + Send + Sync + 'static,
    ) -> Http {
        self.mounts.push((path.to_string(), Box::new(make)));
        self
    }
}

/// What every handler shares.
pub struct Shared {
    pub door: Door,
    pub guard: auth::Guard,
    pub feed: Arc<feed::Feed>,
    pub url: String,
    /// WebSockets open now.
    pub websockets: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// The principal of a token holder: every scope (the token is as good
    /// as the user's own socket; see docs/http.md).
    pub fn principal(&self) -> Principal {
        Principal::new("http token", &Scope::ALL)
    }
}

/// The discovery file's contents.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Discovery {
    pub url: String,
    pub token: String,
    pub pid: u32,
}

/// Writes `d` to `path` with mode `0600`, atomically (a temp file in the
/// same directory, then a rename).
pub fn write_discovery(path: &Path, d: &Discovery) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let body = serde_json::to_vec(d)?;
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Removes the discovery file if it is still ours (same token).
fn remove_discovery(path: &Path, token: &str) {
    let ours = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Discovery>(&b).ok())
        .is_some_and(|d| d.token == token);
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// The routes, behind the guard (also used by unit tests).
pub fn app(shared: Arc<Shared>, mounts: &[(String, Mount)]) -> Router {
    let mut r = Router::new()
        .route("/", get(ui::index))
        .route("/health", get(|| async { "ok\n" }))
        .route("/version", get(version))
        .route("/rpc", post(rpc::post))
        .route("/ws", get(ws::upgrade))
        .route("/events", get(stream::sse))
        .route("/stream", get(stream::ndjson))
        .route("/metrics", get(metrics::get))
        .with_state(shared.clone());
    for (path, make) in mounts {
        r = r.nest(path, make(&shared.door));
    }
    r.layer(axum::middleware::from_fn_with_state(
        shared,
        auth::middleware,
    ))
    .layer(DefaultBodyLimit::max(MAX_BODY))
}

#[derive(serde::Serialize)]
struct MethodBrief {
    name: String,
    kind: &'static str,
    scope: &'static str,
    events: Vec<String>,
}

async fn version(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let c = vx_proto::catalogue::catalogue();
    let methods: Vec<MethodBrief> = c
        .methods
        .into_iter()
        .map(|m| MethodBrief {
            name: m.name,
            kind: m.kind.name(),
            scope: m.scope.name(),
            events: m.events,
        })
        .collect();
    axum::Json(serde_json::json!({
        "protocol": vx_proto::PROTOCOL_VERSION,
        "version": env!("CARGO_PKG_VERSION"),
        "root": s.door.root().display().to_string(),
        "methods": methods,
    }))
}

impl Attachment for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn start(&self, door: Door) -> anyhow::Result<()> {
        if vx_proto::knobs::HTTP
            .get_process()
            .is_some_and(|v| v.trim() == "0")
        {
            tracing::info!("HTTP is off (VX_HTTP=0)");
            return Ok(());
        }
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .context("binding 127.0.0.1 (an OS-picked port)")?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let token = door.token().context("making the daemon's token")?;
        let url = format!("http://127.0.0.1:{port}");
        for (path, _) in &self.mounts {
            let ok = path.len() > 1
                && path.starts_with('/')
                && !path.ends_with('/')
                && !path.contains(['{', '}', '*']);
            if !ok {
                anyhow::bail!("cannot mount a router at {path:?}: use a path such as \"/mcp\"");
            }
        }
        let discovery: PathBuf = door.beside_socket("json");
        write_discovery(
            &discovery,
            &Discovery {
                url: url.clone(),
                token: token.clone(),
                pid: std::process::id(),
            },
        )?;
        let feed = feed::Feed::start(&door);
        let shared = Arc::new(Shared {
            door: door.clone(),
            guard: auth::Guard::new(token.clone(), port),
            feed,
            url: url.clone(),
            websockets: Default::default(),
        });
        let app = app(shared, &self.mounts);
        door.advertise("http", &url);
        let stopping = door.stopping();
        {
            let (discovery, token) = (discovery.clone(), token.clone());
            tokio::spawn(async move {
                serve::serve(
                    listener,
                    app,
                    serve::HEADER_TIMEOUT,
                    stopping.clone().cancelled_owned(),
                )
                .await;
                remove_discovery(&discovery, &token);
            });
        }
        // The discovery file goes when the daemon stops, even if a
        // connection holds the server open for a moment.
        let stopping = door.stopping();
        tokio::spawn(async move {
            stopping.cancelled().await;
            remove_discovery(&discovery, &token);
        });
        tracing::info!("HTTP on {url}");
        Ok(())
    }
}

/// Sends SIGTERM to this process: how `daemon.shutdown` over HTTP stops
/// the daemon (its signal handler stops it like `vx daemon stop`).
pub(crate) fn stop_daemon() {
    tracing::info!("daemon.shutdown over HTTP: stopping");
    // SAFETY: kill on our own pid with a signal the daemon handles.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
}

/// Calls one method through the router as the token holder, without
/// streaming (for metrics and internal queries).
pub async fn call(
    shared: &Shared,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, vx_proto::RpcError> {
    let ctx = shared.door.ctx().clone();
    let cancel = ctx.cancel.clone();
    let router = shared.door.router();
    let conn = router.connect(
        ctx,
        shared.principal(),
        Arc::new(rpc::Discard),
        Some(&cancel),
        false,
    );
    match router.start(&conn, vx_proto::Id::Num(1), method, params) {
        vxd::server::router::Started::Done(r) => r,
        vxd::server::router::Started::Running(f) => f.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn discovery_file_is_private_and_replaced_atomically() {
        let dir = std::env::temp_dir().join(format!("vxd-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("d.json");
        for n in 0..2 {
            write_discovery(
                &p,
                &Discovery {
                    url: format!("http://127.0.0.1:{n}"),
                    token: "t".into(),
                    pid: 1,
                },
            )
            .unwrap();
        }
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let d: Discovery = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(d.url, "http://127.0.0.1:1");
        remove_discovery(&p, "other");
        assert!(p.exists(), "another daemon's file is left alone");
        remove_discovery(&p, "t");
        assert!(!p.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
