//! `cache::share` — how several vx processes share one cache directory:
//! the file locks beside redb's own.
//!
//! Owns five locks, none of which holds data (`history.lock` holds its
//! writer's pid, for a person): the whole-file probe of a
//! redb file (no other process has it open, so it may be moved aside or
//! deleted), `gc.lock` (a prune's sweep against a save finding a blob
//! present), `runs.lock` (a run in progress, any process, against a
//! `cache clean`), `tasks.lock` (one task of one project executing in
//! one process at a time, so two processes never write the same outputs at
//! once and capture each other's half-written files) and `history.lock` (a
//! run's history record written after its answer, against the readers that
//! must see it). Every lock is an open-file-description lock or a `flock`,
//! released by the kernel when its holder dies, so a crash never wedges
//! another process. Never reads or writes the index, the history or a blob.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// The lock file a prune holds exclusively while it decides and deletes,
/// and a save holds shared while it finds a blob present and refreshes it.
pub(crate) const GC_LOCK: &str = "gc.lock";
/// The lock file every run holds shared for its whole life, and
/// `cache clean` exclusively.
pub(crate) const RUNS_LOCK: &str = "runs.lock";

/// The file whose bytes are the per-task execution locks: one byte pair
/// per (project directory, task), at an offset hashed from them.
pub(crate) const TASKS_LOCK: &str = "tasks.lock";

/// The lock file a foreground engine holds exclusively from before it
/// answers a run until that run's history record is committed, and every
/// history reader takes shared (waiting a bounded time) before it reads: a
/// `vx last` right after `vx run` sees the run. Holds the writer's pid.
pub(crate) const HISTORY_LOCK: &str = "history.lock";

/// A held lock on a file (released on drop, by closing it).
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] File);

/// Takes a whole-file write lock on `path` without waiting, when no other
/// process has the file open through redb (each redb handle holds shared
/// byte-range locks on it for its life). The lock is held until the
/// returned file is dropped; renaming or deleting the file meanwhile is
/// safe: nobody else can open it through redb until then. `None` when
/// another process holds any lock on it (or it cannot be opened).
pub(crate) fn unshared(path: &Path) -> Option<Held> {
    let f = OpenOptions::new().read(true).write(true).open(path).ok()?;
    // SAFETY: an all-zero `flock` is a valid value of a plain C struct.
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = libc::F_WRLCK as libc::c_short;
    lk.l_whence = libc::SEEK_SET as libc::c_short;
    lk.l_start = 0;
    lk.l_len = 0; // to the end, however far it grows
    // SAFETY: fcntl on a descriptor we own, with a valid `flock`.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut lk) };
    (r == 0).then_some(Held(f))
}

fn lock_file(dir: &Path, name: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(name))
}

fn flock(f: &File, op: libc::c_int) -> bool {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return true;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

fn ofd(f: &File, cmd: libc::c_int, kind: libc::c_int, at: i64) -> Option<libc::flock> {
    // SAFETY: an all-zero `flock` is a valid value of a plain C struct.
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = kind as libc::c_short;
    lk.l_whence = libc::SEEK_SET as libc::c_short;
    lk.l_start = at;
    lk.l_len = 1;
    // SAFETY: fcntl on a descriptor we own, with a valid `flock`.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut lk) };
    (r == 0).then_some(lk)
}

/// One task's execution lock in `tasks.lock`, across processes: byte
/// `2n` is held (exclusively) by the process executing the task, byte
/// `2n + 1` (shared) by every process waiting for it. Open-file-description
/// locks, so each [`TaskLock`] is its own holder, even within one process,
/// and the kernel drops them when the holder dies.
#[derive(Debug)]
pub struct TaskLock {
    file: File,
    at: i64,
    held: bool,
}

impl TaskLock {
    /// Opens `dir`'s `tasks.lock` for the task `slot` names. `None` when
    /// the file cannot be made (a read-only cache dir): the caller goes on
    /// unlocked, as a single process would.
    pub(crate) fn open(dir: &Path, slot: &str) -> Option<TaskLock> {
        let file = lock_file(dir, TASKS_LOCK).ok()?;
        let h = blake3::hash(slot.as_bytes());
        let mut n = [0u8; 8];
        n.copy_from_slice(&h.as_bytes()[..8]);
        // Even and well inside `off_t`.
        let at = ((u64::from_le_bytes(n) >> 4) << 1) as i64;
        Some(TaskLock {
            file,
            at,
            held: false,
        })
    }

    /// Takes the task's lock without waiting; `false` while another
    /// process (or another [`TaskLock`]) holds it. A caller that will try
    /// again marks itself as waiting first ([`TaskLock::wait_mark`]).
    pub fn try_take(&mut self) -> bool {
        if !self.held && ofd(&self.file, libc::F_OFD_SETLK, libc::F_WRLCK, self.at).is_some() {
            self.held = true;
            // No longer waiting (a no-op when it never was).
            let _ = ofd(&self.file, libc::F_OFD_SETLK, libc::F_UNLCK, self.at + 1);
        }
        self.held
    }

    /// Says "I am waiting for this task", for the holder to see
    /// ([`TaskLock::awaited`]); dropped when the lock is taken.
    pub fn wait_mark(&self) {
        let _ = ofd(&self.file, libc::F_OFD_SETLK, libc::F_RDLCK, self.at + 1);
    }

    /// Whether another process waits for this task (so the holder commits
    /// what it stored before letting go, for the waiter to hit it).
    pub fn awaited(&self) -> bool {
        ofd(&self.file, libc::F_OFD_GETLK, libc::F_WRLCK, self.at + 1)
            .is_some_and(|lk| lk.l_type != libc::F_UNLCK as libc::c_short)
    }
}

/// `dir`'s `gc.lock`, shared (a save) or exclusive (a prune), waiting for
/// it. `None` when the lock file cannot be made (a read-only cache dir):
/// the caller goes on unlocked, as a single process would.
pub(crate) fn gc_lock(dir: &Path, exclusive: bool) -> Option<Held> {
    let f = lock_file(dir, GC_LOCK).ok()?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    flock(&f, op).then_some(Held(f))
}

/// A run's hold on a cache directory: `cache clean` waits for every one
/// (in any process) to end before it deletes anything.
pub type RunLease = Held;

/// Takes `dir`'s run lease (shared). Waits while a `cache clean` holds the
/// directory; `None` when the lock file cannot be made.
pub(crate) fn run_lease(dir: &Path) -> Option<RunLease> {
    let f = lock_file(dir, RUNS_LOCK).ok()?;
    flock(&f, libc::LOCK_SH).then_some(Held(f))
}

/// Takes `dir`'s run lock exclusively, once no run (in any process) holds
/// a lease, waiting at most `wait`. `Ok(None)` when the lock file cannot
/// be made; `Err` when runs still hold it after `wait`.
pub(crate) fn runs_exclusive(dir: &Path, wait: Duration) -> Result<Option<Held>, ()> {
    let Ok(f) = lock_file(dir, RUNS_LOCK) else {
        return Ok(None);
    };
    let start = Instant::now();
    loop {
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            return Ok(Some(Held(f)));
        }
        if start.elapsed() >= wait {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Takes `dir`'s history record lock exclusively without waiting, and
/// writes this process's pid into it. `None` when another process (or
/// another record of this one) holds it, or the file cannot be made: the
/// caller then records before it answers, as a single process would.
pub(crate) fn record_lock(dir: &Path) -> Option<Held> {
    use std::io::Write;
    let f = lock_file(dir, HISTORY_LOCK).ok()?;
    if !flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
        return None;
    }
    let mut w = &f;
    // Only for a person (or a test) looking for the writer.
    let _ = f
        .set_len(0)
        .and_then(|()| w.write_all(format!("{}\n", std::process::id()).as_bytes()));
    Some(Held(f))
}

/// Waits (at most `wait`) until no process holds `dir`'s history record
/// lock: every record answered before this call is then committed. `false`
/// when a writer still holds it after `wait`; `true` at once when there is
/// no lock file.
pub(crate) fn wait_for_records(dir: &Path, wait: Duration) -> bool {
    let Ok(f) = OpenOptions::new().read(true).open(dir.join(HISTORY_LOCK)) else {
        return true;
    };
    let start = Instant::now();
    loop {
        if flock(&f, libc::LOCK_SH | libc::LOCK_NB) {
            return true;
        }
        if start.elapsed() >= wait {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redb_handle_makes_its_file_shared() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.redb");
        let db = redb::Builder::new()
            .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
            .create(&p)
            .unwrap();
        assert!(unshared(&p).is_none(), "an open handle holds it");
        drop(db);
        let held = unshared(&p).expect("nobody holds it");
        // While held, redb refuses to open it (the caller may move it).
        let r = redb::Builder::new()
            .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
            .create(&p);
        assert!(r.is_err());
        drop(held);
    }

    #[test]
    fn readers_wait_for_a_held_record_lock() {
        let d = tempfile::tempdir().unwrap();
        assert!(wait_for_records(d.path(), Duration::ZERO), "no lock file");
        let held = record_lock(d.path()).expect("free");
        let pid = std::fs::read_to_string(d.path().join(HISTORY_LOCK)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        assert!(record_lock(d.path()).is_none(), "one writer at a time");
        assert!(!wait_for_records(d.path(), Duration::from_millis(30)));
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        assert!(wait_for_records(d.path(), Duration::from_secs(10)));
        t.join().unwrap();
        assert!(record_lock(d.path()).is_some());
    }

    #[test]
    fn a_task_lock_has_one_holder_and_sees_its_waiters() {
        let d = tempfile::tempdir().unwrap();
        let mut a = TaskLock::open(d.path(), "/ws/p\0p#build").unwrap();
        let mut b = TaskLock::open(d.path(), "/ws/p\0p#build").unwrap();
        let mut other = TaskLock::open(d.path(), "/ws/p\0p#test").unwrap();
        assert!(a.try_take());
        assert!(other.try_take(), "another task is not blocked");
        assert!(!a.awaited());
        assert!(!b.try_take());
        b.wait_mark();
        assert!(a.awaited());
        drop(a);
        assert!(b.try_take());
        assert!(!b.awaited(), "its own mark went when it took the lock");
    }

    #[test]
    fn clean_waits_for_leases_and_runs_wait_for_clean() {
        let d = tempfile::tempdir().unwrap();
        let lease = run_lease(d.path()).unwrap();
        assert!(runs_exclusive(d.path(), Duration::from_millis(50)).is_err());
        drop(lease);
        let ex = runs_exclusive(d.path(), Duration::from_millis(50))
            .unwrap()
            .unwrap();
        let f = lock_file(d.path(), RUNS_LOCK).unwrap();
        assert!(!flock(&f, libc::LOCK_SH | libc::LOCK_NB));
        drop(ex);
        assert!(flock(&f, libc::LOCK_SH | libc::LOCK_NB));
    }
}
