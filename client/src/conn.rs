//! Connections to the engine: a long-lived daemon over its Unix socket
//! (connect, or start one under a spawn lock), or the no-daemon path
//! (`vxd --stdio` over a pipe). Both speak the same JSON-RPC.
//!
//! Owns the client's defences against an engine that stops answering: a
//! bounded connect and `daemon.hello` (a daemon that misses the deadline is
//! reported with its pid and this command falls back to `vxd --stdio`),
//! signal forwarding where a second signal always exits (killing a
//! foreground engine first), and stopping a daemon that does not answer
//! (graceful request with a deadline, then SIGTERM, then SIGKILL).
//!
//! Never: waits without a bound for a daemon before its hello, signals a
//! process it has not verified to be this workspace's daemon, or lets a
//! foreground engine outlive the client.

use anyhow::{Context, Result, anyhow};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vx_proto::framing::{Frame, LineFramer};
use vx_proto::knobs;
use vx_proto::paths::{DaemonPaths, daemon_paths};
use vx_proto::{
    HelloParams, HelloResult, Id, Message, PROTOCOL_VERSION, RpcError, RunCancelParams, RunEvent,
    methods,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the engine binary is: `VX_DAEMON_BIN`, else next to this
/// executable, else `vxd` on PATH.
pub fn vxd_path() -> PathBuf {
    if let Some(p) = knobs::DAEMON_BIN.get_process_os() {
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
    match knobs::DAEMON.get_process() {
        Some(v) => truthy(&v),
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

/// The pid of the foreground engine (`vxd --stdio`) while it is unreaped:
/// a second signal stops it before the client exits. Cleared under this
/// lock before the child is reaped, so the pid is never a recycled one.
static ACTIVE_CHILD: Mutex<Option<u32>> = Mutex::new(None);

/// How long a daemon has to answer `daemon.hello` when none is being started.
const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a daemon being started has to listen and answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a daemon asked to stop has before it gets SIGTERM.
const GRACEFUL_STOP: Duration = Duration::from_secs(10);
/// How long a daemon sent SIGTERM has before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How long a foreground engine sent SIGTERM (on a second signal) has
/// before it gets SIGKILL.
const CHILD_GRACE: Duration = Duration::from_millis(1000);

/// How long a daemon has to answer `daemon.hello`: `VX_HELLO_TIMEOUT_MS`,
/// else 3 s.
pub fn hello_timeout() -> Duration {
    knobs::HELLO_TIMEOUT_MS
        .get_process()
        .and_then(|v| knobs::parse_number(&v))
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_HELLO_TIMEOUT)
}

/// A daemon that holds this workspace's socket but did not answer in time
/// (stopped, deadlocked, or overwhelmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotResponding {
    pub pid: Option<u32>,
}

impl std::fmt::Display for NotResponding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "the daemon (pid {pid}) is not responding"),
            None => write!(f, "the daemon is not responding"),
        }
    }
}

impl std::error::Error for NotResponding {}

/// A read that hit its deadline.
#[derive(Debug)]
struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the vx engine did not answer in time")
    }
}

impl std::error::Error for TimedOut {}

/// An open JSON-RPC connection to an engine.
pub struct Conn {
    child: Option<Child>,
    writer: SharedWriter,
    reader: BufReader<Box<dyn Read + Send>>,
    framer: LineFramer,
    next_id: i64,
    /// The daemon connection's socket, to put deadlines on reads.
    sock: Option<UnixStream>,
    pub hello: HelloResult,
    /// This foreground engine stands in for a daemon that did not respond
    /// (which still holds the cache).
    pub instead_of_daemon: bool,
}

/// A connection without its JSON-RPC framing (see [`Conn::into_raw`]).
pub struct Raw {
    /// Bytes already read from the engine past the last answer.
    pub leftover: Vec<u8>,
    pub reader: Box<dyn Read + Send>,
    pub writer: Option<Box<dyn Write + Send>>,
    /// The daemon connection's socket (to shut its write half).
    pub sock: Option<UnixStream>,
    /// The foreground engine (`vxd --stdio`), to reap.
    pub child: Option<Child>,
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
    fn open(path: &Path) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// Takes the lock if nobody holds it.
    fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        let f = FileLock::open(path)?;
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        Ok((r == 0).then_some(FileLock(f)))
    }

    fn acquire(path: &Path, timeout: Duration) -> Result<FileLock> {
        let start = Instant::now();
        loop {
            if let Some(l) = FileLock::try_acquire(path)? {
                return Ok(l);
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

/// Connects to a Unix socket, giving up after `timeout` when the listener
/// accepts nothing (a stopped daemon whose backlog is full would otherwise
/// block `connect` forever).
fn connect_within(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use std::io::{Error, ErrorKind};
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("bad socket path {}", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let start = Instant::now();
    loop {
        // SAFETY: `addr` is a valid sockaddr_un and `len` covers the path and its NUL.
        let r = unsafe { libc::connect(fd, (&raw const addr).cast::<libc::sockaddr>(), len) };
        if r == 0 {
            break;
        }
        let e = Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) if start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(libc::EAGAIN) => {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    "the socket accepts no connections",
                ));
            }
            _ => return Err(e),
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// The pid of the process listening on the other end (the daemon), from
/// the socket's peer credentials: known even when it does not answer.
fn peer_pid(s: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain old data; all zeroes is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// The pid holding an `flock` on `path`, from `/proc/locks`.
fn lock_holder(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    let want = proc_locks_id(md.dev(), md.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    find_lock_holder(&locks, &want)
}

/// `maj:min:inode` as `/proc/locks` prints a file (glibc's dev_t encoding).
fn proc_locks_id(dev: u64, ino: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major:02x}:{minor:02x}:{ino}")
}

/// The pid of the granted FLOCK on `id` in a `/proc/locks` text (waiters,
/// marked `->`, are not holders).
fn find_lock_holder(locks: &str, id: &str) -> Option<u32> {
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") || f.get(5) != Some(&id) {
            return None;
        }
        f.get(4)?.parse().ok()
    })
}

/// Whether `pid` is a `vxd --daemon` process (checked before signalling it).
fn is_daemon_process(pid: u32) -> bool {
    if pid == 0 || pid == std::process::id() {
        return false;
    }
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
    args.get(1) == Some(&&b"--daemon"[..])
}

/// Whether a daemon holds the workspace's liveness lock.
pub fn daemon_alive(paths: &DaemonPaths) -> bool {
    if !paths.live_lock.exists() {
        return false;
    }
    matches!(FileLock::try_acquire(&paths.live_lock), Ok(None))
}

/// Waits up to `limit` for the daemon to release its liveness lock.
fn wait_gone(paths: &DaemonPaths, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if !daemon_alive(paths) {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory preconditions; the pid was checked.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Stops a daemon that did not stop when asked (or was not asked):
/// SIGTERM (and SIGCONT, so a stopped one can act on it), then SIGKILL.
/// Signals only a pid that is a `vxd --daemon` while the daemon lives.
fn kill_daemon(paths: &DaemonPaths, known: Option<u32>) -> Result<Option<u32>> {
    let find = || {
        known
            .filter(|&p| is_daemon_process(p))
            .or_else(|| lock_holder(&paths.live_lock).filter(|&p| is_daemon_process(p)))
    };
    let Some(pid) = find() else {
        if wait_gone(paths, Duration::from_millis(200)) {
            return Ok(known);
        }
        return Err(anyhow!(
            "a daemon holds {} but its process cannot be found",
            paths.live_lock.display()
        ));
    };
    signal(pid, libc::SIGTERM);
    signal(pid, libc::SIGCONT);
    if wait_gone(paths, TERM_GRACE) {
        return Ok(Some(pid));
    }
    if daemon_alive(paths) && is_daemon_process(pid) {
        tracing_note(&format!(
            "the daemon (pid {pid}) ignored SIGTERM; sending SIGKILL"
        ));
        signal(pid, libc::SIGKILL);
    }
    if wait_gone(paths, Duration::from_secs(5)) {
        Ok(Some(pid))
    } else {
        Err(anyhow!("the daemon (pid {pid}) did not exit after SIGKILL"))
    }
}

fn tracing_note(msg: &str) {
    eprintln!("vx: {msg}");
}

/// Stops this workspace's daemon: asks it (unless `force`), and when it
/// does not answer or does not exit in time, SIGTERM then SIGKILL. Returns
/// its pid, or `None` when no daemon was running.
pub fn stop_daemon(paths: &DaemonPaths, force: bool) -> Result<Option<u32>> {
    if !daemon_alive(paths) {
        return Ok(None);
    }
    let mut pid = None;
    if !force {
        match Conn::existing(paths) {
            Ok(c) => {
                pid = Some(c.hello.pid);
                c.request_shutdown();
                if wait_gone(paths, GRACEFUL_STOP) {
                    return Ok(pid);
                }
                tracing_note(&format!(
                    "the daemon (pid {}) did not exit within {} s; sending SIGTERM",
                    c_pid(pid),
                    GRACEFUL_STOP.as_secs()
                ));
            }
            Err(e) => match e.downcast_ref::<NotResponding>() {
                Some(nr) => {
                    pid = nr.pid;
                    tracing_note(&format!("{nr}; stopping it with signals"));
                }
                None if !daemon_alive(paths) => return Ok(None),
                None => {}
            },
        }
    } else {
        pid = connect_within(&paths.socket, Duration::from_millis(200))
            .ok()
            .and_then(|s| peer_pid(&s));
    }
    kill_daemon(paths, pid)
}

fn c_pid(pid: Option<u32>) -> String {
    pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
}

impl Conn {
    fn new(
        child: Option<Child>,
        sock: Option<UnixStream>,
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
    ) -> Conn {
        Conn {
            child,
            writer: Arc::new(Mutex::new(Some(writer))),
            reader: BufReader::with_capacity(256 * 1024, reader),
            framer: LineFramer::new(),
            next_id: 1,
            sock,
            hello: HelloResult {
                protocol: 0,
                version: String::new(),
                pid: 0,
                mode: String::new(),
                root: None,
            },
            instead_of_daemon: false,
        }
    }

    /// `daemon.hello`; on a socket, within `deadline`.
    fn handshake(mut self, deadline: Option<Duration>) -> Result<Conn> {
        let hello = HelloParams {
            protocol: PROTOCOL_VERSION,
            client_version: VERSION.to_string(),
        };
        let answer = self.call_within(deadline, methods::HELLO, &hello);
        let v = match answer {
            Ok(v) => v,
            Err(e) if e.is::<TimedOut>() => {
                let pid = self.sock.as_ref().and_then(peer_pid);
                self.finish();
                return Err(NotResponding { pid }.into());
            }
            Err(e) => return Err(e),
        };
        self.hello = serde_json::from_value(v)?;
        if let Ok(mut a) = ACTIVE.lock() {
            *a = Some(self.writer.clone());
        }
        Ok(self)
    }

    /// A call whose answer must come within `deadline` (on a socket).
    fn call_within(
        &mut self,
        deadline: Option<Duration>,
        method: &str,
        params: &impl serde::Serialize,
    ) -> Result<serde_json::Value> {
        if let (Some(d), Some(s)) = (deadline, &self.sock) {
            s.set_read_timeout(Some(d))?;
            s.set_write_timeout(Some(d))?;
        }
        let r = self.call(method, params, |_| {});
        if let Some(s) = &self.sock {
            let _ = s.set_read_timeout(None);
            let _ = s.set_write_timeout(None);
        }
        r
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
                    "cannot start the vx engine `{}` (set {} or put vxd next to vx)",
                    bin.display(),
                    knobs::DAEMON_BIN.name
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
        if let Ok(mut a) = ACTIVE_CHILD.lock() {
            *a = Some(child.id());
        }
        Conn::new(Some(child), None, Box::new(stdout), Box::new(stdin)).handshake(None)
    }

    /// Connects to a running daemon (never starts one). A daemon that does
    /// not answer the hello within [`hello_timeout`] is [`NotResponding`].
    pub fn existing(paths: &DaemonPaths) -> Result<Conn> {
        Conn::existing_within(paths, hello_timeout())
    }

    fn existing_within(paths: &DaemonPaths, deadline: Duration) -> Result<Conn> {
        let s = match connect_within(&paths.socket, deadline) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(NotResponding {
                    pid: lock_holder(&paths.live_lock),
                }
                .into());
            }
            Err(e) => {
                return Err(anyhow!(e))
                    .with_context(|| format!("no daemon at {}", paths.socket.display()));
            }
        };
        let r = s.try_clone()?;
        let w = s.try_clone()?;
        Conn::new(None, Some(s), Box::new(r), Box::new(w)).handshake(Some(deadline))
    }

    /// Connects to the daemon of `root`, starting it if needed. A daemon of
    /// another version is replaced once; one that does not answer is
    /// [`NotResponding`].
    pub fn daemon(root: &Path) -> Result<Conn> {
        let paths = daemon_paths(root).map_err(|e| anyhow!(e))?;
        for attempt in 0..2 {
            let conn = match Conn::existing(&paths) {
                Ok(c) => c,
                Err(e) if e.is::<NotResponding>() => return Err(e),
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
        match Conn::existing(paths) {
            Ok(c) => return Ok(c),
            Err(e) if e.is::<NotResponding>() => return Err(e),
            Err(_) => {}
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
            // A daemon being started may take a while to answer its first hello.
            let left = START_TIMEOUT.saturating_sub(start.elapsed());
            if let Ok(c) = Conn::existing_within(paths, left.max(Duration::from_millis(1))) {
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
            if start.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                return Err(anyhow!(
                    "the daemon did not start listening within {} s",
                    START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends `daemon.shutdown` (its answer bounded by the hello deadline)
    /// and closes the connection.
    fn request_shutdown(mut self) {
        let _ = self.call_within(
            Some(hello_timeout()),
            methods::SHUTDOWN,
            &serde_json::json!({}),
        );
        self.finish();
    }

    /// Asks the daemon to exit and waits until it is gone; one that does
    /// not exit in time is sent SIGTERM, then SIGKILL.
    pub fn shutdown_daemon(self, paths: &DaemonPaths) -> Result<()> {
        let pid = self.hello.pid;
        self.request_shutdown();
        if wait_gone(paths, GRACEFUL_STOP) {
            return Ok(());
        }
        kill_daemon(paths, Some(pid)).map(|_| ())
    }

    fn send(&self, m: &Message) -> Result<()> {
        let mut g = self
            .writer
            .lock()
            .map_err(|_| anyhow!("writer lock poisoned"))?;
        let w = g.as_mut().ok_or_else(|| anyhow!("connection closed"))?;
        let timed_out = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        };
        match w.write_all(&m.encode()).and_then(|()| w.flush()) {
            Ok(()) => Ok(()),
            Err(e) if timed_out(&e) => Err(TimedOut.into()),
            Err(e) => Err(anyhow!(e).context("the vx engine went away")),
        }
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
        self.call_notified(method, params, |m, params| {
            if m == methods::RUN_EVENT
                && let Ok(e) = serde_json::from_value::<RunEvent>(params)
            {
                on_event(e);
            }
        })
    }

    /// Like [`Conn::call_raw`], passing every notification (its method and
    /// params) to `on_note`.
    pub fn call_notified(
        &mut self,
        method: &str,
        params: &impl serde::Serialize,
        mut on_note: impl FnMut(&str, serde_json::Value),
    ) -> Result<Result<serde_json::Value, RpcError>> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Message::request(Id::Num(id), method, params))?;
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(TimedOut.into());
                }
                Err(e) => return Err(anyhow!(e).context("reading from the vx engine")),
            };
            if buf.is_empty() {
                let status = self.take_child().and_then(|mut c| c.wait().ok());
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
                    Ok(Message::Notification { method, params }) => on_note(&method, params),
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
    /// second signal exits at once with 128 + the first signal (a
    /// foreground engine is sent SIGTERM, then SIGKILL after a short
    /// grace; a daemon sees the connection close and stops every task of
    /// this client). The signal thread never blocks on the engine: the
    /// cancel is written from a thread of its own.
    pub fn forward_signals(&self) -> Result<SignalWatch> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let caught = Arc::new(Mutex::new(None));
        let c2 = caught.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                let sig = if sig == SIGHUP { SIGTERM } else { sig };
                let earlier = match c2.lock() {
                    Ok(mut c) => {
                        let earlier = *c;
                        if earlier.is_none() {
                            *c = Some(sig);
                        }
                        earlier
                    }
                    Err(_) => Some(sig),
                };
                if let Some(first) = earlier {
                    stop_foreground_engine();
                    std::process::exit(128 + first);
                }
                std::thread::spawn(move || send_cancel(sig));
            }
        });
        Ok(SignalWatch { caught })
    }

    fn take_child(&mut self) -> Option<Child> {
        let child = self.child.take()?;
        if let Ok(mut a) = ACTIVE_CHILD.lock()
            && *a == Some(child.id())
        {
            *a = None;
        }
        Some(child)
    }

    /// Gives up the JSON-RPC framing once the engine switched the
    /// connection to another protocol (`daemon.upgrade`, for `vx mcp`).
    pub fn into_raw(mut self) -> Raw {
        let mut leftover = self.framer.take_pending();
        leftover.extend_from_slice(self.reader.buffer());
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        let child = self.take_child();
        Raw {
            leftover,
            reader: self.reader.into_inner(),
            writer,
            sock: self.sock.take(),
            child,
        }
    }

    /// Closes the connection after a run's answer without waiting for a
    /// stdio engine to exit: it writes the run's history record after
    /// answering and exits once that is committed (readers wait for it), so
    /// the client is done when it has the answer. The engine, left
    /// unreaped, is reaped by whoever inherits it when this client exits.
    pub fn finish_answered(mut self) {
        if let Ok(mut g) = self.writer.lock() {
            g.take();
        }
        drop(self.take_child());
    }

    /// Closes the connection (and reaps a stdio engine).
    pub fn finish(mut self) {
        if let Ok(mut g) = self.writer.lock() {
            g.take();
        }
        if let Some(mut c) = self.take_child() {
            let _ = c.wait();
        }
    }
}

/// Writes `run.cancel` to the newest connection.
fn send_cancel(sig: i32) {
    let writer = ACTIVE.lock().ok().and_then(|a| a.clone());
    if let Some(writer) = writer
        && let Ok(mut g) = writer.lock()
        && let Some(w) = g.as_mut()
    {
        let m = Message::notification(methods::RUN_CANCEL, RunCancelParams { signal: sig });
        let _ = w.write_all(&m.encode());
        let _ = w.flush();
    }
}

/// On the way out after a second signal: the foreground engine gets its
/// stdin closed (when the pipe is free) and SIGTERM, then SIGKILL if it
/// has not exited within [`CHILD_GRACE`]. Its guard kills the task groups
/// of an engine that dies.
fn stop_foreground_engine() {
    let Ok(slot) = ACTIVE_CHILD.lock() else {
        return;
    };
    let Some(pid) = *slot else {
        return;
    };
    if let Ok(a) = ACTIVE.try_lock()
        && let Some(w) = a.as_ref()
        && let Ok(mut g) = w.try_lock()
    {
        g.take();
    }
    let pid = pid as libc::pid_t;
    // SAFETY: the child is unreaped (the slot is cleared before reaping),
    // so the pid is still ours.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: reaping our own child; the client exits right after.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r != 0 {
            return; // exited (reaped) or already gone
        }
        if start.elapsed() > CHILD_GRACE {
            // SAFETY: still our unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
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
            Err(e) => {
                if let Some(nr) = e.downcast_ref::<NotResponding>() {
                    return stdio_instead(nr);
                }
                eprintln!("vx: warning: not using the daemon ({e:#}); running without it");
            }
        }
    }
    Conn::stdio()
}

/// The foreground engine in place of a daemon that did not respond, with
/// the one message that says what to do about it.
pub fn stdio_instead(nr: &NotResponding) -> Result<Conn> {
    eprintln!("vx: {nr}; run `vx daemon stop --force`");
    let mut c = Conn::stdio()?;
    c.instead_of_daemon = true;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_default_is_the_tables() {
        let ms = DEFAULT_HELLO_TIMEOUT.as_millis().to_string();
        assert_eq!(knobs::HELLO_TIMEOUT_MS.default, ms);
    }

    #[test]
    fn lock_holders_from_proc_locks() {
        let text = "\
1: POSIX  ADVISORY  WRITE 77 00:2d:99 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 00:2d:1234 0 EOF
2: -> FLOCK  ADVISORY  WRITE 5151 00:2d:1234 0 EOF
3: FLOCK  ADVISORY  WRITE 6161 08:01:1234 0 EOF
";
        // (file id, holder): waiters (`->`) and POSIX locks are not holders.
        let cases = [
            ("00:2d:1234", Some(4242)),
            ("08:01:1234", Some(6161)),
            ("00:2d:99", None),
            ("00:2d:5", None),
        ];
        for (id, want) in cases {
            assert_eq!(find_lock_holder(text, id), want, "{id}");
        }
        assert_eq!(proc_locks_id(0x2d, 1234), "00:2d:1234");
        assert_eq!(proc_locks_id(0x801, 7), "08:01:7");
    }

    #[test]
    fn the_holder_of_a_real_flock_is_this_process() {
        let dir = std::env::temp_dir().join(format!("vx-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("x.live");
        let lock = FileLock::try_acquire(&path).expect("open").expect("lock");
        assert_eq!(lock_holder(&path), Some(std::process::id()));
        drop(lock);
        assert_eq!(lock_holder(&path), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_vxd_daemon_is_ever_signalled() {
        assert!(!is_daemon_process(std::process::id()));
        assert!(!is_daemon_process(0));
        assert!(!is_daemon_process(u32::MAX));
    }

    #[test]
    fn not_responding_names_the_pid() {
        assert_eq!(
            NotResponding { pid: Some(42) }.to_string(),
            "the daemon (pid 42) is not responding"
        );
        assert_eq!(
            NotResponding { pid: None }.to_string(),
            "the daemon is not responding"
        );
    }
}
