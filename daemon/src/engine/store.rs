//! `engine::store` — opening the cache store for a foreground run, and the
//! `cache.clean` / `cache.prune` requests.
//!
//! Owns: the foreground engine's store (waiting, bounded and
//! interruptibly, for a cache another vx process holds; an uncached store
//! when the cache cannot be used) and cleaning or pruning a workspace's
//! cache (through the daemon's open store when there is one).
//! Never: keys, schedules or runs tasks.

use crate::cache::{self, CacheError, Store};
use crate::error::{EngineError, ErrorKind};
use crate::hash::{self, FileIndex};
use crate::model::{Model, cache_dir};
use crate::sink::Events;
use crate::state::{Hot, request_workspace};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use vx_proto::knobs;
use vx_proto::{RunEvent, RunParams};

/// The no-daemon path opens the store and loads the file index per run.
pub(super) fn open_cold(
    model: &Model,
    params: &RunParams,
    events: &Option<Events>,
    cancel: Option<&watch::Receiver<Option<i32>>>,
) -> Result<(Arc<Store>, Arc<FileIndex>), EngineError> {
    let cdir = cache_dir(&model.ws);
    let (store, files) = match open_store_waiting(&cdir, &model.ws.root, params, events, cancel)? {
        Opened::Store(opened) => *opened,
        Opened::Unusable(why) => {
            let store = uncached(&cdir, &why, params.no_cache, events)?;
            return Ok((store, Arc::new(FileIndex::default())));
        }
    };
    let index = FileIndex::from_records(files);
    Ok((Arc::new(store), Arc::new(index)))
}

/// What [`open_store_waiting`] found: the store, or why it cannot be used
/// (a run then goes on uncached).
enum Opened {
    Store(Box<(Store, Vec<(String, hash::Record)>)>),
    Unusable(String),
}

/// Default bound on waiting for a cache held by another foreground run.
pub(crate) const CACHE_LOCK_WAIT: Duration = Duration::from_secs(60);
/// Default bound when this workspace's daemon is alive: it holds the cache
/// for its whole life, so only one that is stopping would let go.
const CACHE_LOCK_WAIT_DAEMON: Duration = Duration::from_secs(3);

/// Whether a daemon holds this workspace's liveness lock.
fn workspace_daemon_alive(root: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(paths) = vx_proto::paths::daemon_paths(root) else {
        return false;
    };
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .open(&paths.live_lock)
    else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released at once (and on close).
    unsafe {
        if libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 {
            libc::flock(f.as_raw_fd(), libc::LOCK_UN);
            return false;
        }
    }
    true
}

/// Opens the store for a foreground run. When another vx process holds it,
/// says what it waits for, and gives up when the run is cancelled or after
/// a bound (`VX_CACHE_LOCK_TIMEOUT_MS` in the client's environment; else
/// [`CACHE_LOCK_WAIT_DAEMON`] beside a live daemon, [`CACHE_LOCK_WAIT`]
/// otherwise). A `--no-cache` run never waits: it runs on an uncached
/// store ([`uncached`]).
fn open_store_waiting(
    cdir: &Path,
    root: &Path,
    params: &RunParams,
    events: &Option<Events>,
    cancel: Option<&watch::Receiver<Option<i32>>>,
) -> Result<Opened, EngineError> {
    let start = Instant::now();
    let mut limit: Option<(Duration, String)> = None;
    loop {
        match Store::open_loaded(cdir, Duration::ZERO, &mut || {}) {
            Ok(opened) => return Ok(Opened::Store(Box::new(opened))),
            Err(CacheError::Locked(..)) => {}
            Err(e) => return Ok(Opened::Unusable(e.to_string())),
        }
        if params.no_cache {
            // Neither read nor written: no reason to wait for the holder.
            return Ok(Opened::Unusable("in use by another vx process".into()));
        }
        let (bound, holder) = limit.get_or_insert_with(|| {
            let daemon = workspace_daemon_alive(root);
            let bound = knobs::CACHE_LOCK_TIMEOUT_MS
                .millis(&params.env)
                .unwrap_or(if daemon {
                    CACHE_LOCK_WAIT_DAEMON
                } else {
                    CACHE_LOCK_WAIT
                });
            let holder = if daemon {
                "this workspace's daemon holds it: stop it with `vx daemon stop`, or run through it"
                    .to_string()
            } else {
                let k = knobs::CACHE_LOCK_TIMEOUT_MS.name;
                format!("another vx process holds it; set {k} to wait longer")
            };
            if let Some(tx) = events {
                let _ = tx.send(RunEvent::Warning {
                    message: format!(
                        "waiting up to {} s for the cache at {} ({holder})",
                        bound.as_secs_f64().ceil(),
                        cdir.display()
                    ),
                });
            }
            (bound, holder)
        });
        if let Some(c) = cancel
            && c.borrow().is_some()
        {
            return Err(EngineError::new(
                ErrorKind::Cancelled,
                format!(
                    "cancelled while waiting for the cache at {}",
                    cdir.display()
                ),
            ));
        }
        if start.elapsed() >= *bound {
            return Err(EngineError::new(
                ErrorKind::Cache,
                format!(
                    "the cache at {} is in use (gave up after {:.1} s): {holder}",
                    cdir.display(),
                    start.elapsed().as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The store of a run whose cache cannot be opened (a directory that is not
/// writable, say): one that keeps nothing, so the run goes on uncached, with
/// a warning (none under `--no-cache`, which asked for exactly that).
pub(super) fn uncached(
    dir: &Path,
    why: &str,
    no_cache: bool,
    events: &Option<Events>,
) -> Result<Arc<Store>, EngineError> {
    if !no_cache && let Some(tx) = events {
        let _ = tx.send(RunEvent::Warning {
            message: format!(
                "the cache at {} cannot be used ({why}): running without it (nothing is restored or saved)",
                dir.display()
            ),
        });
    }
    Ok(Arc::new(Store::ephemeral(dir)?))
}

/// `cache.clean` for the workspace containing `cwd`.
pub fn cache_clean(cwd: &Path, hot: Option<&Hot>) -> Result<vx_proto::CacheCleaned, EngineError> {
    let ws = request_workspace(cwd, hot)?;
    let dir = cache_dir(&ws);
    if let Some(hot) = hot {
        hot.close_store();
    }
    let (entries, freed_bytes) = cache::clean(&dir)?;
    Ok(vx_proto::CacheCleaned {
        dir: dir.to_string_lossy().into_owned(),
        entries,
        freed_bytes,
    })
}

/// `cache.prune` for the workspace containing `cwd` (through the daemon's
/// open store when there is one).
pub fn cache_prune(
    p: &vx_proto::CachePruneParams,
    hot: Option<&Hot>,
) -> Result<vx_proto::CachePruned, EngineError> {
    let ws = request_workspace(Path::new(&p.cwd), hot)?;
    let dir = cache_dir(&ws);
    let dir_s = dir.to_string_lossy().into_owned();
    let max_age = p.max_age_ms.map(Duration::from_millis);
    let prune = |store: &Store| -> Result<vx_proto::CachePruned, EngineError> {
        let r = if p.dry_run {
            store.prune_dry_run(p.max_size, max_age)?
        } else {
            store.prune(p.max_size, max_age)?
        };
        Ok(r.into_proto(dir_s.clone(), p.dry_run))
    };
    if let Some(hot) = hot {
        return prune(hot.store()?.as_ref());
    }
    if !dir.join("index.redb").exists() {
        return Ok(cache::Pruned::default().into_proto(dir_s, p.dry_run));
    }
    let store = Store::open(&dir, Duration::from_secs(30), &mut || {})?;
    let r = prune(&store);
    store.close()?;
    r
}
