//! `vx` — the thin command-line client.
//!
//! Parses the command line, starts the `vxd` engine (for now always the
//! no-daemon path: `vxd --stdio` over a pipe), speaks JSON-RPC 2.0 to it
//! through `vx-proto`, and renders what comes back. It holds no engine
//! logic and never links `vxd`.

mod render;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use vx_proto::framing::{Frame, LineFramer};
use vx_proto::{
    CacheParams, ContinueMode, HelloParams, Id, Message, OutputLogs, PROTOCOL_VERSION, RpcError,
    RunCancelParams, RunEvent, RunParams, codes, methods,
};

#[derive(Parser, Debug)]
#[command(
    name = "vx",
    version,
    about = "vx — a fast monorepo task runner with a trustworthy cache"
)]
struct Cli {
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
    /// Run the engine in the foreground for this command (the default for now).
    #[arg(long)]
    no_daemon: bool,
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
    match cli.command {
        Cmd::Run(args) => run(args, cwd_s),
        Cmd::Cache { action } => {
            let mut conn = Conn::start()?;
            let params = CacheParams { cwd: cwd_s };
            match action {
                CacheCmd::Stats { json } => {
                    let v = conn.call(methods::CACHE_STATS, &params, |_| {})?;
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
                    let v = conn.call(methods::CACHE_CLEAN, &params, |_| {})?;
                    let s: vx_proto::CacheCleaned = serde_json::from_value(v)?;
                    println!(
                        "removed {} ({} entries, {})",
                        s.dir,
                        s.entries,
                        render::bytes(s.freed_bytes)
                    );
                }
            }
            conn.finish();
            Ok(0)
        }
    }
}

fn run(args: RunArgs, cwd: String) -> Result<i32> {
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
        cwd,
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
    };
    let mut conn = Conn::start()?;
    if args.dry.is_some() || args.graph.is_some() {
        let v = conn.call(methods::RUN_PLAN, &params, |_| {})?;
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
    let mut ui = render::Ui::new(args.json);
    let result = conn.call(methods::RUN_START, &params, |e| ui.event(e));
    let caught = signals.caught();
    conn.finish();
    let v = match result {
        Ok(v) => v,
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

/// Where the engine binary is: `VX_DAEMON_BIN`, else next to this
/// executable, else `vxd` on PATH.
fn vxd_path() -> PathBuf {
    if let Some(p) = std::env::var_os("VX_DAEMON_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        let beside = exe.with_file_name("vxd");
        if beside.exists() {
            return beside;
        }
    }
    PathBuf::from("vxd")
}

/// A connection to an engine over its stdio.
struct Conn {
    child: Child,
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    reader: BufReader<std::process::ChildStdout>,
    framer: LineFramer,
    next_id: i64,
}

struct SignalWatch {
    caught: Arc<Mutex<Option<i32>>>,
}

impl SignalWatch {
    fn caught(&self) -> Option<i32> {
        self.caught.lock().ok().and_then(|c| *c)
    }
}

impl Conn {
    fn start() -> Result<Self> {
        let bin = vxd_path();
        let mut child = Command::new(&bin)
            .arg("--stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start the vx engine `{}` (set VX_DAEMON_BIN or put vxd next to vx)",
                    bin.display()
                )
            })?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin pipe to vxd"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe from vxd"))?;
        let mut conn = Conn {
            child,
            stdin: Arc::new(Mutex::new(Some(stdin))),
            reader: BufReader::with_capacity(256 * 1024, stdout),
            framer: LineFramer::new(),
            next_id: 1,
        };
        let hello = HelloParams {
            protocol: PROTOCOL_VERSION,
            client_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let r: vx_proto::HelloResult =
            serde_json::from_value(conn.call(methods::HELLO, &hello, |_| {})?)?;
        if r.version != env!("CARGO_PKG_VERSION") {
            eprintln!(
                "vx: warning: vx {} is talking to vxd {} ({})",
                env!("CARGO_PKG_VERSION"),
                r.version,
                vxd_path().display()
            );
        }
        Ok(conn)
    }

    fn send(&self, m: &Message) -> Result<()> {
        let mut g = self
            .stdin
            .lock()
            .map_err(|_| anyhow!("stdin lock poisoned"))?;
        let w = g.as_mut().ok_or_else(|| anyhow!("connection closed"))?;
        w.write_all(&m.encode())
            .context("the vx engine went away")?;
        w.flush().context("the vx engine went away")?;
        Ok(())
    }

    /// Sends a request and reads until its response, passing run events to `on_event`.
    fn call(
        &mut self,
        method: &str,
        params: &impl serde::Serialize,
        mut on_event: impl FnMut(RunEvent),
    ) -> Result<serde_json::Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Message::request(Id::Num(id), method, params))?;
        loop {
            let buf = self
                .reader
                .fill_buf()
                .context("reading from the vx engine")?;
            if buf.is_empty() {
                let status = self.child.wait().ok();
                return Err(anyhow!(
                    "the vx engine exited unexpectedly{}",
                    status.map(|s| format!(" ({s})")).unwrap_or_default()
                ));
            }
            let n = buf.len();
            let frames = self.framer.push(buf);
            self.reader.consume(n);
            for f in frames {
                let Frame::Line(line) = f else { continue };
                match Message::decode(&line) {
                    Ok(Message::Notification { method, params })
                        if method == methods::RUN_EVENT =>
                    {
                        if let Ok(e) = serde_json::from_value::<RunEvent>(params) {
                            on_event(e);
                        }
                    }
                    Ok(Message::Response {
                        id: Some(Id::Num(rid)),
                        result,
                    }) if rid == id => {
                        return result.map_err(|e| rpc_error(&e));
                    }
                    Ok(Message::Response {
                        id: None,
                        result: Err(e),
                    }) => {
                        return Err(anyhow!("protocol error from the vx engine: {}", e.message));
                    }
                    _ => {}
                }
            }
            render::flush();
        }
    }

    /// Forwards SIGINT/SIGTERM/SIGHUP to the engine as `run.cancel`; a
    /// second signal exits at once (the engine then sees its stdin close and
    /// stops every task).
    fn forward_signals(&self) -> Result<SignalWatch> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let caught = Arc::new(Mutex::new(None));
        let c2 = caught.clone();
        let stdin = self.stdin.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                let sig = if sig == SIGHUP { SIGTERM } else { sig };
                let first = c2
                    .lock()
                    .map(|mut c| c.replace(sig).is_none())
                    .unwrap_or(true);
                if !first {
                    std::process::exit(128 + sig);
                }
                if let Ok(mut g) = stdin.lock()
                    && let Some(w) = g.as_mut()
                {
                    let m =
                        Message::notification(methods::RUN_CANCEL, RunCancelParams { signal: sig });
                    let _ = w.write_all(&m.encode());
                    let _ = w.flush();
                }
            }
        });
        Ok(SignalWatch { caught })
    }

    /// Closes the engine's stdin and reaps it.
    fn finish(mut self) {
        if let Ok(mut g) = self.stdin.lock() {
            g.take();
        }
        let _ = self.child.wait();
    }
}

fn rpc_error(e: &RpcError) -> anyhow::Error {
    match e.code {
        codes::INTERNAL_ERROR => anyhow!("internal error in the vx engine: {}", e.message),
        _ => anyhow!("{}", e.message),
    }
}
