//! The long-lived daemon's lifecycle: one per workspace.
//!
//! Owns: the socket directory (mode 0700, owned by us), the liveness lock
//! (an `flock` held for the daemon's whole life — a daemon killed with -9
//! releases it, so a stale socket is recognised and replaced), binding the
//! socket, refusing peers of another uid, serving connections, idle exit,
//! exit when the workspace root disappears, and the log file under `.vx/`.
//!
//! Never: engine logic (that is `engine` and `state`).

use super::{Ctx, DaemonInfo, Mode};
use crate::state::Hot;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use vx_proto::paths::daemon_paths;

/// Default idle time before the daemon exits.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3 * 60 * 60);

/// Parses `250ms`, `30s`, `5m`, `3h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

fn idle_timeout() -> Duration {
    vx_proto::knobs::DAEMON_IDLE_TIMEOUT
        .get_process()
        .and_then(|v| parse_duration(&v))
        .unwrap_or(DEFAULT_IDLE)
}

/// Resident set size of this process.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// The `daemon.status` answer.
pub fn status(hot: &Hot, d: &DaemonInfo) -> vx_proto::DaemonStatus {
    let (projects, tasks, files_indexed) = hot.counts();
    vx_proto::DaemonStatus {
        pid: std::process::id(),
        version: d.version.clone(),
        protocol: vx_proto::PROTOCOL_VERSION,
        root: hot.root.to_string_lossy().into_owned(),
        socket: d.socket.to_string_lossy().into_owned(),
        uptime_ms: hot.started.elapsed().as_millis() as u64,
        idle_ms: hot.idle_for().as_millis() as u64,
        idle_timeout_ms: d.idle_timeout.as_millis() as u64,
        projects,
        tasks,
        files_indexed,
        watches: hot.watches.load(Ordering::Relaxed),
        rss_bytes: rss_bytes(),
        runs_served: hot.runs_served.load(Ordering::Relaxed),
        runs_replayed: hot.runs_replayed.load(Ordering::Relaxed),
        tasks_memo_served: hot.tasks_memo_served.load(Ordering::Relaxed),
        connections: d.connections.load(Ordering::Relaxed),
        rescans: hot.rescans.load(Ordering::Relaxed),
        log_file: d.log_file.to_string_lossy().into_owned(),
        endpoints: d.endpoints.lock().map(|m| m.clone()).unwrap_or_default(),
    }
}

fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let md = std::fs::metadata(dir)?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    anyhow::ensure!(
        md.uid() == uid,
        "{} belongs to uid {}, not {uid}",
        dir.display(),
        md.uid()
    );
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Takes the liveness lock, or returns `None` when another daemon holds it.
fn take_live_lock(path: &Path) -> anyhow::Result<Option<std::fs::File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((r == 0).then_some(f))
}

/// Opens the log file (appending; restarted past 10 MiB).
pub fn open_log(root: &Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let dir = root.join(".vx");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("daemon.log");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > 10 << 20) {
        let _ = std::fs::rename(&path, dir.join("daemon.log.old"));
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    Ok((path, f))
}

/// Runs the daemon for `root` until it is idle, stopped, or its root is gone,
/// with `attachments` (the transports of the `vxd` binary's other crates)
/// started once it serves its socket and stopped with it.
pub async fn run(
    root: PathBuf,
    log_file: PathBuf,
    attachments: Vec<Box<dyn super::attach::Attachment>>,
) -> anyhow::Result<()> {
    let found = crate::workspace::find_root(&root).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        found == root,
        "{} is not a workspace root (its root is {})",
        root.display(),
        found.display()
    );
    let paths = daemon_paths(&root).map_err(|e| anyhow::anyhow!(e))?;
    private_dir(&paths.dir)?;
    // A daemon that is shutting down still holds the lock for a moment.
    let mut live = None;
    for _ in 0..250 {
        live = take_live_lock(&paths.live_lock)?;
        if live.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(_live) = live else {
        tracing::info!("another daemon already serves {}", root.display());
        return Ok(());
    };
    // We hold the liveness lock: any socket file left is stale.
    let _ = std::fs::remove_file(&paths.socket);
    let listener = UnixListener::bind(&paths.socket)?;
    std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600))?;
    let socket_ino = std::fs::metadata(&paths.socket)
        .map(|m| m.ino())
        .unwrap_or(0);
    let hot = Hot::start(&root)?;
    crate::engine::distribute::Coordinator::global().set_root(&root);
    // Hold no directory of the workspace open.
    let _ = std::env::set_current_dir("/");
    let idle = idle_timeout();
    let info = Arc::new(DaemonInfo {
        socket: paths.socket.clone(),
        log_file,
        idle_timeout: idle,
        connections: Default::default(),
        version: vx_proto::knobs::DAEMON_VERSION_OVERRIDE
            .get_process()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
        endpoints: Default::default(),
    });
    let ctx = Arc::new(Ctx {
        mode: Mode::Daemon,
        hot: Some(hot.clone()),
        daemon: Some(info.clone()),
        cancel: Default::default(),
    });
    tracing::info!(pid = std::process::id(), socket = %paths.socket.display(), "vxd daemon serving {}", root.display());
    // Warm the state now so the first run is fast too.
    {
        let hot = hot.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = hot.sync() {
                tracing::info!("initial load failed (reported to clients): {}", e.message);
            }
        });
    }
    let stopping = tokio_util::sync::CancellationToken::new();
    // The plugins of the root vx.toml: children of the daemon, started once.
    crate::plugins::Host::spawn(crate::bus::global().clone(), root.clone(), stopping.clone());
    crate::plugins::install_hooks();
    super::attach::start_all(
        &attachments,
        &super::attach::Door::new(ctx.clone(), info.clone(), root.clone(), stopping.clone()),
    );
    // SAFETY: getuid cannot fail.
    let my_uid = unsafe { libc::getuid() };
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<&'static str>();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // Signals for connections: a stopping daemon cancels every run.
    let conn_signals: Arc<std::sync::Mutex<Vec<mpsc::UnboundedSender<i32>>>> = Default::default();
    let reason = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => { tracing::warn!("accept failed: {e}"); continue; }
                };
                match stream.peer_cred() {
                    Ok(c) if c.uid() == my_uid => {}
                    Ok(c) => {
                        tracing::warn!("refused a connection from uid {} (this daemon belongs to uid {my_uid})", c.uid());
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("refused a connection without credentials: {e}");
                        continue;
                    }
                }
                let (r, w) = stream.into_split();
                let ctx = ctx.clone();
                let info = info.clone();
                let stop = stop_tx.clone();
                let (sig_tx, sig_rx) = mpsc::unbounded_channel();
                if let Ok(mut v) = conn_signals.lock() {
                    v.retain(|s| !s.is_closed());
                    v.push(sig_tx);
                }
                info.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let r = super::serve(r, w, ctx, sig_rx).await;
                    info.connections.fetch_sub(1, Ordering::Relaxed);
                    match r {
                        Ok(true) => { let _ = stop.send("a client asked it to stop"); }
                        Ok(false) => {}
                        Err(e) => tracing::warn!("connection ended with an error: {e}"),
                    }
                });
            }
            Some(why) = stop_rx.recv() => break why,
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = tick.tick() => {
                if hot.root_gone.load(Ordering::Relaxed) || !root.exists() {
                    break "the workspace root disappeared";
                }
                if info.connections.load(Ordering::Relaxed) == 0 && hot.idle_for() >= idle {
                    break "idle";
                }
                // Our socket was removed or replaced: nobody can reach us.
                if std::fs::metadata(&paths.socket).map(|m| m.ino()).unwrap_or(0) != socket_ino {
                    break "its socket was removed";
                }
            }
        }
    };
    tracing::info!("vxd daemon stopping: {reason}");
    // Stop accepting, cancel what runs, and let connections wind down briefly.
    drop(listener);
    if std::fs::metadata(&paths.socket)
        .map(|m| m.ino())
        .unwrap_or(0)
        == socket_ino
    {
        let _ = std::fs::remove_file(&paths.socket);
    }
    ctx.cancel.cancel(libc::SIGTERM);
    stopping.cancel();
    if let Ok(v) = conn_signals.lock() {
        for s in v.iter() {
            let _ = s.send(libc::SIGTERM);
        }
    }
    let deadline =
        tokio::time::Instant::now() + crate::exec::DEFAULT_KILL_GRACE + Duration::from_secs(2);
    while info.connections.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hot.persist_index();
    hot.close_store();
    crate::history::close_all();
    Ok(())
}
