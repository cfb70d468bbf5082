//! `persist` — long-running (persistent) task processes.
//!
//! Owns: starting a persistent task (through `exec`, with a held-open stdin),
//! deciding when it is ready — the first output line that matches its
//! `ready_when` regex (ANSI escapes stripped), or as soon as it is spawned
//! when it has none — the readiness timeout and the "still waiting" notice,
//! and the [`Proc`] handle that outlives the start: learn that the process
//! exited, or stop it (TERM to its group, the grace, then KILL). A `Proc`
//! dropped without [`Proc::stop`] still stops its process.
//!
//! Never: decides which tasks run or when they restart (`engine`, `watch`),
//! and never caches anything: persistent tasks have no outputs to keep.

use crate::exec::{self, Outcome, Spawn};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use vx_proto::{RunEvent, Stream};

/// After this long without readiness a notice is printed, unless the run's
/// request says otherwise (`VX_READY_NOTICE_MS`, read by the engine from the
/// request's environment and passed to [`start`]).
pub const DEFAULT_READY_NOTICE: Duration = Duration::from_secs(10);

/// A running persistent task.
pub struct Proc {
    pub id: String,
    /// The task key it was started with (a watch cycle restarts it when the
    /// key changes).
    pub key: String,
    stop: watch::Sender<Option<i32>>,
    exit: watch::Receiver<Option<Outcome>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proc {
    /// How it ended, if it has.
    pub fn exited(&self) -> Option<Outcome> {
        self.exit.borrow().clone()
    }

    /// A receiver that sees the process's outcome when it ends.
    pub fn exit_receiver(&self) -> watch::Receiver<Option<Outcome>> {
        self.exit.clone()
    }

    /// Waits until the process ends.
    pub async fn wait_exit(&mut self) -> Outcome {
        let r = self.exit.wait_for(|o| o.is_some()).await.map(|o| o.clone());
        r.ok().flatten().unwrap_or(Outcome::Exited(1))
    }

    /// Stops the process (TERM to its group, the grace, then KILL) and waits
    /// until its group is gone. Returns how it ended.
    pub async fn stop(mut self) -> Outcome {
        let _ = self.stop.send(Some(libc::SIGTERM));
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.exited().unwrap_or(Outcome::Cancelled(libc::SIGTERM))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The spawned task still runs exec's TERM → grace → KILL sequence.
        let _ = self.stop.send(Some(libc::SIGTERM));
    }
}

/// Why a persistent task did not become ready.
#[derive(Debug)]
pub struct NotReady {
    pub error: String,
    pub outcome: Option<Outcome>,
    /// The run was cancelled while it started.
    pub cancelled: Option<i32>,
}

/// Removes ANSI escape sequences (CSI and OSC) so `ready_when` matches the
/// text a user sees.
pub fn strip_ansi(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('\x1b') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match it.peek() {
            Some('[') => {
                it.next();
                // CSI: parameters, then one final byte in @..~.
                for c in it.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                it.next();
                // OSC: until BEL or ESC \.
                while let Some(c) = it.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' {
                        if it.peek() == Some(&'\\') {
                            it.next();
                        }
                        break;
                    }
                }
            }
            _ => {
                it.next();
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Starts a persistent task and waits until it is ready, exits, times out
/// (`ready_timeout`), or `cancel` fires. Its output lines stream into
/// `events` for as long as it runs; after `notice_after` without readiness,
/// a notice says it is still waiting.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    spec: Spawn,
    id: String,
    key: String,
    ready_when: Option<regex::Regex>,
    ready_timeout: Option<Duration>,
    notice_after: Duration,
    events: Option<crate::sink::Events>,
    mut cancel: watch::Receiver<Option<i32>>,
) -> Result<Proc, NotReady> {
    let (stop_tx, stop_rx) = watch::channel(None);
    let (exit_tx, exit_rx) = watch::channel(None);
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let ready_tx = Arc::new(Mutex::new(Some(ready_tx)));
    let fire = {
        let r = ready_tx.clone();
        move || {
            if let Some(tx) = r.lock().ok().and_then(|mut g| g.take()) {
                let _ = tx.send(());
            }
        }
    };
    let at_spawn = ready_when.is_none();
    let pattern = ready_when.as_ref().map(|r| r.as_str().to_string());
    let notice_events = events.clone();
    let task = {
        let id = id.clone();
        let fire2 = fire.clone();
        tokio::spawn(async move {
            let mut waiting = !at_spawn;
            let outcome = exec::run_observed(
                &spec,
                |stream: Stream, line: String| {
                    if waiting
                        && let Some(re) = &ready_when
                        && re.is_match(&strip_ansi(&line))
                    {
                        waiting = false;
                        fire2();
                    }
                    if let Some(tx) = &events {
                        let _ = tx.send(RunEvent::TaskOutput {
                            id: id.clone(),
                            stream,
                            line,
                            replay: false,
                            worker: None,
                        });
                    }
                },
                |_pid| {
                    if at_spawn {
                        fire();
                    }
                },
                stop_rx,
            )
            .await;
            let _ = exit_tx.send(Some(outcome));
        })
    };
    let mut proc = Proc {
        id,
        key,
        stop: stop_tx,
        exit: exit_rx,
        task: Some(task),
    };
    let deadline = ready_timeout.map(|t| tokio::time::Instant::now() + t);
    let timeout = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    let notice = tokio::time::sleep(notice_after);
    tokio::pin!(notice);
    let mut noticed = false;
    let mut ready_rx = ready_rx;
    let mut exit_watch = proc.exit.clone();
    loop {
        tokio::select! {
            biased;
            r = &mut ready_rx => {
                if r.is_ok() {
                    return Ok(proc);
                }
                // The sender went away without firing: the process ended.
                let outcome = proc.wait_exit().await;
                return Err(exited_early(outcome));
            }
            _ = async { exit_watch.wait_for(|o| o.is_some()).await.is_ok() } => {
                // A ready line may have raced the exit.
                if ready_rx.try_recv().is_ok() {
                    return Ok(proc);
                }
                let outcome = proc.exited().unwrap_or(Outcome::Exited(1));
                return Err(exited_early(outcome));
            }
            _ = &mut timeout => {
                let ms = ready_timeout.map(|t| t.as_millis()).unwrap_or(0);
                let outcome = proc.stop().await;
                return Err(NotReady {
                    error: format!("not ready after {ms} ms (no output line matched `ready_when`); stopped"),
                    outcome: Some(outcome),
                    cancelled: None,
                });
            }
            _ = &mut notice, if !noticed => {
                noticed = true;
                if let Some(tx) = &notice_events {
                    let _ = tx.send(RunEvent::Warning {
                        message: format!(
                            "{} is not ready yet: waiting for an output line matching `{}`",
                            proc.id,
                            pattern.as_deref().unwrap_or("")
                        ),
                    });
                }
            }
            r = cancel.changed() => {
                let sig = match r { Ok(()) => (*cancel.borrow()).unwrap_or(libc::SIGTERM), Err(_) => libc::SIGTERM };
                let outcome = proc.stop().await;
                return Err(NotReady {
                    error: "cancelled".into(),
                    outcome: Some(outcome),
                    cancelled: Some(sig),
                });
            }
        }
    }
}

fn exited_early(outcome: Outcome) -> NotReady {
    let how = match &outcome {
        Outcome::Exited(c) => format!("exit {c}"),
        Outcome::Signalled(s) => format!("signal {s}"),
        Outcome::SpawnFailed(e) => e.clone(),
        Outcome::TimedOut => "a timeout".into(),
        Outcome::Cancelled(_) => "cancelled".into(),
    };
    NotReady {
        error: format!("exited before it was ready ({how})"),
        outcome: Some(outcome),
        cancelled: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cmd: &str) -> Spawn {
        Spawn {
            command: cmd.into(),
            dir: std::env::temp_dir(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            timeout: None,
            keep_stdin: true,
            tty: false,
            kill_grace: None,
        }
    }

    fn never() -> watch::Receiver<Option<i32>> {
        let (tx, rx) = watch::channel(None);
        std::mem::forget(tx);
        rx
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("\x1b[32mready\x1b[0m on :3000"),
            "ready on :3000"
        );
        assert_eq!(strip_ansi("\x1b]0;title\x07ok"), "ok");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[tokio::test]
    async fn ready_on_matching_line_then_stop() {
        let re = regex::Regex::new("^listening").ok();
        let p = start(
            spec("echo booting; sleep 0.2; echo 'listening on 1'; exec sleep 30"),
            "a#dev".into(),
            "k".into(),
            re,
            Some(Duration::from_secs(10)),
            DEFAULT_READY_NOTICE,
            None,
            never(),
        )
        .await
        .expect("ready");
        assert!(p.exited().is_none());
        let o = p.stop().await;
        assert!(matches!(o, Outcome::Cancelled(_)), "{o:?}");
    }

    #[tokio::test]
    async fn exit_before_ready_fails() {
        let re = regex::Regex::new("never").ok();
        let e = start(
            spec("echo nope; exit 3"),
            "a#dev".into(),
            "k".into(),
            re,
            None,
            DEFAULT_READY_NOTICE,
            None,
            never(),
        )
        .await
        .err()
        .expect("fails");
        assert!(e.error.contains("exit 3"), "{}", e.error);
    }

    #[tokio::test]
    async fn readiness_timeout_stops_the_process() {
        let re = regex::Regex::new("never").ok();
        let e = start(
            spec("exec sleep 30"),
            "a#dev".into(),
            "k".into(),
            re,
            Some(Duration::from_millis(200)),
            DEFAULT_READY_NOTICE,
            None,
            never(),
        )
        .await
        .err()
        .expect("times out");
        assert!(e.error.contains("not ready after 200 ms"), "{}", e.error);
    }

    #[tokio::test]
    async fn ready_at_spawn_without_a_regex() {
        let mut p = start(
            spec("sleep 0.1; exit 4"),
            "a#dev".into(),
            "k".into(),
            None,
            None,
            DEFAULT_READY_NOTICE,
            None,
            never(),
        )
        .await
        .expect("ready at spawn");
        assert_eq!(p.wait_exit().await, Outcome::Exited(4));
    }
}
