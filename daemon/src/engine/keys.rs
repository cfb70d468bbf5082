//! `engine::keys` — the cache key of each selected task.
//!
//! Owns: a task's input files with their content hashes (memoised under
//! the daemon while their project's file list is the same object), its
//! keyed environment, the key fold (memoised under the daemon while every
//! varying part is unchanged), the fingerprint the history keeps of a key,
//! the `--dry` input warnings, and re-walking the projects a task wrote to
//! before a dependent is keyed (after a restore, only before a task whose
//! inputs reach the restored output bases).
//! Never: reads or writes the cache, or runs anything; a key depends only
//! on files, env values, config, upstream keys, args and the key material
//! hook plugins gave the run.

use super::prepare::Shared;
use crate::cache;
use crate::error::{EngineError, ErrorKind};
use crate::globs::Patterns;
use crate::hash::{self, FileMeta, KeyParts};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use vx_proto::history::Fingerprint;

/// Whether a task whose input patterns lie below `inputs` (project-relative
/// bases, `None` when a pattern can match anywhere) can select a file at or
/// below one of `restored` (project-relative output bases a restore wiped
/// and wrote below): they overlap when one is the other or lies below it.
pub(super) fn may_see(inputs: Option<&[String]>, restored: &[String]) -> bool {
    let Some(inputs) = inputs else {
        return true;
    };
    let below = |a: &str, b: &str| {
        a.strip_prefix(b)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    inputs
        .iter()
        .any(|i| restored.iter().any(|r| below(i, r) || below(r, i)))
}

/// A task's input whose name vx cannot key: refused, never dropped or merged.
fn non_utf8(task: &str, escaped: &str) -> EngineError {
    EngineError::new(
        ErrorKind::Config,
        format!(
            "{task}: {}",
            hash::NonUtf8 {
                escaped: escaped.to_string()
            }
        ),
    )
}

impl Shared {
    /// Re-walks node `n`'s project before `n` is keyed when it was written
    /// to since the snapshot, or restored into below a directory `n`'s
    /// inputs can reach (see [`Shared::mark_restored`]).
    pub(super) fn refresh_if_dirty(&self, n: usize) {
        let p = self.model.graph.nodes[n].project;
        let was_dirty = self.dirty.lock().map(|mut d| d.remove(&p)).unwrap_or(false);
        let seen = |bases: &Vec<String>| {
            let Some(pats) = self.patterns.get(&n) else {
                return true;
            };
            !pats.root_inputs.is_empty()
                || !self.global_inputs.is_empty()
                || may_see(pats.inputs.bases(), bases)
        };
        let restored = self
            .restored
            .lock()
            .map(|mut r| match r.get(&p) {
                Some(bases) if was_dirty || seen(bases) => r.remove(&p).is_some(),
                _ => false,
            })
            .unwrap_or(true);
        if !was_dirty && !restored {
            return;
        }
        if let Ok(mut s) = self.snapshot.write() {
            s.refresh(&self.model, Some(p), &self.cache_skip);
        }
    }

    pub(super) fn mark_dirty(&self, p: usize) {
        self.mark_changed(p, true);
    }

    /// After a restore into project `p` that wrote `written` (paths
    /// relative to the project) for the output patterns `outputs`. A
    /// restore wipes and writes only at or below the output bases, so when
    /// every written file lies there too, `p` is re-walked only before a
    /// task is keyed whose inputs can reach a base (most dependents read
    /// `src/**`, not `dist/**`: no walk); otherwise (a pattern that can
    /// match anywhere, a file written elsewhere) before its next task is
    /// keyed. The owners of symlinks into `p` are re-walked either way.
    pub(super) fn mark_restored(&self, p: usize, outputs: &Patterns, written: &cache::Stamps) {
        let bases = outputs.bases().filter(|b| {
            written.keys().all(|f| {
                b.iter().any(|base| {
                    f.strip_prefix(base.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                })
            })
        });
        match bases {
            Some(b) => {
                self.mark_changed(p, false);
                if let Ok(mut r) = self.restored.lock() {
                    r.entry(p).or_default().extend(b.iter().cloned());
                }
            }
            None => self.mark_changed(p, true),
        }
    }

    /// Marks the owners of symlinks into project `p` for a re-walk before
    /// their next task is keyed, and `p` itself when `own`.
    fn mark_changed(&self, p: usize, own: bool) {
        // A symlink into project `p` is keyed by its target: its owner must
        // be re-walked too (the target may be new, or have a new stat).
        let dir = self.model.ws.projects[p].dir.as_str();
        let owners: Vec<usize> = self
            .snapshot
            .read()
            .map(|s| {
                s.link_targets()
                    .into_iter()
                    .filter(|(_, t)| {
                        dir == "." || Path::new(t).starts_with(dir) || Path::new(dir).starts_with(t)
                    })
                    .filter_map(|(o, _)| o)
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(mut d) = self.dirty.lock() {
            if own {
                d.insert(p);
            }
            d.extend(owners);
        }
    }

    /// Computes (and memoises) the key of graph node `n`. Its dependencies'
    /// keys must already be known.
    pub(super) fn key_of(&self, n: usize) -> Result<String, EngineError> {
        let node = &self.model.graph.nodes[n];
        self.refresh_if_dirty(n);
        let mut upstream = Vec::new();
        {
            let keys = self
                .keys
                .lock()
                .map_err(|_| EngineError::new(ErrorKind::Internal, "key map poisoned"))?;
            for d in self.model.graph.deps(n) {
                match keys.get(&d) {
                    Some(k) => upstream.push(k.clone()),
                    None => {
                        return Err(EngineError::new(
                            ErrorKind::Internal,
                            format!(
                                "key of {} needed before it was computed",
                                self.model.graph.nodes[d].id
                            ),
                        ));
                    }
                }
            }
        }
        upstream.sort();
        let args = if self.requested.contains(&n) {
            self.params.args.clone()
        } else {
            Vec::new()
        };
        // A task without a command (a group task, a turbo transit node) is
        // keyed by its project's inputs too, so its dependents see them.
        let inputs = self.inputs_of(n)?;
        let env = self.keyed_env(n);
        // Key material from plugins (asked once per run, in `prepare`).
        let plugins = self.plugins.material.get(&n).cloned().unwrap_or_default();
        // Under the daemon, a key whose every varying part is unchanged (the
        // same input list object, upstream keys, env values and args) is
        // reused; a key with plugin material is folded afresh.
        let memo = self
            .hot
            .as_ref()
            .filter(|_| plugins.is_empty())
            .and_then(|h| h.key_memo(&self.model, n, &inputs, &upstream, &env, &args));
        let key = match memo {
            Some(k) => k,
            None => {
                let parts = KeyParts {
                    task: node.id.clone(),
                    config: self.model.config_json(n).clone(),
                    command: node.def.command.clone().unwrap_or_default(),
                    args,
                    env,
                    upstream,
                    inputs,
                    plugins,
                };
                let key = parts.fold_from(&self.model.key_prefix(n));
                if let Some(h) = &self.hot
                    && parts.plugins.is_empty()
                {
                    h.set_key_memo(&self.model, n, parts, &key);
                }
                key
            }
        };
        if let Ok(mut k) = self.keys.lock() {
            k.insert(n, key.clone());
        }
        Ok(key)
    }

    /// Node `n`'s keyed env (the workspace's names, then the task's) with
    /// the client's values.
    pub(super) fn keyed_env(&self, n: usize) -> Vec<(String, Option<String>)> {
        let node = &self.model.graph.nodes[n];
        let framework =
            self.params.framework_inference != Some(false) && !node.def.framework_env.is_empty();
        if self.model.ws.global.env.is_empty() && !framework {
            hash::keyed_env(&node.def.env, &self.params.env)
        } else {
            let mut env_pats = self.model.ws.global.env.clone();
            env_pats.extend(node.def.env.iter().cloned());
            if framework {
                env_pats.extend(node.def.framework_env.iter().cloned());
            }
            hash::keyed_env(&env_pats, &self.params.env)
        }
    }

    /// The parts behind node `n`'s key, for the run history: file hashes,
    /// hashed env values, the config hash, upstream ids with their keys and
    /// the hashed args. Values that may be secret are never stored plain.
    pub(super) fn fingerprint(&self, n: usize, key: &str) -> Fingerprint {
        let node = &self.model.graph.nodes[n];
        let hash_str = |s: &str| blake3::hash(s.as_bytes()).to_hex().to_string();
        let files = self.inputs_of(n).map(|i| (*i).clone()).unwrap_or_default();
        let env = self
            .keyed_env(n)
            .into_iter()
            .map(|(k, v)| {
                let h = match v {
                    Some(v) => hash_str(&format!("{k}={v}")),
                    None => "unset".to_string(),
                };
                (k, h)
            })
            .collect();
        let mut upstream: Vec<(String, String)> = {
            let keys = self.keys.lock().ok();
            self.model
                .graph
                .deps(n)
                .map(|d| {
                    let k = keys
                        .as_ref()
                        .and_then(|k| k.get(&d).cloned())
                        .unwrap_or_default();
                    (self.model.graph.nodes[d].id.clone(), k)
                })
                .collect()
        };
        upstream.sort();
        let args: &[String] = if self.requested.contains(&n) {
            &self.params.args
        } else {
            &[]
        };
        Fingerprint {
            key: key.to_string(),
            task: node.id.clone(),
            files,
            env,
            config: hash_str(self.model.config_json(n)),
            command: node.def.command.clone().unwrap_or_default(),
            upstream,
            args: hash_str(&serde_json::to_string(args).unwrap_or_default()),
            plugins: self
                .plugins
                .material
                .get(&n)
                .map(|m| m.iter().map(|(p, v)| (p.clone(), hash_str(v))).collect())
                .unwrap_or_default(),
        }
    }

    /// A task's input files with their content hashes. Under the daemon the
    /// list is memoised for as long as the snapshot lists it was computed
    /// from are unchanged (they are replaced whenever a file in them changes).
    pub(super) fn inputs_of(&self, n: usize) -> Result<Arc<Vec<(String, String)>>, EngineError> {
        let node = &self.model.graph.nodes[n];
        let project = &self.model.ws.projects[node.project];
        let pats = self
            .patterns
            .get(&n)
            .ok_or_else(|| EngineError::new(ErrorKind::Internal, "patterns missing"))?;
        let snap = self
            .snapshot
            .read()
            .map_err(|_| EngineError::new(ErrorKind::Internal, "snapshot poisoned"))?;
        let global = !pats.root_inputs.is_empty() || !self.global_inputs.is_empty();
        let files_list = snap.by_project[node.project].clone();
        if let Some(hot) = &self.hot
            && !global
            && let Some(memo) = hot.inputs_memo(&self.model, n, &files_list)
        {
            return Ok(memo);
        }
        if self.hot.is_none() && !global {
            return self.inputs_from_run_memo(n, &files_list, pats);
        }
        let mut files: Vec<&FileMeta> = hash::select_inputs(&project.dir, files_list.iter(), pats);
        if global {
            let mut seen: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
            for f in snap
                .by_project
                .iter()
                .flat_map(|v| v.iter())
                .chain(snap.loose.iter())
            {
                if (pats.root_inputs.matches(&f.path) || self.global_inputs.matches(&f.path))
                    && seen.insert(f.path.as_str())
                {
                    files.push(f);
                }
            }
            files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        }
        // A name vx cannot key is refused, never dropped or merged.
        if let Some(f) = files.iter().find(|f| f.non_utf8) {
            return Err(non_utf8(&node.id, &f.path));
        }
        let inputs: Arc<Vec<(String, String)>> = Arc::new(
            files
                .into_iter()
                .map(|f| {
                    let h = self.index.hash(&self.model.ws.root, f);
                    (
                        f.path.clone(),
                        blake3::Hash::from_bytes(h).to_hex().to_string(),
                    )
                })
                .collect(),
        );
        if let Some(hot) = &self.hot
            && !global
        {
            hot.set_inputs_memo(&self.model, n, files_list, inputs.clone());
        }
        Ok(inputs)
    }

    /// [`Shared::inputs_of`] without the daemon, for a task without root
    /// or global inputs: the files its input patterns pick from its
    /// project's list, with their hashes, are worked out once per run for
    /// each (list, input patterns) and shared by the project's tasks with
    /// the same input patterns (`build`, `test` and `lint` of `src/**`);
    /// each task then leaves out what its own outputs select. Exactly
    /// [`hash::select_inputs`] and a hash per file: the list is the same
    /// object for as long as the snapshot keeps it (a re-walked project
    /// gets a new one, and a new entry).
    fn inputs_from_run_memo(
        &self,
        n: usize,
        files: &Arc<Vec<FileMeta>>,
        pats: &Arc<hash::TaskPatterns>,
    ) -> Result<Arc<Vec<(String, String)>>, EngineError> {
        let node = &self.model.graph.nodes[n];
        let dir = self.model.ws.projects[node.project].dir.as_str();
        let picked = {
            let mut memo = self
                .inputs_memo
                .lock()
                .map_err(|_| EngineError::new(ErrorKind::Internal, "inputs memo poisoned"))?;
            let entries = memo.entry(node.project).or_default();
            let found = entries.iter().find(|e| {
                Arc::ptr_eq(&e.files, files) && e.pats.inputs.sources() == pats.inputs.sources()
            });
            match found {
                Some(e) => e.clone(),
                None => {
                    let mut picked = Vec::new();
                    let mut hashed = Vec::new();
                    for (i, f) in files.iter().enumerate() {
                        if hash::project_rel(dir, &f.path).is_some_and(|r| pats.inputs.matches(r)) {
                            picked.push(i);
                            let h = self.index.hash(&self.model.ws.root, f);
                            hashed.push((
                                f.path.clone(),
                                blake3::Hash::from_bytes(h).to_hex().to_string(),
                            ));
                        }
                    }
                    let e = RunInputs {
                        files: files.clone(),
                        pats: pats.clone(),
                        picked: Arc::new(picked),
                        hashed: Arc::new(hashed),
                    };
                    entries.push(e.clone());
                    e
                }
            }
        };
        // The task's own outputs are never its inputs.
        let keep: Vec<usize> = if pats.outputs.is_empty() {
            (0..picked.picked.len()).collect()
        } else {
            (0..picked.picked.len())
                .filter(|&j| {
                    let f = &files[picked.picked[j]];
                    hash::project_rel(dir, &f.path).is_some_and(|r| !pats.outputs.matches(r))
                })
                .collect()
        };
        // A name vx cannot key is refused, never dropped or merged.
        if let Some(f) = keep
            .iter()
            .map(|&j| &files[picked.picked[j]])
            .find(|f| f.non_utf8)
        {
            return Err(non_utf8(&node.id, &f.path));
        }
        if keep.len() == picked.picked.len() {
            return Ok(picked.hashed);
        }
        Ok(Arc::new(
            keep.into_iter().map(|j| picked.hashed[j].clone()).collect(),
        ))
    }

    /// What `--dry` flags about node `n`'s inputs: each symlink to a path
    /// outside the workspace (hashed by its link text, so an edit of its
    /// target is not seen).
    pub(super) fn input_warnings(&self, n: usize) -> Result<Vec<String>, EngineError> {
        let inputs = self.inputs_of(n)?;
        let snap = self
            .snapshot
            .read()
            .map_err(|_| EngineError::new(ErrorKind::Internal, "snapshot poisoned"))?;
        let names: HashSet<&str> = inputs.iter().map(|(p, _)| p.as_str()).collect();
        let root = &self.model.ws.root;
        let mut out: Vec<String> = snap
            .by_project
            .iter()
            .flat_map(|v| v.iter())
            .chain(snap.loose.iter())
            .filter(|f| f.link == hash::Link::Outside && names.contains(f.path.as_str()))
            .map(|f| {
                let target = std::fs::read_link(root.join(&f.path))
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                format!(
                    "input {} is a symlink to {target}, outside the workspace: it is keyed by its link text, so edits of its target do not invalidate the cache",
                    f.path
                )
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// The files a set of input patterns picks from one project's list, with
/// their hashes (see [`Shared::inputs_from_run_memo`]).
#[derive(Clone)]
pub(super) struct RunInputs {
    /// The snapshot's list they were picked from (held, so the pointer
    /// compared is never another list's).
    files: Arc<Vec<FileMeta>>,
    /// The patterns whose `inputs` picked them.
    pats: Arc<hash::TaskPatterns>,
    /// Positions in `files` of the picked files, in list order.
    picked: Arc<Vec<usize>>,
    /// (path, blake3 hex) of each picked file, in the same order.
    hashed: Arc<Vec<(String, String)>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Whether a task's inputs can select a file a restore touched (at or
    // below an output base): only then is its project re-walked before it
    // is keyed.
    #[test]
    fn a_restore_is_seen_only_by_inputs_that_reach_its_bases() {
        // (input patterns, restored bases, seen)
        let cases: &[(&[&str], &[&str], bool)] = &[
            (&["src/**"], &["dist"], false),
            (&["src/**", "package.json"], &["dist"], false),
            (&["dist/**"], &["dist"], true),
            (&["dist/types/*.d.ts"], &["dist"], true),
            (&["out/gen/**"], &["out"], true),
            (&["out/**"], &["out/gen"], true),
            (&["distant/**"], &["dist"], false),
            (&["dist-old/**"], &["dist"], false),
            (&["**/*.ts"], &["dist"], true),
            (&["src/**", "!dist/**"], &["dist"], false),
            (&[], &["dist"], false),
            (&["src/**"], &["src/gen", "dist"], true),
        ];
        for (inputs, restored, want) in cases {
            let pats = Patterns::new(inputs).unwrap();
            let restored: Vec<String> = restored.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                may_see(pats.bases(), &restored),
                *want,
                "{inputs:?} vs {restored:?}"
            );
        }
    }
}
