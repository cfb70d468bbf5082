//! `handlers` — one handler per catalogue method, registered on the router.
//!
//! Owns: what each method does with the engine (`engine`, `inspect`,
//! `watch`, `daemon::status`) and the request checks that only make sense
//! for vx (a relative `cwd`, a concurrency past the limit, a client cache
//! the daemon does not serve). Every method of `vx_proto::catalogue` has
//! exactly one handler here (a unit test checks both lists agree).
//!
//! Never: JSON-RPC framing, transports, error codes of engine errors
//! (that is `router::engine_error`), or blocking the async threads (blocking
//! work is registered with `Router::blocking` or goes through
//! `spawn_blocking`).

use super::router::{BoxFuture, Call, Error, Router};
use super::{Ctx, Mode, daemon};
use crate::engine::{self, Engine};
use crate::mem::ActiveRun;
use crate::state::Hot;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vx_proto::catalogue::{self as m, Empty, Method, Scope};
use vx_proto::live::RunKind;
use vx_proto::{HelloResult, PROTOCOL_VERSION, RpcError, codes};

impl super::router::App for Ctx {
    fn touch(&self) {
        if let Some(hot) = &self.hot {
            hot.touch();
        }
    }

    fn check(&self, _method: &str, params: &Value) -> Result<(), RpcError> {
        check_cwd(params)
    }
}

/// The router with every method's handler.
pub fn router() -> Router<Ctx> {
    let mut r = Router::<Ctx>::new();
    r.inline::<m::DaemonHello>(|call, p| {
        if p.protocol != PROTOCOL_VERSION {
            return Err(RpcError::new(
                codes::PROTOCOL_MISMATCH,
                format!(
                    "protocol {} is not supported (this vxd speaks {PROTOCOL_VERSION})",
                    p.protocol
                ),
            )
            .with_data(serde_json::json!({
                "protocol": PROTOCOL_VERSION,
                "version": env!("CARGO_PKG_VERSION"),
            }))
            .into());
        }
        call.conn().set_hello();
        let ctx = call.state();
        Ok(HelloResult {
            protocol: PROTOCOL_VERSION,
            version: ctx.version(),
            pid: std::process::id(),
            mode: match ctx.mode {
                Mode::Stdio => "stdio".into(),
                Mode::Daemon => "daemon".into(),
            },
            root: ctx
                .hot
                .as_ref()
                .map(|h| h.root.to_string_lossy().into_owned()),
        })
    });
    r.inline::<m::DaemonShutdown>(|call, _: Empty| {
        call.conn().request_shutdown();
        Ok(Empty {})
    });
    r.allow_before_hello(m::DaemonHello::NAME)
        .allow_before_hello(m::DaemonShutdown::NAME);
    r.inline::<m::RunCancel>(|call, p| {
        call.conn().cancel_streams(p.signal);
        Ok(Empty {})
    });
    r.inline::<m::Cancel>(|call, p| {
        if !call.conn().cancel_request(&p.id, libc::SIGTERM) {
            tracing::debug!(id = ?p.id, "$/cancel: no such request in flight");
        }
        Ok(Empty {})
    });
    r.blocking::<m::DaemonMethods>(|_, _: Empty| Ok(vx_proto::catalogue::catalogue()));
    r.inline::<m::DaemonStatus>(|call, _: Empty| {
        let ctx = call.state();
        match (&ctx.hot, &ctx.daemon) {
            (Some(hot), Some(d)) => Ok(daemon::status(hot, d)),
            _ => Err(RpcError::new(
                codes::METHOD_NOT_FOUND,
                "daemon.status is only served by a daemon (this is the no-daemon engine)",
            )
            .into()),
        }
    });
    r.handle::<m::RunStart, _, _>(run_start);
    r.handle::<m::WatchStart, _, _>(watch_start);
    r.handle::<m::RunPlan, _, _>(|call: Call<Ctx>, p: vx_proto::RunParams| async move {
        check_concurrency(p.concurrency)?;
        let hot = call.state().hot.clone();
        check_cache_env(hot.as_ref(), &p.cwd, &p.env).await?;
        Ok(Engine::new(hot).plan(p).await?)
    });
    r.handle::<m::CacheStats, _, _>(|call: Call<Ctx>, p: vx_proto::CacheParams| async move {
        let hot = call.state().hot.clone();
        check_cache_env(hot.as_ref(), &p.cwd, &p.env).await?;
        let cwd = PathBuf::from(p.cwd);
        blocking(move || Engine::new(hot).cache_stats(&cwd)).await
    });
    r.handle::<m::CacheClean, _, _>(|call: Call<Ctx>, p: vx_proto::CacheParams| async move {
        let hot = call.state().hot.clone();
        check_cache_env(hot.as_ref(), &p.cwd, &p.env).await?;
        let cwd = PathBuf::from(p.cwd);
        blocking(move || Engine::new(hot).cache_clean(&cwd)).await
    });
    r.handle::<m::CachePrune, _, _>(
        |call: Call<Ctx>, p: vx_proto::CachePruneParams| async move {
            let hot = call.state().hot.clone();
            check_cache_env(hot.as_ref(), &p.cwd, &p.env).await?;
            blocking(move || Engine::new(hot).cache_prune(&p)).await
        },
    );
    r.blocking::<m::HistoryRuns>(|call, p| Ok(engine_of(&call).history_runs(p)?));
    r.blocking::<m::HistoryRun>(|call, p| Ok(engine_of(&call).history_run(p)?));
    r.blocking::<m::HistoryTask>(|call, p| Ok(engine_of(&call).history_task(p)?));
    r.blocking::<m::HistoryWhy>(|call, p| Ok(engine_of(&call).history_why(p)?));
    r.blocking::<m::WorkspaceInfo>(|call, p| {
        let ctx = call.state();
        let facts = ctx.daemon.as_deref().map(|d| crate::inspect::DaemonFacts {
            socket: &d.socket,
            version: &d.version,
        });
        Ok(Engine::new(ctx.hot.clone()).workspace_info(p, facts)?)
    });
    super::live::register(&mut r);
    r.blocking::<vx_proto::init::method::WorkspaceInit>(|_, p| Ok(crate::init::init(p)?));
    r.inline::<vx_proto::upgrade::method::DaemonUpgrade>(|call, p| {
        if super::upgrade::handler(&p.protocol).is_none() {
            let served = super::upgrade::protocols();
            return Err(RpcError::new(
                codes::METHOD_NOT_FOUND,
                format!(
                    "this engine cannot switch a connection to `{}` (it serves: {})",
                    p.protocol,
                    if served.is_empty() {
                        "none".to_string()
                    } else {
                        served.join(", ")
                    }
                ),
            )
            .into());
        }
        if call.conn().in_flight() > 0 {
            return Err(RpcError::new(
                codes::INVALID_REQUEST,
                "daemon.upgrade: requests of this connection are still in flight",
            )
            .into());
        }
        let protocol = p.protocol.clone();
        let params = serde_json::to_value(&p).map_err(Error::internal)?;
        call.conn().request_upgrade(protocol.clone(), params);
        Ok(vx_proto::upgrade::UpgradeResult { protocol })
    });
    // Lets the end-to-end tests check that a panic reaches the log and
    // fails only its request (only when the engine was started with
    // VX_TEST_HOOKS=1).
    if vx_proto::knobs::TEST_HOOKS.get_process().as_deref() == Some("1") {
        r.unlisted("test.panic", Scope::Read, |_, _| -> BoxFuture<_> {
            Box::pin(async { panic!("test.panic requested") })
        });
    }
    r
}

/// The engine façade over this connection's daemon state.
fn engine_of(call: &Call<Ctx>) -> Engine {
    Engine::new(call.state().hot.clone())
}

/// Runs blocking engine work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, engine::EngineError> + Send + 'static,
) -> Result<T, Error> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)??)
}

async fn run_start(call: Call<Ctx>, p: vx_proto::RunParams) -> Result<vx_proto::RunSummary, Error> {
    check_concurrency(p.concurrency)?;
    let ctx = call.state().clone();
    check_cache_env(ctx.hot.as_ref(), &p.cwd, &p.env).await?;
    let _active = ActiveRun::start();
    call.conn().note_grace(crate::exec::kill_grace_in(&p.env));
    // Each event goes to the bus, then straight into the connection's
    // bounded sink, tagged with this request's id.
    let (tee, events) = super::live::tee(RunKind::Run, &p, call.events());
    let r = Engine::new(ctx.hot.clone())
        .run(p, events, call.cancel().watch())
        .await;
    tee.finish(r.as_ref().map(Some).map_err(|e| e.message.as_str()));
    Ok(r?)
}

async fn watch_start(
    call: Call<Ctx>,
    p: vx_proto::WatchParams,
) -> Result<vx_proto::WatchSummary, Error> {
    check_concurrency(p.run.concurrency)?;
    let ctx = call.state().clone();
    check_cache_env(ctx.hot.as_ref(), &p.run.cwd, &p.run.env).await?;
    let _active = ActiveRun::start();
    call.conn()
        .note_grace(crate::exec::kill_grace_in(&p.run.env));
    let (tee, events) = super::live::tee(RunKind::Watch, &p.run, call.events());
    let r = Engine::new(ctx.hot.clone())
        .watch(p, events, call.cancel().watch())
        .await;
    tee.finish(r.as_ref().map(|_| None).map_err(|e| e.message.as_str()));
    Ok(r?)
}

/// `cwd` (or watch.start's `run.cwd`) must be absolute: a relative one would
/// be resolved against the engine's own directory (`/` for a daemon).
fn check_cwd(params: &Value) -> Result<(), RpcError> {
    let (field, cwd) = match (
        params.get("cwd"),
        params.get("run").and_then(|r| r.get("cwd")),
    ) {
        (Some(c), _) => ("cwd", c),
        (None, Some(c)) => ("run.cwd", c),
        (None, None) => return Ok(()),
    };
    match cwd.as_str() {
        Some(c) if !Path::new(c).is_absolute() => Err(RpcError::new(
            codes::INVALID_PARAMS,
            format!("invalid params: `{field}` must be an absolute path, got {c:?}"),
        )
        .with_data(serde_json::json!({ "field": field }))),
        _ => Ok(()),
    }
}

/// A concurrency the engine refuses, before it allocates anything for it.
fn check_concurrency(n: Option<usize>) -> Result<(), Error> {
    match n {
        Some(n) if n > vx_proto::MAX_CONCURRENCY => Err(engine::concurrency_error(n).into()),
        _ => Ok(()),
    }
}

/// Under a daemon: the client's `VX_CACHE_DIR` (from the request's env,
/// never the daemon's own) names another cache than the daemon's store, so
/// the request must be served by the no-daemon engine. A `cache_dir` in the
/// config wins over the variable, as everywhere.
async fn check_cache_env(
    hot: Option<&Arc<Hot>>,
    cwd: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let (Some(hot), Some(dir)) = (hot, vx_proto::knobs::CACHE_DIR.get(env)) else {
        return Ok(());
    };
    let (hot, cwd, dir) = (hot.clone(), PathBuf::from(cwd), dir.to_owned());
    let foreign = tokio::task::spawn_blocking(move || {
        // A config that does not load is reported by the request itself.
        let ws = engine::load_workspace(&cwd).ok()?;
        if ws.defaults.cache_dir.is_some() || ws.root != hot.root {
            return None;
        }
        let wanted = ws.root.join(&dir);
        let mine = hot.cache_dir();
        (wanted != mine).then_some((wanted, mine))
    })
    .await
    .map_err(Error::internal)?;
    match foreign {
        None => Ok(()),
        Some((wanted, mine)) => Err(RpcError::new(
            codes::NEEDS_NO_DAEMON,
            format!(
                "{} names the cache {} but this daemon serves {}: use the no-daemon engine",
                vx_proto::knobs::CACHE_DIR.name,
                wanted.display(),
                mine.display()
            ),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every catalogue method has a handler, and every handler a catalogue
    /// entry.
    #[test]
    fn the_router_serves_exactly_the_catalogue() {
        let mut want = vx_proto::catalogue::method_names();
        want.sort();
        assert_eq!(router().names(), want);
    }
}
