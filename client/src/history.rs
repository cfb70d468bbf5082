//! `vx history`, `vx last`, `vx why` and `vx info`: one request each to the
//! engine (a running daemon, else `vxd --stdio` — these commands never start
//! a daemon), rendered as text or printed as the result's JSON.

use crate::conn::{self, Conn};
use crate::render;
use anyhow::Result;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use vx_proto::history::{
    ChangeKind, Component, HistoryRunParams, HistoryRunsParams, HistoryTaskParams, InfoParams,
    RunBrief, RunList, RunRecord, TaskHistory, TaskRun, TaskStats, WhyReport, WorkspaceInfo,
};
use vx_proto::{CacheSource, TaskStatus, methods};

/// The workspace's running daemon, else the no-daemon engine.
pub(crate) fn connect(cwd: &Path, no_daemon: bool) -> Result<Conn> {
    if !no_daemon
        && let Some(root) = conn::guess_root(cwd)
        && let Ok(paths) = vx_proto::paths::daemon_paths(&root)
    {
        match Conn::existing(&paths) {
            Ok(c) => return Ok(c),
            Err(e) => {
                if let Some(nr) = e.downcast_ref::<conn::NotResponding>() {
                    return conn::stdio_instead(nr);
                }
            }
        }
    }
    Conn::stdio()
}

fn call<T: serde::de::DeserializeOwned>(
    cwd: &Path,
    no_daemon: bool,
    method: &str,
    params: &impl serde::Serialize,
) -> Result<T> {
    let c = connect(cwd, no_daemon)?;
    let (c, v) = crate::call_following(c, method, params, &mut |_| {})?;
    c.finish();
    Ok(serde_json::from_value(v)?)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// "12s ago", "5m ago", "3h ago", "2d ago".
fn ago(ts: u64) -> String {
    let s = now_ms().saturating_sub(ts) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn command_line(argv: &[String], requested: &[String]) -> String {
    if argv.is_empty() {
        format!("vx run {}", requested.join(" "))
    } else {
        let mut a = argv.to_vec();
        if let Some(first) = a.first_mut()
            && let Some(base) = Path::new(first.as_str()).file_name()
        {
            *first = base.to_string_lossy().into_owned();
        }
        a.join(" ")
    }
}

fn counts_line(c: &vx_proto::RunCounts) -> String {
    let mut parts = vec![
        format!("{} total", c.total),
        format!("{} cached", c.cached),
        format!("{} executed", c.executed),
    ];
    for (n, what) in [
        (c.failed, "failed"),
        (c.skipped, "skipped"),
        (c.aborted, "aborted"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.join(" · ")
}

fn status_word(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Success => "success",
        TaskStatus::Cached => "cached",
        TaskStatus::Failed => "failed",
        TaskStatus::Skipped => "skipped",
        TaskStatus::Aborted => "aborted",
        TaskStatus::Running => "running",
    }
}

fn cache_word(c: CacheSource) -> &'static str {
    match c {
        CacheSource::Miss => "miss",
        CacheSource::Local => "local",
        CacheSource::UpToDate => "up-to-date",
        CacheSource::Disabled => "off",
        CacheSource::Remote => "remote",
    }
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// `vx history [TASK]`.
pub fn history(
    cwd: &Path,
    no_daemon: bool,
    task: Option<String>,
    limit: usize,
    json: bool,
) -> Result<i32> {
    let cwd_s = cwd.to_string_lossy().into_owned();
    match task {
        None => {
            let params = HistoryRunsParams {
                cwd: cwd_s,
                limit: Some(limit),
            };
            let list: RunList = call(cwd, no_daemon, methods::HISTORY_RUNS, &params)?;
            if json {
                print_json(&list)?;
            } else {
                print_runs(&list.runs);
            }
        }
        Some(task) => {
            let params = HistoryTaskParams {
                cwd: cwd_s,
                task,
                limit: Some(limit),
                run_id: None,
            };
            let th: TaskHistory = call(cwd, no_daemon, methods::HISTORY_TASK, &params)?;
            if json {
                print_json(&th)?;
            } else {
                print_task(&th);
            }
        }
    }
    Ok(0)
}

fn print_runs(runs: &[RunBrief]) {
    let id_w = runs
        .iter()
        .map(|r| r.run_id.len())
        .max()
        .unwrap_or(3)
        .max(3);
    let counts: Vec<String> = runs.iter().map(|r| counts_line(&r.counts)).collect();
    let c_w = counts
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<id_w$}  {:>8}  {:<6}  {:>8}  {:<c_w$}  COMMAND",
        "RUN", "WHEN", "RESULT", "TIME", "TASKS"
    );
    for (r, c) in runs.iter().zip(&counts) {
        println!(
            "{:<id_w$}  {:>8}  {:<6}  {:>8}  {:<c_w$}  {}",
            r.run_id,
            ago(r.started_at),
            if r.ok { "ok" } else { "failed" },
            render::duration(r.duration_ms),
            c,
            command_line(&r.argv, &r.requested)
        );
    }
}

/// One stats line: `12 runs · p50 1.20s · p99 3.40s · success 80% · ...`.
pub fn stats_line(s: &TaskStats) -> String {
    let mut parts = vec![render::plural(s.total as usize, "run")];
    if let Some(p) = s.p50_ms {
        parts.push(format!("p50 {}", render::duration(p)));
    }
    if let Some(p) = s.p99_ms {
        parts.push(format!("p99 {}", render::duration(p)));
    }
    parts.push(format!("success {:.0}%", s.success_rate * 100.0));
    parts.push(format!("hit {:.0}%", s.hit_rate * 100.0));
    if s.failures > 0 {
        parts.push(format!("{} failed", s.failures));
    }
    if s.retried > 0 {
        parts.push(format!("{} retried", s.retried));
    }
    parts.push(s.failure_mode.as_str().to_string());
    parts.join(" · ")
}

fn print_task(th: &TaskHistory) {
    match &th.stats {
        Some(s) => println!("{}: {}", th.task, stats_line(s)),
        None => println!("{}", th.task),
    }
    println!();
    let id_w = th
        .rows
        .iter()
        .map(|r| r.run_id.len())
        .max()
        .unwrap_or(3)
        .max(3);
    println!(
        "{:>8}  {:<id_w$}  {:<8}  {:<10}  {:>8}  {:<12}  NOTE",
        "WHEN", "RUN", "STATUS", "CACHE", "TIME", "KEY"
    );
    for r in &th.rows {
        let line = format!(
            "{:>8}  {:<id_w$}  {:<8}  {:<10}  {:>8}  {:<12}  {}",
            ago(r.started_at),
            r.run_id,
            status_word(r.task.status),
            cache_word(r.task.cache),
            render::duration(r.task.duration_ms),
            r.task.key.as_deref().map(short).unwrap_or("-"),
            note(&r.task)
        );
        println!("{}", line.trim_end());
    }
}

fn note(t: &TaskRun) -> String {
    let mut parts = Vec::new();
    if t.attempts > 1 {
        parts.push(format!("{} attempts", t.attempts));
    }
    if let Some(e) = &t.error {
        parts.push(e.clone());
    } else if t.status == TaskStatus::Failed
        && let Some(c) = t.exit_code
    {
        parts.push(format!("exit code {c}"));
    }
    if let Some(b) = &t.blocked_by {
        parts.push(format!("blocked by {b}"));
    }
    parts.join("; ")
}

/// `vx last [RUN_ID] [--failed]`.
pub fn last(
    cwd: &Path,
    no_daemon: bool,
    run_id: Option<String>,
    failed: bool,
    json: bool,
) -> Result<i32> {
    let params = HistoryRunParams {
        cwd: cwd.to_string_lossy().into_owned(),
        run_id,
        failed,
    };
    let run: RunRecord = call(cwd, no_daemon, methods::HISTORY_RUN, &params)?;
    if json {
        print_json(&run)?;
        return Ok(0);
    }
    println!(
        "run {} · {} · {}",
        run.run_id,
        ago(run.started_at),
        command_line(&run.argv, &run.requested)
    );
    println!();
    let w = run
        .tasks
        .iter()
        .map(|t| t.id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    for t in &run.tasks {
        let mark = match t.status {
            TaskStatus::Success => "✓",
            TaskStatus::Cached => "↺",
            TaskStatus::Failed => "✗",
            TaskStatus::Skipped => "-",
            TaskStatus::Aborted => "!",
            TaskStatus::Running => "▸",
        };
        let line = format!(
            "{mark} {:<w$}  {:<8}  {:<10}  {:>8}  {}",
            t.id,
            status_word(t.status),
            cache_word(t.cache),
            render::duration(t.duration_ms),
            note(t)
        );
        println!("{}", line.trim_end());
    }
    println!();
    println!(" Tasks:  {}", counts_line(&run.counts));
    println!("  Time:  {}", render::duration(run.duration_ms));
    let failed: Vec<String> = run
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Failed)
        .map(|t| t.id.clone())
        .collect();
    if !failed.is_empty() {
        println!("Failed:  {}", failed.join(", "));
    }
    println!(
        "Result:  {} (exit code {})",
        if run.ok { "ok" } else { "failed" },
        run.exit_code
    );
    Ok(0)
}

/// `vx why TASK`.
pub fn why(
    cwd: &Path,
    no_daemon: bool,
    task: String,
    run: Option<String>,
    json: bool,
) -> Result<i32> {
    let params = HistoryTaskParams {
        cwd: cwd.to_string_lossy().into_owned(),
        task,
        limit: None,
        run_id: run,
    };
    let w: WhyReport = call(cwd, no_daemon, methods::HISTORY_WHY, &params)?;
    if json {
        print_json(&w)?;
        return Ok(0);
    }
    match (&w.key, &w.previous_key) {
        (Some(k), Some(p)) => println!(
            "{}: key {} (run {}) was {} (run {})",
            w.task,
            short(k),
            w.run_id.as_deref().unwrap_or("?"),
            short(p),
            w.previous_run_id.as_deref().unwrap_or("?")
        ),
        (Some(k), None) => println!(
            "{}: key {} (run {})",
            w.task,
            short(k),
            w.run_id.as_deref().unwrap_or("?")
        ),
        _ => println!("{}", w.task),
    }
    if w.cache == Some(CacheSource::Remote) {
        println!("its last result came from the remote cache");
    }
    if !w.changes.is_empty() {
        println!();
        println!("changed:");
        let nw = w
            .changes
            .iter()
            .filter_map(|c| c.name.as_ref().map(|n| n.len()))
            .max()
            .unwrap_or(0);
        for c in &w.changes {
            let comp = match c.component {
                Component::File => "file",
                Component::Env => "env",
                Component::Config => "config",
                Component::Command => "command",
                Component::Upstream => "upstream",
                Component::Args => "args",
                Component::Plugin => "plugin",
            };
            let kind = match c.kind {
                ChangeKind::Added => "added",
                ChangeKind::Removed => "removed",
                ChangeKind::Changed => "changed",
            };
            println!(
                "  {comp:<8}  {:<nw$}  {kind}",
                c.name.as_deref().unwrap_or("")
            );
        }
    }
    if !w.advice.is_empty() {
        println!();
        println!("what to do:");
        for a in &w.advice {
            println!("  - {a}");
        }
    }
    Ok(0)
}

/// `vx info`.
pub fn info(cwd: &Path, no_daemon: bool, json: bool) -> Result<i32> {
    let params = InfoParams {
        cwd: cwd.to_string_lossy().into_owned(),
    };
    let i: WorkspaceInfo = call(cwd, no_daemon, methods::WORKSPACE_INFO, &params)?;
    if json {
        print_json(&i)?;
        return Ok(0);
    }
    println!(
        "vx        {} (client {})",
        i.version,
        env!("CARGO_PKG_VERSION")
    );
    println!("root      {}", i.root);
    println!(
        "projects  {} ({})",
        i.projects,
        render::plural(i.tasks, "task")
    );
    println!(
        "cache     {} — {} entries, {} blobs, {}",
        i.cache_dir,
        i.cache_entries,
        i.cache_blobs,
        render::bytes(i.cache_bytes)
    );
    match &i.history_error {
        Some(e) => println!("history   {} — unreadable: {e}", i.history_file),
        None => println!(
            "history   {} — {} ({} in the last 24 h)",
            i.history_file,
            render::plural(i.history_runs as usize, "run"),
            i.runs_last_24h
        ),
    }
    if i.flaky.is_empty() {
        println!("flaky     none");
    } else {
        for (n, f) in i.flaky.iter().enumerate() {
            println!(
                "{}{} ({}: {} of {} runs failed, {} retried)",
                if n == 0 { "flaky     " } else { "          " },
                f.task,
                f.failure_mode.as_str(),
                f.failures,
                f.total,
                f.retried
            );
        }
    }
    match &i.daemon {
        Some(d) => println!(
            "daemon    running (pid {}, up {}) at {}",
            d.pid,
            render::duration(d.uptime_ms),
            i.socket
        ),
        None => println!("daemon    not running (its socket would be {})", i.socket),
    }
    Ok(0)
}
