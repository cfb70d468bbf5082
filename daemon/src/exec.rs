//! `exec` — running one task's process.
//!
//! Owns: spawning `sh -c <command>` in the project directory with an
//! isolated environment, in its own process group; streaming its output
//! lines (each at most [`MAX_OUTPUT_LINE`] bytes: a longer one is cut with a
//! visible marker, never dropped); timeouts; and stopping the whole group
//! (TERM, the spawn's grace period — the client's `VX_KILL_GRACE_MS` — then
//! KILL) on timeout, cancellation or when the future is dropped.
//! After the shell exits, whatever is left in its group is killed, so a
//! task never leaves an orphan behind.
//!
//! A guard process (`vxd --guard`, started on first use) holds the list of
//! live task groups; if the engine dies without cleaning up (even
//! `kill -9`), the guard sees its pipe close and SIGKILLs every listed group.
//!
//! Never: decides what runs or in which order (`engine`), or touches the cache.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use vx_proto::Stream;

pub use crate::procstat::{Sampler, Usage};

/// The fewest tasks the default concurrency runs at once, whatever the CPU
/// count (see [`default_concurrency`]).
pub const MIN_DEFAULT_CONCURRENCY: usize = 8;

/// How many tasks run at once when neither the request nor the workspace
/// says: twice the CPU count, and at least [`MIN_DEFAULT_CONCURRENCY`].
/// A task of a typical workspace spends much of its life starting
/// processes (`sh`, the dynamic loader) and waiting on the file system, not
/// computing, so one task per CPU leaves CPUs idle. Measured on 2 CPUs
/// with 1,000 packages / 3,000 tasks (docs/benchmarks.md, "Issue 17:
/// spawning, restores, the foreground path"): cold and root-edited runs got
/// faster up to 16 at once, with most of the gain by 8.
pub fn default_concurrency(cpus: usize) -> usize {
    cpus.saturating_mul(2).max(MIN_DEFAULT_CONCURRENCY)
}

/// Grace between SIGTERM and SIGKILL unless the client says otherwise.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// The grace between SIGTERM and SIGKILL a client asks for with
/// `VX_KILL_GRACE_MS` in its environment (the request's env, never the
/// engine's own: a daemon serves clients with different environments).
pub fn kill_grace_in(env: &std::collections::BTreeMap<String, String>) -> Duration {
    vx_proto::knobs::KILL_GRACE_MS
        .millis(env)
        .unwrap_or(DEFAULT_KILL_GRACE)
}

/// The longest output line passed on whole (1 MiB). A longer line is cut
/// there and ends with a marker naming its full length, so memory per line
/// is bounded and no line disappears without notice.
pub const MAX_OUTPUT_LINE: usize = 1 << 20;

/// How long output is still read after the shell exited (a grandchild may
/// hold the pipes open).
const DRAIN: Duration = Duration::from_millis(250);

/// What to spawn.
#[derive(Debug, Clone)]
pub struct Spawn {
    pub command: String,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    /// Give the process a stdin pipe that stays open (persistent tasks: a
    /// dev server that reads stdin must not see EOF); otherwise stdin is
    /// `/dev/null`.
    pub keep_stdin: bool,
    /// Give the process the controlling terminal (`/dev/tty` as stdin,
    /// stdout and stderr, in the foreground process group): an interactive
    /// task. Its output is not captured.
    pub tty: bool,
    /// Grace between SIGTERM and SIGKILL when stopping it (`None`:
    /// [`DEFAULT_KILL_GRACE`]); see [`kill_grace_in`].
    pub kill_grace: Option<Duration>,
}

impl Spawn {
    fn grace(&self) -> Duration {
        self.kill_grace.unwrap_or(DEFAULT_KILL_GRACE)
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// Killed by a signal from outside vx.
    Signalled(i32),
    TimedOut,
    SpawnFailed(String),
    /// Stopped because the run was cancelled with this signal.
    Cancelled(i32),
}

impl Outcome {
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Exited(c) => Some(*c),
            Outcome::Signalled(s) | Outcome::Cancelled(s) => Some(128 + s),
            Outcome::TimedOut => Some(124),
            Outcome::SpawnFailed(_) => None,
        }
    }
}

/// The guard process's stdin: `+pgid` / `-pgid` lines.
static GUARD: std::sync::OnceLock<std::sync::Mutex<Option<std::process::ChildStdin>>> =
    std::sync::OnceLock::new();

fn guard_send(line: String) {
    let g = GUARD.get_or_init(|| std::sync::Mutex::new(spawn_guard()));
    if let Ok(mut g) = g.lock()
        && let Some(stdin) = g.as_mut()
    {
        use std::io::Write;
        if stdin.write_all(line.as_bytes()).is_err() {
            *g = None;
        }
    }
}

fn spawn_guard() -> Option<std::process::ChildStdin> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().ok()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--guard")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; the guard leaves the terminal's
    // session so a Ctrl-C aimed at vx does not kill it before it can act.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(mut c) => {
            let stdin = c.stdin.take();
            // Reap it whenever it exits.
            std::thread::spawn(move || {
                let _ = c.wait();
            });
            stdin
        }
        Err(e) => {
            tracing::warn!("cannot start the process-group guard: {e}");
            None
        }
    }
}

/// The guard's main loop: remember groups, kill them all when the engine's
/// end of the pipe closes.
pub fn guard_main() {
    use std::io::BufRead;
    let mut groups = std::collections::HashSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (op, num) = line.split_at(line.len().min(1));
        if let Ok(pgid) = num.trim().parse::<i32>() {
            match op {
                "+" => {
                    groups.insert(pgid);
                }
                "-" => {
                    groups.remove(&pgid);
                }
                _ => {}
            }
        }
    }
    for pgid in groups {
        if pgid > 0 {
            // SAFETY: sending a signal to a process group the engine created.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// Kills a process group when dropped (unless disarmed).
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl GroupGuard {
    fn signal(&self, sig: i32) {
        if self.pgid > 0 {
            // SAFETY: killpg only sends a signal; the pgid is one we created.
            unsafe {
                libc::killpg(self.pgid, sig);
            }
        }
    }
    fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks for existence.
        self.pgid > 0 && unsafe { libc::killpg(self.pgid, 0) } == 0
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            self.signal(libc::SIGKILL);
        }
        if self.pgid > 0 {
            guard_send(format!("-{}\n", self.pgid));
        }
    }
}

/// One finished output line: `kept` are its first bytes (at most `max`),
/// `total` its full length without the newline.
fn output_line(kept: &mut Vec<u8>, total: usize) -> String {
    if total > kept.len() {
        let head = String::from_utf8_lossy(kept);
        let line = format!("{head}… [line truncated: {total} bytes]");
        *kept = Vec::new();
        return line;
    }
    while kept.last() == Some(&b'\r') {
        kept.pop();
    }
    let line = String::from_utf8_lossy(kept).into_owned();
    if kept.capacity() > 64 * 1024 {
        *kept = Vec::new();
    } else {
        kept.clear();
    }
    line
}

/// Reads lines of at most `max` bytes (see [`MAX_OUTPUT_LINE`]): the rest
/// of a longer line is counted, not kept.
async fn read_lines<R: tokio::io::AsyncRead + Unpin>(
    r: R,
    max: usize,
    mut emit: impl FnMut(String) -> bool,
) {
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut kept: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Ok(buf) = r.fill_buf().await {
        if buf.is_empty() {
            if total > 0 {
                emit(output_line(&mut kept, total));
            }
            break;
        }
        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        total += chunk.len();
        let used = chunk.len() + usize::from(newline);
        r.consume(used);
        if newline {
            let line = output_line(&mut kept, total);
            total = 0;
            if !emit(line) {
                break;
            }
        }
    }
}

fn reader<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    r: R,
    stream: Stream,
    tx: mpsc::UnboundedSender<(Stream, String)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        read_lines(r, MAX_OUTPUT_LINE, |line| tx.send((stream, line)).is_ok()).await;
    })
}

/// Runs one process to completion, calling `on_line` for each output line.
/// `cancel` carrying `Some(signal)` stops it (TERM to the group, the grace,
/// then KILL).
pub async fn run(
    spec: &Spawn,
    on_line: impl FnMut(Stream, String),
    cancel: watch::Receiver<Option<i32>>,
) -> Outcome {
    run_observed(spec, on_line, |_| {}, cancel).await
}

/// [`run`], calling `on_spawn` with the process id once the process exists.
pub async fn run_observed(
    spec: &Spawn,
    on_line: impl FnMut(Stream, String),
    on_spawn: impl FnOnce(u32),
    cancel: watch::Receiver<Option<i32>>,
) -> Outcome {
    run_measured(spec, on_line, on_spawn, cancel).await.0
}

/// [`run_observed`], also sampling the process group's CPU time and memory
/// (every 100 ms, see `procstat`).
pub async fn run_measured(
    spec: &Spawn,
    mut on_line: impl FnMut(Stream, String),
    on_spawn: impl FnOnce(u32),
    mut cancel: watch::Receiver<Option<i32>>,
) -> (Outcome, Usage) {
    if let Some(sig) = *cancel.borrow() {
        return (Outcome::Cancelled(sig), Usage::default());
    }
    if spec.tty {
        return (run_tty(spec, on_spawn, cancel).await, Usage::default());
    }
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.dir)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(if spec.keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                Outcome::SpawnFailed(format!(
                    "cannot start /bin/sh in {}: {e}",
                    spec.dir.display()
                )),
                Usage::default(),
            );
        }
    };
    let mut guard = GroupGuard {
        pgid: child.id().map(|p| p as i32).unwrap_or(0),
        armed: true,
    };
    if guard.pgid > 0 {
        guard_send(format!("+{}\n", guard.pgid));
    }
    // Held (never written) until the process ends.
    let _stdin = child.stdin.take();
    on_spawn(guard.pgid as u32);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(reader(out, Stream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(reader(err, Stream::Stderr, tx.clone()));
    }
    drop(tx);
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
    let mut stop: Option<Outcome> = None;
    let mut sampler = Sampler::new();
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(30),
        Duration::from_millis(100),
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let status = loop {
        tokio::select! {
            biased;
            Some((s, l)) = rx.recv() => on_line(s, l),
            st = child.wait() => break st,
            _ = ticks.tick() => sampler.sample(guard.pgid),
            _ = &mut sleep_until, if stop.is_none() => {
                stop = Some(Outcome::TimedOut);
                break terminate(&mut child, &guard, libc::SIGTERM, spec.grace(), &mut rx, &mut on_line).await;
            }
            r = cancel.changed(), if stop.is_none() => {
                let sig = match r { Ok(()) => (*cancel.borrow()).unwrap_or(libc::SIGTERM), Err(_) => libc::SIGTERM };
                stop = Some(Outcome::Cancelled(sig));
                break terminate(&mut child, &guard, libc::SIGTERM, spec.grace(), &mut rx, &mut on_line).await;
            }
        }
    };
    // Drain what the readers still have, briefly; then clear the group.
    let drain = tokio::time::sleep(DRAIN);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            m = rx.recv() => match m { Some((s, l)) => on_line(s, l), None => break },
            _ = &mut drain => break,
        }
    }
    if guard.alive() {
        guard.signal(libc::SIGKILL);
    }
    guard.armed = false;
    for r in readers {
        r.abort();
    }
    let usage = sampler.usage();
    if let Some(o) = stop {
        return (o, usage);
    }
    (outcome_of(status), usage)
}

/// An interactive task: the terminal as its stdio, in the engine's own
/// (foreground) process group so it can read the keyboard; Ctrl-C reaches it
/// directly. Stopped by signalling the process itself.
async fn run_tty(
    spec: &Spawn,
    on_spawn: impl FnOnce(u32),
    mut cancel: watch::Receiver<Option<i32>>,
) -> Outcome {
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
    };
    let (i, o, e) = match (open(), open(), open()) {
        (Ok(i), Ok(o), Ok(e)) => (i, o, e),
        (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
            return Outcome::SpawnFailed(format!("cannot open the terminal: {err}"));
        }
    };
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.dir)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(i))
        .stdout(Stdio::from(o))
        .stderr(Stdio::from(e))
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::SpawnFailed(format!(
                "cannot start /bin/sh in {}: {e}",
                spec.dir.display()
            ));
        }
    };
    let pid = child.id().unwrap_or(0);
    on_spawn(pid);
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
    let status = tokio::select! {
        st = child.wait() => st,
        _ = &mut sleep_until => {
            stop_pid(&mut child, pid, spec.grace()).await;
            return Outcome::TimedOut;
        }
        r = cancel.changed() => {
            let sig = match r { Ok(()) => (*cancel.borrow()).unwrap_or(libc::SIGTERM), Err(_) => libc::SIGTERM };
            stop_pid(&mut child, pid, spec.grace()).await;
            return Outcome::Cancelled(sig);
        }
    };
    outcome_of(status)
}

/// How a reaped shell ended.
fn outcome_of(status: std::io::Result<std::process::ExitStatus>) -> Outcome {
    match status {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            match (st.code(), st.signal()) {
                (Some(c), _) => Outcome::Exited(c),
                (None, Some(s)) => Outcome::Signalled(s),
                _ => Outcome::Exited(1),
            }
        }
        Err(e) => Outcome::SpawnFailed(format!("waiting for the task failed: {e}")),
    }
}

/// TERM one process, the grace, then KILL; reaps it.
async fn stop_pid(child: &mut tokio::process::Child, pid: u32, grace: Duration) {
    let signal = |sig: i32| {
        if pid > 0 {
            // SAFETY: signalling the child we spawned (not yet reaped).
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    };
    signal(libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal(libc::SIGKILL);
        let _ = child.wait().await;
    }
}

/// TERM the group, wait the grace (still forwarding output), then KILL.
async fn terminate(
    child: &mut tokio::process::Child,
    guard: &GroupGuard,
    sig: i32,
    grace: Duration,
    rx: &mut mpsc::UnboundedReceiver<(Stream, String)>,
    on_line: &mut impl FnMut(Stream, String),
) -> std::io::Result<std::process::ExitStatus> {
    guard.signal(sig);
    let grace = tokio::time::sleep(grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            st = child.wait() => return st,
            Some((s, l)) = rx.recv() => on_line(s, l),
            _ = &mut grace => {
                guard.signal(libc::SIGKILL);
                return child.wait().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_concurrency_is_twice_the_cpus_and_at_least_8() {
        use super::default_concurrency;
        assert_eq!(default_concurrency(1), 8);
        assert_eq!(default_concurrency(2), 8);
        assert_eq!(default_concurrency(4), 8);
        assert_eq!(default_concurrency(6), 12);
        assert_eq!(default_concurrency(64), 128);
        assert_eq!(default_concurrency(usize::MAX), usize::MAX);
    }

    use super::*;

    fn spec(cmd: &str) -> Spawn {
        Spawn {
            command: cmd.into(),
            dir: std::env::temp_dir(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            timeout: None,
            keep_stdin: false,
            tty: false,
            kill_grace: None,
        }
    }

    #[tokio::test]
    async fn captures_lines_and_exit_code() {
        let (_tx, rx) = watch::channel(None);
        let mut lines = Vec::new();
        let o = run(
            &spec("echo a; echo b >&2; exit 3"),
            |s, l| lines.push((s, l)),
            rx,
        )
        .await;
        assert_eq!(o, Outcome::Exited(3));
        assert!(lines.contains(&(Stream::Stdout, "a".into())));
        assert!(lines.contains(&(Stream::Stderr, "b".into())));
    }

    #[tokio::test]
    async fn env_is_isolated() {
        let (_tx, rx) = watch::channel(None);
        let mut lines = Vec::new();
        let mut s = spec("echo \"[$HOME]\"");
        s.env.push(("X".into(), "1".into()));
        run(&s, |_, l| lines.push(l), rx).await;
        assert_eq!(lines, vec!["[]".to_string()]);
    }

    #[tokio::test]
    async fn timeout_kills_the_group() {
        let (_tx, rx) = watch::channel(None);
        let mut s = spec("sleep 30 & sleep 30");
        s.timeout = Some(Duration::from_millis(200));
        let o = run(&s, |_, _| {}, rx).await;
        assert_eq!(o, Outcome::TimedOut);
    }

    /// A line longer than the cap is cut with a marker naming its length;
    /// the lines around it are untouched (no line is dropped).
    #[tokio::test]
    async fn long_lines_are_truncated_with_a_marker() {
        let cases: &[(&[u8], &[&str])] = &[
            (b"short\nline\r\n", &["short", "line"]),
            (
                b"0123456789abc\nok\n",
                &["0123456789… [line truncated: 13 bytes]", "ok"],
            ),
            (b"0123456789\n", &["0123456789"]),
            (
                b"no newline at the end",
                &["no newline… [line truncated: 21 bytes]"],
            ),
            (b"", &[]),
        ];
        for (input, want) in cases {
            let mut got = Vec::new();
            read_lines(*input, 10, |l| {
                got.push(l);
                true
            })
            .await;
            assert_eq!(got, *want, "input {:?}", String::from_utf8_lossy(input));
        }
        // Through a real process, with the real cap.
        let (_tx, rx) = watch::channel(None);
        let mut lines = Vec::new();
        let n = MAX_OUTPUT_LINE + 5000;
        let o = run(
            &spec(&format!(
                "head -c {n} /dev/zero | tr '\\0' x; echo; echo after"
            )),
            |_, l| lines.push(l),
            rx,
        )
        .await;
        assert_eq!(o, Outcome::Exited(0));
        assert_eq!(
            lines.len(),
            2,
            "{:?}",
            lines.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert!(lines[0].ends_with(&format!("… [line truncated: {n} bytes]")));
        assert!(lines[0].len() < MAX_OUTPUT_LINE + 100);
        assert_eq!(lines[1], "after");
    }

    #[tokio::test]
    async fn cancel_stops_the_process() {
        let (tx, rx) = watch::channel(None);
        let h = tokio::spawn(async move { run(&spec("sleep 30"), |_, _| {}, rx).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(Some(libc::SIGINT)).unwrap();
        assert_eq!(h.await.unwrap(), Outcome::Cancelled(libc::SIGINT));
    }
}
