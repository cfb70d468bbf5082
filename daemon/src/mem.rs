//! `mem` — giving freed heap memory back to the system when the process is
//! idle.
//!
//! Owns: the count of runs in flight in this process ([`ActiveRun`]) and
//! [`give_memory_back`] / [`give_back_if_idle`]. glibc keeps freed memory
//! in its arenas (one per thread that allocated), so a daemon that ran a
//! large run, or recorded one in the history after answering it, otherwise
//! stays at its high-water mark; `malloc_trim` returns the free pages.
//! Never: frees or owns anything itself, and never trims while a run is in
//! flight (a trim locks each arena in turn: a run's threads would wait).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs in flight in this process.
static ACTIVE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Counts one run while alive; when the last run of the process ends,
/// returns freed heap pages to the system (a large run's buffers otherwise
/// stay resident).
pub struct ActiveRun(());

impl ActiveRun {
    pub fn start() -> ActiveRun {
        ACTIVE_RUNS.fetch_add(1, Ordering::SeqCst);
        ActiveRun(())
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        if ACTIVE_RUNS.fetch_sub(1, Ordering::SeqCst) == 1 {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(give_memory_back);
                }
                Err(_) => give_memory_back(),
            }
        }
    }
}

/// Whether no run is in flight in this process.
pub fn idle() -> bool {
    ACTIVE_RUNS.load(Ordering::SeqCst) == 0
}

/// [`give_memory_back`] when no run is in flight (work done after a run's
/// answer, such as its history record, calls it when it is done).
pub fn give_back_if_idle() {
    if idle() {
        give_memory_back();
    }
}

/// Tunes glibc's allocator for a long-lived process (the daemon; call it
/// first, before other threads start): at most 4 arenas (glibc's default
/// is 8 per CPU, each holding its own free memory) and fixed mmap and trim
/// thresholds. By default glibc raises the mmap threshold after each large
/// free, up to 32 MiB, so a big run's buffers land in the arenas and stay
/// there as fragments; fixed, blocks over 256 KiB are mapped and unmapped
/// whole. Measured in docs/benchmarks.md ("Daemon memory").
pub fn tune_for_daemon() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before the
    // daemon's other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Returns free heap memory to the system (glibc keeps it otherwise).
pub fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_in_flight_is_not_idle() {
        // Other tests of this binary may hold runs: compare with the count.
        let before = ACTIVE_RUNS.load(Ordering::SeqCst);
        let r = ActiveRun::start();
        assert_eq!(ACTIVE_RUNS.load(Ordering::SeqCst), before + 1);
        assert!(!idle() || before > 0);
        drop(r);
        assert_eq!(ACTIVE_RUNS.load(Ordering::SeqCst), before);
    }
}
