//! `vx` — the thin command-line client.
//!
//! Parses the command line, connects to the workspace's `vxd` daemon (or
//! starts it; or runs `vxd --stdio` in the foreground on the no-daemon
//! path), speaks JSON-RPC 2.0 to it through `vx-proto`, and renders what
//! comes back. It holds no engine logic and never links `vxd`.

mod cli;
mod conn;
mod history;
mod init;
mod live;
mod mcp;
mod plugins;
mod render;
mod ui;

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
    about = "A fast monorepo task runner with a trustworthy cache"
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
    /// Run tasks, then re-run the ones whose inputs change, until Ctrl-C.
    // `vx run`'s one-shot outputs are refused by `vx watch`: not in its help.
    #[command(
        mut_arg("dry", |a| a.hide(true)),
        mut_arg("graph", |a| a.hide(true)),
        mut_arg("summarize", |a| a.hide(true)),
        mut_arg("profile", |a| a.hide(true)),
        mut_arg("report", |a| a.hide(true))
    )]
    Watch(WatchArgs),
    /// Write vx.toml files translated from turbo.json, nx.json + project.json
    /// or package.json scripts.
    Init(init::InitArgs),
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
    /// The daemon's insights dashboard: print its URL (with its token) and
    /// open it in a browser when one is available.
    Ui {
        /// Only print the URL.
        #[arg(long)]
        no_open: bool,
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
        /// Explain the key the task had in this recorded run (a unique
        /// prefix of its id) instead of the newest one.
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
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
    /// Follow every run of the workspace's daemon (whoever started it)
    /// until Ctrl-C.
    Events {
        /// Only this run (with it, stop when the run ends).
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
        /// Only events about this task (`project#task`).
        #[arg(long, value_name = "TASK")]
        task: Option<String>,
        /// One JSON notification per line.
        #[arg(long)]
        json: bool,
    },
    /// The daemon's runs in progress: each task's state, slot and time.
    Ps {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The daemon's plugins: state, version, hooks and last error.
    Plugins {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The projects, tasks and edges a run of these tasks would involve.
    Graph {
        #[arg(value_name = "TASK")]
        tasks: Vec<String>,
        /// Select projects, as `vx run --filter`.
        #[arg(long, short = 'F', value_name = "PATTERN")]
        filter: Vec<String>,
        /// Every project that declares the tasks.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A task's current key part by part (input files, env names, config,
    /// upstream keys, args), whether it would hit, and what changed since
    /// its last recorded run.
    Explain {
        /// `project#task`, or a task of the current project.
        #[arg(value_name = "TASK")]
        task: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Arguments as `vx run TASK -- ARGS` would forward them (keyed).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// A task's stored log: for its current key, or from a recorded run.
    Log {
        /// `project#task`, or a task of the current project.
        #[arg(value_name = "TASK")]
        task: String,
        /// The log of the key the task had in this recorded run (a unique prefix).
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
        /// Show at most the last N bytes (default 256 KiB, at most 4 MiB).
        #[arg(long, value_name = "N")]
        max_bytes: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of `vx.toml` (for editors: see docs/config.md).
    Schema,
    /// The projects and their tasks.
    Ls {
        /// Only these projects, as `vx run --filter`.
        #[arg(long, short = 'F', value_name = "PATTERN")]
        filter: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve MCP on stdin/stdout for an AI agent (Claude Code, Cursor,
    /// Codex): bridged to the workspace's daemon, so the agent sees its live
    /// state and shares its cache and in-flight runs (see docs/mcp.md).
    Mcp,
    /// Lend this checkout to a coordinating daemon: run the tasks of its
    /// `vx run --distribute` runs, on a checkout of the same commit (runs
    /// `vxd worker`; see docs/distributed.md).
    Worker {
        /// The coordinator's worker URL (`worker_url` in `vx daemon status
        /// --json` on the coordinating machine).
        #[arg(long, value_name = "URL")]
        connect: String,
        /// The link token: the coordinator's `[workers] token`, else its
        /// HTTP token (default: $VX_WORKER_TOKEN, which `ps` does not show).
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
        /// How many tasks to run at once (default: the number of CPUs).
        #[arg(long, value_name = "N")]
        capacity: Option<u32>,
        /// A label tasks may require (`[A-Za-z0-9_.-]+`; repeatable).
        #[arg(long = "label", value_name = "LABEL")]
        labels: Vec<String>,
        /// A name for messages and the `worker` field of events (default:
        /// HOST:PID).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (vx.1, vx-run.1, ...) into DIR (for packagers).
    #[command(name = "__man", hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print docs/cli.md's generated command reference (for its test).
    #[command(name = "__cli-doc", hide = true)]
    CliDoc,
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
    /// Stop the daemon: ask it, then SIGTERM, then SIGKILL if it does not
    /// answer or exit in time.
    Stop {
        /// Do not ask: SIGTERM, then SIGKILL (for a daemon that hangs).
        #[arg(long)]
        force: bool,
    },
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
    /// Drop least recently used entries by age and/or size, then the blobs
    /// no remaining entry names.
    Prune {
        /// Keep at most this much: `500MB`, `2GiB`, `1.5G`, `100k` or bytes.
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
        /// Drop entries not used within this long: `30d`, `12h`, `90m`, `2w`, `3600s`.
        #[arg(long, value_name = "DURATION")]
        max_age: Option<String>,
        /// List what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a remote cache server (turbo's /v8 and Nx's /v1/cache APIs):
    /// `vx cache serve --listen ADDR --store DIR_OR_URL --token-rw SECRET`.
    /// Every argument goes to `vx-cache-server` (`vx cache serve --help`).
    #[command(disable_help_flag = true)]
    Serve {
        /// `--listen ADDR`, `--store DIR|s3://BUCKET/PREFIX?endpoint=URL`,
        /// `--tokens FILE`, `--token-rw SECRET`, `--token-ro SECRET`, …
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ContinueArg {
    Never,
    /// Turbo's spelling is `dependencies-successful`.
    #[value(alias = "dependencies-successful")]
    DepsOk,
    Always,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogsArg {
    Full,
    ErrorsOnly,
    NewOnly,
    None,
    HashOnly,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum LogPrefixArg {
    Auto,
    Task,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum LogOrderArg {
    Auto,
    Stream,
    Grouped,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum EnvModeArg {
    Strict,
    Loose,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum UiArg {
    Stream,
    Tui,
}

/// `--concurrency`: a count, or a percentage of this machine's CPUs
/// (turbo's `50%`; at least 1).
fn parse_concurrency(s: &str) -> std::result::Result<usize, String> {
    let s = s.trim();
    let n = match s.strip_suffix('%') {
        Some(p) => {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a percentage (write `50%`)"))?;
            if p.is_nan() || p <= 0.0 {
                return Err(format!("`{s}`: the percentage must be above 0"));
            }
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            ((cpus as f64 * p / 100.0).floor() as usize).max(1)
        }
        None => s
            .parse::<usize>()
            .map_err(|_| format!("`{s}` is not a number of tasks or a percentage of the CPUs"))?,
    };
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
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
    /// How many tasks run at once: a number, or a percentage of the CPUs
    /// (`50%`). Default: twice the number of CPUs, at least 8.
    #[arg(long, value_name = "N|P%", value_parser = parse_concurrency)]
    concurrency: Option<usize>,
    /// After a failure: `never` (stop), `deps-ok` (skip its dependents; the
    /// default; turbo's `dependencies-successful`) or `always`. A bare
    /// `--continue` means `always`.
    #[arg(long = "continue", value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "always")]
    continue_mode: Option<ContinueArg>,
    /// Ignore cache hits (results are still saved).
    #[arg(long)]
    force: bool,
    /// Neither read nor write the cache.
    #[arg(long)]
    no_cache: bool,
    /// Which caches to read and write, turbo 2's syntax:
    /// `local:rw,remote:r` (a cache not named is off).
    #[arg(long, value_name = "SPEC", require_equals = true)]
    cache: Option<String>,
    /// Offer the tasks that must execute to the workers attached to the
    /// daemon (`vx worker`); outputs travel through the remote cache.
    #[arg(long)]
    distribute: bool,
    /// With `--distribute`: run nothing in the daemon's own lanes, only on
    /// workers.
    #[arg(long, requires = "distribute")]
    no_local: bool,
    /// Which task logs to show (default: `full`, or a task's own
    /// turbo.json `outputLogs`).
    #[arg(long, value_name = "MODE")]
    output_logs: Option<LogsArg>,
    /// Prefix task output lines with the task's name (`auto`, `task`) or
    /// not (`none`).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    log_prefix: LogPrefixArg,
    /// `stream` task output as it comes (`auto`), or show each task's
    /// output in one block when it ends (`grouped`).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    log_order: LogOrderArg,
    /// Which environment reaches tasks: `strict` (the keyed and
    /// pass-through variables and a small allowlist) or `loose` (all of
    /// it). Default: the workspace's turbo.json `envMode`, else strict.
    #[arg(long, value_name = "MODE")]
    env_mode: Option<EnvModeArg>,
    /// Key and pass the env variables of a package's framework
    /// (`NEXT_PUBLIC_*`, `VITE_*`, …), as turbo does; `=false` turns it off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    framework_inference: Option<bool>,
    /// Use this cache directory for this run (as `VX_CACHE_DIR`).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Run only the named tasks, not their dependencies (their keys still
    /// count), as turbo's `--only`.
    #[arg(long)]
    only: bool,
    /// Run the named tasks all at once, ignoring the order between them and
    /// running none of their dependencies, as turbo's `--parallel`.
    #[arg(long)]
    parallel: bool,
    /// Accepted for turbo compatibility: vx has one view, streamed lines
    /// with a progress line on a terminal.
    #[arg(long, value_name = "UI")]
    ui: Option<UiArg>,
    /// Stream the run's events as NDJSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write a JSON run summary (default: `.vx/runs/<run id>.json`).
    #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    summarize: Option<String>,
    /// Print the plan with predicted cache hits and run nothing (`--dry=json` for JSON).
    #[arg(long, alias = "dry-run", value_name = "FORMAT", num_args = 0..=1, require_equals = true, default_missing_value = "text")]
    dry: Option<DryArg>,
    /// Print the task graph as Graphviz DOT and run nothing; to FILE when
    /// given, in its extension's format: .dot, .json, .html, or .png/.svg/.pdf
    /// (rendered by Graphviz `dot`).
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    graph: Option<String>,
    /// Write a Chrome trace of the run (one lane per concurrency slot) to FILE;
    /// open it in Perfetto (ui.perfetto.dev) or chrome://tracing.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Write a markdown summary of the run (for CI job summaries) to FILE;
    /// default: $GITHUB_STEP_SUMMARY (appended) when set, else .vx/report.md.
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    report: Option<String>,
    /// Arguments after `--` are passed to the requested tasks (and keyed).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

#[derive(Args, Debug)]
struct WatchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Quiet time after the last change before a cycle starts, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    debounce: u64,
}

/// The JSON Schema of `vx.toml`, generated from the engine's config types
/// (kept equal to them by tests/tests/schema.rs).
const VX_TOML_SCHEMA: &str = include_str!("../../docs/vx.schema.json");

fn main() {
    let cli = cli::parse();
    let code = match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{} {e:#}", render::error_prefix());
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
        Cmd::Watch(args) => watch(args, &cwd, no_daemon),
        Cmd::Init(args) => init::init(args, &cwd),
        Cmd::Cache {
            action: CacheCmd::Serve { args },
        } => cache_serve(&args),
        Cmd::Cache {
            action:
                CacheCmd::Prune {
                    max_size,
                    max_age,
                    dry_run,
                    json,
                },
        } => {
            let max_size = max_size
                .map(|s| parse_size(&s).map_err(|e| anyhow!("--max-size: {e}")))
                .transpose()?;
            let max_age_ms = max_age
                .map(|s| parse_duration_ms(&s).map_err(|e| anyhow!("--max-age: {e}")))
                .transpose()?;
            if max_size.is_none() && max_age_ms.is_none() {
                return Err(anyhow!(
                    "vx cache prune needs --max-size SIZE, --max-age DURATION or both"
                ));
            }
            let params = vx_proto::CachePruneParams {
                cwd: cwd_s,
                env: cache_env(),
                max_size,
                max_age_ms,
                dry_run,
            };
            let conn = conn::connect(&cwd, no_daemon)?;
            let (conn, v) = call_following(conn, methods::CACHE_PRUNE, &params, &mut |_| {})?;
            conn.finish();
            let p: vx_proto::CachePruned = serde_json::from_value(v)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                render_pruned(&p);
            }
            Ok(0)
        }
        Cmd::Cache { action } => {
            let conn = conn::connect(&cwd, no_daemon)?;
            let params = CacheParams {
                cwd: cwd_s,
                env: cache_env(),
            };
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
                CacheCmd::Prune { .. } | CacheCmd::Serve { .. } => unreachable!("handled above"),
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
        Cmd::Ui { no_open } => ui::ui(&cwd, no_open),
        Cmd::History { task, limit, json } => history::history(&cwd, no_daemon, task, limit, json),
        Cmd::Last {
            run_id,
            failed,
            json,
        } => history::last(&cwd, no_daemon, run_id, failed, json),
        Cmd::Why { task, run, json } => history::why(&cwd, no_daemon, task, run, json),
        Cmd::Info { json } => history::info(&cwd, no_daemon, json),
        Cmd::Ls { filter, json } => live::ls(&cwd, no_daemon, filter, json),
        Cmd::Schema => {
            print!("{VX_TOML_SCHEMA}");
            Ok(0)
        }
        Cmd::Events { run, task, json } => live::events(&cwd, no_daemon, run, task, json),
        Cmd::Ps { json } => live::ps(&cwd, no_daemon, json),
        Cmd::Plugins { json } => plugins::plugins(&cwd, no_daemon, json),
        Cmd::Graph {
            tasks,
            filter,
            all,
            json,
        } => live::graph(&cwd, no_daemon, tasks, filter, all, json),
        Cmd::Explain { task, json, args } => live::explain(&cwd, no_daemon, task, args, json),
        Cmd::Log {
            task,
            run,
            max_bytes,
            json,
        } => live::log(&cwd, no_daemon, task, run, max_bytes, json),
        Cmd::Mcp => mcp::mcp(&cwd, no_daemon),
        Cmd::Worker {
            connect,
            token,
            capacity,
            labels,
            name,
        } => worker(connect, token, capacity, labels, name),
        Cmd::Completions { shell } => {
            cli::completions(shell);
            Ok(0)
        }
        Cmd::Man { dir } => {
            for name in cli::man_pages(&dir)? {
                println!("{}", dir.join(name).display());
            }
            Ok(0)
        }
        Cmd::CliDoc => {
            print!("{}", cli::markdown());
            Ok(0)
        }
    }
}

fn render_pruned(p: &vx_proto::CachePruned) {
    if p.dry_run {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for e in &p.entries {
            let task = if e.task.is_empty() { "?" } else { &e.task };
            println!(
                "would remove {task} {}  last used {} ago  {}",
                &e.key[..e.key.len().min(12)],
                age(now.saturating_sub(e.accessed_at)),
                render::bytes(e.bytes)
            );
        }
        println!(
            "would remove {} entries and free {}; {} entries ({}) would stay in {}",
            p.removed,
            render::bytes(p.freed_bytes),
            p.kept,
            render::bytes(p.kept_bytes),
            p.dir
        );
    } else {
        println!(
            "pruned {} entries, freed {}; kept {} entries ({}) in {}",
            p.removed,
            render::bytes(p.freed_bytes),
            p.kept,
            render::bytes(p.kept_bytes),
            p.dir
        );
    }
}

/// A coarse age: `3d`, `5h`, `12m`, `40s`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// A number with an optional fraction, then a unit: the parts of `1.5G`.
fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let v: f64 = num.parse().ok()?;
    v.is_finite().then_some((v, unit.trim()))
}

/// `500MB`, `2GiB`, `1.5G`, `100k`, `4096`: k/M/G/T are powers of 1000,
/// Ki/Mi/Gi/Ti powers of 1024; a trailing `B` and case are optional.
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("expected a size like 500MB or 2GiB, got `{s}`");
    let (v, unit) = split_number(s).ok_or_else(bad)?;
    let unit = unit.to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let n = (v * mult).round();
    if n >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(n as u64)
}

/// `30d`, `12h`, `90m`, `2w`, `3600s`, `500ms` → milliseconds. A unit is required.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("expected a duration like 30d, 12h, 90m, 2w or 3600s, got `{s}`");
    let (v, unit) = split_number(s).ok_or_else(bad)?;
    let mult: f64 = match unit {
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        "d" => 86400e3,
        "w" => 7.0 * 86400e3,
        _ => return Err(bad()),
    };
    let n = (v * mult).round();
    if n >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(n as u64)
}

/// The client's cache-related environment, sent with `cache.*` requests:
/// the engine decides which cache a request means from it, never from its own.
fn cache_env() -> BTreeMap<String, String> {
    let k = vx_proto::knobs::CACHE_DIR;
    std::env::var(k.name)
        .ok()
        .map(|v| BTreeMap::from([(k.name.to_string(), v)]))
        .unwrap_or_default()
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
        Err(e) if e.code == codes::NEEDS_TERMINAL => {
            // An interactive task gets this terminal: the foreground engine.
            conn.finish();
            let mut conn = Conn::stdio()?;
            let v = conn.call(method, params, on_event)?;
            Ok((conn, v))
        }
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
                Err(err) => match err.downcast_ref::<conn::NotResponding>() {
                    Some(nr) => conn::stdio_instead(nr)?,
                    None => {
                        eprintln!(
                            "vx: warning: not using the daemon ({err:#}); running without it"
                        );
                        Conn::stdio()?
                    }
                },
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
            Err(e) => {
                if let Some(nr) = e.downcast_ref::<conn::NotResponding>() {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"running": true, "responding": false, "pid": nr.pid, "root": root, "socket": paths.socket})
                        );
                    } else {
                        eprintln!("vx: {nr}; run `vx daemon stop --force`");
                    }
                    return Ok(1);
                }
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
                    if let Some(u) = s.endpoints.get("http") {
                        v["http_url"] = serde_json::Value::String(u.clone());
                    }
                    if let Some(u) = s.endpoints.get("worker") {
                        v["worker_url"] = serde_json::Value::String(u.clone());
                    }
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    render::daemon_status(&s);
                }
                Ok(0)
            }
        },
        DaemonCmd::Stop { force } => match conn::stop_daemon(&paths, force)? {
            None => {
                println!("no daemon is running for {}", root.display());
                Ok(0)
            }
            Some(pid) => {
                println!("stopped the daemon (pid {pid})");
                Ok(0)
            }
        },
        DaemonCmd::Start | DaemonCmd::Restart => {
            if matches!(action, DaemonCmd::Restart) {
                conn::stop_daemon(&paths, false)?;
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
    set_cache_dir(&args, cwd);
    if args.dry.is_some() && args.graph.is_some() {
        return Err(anyhow!("--dry and --graph cannot be combined"));
    }
    if args.concurrency == Some(0) {
        return Err(anyhow!("--concurrency must be at least 1"));
    }
    let mut params = run_params(&args, cwd);
    let conn = conn::connect(cwd, no_daemon)?;
    without_held_cache(&conn, &mut params);
    if args.dry.is_some() || args.graph.is_some() {
        let (conn, v) = call_following(conn, methods::RUN_PLAN, &params, &mut |_| {})?;
        conn.finish();
        let plan: vx_proto::Plan = serde_json::from_value(v)?;
        if let Some(file) = &args.graph {
            if file.is_empty() {
                print!("{}", render::dot(&plan));
            } else {
                render::graph_file(file, &plan).map_err(|e| anyhow!(e))?;
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
    let mut ui = ui_for(&args);
    let result = call_following(conn, methods::RUN_START, &params, &mut |e| ui.event(e));
    let caught = signals.caught();
    let v = match result {
        Ok((conn, v)) => {
            // The engine may still be writing the run's history record.
            conn.finish_answered();
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

/// A foreground engine standing in for a daemon that does not respond runs
/// without the cache: the store is shared, but a stopped daemon may be in the
/// middle of a commit, and a writer of the shared index would wait for it.
fn without_held_cache(conn: &Conn, params: &mut RunParams) {
    if conn.instead_of_daemon && !params.no_cache {
        params.no_cache = true;
        eprintln!(
            "vx: running without the cache this time (the daemon that does not respond may be writing to it)"
        );
    }
}

/// The engine parameters of `vx run` / `vx watch`.
/// `--cache-dir DIR` is `VX_CACHE_DIR=DIR` for this command: set in this
/// process, so the request's env and a foreground engine both carry it (a
/// daemon serving another cache hands the run to a foreground engine).
fn set_cache_dir(args: &RunArgs, cwd: &Path) {
    if let Some(dir) = &args.cache_dir {
        // SAFETY: called first thing in a run, before this process starts
        // any thread.
        unsafe { std::env::set_var(vx_proto::knobs::CACHE_DIR.name, cwd.join(dir)) };
    }
}

/// The terminal view a run's flags ask for.
fn ui_for(args: &RunArgs) -> render::Ui {
    // `--ui` is accepted for turbo's sake; both of its views are this one.
    let _ = args.ui;
    let logs = args.output_logs.unwrap_or(LogsArg::Full);
    let progress = matches!(logs, LogsArg::Full | LogsArg::NewOnly | LogsArg::HashOnly);
    let mut ui = render::Ui::new(args.json, progress);
    ui.set_log_style(
        args.log_prefix != LogPrefixArg::None,
        args.log_order == LogOrderArg::Grouped,
        matches!(logs, LogsArg::HashOnly),
    );
    ui
}

fn run_params(args: &RunArgs, cwd: &Path) -> RunParams {
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();

    RunParams {
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
        output_logs: match args.output_logs.unwrap_or(LogsArg::Full) {
            LogsArg::Full => OutputLogs::Full,
            LogsArg::ErrorsOnly => OutputLogs::ErrorsOnly,
            LogsArg::NewOnly => OutputLogs::NewOnly,
            LogsArg::None => OutputLogs::None,
            LogsArg::HashOnly => OutputLogs::HashOnly,
        },
        output_logs_from_tasks: args.output_logs.is_none(),
        env_mode: args.env_mode.map(|m| match m {
            EnvModeArg::Strict => vx_proto::EnvMode::Strict,
            EnvModeArg::Loose => vx_proto::EnvMode::Loose,
        }),
        framework_inference: args.framework_inference,
        only: args.only,
        parallel: args.parallel,
        env,
        // The terminal view shows what happened; machines get every task.
        detail: if args.json || args.summarize.is_some() {
            vx_proto::Detail::All
        } else {
            vx_proto::Detail::Changes
        },
        tty: {
            use std::io::IsTerminal;
            std::io::stdin().is_terminal() && std::io::stdout().is_terminal() && !args.json
        },
        argv: std::env::args().collect(),
        profile: args
            .profile
            .as_ref()
            .map(|p| cwd.join(p).to_string_lossy().into_owned()),
        cache: args.cache.clone(),
        distribute: args.distribute,
        distribute_local: !args.no_local,
        report: args.report.as_ref().map(|r| {
            if !r.is_empty() {
                return cwd.join(r).to_string_lossy().into_owned();
            }
            match std::env::var("GITHUB_STEP_SUMMARY") {
                Ok(p) if !p.is_empty() => p,
                _ => conn::guess_root(cwd)
                    .unwrap_or_else(|| cwd.to_path_buf())
                    .join(".vx/report.md")
                    .to_string_lossy()
                    .into_owned(),
            }
        }),
    }
}

/// `vx watch`: a dev loop served by the daemon's watcher.
fn watch(args: WatchArgs, cwd: &Path, no_daemon: bool) -> Result<i32> {
    let r = &args.run;
    set_cache_dir(r, cwd);
    if r.dry.is_some()
        || r.graph.is_some()
        || r.summarize.is_some()
        || r.profile.is_some()
        || r.report.is_some()
    {
        return Err(anyhow!(
            "vx watch does not take --dry, --graph, --summarize, --profile or --report (use `vx run`)"
        ));
    }
    if r.concurrency == Some(0) {
        return Err(anyhow!("--concurrency must be at least 1"));
    }
    let mut run = run_params(r, cwd);
    // Each cycle reports only what changed.
    run.detail = vx_proto::Detail::Changes;
    let params = vx_proto::WatchParams {
        run,
        debounce_ms: Some(args.debounce),
    };
    let mut params = params;
    let conn = conn::connect(cwd, no_daemon)?;
    without_held_cache(&conn, &mut params.run);
    let signals = conn.forward_signals()?;
    let mut ui = ui_for(r);
    ui.watching = true;
    let result = call_following(conn, methods::WATCH_START, &params, &mut |e| ui.event(e));
    let caught = signals.caught();
    match result {
        Ok((conn, v)) => {
            conn.finish();
            let s: vx_proto::WatchSummary = serde_json::from_value(v)?;
            if !r.json {
                eprintln!(
                    "vx watch: stopped after {}",
                    render::plural(s.cycles as usize, "cycle")
                );
            }
            Ok(s.exit_code)
        }
        Err(e) => {
            if caught.is_some() {
                eprintln!("vx watch: stopped");
                return Ok(0);
            }
            Err(e)
        }
    }
}

fn rpc_error(e: &RpcError) -> anyhow::Error {
    match e.code {
        codes::INTERNAL_ERROR => anyhow!("internal error in the vx engine: {}", e.message),
        _ => anyhow!("{}", e.message),
    }
}

/// `vx cache serve`: replaces this process with `vx-cache-server`
/// (`VX_CACHE_SERVER_BIN`, else beside `vx`, else on `PATH`).
fn cache_serve(args: &[String]) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let bin = match vx_proto::knobs::CACHE_SERVER_BIN.get_process_os() {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .ok()
            .map(|e| e.with_file_name("vx-cache-server"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("vx-cache-server")),
    };
    let err = std::process::Command::new(&bin).args(args).exec();
    Err(anyhow!(
        "cannot run {}: {err} (install vx-cache-server beside vx, or set {})",
        bin.display(),
        vx_proto::knobs::CACHE_SERVER_BIN.name
    ))
}

/// `vx worker`: replaces this process with `vxd worker` and the same
/// arguments (the token goes in `VX_WORKER_TOKEN`, not the command line).
fn worker(
    connect: String,
    token: Option<String>,
    capacity: Option<u32>,
    labels: Vec<String>,
    name: Option<String>,
) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let bin = conn::vxd_path();
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["worker", "--connect", &connect]);
    if let Some(n) = capacity {
        cmd.args(["--capacity", &n.to_string()]);
    }
    for l in &labels {
        cmd.args(["--label", l]);
    }
    if let Some(n) = &name {
        cmd.args(["--name", n]);
    }
    if let Some(t) = token {
        cmd.env(vx_proto::knobs::WORKER_TOKEN.name, t);
    }
    let err = cmd.exec();
    Err(anyhow!(
        "cannot run {} worker: {err} (install vxd beside vx, or set {})",
        bin.display(),
        vx_proto::knobs::DAEMON_BIN.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("100k"), Ok(100_000));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_size("3 KiB"), Ok(3072));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in [
            "abc",
            "",
            "-1",
            "1.",
            ".5G",
            "5X",
            "1e3",
            "5GG",
            "99999999999T",
        ] {
            assert_eq!(
                parse_size(bad),
                Err(format!("expected a size like 500MB or 2GiB, got `{bad}`")),
                "{bad}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_duration_ms("12h"), Ok(12 * 3_600_000));
        assert_eq!(parse_duration_ms("90m"), Ok(90 * 60_000));
        assert_eq!(parse_duration_ms("2w"), Ok(14 * 86_400_000));
        assert_eq!(parse_duration_ms("3600s"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1.5d"), Ok(129_600_000));
        for bad in ["30", "abc", "d", "5y", "-3d", ""] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
