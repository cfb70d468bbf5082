//! `vxd` — the vx engine binary.
//!
//! - `vxd --stdio`: serve one client over stdin/stdout (the no-daemon path).
//! - `vxd --daemon --root DIR`: the long-lived per-workspace daemon on its
//!   Unix socket (started by `vx`; see `docs/protocol.md`).
//! - `vxd --guard`: the process-group guard the engine starts for itself.

use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};

fn usage() -> ! {
    eprintln!(
        "usage: vxd --stdio | --daemon --root DIR | --version\n\nvxd is started by the `vx` client; run `vx --help`."
    );
    std::process::exit(2);
}

fn main() -> anyhow::Result<()> {
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
        Some("--daemon") => {
            let root = match (args.get(1).map(String::as_str), args.get(2)) {
                (Some("--root"), Some(r)) => PathBuf::from(r),
                _ => usage(),
            };
            daemon(root)
        }
        _ => usage(),
    }
}

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("VX_LOG")
        .unwrap_or_else(|_| "warn,notify=error".into())
}

fn stdio() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter())
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
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
        vxd::server::serve(
            tokio::io::stdin(),
            tokio::io::stdout(),
            vxd::server::Ctx::stdio(),
            sig_rx,
        )
        .await
    })?;
    // Do not wait for stdin readers stuck in blocking reads.
    rt.shutdown_background();
    Ok(())
}

fn daemon(root: PathBuf) -> anyhow::Result<()> {
    let root = std::fs::canonicalize(&root)?;
    let (log_path, log) = vxd::server::daemon::open_log(&root)?;
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(log))
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VX_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(vxd::server::daemon::run(root, log_path));
    if let Err(e) = &r {
        tracing::error!("vxd daemon failed: {e:#}");
    }
    rt.shutdown_background();
    r
}
