//! `vx events`, `vx ps`, `vx graph`, `vx explain` and `vx log`: the live
//! methods (`events.subscribe`, `runs.active`, `graph.get`, `task.explain`,
//! `task.log`), one request each, rendered as text or printed as JSON.
//!
//! `vx events` and `vx ps` are about the runs of the workspace's daemon
//! (`vx events` starts one when the daemon is enabled; `vx ps` never does);
//! the others work with or without one.

use crate::conn::{self, Conn};
use crate::render;
use anyhow::{Result, anyhow};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use vx_proto::live::{
    self, ActiveState, Explain, Graph, RunFinishedParams, RunStartedParams, RunsActive,
    SubscribeParams, SubscribeResult, SubscriptionEnd, TaskLog, TaskLogParams,
};
use vx_proto::{RunEvent, RunParams};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

fn client_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn call<T: serde::de::DeserializeOwned>(
    conn: Conn,
    method: &str,
    params: &impl serde::Serialize,
) -> Result<T> {
    let (c, v) = crate::call_following(conn, method, params, &mut |_| {})?;
    c.finish();
    Ok(serde_json::from_value(v)?)
}

/// `vx events [--run ID] [--task ID] [--json]`: follows every run of the
/// workspace's daemon until Ctrl-C (or, with `--run`, until that run ends).
pub fn events(
    cwd: &Path,
    no_daemon: bool,
    run_id: Option<String>,
    task: Option<String>,
    json: bool,
) -> Result<i32> {
    if !conn::daemon_wanted(no_daemon) {
        return Err(anyhow!(
            "vx events follows the runs of the workspace's daemon, and the daemon is off here (--no-daemon, VX_DAEMON=0 or CI)"
        ));
    }
    let root = conn::guess_root(cwd)
        .ok_or_else(|| anyhow!("{} is not inside a workspace", cwd.display()))?;
    let mut conn = Conn::daemon(&root)?;
    let until_run = run_id.clone();
    let params = SubscribeParams {
        run_id,
        task,
        passive: false,
    };
    if !json {
        eprintln!(
            "vx: following the runs of the daemon of {} (Ctrl-C to stop)",
            root.display()
        );
    }
    let mut stdout = std::io::stdout();
    let r = conn.call_notified(live::EVENTS_SUBSCRIBE, &params, |method, params| {
        // Following one run that is not in progress: nothing will come.
        if method == live::EVENTS_SUBSCRIBED
            && let Some(want) = &until_run
            && !params["runs"]
                .as_array()
                .is_some_and(|r| r.iter().any(|id| id.as_str() == Some(want.as_str())))
        {
            eprintln!("vx: run {want} is not in progress (see `vx ps`, or `vx last {want}`)");
            std::process::exit(1);
        }
        if json {
            let line = serde_json::json!({ "method": method, "params": params });
            let _ = writeln!(stdout, "{line}");
        } else {
            print_note(method, params.clone());
        }
        let _ = stdout.flush();
        // Following one run: its end is the end (closing the connection
        // ends the subscription).
        if method == live::RUN_FINISHED
            && let Some(want) = &until_run
            && params["run_id"].as_str() == Some(want.as_str())
        {
            std::process::exit(0);
        }
    });
    let r = r?.map_err(|e| crate::rpc_error(&e))?;
    conn.finish();
    let end: SubscribeResult = serde_json::from_value(r)?;
    match end.ended {
        SubscriptionEnd::Resync => {
            eprintln!("vx: fell behind the daemon's events; run `vx events` again");
            Ok(1)
        }
        _ => Ok(0),
    }
}

fn print_note(method: &str, params: serde_json::Value) {
    match method {
        live::RUN_STARTED => {
            if let Ok(p) = serde_json::from_value::<RunStartedParams>(params) {
                println!(
                    "[{}] started: {} ({}, concurrency {})",
                    p.run_id,
                    p.argv.join(" "),
                    render::plural(p.tasks, "task"),
                    p.concurrency
                );
            }
        }
        live::RUN_FINISHED => {
            if let Ok(p) = serde_json::from_value::<RunFinishedParams>(params) {
                let c = p.counts;
                println!(
                    "[{}] finished {} in {}: {} total, {} cached, {} executed, {} failed{}",
                    p.run_id,
                    if p.ok { "ok" } else { "FAILED" },
                    render::duration(p.duration_ms),
                    c.total,
                    c.cached,
                    c.executed,
                    c.failed,
                    p.error.map(|e| format!(" ({e})")).unwrap_or_default()
                );
            }
        }
        live::EVENTS_RESYNC => println!("[resync] {}", params["reason"].as_str().unwrap_or("")),
        live::EVENTS_EVENT => {
            let run = params["run_id"].as_str().unwrap_or("?").to_string();
            let Ok(e) = serde_json::from_value::<RunEvent>(params["event"].clone()) else {
                return;
            };
            let line = match e {
                RunEvent::TaskStarted { id, .. } => format!("{id} started"),
                RunEvent::TaskOutput { id, line, .. } => format!("{id} | {line}"),
                RunEvent::TaskCacheHit { id, key, .. } => {
                    format!("{id} cache hit {}", short(&key))
                }
                RunEvent::TaskRetry {
                    id,
                    attempt,
                    of,
                    reason,
                } => format!("{id} retry {attempt}/{of} after {reason}"),
                RunEvent::TaskFinished { result } => format!(
                    "{} {} {}",
                    result.id,
                    serde_json::to_value(result.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    render::duration(result.duration_ms)
                ),
                RunEvent::TaskReady { id } => format!("{id} ready"),
                RunEvent::Warning { message } => format!("warning: {message}"),
                RunEvent::WatchCycle { cycle, .. } => format!("watch cycle {cycle}"),
                RunEvent::Settled { .. } => "settled".to_string(),
                _ => return,
            };
            println!("[{run}] {line}");
        }
        _ => {}
    }
}

/// `vx ps [--json]`: the runs of the workspace's daemon in progress.
pub fn ps(cwd: &Path, no_daemon: bool, json: bool) -> Result<i32> {
    let existing = if conn::daemon_wanted(no_daemon) {
        conn::guess_root(cwd)
            .and_then(|root| vx_proto::paths::daemon_paths(&root).ok())
            .and_then(|paths| Conn::existing(&paths).ok())
    } else {
        None
    };
    let active: RunsActive = match existing {
        Some(c) => call(c, live::RUNS_ACTIVE, &serde_json::json!({}))?,
        None => {
            if !json {
                eprintln!(
                    "vx: no daemon runs for this workspace: `vx ps` lists the runs a daemon serves"
                );
            }
            RunsActive { runs: Vec::new() }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&active)?);
        return Ok(0);
    }
    if active.runs.is_empty() {
        println!("no runs in progress");
    }
    let now = now_ms();
    for r in &active.runs {
        let c = r.counts;
        println!(
            "{}  {}  {}{}  {} done · {} running · {} ready · {} queued of {}  {}",
            r.run_id,
            serde_json::to_value(r.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            render::duration(now.saturating_sub(r.started_at)),
            if r.settled { " settled" } else { "" },
            c.done,
            c.running,
            c.ready,
            c.queued,
            c.total,
            r.argv.join(" ")
        );
        for t in &r.tasks {
            println!(
                "  {:<6} {:<30} {:<8} {}",
                t.slot
                    .map(|s| format!("#{s}"))
                    .unwrap_or_else(|| "-".into()),
                t.id,
                match t.state {
                    ActiveState::Running => "running",
                    ActiveState::Ready => "ready",
                },
                render::duration(now.saturating_sub(t.started_at))
            );
        }
    }
    Ok(0)
}

/// `vx graph [TASK...] [--filter P] [--all] [--json]`: the selection's
/// projects, tasks and edges.
pub fn graph(
    cwd: &Path,
    no_daemon: bool,
    tasks: Vec<String>,
    filters: Vec<String>,
    all: bool,
    json: bool,
) -> Result<i32> {
    let g = graph_of(cwd, no_daemon, tasks, filters, all)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&g)?);
        return Ok(0);
    }
    for t in &g.tasks {
        let deps: Vec<&str> = g
            .edges
            .iter()
            .filter(|e| e.from == t.id)
            .map(|e| e.to.as_str())
            .collect();
        if deps.is_empty() {
            println!("{}", t.id);
        } else {
            println!("{} -> {}", t.id, deps.join(", "));
        }
    }
    Ok(0)
}

/// `vx ls [--filter P] [--json]`: `graph.get` with no task lists every task.
pub fn ls(cwd: &Path, no_daemon: bool, filters: Vec<String>, json: bool) -> Result<i32> {
    let g = graph_of(cwd, no_daemon, Vec::new(), filters, false)?;
    render::ls(&g, json);
    Ok(0)
}

/// One `graph.get` for a selection (no task: every task, for `vx ls`).
fn graph_of(
    cwd: &Path,
    no_daemon: bool,
    tasks: Vec<String>,
    filters: Vec<String>,
    all: bool,
) -> Result<Graph> {
    let params = RunParams {
        cwd: cwd.to_string_lossy().into_owned(),
        tasks,
        filters,
        all,
        env: client_env(),
        ..Default::default()
    };
    call(
        crate::history::connect(cwd, no_daemon)?,
        live::GRAPH_GET,
        &params,
    )
}

/// `vx explain TASK [--json] [-- ARGS]`.
pub fn explain(
    cwd: &Path,
    no_daemon: bool,
    task: String,
    args: Vec<String>,
    json: bool,
) -> Result<i32> {
    let params = live::ExplainParams {
        cwd: cwd.to_string_lossy().into_owned(),
        task,
        args,
        env: client_env(),
    };
    let x: Explain = call(
        crate::history::connect(cwd, no_daemon)?,
        live::TASK_EXPLAIN,
        &params,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&x)?);
        return Ok(0);
    }
    for t in &x.tasks {
        let predicted = serde_json::to_value(t.prediction)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let source = match t.source {
            Some(vx_proto::CacheSource::UpToDate) => " (outputs up to date)",
            Some(vx_proto::CacheSource::Local) => " (restored from the local cache)",
            Some(vx_proto::CacheSource::Remote) => " (from the remote cache)",
            _ => "",
        };
        println!("{}  key {}  predicted: {predicted}{source}", t.id, t.key);
        println!("  command  {}", t.command);
        println!("  config   {}", short(&t.config));
        println!("  inputs   {} files", t.inputs.len());
        for f in &t.inputs {
            println!("    {}  {}", short(&f.hash), f.path);
        }
        for e in &t.env {
            println!("  env      {} {}", e.name, short(&e.hash));
        }
        for p in &t.plugins {
            println!("  plugin:{} {}", p.name, short(&p.hash));
        }
        for u in &t.upstream {
            println!("  upstream {} {}", u.id, short(&u.key));
        }
        if !t.args.is_empty() {
            println!("  args     {} (keyed)", t.args.len());
        }
        match (&t.last_key, t.compared) {
            (None, _) => println!("  no recorded run of it yet"),
            (Some(k), _) if *k == t.key => println!("  same key as its last recorded run"),
            (Some(k), true) => {
                println!("  changed since its last recorded key {}:", short(k));
                for c in &t.changes {
                    let what = serde_json::to_value(c.component)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    let kind = serde_json::to_value(c.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    println!("    {what} {} {kind}", c.name.as_deref().unwrap_or(""));
                }
            }
            (Some(k), false) => println!(
                "  its last recorded key {} has no recorded parts to compare",
                short(k)
            ),
        }
    }
    Ok(0)
}

/// `vx log TASK [--run ID] [--max-bytes N] [--json]`.
pub fn log(
    cwd: &Path,
    no_daemon: bool,
    task: String,
    run_id: Option<String>,
    max_bytes: Option<u64>,
    json: bool,
) -> Result<i32> {
    let params = TaskLogParams {
        cwd: cwd.to_string_lossy().into_owned(),
        task,
        run_id,
        max_bytes,
        args: Vec::new(),
        env: client_env(),
    };
    let l: TaskLog = call(
        crate::history::connect(cwd, no_daemon)?,
        live::TASK_LOG,
        &params,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(0);
    }
    if l.truncated {
        eprintln!(
            "vx: the last {} of {} of {}'s log (--max-bytes)",
            render::bytes(l.log.len() as u64),
            render::bytes(l.size),
            l.task
        );
    }
    print!("{}", l.log);
    Ok(0)
}
