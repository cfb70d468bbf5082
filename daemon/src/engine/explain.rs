//! `engine::explain` — one selection's keys, part by part, without running
//! anything (`task.explain` and `task.log`, served by `query`).
//!
//! Owns: [`explain_keys`], which prepares a selection exactly as a run does,
//! folds every key in dependency order through the run's own key path, and
//! asks the cache what it holds for the requested tasks.
//! Never: a second hasher, spawning a process, restoring or saving outputs,
//! writing anything a plan would not (the file index).

use super::prepare::prepare;
use super::task::{Hit, try_hit};
use crate::cache::Store;
use crate::error::EngineError;
use crate::state::Hot;
use std::sync::Arc;
use vx_proto::history::Fingerprint;
use vx_proto::{CacheSource, OutputLogs, Prediction, RunParams};

/// One requested task's key, part by part, and what the cache says about
/// it (`task.explain` and `task.log`, in `query`).
pub(crate) struct KeyReport {
    /// The parts behind the key, secrets hashed (as the history keeps them).
    pub fingerprint: Fingerprint,
    /// The forwarded args folded into the key.
    pub args: Vec<String>,
    pub prediction: Prediction,
    /// For a predicted hit: restored (`Local`) or already on disk (`UpToDate`).
    pub source: Option<CacheSource>,
}

/// Computes the keys of `params`' selection exactly as a run does
/// (`prepare`, then every key in dependency order through the run's
/// `key_of`) and reports the requested tasks; `with` reads the store before
/// it is closed. Runs nothing and writes nothing but what a plan writes
/// (the file index).
pub(crate) fn explain_keys<T>(
    mut params: RunParams,
    hot: Option<Arc<Hot>>,
    with: impl FnOnce(&Store, &[KeyReport]) -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    // A hit's log is not replayed: the check never reads it.
    params.output_logs = OutputLogs::None;
    let (sh, sel) = prepare(params, None, hot)?;
    let reports = (|| {
        let mut out = Vec::new();
        for &n in &sel.nodes {
            let key = sh.key_of(n)?;
            if !sel.requested.contains(&n) {
                continue;
            }
            let node = &sh.model.graph.nodes[n];
            let (prediction, source) = if node.def.command.is_none() {
                (Prediction::Group, None)
            } else if !sh.cache_enabled(n) {
                (Prediction::Uncached, None)
            } else if !sh.cache_read(n) {
                (Prediction::Miss, None)
            } else {
                match try_hit(&sh, n, &key, false)? {
                    Hit::Served(..) => (Prediction::Hit, Some(CacheSource::UpToDate)),
                    Hit::NeedsRestore => (Prediction::Hit, Some(CacheSource::Local)),
                    Hit::Miss => (Prediction::Miss, None),
                }
            };
            out.push(KeyReport {
                fingerprint: sh.fingerprint(n, &key),
                args: sh.params.args.clone(),
                prediction,
                source,
            });
        }
        Ok(out)
    })();
    let r = reports.and_then(|reports| with(&sh.store, &reports));
    sh.finish_store()?;
    r
}
