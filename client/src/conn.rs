//! Connections to the engine: a long-lived daemon over its Unix socket
//! (connect, or start one under a spawn lock), or the no-daemon path
//! (`vxd --stdio` over a pipe). Both speak the same JSON-RPC.

use anyhow::{Context, Result, anyhow};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vx_proto::framing::{Frame, LineFramer};
use vx_proto::paths::{DaemonPaths, daemon_paths};
use vx_proto::{
    HelloParams, HelloResult, Id, Message, PROTOCOL_VERSION, RpcError, RunCancelParams, RunEvent,
    methods,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the engine binary is: `VX_DAEMON_BIN`, else next to this
/// executable, else `vxd` on PATH.
pub fn vxd_path() -> PathBuf {
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

/// Whether this invocation should use the daemon: not with `--no-daemon`
/// or `VX_DAEMON=0`; not by default when `CI` is set (`VX_DAEMON=1` wins).
pub fn daemon_wanted(no_daemon_flag: bool) -> bool {
    if no_daemon_flag {
        return false;
    }
    let truthy = |v: &str| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false");
    match std::env::var("VX_DAEMON") {
        Ok(v) if !v.is_empty() => truthy(&v),
        _ => !std::env::var("CI").is_ok_and(|v| truthy(&v)),
    }
}

fn read_small(p: &Path) -> Option<String> {
    let f = std::fs::File::open(p).ok()?;
    let mut s = String::new();
    f.take(1 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

/// The workspace root the daemon is keyed by: the nearest directory above
/// `cwd` that declares a workspace (`vx.toml` with `[workspace]`,
/// `pnpm-workspace.yaml`, `package.json` with `workspaces`, a root
/// `turbo.json`), else the nearest `vx.toml`/`package.json`. This is a
/// guess; the engine is authoritative and redirects with `WRONG_WORKSPACE`.
pub fn guess_root(cwd: &Path) -> Option<PathBuf> {
    let mut fallback = None;
    for dir in cwd.ancestors() {
        let vx = read_small(&dir.join("vx.toml"));
        if vx
            .as_deref()
            .is_some_and(|s| s.lines().any(|l| l.trim_start().starts_with("[workspace")))
        {
            return Some(dir.to_path_buf());
        }
        if dir.join("pnpm-workspace.yaml").is_file() {
            return Some(dir.to_path_buf());
        }
        let pkg = read_small(&dir.join("package.json"));
        if pkg.as_deref().is_some_and(|s| s.contains("\"workspaces\"")) {
            return Some(dir.to_path_buf());
        }
        if pkg.is_some()
            && read_small(&dir.join("turbo.json")).is_some_and(|s| !s.contains("\"extends\""))
        {
            return Some(dir.to_path_buf());
        }
        if fallback.is_none() && (vx.is_some() || pkg.is_some()) {
            fallback = Some(dir.to_path_buf());
        }
    }
    fallback
}

type SharedWriter = Arc<Mutex<Option<Box<dyn Write + Send>>>>;

/// The newest connection's writer: where a forwarded signal goes, so a
/// request re-sent to another engine (a WRONG_WORKSPACE redirect, an
/// interactive run handed to the foreground engine) can still be cancelled.
static ACTIVE: Mutex<Option<SharedWriter>> = Mutex::new(None);

/// An open JSON-RPC connection to an engine.
pub struct Conn {
    child: Option<Child>,
    writer: SharedWriter,
    reader: BufReader<Box<dyn Read + Send>>,
    framer: LineFramer,
    next_id: i64,
    pub hello: HelloResult,
}

pub struct SignalWatch {
    caught: Arc<Mutex<Option<i32>>>,
}

impl SignalWatch {
    pub fn caught(&self) -> Option<i32> {
        self.caught.lock().ok().and_then(|c| *c)
    }
}

/// An exclusive `flock` held until dropped.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path, timeout: Duration) -> Result<FileLock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let start = Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own.
            let r = unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    libc::LOCK_EX | libc::LOCK_NB,
                )
            };
            if r == 0 {
                return Ok(FileLock(f));
            }
            if start.elapsed() > timeout {
                return Err(anyhow!("timed out waiting for {}", path.display()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor.
        unsafe {
            libc::flock(std::os::fd::AsRawFd::as_raw_fd(&self.0), libc::LOCK_UN);
        }
    }
}

fn ensure_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let md = std::fs::metadata(dir)?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if md.uid() != uid {
        return Err(anyhow!("{} belongs to another user", dir.display()));
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl Conn {
    fn new(
        child: Option<Child>,
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
    ) -> Result<Conn> {
        let mut conn = Conn {
            child,
            writer: Arc::new(Mutex::new(Some(writer))),
            reader: BufReader::with_capacity(256 * 1024, reader),
            framer: LineFramer::new(),
            next_id: 1,
            hello: HelloResult {
                protocol: 0,
                version: String::new(),
                pid: 0,
                mode: String::new(),
                root: None,
            },
        };
        let hello = HelloParams {
            protocol: PROTOCOL_VERSION,
            client_version: VERSION.to_string(),
        };
        conn.hello = serde_json::from_value(conn.call(methods::HELLO, &hello, |_| {})?)?;
        if let Ok(mut a) = ACTIVE.lock() {
            *a = Some(conn.writer.clone());
        }
        Ok(conn)
    }

    /// The no-daemon path: `vxd --stdio` in the foreground.
    pub fn stdio() -> Result<Conn> {
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
        Conn::new(Some(child), Box::new(stdout), Box::new(stdin))
    }

    /// Connects to a running daemon (never starts one).
    pub fn existing(paths: &DaemonPaths) -> Result<Conn> {
        let s = UnixStream::connect(&paths.socket)
            .with_context(|| format!("no daemon at {}", paths.socket.display()))?;
        let w = s.try_clone()?;
        Conn::new(None, Box::new(s), Box::new(w))
    }

    /// Connects to the daemon of `root`, starting it if needed. A daemon of
    /// another version is replaced once.
    pub fn daemon(root: &Path) -> Result<Conn> {
        let paths = daemon_paths(root).map_err(|e| anyhow!(e))?;
        for attempt in 0..2 {
            let conn = match Conn::existing(&paths) {
                Ok(c) => c,
                Err(_) => Conn::spawn(root, &paths)?,
            };
            if conn.hello.version == VERSION && conn.hello.protocol == PROTOCOL_VERSION {
                return Ok(conn);
            }
            if attempt == 0 {
                conn.shutdown_daemon(&paths)?;
            } else {
                return Err(anyhow!(
                    "the daemon reports version {} after a restart (this is vx {VERSION})",
                    conn.hello.version
                ));
            }
        }
        Err(anyhow!("could not start a daemon of this version"))
    }

    /// Starts a daemon under the spawn lock (one at a time across
    /// processes), then connects to it.
    fn spawn(root: &Path, paths: &DaemonPaths) -> Result<Conn> {
        ensure_private_dir(&paths.dir)?;
        let _lock = FileLock::acquire(&paths.spawn_lock, Duration::from_secs(30))?;
        // Someone else may have started it while we waited for the lock.
        if let Ok(c) = Conn::existing(paths) {
            return Ok(c);
        }
        let bin = vxd_path();
        let mut cmd = Command::new(&bin);
        cmd.arg("--daemon")
            .arg("--root")
            .arg(root)
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; the daemon leaves our session
        // so a terminal's Ctrl-C never reaches it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start the daemon `{}`", bin.display()))?;
        let start = Instant::now();
        loop {
            if let Ok(c) = Conn::existing(paths) {
                // Reap the launcher's child later; the daemon keeps running.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Ok(c);
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(anyhow!(
                    "the daemon exited at start ({st}); see {}",
                    root.join(".vx/daemon.log").display()
                ));
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                return Err(anyhow!("the daemon did not start listening within 15 s"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Asks the daemon to exit and waits until its socket stops answering.
    pub fn shutdown_daemon(mut self, paths: &DaemonPaths) -> Result<()> {
        let _ = self.call(methods::SHUTDOWN, &serde_json::json!({}), |_| {});
        self.finish();
        let start = Instant::now();
        while UnixStream::connect(&paths.socket).is_ok() {
            if start.elapsed() > Duration::from_secs(15) {
                return Err(anyhow!("the daemon did not stop within 15 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // It is gone once it has released its liveness lock.
        let _gone = FileLock::acquire(&paths.live_lock, Duration::from_secs(15))
            .map_err(|_| anyhow!("the daemon did not exit within 15 s"))?;
        Ok(())
    }

    fn send(&self, m: &Message) -> Result<()> {
        let mut g = self
            .writer
            .lock()
            .map_err(|_| anyhow!("writer lock poisoned"))?;
        let w = g.as_mut().ok_or_else(|| anyhow!("connection closed"))?;
        w.write_all(&m.encode())
            .context("the vx engine went away")?;
        w.flush().context("the vx engine went away")?;
        Ok(())
    }

    /// Sends a request and reads until its response, passing run events to `on_event`.
    pub fn call(
        &mut self,
        method: &str,
        params: &impl serde::Serialize,
        on_event: impl FnMut(RunEvent),
    ) -> Result<serde_json::Value> {
        self.call_raw(method, params, on_event)?
            .map_err(|e| crate::rpc_error(&e))
    }

    /// Like [`Conn::call`], but returns the engine's error object as is.
    pub fn call_raw(
        &mut self,
        method: &str,
        params: &impl serde::Serialize,
        mut on_event: impl FnMut(RunEvent),
    ) -> Result<Result<serde_json::Value, RpcError>> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Message::request(Id::Num(id), method, params))?;
        loop {
            let buf = self
                .reader
                .fill_buf()
                .context("reading from the vx engine")?;
            if buf.is_empty() {
                let status = self.child.as_mut().and_then(|c| c.wait().ok());
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
                        return Ok(result);
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
            crate::render::flush();
        }
    }

    /// Forwards SIGINT/SIGTERM/SIGHUP to the engine as `run.cancel`; a
    /// second signal exits at once (the engine then sees the connection
    /// close and stops every task of this client).
    pub fn forward_signals(&self) -> Result<SignalWatch> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let caught = Arc::new(Mutex::new(None));
        let c2 = caught.clone();
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
                let writer = ACTIVE.lock().ok().and_then(|a| a.clone());
                if let Some(writer) = writer
                    && let Ok(mut g) = writer.lock()
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

    /// Closes the connection (and reaps a stdio engine).
    pub fn finish(mut self) {
        if let Ok(mut g) = self.writer.lock() {
            g.take();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// Connects the way this invocation wants: the daemon when enabled (with a
/// one-line warning and the no-daemon path if it cannot be used), else stdio.
pub fn connect(cwd: &Path, no_daemon_flag: bool) -> Result<Conn> {
    if daemon_wanted(no_daemon_flag)
        && let Some(root) = guess_root(cwd)
    {
        match Conn::daemon(&root) {
            Ok(c) => return Ok(c),
            Err(e) => eprintln!("vx: warning: not using the daemon ({e:#}); running without it"),
        }
    }
    Conn::stdio()
}
