//! `vxd` — the vx engine binary.
//!
//! `vxd --stdio` serves one client over stdin/stdout (the no-daemon path the
//! `vx` client uses; the long-lived socket daemon speaks the same protocol).

use tokio::signal::unix::{SignalKind, signal};

fn usage() -> ! {
    eprintln!(
        "usage: vxd --stdio | --version\n\nvxd is started by the `vx` client; run `vx --help`."
    );
    std::process::exit(2);
}

fn main() -> anyhow::Result<()> {
    let arg = std::env::args().nth(1).unwrap_or_default();
    match arg.as_str() {
        "--version" | "-V" => {
            println!(
                "vxd {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                vx_proto::PROTOCOL_VERSION
            );
            return Ok(());
        }
        "--stdio" => {}
        _ => usage(),
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VX_LOG").unwrap_or_else(|_| "warn".into()),
        )
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
            vxd::server::Mode::Stdio,
            sig_rx,
        )
        .await
    })?;
    // Do not wait for stdin readers stuck in blocking reads.
    rt.shutdown_background();
    Ok(())
}
