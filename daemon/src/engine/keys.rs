//! `engine::keys` — the cache key of each selected task.
//!
//! Owns: a task's input files with their content hashes (memoised under
//! the daemon while their project's file list is the same object), its
//! keyed environment, the key fold (memoised under the daemon while every
//! varying part is unchanged), the fingerprint the history keeps of a key,
//! the `--dry` input warnings, and re-walking the projects a task wrote to
//! before a dependent is keyed.
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

/// Whether a restore into the project at `project` (absolute, in the
/// workspace at `root`) that wrote `written` (project-relative) for the
/// output patterns `outputs` provably leaves a walk of the project as it
/// was, so the project need not be re-walked: the workspace has no global
/// inputs (their walk records ignored files too), every output base is an
/// existing real directory that the walk does not enter (it, or a
/// directory between it and the project, is ignored; asked of the same
/// walker the walk uses), and every file written lies below a base. A
/// restore wipes only what the patterns select below the bases and
/// creates only the written files and their directories, so nothing it
/// touched is in a walk, before or after. Anything else (a pattern that
/// can match anywhere, a base the walk enters, a base gone after the
/// restore) is not provable: the caller re-walks.
pub(super) fn restore_invisible<'a>(
    root: &Path,
    project: &Path,
    global_inputs: bool,
    outputs: &Patterns,
    mut written: impl Iterator<Item = &'a str>,
) -> bool {
    let Some(bases) = outputs.bases() else {
        return false;
    };
    if global_inputs || bases.is_empty() {
        return false;
    }
    let below_a_base = |f: &str| {
        bases.iter().any(|b| {
            f.strip_prefix(b.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    if !written.all(below_a_base) {
        return false;
    }
    bases.iter().all(|base| {
        let Some(parts) = crate::fsx::components(base) else {
            return false;
        };
        // Top down, each a real directory (never a link): the first one
        // the walk does not enter hides everything below it.
        let mut dir = project.to_path_buf();
        for c in parts {
            dir.push(c);
            if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                return false;
            }
            if !hash::is_walked_dir(root, &dir) {
                return true;
            }
        }
        false
    })
}
use std::sync::Arc;
use vx_proto::history::Fingerprint;

impl Shared {
    pub(super) fn refresh_if_dirty(&self, p: usize) {
        let was_dirty = self.dirty.lock().map(|mut d| d.remove(&p)).unwrap_or(false);
        if !was_dirty {
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
    /// relative to the project) for the output patterns `outputs`: `p` is
    /// re-walked before its next task is keyed unless the restore provably
    /// changed nothing a walk of `p` records (see [`restore_invisible`]);
    /// the owners of symlinks into `p` are re-walked either way.
    pub(super) fn mark_restored(&self, p: usize, outputs: &Patterns, written: &cache::Stamps) {
        let invisible = restore_invisible(
            &self.model.ws.root,
            &self.project_abs(p),
            self.model.global_patterns().is_some(),
            outputs,
            written.keys().map(String::as_str),
        );
        self.mark_changed(p, !invisible);
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
        self.refresh_if_dirty(node.project);
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
                    config: self.model.config_json(n).0.clone(),
                    command: node.def.command.clone().unwrap_or_default(),
                    args,
                    env,
                    upstream,
                    inputs,
                    plugins,
                };
                let key = parts.fold_from(&self.model.config_json(n).1);
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
            config: hash_str(&self.model.config_json(n).0),
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
            return Err(EngineError::new(
                ErrorKind::Config,
                format!(
                    "{}: {}",
                    node.id,
                    hash::NonUtf8 {
                        escaped: f.path.clone()
                    }
                ),
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    // Which restores may skip the project's re-walk: only those whose every
    // output base is an existing real directory the walk does not enter,
    // with every written file below one, and no global inputs.
    #[test]
    fn a_restore_skips_the_re_walk_only_when_the_walk_cannot_see_it() {
        // (what, output patterns, dirs made, written, global inputs, skips)
        let cases: &[(&str, &[&str], &[&str], &[&str], bool, bool)] = &[
            (
                "ignored base",
                &["dist/**"],
                &["dist"],
                &["dist/a.txt"],
                false,
                true,
            ),
            (
                "ignored, nothing written",
                &["dist/**"],
                &["dist"],
                &[],
                false,
                true,
            ),
            (
                "base gone after the wipe",
                &["dist/**"],
                &[],
                &[],
                false,
                false,
            ),
            (
                "base the walk enters",
                &["out/**"],
                &["out"],
                &["out/a.txt"],
                false,
                false,
            ),
            (
                "global inputs",
                &["dist/**"],
                &["dist"],
                &["dist/a.txt"],
                true,
                false,
            ),
            (
                "written outside the bases",
                &["dist/**"],
                &["dist"],
                &["src/a.js"],
                false,
                false,
            ),
            (
                "written at the base itself",
                &["dist"],
                &["dist"],
                &["dist"],
                false,
                false,
            ),
            (
                "a pattern matching anywhere",
                &["**/*.js"],
                &["dist"],
                &["dist/a.js"],
                false,
                false,
            ),
            (
                "below an ignored parent",
                &["build/gen/**"],
                &["build/gen"],
                &["build/gen/a"],
                false,
                true,
            ),
            (
                "ignored by a nested .gitignore",
                &["src/gen/**"],
                &["src/gen"],
                &["src/gen/a"],
                false,
                true,
            ),
            (
                "one base seen, one not",
                &["dist/**", "out/**"],
                &["dist", "out"],
                &["dist/a"],
                false,
                false,
            ),
            (
                "always skipped",
                &["node_modules/.cache/**"],
                &["node_modules/.cache"],
                &["node_modules/.cache/x"],
                false,
                true,
            ),
            (
                "a symlinked base",
                &["lnk/**"],
                &["real"],
                &["lnk/a"],
                false,
                false,
            ),
        ];
        for (what, pats, dirs, written, global, want) in cases {
            let d = tempfile::tempdir().unwrap();
            let root = d.path().canonicalize().unwrap();
            let proj = root.join("p");
            fs::create_dir_all(proj.join("src")).unwrap();
            fs::write(root.join(".gitignore"), "dist\nbuild\nlnk\n").unwrap();
            fs::write(proj.join("src/.gitignore"), "gen\n").unwrap();
            for dir in *dirs {
                fs::create_dir_all(proj.join(dir)).unwrap();
            }
            std::os::unix::fs::symlink("real", proj.join("lnk")).unwrap();
            let pats = Patterns::new(pats).unwrap();
            let got = restore_invisible(&root, &proj, *global, &pats, written.iter().copied());
            assert_eq!(got, *want, "{what}");
        }
    }
}
