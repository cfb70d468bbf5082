//! `engine::schedule` — the scheduler, as a state machine.
//!
//! Owns: which selected task starts next and which is skipped. It is fed
//! "this task was started as a process / finished (well or not) / became
//! ready (a persistent task)" and "stop" inputs, and answers with
//! [`Step`]s: start this task (tainted or not), or skip it (blocked by
//! which failure). Ready tasks are ordered by priority (the critical path,
//! see [`super::priority`]), ties by selection order; at most
//! `concurrency` started processes run at once, each in a lane; the
//! `--continue` mode decides what a failure stops. It also keeps each
//! task's lane and start/end times for the profile and the history.
//! Never: spawns a process, awaits, reads a clock, touches a file or knows
//! a task's name: its inputs are indices and times, so it is unit-tested
//! without processes (the table tests below).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use vx_proto::ContinueMode;

/// Per local task: when it started and ended (ms since the run started) and
/// the concurrency lane it held.
pub(super) struct Lanes {
    pub(super) start: Vec<u64>,
    pub(super) end: Vec<u64>,
    pub(super) slot: Vec<Option<u32>>,
    free: BinaryHeap<Reverse<u32>>,
}

impl Lanes {
    fn new(n: usize, concurrency: usize) -> Lanes {
        Lanes {
            start: vec![0; n],
            end: vec![0; n],
            slot: vec![None; n],
            free: (0..concurrency as u32).map(Reverse).collect(),
        }
    }

    fn take_slot(&mut self, i: usize) {
        self.slot[i] = self.free.pop().map(|Reverse(s)| s);
    }

    fn finish(&mut self, i: usize, now: u64) {
        self.end[i] = now;
        if let Some(s) = self.slot[i] {
            self.free.push(Reverse(s));
        }
    }
}

/// What the scheduler decides about the next ready task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Start it. `tainted`: a dependency failed, was skipped or was itself
    /// tainted (only under `--continue=always`): its result is not cached.
    Start { task: usize, tainted: bool },
    /// Skipped, never started (already counted as complete): the run is
    /// stopping (`blocked_by: None`), or a dependency failed; `blocked_by`
    /// is the failure at the root of it.
    Skip {
        task: usize,
        blocked_by: Option<usize>,
    },
}

/// The scheduler of one run over tasks `0..n` (local indices).
pub(super) struct Scheduler {
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    priority: Vec<usize>,
    mode: ContinueMode,
    concurrency: usize,
    deps_left: Vec<usize>,
    /// The failure at the root of a failed or skipped task (itself when it
    /// failed, or was skipped because the run is stopping).
    failed_root: Vec<Option<usize>>,
    tainted: Vec<bool>,
    ready: BinaryHeap<(usize, Reverse<usize>)>,
    /// Started as processes and not finished (what `concurrency` bounds).
    running: usize,
    spawned: Vec<bool>,
    completed: usize,
    stopping: bool,
    lanes: Lanes,
}

impl Scheduler {
    /// `deps[i]`: the tasks `i` waits for; `dependents` its inverse;
    /// `priority[i]`: higher starts first.
    pub(super) fn new(
        deps: Vec<Vec<usize>>,
        dependents: Vec<Vec<usize>>,
        priority: Vec<usize>,
        concurrency: usize,
        mode: ContinueMode,
    ) -> Scheduler {
        let n = deps.len();
        let deps_left: Vec<usize> = deps.iter().map(|d| d.len()).collect();
        let mut ready = BinaryHeap::new();
        for i in 0..n {
            if deps_left[i] == 0 {
                ready.push((priority[i], Reverse(i)));
            }
        }
        Scheduler {
            deps,
            dependents,
            priority,
            mode,
            concurrency,
            deps_left,
            failed_root: vec![None; n],
            tainted: vec![false; n],
            ready,
            running: 0,
            spawned: vec![false; n],
            completed: 0,
            stopping: false,
            lanes: Lanes::new(n, concurrency),
        }
    }

    /// The next decision, if a task is ready and a lane is free. A
    /// [`Step::Start`] must be answered with [`Scheduler::spawned`] (it runs
    /// as a process) or with [`Scheduler::finished`] (it was served inline).
    pub(super) fn next(&mut self, now_ms: u64) -> Option<Step> {
        if self.running >= self.concurrency {
            return None;
        }
        let (_, Reverse(i)) = self.ready.pop()?;
        self.lanes.start[i] = now_ms;
        let blocked = self.deps[i].iter().find_map(|&d| self.failed_root[d]);
        let skip = if self.stopping {
            Some(None)
        } else if self.mode != ContinueMode::Always {
            blocked.map(Some)
        } else {
            None
        };
        if let Some(blocked_by) = skip {
            self.failed_root[i] = Some(blocked_by.unwrap_or(i));
            self.lanes.end[i] = now_ms;
            self.complete(i);
            return Some(Step::Skip {
                task: i,
                blocked_by,
            });
        }
        let tainted = self.deps[i]
            .iter()
            .any(|&d| self.tainted[d] || self.failed_root[d].is_some());
        Some(Step::Start { task: i, tainted })
    }

    /// Task `i` (just started) runs as a process: it holds a lane.
    pub(super) fn spawned(&mut self, i: usize) {
        self.running += 1;
        self.spawned[i] = true;
        self.lanes.take_slot(i);
    }

    /// Task `i` finished (a persistent task: became ready), or failed.
    /// Its dependents may become ready.
    pub(super) fn finished(&mut self, i: usize, failed: bool, tainted: bool, now_ms: u64) {
        if std::mem::take(&mut self.spawned[i]) {
            self.running -= 1;
        }
        self.tainted[i] = tainted;
        self.lanes.finish(i, now_ms);
        if failed {
            self.failed_root[i] = Some(i);
            if self.mode == ContinueMode::Never {
                self.stopping = true;
            }
        }
        self.complete(i);
    }

    /// A started process was lost without an outcome (its future panicked):
    /// its lane is not given back and it never completes.
    pub(super) fn lost(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// Start nothing more: every task still to start is skipped.
    pub(super) fn stop(&mut self) {
        self.stopping = true;
    }

    /// Whether the run is stopping (a failure under `--continue=never`, or
    /// [`Scheduler::stop`]).
    pub(super) fn stopping(&self) -> bool {
        self.stopping
    }

    /// Task `i`'s priority (higher starts first).
    pub(super) fn priority(&self, i: usize) -> usize {
        self.priority[i]
    }

    /// Every task finished or was skipped.
    pub(super) fn is_complete(&self) -> bool {
        self.completed >= self.deps.len()
    }

    /// Nothing is ready (with the run incomplete, only what runs can help).
    pub(super) fn nothing_ready(&self) -> bool {
        self.ready.is_empty()
    }

    /// Tasks that never became ready (cannot happen on a DAG).
    pub(super) fn never_ready(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.deps.len()).filter(|&i| self.deps_left[i] > 0)
    }

    pub(super) fn deps(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    pub(super) fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    fn complete(&mut self, i: usize) {
        self.completed += 1;
        for &d in &self.dependents[i] {
            self.deps_left[d] -= 1;
            if self.deps_left[d] == 0 {
                self.ready.push((self.priority[d], Reverse(d)));
            }
        }
    }
}

/// For each node, how many nodes transitively depend on it.
pub(super) fn transitive_dependent_counts(
    deps: &[Vec<usize>],
    dependents: &[Vec<usize>],
) -> Vec<usize> {
    let n = deps.len();
    let words = n.div_ceil(64);
    // Process in reverse topological order (dependents before their deps).
    let mut indeg: Vec<usize> = dependents.iter().map(|d| d.len()).collect();
    let mut order = Vec::with_capacity(n);
    let mut stack: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    while let Some(i) = stack.pop() {
        order.push(i);
        for &d in &deps[i] {
            indeg[d] -= 1;
            if indeg[d] == 0 {
                stack.push(d);
            }
        }
    }
    let mut sets: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut counts = vec![0; n];
    for &i in &order {
        let mut set = vec![0u64; words];
        for &d in &dependents[i] {
            set[d / 64] |= 1 << (d % 64);
            for (w, o) in set.iter_mut().zip(&sets[d]) {
                *w |= *o;
            }
        }
        counts[i] = set.iter().map(|w| w.count_ones() as usize).sum();
        sets[i] = set;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(
        deps: &[&[usize]],
        priority: &[usize],
        concurrency: usize,
        mode: ContinueMode,
    ) -> Scheduler {
        let deps: Vec<Vec<usize>> = deps.iter().map(|d| d.to_vec()).collect();
        let mut dependents = vec![Vec::new(); deps.len()];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        Scheduler::new(deps, dependents, priority.to_vec(), concurrency, mode)
    }

    /// Runs a whole schedule: every started task is a process that ends in
    /// start order (first in, first out), failing when it is in `fails`.
    /// The trace: `s0` started, `t0` started tainted, `e0` ended, `k0/1`
    /// skipped blocked by 1, `k0` skipped because the run stops.
    fn trace(
        deps: &[&[usize]],
        priority: &[usize],
        concurrency: usize,
        mode: ContinueMode,
        fails: &[usize],
    ) -> String {
        let mut s = sched(deps, priority, concurrency, mode);
        let mut out = Vec::new();
        let mut running = std::collections::VecDeque::new();
        let mut now = 0;
        loop {
            while let Some(step) = s.next(now) {
                match step {
                    Step::Start { task, tainted } => {
                        out.push(format!("{}{task}", if tainted { 't' } else { 's' }));
                        s.spawned(task);
                        running.push_back((task, tainted));
                    }
                    Step::Skip { task, blocked_by } => out.push(match blocked_by {
                        Some(b) => format!("k{task}/{b}"),
                        None => format!("k{task}"),
                    }),
                }
            }
            let Some((i, tainted)) = running.pop_front() else {
                break;
            };
            now += 10;
            s.finished(i, fails.contains(&i), tainted, now);
            out.push(format!("e{i}"));
        }
        assert!(s.is_complete(), "incomplete: {out:?}");
        assert_eq!(s.never_ready().count(), 0);
        out.join(" ")
    }

    #[test]
    fn decisions_by_table() {
        use ContinueMode::{Always, DepsOk, Never};
        // (what, deps, priority, concurrency, continue, failing, trace)
        type Case = (
            &'static str,
            &'static [&'static [usize]],
            &'static [usize],
            usize,
            ContinueMode,
            &'static [usize],
            &'static str,
        );
        let cases: &[Case] = &[
            (
                "higher priority (longer critical path) first, ties by index",
                &[&[], &[], &[], &[]],
                &[1, 5, 3, 5],
                1,
                DepsOk,
                &[],
                "s1 e1 s3 e3 s2 e2 s0 e0",
            ),
            (
                "a dependent waits for its dependency whatever its priority",
                &[&[], &[0], &[]],
                &[2, 9, 1],
                1,
                DepsOk,
                &[],
                "s0 e0 s1 e1 s2 e2",
            ),
            (
                "concurrency bounds what runs at once",
                &[&[], &[], &[], &[0, 1]],
                &[0, 0, 0, 0],
                2,
                DepsOk,
                &[],
                "s0 s1 e0 s2 e1 s3 e2 e3",
            ),
            (
                "continue=never: a failure stops starting anything",
                &[&[], &[], &[0], &[]],
                &[9, 5, 1, 1],
                1,
                Never,
                &[0],
                "s0 e0 k1 k2 k3",
            ),
            (
                "continue=never: running tasks finish, the rest is skipped",
                &[&[], &[], &[0], &[]],
                &[9, 5, 1, 1],
                2,
                Never,
                &[0],
                "s0 s1 e0 k2 k3 e1",
            ),
            (
                "continue=deps-ok: dependents skipped, blamed on the root failure",
                &[&[], &[], &[0], &[2]],
                &[9, 5, 1, 1],
                1,
                DepsOk,
                &[0],
                "s0 e0 s1 e1 k2/0 k3/0",
            ),
            (
                "continue=always: dependents run, tainted down the line",
                &[&[], &[], &[0], &[2]],
                &[9, 5, 1, 1],
                1,
                Always,
                &[0],
                "s0 e0 s1 e1 t2 e2 t3 e3",
            ),
            (
                "continue=always: a skip-free run is never tainted",
                &[&[], &[0]],
                &[0, 0],
                1,
                Always,
                &[],
                "s0 e0 s1 e1",
            ),
        ];
        for (what, deps, priority, concurrency, mode, fails, want) in cases {
            assert_eq!(
                trace(deps, priority, *concurrency, *mode, fails),
                *want,
                "{what}"
            );
        }
    }

    #[test]
    fn a_persistent_task_gates_its_dependents_until_ready() {
        // 0: a dev server (persistent); 1 depends on it; 2 is independent.
        let mut s = sched(&[&[], &[0], &[]], &[5, 5, 1], 4, ContinueMode::DepsOk);
        assert_eq!(
            s.next(0),
            Some(Step::Start {
                task: 0,
                tainted: false
            })
        );
        s.spawned(0);
        assert_eq!(
            s.next(0),
            Some(Step::Start {
                task: 2,
                tainted: false
            })
        );
        s.spawned(2);
        // Lanes are free, but 1 is not ready while 0 is not.
        assert_eq!(s.next(1), None);
        s.finished(2, false, false, 2);
        assert_eq!(s.next(2), None);
        // Ready: it gives its lane back and its dependent starts.
        s.finished(0, false, false, 3);
        assert_eq!(
            s.next(3),
            Some(Step::Start {
                task: 1,
                tainted: false
            })
        );
        s.spawned(1);
        s.finished(1, false, false, 4);
        assert!(s.is_complete());
    }

    #[test]
    fn lanes_are_reused_lowest_first_and_inline_work_takes_none() {
        let mut s = sched(
            &[&[], &[], &[], &[]],
            &[4, 3, 2, 1],
            2,
            ContinueMode::DepsOk,
        );
        for (t, i) in [(0, 0), (0, 1)] {
            assert_eq!(
                s.next(t),
                Some(Step::Start {
                    task: i,
                    tainted: false
                })
            );
            s.spawned(i);
        }
        // Both lanes held: nothing starts.
        assert_eq!(s.next(0), None);
        s.finished(0, false, false, 5);
        // Task 2 is served inline (a cache hit): it holds no lane.
        assert_eq!(
            s.next(5),
            Some(Step::Start {
                task: 2,
                tainted: false
            })
        );
        s.finished(2, false, false, 5);
        assert_eq!(
            s.next(5),
            Some(Step::Start {
                task: 3,
                tainted: false
            })
        );
        s.spawned(3);
        s.finished(1, false, false, 6);
        s.finished(3, false, false, 7);
        let l = s.lanes();
        assert_eq!(l.slot, vec![Some(0), Some(1), None, Some(0)]);
        assert_eq!((l.start[3], l.end[3]), (5, 7));
        assert!(s.is_complete());
    }

    #[test]
    fn stop_skips_everything_not_started() {
        let mut s = sched(&[&[], &[], &[1]], &[3, 2, 1], 1, ContinueMode::Always);
        assert_eq!(
            s.next(0),
            Some(Step::Start {
                task: 0,
                tainted: false
            })
        );
        s.spawned(0);
        s.stop();
        s.finished(0, false, false, 1);
        assert_eq!(
            s.next(1),
            Some(Step::Skip {
                task: 1,
                blocked_by: None
            })
        );
        assert_eq!(
            s.next(1),
            Some(Step::Skip {
                task: 2,
                blocked_by: None
            })
        );
        assert_eq!(s.next(1), None);
        assert!(s.is_complete());
    }

    #[test]
    fn dependent_counts() {
        // 0 <- 1 <- 2, 0 <- 3
        let deps = vec![vec![], vec![0], vec![1], vec![0]];
        let mut dependents = vec![Vec::new(); 4];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        assert_eq!(
            transitive_dependent_counts(&deps, &dependents),
            vec![3, 1, 0, 0]
        );
    }
}
