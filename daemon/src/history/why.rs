//! `history::why` — what changed between two keys of a task (`vx why`)
//! and advice about it, and the critical-path priorities the scheduler
//! derives from durations. Never writes the file.

use super::*;

impl History {
    /// Why `task_id`'s key changed: its two newest distinct recorded keys,
    /// their fingerprints compared part by part, and what to do.
    pub fn why(&self, task_id: &str) -> Result<WhyReport, HistoryError> {
        self.why_at(task_id, None)
    }

    /// [`History::why`] as of run `run_id` (a unique prefix works): the key
    /// the task had in that run against the distinct key before it.
    pub fn why_at(&self, task_id: &str, run_id: Option<&str>) -> Result<WhyReport, HistoryError> {
        self.why_at_with(task_id, run_id, &|_| false)
    }

    /// [`History::why_at`], with `global` telling which changed files are
    /// workspace-wide inputs (keyed into every task): the advice for those
    /// names the workspace setting, not the task's `inputs`.
    pub fn why_at_with(
        &self,
        task_id: &str,
        run_id: Option<&str>,
        global: &dyn Fn(&str) -> bool,
    ) -> Result<WhyReport, HistoryError> {
        let upto = match run_id {
            Some(id) => self.seq_of(id)?,
            None => u64::MAX,
        };
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let rows = tx.open_table(TASK_ROWS)?;
        let fps = tx.open_table(FINGERPRINTS)?;
        let mut total = 0usize;
        let mut newest: Option<(String, String)> = None;
        let mut previous: Option<(String, String)> = None;
        let mut same_key_rows = 0usize;
        let mut cache = None;
        for seq in seqs_desc(&runs, upto)? {
            let Some(v) = rows.get((seq, task_id))? else {
                continue;
            };
            total += 1;
            let row = decode_task_row(v.value())?;
            if total == 1 {
                cache = Some(row.task.cache);
            }
            let Some(key) = row.task.key else { continue };
            match &newest {
                None => {
                    newest = Some((key, row.run_id));
                    same_key_rows = 1;
                }
                Some((k, _)) if *k == key => same_key_rows += 1,
                Some(_) => {
                    previous = Some((key, row.run_id));
                    break;
                }
            }
        }
        if total == 0 {
            return Err(HistoryError::NoTaskRuns(task_id.to_string()));
        }
        let mut report = WhyReport {
            task: task_id.to_string(),
            key: newest.as_ref().map(|n| n.0.clone()),
            run_id: newest.as_ref().map(|n| n.1.clone()),
            previous_key: previous.as_ref().map(|p| p.0.clone()),
            previous_run_id: previous.as_ref().map(|p| p.1.clone()),
            cache,
            compared: false,
            changes: Vec::new(),
            advice: Vec::new(),
        };
        let Some((key, run_id)) = newest else {
            report.advice.push(format!(
                "none of the {total} recorded runs of {task_id} computed a key (it was skipped, or it is a group task); there is nothing to compare"
            ));
            return Ok(report);
        };
        let Some((prev_key, prev_run)) = previous else {
            report.advice.push(format!(
                "{task_id} has had the same key ({}) in all {same_key_rows} recorded runs that computed one: nothing it depends on changed",
                short(&key)
            ));
            report.advice.push(
                "if it executed anyway, its cache entry was missing: the cache was cleaned, the run used --force or --no-cache, or caching is off for the task".to_string(),
            );
            return Ok(report);
        };
        let load = |k: &str| -> Result<Option<Fingerprint>, HistoryError> {
            fps.get(k)?
                .map(|v| decode_fingerprint(v.value()))
                .transpose()
        };
        let (new_fp, old_fp) = (load(&key)?, load(&prev_key)?);
        let (Some(new_fp), Some(old_fp)) = (new_fp, old_fp) else {
            for (k, r, fp) in [
                (&key, &run_id, load(&key)?),
                (&prev_key, &prev_run, load(&prev_key)?),
            ] {
                if fp.is_none() {
                    report.advice.push(format!(
                        "no fingerprint is stored for key {} (run {r}): {task_id} was only ever restored from the cache with that key (or the key is older than the {FINGERPRINTS_PER_TASK} newest kept), so what went into it is unknown",
                        short(k)
                    ));
                }
            }
            report.advice.push(format!(
                "run `vx run {task_id} --force` to execute it and record its fingerprint"
            ));
            return Ok(report);
        };
        report.compared = true;
        report.changes = diff(&old_fp, &new_fp);
        report.advice = advice(task_id, &report.changes, global);
        Ok(report)
    }
}

pub(super) fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

pub(super) fn diff_pairs(
    component: Component,
    old: &[(String, String)],
    new: &[(String, String)],
    out: &mut Vec<Change>,
) {
    let old: BTreeMap<&str, &str> = old.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let new: BTreeMap<&str, &str> = new.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let names: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    for name in names {
        let kind = match (old.get(name), new.get(name)) {
            (None, Some(_)) => ChangeKind::Added,
            (Some(_), None) => ChangeKind::Removed,
            (Some(a), Some(b)) if a != b => ChangeKind::Changed,
            _ => continue,
        };
        out.push(Change {
            component,
            name: Some(name.to_string()),
            kind,
        });
    }
}

/// The differences from `old` to `new`, sorted by component and name.
pub fn diff(old: &Fingerprint, new: &Fingerprint) -> Vec<Change> {
    let mut out = Vec::new();
    diff_pairs(Component::File, &old.files, &new.files, &mut out);
    diff_pairs(Component::Env, &old.env, &new.env, &mut out);
    let whole = |component, changed: bool, out: &mut Vec<Change>| {
        if changed {
            out.push(Change {
                component,
                name: None,
                kind: ChangeKind::Changed,
            });
        }
    };
    whole(Component::Config, old.config != new.config, &mut out);
    whole(Component::Command, old.command != new.command, &mut out);
    diff_pairs(Component::Upstream, &old.upstream, &new.upstream, &mut out);
    whole(Component::Args, old.args != new.args, &mut out);
    diff_pairs(Component::Plugin, &old.plugins, &new.plugins, &mut out);
    out.sort_by(|a, b| (a.component, &a.name).cmp(&(b.component, &b.name)));
    out
}

/// How many file changes get their own advice line.
pub(super) const FILE_ADVICE: usize = 5;

/// What to do about each change, one sentence per line; `global` tells
/// which files are workspace-wide inputs.
pub fn advice(task: &str, changes: &[Change], global: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    if changes.is_empty() {
        out.push(format!(
            "the recorded parts of {task}'s two keys are identical; the key changed through something the fingerprint does not cover (a vx upgrade, or the key format)"
        ));
        return out;
    }
    let files: Vec<&Change> = changes
        .iter()
        .filter(|c| c.component == Component::File)
        .collect();
    for c in files.iter().take(FILE_ADVICE) {
        let name = c.name.as_deref().unwrap_or("?");
        if global(name) && c.kind != ChangeKind::Removed {
            let what = if c.kind == ChangeKind::Added {
                "is a new workspace-wide input"
            } else {
                "changed; it is a workspace-wide input"
            };
            out.push(format!(
                "file {name} {what}, keyed into every task (`global_inputs` in the root vx.toml, turbo.json's `globalDependencies`, or a package the root package.json depends on); if it should not affect every task, narrow those"
            ));
            continue;
        }
        out.push(match c.kind {
            ChangeKind::Changed => format!(
                "file {name} changed; if it is not an input of {task}, narrow `inputs` (or exclude it with a `!` pattern)"
            ),
            ChangeKind::Added => format!(
                "file {name} is a new input; if it should not affect {task}, narrow `inputs`"
            ),
            ChangeKind::Removed => format!(
                "file {name} is no longer an input (deleted, or no longer matched by `inputs`)"
            ),
        });
    }
    if files.len() > FILE_ADVICE {
        out.push(format!(
            "... and {} more input files changed",
            files.len() - FILE_ADVICE
        ));
    }
    for c in changes.iter().filter(|c| c.component != Component::File) {
        let name = c.name.as_deref().unwrap_or("?");
        out.push(match (c.component, c.kind) {
            (Component::Env, ChangeKind::Changed) => format!(
                "the value of {name} changed; if it should not affect the build, remove it from `env` in vx.toml (or list it in `pass_env`, which passes it without keying it)"
            ),
            (Component::Env, ChangeKind::Added) => {
                format!("{name} is newly keyed (it was added to `env`, or matches a new pattern)")
            }
            (Component::Env, ChangeKind::Removed) => {
                format!("{name} is no longer keyed (it was removed from `env`)")
            }
            (Component::Config, _) => format!(
                "{task}'s configuration changed (its vx.toml, package.json or turbo.json entry: inputs, outputs, env, dependencies or options)"
            ),
            (Component::Command, _) => format!("{task}'s command changed"),
            (Component::Upstream, ChangeKind::Changed) => {
                format!("{name}'s key changed; run `vx why {name}` to see why")
            }
            (Component::Upstream, ChangeKind::Added) => format!("{task} now depends on {name}"),
            (Component::Upstream, ChangeKind::Removed) => {
                format!("{task} no longer depends on {name}")
            }
            (Component::Args, _) => {
                "the arguments after `--` changed; they are part of the key of the requested tasks"
                    .to_string()
            }
            (Component::Plugin, ChangeKind::Changed) => format!(
                "plugin {name} gave {task} other key material (`docs/plugins.md`); see what the plugin keys on"
            ),
            (Component::Plugin, ChangeKind::Added) => {
                format!("plugin {name} now gives {task} key material")
            }
            (Component::Plugin, ChangeKind::Removed) => {
                format!("plugin {name} no longer gives {task} key material")
            }
            (Component::File, _) => continue,
        });
    }
    out
}

/// Estimated critical-path priorities (`docs/history.md`): `own[n]` is the
/// p50 of task `n` when known; unknown tasks take the median of the known
/// ones (1000 ms when none is known). `ECP(n) = own(n) + max ECP(d)` over
/// the dependents `d` of `n` (0 when it has none), computed from the sinks
/// back; a node on a cycle (never reached) gets its own duration.
pub fn critical_path(
    deps: &[Vec<usize>],
    dependents: &[Vec<usize>],
    own: &[Option<u64>],
) -> Vec<u64> {
    let n = own.len();
    let mut known: Vec<u64> = own.iter().flatten().copied().collect();
    known.sort_unstable();
    let median = known
        .get(known.len() / 2)
        .copied()
        .unwrap_or(DEFAULT_DURATION_MS);
    let own_of = |i: usize| own[i].unwrap_or(median);
    let mut ecp: Vec<Option<u64>> = vec![None; n];
    let mut remaining: Vec<usize> = (0..n)
        .map(|i| {
            dependents
                .get(i)
                .map_or(0, |d| d.iter().filter(|&&x| x < n).count())
        })
        .collect();
    let mut ready: Vec<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
    while let Some(i) = ready.pop() {
        let longest = dependents
            .get(i)
            .into_iter()
            .flatten()
            .filter_map(|&d| ecp.get(d).copied().flatten())
            .max()
            .unwrap_or(0);
        ecp[i] = Some(own_of(i).saturating_add(longest));
        for &d in deps.get(i).into_iter().flatten() {
            if d < n && remaining[d] > 0 {
                remaining[d] -= 1;
                if remaining[d] == 0 {
                    ready.push(d);
                }
            }
        }
    }
    (0..n)
        .map(|i| ecp[i].unwrap_or_else(|| own_of(i)))
        .collect()
}
