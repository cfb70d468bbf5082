//! Unit tests of the history (its submodules together).

use super::*;
use vx_proto::RunCounts;

fn task(id: &str, status: TaskStatus, cache: CacheSource, key: Option<&str>, ms: u64) -> TaskRun {
    TaskRun {
        id: id.into(),
        status,
        cache,
        key: key.map(str::to_string),
        exit_code: match status {
            TaskStatus::Failed => Some(1),
            TaskStatus::Success => Some(0),
            _ => None,
        },
        attempts: 1,
        duration_ms: ms,
        start_ms: 0,
        end_ms: ms,
        slot: Some(0),
        cpu_ms: None,
        peak_rss_bytes: None,
        blocked_by: None,
        error: None,
        persistent: false,
        worker: None,
    }
}

fn run(id: &str, started_at: u64, tasks: Vec<TaskRun>) -> RunRecord {
    let ok = tasks.iter().all(|t| t.status != TaskStatus::Failed);
    RunRecord {
        run_id: id.into(),
        argv: vec!["vx".into(), "run".into(), "build".into()],
        requested: vec!["build".into()],
        started_at,
        ended_at: started_at + 100,
        duration_ms: 100,
        exit_code: if ok { 0 } else { 1 },
        ok,
        concurrency: 2,
        counts: RunCounts {
            total: tasks.len(),
            ..Default::default()
        },
        tasks,
    }
}

fn fp(task: &str, key: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Fingerprint {
    Fingerprint {
        key: key.into(),
        task: task.into(),
        files: files
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        env: env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        config: "cfg".into(),
        command: "make".into(),
        upstream: vec![],
        args: "none".into(),
        plugins: vec![],
    }
}

fn open(d: &Path) -> History {
    History::open(d)
        .unwrap()
        .with_retention(200, Duration::from_secs(30 * 86_400))
}

#[test]
fn record_and_read_back() {
    let d = tempfile::tempdir().unwrap();
    let h = open(d.path());
    assert!(h.run(None).unwrap().is_none());
    let t0 = now_ms();
    let r1 = run(
        "run-aaa",
        t0,
        vec![
            task(
                "lib#build",
                TaskStatus::Success,
                CacheSource::Miss,
                Some("k1"),
                30,
            ),
            task(
                "app#build",
                TaskStatus::Failed,
                CacheSource::Miss,
                Some("k2"),
                10,
            ),
        ],
    );
    h.record(&r1, &[fp("lib#build", "k1", &[], &[])]).unwrap();
    let r2 = run(
        "run-bbb",
        t0 + 1000,
        vec![task(
            "lib#build",
            TaskStatus::Cached,
            CacheSource::Local,
            Some("k1"),
            1,
        )],
    );
    h.record(&r2, &[]).unwrap();

    let mut sorted = r1.clone();
    sorted.tasks.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(h.run(Some("run-aaa")).unwrap().unwrap(), sorted);
    assert_eq!(h.run(None).unwrap().unwrap(), r2);
    assert_eq!(h.run(Some("run-b")).unwrap().unwrap().run_id, "run-bbb");
    assert!(matches!(
        h.run(Some("run-")),
        Err(HistoryError::AmbiguousRun { .. })
    ));
    assert!(matches!(
        h.run(Some("nope")),
        Err(HistoryError::NoSuchRun(_))
    ));
    assert_eq!(h.last_failed().unwrap().unwrap().run_id, "run-aaa");
    let briefs = h.runs(10).unwrap();
    assert_eq!(
        briefs.iter().map(|b| b.run_id.as_str()).collect::<Vec<_>>(),
        ["run-bbb", "run-aaa"]
    );
    let rows = h.task_runs("lib#build", 10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].run_id, "run-bbb");
    assert_eq!(rows[1].task.duration_ms, 30);
    assert_eq!(h.task_ids().unwrap(), ["app#build", "lib#build"]);
    assert!(h.fingerprint("k1").unwrap().is_some());
    assert_eq!(h.run_counts(t0 + 500).unwrap(), (2, 1));

    // Reopening sees the same data.
    drop(h);
    let h = open(d.path());
    assert_eq!(h.runs(10).unwrap().len(), 2);
}

#[test]
fn retention_comes_from_the_request_env() {
    let env = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    const RUNS: &str = vx_proto::knobs::HISTORY_MAX_RUNS.name;
    const DAYS: &str = vx_proto::knobs::HISTORY_MAX_AGE_DAYS.name;
    let day = Duration::from_secs(86_400);
    type Case<'a> = (&'a [(&'a str, &'a str)], usize, Duration);
    let cases: &[Case] = &[
        (&[], DEFAULT_MAX_RUNS, day * DEFAULT_MAX_AGE_DAYS as u32),
        (&[(RUNS, " 5 ")], 5, day * 30),
        (&[(RUNS, "0")], 1, day * 30),
        (&[(RUNS, "many")], DEFAULT_MAX_RUNS, day * 30),
        (&[(DAYS, "2")], DEFAULT_MAX_RUNS, day * 2),
    ];
    for (pairs, runs, age) in cases {
        let keep = Retention::from_env(&env(pairs));
        assert_eq!((keep.max_runs, keep.max_age), (*runs, *age), "{pairs:?}");
    }
    // A run's retention applies to its own record, whatever the handle's.
    let d = tempfile::tempdir().unwrap();
    let h = open(d.path());
    let keep = Retention::from_env(&env(&[(RUNS, "2")]));
    for i in 0..4u64 {
        let r = run(&format!("r{i}"), now_ms() + i, vec![]);
        h.record_kept(&r, &[], keep).unwrap();
    }
    assert_eq!(h.runs(10).unwrap().len(), 2);
}

#[test]
fn retention_drops_old_runs_and_orphaned_fingerprints() {
    let d = tempfile::tempdir().unwrap();
    let h = open(d.path()).with_retention(2, Duration::from_secs(86_400));
    let t0 = now_ms();
    // Too old: dropped by age as soon as another run is recorded.
    let old = run(
        "r0",
        t0 - 2 * 86_400_000,
        vec![task(
            "a#b",
            TaskStatus::Success,
            CacheSource::Miss,
            Some("k0"),
            5,
        )],
    );
    h.record(&old, &[fp("a#b", "k0", &[], &[])]).unwrap();
    assert_eq!(
        h.runs(10).unwrap().len(),
        1,
        "the newest run is always kept"
    );
    for (i, key) in ["k1", "k2", "k3"].iter().enumerate() {
        let r = run(
            &format!("r{}", i + 1),
            t0 + i as u64,
            vec![task(
                "a#b",
                TaskStatus::Success,
                CacheSource::Miss,
                Some(key),
                5,
            )],
        );
        h.record(&r, &[fp("a#b", key, &[], &[])]).unwrap();
    }
    let ids: Vec<String> = h.runs(10).unwrap().into_iter().map(|b| b.run_id).collect();
    assert_eq!(ids, ["r3", "r2"]);
    assert!(h.fingerprint("k0").unwrap().is_none());
    assert!(h.fingerprint("k1").unwrap().is_none());
    assert!(h.fingerprint("k2").unwrap().is_some());
    assert!(h.fingerprint("k3").unwrap().is_some());
    assert_eq!(h.task_runs("a#b", 10).unwrap().len(), 2);
    assert!(matches!(h.run(Some("r1")), Err(HistoryError::NoSuchRun(_))));

    // A fingerprint shared by a retained run survives.
    let r = run(
        "r4",
        t0 + 10,
        vec![task(
            "a#b",
            TaskStatus::Cached,
            CacheSource::Local,
            Some("k3"),
            1,
        )],
    );
    h.record(&r, &[]).unwrap();
    assert!(h.fingerprint("k2").unwrap().is_none());
    assert!(h.fingerprint("k3").unwrap().is_some());
}

#[test]
fn only_the_newest_fingerprints_of_a_task_are_kept() {
    let d = tempfile::tempdir().unwrap();
    let h = open(d.path());
    let t0 = now_ms();
    let keys: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let r = run(
            &format!("r{i}"),
            t0 + i as u64,
            vec![
                task("a#b", TaskStatus::Success, CacheSource::Miss, Some(key), 5),
                task(
                    "c#d",
                    TaskStatus::Success,
                    CacheSource::Miss,
                    Some(&format!("c{i}")),
                    5,
                ),
            ],
        );
        h.record(
            &r,
            &[
                fp("a#b", key, &[], &[]),
                fp("c#d", &format!("c{i}"), &[], &[]),
            ],
        )
        .unwrap();
    }
    let kept: Vec<bool> = keys
        .iter()
        .map(|k| h.fingerprint(k).unwrap().is_some())
        .collect();
    assert_eq!(kept, [false, false, false, true, true, true, true]);
    assert!(h.fingerprint("c6").unwrap().is_some() && h.fingerprint("c2").unwrap().is_none());
    // A key that comes back counts as new again.
    let r = run(
        "again",
        t0 + 100,
        vec![task(
            "a#b",
            TaskStatus::Cached,
            CacheSource::Local,
            Some("k3"),
            1,
        )],
    );
    h.record(&r, &[]).unwrap();
    assert!(h.why("a#b").unwrap().compared);
}

#[test]
fn percentiles() {
    assert_eq!(percentile(&[], 0.5), None);
    assert_eq!(percentile(&[7], 0.99), Some(7));
    assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(3));
    assert_eq!(percentile(&[1, 2, 3, 4], 0.99), Some(4));
    let v: Vec<u64> = (1..=100).collect();
    assert_eq!(percentile(&v, 0.5), Some(51));
    assert_eq!(percentile(&v, 0.99), Some(100));
}

fn record_rows(h: &History, rows: Vec<TaskRun>) {
    let t0 = now_ms();
    for (i, t) in rows.into_iter().enumerate() {
        h.record(&run(&format!("r{i:03}"), t0 + i as u64, vec![t]), &[])
            .unwrap();
    }
}

#[test]
fn why_at_an_older_run_compares_the_keys_before_it() {
    let d = tempfile::tempdir().unwrap();
    let h = open(d.path());
    let fp = |key: &str, hash: &str| Fingerprint {
        key: key.into(),
        task: "a#b".into(),
        files: vec![("a/src.txt".into(), hash.into())],
        ..Default::default()
    };
    for (i, (key, hash)) in [("k1", "h1"), ("k2", "h2"), ("k3", "h3")]
        .iter()
        .enumerate()
    {
        let rows = vec![task(
            "a#b",
            TaskStatus::Success,
            CacheSource::Miss,
            Some(key),
            10,
        )];
        h.record(
            &run(&format!("run{i}"), now_ms() + i as u64, rows),
            &[fp(key, hash)],
        )
        .unwrap();
    }
    let latest = h.why("a#b").unwrap();
    assert_eq!(latest.key.as_deref(), Some("k3"));
    assert_eq!(latest.previous_key.as_deref(), Some("k2"));
    let older = h.why_at("a#b", Some("run1")).unwrap();
    assert_eq!(older.key.as_deref(), Some("k2"));
    assert_eq!(older.previous_key.as_deref(), Some("k1"));
    assert!(older.compared);
    assert!(matches!(
        h.why_at("a#b", Some("nope")),
        Err(HistoryError::NoSuchRun(_))
    ));
}

#[test]
fn durations_count_executed_successes_only_and_survive_reopen() {
    let d = tempfile::tempdir().unwrap();
    {
        let h = open(d.path());
        let ms = [100u64, 300, 200];
        for (i, &m) in ms.iter().enumerate() {
            let rows = vec![
                task("a#b", TaskStatus::Success, CacheSource::Miss, Some("k"), m),
                task("c#d", TaskStatus::Cached, CacheSource::Local, Some("k2"), 5),
            ];
            h.record(&run(&format!("r{i}"), 1000 + i as u64, rows), &[])
                .unwrap();
        }
        // A failure and a hit do not move the median.
        let rows = vec![task(
            "a#b",
            TaskStatus::Failed,
            CacheSource::Miss,
            Some("k"),
            9000,
        )];
        h.record(&run("r9", 2000, rows), &[]).unwrap();
        let ids = vec!["a#b".to_string(), "c#d".to_string()];
        let d1 = h.durations(&ids, DEFAULT_WINDOW).unwrap();
        assert_eq!(d1.get("a#b"), Some(&200));
        assert_eq!(d1.get("c#d"), None);
    }
    let h = open(d.path());
    let d2 = h.durations(&["a#b".to_string()], DEFAULT_WINDOW).unwrap();
    assert_eq!(d2.get("a#b"), Some(&200));
    assert_eq!(
        h.durations(&["a#b".to_string()], 1).unwrap().get("a#b"),
        Some(&200)
    );
}

#[test]
fn durations_of_many_tasks_read_in_one_pass_equal_one_look_up_each() {
    let d = tempfile::tempdir().unwrap();
    {
        let h = open(d.path());
        // Tasks t0..t99 executed with durations of their own; t100..t199
        // only hit; and an id never recorded.
        for r in 0..3u64 {
            let rows = (0..200u64)
                .map(|i| {
                    let (status, cache) = if i < 100 {
                        (TaskStatus::Success, CacheSource::Miss)
                    } else {
                        (TaskStatus::Cached, CacheSource::Local)
                    };
                    task(&format!("t{i}"), status, cache, Some("k"), i * 10 + r)
                })
                .collect();
            h.record(&run(&format!("r{r}"), 1000 + r, rows), &[])
                .unwrap();
        }
    }
    let mut ids: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    ids.push("never".to_string());
    assert!(ids.len() >= super::query::SCAN_DURATIONS_FROM);
    // A fresh handle for each way of asking (the lists are memoised).
    let many = open(d.path()).durations(&ids, DEFAULT_WINDOW).unwrap();
    let one = open(d.path());
    let mut each = HashMap::new();
    for id in &ids {
        each.extend(
            one.durations(std::slice::from_ref(id), DEFAULT_WINDOW)
                .unwrap(),
        );
    }
    assert_eq!(many, each);
    assert_eq!(many.len(), 100);
    assert_eq!(many.get("t7"), Some(&71));
    // The memoised lists answer the next question the same.
    let h = open(d.path());
    let first = h.durations(&ids, DEFAULT_WINDOW).unwrap();
    assert_eq!(h.durations(&ids, 1).unwrap().get("t7"), Some(&72));
    assert_eq!(first, many);
}

#[test]
fn stats_and_failure_modes() {
    let d = tempfile::tempdir().unwrap();
    let h = open(d.path());
    // stable: executes and hits, never fails.
    let mut rows = Vec::new();
    for i in 0..6u64 {
        rows.push(task(
            "a#stable",
            TaskStatus::Success,
            CacheSource::Miss,
            Some(&format!("s{i}")),
            100 + i,
        ));
        rows.push(task(
            "a#stable",
            TaskStatus::Cached,
            CacheSource::Local,
            Some(&format!("s{i}")),
            1,
        ));
    }
    // recoverable: one retried success among ten.
    for i in 0..10u64 {
        let mut t = task(
            "a#retry",
            TaskStatus::Success,
            CacheSource::Miss,
            Some(&format!("r{i}")),
            50,
        );
        if i == 3 {
            t.attempts = 2;
        }
        rows.push(t);
    }
    // fatal: the same key fails and succeeds, often.
    for i in 0..6 {
        let status = if i % 2 == 0 {
            TaskStatus::Failed
        } else {
            TaskStatus::Success
        };
        rows.push(task("a#fatal", status, CacheSource::Miss, Some("same"), 20));
    }
    // failing but deterministic: different keys fail, none succeeds → stable.
    for i in 0..3 {
        rows.push(task(
            "a#broken",
            TaskStatus::Failed,
            CacheSource::Miss,
            Some(&format!("b{i}")),
            5,
        ));
    }
    record_rows(&h, rows);
    let ids: Vec<String> = ["a#stable", "a#retry", "a#fatal", "a#broken", "a#none"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let s = h.stats(&ids, 50).unwrap();
    assert!(!s.contains_key("a#none"));
    let st = &s["a#stable"];
    assert_eq!(
        (st.total, st.successes, st.hits, st.executed, st.failures),
        (12, 6, 6, 6, 0)
    );
    assert_eq!(st.failure_mode, FailureMode::Stable);
    assert_eq!(st.p50_ms, Some(103));
    assert_eq!(st.p99_ms, Some(105));
    assert!((st.hit_rate - 0.5).abs() < 1e-9);
    assert_eq!(s["a#retry"].retried, 1);
    assert_eq!(s["a#retry"].failure_mode, FailureMode::FlakyRecoverable);
    assert_eq!(s["a#fatal"].mixed_outcome_keys, 1);
    assert_eq!(s["a#fatal"].failure_mode, FailureMode::FlakyFatal);
    assert_eq!(s["a#broken"].failure_mode, FailureMode::Stable);
    assert_eq!(s["a#broken"].p50_ms, None);

    // The window counts only the newest rows; durations take the newest
    // `window` executed successes.
    let w = h.stats(&ids[..1], 2).unwrap();
    assert_eq!(w["a#stable"].total, 2);
    assert_eq!(w["a#stable"].p50_ms, Some(105));
    let durs = h.durations(&ids, 50).unwrap();
    assert_eq!(durs.get("a#stable"), Some(&103));
    assert!(!durs.contains_key("a#broken"));

    // The memo is dropped for a task a new run touches.
    h.record(
        &run(
            "zzz",
            now_ms() + 10_000,
            vec![task(
                "a#broken",
                TaskStatus::Success,
                CacheSource::Miss,
                Some("b2"),
                7,
            )],
        ),
        &[],
    )
    .unwrap();
    let s = h.stats(&ids, 50).unwrap();
    assert_eq!(s["a#broken"].total, 4);
    assert_eq!(s["a#broken"].mixed_outcome_keys, 1);
    assert_eq!(s["a#broken"].failure_mode, FailureMode::FlakyFatal);
    assert_eq!(s["a#stable"].total, 12);
}

#[test]
fn classify_rules() {
    assert_eq!(classify(10, 0, 0, 0), FailureMode::Stable);
    assert_eq!(classify(10, 3, 0, 0), FailureMode::Stable);
    assert_eq!(classify(10, 1, 0, 1), FailureMode::FlakyRecoverable);
    assert_eq!(classify(10, 2, 0, 1), FailureMode::FlakyFatal);
    assert_eq!(classify(10, 0, 1, 0), FailureMode::FlakyRecoverable);
}

#[test]
fn why_names_the_changed_parts() {
    let d = tempfile::tempdir().unwrap();
    let h = open(d.path());
    let t0 = now_ms();
    let id = "app#build";
    let mut old = fp(
        id,
        "k1",
        &[("src/a.ts", "h1"), ("src/b.ts", "h2")],
        &[("FOO", "x"), ("BAR", "y")],
    );
    old.upstream = vec![("lib#build".into(), "u1".into())];
    let mut new = fp(
        id,
        "k2",
        &[("src/a.ts", "h1b"), ("src/c.ts", "h3")],
        &[("FOO", "x2"), ("BAR", "y")],
    );
    new.upstream = vec![("lib#build".into(), "u2".into())];
    new.command = "make all".into();
    h.record(
        &run(
            "r1",
            t0,
            vec![task(
                id,
                TaskStatus::Success,
                CacheSource::Miss,
                Some("k1"),
                5,
            )],
        ),
        &[old],
    )
    .unwrap();
    // A hit with the same key in between does not count as a change.
    h.record(
        &run(
            "r2",
            t0 + 1,
            vec![task(
                id,
                TaskStatus::Cached,
                CacheSource::Local,
                Some("k1"),
                1,
            )],
        ),
        &[],
    )
    .unwrap();
    h.record(
        &run(
            "r3",
            t0 + 2,
            vec![task(
                id,
                TaskStatus::Success,
                CacheSource::Miss,
                Some("k2"),
                5,
            )],
        ),
        &[new],
    )
    .unwrap();
    let w = h.why(id).unwrap();
    assert!(w.compared);
    assert_eq!(w.key.as_deref(), Some("k2"));
    assert_eq!(w.previous_key.as_deref(), Some("k1"));
    assert_eq!(w.previous_run_id.as_deref(), Some("r2"));
    let got: Vec<(Component, Option<&str>, ChangeKind)> = w
        .changes
        .iter()
        .map(|c| (c.component, c.name.as_deref(), c.kind))
        .collect();
    assert_eq!(
        got,
        [
            (Component::File, Some("src/a.ts"), ChangeKind::Changed),
            (Component::File, Some("src/b.ts"), ChangeKind::Removed),
            (Component::File, Some("src/c.ts"), ChangeKind::Added),
            (Component::Env, Some("FOO"), ChangeKind::Changed),
            (Component::Command, None, ChangeKind::Changed),
            (Component::Upstream, Some("lib#build"), ChangeKind::Changed),
        ]
    );
    let advice = w.advice.join("\n");
    assert!(advice.contains("the value of FOO changed"), "{advice}");
    assert!(advice.contains("vx why lib#build"), "{advice}");
    assert!(advice.contains("src/a.ts"), "{advice}");

    // Same key throughout; and a key only ever restored.
    h.record(
        &run(
            "r4",
            t0 + 3,
            vec![task(
                "x#t",
                TaskStatus::Success,
                CacheSource::Miss,
                Some("s"),
                5,
            )],
        ),
        &[],
    )
    .unwrap();
    let w = h.why("x#t").unwrap();
    assert!(!w.compared && w.previous_key.is_none());
    assert!(w.advice[0].contains("same key"));
    h.record(
        &run(
            "r5",
            t0 + 4,
            vec![task(
                "x#t",
                TaskStatus::Cached,
                CacheSource::Local,
                Some("s2"),
                1,
            )],
        ),
        &[],
    )
    .unwrap();
    let w = h.why("x#t").unwrap();
    assert!(!w.compared);
    assert!(
        w.advice.iter().any(|a| a.contains("only ever restored")),
        "{:?}",
        w.advice
    );
    assert!(matches!(h.why("nope#x"), Err(HistoryError::NoTaskRuns(_))));
}

#[test]
fn critical_path_priorities() {
    // 0 → 1 → 2 (2 depends on 1 depends on 0), 3 depends on 0.
    let deps = vec![vec![], vec![0], vec![1], vec![0]];
    let mut dependents = vec![Vec::new(); 4];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let own = [Some(10), Some(100), Some(1000), None];
    // median of [10, 100, 1000] = 100 for node 3.
    assert_eq!(
        critical_path(&deps, &dependents, &own),
        vec![1110, 1100, 1000, 100]
    );
    // Nothing known: 1000 ms each.
    assert_eq!(
        critical_path(&deps, &dependents, &[None; 4]),
        vec![3000, 2000, 1000, 1000]
    );
    // A cycle does not hang; its nodes get their own duration.
    let deps = vec![vec![1], vec![0]];
    let dependents = vec![vec![1], vec![0]];
    assert_eq!(
        critical_path(&deps, &dependents, &[Some(5), Some(7)]),
        vec![5, 7]
    );
    assert!(critical_path(&[], &[], &[]).is_empty());
}

/// Two handles stand for two processes (the daemon's and a foreground
/// run's): each sees the other's records, and memos follow.
#[test]
fn two_handles_share_the_history_and_memos_follow() {
    let d = tempfile::tempdir().unwrap();
    let daemon = open(d.path());
    let fg = open(d.path());
    let t0 = now_ms();
    let ok = |ms| {
        task(
            "a#build",
            TaskStatus::Success,
            CacheSource::Miss,
            Some("k1"),
            ms,
        )
    };
    daemon.record(&run("r1", t0, vec![ok(100)]), &[]).unwrap();
    let ids = vec!["a#build".to_string()];
    assert_eq!(daemon.durations(&ids, 50).unwrap()["a#build"], 100);
    assert_eq!(daemon.stats(&ids, 50).unwrap()["a#build"].total, 1);
    // The foreground run records twice; the daemon's memos go.
    fg.record(&run("r2", t0 + 1_000, vec![ok(300)]), &[])
        .unwrap();
    fg.record(&run("r3", t0 + 2_000, vec![ok(300)]), &[])
        .unwrap();
    assert_eq!(daemon.stats(&ids, 50).unwrap()["a#build"].total, 3);
    assert_eq!(daemon.durations(&ids, 50).unwrap()["a#build"], 300);
    assert_eq!(daemon.runs(10).unwrap().len(), 3);
}

#[test]
fn corrupt_and_locked_are_told_apart() {
    let d = tempfile::tempdir().unwrap();
    let h = open(d.path());
    // Handles share the file (as processes do)...
    let h2 = History::open(d.path()).unwrap();
    drop((h, h2));
    // ...unless one holds it exclusively (a vx before multi-writer).
    let old = redb::Database::create(d.path().join(FILE_NAME)).unwrap();
    let e = History::open(d.path()).unwrap_err();
    assert!(e.is_locked(), "{e}");
    drop(old);
    std::fs::write(
        d.path().join(FILE_NAME),
        b"this is not a redb file at all, not at all",
    )
    .unwrap();
    let e = History::open(d.path()).unwrap_err();
    assert!(e.is_corrupt(), "{e}");
}

#[test]
fn a_damaged_history_is_moved_aside_once_and_never_kept_open() {
    for (what, damage) in crate::cache::damages() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        {
            let h = shared(&dir).unwrap();
            h.record(&run("r1", now_ms(), vec![]), &[]).unwrap();
            release(&dir);
        }
        std::fs::write(dir.join("history.redb.broken-1"), "old").unwrap();
        damage(&dir.join(FILE_NAME));
        // The daemon's handle: one error, nothing kept, then a new history.
        let e = shared(&dir).unwrap_err();
        assert!(e.is_corrupt(), "{what}: {e}");
        assert!(e.to_string().contains("moved it aside"), "{what}: {e}");
        let h = shared(&dir).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(h.run(None).unwrap().is_none(), "{what}");
        h.record(&run("r2", now_ms(), vec![]), &[]).unwrap();
        let broken: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("history.redb.broken-")
            })
            .collect();
        assert_eq!(broken.len(), 1, "{what}");
        release(&dir);
    }
}

#[test]
fn shared_handle_follows_a_deleted_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cache");
    let a = shared(&dir).unwrap();
    assert!(Arc::ptr_eq(&a, &shared(&dir).unwrap()));
    a.record(&run("r1", now_ms(), vec![]), &[]).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let b = shared(&dir).unwrap();
    assert!(!Arc::ptr_eq(&a, &b));
    assert!(b.run(None).unwrap().is_none());
}

/// The rows' (seq, task) keys and the retained runs' seqs, as stored.
fn stored_rows(h: &History) -> (Vec<(u64, String)>, Vec<u64>) {
    let tx = h.db.begin_read().unwrap();
    let rows = tx.open_table(TASK_ROWS).unwrap();
    let runs = tx.open_table(RUNS).unwrap();
    let keys = rows
        .iter()
        .unwrap()
        .map(|i| {
            let (k, _) = i.unwrap();
            (k.value().0, k.value().1.to_string())
        })
        .collect();
    let seqs = runs.iter().unwrap().map(|i| i.unwrap().0.value()).collect();
    (keys, seqs)
}

/// Retention (and a run id recorded again) drops a run's whole range of
/// rows, its outcome counts and key references: what is left is exactly
/// the rows of the retained runs.
#[test]
fn dropping_a_run_drops_its_whole_range() {
    struct Case {
        what: &'static str,
        max_runs: usize,
        /// Run ids recorded in order (one may repeat), with how many tasks.
        record: &'static [(&'static str, usize)],
        /// The run ids left, newest first.
        kept: &'static [&'static str],
    }
    let cases = [
        Case {
            what: "by count",
            max_runs: 2,
            record: &[("r1", 3), ("r2", 2), ("r3", 4), ("r4", 1)],
            kept: &["r4", "r3"],
        },
        Case {
            what: "a run id recorded again replaces its range",
            max_runs: 10,
            record: &[("r1", 3), ("r2", 2), ("r1", 1)],
            kept: &["r1", "r2"],
        },
        Case {
            what: "down to the newest run",
            max_runs: 1,
            record: &[("r1", 5), ("r2", 3), ("r3", 2)],
            kept: &["r3"],
        },
    ];
    for c in cases {
        let d = tempfile::tempdir().unwrap();
        let h = open(d.path()).with_retention(c.max_runs, Duration::from_secs(86_400));
        let t0 = now_ms();
        let mut tasks_of = HashMap::new();
        for (i, (id, n)) in c.record.iter().enumerate() {
            let tasks: Vec<TaskRun> = (0..*n)
                .map(|t| {
                    task(
                        &format!("t{t}#b"),
                        TaskStatus::Success,
                        CacheSource::Miss,
                        Some(&format!("{id}-{i}-{t}")),
                        5,
                    )
                })
                .collect();
            tasks_of.insert(*id, *n);
            h.record(&run(id, t0 + i as u64, tasks), &[]).unwrap();
        }
        let kept: Vec<String> = h.runs(10).unwrap().into_iter().map(|b| b.run_id).collect();
        assert_eq!(kept, c.kept, "{}", c.what);
        let (rows, seqs) = stored_rows(&h);
        let want: usize = c.kept.iter().map(|id| tasks_of[id]).sum();
        assert_eq!(rows.len(), want, "{}: {rows:?}", c.what);
        assert!(
            rows.iter().all(|(s, _)| seqs.contains(s)),
            "{}: rows of dropped runs left: {rows:?} (runs {seqs:?})",
            c.what
        );
        // Outcomes and key references follow the rows.
        let tx = h.db.begin_read().unwrap();
        let refs = tx.open_table(KEY_REFS).unwrap();
        let outcomes = tx.open_table(OUTCOMES).unwrap();
        assert_eq!(refs.len().unwrap() as usize, want, "{}", c.what);
        assert_eq!(outcomes.len().unwrap() as usize, want, "{}", c.what);
        for id in c.kept {
            let r = h.run(Some(id)).unwrap().unwrap();
            assert_eq!(r.tasks.len(), tasks_of[id], "{}", c.what);
        }
    }
}

/// Everything a history answers, to compare two files by.
fn everything(h: &History) -> String {
    let ids = h.task_ids().unwrap();
    let mut out = format!("{:?}\n{:?}\n", h.runs(100).unwrap(), ids);
    for b in h.runs(100).unwrap() {
        out += &format!("{:?}\n", h.run(Some(&b.run_id)).unwrap());
        for id in &ids {
            out += &format!("{:?}\n", h.why_at(id, Some(&b.run_id)).ok());
        }
    }
    out += &format!(
        "{:?}\n{:?}\n",
        h.run(None).unwrap(),
        h.last_failed().unwrap()
    );
    let mut stats: Vec<_> = h.stats(&ids, 50).unwrap().into_iter().collect();
    stats.sort_by(|a, b| a.0.cmp(&b.0));
    out += &format!("{stats:?}\n");
    for window in [1, 2, 3] {
        let mut s: Vec<_> = h.stats(&ids, window).unwrap().into_iter().collect();
        s.sort_by(|a, b| a.0.cmp(&b.0));
        out += &format!("{s:?}\n");
    }
    for id in &ids {
        out += &format!(
            "{:?}\n{:?}\n{:?}\n",
            h.task_runs(id, 100).unwrap(),
            h.task_runs(id, 2).unwrap(),
            h.why(id).unwrap()
        );
    }
    out
}

/// A history with several runs, keys, failures and fingerprints.
fn varied_history(h: &History) {
    let t0 = now_ms();
    for r in 0..6u64 {
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let key = format!("k{t}-{}", r / 2);
            let status = if t == 1 && r % 3 == 0 {
                TaskStatus::Failed
            } else {
                TaskStatus::Success
            };
            let cache = if (r + t) % 2 == 0 {
                CacheSource::Miss
            } else {
                CacheSource::Local
            };
            tasks.push(task(
                &format!("p{t}#build"),
                status,
                cache,
                Some(&key),
                10 * r + t,
            ));
        }
        tasks.push(task(
            "root#all",
            TaskStatus::Skipped,
            CacheSource::Miss,
            None,
            0,
        ));
        let fps: Vec<Fingerprint> = tasks
            .iter()
            .filter(|t| t.cache == CacheSource::Miss && t.key.is_some())
            .map(|t| {
                let key = t.key.clone().unwrap();
                fp(&t.id, &key, &[("src/a.ts", key.as_str())], &[("MODE", "x")])
            })
            .collect();
        h.record(&run(&format!("run-{r}"), t0 + r, tasks), &fps)
            .unwrap();
    }
}

/// The rows as files before `run_rows` stored them (the old definition,
/// written out here on purpose).
const OLD_ROWS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("task_rows");

/// Rewrites a history file's rows into the old layout.
fn to_old_layout(path: &Path) {
    let db = crate::cache::open_shared(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let rows = tx.open_table(TASK_ROWS).unwrap();
        let mut old = tx.open_table(OLD_ROWS).unwrap();
        for item in rows.iter().unwrap() {
            let (k, v) = item.unwrap();
            let (seq, task) = k.value();
            old.insert((task, seq), v.value()).unwrap();
        }
    }
    assert!(tx.delete_table(TASK_ROWS).unwrap());
    {
        // A row of no retained run (an undecodable run dropped) is not
        // carried over...
        let mut old = tx.open_table(OLD_ROWS).unwrap();
        old.insert(("ghost#build", 99), b"{}".as_slice()).unwrap();
        // ...and rows of dropped runs an older vx left in `run_rows` go.
        let mut rows = tx.open_table(TASK_ROWS).unwrap();
        rows.insert((98, "p0#build"), b"{}".as_slice()).unwrap();
    }
    tx.commit().unwrap();
}

fn tables(path: &Path) -> Vec<String> {
    let db = crate::cache::open_shared(path).unwrap();
    let tx = db.begin_read().unwrap();
    let mut names: Vec<String> = tx
        .list_tables()
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    names.sort();
    names
}

/// A file written in the old layout (rows keyed by task, then run) reads
/// exactly as before once opened: the rows are converted at open and the
/// old table goes; several handles opening it at once convert it once.
#[test]
fn an_old_layout_file_is_converted_at_open() {
    for openers in [1usize, 2, 4] {
        let d = tempfile::tempdir().unwrap();
        let before = {
            let h = open(d.path());
            varied_history(&h);
            everything(&h)
        };
        let path = d.path().join(FILE_NAME);
        to_old_layout(&path);
        let names = tables(&path);
        assert!(names.contains(&"task_rows".to_string()), "{names:?}");
        // Handles stand for processes opening the file at once.
        let handles: Vec<History> = std::thread::scope(|s| {
            let joins: Vec<_> = (0..openers)
                .map(|i| {
                    let dir = d.path();
                    s.spawn(move || {
                        if i % 2 == 0 {
                            History::open(dir).unwrap()
                        } else {
                            History::open_for_run(dir, Duration::from_secs(5)).unwrap()
                        }
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        for h in &handles {
            assert_eq!(everything(h), before, "{openers} openers");
            assert!(h.task_runs("ghost#build", 10).unwrap().is_empty());
            let (rows, seqs) = stored_rows(h);
            assert!(rows.iter().all(|(s, _)| seqs.contains(s)), "{rows:?}");
        }
        drop(handles);
        let names = tables(&path);
        assert!(!names.contains(&"task_rows".to_string()), "{names:?}");
        // Recording goes on in the new layout.
        let h = open(d.path());
        h.record(
            &run(
                "run-new",
                now_ms() + 100,
                vec![task(
                    "p0#build",
                    TaskStatus::Cached,
                    CacheSource::Local,
                    Some("k0-2"),
                    1,
                )],
            ),
            &[],
        )
        .unwrap();
        assert_eq!(h.task_runs("p0#build", 1).unwrap()[0].run_id, "run-new");
        // A second conversion finds nothing to do.
        assert!(!convert_task_rows(&h.db).unwrap());
    }
}
