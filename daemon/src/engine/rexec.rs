//! `engine::rexec` — remote execution of a run's tasks on its REAPI server
//! (`[remote_execution] execute = true` or `VX_REAPI_EXECUTE=1`): which
//! tasks go ([`eligible`]: cached, untainted, not persistent nor
//! interactive, with a command, not `remote = false`; and only while the
//! server says it can execute), what crosses the wire ([`Shared::remote_job`]:
//! `sh -c` and the command, the project as working directory, the keyed
//! environment only, the task's keyed input files plus its dependencies'
//! outputs on disk, the outputs' literal prefixes, its timeout, the
//! platform), and turning the answer into the task's result
//! ([`run_remote`]: its log as task output, retries executed remotely
//! again, a success's outputs admitted, stored and restored through the
//! ordinary checked restore, then uploaded under the task's key like a
//! local result).
//!
//! Never: sends a pass-through variable, a secret or a checkout path;
//! fails a run because the server failed (an unusable server is one
//! warning and the task runs here, and the run stops sending tasks), or
//! writes a result into a project except through the confined restore.

use super::prepare::Shared;
use super::task::{base_result, wants_live};
use crate::cache::remote::{
    self, Artifact, Executed, JobInput, JobInputKind, RemoteError, RemoteJob, RunRemote,
};
use crate::cache::{self, CacheError};
use crate::error::{EngineError, ErrorKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use vx_proto::{CacheSource, OutputLogs, RunEvent, Stream, TaskResult, TaskStatus};

/// What the placement of a task looks at.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Placement {
    /// The task's result is cached (which also means it has a command and
    /// is neither persistent nor interactive, and the run uses the cache).
    pub(super) cached: bool,
    pub(super) has_command: bool,
    pub(super) persistent: bool,
    pub(super) interactive: bool,
    /// A dependency changed files it did not declare (its result is not saved).
    pub(super) tainted: bool,
    /// `remote = false` in the task's table.
    pub(super) pinned_local: bool,
}

/// Whether a task may be executed remotely (the run must also want remote
/// execution and its server be able to).
pub(super) fn eligible(p: Placement) -> bool {
    p.cached && p.has_command && !p.persistent && !p.interactive && !p.tainted && !p.pinned_local
}

/// The REAPI `output_paths` of a task's output globs, relative to its
/// project (the working directory): each include pattern's literal prefix
/// (`dist/**` → `dist`), the whole working directory (`""`) when one can
/// match anywhere; sorted, unique, and none inside another.
pub(super) fn output_paths(bases: Option<&[String]>) -> Vec<String> {
    let Some(bases) = bases else {
        return vec![String::new()];
    };
    let mut v: Vec<String> = bases
        .iter()
        .map(|b| b.trim_end_matches('/').to_string())
        .collect();
    if v.iter().any(|b| b.is_empty() || b == ".") {
        return vec![String::new()];
    }
    v.sort();
    v.dedup();
    let all = v.clone();
    v.retain(|p| {
        !all.iter()
            .any(|q| q != p && p.starts_with(q.as_str()) && p[q.len()..].starts_with('/'))
    });
    v
}

/// The environment a remote task gets: its keyed variables that are set
/// (the workspace's and the task's `env`), then its `define` values —
/// never a pass-through variable; sorted by name.
pub(super) fn remote_env(
    keyed: Vec<(String, Option<String>)>,
    define: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = keyed
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    env.extend(define.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.into_iter().collect()
}

/// What [`run_remote`] did. (Returned once per task and matched at once,
/// like [`super::task::Hit`].)
#[allow(clippy::large_enum_variant)]
pub(super) enum Ran {
    /// The task's outcome (executed remotely, or cancelled).
    Done(Result<(TaskResult, Vec<u8>), EngineError>),
    /// Run it here (started here again if its `task_started` said
    /// `reapi`: the caller always sends one).
    Local,
}

/// `path` joined under the project directory `dir` (`.` for the root).
fn under(dir: &str, path: &str) -> String {
    match dir {
        "." | "" => path.to_string(),
        d => format!("{d}/{path}"),
    }
}

impl Shared {
    /// What `--dry` shows of task `g`'s placement: `None` when the run does
    /// not execute remotely, else `reapi` or `local` (the server is not
    /// asked: a plan sends nothing).
    pub(super) fn planned_placement(&self, g: usize) -> Option<String> {
        self.remote.as_ref()?.exec.as_ref()?;
        let def = &self.model.graph.nodes[g].def;
        def.command.as_ref()?;
        let place = Placement {
            cached: self.cache_enabled(g),
            has_command: true,
            persistent: def.persistent,
            interactive: def.interactive,
            tainted: false,
            pinned_local: !def.remote,
        };
        Some(if eligible(place) { "reapi" } else { "local" }.to_string())
    }

    /// The run's remote, when task `g` is to be executed on it: the task is
    /// [`eligible`], the run wants remote execution, and the server can
    /// execute (asked once per run; a server that cannot is one warning
    /// and every task runs here).
    pub(super) async fn remote_executor(
        self: &Arc<Self>,
        g: usize,
        tainted: bool,
    ) -> Option<Arc<RunRemote>> {
        let r = self.remote.clone()?;
        let ex = r.exec.as_ref()?;
        if !ex.on() || !r.usable() {
            return None;
        }
        let def = &self.model.graph.nodes[g].def;
        let place = Placement {
            cached: self.cache_enabled(g),
            has_command: def.command.is_some(),
            persistent: def.persistent,
            interactive: def.interactive,
            tainted,
            pinned_local: !def.remote,
        };
        if !eligible(place) {
            return None;
        }
        let ready = match ex.ready.get() {
            Some(r) => r.clone(),
            None => {
                let r2 = r.clone();
                let got = tokio::task::spawn_blocking(move || r2.remote.can_execute())
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                ex.ready.get_or_init(|| got).clone()
            }
        };
        if let Err(why) = ready {
            if ex.turn_off() {
                self.emit(RunEvent::Warning {
                    message: format!(
                        "remote execution: {} cannot execute tasks: {why}; running them here",
                        r.remote.describe()
                    ),
                });
            }
            return None;
        }
        Some(r)
    }

    /// What task `g` sends to the server. `Err`: why it cannot go (an
    /// input that vanished or cannot be named).
    pub(super) fn remote_job(
        &self,
        g: usize,
        key: &str,
        platform: &[(String, String)],
        queue_timeout: Duration,
    ) -> Result<RemoteJob, String> {
        let node = &self.model.graph.nodes[g];
        let root = &self.model.ws.root;
        let project = &self.model.ws.projects[node.project];
        let mut inputs: BTreeMap<String, JobInput> = BTreeMap::new();
        let link_text = |p: &std::path::Path, name: &str| -> Result<String, String> {
            let t = std::fs::read_link(p).map_err(|e| format!("input {name}: {e}"))?;
            t.into_os_string()
                .into_string()
                .map_err(|_| format!("input {name} links to a non-UTF-8 path"))
        };
        // The files its key hashes.
        for (path, _) in self.inputs_of(g).map_err(|e| e.message)?.iter() {
            let abs = root.join(path);
            let md = std::fs::symlink_metadata(&abs).map_err(|e| format!("input {path}: {e}"))?;
            let kind = if md.file_type().is_symlink() {
                JobInputKind::Symlink(link_text(&abs, path)?)
            } else if md.is_file() {
                use std::os::unix::fs::PermissionsExt;
                JobInputKind::File {
                    executable: md.permissions().mode() & 0o111 != 0,
                }
            } else {
                return Err(format!("input {path} is not a file"));
            };
            inputs.insert(
                path.clone(),
                JobInput {
                    path: path.clone(),
                    abs,
                    kind,
                },
            );
        }
        // Its dependencies' outputs, as they are on disk (they win).
        for d in self.model.graph.closure([g]) {
            if d == g {
                continue;
            }
            let Some(pats) = self.patterns.get(&d) else {
                continue;
            };
            let dp = self.model.graph.nodes[d].project;
            let dir = &self.model.ws.projects[dp].dir;
            let files =
                cache::collect_outputs(&self.project_abs(dp), &pats.outputs, &self.rel_fence(dp));
            for f in files {
                let path = under(dir, &f.rel);
                if f.non_utf8 {
                    return Err(format!("output {path} of a dependency is not UTF-8"));
                }
                let kind = if f.link {
                    JobInputKind::Symlink(link_text(&f.abs, &path)?)
                } else {
                    JobInputKind::File {
                        executable: f.stat.mode & 0o111 != 0,
                    }
                };
                inputs.insert(
                    path.clone(),
                    JobInput {
                        path,
                        abs: f.abs,
                        kind,
                    },
                );
            }
        }
        let timeout = node
            .def
            .timeout_ms
            .or(self.model.ws.defaults.timeout_ms)
            .map(Duration::from_millis);
        Ok(RemoteJob {
            key: key.to_string(),
            task: node.id.clone(),
            arguments: vec!["sh".into(), "-c".into(), self.command_line(g)],
            working_directory: match project.dir.as_str() {
                "." => String::new(),
                d => d.to_string(),
            },
            env: remote_env(self.keyed_env(g), &node.def.define),
            inputs: inputs.into_values().collect(),
            output_paths: output_paths(self.patterns[&g].outputs.bases()),
            timeout,
            platform: platform.to_vec(),
            queue_timeout,
        })
    }
}

/// Executes task `g` on the run's REAPI server `r` (with retries) and
/// takes a success's outputs into the local store and the project.
pub(super) async fn run_remote(
    sh: &Arc<Shared>,
    g: usize,
    key: &str,
    r: Arc<RunRemote>,
    cancel: watch::Receiver<Option<i32>>,
) -> Ran {
    let node = &sh.model.graph.nodes[g];
    let id = node.id.clone();
    let (platform, queue) = r
        .exec
        .as_ref()
        .map(|e| (e.platform.clone(), e.queue_timeout))
        .unwrap_or_default();
    let (sh2, k2) = (sh.clone(), key.to_string());
    let job =
        match tokio::task::spawn_blocking(move || sh2.remote_job(g, &k2, &platform, queue)).await {
            Ok(Ok(j)) => Arc::new(j),
            Ok(Err(why)) => {
                sh.emit(RunEvent::Warning {
                    message: format!("{id}: not executed remotely: {why}; running it here"),
                });
                return Ran::Local;
            }
            Err(e) => return Ran::Done(Err(EngineError::new(ErrorKind::Internal, e.to_string()))),
        };
    let command = job.arguments.last().cloned().unwrap_or_default();
    sh.emit(RunEvent::TaskStarted {
        id: id.clone(),
        key: Some(key.to_string()),
        command,
        uncached: false,
        traceparent: None,
        worker: Some("reapi".into()),
    });
    // The run's cancellation, as a flag the blocking client polls.
    let flag = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (flag, mut cancel) = (flag.clone(), cancel.clone());
        tokio::spawn(async move {
            if cancel.wait_for(|c| c.is_some()).await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        })
    };
    let logs = sh.logs_of(g);
    let attempts_total = node.def.retries + 1;
    let t0 = Instant::now();
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        let (r2, j2, f2) = (r.clone(), job.clone(), flag.clone());
        let res = tokio::task::spawn_blocking(move || {
            r2.remote.execute(&j2, &|| f2.load(Ordering::Relaxed))
        })
        .await
        .unwrap_or_else(|e| Err(RemoteError::Unavailable(e.to_string())));
        let ex = match res {
            Ok(ex) => ex,
            Err(e) => break Err(e),
        };
        let worker = match &ex.worker {
            Some(w) => format!("reapi:{w}"),
            None => "reapi".to_string(),
        };
        let ok = ex.exit_code == 0 && !ex.timed_out;
        let emit_lines = wants_live(logs) || (logs == OutputLogs::ErrorsOnly && !ok);
        if emit_lines {
            for (stream, bytes) in [(Stream::Stdout, &ex.stdout), (Stream::Stderr, &ex.stderr)] {
                for line in String::from_utf8_lossy(bytes).lines() {
                    sh.emit(RunEvent::TaskOutput {
                        id: id.clone(),
                        stream,
                        line: line.to_string(),
                        replay: false,
                        worker: Some(worker.clone()),
                    });
                }
            }
        }
        if !ok && attempt < attempts_total {
            sh.emit(RunEvent::TaskRetry {
                id: id.clone(),
                attempt: attempt + 1,
                of: attempts_total,
                reason: if ex.timed_out {
                    "a timeout".into()
                } else {
                    format!("exit {}", ex.exit_code)
                },
            });
            continue;
        }
        break Ok((ex, worker));
    };
    watcher.abort();
    let describe = r.remote.describe();
    let (ex, worker) = match outcome {
        Ok(x) => x,
        Err(RemoteError::Cancelled) => {
            let mut res = base_result(sh, g);
            res.key = Some(key.to_string());
            res.status = TaskStatus::Aborted;
            res.error = Some("cancelled".into());
            res.attempts = attempt;
            res.worker = Some("reapi".into());
            return Ran::Done(Ok((res, Vec::new())));
        }
        Err(RemoteError::Unavailable(why)) => {
            if r.exec.as_ref().is_some_and(|e| e.turn_off()) {
                sh.emit(RunEvent::Warning {
                    message: format!(
                        "remote execution on {describe}: {why}; running {id} here, and no more tasks remotely this run"
                    ),
                });
            }
            return Ran::Local;
        }
        Err(RemoteError::Refused(why) | RemoteError::WriteDenied(why)) => {
            sh.emit(RunEvent::Warning {
                message: format!(
                    "{id}: not executed remotely on {describe}: {why}; running it here"
                ),
            });
            return Ran::Local;
        }
    };
    let duration_ms = t0.elapsed().as_millis() as u64;
    let mut log = ex.stdout.clone();
    log.extend_from_slice(&ex.stderr);
    let mut res = base_result(sh, g);
    res.key = Some(key.to_string());
    res.attempts = attempt;
    res.duration_ms = duration_ms;
    res.worker = Some(worker);
    res.exit_code = (!ex.timed_out).then_some(ex.exit_code);
    res.cache = CacheSource::Miss;
    let fp = sh.fingerprint(g, key);
    if let Ok(mut f) = sh.fingerprints.lock() {
        f.push(fp);
    }
    if ex.timed_out {
        res.status = TaskStatus::Failed;
        res.error = Some(format!(
            "timed out after {} ms (remotely)",
            job.timeout.map(|t| t.as_millis()).unwrap_or(0)
        ));
        return Ran::Done(Ok((res, log)));
    }
    if ex.exit_code != 0 {
        res.status = TaskStatus::Failed;
        res.error = Some(format!("exit {} (remotely)", ex.exit_code));
        return Ran::Done(Ok((res, log)));
    }
    // A success: its outputs, checked, into the store and the project.
    let cached = ex.cached;
    let (sh2, k2, log2) = (sh.clone(), key.to_string(), log.clone());
    let taken =
        tokio::task::spawn_blocking(move || take_outputs(&sh2, g, &k2, ex, log2, duration_ms))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
    match taken {
        Ok(()) => {}
        Err(why) => {
            sh.emit(RunEvent::Warning {
                message: format!("{id}: the remote result is not used: {why}; running it here"),
            });
            return Ran::Local;
        }
    }
    sh.mark_dirty(node.project);
    if sh.policy.local_write {
        sh.upload(g, key);
    } else {
        sh.upload_outputs(g, key, log.clone(), duration_ms).await;
    }
    res.status = TaskStatus::Success;
    res.cache = if cached {
        CacheSource::Remote
    } else {
        CacheSource::Miss
    };
    Ran::Done(Ok((res, log)))
}

/// A remote success's outputs: only the paths the declared outputs select
/// (the output paths are prefixes), admitted (confined, inside the
/// outputs, links inside the project), stored as the entry of `key` and
/// restored through the checked restore (or, when the run does not write
/// the local store, restored directly). `Err`: why not.
fn take_outputs(
    sh: &Shared,
    g: usize,
    key: &str,
    ex: Executed,
    log: Vec<u8>,
    duration_ms: u64,
) -> Result<(), String> {
    let node = &sh.model.graph.nodes[g];
    let pats = &sh.patterns[&g].outputs;
    let mut a = Artifact {
        files: ex.outputs.files,
        log,
        duration_ms,
    };
    a.files.retain(|f| pats.matches(&f.path));
    remote::admit(&a, pats)?;
    let dir = sh.project_abs(node.project);
    let fence = sh.rel_fence(node.project);
    let err = |e: CacheError| match e {
        CacheError::Refused(why) => why,
        e => e.to_string(),
    };
    if sh.policy.local_write {
        let entry = remote::hydrate(&sh.store, key, &node.id, &a).map_err(err)?;
        let st = cache::restore(&sh.store, &entry.0, &dir, pats, &fence).map_err(|e| {
            sh.store.drop_entry(key);
            err(e)
        })?;
        sh.store.put_stamps(key, &st);
    } else {
        remote::restore_artifact(&a, &dir, pats, &fence).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_from_globs() {
        let s = |v: &[&str]| -> Vec<String> { v.iter().map(|x| x.to_string()).collect() };
        let table: &[(&[&str], &[&str])] = &[
            (&["dist/**"], &["dist"]),
            (&["dist/**", "!dist/cache/**"], &["dist"]),
            (&["dist/*.js", "build/**"], &["build", "dist"]),
            (&["dist/a.js"], &["dist/a.js"]),
            (&["dist/**", "dist/sub/**"], &["dist"]),
            (&["dist/**", "distx/**"], &["dist", "distx"]),
            (&[".next/**", "!.next/cache/**"], &[".next"]),
            (&["**/*.d.ts"], &[""]),
            (&["*.tsbuildinfo", "dist/**"], &[""]),
            (&["out/{a,b}/**"], &["out"]),
        ];
        for (globs, want) in table {
            let p = crate::globs::Patterns::new(globs).unwrap();
            assert_eq!(output_paths(p.bases()), s(want), "{globs:?}");
        }
        assert_eq!(output_paths(None), s(&[""]));
    }

    #[test]
    fn env_is_keyed_values_and_define_only() {
        let keyed = vec![
            ("NODE_ENV".to_string(), Some("production".to_string())),
            ("UNSET".to_string(), None),
            ("API_URL".to_string(), Some("https://x".to_string())),
        ];
        let define: BTreeMap<String, String> = [
            ("NODE_ENV".to_string(), "test".to_string()),
            ("A".to_string(), "1".to_string()),
        ]
        .into();
        let env = remote_env(keyed, &define);
        assert_eq!(
            env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("API_URL".to_string(), "https://x".to_string()),
                ("NODE_ENV".to_string(), "test".to_string()),
            ],
            "sorted, define wins, unset names absent"
        );
    }

    #[test]
    fn placement() {
        let base = Placement {
            cached: true,
            has_command: true,
            ..Default::default()
        };
        let with = |f: fn(&mut Placement)| {
            let mut p = base;
            f(&mut p);
            p
        };
        let table: &[(&str, Placement, bool)] = &[
            ("cached command", base, true),
            ("uncached", with(|p| p.cached = false), false),
            ("no command", with(|p| p.has_command = false), false),
            ("persistent", with(|p| p.persistent = true), false),
            ("interactive", with(|p| p.interactive = true), false),
            ("tainted", with(|p| p.tainted = true), false),
            ("remote = false", with(|p| p.pinned_local = true), false),
        ];
        for (what, p, want) in table {
            assert_eq!(eligible(*p), *want, "{what}");
        }
    }
}
