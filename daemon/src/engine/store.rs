//! `engine::store` — opening the cache store for a foreground run, and the
//! `cache.clean` / `cache.prune` requests.
//!
//! Owns: the foreground engine's store (opened shared with every other vx
//! process, a live daemon included; an uncached store when the cache cannot
//! be used) and cleaning or pruning a workspace's
//! cache (through the daemon's open store when there is one).
//! Never: keys, schedules or runs tasks.

use crate::cache::{self, Store};
use crate::error::EngineError;
use crate::hash::FileIndex;
use crate::model::{Model, cache_dir};
use crate::sink::Events;
use crate::state::{Hot, request_workspace};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vx_proto::knobs;
use vx_proto::{RunEvent, RunParams};

/// The no-daemon path opens the store and loads the file index per run.
/// The store is shared with every other vx process (a live daemon
/// included), so this never waits for one; a store that cannot be opened
/// (held by a vx that does not share it, unwritable, damaged and open
/// elsewhere) makes an uncached run, with a warning.
pub(super) fn open_cold(
    model: &Model,
    params: &RunParams,
    events: &Option<Events>,
) -> Result<(Arc<Store>, Arc<FileIndex>), EngineError> {
    let cdir = cache_dir(&model.ws);
    let wait = knobs::CACHE_LOCK_TIMEOUT_MS
        .millis(&params.env)
        .unwrap_or(cache::OPEN_WAIT);
    let (store, files) = match Store::open_loaded(&cdir, wait, &mut || {}) {
        Ok(opened) => opened,
        Err(e) => {
            let store = uncached(&cdir, &e.to_string(), params.no_cache, events)?;
            return Ok((store, Arc::new(FileIndex::default())));
        }
    };
    let index = FileIndex::from_records(files);
    Ok((Arc::new(store), Arc::new(index)))
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
        // Its history handle goes too (`clean` deletes the file; the next
        // use opens a new one).
        crate::history::release(&dir);
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
