//! `history::query` — reading the history: runs, one run, a task's rows,
//! per-task statistics and failure modes (memoised), and the p50 durations
//! the scheduler reads. Never writes the file.

use super::*;
use std::ops::Bound;

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

    /// A task's newest `limit` rows, newest first: one point lookup per
    /// retained run, newest first, until `limit` are found.
    pub fn task_runs(&self, task_id: &str, limit: usize) -> Result<Vec<TaskRunRow>, HistoryError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let rows = tx.open_table(TASK_ROWS)?;
        let mut out = Vec::new();
        for seq in seqs_desc(&runs, u64::MAX)? {
            if out.len() >= limit {
                break;
            }
            if let Some(v) = rows.get((seq, task_id))? {
                out.push(decode_task_row(v.value())?);
            }
        }
        Ok(out)
    }

    /// Every task id with at least one retained row, sorted: the union of
    /// the retained runs' task ids (a run's rows are exactly those).
    pub fn task_ids(&self) -> Result<Vec<String>, HistoryError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let mut out: BTreeSet<String> = BTreeSet::new();
        for item in runs.iter()? {
            let (_, v) = item?;
            let Ok(stored) = StoredRun::decode(v.value()) else {
                continue;
            };
            out.extend(stored.task_ids);
        }
        Ok(out.into_iter().collect())
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
        let runs = tx.open_table(RUNS)?;
        let rows = tx.open_table(TASK_ROWS)?;
        let outcomes = tx.open_table(OUTCOMES)?;
        let missing: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        let fresh = task_stats(&runs, &rows, &outcomes, &missing, window)?;
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
        // Many tasks (a whole run's): one pass over the table reads each of
        // its pages once, where a look-up per task reads a leaf per task.
        let mut scanned: Option<HashMap<&str, Vec<u64>>> = None;
        if missing.len() >= SCAN_DURATIONS_FROM
            && let Some(t) = &table
        {
            let wanted: HashSet<&str> = missing.iter().map(|id| id.as_str()).collect();
            let mut found = HashMap::with_capacity(wanted.len());
            for row in t.iter()? {
                let (k, v) = row?;
                if let Some(&id) = wanted.get(k.value())
                    && let Some(list) = decode_durations(v.value())
                {
                    found.insert(id, list);
                }
            }
            scanned = Some(found);
        }
        for id in missing {
            let list: Vec<u64> = match (&mut scanned, &table) {
                (Some(found), _) => found.remove(id.as_str()).unwrap_or_default(),
                (None, Some(t)) => t
                    .get(id.as_str())?
                    .and_then(|v| decode_durations(v.value()))
                    .unwrap_or_default(),
                (None, None) => Vec::new(),
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

/// From how many tasks not yet memoised [`History::durations`] reads the
/// whole `durations` table instead of looking each task up.
pub(super) const SCAN_DURATIONS_FROM: usize = 64;

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

/// Retained run seqs up to `upto`, newest first: every key of `runs`
/// from the last (or `upto`) down to the first. Seqs of runs dropped in
/// between (a run id recorded twice) come too and find no rows.
pub(super) fn seqs_desc(
    runs: &impl ReadableTable<u64, &'static [u8]>,
    upto: u64,
) -> Result<std::iter::Rev<std::ops::RangeInclusive<u64>>, HistoryError> {
    let first = runs.first()?.map(|(k, _)| k.value());
    let last = runs.last()?.map(|(k, _)| k.value());
    #[allow(clippy::reversed_empty_ranges)]
    Ok(match (first, last) {
        (Some(f), Some(l)) if f <= l.min(upto) => (f..=l.min(upto)).rev(),
        _ => (1..=0).rev(),
    })
}

/// A bound on a `run_rows` key.
pub(super) type RowBound = Bound<(u64, &'static str)>;

/// The bounds of run `seq`'s rows in `run_rows`.
pub(super) fn run_range(seq: u64) -> (RowBound, RowBound) {
    (
        Bound::Included((seq, "")),
        match seq.checked_add(1) {
            Some(next) => Bound::Excluded((next, "")),
            None => Bound::Unbounded,
        },
    )
}

pub(super) fn load_run(
    rows: &redb::ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    seq: u64,
    stored: StoredRun,
) -> Result<RunRecord, HistoryError> {
    let mut run = stored.head;
    let ids: HashSet<&str> = stored.task_ids.iter().map(String::as_str).collect();
    for item in rows.range(run_range(seq))? {
        let (k, v) = item?;
        if ids.contains(k.value().1) {
            let row = decode_task_row(v.value())?;
            run.tasks.push(row.task);
        }
    }
    run.tasks.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(run)
}

/// A task's statistics while its rows are read newest first.
#[derive(Default)]
struct StatsAcc {
    total: u64,
    successes: u64,
    hits: u64,
    executed: u64,
    failures: u64,
    retried: u64,
    durations: Vec<u64>,
}

impl StatsAcc {
    /// Whether older rows can change nothing: `window` rows counted and
    /// `window` durations found.
    fn done(&self, window: usize) -> bool {
        self.total as usize >= window && self.durations.len() >= window
    }

    fn add(&mut self, t: &TaskRun, window: usize) {
        let is_executed = matches!(t.cache, CacheSource::Miss | CacheSource::Disabled);
        if (self.total as usize) < window {
            self.total += 1;
            self.successes += u64::from(t.status == TaskStatus::Success);
            self.hits += u64::from(row_hit(t));
            self.executed += u64::from(is_executed);
            self.failures += u64::from(t.status == TaskStatus::Failed);
            self.retried += u64::from(t.attempts > 1);
        }
        if self.durations.len() < window && is_executed && t.status == TaskStatus::Success {
            self.durations.push(t.duration_ms);
        }
    }
}

/// Up to this many unfinished tasks, a run's rows are looked up one by one;
/// beyond, the run's whole range is read once.
pub(super) const POINT_LOOKUPS: usize = 32;

/// The statistics of each of `ids` that has rows (see `docs/history.md`):
/// the retained runs are read once, newest first, until every task has
/// its window (or the runs run out).
pub(super) fn task_stats(
    runs: &redb::ReadOnlyTable<u64, &'static [u8]>,
    rows: &redb::ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    outcomes: &redb::ReadOnlyTable<(&'static str, &'static str), (u64, u64)>,
    ids: &[&str],
    window: usize,
) -> Result<Vec<(String, TaskStats)>, HistoryError> {
    let mut acc: HashMap<&str, StatsAcc> =
        ids.iter().map(|id| (*id, StatsAcc::default())).collect();
    let mut open: Vec<&str> = acc.keys().copied().collect();
    for seq in seqs_desc(runs, u64::MAX)? {
        open.retain(|id| !acc[id].done(window));
        if open.is_empty() {
            break;
        }
        if open.len() <= POINT_LOOKUPS {
            for id in &open {
                if let Some(v) = rows.get((seq, *id))? {
                    let row = decode_task_row(v.value())?;
                    if let Some(a) = acc.get_mut(id) {
                        a.add(&row.task, window);
                    }
                }
            }
        } else {
            for item in rows.range(run_range(seq))? {
                let (k, v) = item?;
                let Some(a) = acc.get_mut(k.value().1) else {
                    continue;
                };
                if a.done(window) {
                    continue;
                }
                let row = decode_task_row(v.value())?;
                a.add(&row.task, window);
            }
        }
    }
    let mut out = Vec::new();
    for (id, a) in acc {
        if a.total == 0 {
            continue;
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
        let StatsAcc {
            total,
            successes,
            hits,
            executed,
            failures,
            retried,
            mut durations,
        } = a;
        durations.sort_unstable();
        out.push((
            id.to_string(),
            TaskStats {
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
            },
        ));
    }
    Ok(out)
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
