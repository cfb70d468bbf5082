//! `profile` — what a recorded run looks like to other tools: a Chrome
//! trace (`--profile=FILE`, for `chrome://tracing` / Perfetto) and a
//! markdown report (`--report`, a CI job summary).
//!
//! Owns the two output formats. Pure functions over a [`RunRecord`]: never
//! touches the filesystem, the history store or the wire.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use vx_proto::history::{RunRecord, TaskStats};
use vx_proto::{CacheSource, TaskStatus};

const PID: u64 = 1;

fn status_str(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Success => "success",
        TaskStatus::Cached => "cached",
        TaskStatus::Failed => "failed",
        TaskStatus::Skipped => "skipped",
        TaskStatus::Aborted => "aborted",
        TaskStatus::Running => "running",
    }
}

fn cache_str(c: CacheSource) -> &'static str {
    match c {
        CacheSource::Miss => "miss",
        CacheSource::Local => "local",
        CacheSource::UpToDate => "up-to-date",
        CacheSource::Disabled => "disabled",
        CacheSource::Remote => "remote",
    }
}

/// The run as a Chrome Trace Event document: one thread per concurrency
/// slot (`tid` = slot + 1, named `slot N`), tasks without a slot on a
/// `cache` lane (tid 0) laid out so they never overlap, one complete event
/// (`ph: "X"`, microseconds) per task that has a duration or a slot.
pub fn chrome_trace(run: &RunRecord) -> Value {
    let mut events = vec![json!({
        "name": "process_name", "ph": "M", "pid": PID, "tid": 0,
        "args": {"name": format!("vx run {}", run.requested.join(" "))},
    })];
    let mut slots: Vec<u32> = run.tasks.iter().filter_map(|t| t.slot).collect();
    slots.sort_unstable();
    slots.dedup();
    let cache_lane = run.tasks.iter().any(|t| t.slot.is_none());
    if cache_lane {
        events.push(json!({"name": "thread_name", "ph": "M", "pid": PID, "tid": 0, "args": {"name": "cache"}}));
        events.push(json!({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": 0, "args": {"sort_index": u32::MAX}}));
    }
    for s in &slots {
        let tid = u64::from(*s) + 1;
        events.push(json!({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": format!("slot {s}")}}));
        events.push(json!({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid, "args": {"sort_index": s}}));
    }
    let mut tasks: Vec<_> = run.tasks.iter().collect();
    tasks.sort_by_key(|t| (t.start_ms, t.id.clone()));
    // Slotless tasks share one lane: push each after the previous one ends.
    let mut cache_free_us = 0u64;
    for t in tasks {
        let mut ts = t.start_ms.saturating_mul(1000);
        let dur = t.end_ms.saturating_sub(t.start_ms).saturating_mul(1000);
        let tid = match t.slot {
            Some(s) => u64::from(s) + 1,
            None => {
                ts = ts.max(cache_free_us);
                cache_free_us = ts + dur;
                0
            }
        };
        let mut args = serde_json::Map::new();
        args.insert("status".into(), json!(status_str(t.status)));
        args.insert("cache".into(), json!(cache_str(t.cache)));
        args.insert("attempts".into(), json!(t.attempts));
        if let Some(k) = &t.key {
            args.insert("key".into(), json!(k));
        }
        if let Some(c) = t.exit_code {
            args.insert("exit_code".into(), json!(c));
        }
        if let Some(c) = t.cpu_ms {
            args.insert("cpu_ms".into(), json!(c));
        }
        if let Some(r) = t.peak_rss_bytes {
            args.insert("peak_rss_bytes".into(), json!(r));
        }
        if let Some(e) = &t.error {
            args.insert("error".into(), json!(e));
        }
        if let Some(b) = &t.blocked_by {
            args.insert("blocked_by".into(), json!(b));
        }
        events.push(json!({
            "name": t.id,
            "cat": status_str(t.status),
            "ph": "X",
            "pid": PID,
            "tid": tid,
            "ts": ts,
            "dur": dur,
            "args": args,
        }));
    }
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "run_id": run.run_id,
            "argv": run.argv,
            "started_at": run.started_at,
            "concurrency": run.concurrency,
            "exit_code": run.exit_code,
        },
    })
}

fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Escapes text for a markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// How many executed tasks the report lists as slowest.
const SLOWEST: usize = 10;

/// A markdown summary of the run (GitHub's `$GITHUB_STEP_SUMMARY` and
/// friends): the result, the counts, failed tasks with their error, the
/// slowest executed tasks (with their usual p50 when `stats` has it) and
/// the cache hit rate.
pub fn markdown_report(run: &RunRecord, stats: Option<&HashMap<String, TaskStats>>) -> String {
    let mut s = String::new();
    let c = &run.counts;
    let (icon, word) = if run.ok {
        ("✅", "succeeded")
    } else {
        ("❌", "failed")
    };
    let cmd = if run.requested.is_empty() {
        "vx run".to_string()
    } else {
        format!("vx run {}", run.requested.join(" "))
    };
    let _ = writeln!(
        s,
        "## {icon} `{}` {word} in {}\n",
        cell(&cmd),
        duration(run.duration_ms)
    );
    let _ = writeln!(
        s,
        "Run `{}` · exit code {} · concurrency {}\n",
        run.run_id, run.exit_code, run.concurrency
    );
    let _ = writeln!(
        s,
        "| total | cached | executed | failed | skipped | aborted |\n|---:|---:|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {} |\n",
        c.total, c.cached, c.executed, c.failed, c.skipped, c.aborted
    );
    let keyed = run
        .tasks
        .iter()
        .filter(|t| !matches!(t.cache, CacheSource::Disabled) && t.key.is_some())
        .count();
    let hits = run
        .tasks
        .iter()
        .filter(|t| {
            matches!(
                t.cache,
                CacheSource::Local | CacheSource::UpToDate | CacheSource::Remote
            )
        })
        .count();
    if keyed > 0 {
        let _ = writeln!(
            s,
            "**Cache:** {hits} of {keyed} cacheable tasks hit ({:.0}%).\n",
            hits as f64 * 100.0 / keyed as f64
        );
    }
    let failed: Vec<_> = run
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Failed)
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "### Failed\n\n| task | exit | error |\n|---|---:|---|");
        for t in &failed {
            let _ = writeln!(
                s,
                "| `{}` | {} | {} |",
                cell(&t.id),
                t.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                cell(t.error.as_deref().unwrap_or("failed"))
            );
        }
        let _ = writeln!(s);
        let skipped: Vec<_> = run
            .tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Skipped)
            .collect();
        if !skipped.is_empty() {
            let _ = writeln!(
                s,
                "{} task(s) skipped because a dependency failed.\n",
                skipped.len()
            );
        }
    }
    let mut executed: Vec<_> = run
        .tasks
        .iter()
        .filter(|t| matches!(t.status, TaskStatus::Success | TaskStatus::Failed))
        .collect();
    executed.sort_by(|a, b| b.duration_ms.cmp(&a.duration_ms).then(a.id.cmp(&b.id)));
    if !executed.is_empty() {
        let with_p50 = stats.is_some();
        let _ = writeln!(s, "### Slowest executed tasks\n");
        if with_p50 {
            let _ = writeln!(s, "| task | time | usual (p50) |\n|---|---:|---:|");
        } else {
            let _ = writeln!(s, "| task | time |\n|---|---:|");
        }
        for t in executed.iter().take(SLOWEST) {
            if let Some(st) = stats {
                let p50 = st
                    .get(&t.id)
                    .and_then(|x| x.p50_ms)
                    .map(duration)
                    .unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    s,
                    "| `{}` | {} | {} |",
                    cell(&t.id),
                    duration(t.duration_ms),
                    p50
                );
            } else {
                let _ = writeln!(s, "| `{}` | {} |", cell(&t.id), duration(t.duration_ms));
            }
        }
        let _ = writeln!(s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vx_proto::RunCounts;
    use vx_proto::history::{FailureMode, TaskRun};

    fn t(id: &str, slot: Option<u32>, start: u64, end: u64, status: TaskStatus) -> TaskRun {
        TaskRun {
            id: id.into(),
            status,
            cache: if status == TaskStatus::Cached {
                CacheSource::Local
            } else {
                CacheSource::Miss
            },
            key: Some(format!("{id}-key")),
            exit_code: (status == TaskStatus::Failed).then_some(2),
            attempts: 1,
            duration_ms: end - start,
            start_ms: start,
            end_ms: end,
            slot,
            cpu_ms: Some(3),
            peak_rss_bytes: Some(1 << 20),
            blocked_by: None,
            error: (status == TaskStatus::Failed).then(|| "exit code 2".to_string()),
            persistent: false,
            worker: None,
        }
    }

    fn sample() -> RunRecord {
        RunRecord {
            run_id: "r1".into(),
            argv: vec!["vx".into(), "run".into(), "build".into()],
            requested: vec!["build".into()],
            started_at: 1_700_000_000_000,
            ended_at: 1_700_000_000_900,
            duration_ms: 900,
            exit_code: 1,
            ok: false,
            concurrency: 2,
            counts: RunCounts {
                total: 6,
                cached: 3,
                executed: 2,
                failed: 1,
                skipped: 1,
                aborted: 0,
                running: 0,
            },
            tasks: vec![
                t("a#build", Some(0), 0, 400, TaskStatus::Success),
                t("b#build", Some(1), 10, 300, TaskStatus::Failed),
                t("c#build", Some(0), 400, 800, TaskStatus::Success),
                t("d#build", None, 0, 2, TaskStatus::Cached),
                t("e#build", None, 1, 3, TaskStatus::Cached),
                t("f#build", None, 1, 1, TaskStatus::Cached),
                t("g#test", None, 300, 300, TaskStatus::Skipped),
            ],
        }
    }

    #[test]
    fn trace_is_well_formed_and_lanes_do_not_overlap() {
        let v = chrome_trace(&sample());
        let text = serde_json::to_string(&v).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["displayTimeUnit"], "ms");
        let events = back["traceEvents"].as_array().unwrap();
        let mut lanes: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
        let mut xs = 0;
        for e in events {
            assert!(e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
            if e["ph"] == "X" {
                xs += 1;
                let (ts, dur) = (e["ts"].as_u64().unwrap(), e["dur"].as_u64().unwrap());
                assert!(e["args"]["status"].is_string());
                lanes
                    .entry(e["tid"].as_u64().unwrap())
                    .or_default()
                    .push((ts, ts + dur));
            } else {
                assert_eq!(e["ph"], "M");
            }
        }
        assert_eq!(xs, 7);
        assert_eq!(lanes.len(), 3, "two slots and the cache lane");
        for (tid, mut spans) in lanes {
            spans.sort();
            for w in spans.windows(2) {
                assert!(
                    w[0].1 <= w[1].0,
                    "tid {tid}: {:?} overlaps {:?}",
                    w[0],
                    w[1]
                );
            }
        }
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .filter_map(|e| e["args"]["name"].as_str())
            .collect();
        assert!(
            names.contains(&"cache") && names.contains(&"slot 1"),
            "{names:?}"
        );
        let a = events.iter().find(|e| e["name"] == "a#build").unwrap();
        assert_eq!(a["dur"], 400_000);
        assert_eq!(a["args"]["cpu_ms"], 3);
    }

    #[test]
    fn report_names_failures_and_slow_tasks() {
        let run = sample();
        let mut stats = HashMap::new();
        stats.insert(
            "c#build".to_string(),
            TaskStats {
                total: 3,
                successes: 3,
                hits: 0,
                executed: 3,
                failures: 0,
                retried: 0,
                p50_ms: Some(350),
                p99_ms: Some(400),
                success_rate: 1.0,
                hit_rate: 0.0,
                failure_mode: FailureMode::Stable,
                mixed_outcome_keys: 0,
            },
        );
        let md = markdown_report(&run, Some(&stats));
        assert!(md.starts_with("## ❌ `vx run build` failed"), "{md}");
        assert!(md.contains("| 6 | 3 | 2 | 1 | 1 | 0 |"), "{md}");
        assert!(md.contains("| `b#build` | 2 | exit code 2 |"), "{md}");
        assert!(md.contains("| `c#build` | 400 ms | 350 ms |"), "{md}");
        assert!(md.contains("3 of 7 cacheable tasks hit"), "{md}");
        let ok = RunRecord {
            ok: true,
            exit_code: 0,
            tasks: vec![],
            ..run
        };
        let md = markdown_report(&ok, None);
        assert!(md.contains("✅") && !md.contains("### Failed"), "{md}");
    }
}
