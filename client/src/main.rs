//! `vx` — the thin command-line client.
//!
//! Parses the command line, connects to the workspace's `vxd` daemon (or
//! starts it; or runs `vxd --stdio` in the foreground on the no-daemon
//! path), speaks JSON-RPC 2.0 to it through `vx-proto`, and renders what
//! comes back. It holds no engine logic and never links `vxd`.

mod conn;
mod history;
mod render;

use conn::Conn;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vx_proto::{
    CacheParams, ContinueMode, OutputLogs, RpcError, RunEvent, RunParams, codes, methods,
};

#[derive(Parser, Debug)]
#[command(
    name = "vx",
    version,
    about = "vx — a fast monorepo task runner with a trustworthy cache"
)]
struct Cli {
    /// Run the engine in the foreground for this command instead of using the
    /// workspace's daemon (also `VX_DAEMON=0`; the default when `CI` is set).
    #[arg(long, global = true)]
    no_daemon: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run tasks (and their dependencies) across the workspace.
    Run(RunArgs),
    /// Inspect or clear the local cache.
    Cache {
        #[command(subcommand)]
        action: CacheCmd,
    },
    /// Manage the workspace's daemon.
    Daemon {
        #[command(subcommand)]
        action: DaemonCmd,
    },
    /// Recent runs; with a task (`project#task` or a task of the current
    /// project), its recent rows and statistics.
    History {
        #[arg(value_name = "TASK")]
        task: Option<String>,
        /// How many runs (or rows), newest first.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay the summary of a recorded run (default: the latest).
    Last {
        /// A run id, or a unique prefix of one.
        #[arg(value_name = "RUN_ID")]
        run_id: Option<String>,
        /// The latest failed run.
        #[arg(long, conflicts_with = "run_id")]
        failed: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Why a task's key changed: its last two distinct keys, part by part.
    Why {
        /// `project#task`, or a task of the current project.
        #[arg(value_name = "TASK")]
        task: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The workspace, its cache, history and daemon at a glance.
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DaemonCmd {
    /// Whether a daemon runs for this workspace, and what it holds.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start the daemon (if it is not running).
    Start,
    /// Stop the daemon.
    Stop,
    /// Stop the daemon and start a new one.
    Restart,
    /// Print the daemon's log (`.vx/daemon.log`).
    Logs {
        /// How many lines from the end.
        #[arg(long, short = 'n', default_value_t = 200)]
        lines: usize,
    },
}

#[derive(Subcommand, Debug)]
enum CacheCmd {
    /// Entries, blobs and size of the local cache.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the local cache.
    Clean,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ContinueArg {
    Never,
    DepsOk,
    Always,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogsArg {
    Full,
    ErrorsOnly,
    NewOnly,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum DryArg {
    Text,
    Json,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Tasks to run: `build`, or `project#build`.
    #[arg(value_name = "TASK")]
    tasks: Vec<String>,
    /// Select projects: a name glob, `./dir`, `pkg...` (with its dependencies),
    /// `...pkg` (with its dependents), `!pkg` (exclude). Repeatable.
    #[arg(long, short = 'F', value_name = "PATTERN")]
    filter: Vec<String>,
    /// Run the tasks in every project that declares them.
    #[arg(long)]
    all: bool,
    /// Only tasks whose inputs changed since the merge base with BASE
    /// (default: the remote's default branch, else `main`), and their dependents.
    #[arg(long, value_name = "BASE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    affected: Option<String>,
    /// How many tasks run at once (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// After a failure: `never` (stop), `deps-ok` (skip its dependents; the
    /// default) or `always`. A bare `--continue` means `always`.
    #[arg(long = "continue", value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "always")]
    continue_mode: Option<ContinueArg>,
    /// Ignore cache hits (results are still saved).
    #[arg(long)]
    force: bool,
    /// Neither read nor write the cache.
    #[arg(long)]
    no_cache: bool,
    /// Which task logs to show.
    #[arg(long, value_name = "MODE", default_value = "full")]
    output_logs: LogsArg,
    /// Stream the run's events as NDJSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write a JSON run summary (default: `.vx/runs/<run id>.json`).
    #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    summarize: Option<String>,
    /// Print the plan with predicted cache hits and run nothing (`--dry=json` for JSON).
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true, default_missing_value = "text")]
    dry: Option<DryArg>,
    /// Print the task graph as Graphviz DOT (to FILE when given) and run nothing.
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    graph: Option<String>,
    /// Arguments after `--` are passed to the requested tasks (and keyed).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let code = match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vx: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn real_main(cli: Cli) -> Result<i32> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let cwd_s = cwd.to_string_lossy().into_owned();
    let no_daemon = cli.no_daemon;
    match cli.command {
        Cmd::Run(args) => run(args, &cwd, no_daemon),
        Cmd::Cache { action } => {
            let conn = conn::connect(&cwd, no_daemon)?;
            let params = CacheParams { cwd: cwd_s };
            match action {
                CacheCmd::Stats { json } => {
                    let (conn, v) =
                        call_following(conn, methods::CACHE_STATS, &params, &mut |_| {})?;
                    conn.finish();
                    let s: vx_proto::CacheStats = serde_json::from_value(v)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&s)?);
                    } else {
                        println!("cache:   {}", s.dir);
                        println!("entries: {}", s.entries);
                        println!("blobs:   {} ({})", s.blobs, render::bytes(s.blob_bytes));
                    }
                }
                CacheCmd::Clean => {
                    let (conn, v) =
                        call_following(conn, methods::CACHE_CLEAN, &params, &mut |_| {})?;
                    conn.finish();
                    let s: vx_proto::CacheCleaned = serde_json::from_value(v)?;
                    println!(
                        "removed {} ({} entries, {})",
                        s.dir,
                        s.entries,
                        render::bytes(s.freed_bytes)
                    );
                }
            }
            Ok(0)
        }
        Cmd::Daemon { action } => daemon_cmd(action, &cwd),
        Cmd::History { task, limit, json } => history::history(&cwd, no_daemon, task, limit, json),
        Cmd::Last {
            run_id,
            failed,
            json,
        } => history::last(&cwd, no_daemon, run_id, failed, json),
        Cmd::Why { task, json } => history::why(&cwd, no_daemon, task, json),
        Cmd::Info { json } => history::info(&cwd, no_daemon, json),
    }
}

/// Makes a call; when the daemon says the directory belongs to another
/// workspace, follows it once to that workspace's daemon.
fn call_following(
    mut conn: Conn,
    method: &str,
    params: &impl serde::Serialize,
    on_event: &mut dyn FnMut(RunEvent),
) -> Result<(Conn, serde_json::Value)> {
    match conn.call_raw(method, params, &mut *on_event)? {
        Ok(v) => Ok((conn, v)),
        Err(e) if e.code == codes::WRONG_WORKSPACE => {
            let root = e
                .data
                .as_ref()
                .and_then(|d| d["root"].as_str())
                .map(PathBuf::from)
                .ok_or_else(|| rpc_error(&e))?;
            conn.finish();
            let mut conn = match Conn::daemon(&root) {
                Ok(c) => c,
                Err(err) => {
                    eprintln!("vx: warning: not using the daemon ({err:#}); running without it");
                    Conn::stdio()?
                }
            };
            let v = conn.call(method, params, on_event)?;
            Ok((conn, v))
        }
        Err(e) => {
            conn.finish();
            Err(rpc_error(&e))
        }
    }
}

fn daemon_cmd(action: DaemonCmd, cwd: &Path) -> Result<i32> {
    let root = conn::guess_root(cwd)
        .ok_or_else(|| anyhow!("{} is not inside a workspace", cwd.display()))?;
    let paths = vx_proto::paths::daemon_paths(&root).map_err(|e| anyhow!(e))?;
    match action {
        DaemonCmd::Status { json } => match Conn::existing(&paths) {
            Err(_) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"running": false, "root": root, "socket": paths.socket})
                    );
                } else {
                    println!("no daemon is running for {}", root.display());
                }
                Ok(0)
            }
            Ok(mut c) => {
                let v = c.call(methods::STATUS, &serde_json::json!({}), |_| {})?;
                c.finish();
                let s: vx_proto::DaemonStatus = serde_json::from_value(v)?;
                if json {
                    let mut v = serde_json::to_value(&s)?;
                    v["running"] = serde_json::Value::Bool(true);
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    render::daemon_status(&s);
                }
                Ok(0)
            }
        },
        DaemonCmd::Stop => match Conn::existing(&paths) {
            Err(_) => {
                println!("no daemon is running for {}", root.display());
                Ok(0)
            }
            Ok(c) => {
                let pid = c.hello.pid;
                c.shutdown_daemon(&paths)?;
                println!("stopped the daemon (pid {pid})");
                Ok(0)
            }
        },
        DaemonCmd::Start | DaemonCmd::Restart => {
            if matches!(action, DaemonCmd::Restart)
                && let Ok(c) = Conn::existing(&paths)
            {
                c.shutdown_daemon(&paths)?;
            }
            let c = Conn::daemon(&root)?;
            println!(
                "daemon running for {} (pid {})",
                root.display(),
                c.hello.pid
            );
            c.finish();
            Ok(0)
        }
        DaemonCmd::Logs { lines } => {
            let log = root.join(".vx/daemon.log");
            let text = std::fs::read_to_string(&log)
                .with_context(|| format!("cannot read {}", log.display()))?;
            let all: Vec<&str> = text.lines().collect();
            for l in &all[all.len().saturating_sub(lines)..] {
                println!("{l}");
            }
            Ok(0)
        }
    }
}

fn run(args: RunArgs, cwd: &Path, no_daemon: bool) -> Result<i32> {
    if args.dry.is_some() && args.graph.is_some() {
        return Err(anyhow!("--dry and --graph cannot be combined"));
    }
    if args.concurrency == Some(0) {
        return Err(anyhow!("--concurrency must be at least 1"));
    }
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let params = RunParams {
        cwd: cwd.to_string_lossy().into_owned(),
        tasks: args.tasks.clone(),
        filters: args.filter.clone(),
        all: args.all,
        affected: args.affected.clone(),
        args: args.args.clone(),
        concurrency: args.concurrency,
        continue_mode: match args.continue_mode {
            None | Some(ContinueArg::DepsOk) => ContinueMode::DepsOk,
            Some(ContinueArg::Never) => ContinueMode::Never,
            Some(ContinueArg::Always) => ContinueMode::Always,
        },
        force: args.force,
        no_cache: args.no_cache,
        output_logs: match args.output_logs {
            LogsArg::Full => OutputLogs::Full,
            LogsArg::ErrorsOnly => OutputLogs::ErrorsOnly,
            LogsArg::NewOnly => OutputLogs::NewOnly,
            LogsArg::None => OutputLogs::None,
        },
        env,
        // The terminal view shows what happened; machines get every task.
        detail: if args.json || args.summarize.is_some() {
            vx_proto::Detail::All
        } else {
            vx_proto::Detail::Changes
        },
        argv: std::env::args().collect(),
        profile: None,
        report: None,
    };
    let conn = conn::connect(cwd, no_daemon)?;
    if args.dry.is_some() || args.graph.is_some() {
        let (conn, v) = call_following(conn, methods::RUN_PLAN, &params, &mut |_| {})?;
        conn.finish();
        let plan: vx_proto::Plan = serde_json::from_value(v)?;
        if let Some(file) = &args.graph {
            let dot = render::dot(&plan);
            if file.is_empty() {
                print!("{dot}");
            } else {
                std::fs::write(file, dot).with_context(|| format!("cannot write {file}"))?;
                eprintln!("vx: wrote the task graph to {file}");
            }
        } else if args.dry == Some(DryArg::Json) {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            render::plan_text(&plan);
        }
        return Ok(0);
    }
    let signals = conn.forward_signals()?;
    let progress = matches!(args.output_logs, LogsArg::Full | LogsArg::NewOnly);
    let mut ui = render::Ui::new(args.json, progress);
    let result = call_following(conn, methods::RUN_START, &params, &mut |e| ui.event(e));
    let caught = signals.caught();
    let v = match result {
        Ok((conn, v)) => {
            conn.finish();
            v
        }
        Err(e) => {
            if let Some(sig) = caught {
                return Ok(128 + sig);
            }
            return Err(e);
        }
    };
    let summary: vx_proto::RunSummary = serde_json::from_value(v)?;
    ui.summary(&summary);
    if let Some(path) = &args.summarize {
        let path = if path.is_empty() {
            PathBuf::from(&summary.root)
                .join(".vx/runs")
                .join(format!("{}.json", summary.run_id))
        } else {
            PathBuf::from(path)
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).ok();
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
        if !args.json {
            eprintln!("vx: summary written to {}", path.display());
        }
    }
    Ok(caught.map(|s| 128 + s).unwrap_or(summary.exit_code))
}

fn rpc_error(e: &RpcError) -> anyhow::Error {
    match e.code {
        codes::INTERNAL_ERROR => anyhow!("internal error in the vx engine: {}", e.message),
        _ => anyhow!("{}", e.message),
    }
}
