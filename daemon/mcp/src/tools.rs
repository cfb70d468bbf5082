//! `tools` — the MCP tools and resources: each one decodes its arguments,
//! calls one catalogue method through the session ([`Vx::call`] /
//! [`Vx::run`]) and shapes the answer into compact, bounded JSON.
//!
//! Owns: the tool list (names, descriptions, input schemas generated from
//! the argument types), argument checks (unknown fields are refused with
//! the field named), paging of long lists, and the resource URIs.
//!
//! Never: computes an answer the engine has not given (no second
//! implementation of a query), or returns an unbounded list or log.

use crate::server::{Vx, client_label, error_result, json_result};
use crate::shape::{merge, page, percent_decode, short};
use rmcp::model::{CallToolResult, JsonObject, Tool, ToolAnnotations};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;
use vx_proto::catalogue as c;
use vx_proto::history::{HistoryRunParams, HistoryRunsParams, HistoryTaskParams};
use vx_proto::live::{ExplainParams, TaskLogParams, method as live};
use vx_proto::{CacheParams, OutputLogs, RpcError, RunParams};

pub const LAST_RUN_URI: &str = "vx://runs/last";
pub const TASK_LOG_TEMPLATE: &str = "vx://tasks/{task}/log";

/// Default and largest page sizes.
const LIST_DEFAULT: usize = 50;
const LIST_MAX: usize = 500;
/// `task_log`'s default and largest `max_bytes`.
const LOG_DEFAULT: u64 = 8 << 10;
const LOG_MAX: u64 = 64 << 10;
/// The most per-task rows a `run_tasks` answer lists.
const RUN_ROWS: usize = 100;
/// How many failures' tails a session remembers for `task_log`.
const REMEMBERED_FAILURES: usize = 32;

/// One name or a list of them (`"build"` or `["build", "lint"]`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    fn into_vec(self) -> Vec<String> {
        match self {
            Names::One(s) => vec![s],
            Names::Many(v) => v,
        }
    }
}

/// `true` (changed since the default base) or a git ref to compare with.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Affected {
    Flag(bool),
    Base(String),
}

fn affected(a: Option<Affected>) -> Option<String> {
    match a {
        None | Some(Affected::Flag(false)) => None,
        Some(Affected::Flag(true)) => Some(String::new()),
        Some(Affected::Base(b)) => Some(b),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListProjectsArgs {
    /// Only the projects these patterns select, as `vx run --filter`: a
    /// project name, a glob of names or directories (`apps/*`), `name...`
    /// (it and its dependencies), `...name` (it and its dependents), `!name`.
    #[serde(default)]
    filter: Option<Names>,
    /// Skip this many projects (paging; default 0).
    #[serde(default)]
    offset: Option<usize>,
    /// At most this many projects (default 50, at most 500).
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TaskGraphArgs {
    /// Tasks to plan, as `vx run` takes them: `build` (in every project
    /// that has it) or `project#build`.
    tasks: Names,
    /// Only the projects these patterns select (as `vx run --filter`).
    #[serde(default)]
    filter: Option<Names>,
    /// Only projects changed since the default base (`true`) or since this
    /// git ref (as `vx run --affected`).
    #[serde(default)]
    affected: Option<Affected>,
    /// Skip this many tasks (paging; default 0).
    #[serde(default)]
    offset: Option<usize>,
    /// At most this many tasks (default 50, at most 500).
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TaskArgs {
    /// The task: `project#task` (a bare `task` means that task of every
    /// project that has it).
    task: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WhyArgs {
    /// The task: `project#task`.
    task: String,
    /// Explain the key the task had in this recorded run (an id or a unique
    /// prefix, from run_history) instead of its newest one.
    #[serde(default)]
    run_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HistoryArgs {
    /// One task (`project#task`): its recent rows and statistics (p50/p99
    /// duration, hit rate, failure mode) instead of the recent runs.
    #[serde(default)]
    task: Option<String>,
    /// How many runs (or rows), newest first (default 10, at most 100).
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LogArgs {
    /// The task: `project#task`.
    task: String,
    /// The log the task had in this recorded run (an id or unique prefix)
    /// instead of the one for its current key.
    #[serde(default)]
    run_id: Option<String>,
    /// At most this many bytes of the log's end (default 8192, at most 65536).
    #[serde(default)]
    max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RunArgs {
    /// Tasks to run, as `vx run` takes them: `build` (in every project that
    /// has it) or `project#build`; their dependencies run first.
    tasks: Names,
    /// Only the projects these patterns select (as `vx run --filter`).
    #[serde(default)]
    filter: Option<Names>,
    /// Ignore cache hits and execute (results are still saved).
    #[serde(default)]
    force: bool,
    /// Only projects changed since the default base (`true`) or since this
    /// git ref (as `vx run --affected`).
    #[serde(default)]
    affected: Option<Affected>,
}

/// The input schema of an argument type, as MCP wants it (an object schema).
fn schema_of<T: JsonSchema>() -> JsonObject {
    let mut v = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
        o.entry("type").or_insert(json!("object"));
        o.entry("properties").or_insert(json!({}));
        return o.clone();
    }
    JsonObject::new()
}

fn tool<T: JsonSchema>(name: &'static str, description: &'static str, read_only: bool) -> Tool {
    let mut t = Tool::new(name, description, schema_of::<T>());
    t.annotations = Some(
        ToolAnnotations::new()
            .read_only(read_only)
            .destructive(false)
            .open_world(false),
    );
    t
}

/// Every tool (ten at most: each costs an agent context).
pub fn definitions() -> Vec<Tool> {
    vec![
        tool::<ListProjectsArgs>(
            "list_projects",
            "The workspace's projects: directory, project dependencies, and each task with the tasks it depends on. Paged (offset/limit).",
            true,
        ),
        tool::<TaskGraphArgs>(
            "task_graph",
            "What `vx run TASKS` would do, without running: every task it includes (dependencies first), its command, dependencies, and predicted cache result (hit, miss, uncached, group). Paged.",
            true,
        ),
        tool::<TaskArgs>(
            "explain_task",
            "A task's cache key now, part by part: input files (short hashes), keyed env names, config, upstream keys, args; whether it would be a cache hit; and what changed since its last recorded key.",
            true,
        ),
        tool::<WhyArgs>(
            "why_rerun",
            "Why a task ran again: what changed between its last two recorded keys (files, env, config, command, upstream, args) and what to do about it.",
            true,
        ),
        tool::<HistoryArgs>(
            "run_history",
            "Recent recorded runs (who started them, outcome, counts), or with `task` one task's recent rows and statistics: p50/p99 duration, hit rate, failure mode (stable or flaky).",
            true,
        ),
        tool::<NoArgs>(
            "cache_stats",
            "The local cache: its directory, entries, blobs and bytes.",
            true,
        ),
        tool::<LogArgs>(
            "task_log",
            "A task's last log (the end of it, bounded): the cached log of its current key, or of a recorded run; for a task that just failed in run_tasks, its failure output.",
            true,
        ),
        tool::<RunArgs>(
            "run_tasks",
            "Run tasks like `vx run` (dependencies first, cache hits restored), sharing the cache and in-flight work with the user's own runs. Sends progress notifications; cancelling the request stops the tasks. Returns each task's outcome, cache source, duration and exit code, and the failing tasks' log tails.",
            false,
        ),
    ]
}

fn decode<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, CallToolResult> {
    serde_json::from_value(args).map_err(|e| {
        error_result(&RpcError::new(
            vx_proto::codes::INVALID_PARAMS,
            format!("{tool}: invalid arguments: {e}"),
        ))
    })
}

fn limit(n: Option<usize>, default: usize, max: usize) -> usize {
    n.unwrap_or(default).clamp(1, max)
}

/// Calls one tool.
pub async fn call(
    vx: &Vx,
    name: &str,
    args: Value,
    cx: &RequestContext<RoleServer>,
) -> Result<CallToolResult, ErrorData> {
    let r = match name {
        "list_projects" => list_projects(vx, args, &cx.ct).await,
        "task_graph" => task_graph(vx, args, &cx.ct).await,
        "explain_task" => explain_task(vx, args, &cx.ct).await,
        "why_rerun" => why_rerun(vx, args, &cx.ct).await,
        "run_history" => run_history(vx, args, &cx.ct).await,
        "cache_stats" => cache_stats(vx, args, &cx.ct).await,
        "task_log" => task_log(vx, args, &cx.ct).await,
        "run_tasks" => run_tasks(vx, args, cx).await,
        other => {
            let names: Vec<String> = definitions().iter().map(|t| t.name.to_string()).collect();
            return Err(ErrorData::invalid_params(
                format!("no tool `{other}` (vx has: {})", names.join(", ")),
                None,
            ));
        }
    };
    Ok(r.unwrap_or_else(|e| e))
}

type Answer = Result<CallToolResult, CallToolResult>;

fn rpc(e: RpcError) -> CallToolResult {
    error_result(&e)
}

fn run_params(vx: &Vx, tasks: Vec<String>, filter: Option<Names>) -> RunParams {
    RunParams {
        cwd: vx.cwd().to_string(),
        tasks,
        filters: filter.map(Names::into_vec).unwrap_or_default(),
        env: vx.env().clone(),
        ..Default::default()
    }
}

async fn list_projects(vx: &Vx, args: Value, ct: &CancellationToken) -> Answer {
    let a: ListProjectsArgs = decode("list_projects", args)?;
    let g = vx
        .call::<live::GraphGet>(run_params(vx, Vec::new(), a.filter), ct)
        .await
        .map_err(rpc)?;
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in &g.edges {
        deps.entry(e.from.as_str()).or_default().push(e.to.as_str());
    }
    let mut tasks: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
    for t in &g.tasks {
        tasks.entry(t.project.as_str()).or_default().insert(
            t.task.clone(),
            json!(deps.get(t.id.as_str()).cloned().unwrap_or_default()),
        );
    }
    let projects: Vec<Value> = g
        .projects
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "dir": p.dir,
                "deps": p.deps,
                "tasks": tasks.remove(p.name.as_str()).unwrap_or_default(),
            })
        })
        .collect();
    let p = page(
        projects,
        a.offset.unwrap_or(0),
        limit(a.limit, LIST_DEFAULT, LIST_MAX),
    );
    let head = json!({
        "root": g.root,
        "note": "tasks: name -> the tasks it depends on (project#task)",
    });
    let fields = p.fields("projects", "list_projects");
    Ok(json_result(&merge(
        merge(head, fields),
        json!({ "projects": p.items }),
    )))
}

async fn task_graph(vx: &Vx, args: Value, ct: &CancellationToken) -> Answer {
    let a: TaskGraphArgs = decode("task_graph", args)?;
    let mut params = run_params(vx, a.tasks.into_vec(), a.filter);
    params.affected = affected(a.affected);
    let plan = vx.call::<c::RunPlan>(params, ct).await.map_err(rpc)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let tasks: Vec<Value> = plan
        .tasks
        .iter()
        .map(|t| {
            let prediction = serde_json::to_value(t.prediction).unwrap_or(Value::Null);
            *counts
                .entry(prediction.as_str().unwrap_or("?").to_string())
                .or_default() += 1;
            let mut v = json!({
                "id": t.id,
                "command": t.command,
                "prediction": prediction,
                "deps": t.deps,
            });
            if !t.requested {
                v["requested"] = json!(false);
            }
            if !t.warnings.is_empty() {
                v["warnings"] = json!(t.warnings);
            }
            v
        })
        .collect();
    let p = page(
        tasks,
        a.offset.unwrap_or(0),
        limit(a.limit, LIST_DEFAULT, LIST_MAX),
    );
    let fields = p.fields("tasks", "task_graph");
    Ok(json_result(&merge(
        merge(json!({ "predicted": counts }), fields),
        json!({ "tasks": p.items }),
    )))
}

async fn explain_task(vx: &Vx, args: Value, ct: &CancellationToken) -> Answer {
    let a: TaskArgs = decode("explain_task", args)?;
    let params = ExplainParams {
        cwd: vx.cwd().to_string(),
        task: a.task,
        args: Vec::new(),
        env: vx.env().clone(),
    };
    let ex = vx
        .call::<live::TaskExplain>(params, ct)
        .await
        .map_err(rpc)?;
    let n = ex.tasks.len();
    let tasks: Vec<Value> = ex
        .tasks
        .iter()
        .take(10)
        .map(|t| {
            let inputs = page(t.inputs.clone(), 0, 50);
            let mut v = json!({
                "id": t.id,
                "key": t.key,
                "prediction": t.prediction,
                "command": t.command,
                "config": short(&t.config),
                "inputs_total": inputs.total,
                "inputs": inputs.items.iter().map(|f| json!([f.path, short(&f.hash)])).collect::<Vec<_>>(),
                "env": t.env.iter().map(|e| json!([e.name, short(&e.hash)])).collect::<Vec<_>>(),
                "upstream": t.upstream.iter().map(|u| json!([u.id, short(&u.key)])).collect::<Vec<_>>(),
            });
            if inputs.next.is_some() {
                v["inputs_note"] = json!(format!(
                    "showing 50 of {} input files ([path, short hash])",
                    inputs.total
                ));
            }
            if let Some(s) = t.source {
                v["source"] = json!(s);
            }
            if !t.args.is_empty() {
                v["args"] = json!(t.args);
            }
            if let Some(k) = &t.last_key {
                v["last_key"] = json!(k);
                v["last_run_id"] = json!(t.last_run_id);
                v["compared"] = json!(t.compared);
                v["changes_since_last"] = json!(t.changes.iter().take(50).collect::<Vec<_>>());
                if t.changes.len() > 50 {
                    v["changes_total"] = json!(t.changes.len());
                }
            }
            v
        })
        .collect();
    let mut out = json!({ "tasks": tasks });
    if n > 10 {
        out["truncated"] = json!(true);
        out["total"] = json!(n);
        out["hint"] = json!("showing 10 tasks: name one as project#task");
    }
    Ok(json_result(&out))
}

async fn why_rerun(vx: &Vx, args: Value, ct: &CancellationToken) -> Answer {
    let a: WhyArgs = decode("why_rerun", args)?;
    let params = HistoryTaskParams {
        cwd: vx.cwd().to_string(),
        task: a.task,
        limit: None,
        run_id: a.run_id,
    };
    let w = vx.call::<c::HistoryWhy>(params, ct).await.map_err(rpc)?;
    let total = w.changes.len();
    let mut v = json!({
        "task": w.task,
        "key": w.key,
        "run_id": w.run_id,
        "previous_key": w.previous_key,
        "previous_run_id": w.previous_run_id,
        "compared": w.compared,
        "changes": w.changes.iter().take(50).collect::<Vec<_>>(),
        "advice": w.advice,
    });
    if total > 50 {
        v["changes_total"] = json!(total);
        v["truncated"] = json!(true);
    }
    Ok(json_result(&v))
}

async fn run_history(vx: &Vx, args: Value, ct: &CancellationToken) -> Answer {
    let a: HistoryArgs = decode("run_history", args)?;
    let n = limit(a.limit, 10, 100);
    match a.task {
        None => {
            let params = HistoryRunsParams {
                cwd: vx.cwd().to_string(),
                limit: Some(n),
            };
            let l = vx.call::<c::HistoryRuns>(params, ct).await.map_err(rpc)?;
            let runs: Vec<Value> = l
                .runs
                .iter()
                .map(|r| {
                    json!({
                        "run_id": r.run_id,
                        "by": r.argv.join(" "),
                        "requested": r.requested,
                        "started_at": r.started_at,
                        "duration_ms": r.duration_ms,
                        "ok": r.ok,
                        "exit_code": r.exit_code,
                        "counts": r.counts,
                    })
                })
                .collect();
            Ok(json_result(&json!({ "runs": runs, "limit": n })))
        }
        Some(task) => {
            let params = HistoryTaskParams {
                cwd: vx.cwd().to_string(),
                task,
                limit: Some(n),
                run_id: None,
            };
            let h = vx.call::<c::HistoryTask>(params, ct).await.map_err(rpc)?;
            let rows: Vec<Value> = h
                .rows
                .iter()
                .map(|r| {
                    json!({
                        "run_id": r.run_id,
                        "started_at": r.started_at,
                        "status": r.task.status,
                        "cache": r.task.cache,
                        "duration_ms": r.task.duration_ms,
                        "exit_code": r.task.exit_code,
                        "attempts": r.task.attempts,
                    })
                })
                .collect();
            Ok(json_result(&json!({
                "task": h.task,
                "stats": h.stats,
                "rows": rows,
                "limit": n,
            })))
        }
    }
}

async fn cache_stats(vx: &Vx, args: Value, ct: &CancellationToken) -> Answer {
    let _: NoArgs = decode("cache_stats", args)?;
    let env: BTreeMap<String, String> = vx_proto::knobs::CACHE_DIR
        .get(vx.env())
        .map(|d| {
            [(vx_proto::knobs::CACHE_DIR.name.to_string(), d.to_string())]
                .into_iter()
                .collect()
        })
        .unwrap_or_default();
    let params = CacheParams {
        cwd: vx.cwd().to_string(),
        env,
    };
    let s = vx.call::<c::CacheStats>(params, ct).await.map_err(rpc)?;
    Ok(json_result(&json!(s)))
}

/// The failing tasks' tails this session saw last (for `task_log`).
fn failures() -> &'static Mutex<VecDeque<(String, String, String)>> {
    static F: Mutex<VecDeque<(String, String, String)>> = Mutex::new(VecDeque::new());
    &F
}

async fn task_log(vx: &Vx, args: Value, ct: &CancellationToken) -> Answer {
    let a: LogArgs = decode("task_log", args)?;
    let max = a.max_bytes.unwrap_or(LOG_DEFAULT).clamp(1, LOG_MAX);
    let params = TaskLogParams {
        cwd: vx.cwd().to_string(),
        task: a.task.clone(),
        run_id: a.run_id.clone(),
        max_bytes: Some(max),
        args: Vec::new(),
        env: vx.env().clone(),
    };
    match vx.call::<live::TaskLog>(params, ct).await {
        Ok(l) => Ok(json_result(&json!(l))),
        Err(e) if e.code == vx_proto::codes::NOT_FOUND => {
            // A failure is never cached: its output from a run_tasks of this
            // engine is the log there is.
            let remembered = failures().lock().ok().and_then(|f| {
                f.iter()
                    .rev()
                    .find(|(id, run, _)| {
                        (*id == a.task || id.ends_with(&format!("#{}", a.task)))
                            && a.run_id
                                .as_ref()
                                .is_none_or(|r| run.starts_with(r.as_str()))
                    })
                    .cloned()
            });
            match remembered {
                Some((id, run, tail)) => Ok(json_result(&json!({
                    "task": id,
                    "source": "failed-run",
                    "run_id": run,
                    "note": "the output of its failed run_tasks run (failures are not cached)",
                    "log": tail,
                }))),
                None => Err(rpc(e)),
            }
        }
        Err(e) => Err(rpc(e)),
    }
}

async fn run_tasks(vx: &Vx, args: Value, cx: &RequestContext<RoleServer>) -> Answer {
    let a: RunArgs = decode("run_tasks", args)?;
    let tasks = a.tasks.into_vec();
    let filters = a.filter.map(Names::into_vec).unwrap_or_default();
    let by = client_label(cx.client_info());
    let mut argv = vec![by, "run_tasks".to_string()];
    argv.extend(tasks.iter().cloned());
    for f in &filters {
        argv.push(format!("--filter={f}"));
    }
    if a.force {
        argv.push("--force".into());
    }
    let aff = affected(a.affected);
    match &aff {
        Some(b) if b.is_empty() => argv.push("--affected".into()),
        Some(b) => argv.push(format!("--affected={b}")),
        None => {}
    }
    let params = RunParams {
        cwd: vx.cwd().to_string(),
        tasks,
        filters,
        affected: aff,
        force: a.force,
        output_logs: OutputLogs::NewOnly,
        env: vx.env().clone(),
        argv,
        ..Default::default()
    };
    let progress = cx.meta.get_progress_token().map(|t| (t, cx.peer.clone()));
    let (s, extras) = vx.run(params, &cx.ct, progress).await.map_err(rpc)?;
    if let Ok(mut f) = failures().lock() {
        for (id, tail) in &extras.failed {
            f.push_back((id.clone(), s.run_id.clone(), tail.clone()));
            while f.len() > REMEMBERED_FAILURES {
                f.pop_front();
            }
        }
    }
    let rows: Vec<Value> = s
        .tasks
        .iter()
        .take(RUN_ROWS)
        .map(|t| {
            let mut v = json!({
                "id": t.id,
                "status": t.status,
                "cache": t.cache,
                "duration_ms": t.duration_ms,
            });
            if let Some(c) = t.exit_code {
                v["exit_code"] = json!(c);
            }
            if let Some(b) = &t.blocked_by {
                v["blocked_by"] = json!(b);
            }
            if let Some(e) = &t.error {
                v["error"] = json!(e);
            }
            v
        })
        .collect();
    let failed: Vec<Value> = extras
        .failed
        .iter()
        .map(|(id, tail)| {
            let t = s.tasks.iter().find(|t| &t.id == id);
            json!({
                "id": id,
                "exit_code": t.and_then(|t| t.exit_code),
                "error": t.and_then(|t| t.error.clone()),
                "log_tail": tail,
            })
        })
        .collect();
    let mut out = json!({
        "run_id": s.run_id,
        "ok": s.ok,
        "exit_code": s.exit_code,
        "duration_ms": s.duration_ms,
        "counts": s.counts,
        "tasks": rows,
    });
    if s.tasks.len() > RUN_ROWS {
        out["tasks_total"] = json!(s.tasks.len());
        out["hint"] = json!(format!(
            "showing {RUN_ROWS} of {} tasks: run_history with this run's tasks, or task_graph, for the rest",
            s.tasks.len()
        ));
    }
    if !failed.is_empty() {
        out["failed"] = json!(failed);
    }
    // A run with failed tasks is a tool error the agent reads.
    let mut r = json_result(&out);
    r.is_error = Some(!s.ok);
    Ok(r)
}

/// Reads a resource: the last run's summary, or a task's log.
pub async fn read_resource(
    vx: &Vx,
    uri: &str,
    ct: &CancellationToken,
) -> Result<(String, &'static str), ErrorData> {
    let not_found = |e: RpcError| ErrorData::resource_not_found(e.message, e.data);
    if uri == LAST_RUN_URI {
        let params = HistoryRunParams {
            cwd: vx.cwd().to_string(),
            run_id: None,
            failed: false,
        };
        let r = vx
            .call::<c::HistoryRun>(params, ct)
            .await
            .map_err(not_found)?;
        let n = r.tasks.len();
        let mut v = json!({
            "run_id": r.run_id,
            "by": r.argv.join(" "),
            "requested": r.requested,
            "started_at": r.started_at,
            "duration_ms": r.duration_ms,
            "ok": r.ok,
            "exit_code": r.exit_code,
            "counts": r.counts,
            "tasks": r.tasks.iter().take(RUN_ROWS).map(|t| json!({
                "id": t.id, "status": t.status, "cache": t.cache,
                "duration_ms": t.duration_ms, "exit_code": t.exit_code,
            })).collect::<Vec<_>>(),
        });
        if n > RUN_ROWS {
            v["tasks_total"] = json!(n);
        }
        return Ok((v.to_string(), "application/json"));
    }
    let task = uri
        .strip_prefix("vx://tasks/")
        .and_then(|r| r.strip_suffix("/log"))
        .and_then(percent_decode)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ErrorData::resource_not_found(
                format!("no resource `{uri}` (vx has {LAST_RUN_URI} and {TASK_LOG_TEMPLATE})"),
                None,
            )
        })?;
    let params = TaskLogParams {
        cwd: vx.cwd().to_string(),
        task,
        run_id: None,
        max_bytes: Some(LOG_DEFAULT),
        args: Vec::new(),
        env: vx.env().clone(),
    };
    let l = vx
        .call::<live::TaskLog>(params, ct)
        .await
        .map_err(not_found)?;
    Ok((l.log, "text/plain"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_ten_tools_each_with_an_object_schema_and_a_description() {
        let tools = definitions();
        assert!(tools.len() <= 10);
        for t in &tools {
            assert_eq!(
                t.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                t.name
            );
            assert!(
                t.description.as_ref().is_some_and(|d| d.len() > 20),
                "{}",
                t.name
            );
        }
        let run = tools.iter().find(|t| t.name == "run_tasks").unwrap();
        let props = run.input_schema["properties"].as_object().unwrap();
        for f in ["tasks", "filter", "force", "affected"] {
            assert!(props.contains_key(f), "run_tasks lacks {f}");
        }
        assert_eq!(run.input_schema["required"], json!(["tasks"]));
    }

    #[test]
    fn arguments_are_checked_with_the_field_named() {
        // (tool, args, Ok or the text the error must contain)
        let cases: Vec<(&str, Value, Result<(), &str>)> = vec![
            ("run_tasks", json!({"tasks": "build"}), Ok(())),
            (
                "run_tasks",
                json!({"tasks": ["a#b", "c"], "filter": "x", "affected": "main"}),
                Ok(()),
            ),
            ("run_tasks", json!({}), Err("missing field `tasks`")),
            (
                "run_tasks",
                json!({"tasks": "b", "forse": true}),
                Err("unknown field `forse`"),
            ),
            ("run_tasks", json!({"tasks": 3}), Err("invalid arguments")),
        ];
        for (tool, args, want) in cases {
            let r = decode::<RunArgs>(tool, args.clone());
            match (r, want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(text)) => {
                    let s = serde_json::to_string(&e.content).unwrap();
                    assert!(s.contains(text), "{args}: {s}");
                    assert_eq!(e.is_error, Some(true));
                }
                (r, w) => panic!("{args}: got {:?}, want {w:?}", r.map(|_| ())),
            }
        }
        assert_eq!(affected(Some(Affected::Flag(true))), Some(String::new()));
        assert_eq!(affected(Some(Affected::Flag(false))), None);
        assert_eq!(
            affected(Some(Affected::Base("main".into()))),
            Some("main".into())
        );
    }
}
