//! `history::query` — reading the history: runs, one run, a task's rows,
//! per-task statistics and failure modes (memoised), and the p50 durations
//! the scheduler reads. Never writes the file.

use super::*;

impl History {
    /// The newest `limit` runs, newest first, without their rows.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunBrief>, HistoryError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let mut out = Vec::new();
        for item in runs.iter()?.rev().take(limit) {
            let (_, v) = item?;
            let s = StoredRun::decode(v.value())?;
            out.push(RunBrief::from(&s.head));
        }
        Ok(out)
    }

    /// How many runs are retained, and how many of them started at or after
    /// `since` (Unix milliseconds).
    pub fn run_counts(&self, since: u64) -> Result<(u64, u64), HistoryError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let total = runs.len()?;
        let mut recent = 0;
        for item in runs.iter()?.rev() {
            let (_, v) = item?;
            let s = StoredRun::decode(v.value())?;
            if s.head.started_at < since {
                break;
            }
            recent += 1;
        }
        Ok((total, recent))
    }

    /// One run with its rows: `None` = the latest; otherwise a run id or a
    /// unique prefix of one. `Ok(None)` when no run is recorded at all.
    /// The sequence number of a run id or unique prefix.
    pub(super) fn seq_of(&self, id: &str) -> Result<u64, HistoryError> {
        let tx = self.db.begin_read()?;
        let ids = tx.open_table(RUN_IDS)?;
        if let Some(seq) = ids.get(id)?.map(|g| g.value()) {
            return Ok(seq);
        }
        let mut matches = Vec::new();
        for item in ids.range(id..)? {
            let (k, v) = item?;
            if !k.value().starts_with(id) {
                break;
            }
            matches.push((k.value().to_string(), v.value()));
        }
        match matches.len() {
            0 => Err(HistoryError::NoSuchRun(id.to_string())),
            1 => Ok(matches[0].1),
            _ => Err(HistoryError::AmbiguousRun {
                prefix: id.to_string(),
                matches: matches.into_iter().map(|m| m.0).collect(),
            }),
        }
    }

    pub fn run(&self, id: Option<&str>) -> Result<Option<RunRecord>, HistoryError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let rows = tx.open_table(TASK_ROWS)?;
        let seq = match id {
            None => match runs.last()? {
                Some((k, _)) => k.value(),
                None => return Ok(None),
            },
            Some(id) => self.seq_of(id)?,
        };
        let Some(v) = runs.get(seq)? else {
            return Err(HistoryError::NoSuchRun(id.unwrap_or_default().to_string()));
        };
        let stored = StoredRun::decode(v.value())?;
        load_run(&rows, seq, stored).map(Some)
    }

    /// The newest run that did not succeed.
    pub fn last_failed(&self) -> Result<Option<RunRecord>, HistoryError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let rows = tx.open_table(TASK_ROWS)?;
        for item in runs.iter()?.rev() {
            let (k, v) = item?;
            let stored = StoredRun::decode(v.value())?;
            if !stored.head.ok {
                return load_run(&rows, k.value(), stored).map(Some);
            }
        }
        Ok(None)
    }

    /// A task's newest `limit` rows, newest first.
    pub fn task_runs(&self, task_id: &str, limit: usize) -> Result<Vec<TaskRunRow>, HistoryError> {
        let tx = self.db.begin_read()?;
        let rows = tx.open_table(TASK_ROWS)?;
        let mut out = Vec::new();
        for item in rows
            .range((task_id, 0u64)..=(task_id, u64::MAX))?
            .rev()
            .take(limit)
        {
            let (_, v) = item?;
            out.push(decode_task_row(v.value())?);
        }
        Ok(out)
    }

    /// Every task id with at least one retained row, sorted.
    pub fn task_ids(&self) -> Result<Vec<String>, HistoryError> {
        let tx = self.db.begin_read()?;
        let rows = tx.open_table(TASK_ROWS)?;
        let mut out: Vec<String> = Vec::new();
        for item in rows.iter()? {
            let (k, _) = item?;
            let (task, _) = k.value();
            if out.last().map(String::as_str) != Some(task) {
                out.push(task.to_string());
            }
        }
        Ok(out)
    }

    /// Statistics of each task over its newest `window` rows (see
    /// `docs/history.md`). Tasks without rows are absent. Memoised until a
    /// write touches the task.
    pub fn stats(
        &self,
        task_ids: &[String],
        window: usize,
    ) -> Result<HashMap<String, TaskStats>, HistoryError> {
        self.sync();
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        // Computed values are memoised only if no write committed meanwhile.
        let mut generation = None;
        match self.memo.lock() {
            Ok(memo) => {
                generation = Some(memo.generation);
                for id in task_ids {
                    match memo.stats.get(&(id.clone(), window)) {
                        Some(s) => {
                            out.insert(id.clone(), s.clone());
                        }
                        None => missing.push(id),
                    }
                }
            }
            Err(_) => missing.extend(task_ids),
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let tx = self.db.begin_read()?;
        let rows = tx.open_table(TASK_ROWS)?;
        let outcomes = tx.open_table(OUTCOMES)?;
        let mut fresh = Vec::new();
        for id in missing {
            if let Some(s) = task_stats(&rows, &outcomes, id, window)? {
                fresh.push((id.clone(), s));
            }
        }
        if let Ok(mut memo) = self.memo.lock()
            && Some(memo.generation) == generation
        {
            for (id, s) in &fresh {
                memo.stats.insert((id.clone(), window), s.clone());
            }
        }
        out.extend(fresh);
        Ok(out)
    }

    /// The p50 duration of each task's executed, successful runs (over the
    /// newest `window` of them); tasks without one are absent. What the
    /// scheduler feeds to [`critical_path`].
    pub fn durations(
        &self,
        task_ids: &[String],
        window: usize,
    ) -> Result<HashMap<String, u64>, HistoryError> {
        self.sync();
        let mut out = HashMap::new();
        let mut memo = self.lists.lock().ok();
        let mut missing = Vec::new();
        for id in task_ids {
            match memo.as_ref().and_then(|m| m.get(id)) {
                Some(list) => {
                    if let Some(p) = p50_of(list, window) {
                        out.insert(id.clone(), p);
                    }
                }
                None => missing.push(id),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(DURATIONS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        for id in missing {
            let list: Vec<u64> = match &table {
                Some(t) => t
                    .get(id.as_str())?
                    .and_then(|v| decode_durations(v.value()))
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            if let Some(p) = p50_of(&list, window) {
                out.insert(id.clone(), p);
            }
            if let Some(m) = memo.as_mut() {
                m.insert(id.clone(), list);
            }
        }
        Ok(out)
    }

    /// The stored fingerprint of `key`.
    pub fn fingerprint(&self, key: &str) -> Result<Option<Fingerprint>, HistoryError> {
        let tx = self.db.begin_read()?;
        let fps = tx.open_table(FINGERPRINTS)?;
        fps.get(key)?
            .map(|v| decode_fingerprint(v.value()))
            .transpose()
    }
}

/// The median of the newest `window` durations (oldest first in `list`).
pub(super) fn p50_of(list: &[u64], window: usize) -> Option<u64> {
    let mut w: Vec<u64> = list[list.len().saturating_sub(window)..].to_vec();
    w.sort_unstable();
    percentile(&w, 0.5)
}

pub(super) fn row_hit(t: &TaskRun) -> bool {
    matches!(
        t.cache,
        CacheSource::Local | CacheSource::UpToDate | CacheSource::Remote
    )
}

/// The `q` percentile of ascending `sorted`: `sorted[min(n-1, floor(q*n))]`.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let idx = ((q * n as f64).floor() as usize).min(n - 1);
    Some(sorted[idx])
}

pub(super) fn load_run(
    rows: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    seq: u64,
    stored: StoredRun,
) -> Result<RunRecord, HistoryError> {
    let mut run = stored.head;
    for id in &stored.task_ids {
        if let Some(v) = rows.get((id.as_str(), seq))? {
            let row = decode_task_row(v.value())?;
            run.tasks.push(row.task);
        }
    }
    run.tasks.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(run)
}

pub(super) fn task_stats(
    rows: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    outcomes: &redb::ReadOnlyTable<(&'static str, &'static str), (u64, u64)>,
    id: &str,
    window: usize,
) -> Result<Option<TaskStats>, HistoryError> {
    let mut total = 0u64;
    let (mut successes, mut hits, mut executed, mut failures, mut retried) = (0, 0, 0, 0, 0);
    let mut durations = Vec::new();
    for item in rows.range((id, 0u64)..=(id, u64::MAX))?.rev() {
        if total as usize >= window && durations.len() >= window {
            break;
        }
        let (_, v) = item?;
        let row = decode_task_row(v.value())?;
        let t = &row.task;
        let is_executed = matches!(t.cache, CacheSource::Miss | CacheSource::Disabled);
        if (total as usize) < window {
            total += 1;
            successes += u64::from(t.status == TaskStatus::Success);
            hits += u64::from(row_hit(t));
            executed += u64::from(is_executed);
            failures += u64::from(t.status == TaskStatus::Failed);
            retried += u64::from(t.attempts > 1);
        }
        if durations.len() < window && is_executed && t.status == TaskStatus::Success {
            durations.push(t.duration_ms);
        }
    }
    if total == 0 {
        return Ok(None);
    }
    let mut mixed = 0u64;
    for item in outcomes.range((id, "")..)? {
        let (k, v) = item?;
        if k.value().0 != id {
            break;
        }
        let (f, o) = v.value();
        if f > 0 && o > 0 {
            mixed += 1;
        }
    }
    durations.sort_unstable();
    Ok(Some(TaskStats {
        total,
        successes,
        hits,
        executed,
        failures,
        retried,
        p50_ms: percentile(&durations, 0.5),
        p99_ms: percentile(&durations, 0.99),
        success_rate: successes as f64 / total as f64,
        hit_rate: hits as f64 / total as f64,
        failure_mode: classify(total, failures, retried, mixed),
        mixed_outcome_keys: mixed,
    }))
}

/// The failure mode: flaky when a row was retried, or when it failed and
/// some key both failed and succeeded; flaky with failures in fewer than a
/// fifth of the rows is recoverable, otherwise fatal.
pub fn classify(total: u64, failures: u64, retried: u64, mixed_keys: u64) -> FailureMode {
    let flaky = retried > 0 || (failures > 0 && mixed_keys > 0);
    if !flaky {
        FailureMode::Stable
    } else if (failures as f64) < total as f64 / 5.0 {
        FailureMode::FlakyRecoverable
    } else {
        FailureMode::FlakyFatal
    }
}
