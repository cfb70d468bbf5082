//! `vxd` — the vx engine binary: the engine (`vxd-engine`, imported as
//! `vxd`) with the transports that attach to its daemon.
//!
//! - `vxd --stdio`: serve one client over stdin/stdout (the no-daemon path).
//!   It never outlives its client by more than the history record of a
//!   run it answered (written after the answer, committed before exit): it
//!   exits when its stdin closes, on SIGINT/SIGTERM/SIGHUP (after
//!   cancelling its runs), and — Linux — when its parent dies
//!   (`PR_SET_PDEATHSIG`).
//! - `vxd --daemon --root DIR`: the long-lived per-workspace daemon on its
//!   Unix socket (started by `vx`; see `docs/protocol.md`). Its stderr and
//!   panics go to `.vx/daemon.log`; the run knobs (`vx_proto::knobs`,
//!   scope `Run`: `VX_CACHE_DIR`, `VX_KILL_GRACE_MS`, …) of whichever client
//!   started it are removed from its environment: each request carries its
//!   client's.
//! - `vxd --guard`: the process-group guard the engine starts for itself.
//! - `vxd worker --connect URL …`: a worker lending this checkout to a
//!   coordinating daemon (`vx run --distribute`; daemon/workers,
//!   docs/distributed.md).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};

fn usage() -> ! {
    eprintln!(
        "usage: vxd --stdio | --daemon --root DIR | worker --connect URL [OPTIONS] | --version\n\nvxd is started by the `vx` client; run `vx --help`."
    );
    std::process::exit(2);
}

fn main() -> anyhow::Result<()> {
    // The remote cache client (`[remote_cache]`, `TURBO_API`, …), for the
    // daemon and `--stdio` alike.
    vxd_remote::register();
    // The REAPI remote cache client (`[remote_execution]`, `VX_REAPI_*`).
    vxd_reapi::register();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!(
                "vxd {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                vx_proto::PROTOCOL_VERSION
            );
            Ok(())
        }
        Some("--guard") => {
            vxd::exec::guard_main();
            Ok(())
        }
        Some("--stdio") => stdio(),
        Some("worker") => std::process::exit(vxd_workers::worker_main(args[1..].to_vec())),
        Some("--daemon") => {
            let root = match (args.get(1).map(String::as_str), args.get(2)) {
                (Some("--root"), Some(r)) => PathBuf::from(r),
                _ => usage(),
            };
            vxd::mem::tune_for_daemon();
            daemon(root)
        }
        _ => usage(),
    }
}

/// The transports and exporters that attach to a daemon, each from its own
/// crate (the engine, `vxd-engine`, links none of them).
fn attachments() -> Vec<Box<dyn vxd::server::attach::Attachment>> {
    vec![
        // HTTP, SSE, WebSocket and the dashboard (daemon/http), with MCP's
        // Streamable HTTP mounted at /mcp behind the same token.
        Box::new(
            vxd_http::Http::new().mount("/mcp", |door: &vxd::server::attach::Door| {
                vxd_mcp::streamable_http(door.clone())
            }),
        ),
        // MCP over the socket (`vx mcp`'s `daemon.upgrade`) (daemon/mcp).
        Box::new(vxd_mcp::McpAttachment),
        // OpenTelemetry export of every traced run (daemon/otel).
        Box::new(vxd_otel::Attachment),
        // Worker links on gRPC: the door `vxd worker`s connect to
        // (daemon/workers).
        Box::new(vxd_workers::WorkerDoor),
    ]
}

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env(vx_proto::knobs::LOG.name)
        .unwrap_or_else(|_| "warn,notify=error".into())
}

/// Asks the kernel to SIGTERM this process when its parent (the client)
/// dies, and exits at once if the parent is already gone.
fn die_with_parent() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getppid and prctl(PR_SET_PDEATHSIG) have no preconditions.
        let parent = unsafe { libc::getppid() };
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        }
        // The parent died before the request took effect.
        if unsafe { libc::getppid() } != parent {
            std::process::exit(1);
        }
    }
}

fn stdio() -> anyhow::Result<()> {
    die_with_parent();
    // `vx mcp` without a daemon switches its pipe to MCP.
    vxd_mcp::register_stdio();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter())
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = rt.block_on(async {
        let (sig_tx, sig_rx) = tokio::sync::mpsc::unbounded_channel();
        for (kind, num) in [
            (SignalKind::interrupt(), libc::SIGINT),
            (SignalKind::terminate(), libc::SIGTERM),
            (SignalKind::hangup(), libc::SIGHUP),
        ] {
            let mut s = signal(kind)?;
            let tx = sig_tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    let _ = tx.send(num);
                }
            });
        }
        // Telemetry of the no-daemon path: the exporter reads this
        // process's bus; its last exports get a bounded wait at exit.
        let otel_stop = tokio_util::sync::CancellationToken::new();
        let otel = vxd_otel::wanted_here()
            .then(|| vxd_otel::Exporter::spawn(vxd::bus::global().clone(), otel_stop.clone()));
        let r = vxd::server::serve(
            tokio::io::stdin(),
            tokio::io::stdout(),
            vxd::server::Ctx::stdio(),
            sig_rx,
        )
        .await;
        otel_stop.cancel();
        if let Some(h) = otel {
            let _ = h.await;
        }
        r
    });
    // A run answers before its history record is written: the record is
    // committed before this process ends, even when the client is already
    // gone (its SIGTERM, from PR_SET_PDEATHSIG, is caught by the runtime's
    // handler, which stays installed until the runtime shuts down; a
    // write to its closed pipe is EPIPE, SIGPIPE being ignored).
    if !vxd::engine::settle_records(RECORD_GRACE) {
        tracing::warn!(
            "a run's history record was not written within {RECORD_GRACE:?}; that run is not recorded"
        );
    }
    // Do not wait for stdin readers stuck in blocking reads.
    rt.shutdown_background();
    served?;
    Ok(())
}

/// How long `vxd --stdio` waits, before exiting, for the history records
/// of runs it has answered (a record waits for another process's write
/// transaction, so this is generous).
const RECORD_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

fn daemon(root: PathBuf) -> anyhow::Result<()> {
    // Run knobs belong to a client's request, never to a daemon: drop the
    // values inherited from the client that started it.
    for knob in vx_proto::knobs::run_knobs() {
        let name = knob.name;
        // SAFETY: no other thread exists yet (the runtime starts below).
        unsafe { std::env::remove_var(name) };
    }
    let root = std::fs::canonicalize(&root)?;
    let (log_path, log) = vxd::server::daemon::open_log(&root)?;
    // Anything written to stderr (a library's message, an abort) lands in
    // the log instead of /dev/null.
    // SAFETY: dup2 onto fd 2 with a descriptor we own.
    unsafe {
        libc::dup2(log.as_raw_fd(), 2);
    }
    // A panic anywhere (a handler, a blocking task, a thread) is logged with
    // its location and backtrace.
    std::panic::set_hook(Box::new(|info| {
        let bt = std::backtrace::Backtrace::force_capture();
        tracing::error!("{info}\n{bt}");
    }));
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(log))
        .with_ansi(false)
        .with_env_filter(
            // notify logs every watch the kernel dropped before it could
            // (a warning and an info line per deleted directory): noise.
            tracing_subscriber::EnvFilter::try_from_env(vx_proto::knobs::LOG.name)
                .unwrap_or_else(|_| "info,notify=error".into()),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(vxd::server::daemon::run(root, log_path, attachments()));
    if let Err(e) = &r {
        tracing::error!("vxd daemon failed: {e:#}");
    }
    rt.shutdown_background();
    r
}
