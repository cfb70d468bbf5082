//! `task.explain` and `task.log`: one task's current key part by part, and
//! its stored log.

use crate::engine::{self, EngineError, ErrorKind, KeyReport};
use crate::history::{self, History};
use crate::inspect;
use crate::state::Hot;
use crate::workspace::Workspace;
use std::path::Path;
use std::sync::Arc;
use vx_proto::live::{
    EnvEntry, Explain, ExplainParams, InputFile, LOG_DEFAULT_BYTES, LOG_MAX_BYTES, LogSource,
    TaskExplain, TaskLog, TaskLogParams, UpstreamKey,
};
use vx_proto::{RunParams, TaskStatus};

/// The request's workspace, its history (when one can be read: explain
/// works without) and the task's `project#task` id.
fn resolve(
    cwd: &str,
    task: &str,
    hot: Option<&Hot>,
) -> Result<(Workspace, Option<Arc<History>>, String), EngineError> {
    let cwd = Path::new(cwd);
    if !cwd.is_absolute() {
        return Err(EngineError::new(
            ErrorKind::InvalidParams,
            "cwd must be absolute",
        ));
    }
    let ws = engine::request_workspace(cwd, hot)?;
    let h = match inspect::open(&ws, hot) {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!("task query without the history: {}", e.message);
            None
        }
    };
    let id = inspect::resolve_task(&ws, cwd, task, h.as_deref())?;
    Ok((ws, h, id))
}

fn run_params(
    cwd: &str,
    id: &str,
    args: Vec<String>,
    env: std::collections::BTreeMap<String, String>,
) -> RunParams {
    RunParams {
        cwd: cwd.to_string(),
        tasks: vec![id.to_string()],
        args,
        env,
        ..Default::default()
    }
}

fn to_explain(r: &KeyReport) -> TaskExplain {
    let f = &r.fingerprint;
    TaskExplain {
        id: f.task.clone(),
        key: f.key.clone(),
        command: f.command.clone(),
        inputs: f
            .files
            .iter()
            .map(|(path, hash)| InputFile {
                path: path.clone(),
                hash: hash.clone(),
            })
            .collect(),
        env: f
            .env
            .iter()
            .map(|(name, hash)| EnvEntry {
                name: name.clone(),
                hash: hash.clone(),
            })
            .collect(),
        config: f.config.clone(),
        upstream: f
            .upstream
            .iter()
            .map(|(id, key)| UpstreamKey {
                id: id.clone(),
                key: key.clone(),
            })
            .collect(),
        args: r.args.clone(),
        plugins: f
            .plugins
            .iter()
            .map(|(name, hash)| EnvEntry {
                name: name.clone(),
                hash: hash.clone(),
            })
            .collect(),
        prediction: r.prediction,
        source: r.source,
        last_key: None,
        last_run_id: None,
        changes: Vec::new(),
        compared: false,
    }
}

/// How many recorded rows are looked through for the newest one with a key.
const LAST_ROWS: usize = 20;

/// Fills in what differs from the task's newest recorded key.
fn compare_with_history(t: &mut TaskExplain, fp: &vx_proto::history::Fingerprint, h: &History) {
    let Ok(rows) = h.task_runs(&t.id, LAST_ROWS) else {
        return;
    };
    let Some(row) = rows.into_iter().find(|r| r.task.key.is_some()) else {
        return;
    };
    let last = row.task.key.clone().unwrap_or_default();
    t.last_run_id = Some(row.run_id);
    if last == t.key {
        t.compared = true;
    } else if let Ok(Some(old)) = h.fingerprint(&last) {
        t.changes = history::diff(&old, fp);
        t.compared = true;
    }
    t.last_key = Some(last);
}

/// `task.explain`.
pub fn explain(p: ExplainParams, hot: Option<Arc<Hot>>) -> Result<Explain, EngineError> {
    let (ws, h, id) = resolve(&p.cwd, &p.task, hot.as_deref())?;
    let params = run_params(&p.cwd, &id, p.args, p.env);
    let tasks = engine::explain_keys(params, hot, |_, reports| {
        Ok(reports
            .iter()
            .map(|r| {
                let mut t = to_explain(r);
                if let Some(h) = &h {
                    compare_with_history(&mut t, &r.fingerprint, h);
                }
                t
            })
            .collect())
    })?;
    Ok(Explain {
        root: ws.root.to_string_lossy().into_owned(),
        tasks,
    })
}

/// The end of `log` in at most `max` bytes (starting at a line when one
/// starts within the first 4 KiB of the cut), and whether it was cut.
pub fn tail(log: &[u8], max: usize) -> (&[u8], bool) {
    if log.len() <= max {
        return (log, false);
    }
    let cut = &log[log.len() - max..];
    let start = cut
        .iter()
        .take(4096)
        .position(|&b| b == b'\n')
        .map(|i| i + 1)
        .filter(|&i| i < cut.len())
        .unwrap_or(0);
    (&cut[start..], true)
}

/// `task.log`: the stored log of the task's current key, or of the key it
/// had in a recorded run.
pub fn log(p: TaskLogParams, hot: Option<Arc<Hot>>) -> Result<TaskLog, EngineError> {
    let (_ws, h, id) = resolve(&p.cwd, &p.task, hot.as_deref())?;
    let max = p
        .max_bytes
        .unwrap_or(LOG_DEFAULT_BYTES)
        .clamp(1, LOG_MAX_BYTES) as usize;
    let recorded = match &p.run_id {
        None => None,
        Some(run) => {
            let h = h.as_ref().ok_or_else(|| {
                EngineError::new(
                    ErrorKind::NotFound,
                    "no runs are recorded in this workspace yet",
                )
            })?;
            let rec = h
                .run(Some(run))
                .map_err(inspect::history_err)?
                .ok_or_else(|| EngineError::new(ErrorKind::NotFound, format!("no run `{run}`")))?;
            let row = rec.tasks.iter().find(|t| t.id == id).ok_or_else(|| {
                EngineError::new(
                    ErrorKind::NotFound,
                    format!("{id} is not part of run {}", rec.run_id),
                )
            })?;
            let key = match (&row.key, row.status) {
                (_, TaskStatus::Failed | TaskStatus::Aborted) => {
                    return Err(EngineError::new(
                        ErrorKind::NotFound,
                        format!(
                            "{id} did not succeed in run {}: its log was not stored (failures are never cached)",
                            rec.run_id
                        ),
                    ));
                }
                (None, _) => {
                    return Err(EngineError::new(
                        ErrorKind::NotFound,
                        format!("{id} had no key in run {} (it did not run)", rec.run_id),
                    ));
                }
                (Some(k), _) => k.clone(),
            };
            Some((rec.run_id, key))
        }
    };
    let params = run_params(&p.cwd, &id, p.args, p.env);
    engine::explain_keys(params, hot, |store, reports| {
        let (source, run_id, key) = match recorded {
            Some((run, key)) => (LogSource::History, Some(run), key),
            None => {
                let key = reports
                    .first()
                    .map(|r| r.fingerprint.key.clone())
                    .ok_or_else(|| {
                        EngineError::new(ErrorKind::NotFound, format!("{id} has no key"))
                    })?;
                (LogSource::Current, None, key)
            }
        };
        let entry = store.get(&key)?.ok_or_else(|| {
            EngineError::new(
                ErrorKind::NotFound,
                format!(
                    "no stored log for {id} with key {}: it has not succeeded with this key (failures are never cached), or the entry was pruned",
                    &key[..key.len().min(12)]
                ),
            )
        })?;
        let bytes = store.read_verified(&entry.0.log)?;
        let (shown, truncated) = tail(&bytes, max);
        Ok(TaskLog {
            task: id.clone(),
            key,
            source,
            run_id,
            size: bytes.len() as u64,
            truncated,
            log: String::from_utf8_lossy(shown).into_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn workspace() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let files = [
            ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
            (
                "packages/lib/vx.toml",
                "[tasks.build]\ncommand = \"echo lib\"\ninputs = [\"src/**\"]\nenv = [\"MODE\"]\n",
            ),
            ("packages/lib/src/a.txt", "a\n"),
            (
                "packages/app/vx.toml",
                "[project]\ndeps = [\"lib\"]\n\n[tasks.build]\ncommand = \"echo app\"\ndepends_on = [\"^build\"]\ninputs = [\"src/**\"]\n",
            ),
            ("packages/app/src/m.txt", "m\n"),
        ];
        for (p, c) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
        d
    }

    /// Differential: the key `task.explain` reports is the key `run.plan`
    /// computes for the same task, args and env (one key computation).
    #[test]
    fn explain_reports_the_plans_key() {
        let ws = workspace();
        let cwd = ws.path().to_string_lossy().into_owned();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let env = |mode: Option<&str>| -> BTreeMap<String, String> {
            mode.map(|m| BTreeMap::from([("MODE".to_string(), m.to_string())]))
                .unwrap_or_default()
        };
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            ("lib#build", &[], None),
            ("lib#build", &[], Some("prod")),
            ("app#build", &[], Some("dev")),
            ("app#build", &["--x", "y z"], None),
        ];
        for &(task, args, mode) in cases {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let plan = rt
                .block_on(engine::plan(
                    RunParams {
                        cwd: cwd.clone(),
                        tasks: vec![task.to_string()],
                        args: args.clone(),
                        env: env(mode),
                        ..Default::default()
                    },
                    None,
                ))
                .unwrap();
            let planned = plan.tasks.iter().find(|t| t.id == task).unwrap();
            let x = explain(
                ExplainParams {
                    cwd: cwd.clone(),
                    task: task.to_string(),
                    args: args.clone(),
                    env: env(mode),
                },
                None,
            )
            .unwrap();
            assert_eq!(x.tasks.len(), 1);
            let t = &x.tasks[0];
            assert_eq!(
                Some(&t.key),
                planned.key.as_ref(),
                "{task} {args:?} {mode:?}"
            );
            assert_eq!(t.args, args);
            if task == "lib#build" {
                assert_eq!(t.inputs[0].path, "packages/lib/src/a.txt");
                assert_eq!(t.env[0].name, "MODE");
                if let Some(m) = mode {
                    assert!(
                        !serde_json::to_string(t).unwrap().contains(m),
                        "env values never shown raw"
                    );
                }
            } else {
                assert_eq!(t.upstream[0].id, "lib#build");
            }
        }
    }

    #[test]
    fn the_tail_starts_at_a_line_and_says_it_was_cut() {
        let cases: &[(&str, usize, &str, bool)] = &[
            ("a\nb\n", 10, "a\nb\n", false),
            ("line1\nline2\nline3\n", 8, "line3\n", true),
            ("abcdef", 3, "def", true),
            ("ab\n", 1, "\n", true),
        ];
        for &(log, max, want, cut) in cases {
            let (got, t) = tail(log.as_bytes(), max);
            assert_eq!(
                (std::str::from_utf8(got).unwrap(), t),
                (want, cut),
                "{log:?} {max}"
            );
        }
    }
}
