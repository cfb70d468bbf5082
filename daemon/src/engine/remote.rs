//! `engine::remote` — a run's use of the remote cache: opening it for the
//! run ([`open`]), the read-through after a local miss ([`Shared::remote_fetch`]:
//! fetch, admit, hydrate the local store; the caller restores through the
//! ordinary confined restore), and the uploads of executed results in the
//! background ([`Shared::upload`]), drained before the run answers
//! ([`Shared::drain_uploads`]).
//!
//! Never: consulted on a local hit (only [`super::task::try_hit`] with a
//! local miss comes here); never fails a run or gives a wrong hit — every
//! remote failure is a miss and one warning, and a remote that cannot be
//! reached is not asked again in the same run.

use super::prepare::Shared;
use crate::cache::Entry;
use crate::cache::remote::{self, ArtifactId, RemoteError, RunRemote};
use crate::model::Model;
use std::sync::Arc;
use vx_proto::{RunEvent, RunParams};

/// A run's remote, its cache policy, and a warning for a configured remote
/// that cannot be used.
type Opened = (Option<Arc<RunRemote>>, remote::CachePolicy, Option<String>);

/// The run's remote and cache policy; a warning when a configured remote
/// cannot be used. `Err`: a bad `--cache` value.
pub(super) fn open(model: &Model, params: &RunParams) -> Result<Opened, String> {
    let (settings, policy) = remote::resolve(
        model.ws.defaults.remote_cache.as_ref(),
        &params.env,
        params.cache.as_deref(),
    )?;
    let Some(s) = settings else {
        return Ok((None, policy, None));
    };
    if params.no_cache {
        return Ok((None, policy, None));
    }
    match RunRemote::open(&s, policy) {
        Ok(r) => Ok((r.map(Arc::new), policy, None)),
        Err(w) => Ok((None, policy, Some(w))),
    }
}

impl Shared {
    fn artifact_id<'a>(&'a self, g: usize, key: &'a str) -> ArtifactId<'a> {
        let node = &self.model.graph.nodes[g];
        ArtifactId {
            key,
            project_dir: &self.model.ws.projects[node.project].dir,
            task: &node.name,
        }
    }

    fn remote_failed(&self, r: &RunRemote, g: usize, e: RemoteError, what: &str) {
        let id = &self.model.graph.nodes[g].id;
        match e {
            RemoteError::Unavailable(why) => {
                if r.break_off() {
                    self.emit(RunEvent::Warning {
                        message: format!(
                            "remote cache {}: {why} ({what} {id}); not using it for the rest of this run",
                            r.remote.describe()
                        ),
                    });
                }
            }
            RemoteError::WriteDenied(why) => {
                if r.stop_writes() {
                    self.emit(RunEvent::Warning {
                        message: format!(
                            "remote cache {}: {why}; not uploading for the rest of this run",
                            r.remote.describe()
                        ),
                    });
                }
            }
            RemoteError::Refused(why) => self.emit(RunEvent::Warning {
                message: format!("{id}: not taken from the remote cache: {why}; running the task"),
            }),
        }
    }

    /// After a local miss: the remote's artifact for `key`, checked and
    /// taken into the local store. `None`: a miss (with a warning when the
    /// remote failed or the artifact was refused).
    pub(super) fn remote_fetch(&self, g: usize, key: &str) -> Option<Entry> {
        let r = self.remote.as_ref()?;
        if !r.policy.remote_read || !r.usable() {
            return None;
        }
        let a = match r.remote.get(&self.artifact_id(g, key)) {
            Ok(Some(a)) => a,
            Ok(None) => return None,
            Err(e) => {
                self.remote_failed(r, g, e, "fetching");
                return None;
            }
        };
        if let Err(why) = remote::admit(&a, &self.patterns[&g].outputs) {
            self.remote_failed(r, g, RemoteError::Refused(why), "fetching");
            return None;
        }
        let node = &self.model.graph.nodes[g];
        match remote::hydrate(&self.store, key, &node.id, &a) {
            Ok(e) => Some(e),
            Err(e) => {
                self.emit(RunEvent::Warning {
                    message: format!(
                        "{}: the remote cache's result could not be stored locally: {e}; running the task",
                        node.id
                    ),
                });
                None
            }
        }
    }

    /// Uploads the entry just saved for `key`, in the background.
    pub(super) fn upload(self: &Arc<Self>, g: usize, key: &str) {
        let Some(r) = self.remote.clone() else {
            return;
        };
        if !r.writable() {
            return;
        }
        let (sh, key) = (self.clone(), key.to_string());
        let h = tokio::task::spawn_blocking(move || {
            if !r.writable() {
                return;
            }
            let Ok(Some(entry)) = sh.store.get(&key) else {
                return;
            };
            let a = match remote::artifact_of(&sh.store, &entry.0) {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(%key, "not uploaded: {e}");
                    return;
                }
            };
            if let Err(e) = r.remote.put(&sh.artifact_id(g, &key), &a) {
                sh.remote_failed(&r, g, e, "uploading");
            }
        });
        if let Ok(mut u) = self.uploads.lock() {
            u.push(h);
        }
    }

    /// Waits for this run's uploads (before the run answers).
    pub(super) async fn drain_uploads(&self) {
        let pending: Vec<_> = match self.uploads.lock() {
            Ok(mut u) => u.drain(..).collect(),
            Err(_) => return,
        };
        for h in pending {
            let _ = h.await;
        }
    }
}
