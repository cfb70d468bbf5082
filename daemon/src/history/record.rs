//! `history::record` — writing a run: its rows, outcome counts, key
//! references and fingerprints, the scheduler's duration lists and
//! retention, all in one durable write transaction. Never reads for a
//! caller and never fails a run (callers turn errors into a warning).

use super::*;

impl History {
    /// Records one run and the fingerprints of the keys it executed, and
    /// applies retention, in one write transaction. A fingerprint is stored
    /// only if some row of the run has its key and it is not stored yet.
    pub fn record(
        &self,
        run: &RunRecord,
        fingerprints: &[Fingerprint],
    ) -> Result<(), HistoryError> {
        self.record_with(run, fingerprints)
    }

    /// [`History::record`] with this handle's retention. Every commit is
    /// durable: another process may read it at once (redb refuses a
    /// non-durable commit in a shared file).
    pub fn record_with(
        &self,
        run: &RunRecord,
        fingerprints: &[Fingerprint],
    ) -> Result<(), HistoryError> {
        let keep = Retention {
            max_runs: self.max_runs,
            max_age: self.max_age,
        };
        self.record_kept(run, fingerprints, keep)
    }

    /// [`History::record_with`] with the retention the recorded run asked
    /// for ([`Retention::from_env`] of its request).
    pub fn record_kept(
        &self,
        run: &RunRecord,
        fingerprints: &[Fingerprint],
        keep: Retention,
    ) -> Result<(), HistoryError> {
        self.record_paused(run, fingerprints, keep, None)
    }

    /// [`History::record_kept`], pausing `pause` inside the write
    /// transaction before its commit (`VX_TEST_RECORD_DELAY_MS`: the tests
    /// that read, or kill, a writer in the middle of a record).
    ///
    /// A run's own handle reads only the ends of the big tables at open, so
    /// damage in them may first show here: redb's panics on a damaged file
    /// become [`HistoryError::Corrupt`] (the run's warning), never a panic.
    pub fn record_paused(
        &self,
        run: &RunRecord,
        fingerprints: &[Fingerprint],
        keep: Retention,
        pause: Option<Duration>,
    ) -> Result<(), HistoryError> {
        crate::cache::quietly(|| self.record_in_tx(run, fingerprints, keep, pause)).unwrap_or_else(
            |panic| {
                Err(HistoryError::Corrupt {
                    path: self.path.clone(),
                    message: format!("the history writer panicked: {panic}"),
                })
            },
        )
    }

    fn record_in_tx(
        &self,
        run: &RunRecord,
        fingerprints: &[Fingerprint],
        keep: Retention,
        pause: Option<Duration>,
    ) -> Result<(), HistoryError> {
        let mut touched: HashSet<String> = HashSet::new();
        let tx = self.db.begin_write()?;
        let old_generation = Self::bump(&tx)?;
        let mut p50s: Vec<(String, Vec<u64>)> = Vec::new();
        {
            let mut durations = tx.open_table(DURATIONS)?;
            for task in &run.tasks {
                if !counts_as_duration(task) {
                    continue;
                }
                let mut list: Vec<u64> = durations
                    .get(task.id.as_str())?
                    .and_then(|v| decode_durations(v.value()))
                    .unwrap_or_default();
                list.push(task.duration_ms);
                if list.len() > DEFAULT_WINDOW {
                    list.drain(..list.len() - DEFAULT_WINDOW);
                }
                durations.insert(task.id.as_str(), encode_durations(&list)?.as_slice())?;
                p50s.push((task.id.clone(), list));
            }
        }
        {
            let mut runs = tx.open_table(RUNS)?;
            let mut ids = tx.open_table(RUN_IDS)?;
            let mut rows = tx.open_table(TASK_ROWS)?;
            let mut outcomes = tx.open_table(OUTCOMES)?;
            let mut refs = tx.open_table(KEY_REFS)?;
            let mut fps = tx.open_table(FINGERPRINTS)?;
            let mut meta = tx.open_table(META)?;
            let mut t = Tables {
                runs: &mut runs,
                ids: &mut ids,
                rows: &mut rows,
                outcomes: &mut outcomes,
                refs: &mut refs,
                fps: &mut fps,
            };
            // Recording the same run id twice replaces the first.
            let old = t.ids.get(run.run_id.as_str())?.map(|g| g.value());
            if let Some(old) = old {
                t.drop_run(old, &mut touched)?;
            }
            let next = meta.get("next_seq")?.map(|g| g.value()).unwrap_or(0);
            let last = t.runs.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
            let seq = next.max(last);
            meta.insert("next_seq", seq + 1)?;

            let mut seen = HashSet::new();
            let mut task_ids = Vec::with_capacity(run.tasks.len());
            // Key → the task whose row names it (keys include the task id).
            let mut keys: HashMap<&str, &str> = HashMap::new();
            for task in &run.tasks {
                if !seen.insert(task.id.as_str()) {
                    tracing::debug!(
                        "run {} lists {} twice; keeping the first",
                        run.run_id,
                        task.id
                    );
                    continue;
                }
                task_ids.push(task.id.clone());
                touched.insert(task.id.clone());
                let row = TaskRunRow {
                    run_id: run.run_id.clone(),
                    started_at: run.started_at,
                    task: task.clone(),
                };
                t.rows
                    .insert((seq, task.id.as_str()), encode_task_row(&row)?.as_slice())?;
                if let Some(key) = &task.key {
                    keys.insert(key.as_str(), task.id.as_str());
                    let (f, o) = t
                        .outcomes
                        .get((task.id.as_str(), key.as_str()))?
                        .map(|g| g.value())
                        .unwrap_or((0, 0));
                    let failed = u64::from(task.status == TaskStatus::Failed);
                    let ok = u64::from(row_ok(task));
                    t.outcomes
                        .insert((task.id.as_str(), key.as_str()), (f + failed, o + ok))?;
                    let n = t.refs.get(key.as_str())?.map(|g| g.value()).unwrap_or(0);
                    t.refs.insert(key.as_str(), n + 1)?;
                }
            }
            let mut prune = Vec::new();
            for fp in fingerprints {
                let Some(owner) = keys.get(fp.key.as_str()) else {
                    tracing::debug!("fingerprint {} names no row of run {}", fp.key, run.run_id);
                    continue;
                };
                if t.fps.get(fp.key.as_str())?.is_none() {
                    t.fps
                        .insert(fp.key.as_str(), encode_fingerprint(fp)?.as_slice())?;
                    prune.push(*owner);
                }
            }
            t.prune_fingerprints(&prune, seq, FINGERPRINTS_PER_TASK)?;
            let mut head = run.clone();
            head.tasks = Vec::new();
            let stored = StoredRun { head, task_ids };
            t.runs.insert(seq, stored.encode()?.as_slice())?;
            t.ids.insert(run.run_id.as_str(), seq)?;

            // Retention: the oldest runs beyond `max_runs`, and runs older
            // than `max_age`; never the run just recorded.
            let cutoff = now_ms().saturating_sub(keep.max_age.as_millis() as u64);
            loop {
                let len = t.runs.len()?;
                let Some((first, started)) = t.runs.first()?.map(|(k, v)| {
                    (
                        k.value(),
                        StoredRun::decode(v.value()).map(|s| s.head.started_at),
                    )
                }) else {
                    break;
                };
                if first == seq {
                    break;
                }
                // An undecodable run is dropped as if it were old.
                let old = started.map(|s| s < cutoff).unwrap_or(true);
                if len as usize > keep.max_runs.max(1) || old {
                    t.drop_run(first, &mut touched)?;
                } else {
                    break;
                }
            }
        }
        if let Some(pause) = pause {
            std::thread::sleep(pause);
        }
        tx.commit()?;
        self.committed(old_generation);
        if let Ok(mut memo) = self.memo.lock() {
            memo.generation += 1;
            memo.stats.retain(|(task, _), _| !touched.contains(task));
        }
        if !p50s.is_empty() {
            if let Ok(mut m) = self.lists.lock() {
                m.extend(p50s);
            }
            self.lists_gen
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Whether a row's duration counts for scheduling: executed and successful.
pub(super) fn counts_as_duration(t: &TaskRun) -> bool {
    matches!(t.cache, CacheSource::Miss | CacheSource::Disabled)
        && t.status == TaskStatus::Success
        && !t.persistent
}

/// Whether a row counts as a good outcome for the mixed-outcome rule: it
/// executed successfully or came from the cache.
pub(super) fn row_ok(t: &TaskRun) -> bool {
    matches!(t.status, TaskStatus::Success | TaskStatus::Cached)
        || matches!(
            t.cache,
            CacheSource::Local | CacheSource::UpToDate | CacheSource::Remote
        )
}

/// The mutable tables of one write transaction.
pub(super) struct Tables<'a, 't> {
    pub(super) runs: &'a mut redb::Table<'t, u64, &'static [u8]>,
    pub(super) ids: &'a mut redb::Table<'t, &'static str, u64>,
    pub(super) rows: &'a mut redb::Table<'t, (u64, &'static str), &'static [u8]>,
    pub(super) outcomes: &'a mut redb::Table<'t, (&'static str, &'static str), (u64, u64)>,
    pub(super) refs: &'a mut redb::Table<'t, &'static str, u64>,
    pub(super) fps: &'a mut redb::Table<'t, &'static str, &'static [u8]>,
}

impl Tables<'_, '_> {
    /// Drops the fingerprints of each of `tasks` other than those of its
    /// `keep` newest distinct keys (its rows up to run `upto`, the one
    /// being recorded). The runs are read newest first, once for all the
    /// tasks, until each has `keep` keys.
    pub(super) fn prune_fingerprints(
        &mut self,
        tasks: &[&str],
        upto: u64,
        keep: usize,
    ) -> Result<(), HistoryError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut newest: HashMap<&str, Vec<String>> =
            tasks.iter().map(|t| (*t, Vec::new())).collect();
        let note = |list: &mut Vec<String>, bytes: &[u8]| {
            if list.len() >= keep {
                return;
            }
            let Ok(row) = decode_task_row(bytes) else {
                return;
            };
            if let Some(k) = row.task.key
                && !list.contains(&k)
            {
                list.push(k);
            }
        };
        let mut open: Vec<&str> = newest.keys().copied().collect();
        open.sort_unstable();
        let first = self.runs.first()?.map(|(k, _)| k.value()).unwrap_or(upto);
        for seq in (first.min(upto)..=upto).rev() {
            open.retain(|t| newest.get(t).is_some_and(|l| l.len() < keep));
            if open.is_empty() {
                break;
            }
            if open.len() <= POINT_LOOKUPS {
                for t in &open {
                    if let Some(v) = self.rows.get((seq, *t))?
                        && let Some(list) = newest.get_mut(t)
                    {
                        note(list, v.value());
                    }
                }
            } else {
                for item in self.rows.range(run_range(seq))? {
                    let (k, v) = item?;
                    if let Some(list) = newest.get_mut(k.value().1) {
                        note(list, v.value());
                    }
                }
            }
        }
        for (task, newest) in newest {
            let mut stale = Vec::new();
            for item in self.outcomes.range((task, "")..)? {
                let (k, _) = item?;
                let (t, key) = k.value();
                if t != task {
                    break;
                }
                if !newest.iter().any(|n| n == key) {
                    stale.push(key.to_string());
                }
            }
            for k in stale {
                self.fps.remove(k.as_str())?;
            }
        }
        Ok(())
    }

    /// Removes run `seq`, its rows (one contiguous range), its outcome
    /// counts and key references; fingerprints no retained row references
    /// go with it.
    pub(super) fn drop_run(
        &mut self,
        seq: u64,
        touched: &mut HashSet<String>,
    ) -> Result<(), HistoryError> {
        let stored = match self.runs.remove(seq)? {
            Some(v) => StoredRun::decode(v.value()).ok(),
            None => return Ok(()),
        };
        match &stored {
            Some(stored) => {
                self.ids.remove(stored.head.run_id.as_str())?;
            }
            None => tracing::warn!("dropping an undecodable run (seq {seq}) from the history"),
        }
        // (task id, the row) of every row of the run, removed at once.
        let mut gone: Vec<(String, Option<TaskRunRow>)> = Vec::new();
        for item in self.rows.extract_from_if(run_range(seq), |_, _| true)? {
            let (k, v) = item?;
            gone.push((k.value().1.to_string(), decode_task_row(v.value()).ok()));
        }
        for (id, row) in gone {
            touched.insert(id.clone());
            let Some(row) = row else { continue };
            let Some(key) = &row.task.key else { continue };
            let counts = self
                .outcomes
                .get((id.as_str(), key.as_str()))?
                .map(|g| g.value());
            if let Some((f, o)) = counts {
                let failed = u64::from(row.task.status == TaskStatus::Failed);
                let ok = u64::from(row_ok(&row.task));
                let (f, o) = (f.saturating_sub(failed), o.saturating_sub(ok));
                // (0, 0) cannot make a key mixed: forget it.
                if (f, o) == (0, 0) {
                    self.outcomes.remove((id.as_str(), key.as_str()))?;
                } else {
                    self.outcomes.insert((id.as_str(), key.as_str()), (f, o))?;
                }
            }
            let n = self.refs.get(key.as_str())?.map(|g| g.value()).unwrap_or(0);
            if n <= 1 {
                self.refs.remove(key.as_str())?;
                self.fps.remove(key.as_str())?;
            } else {
                self.refs.insert(key.as_str(), n - 1)?;
            }
        }
        Ok(())
    }
}
