//! A size and speed probe (3,000 tasks × 250 runs, 200 kept), not a test:
//! run with
//! `cargo test --release -p vxd --lib perf_probe -- --ignored --nocapture`.
//! Prints the per-record time (p50/max), the file's size, the reads
//! (`task_runs`, `stats` of every task, `why` of one) and a run's open.

use super::*;
use vx_proto::RunCounts;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn p50_max(times: &[Duration]) -> (String, String) {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    (ms(sorted[sorted.len() / 2]), ms(sorted[sorted.len() - 1]))
}

/// Issue 17's case: the same 3,000 tasks, fully cached with unchanged
/// keys, run after run (no fingerprints; 200 runs kept).
#[test]
#[ignore]
fn probe_fully_cached() {
    let d = tempfile::tempdir().unwrap();
    let h = History::open(d.path()).unwrap();
    let n = 3000u64;
    let runs = 250u64;
    let t0 = now_ms();
    let mut times = Vec::new();
    for r in 0..runs {
        let tasks: Vec<TaskRun> = (0..n)
            .map(|i| TaskRun {
                id: format!("p{i}#build"),
                status: TaskStatus::Cached,
                cache: CacheSource::Local,
                key: Some(format!("{:064x}", i * 7919)),
                exit_code: Some(0),
                attempts: 1,
                duration_ms: 1,
                start_ms: 0,
                end_ms: 1,
                slot: Some(0),
                cpu_ms: None,
                peak_rss_bytes: None,
                blocked_by: None,
                error: None,
                persistent: false,
                worker: None,
            })
            .collect();
        let run = RunRecord {
            run_id: format!("r{r}"),
            argv: vec![],
            requested: vec![],
            started_at: t0 + r,
            ended_at: t0 + r,
            duration_ms: 1,
            exit_code: 0,
            ok: true,
            concurrency: 2,
            counts: RunCounts::default(),
            tasks,
        };
        let s = Instant::now();
        h.record(&run, &[]).unwrap();
        times.push(s.elapsed());
    }
    let (p50, max) = p50_max(&times);
    let (lp50, lmax) = p50_max(&times[DEFAULT_MAX_RUNS..]);
    eprintln!(
        "fully cached: {runs} runs x {n} tasks: per record p50 {p50} max {max}; \
         with retention (runs {}..{runs}) p50 {lp50} max {lmax}; file {} MiB",
        DEFAULT_MAX_RUNS,
        std::fs::metadata(h.path()).unwrap().len() >> 20
    );
    let ids: Vec<String> = (0..n).map(|i| format!("p{i}#build")).collect();
    let s = Instant::now();
    h.task_runs("p7#build", DEFAULT_WINDOW).unwrap();
    eprintln!("fully cached: task_runs(p7, 50) {}", ms(s.elapsed()));
    let s = Instant::now();
    h.stats(&ids, DEFAULT_WINDOW).unwrap();
    eprintln!("fully cached: stats cold, all tasks {}", ms(s.elapsed()));
    let s = Instant::now();
    h.why("p7#build").unwrap();
    eprintln!("fully cached: why(p7) {}", ms(s.elapsed()));
    drop(h);
    for _ in 0..3 {
        let s = Instant::now();
        let _h = History::open_for_run(d.path(), Duration::from_secs(1)).unwrap();
        eprintln!("fully cached: open_for_run {}", ms(s.elapsed()));
    }
}

#[test]
#[ignore]
fn probe() {
    let d = tempfile::tempdir().unwrap();
    let h = History::open(d.path()).unwrap();
    let n = 3000;
    let runs = 250u64;
    let t0 = now_ms();
    let start = Instant::now();
    let mut times = Vec::new();
    for r in 0..runs {
        let tasks: Vec<TaskRun> = (0..n)
            .map(|i| TaskRun {
                id: format!("p{i}#build"),
                status: TaskStatus::Success,
                cache: if (i + r) % 3 == 0 {
                    CacheSource::Miss
                } else {
                    CacheSource::Local
                },
                key: Some(format!("{:064x}", i * 1000 + (r / 5))),
                exit_code: Some(0),
                attempts: 1,
                duration_ms: 100 + i,
                start_ms: 0,
                end_ms: 100,
                slot: Some(0),
                cpu_ms: None,
                peak_rss_bytes: None,
                blocked_by: None,
                error: None,
                persistent: false,
                worker: None,
            })
            .collect();
        let fps: Vec<Fingerprint> = tasks
            .iter()
            .filter(|t| t.cache == CacheSource::Miss)
            .map(|t| Fingerprint {
                key: t.key.clone().unwrap(),
                task: t.id.clone(),
                files: (0..20)
                    .map(|f| (format!("src/f{f}.ts"), format!("{:064x}", f)))
                    .collect(),
                ..Default::default()
            })
            .collect();
        let run = RunRecord {
            run_id: format!("r{r}"),
            argv: vec![],
            requested: vec![],
            started_at: t0 + r,
            ended_at: t0 + r,
            duration_ms: 1,
            exit_code: 0,
            ok: true,
            concurrency: 2,
            counts: RunCounts::default(),
            tasks,
        };
        let s = Instant::now();
        h.record(&run, &fps).unwrap();
        times.push(s.elapsed());
    }
    let mut sorted = times.clone();
    sorted.sort_unstable();
    // The records once retention drops a run per record (after 200).
    let mut late: Vec<Duration> = times[DEFAULT_MAX_RUNS..].to_vec();
    late.sort_unstable();
    eprintln!(
        "{runs} runs x {n} tasks recorded in {:?}: per record p50 {} max {}; \
         with retention (runs {}..{runs}) p50 {} max {}",
        start.elapsed(),
        ms(sorted[sorted.len() / 2]),
        ms(sorted[sorted.len() - 1]),
        DEFAULT_MAX_RUNS,
        ms(late[late.len() / 2]),
        ms(late[late.len() - 1]),
    );
    eprintln!(
        "file {} MiB",
        std::fs::metadata(h.path()).unwrap().len() >> 20
    );
    let ids: Vec<String> = (0..n).map(|i| format!("p{i}#build")).collect();
    let s = Instant::now();
    let rows = h.task_runs("p7#build", DEFAULT_WINDOW).unwrap();
    eprintln!(
        "task_runs(p7, 50) {} ({} rows)",
        ms(s.elapsed()),
        rows.len()
    );
    let s = Instant::now();
    let rows = h.task_runs("p7#build", 1000).unwrap();
    eprintln!(
        "task_runs(p7, all) {} ({} rows)",
        ms(s.elapsed()),
        rows.len()
    );
    let s = Instant::now();
    let st = h.stats(&ids, DEFAULT_WINDOW).unwrap();
    eprintln!(
        "stats cold, all tasks {} ({} tasks)",
        ms(s.elapsed()),
        st.len()
    );
    let s = Instant::now();
    h.stats(&ids, DEFAULT_WINDOW).unwrap();
    eprintln!("stats memo {}", ms(s.elapsed()));
    let s = Instant::now();
    h.run(None).unwrap();
    eprintln!("run(None) {}", ms(s.elapsed()));
    let s = Instant::now();
    h.why("p7#build").unwrap();
    eprintln!("why(p7) {}", ms(s.elapsed()));
    let s = Instant::now();
    h.task_ids().unwrap();
    eprintln!("task_ids {}", ms(s.elapsed()));
    let tx = h.db.begin_write().unwrap();
    let st = tx.stats().unwrap();
    eprintln!(
        "stored {} MiB, metadata {} MiB, fragmented {} MiB",
        st.stored_bytes() >> 20,
        st.metadata_bytes() >> 20,
        st.fragmented_bytes() >> 20
    );
    tx.abort().unwrap();
    // Per table: a record touches a row per task in `outcomes` and
    // `key_refs` (and per executed task in `durations`), spread over all
    // their leaves.
    let tx = h.db.begin_read().unwrap();
    let show = |name: &str, st: redb::TableStats| {
        eprintln!(
            "  {name}: {} leaf pages, stored {} KiB",
            st.leaf_pages(),
            st.stored_bytes() >> 10
        )
    };
    show("runs", tx.open_table(RUNS).unwrap().stats().unwrap());
    show(
        "run_rows",
        tx.open_table(TASK_ROWS).unwrap().stats().unwrap(),
    );
    show(
        "outcomes",
        tx.open_table(OUTCOMES).unwrap().stats().unwrap(),
    );
    show(
        "key_refs",
        tx.open_table(KEY_REFS).unwrap().stats().unwrap(),
    );
    show(
        "fingerprints",
        tx.open_table(FINGERPRINTS).unwrap().stats().unwrap(),
    );
    show(
        "durations",
        tx.open_table(DURATIONS).unwrap().stats().unwrap(),
    );
    drop(tx);
    let path = h.path().to_path_buf();
    drop(h);
    let s = Instant::now();
    let h = History::open(path.parent().unwrap()).unwrap();
    eprintln!(
        "reopen (compacts) in {}: file {} MiB",
        ms(s.elapsed()),
        std::fs::metadata(&path).unwrap().len() >> 20
    );
    drop(h);
    for _ in 0..3 {
        let s = Instant::now();
        let h = History::open_for_run(d.path(), Duration::from_secs(1)).unwrap();
        eprintln!(
            "open_for_run {} ({} bytes)",
            ms(s.elapsed()),
            std::fs::metadata(h.path()).map(|m| m.len()).unwrap_or(0)
        );
    }
}
