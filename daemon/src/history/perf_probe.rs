//! A size and speed probe (1,000 tasks × 250 runs), not a test: run with
//! `cargo test --release -p vxd --lib perf_probe -- --ignored --nocapture`.

use super::*;
use vx_proto::RunCounts;
#[test]
#[ignore]
fn probe() {
    let d = tempfile::tempdir().unwrap();
    let h = History::open(d.path()).unwrap();
    let n = 1000;
    let t0 = now_ms();
    let start = Instant::now();
    let mut rec_max = Duration::ZERO;
    for r in 0..250u64 {
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
        rec_max = rec_max.max(s.elapsed());
    }
    eprintln!(
        "250 runs x {n} tasks recorded in {:?} (max {:?})",
        start.elapsed(),
        rec_max
    );
    let ids: Vec<String> = (0..n).map(|i| format!("p{i}#build")).collect();
    let s = Instant::now();
    let st = h.stats(&ids, 50).unwrap();
    eprintln!("stats cold {:?} ({} tasks)", s.elapsed(), st.len());
    let s = Instant::now();
    h.stats(&ids, 50).unwrap();
    eprintln!("stats memo {:?}", s.elapsed());
    let s = Instant::now();
    h.run(None).unwrap();
    eprintln!("run(None) {:?}", s.elapsed());
    let s = Instant::now();
    h.why("p7#build").unwrap();
    eprintln!("why {:?}", s.elapsed());
    eprintln!(
        "file {} MiB",
        std::fs::metadata(h.path()).unwrap().len() >> 20
    );
    let tx = h.db.begin_write().unwrap();
    let st = tx.stats().unwrap();
    eprintln!(
        "stored {} MiB, metadata {} MiB, fragmented {} MiB",
        st.stored_bytes() >> 20,
        st.metadata_bytes() >> 20,
        st.fragmented_bytes() >> 20
    );
    tx.abort().unwrap();
    let path = h.path().to_path_buf();
    drop(h);
    let s = Instant::now();
    let h = History::open(path.parent().unwrap()).unwrap();
    eprintln!(
        "reopen (compacts) in {:?}: file {} MiB",
        s.elapsed(),
        std::fs::metadata(&path).unwrap().len() >> 20
    );
    drop(h);
    for _ in 0..3 {
        let s = Instant::now();
        let h = History::open_for_run(d.path(), Duration::from_secs(1)).unwrap();
        eprintln!(
            "open_for_run {:?} ({} bytes)",
            s.elapsed(),
            std::fs::metadata(h.path()).map(|m| m.len()).unwrap_or(0)
        );
    }
}
