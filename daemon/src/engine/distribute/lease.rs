//! `engine::distribute::lease` — the coordinator's bookkeeping, as a
//! state machine.
//!
//! Owns: the pending tasks of every distributed run (highest priority
//! first, then the order they were offered), the attached workers (their
//! capacity, labels and the credit their last `Ready` gave), pull-based
//! assignment (a worker never gets more than the credit it asked for, nor
//! more than its capacity), the leases and their deadlines (set at
//! assignment, pushed back by heartbeats), a lost lease's requeue against
//! the per-task retry budget, failing fast a task no attached worker (nor
//! its run's local lanes) can take, and the idempotence of reports (only
//! the first report for a live lease of the worker that holds it counts).
//! Never: reads a clock (it is fed `now_ms`), sends anything, knows about
//! processes, files or the network: its inputs are values and its outputs
//! [`Effect`]s, so it is unit-tested with tables (below).

use super::Report;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// An attached worker, numbered by the coordinator (never reused).
pub(super) type WorkerId = u64;
/// A distributed run, numbered by the coordinator (never reused).
pub(super) type RunKey = u64;

/// A task a run offers to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::engine) struct Job {
    pub(super) run: RunKey,
    /// The run's local index of the task.
    pub(super) task: usize,
    /// `project#task`, for messages.
    pub(super) id: String,
    /// Higher goes first (the run's critical-path priority).
    pub(super) priority: usize,
    /// Labels a worker must all have.
    pub(super) labels: Vec<String>,
    /// Whether a worker may take it yet (its dependencies' outputs are in
    /// the remote cache).
    pub(super) remote_ok: bool,
    /// Whether it can ever go to a worker (`false`: a dependency's outputs
    /// cannot reach one; only the run's local lanes can take it).
    pub(super) remote_possible: bool,
}

/// What the pool decided, for the coordinator to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    /// Send this task to this worker under this lease.
    Assign {
        worker: WorkerId,
        lease: u64,
        run: RunKey,
        task: usize,
    },
    /// Tell this worker to stop this lease's task (it may be gone).
    Revoke {
        worker: WorkerId,
        lease: u64,
        reason: String,
    },
    /// The task lost its worker and is pending again.
    Requeued {
        run: RunKey,
        task: usize,
        message: String,
    },
    /// The task ended on a worker (the first report of a live lease).
    Done {
        run: RunKey,
        task: usize,
        worker: WorkerId,
        report: Report,
    },
    /// The task cannot run: no worker can take it, or it lost its worker
    /// more often than the retry budget allows.
    Fail {
        run: RunKey,
        task: usize,
        message: String,
    },
}

struct Worker {
    name: String,
    capacity: u32,
    labels: BTreeSet<String>,
    /// How many more tasks it asked for (its last `Ready`, less what was
    /// assigned since).
    credit: u32,
    leases: BTreeSet<u64>,
}

struct Pending {
    job: Job,
    /// Offer order (ties of priority), kept across requeues.
    seq: u64,
    /// Each lost lease: `worker: why`.
    losses: Vec<String>,
}

struct Lease {
    worker: WorkerId,
    deadline: u64,
    pending: Pending,
}

/// The coordinator's state: workers, pending tasks, leases.
pub(super) struct Pool {
    lease_ms: u64,
    retries: u32,
    workers: BTreeMap<WorkerId, Worker>,
    next_worker: WorkerId,
    /// Per run: whether its local lanes take tasks.
    runs: HashMap<RunKey, bool>,
    pending: Vec<Pending>,
    next_seq: u64,
    leases: BTreeMap<u64, Lease>,
    next_lease: u64,
}

impl Pool {
    pub(super) fn new(lease_ms: u64, retries: u32) -> Pool {
        Pool {
            lease_ms: lease_ms.max(1),
            retries,
            workers: BTreeMap::new(),
            next_worker: 1,
            runs: HashMap::new(),
            pending: Vec::new(),
            next_seq: 0,
            leases: BTreeMap::new(),
            next_lease: 1,
        }
    }

    /// New lease length and retry budget (for leases made from now on).
    pub(super) fn configure(&mut self, lease_ms: u64, retries: u32) {
        self.lease_ms = lease_ms.max(1);
        self.retries = retries;
    }

    pub(super) fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// A worker attaches (it has no credit until its first `Ready`).
    pub(super) fn attach(&mut self, name: &str, capacity: u32, labels: &[String]) -> WorkerId {
        let id = self.next_worker;
        self.next_worker += 1;
        self.workers.insert(
            id,
            Worker {
                name: name.to_string(),
                capacity: capacity.max(1),
                labels: labels.iter().cloned().collect(),
                credit: 0,
                leases: BTreeSet::new(),
            },
        );
        id
    }

    pub(super) fn name(&self, w: WorkerId) -> Option<&str> {
        self.workers.get(&w).map(|x| x.name.as_str())
    }

    /// `(name, capacity, labels)` of each attached worker, in attach order.
    pub(super) fn workers(&self) -> Vec<(String, u32, Vec<String>)> {
        self.workers
            .values()
            .map(|w| {
                (
                    w.name.clone(),
                    w.capacity,
                    w.labels.iter().cloned().collect(),
                )
            })
            .collect()
    }

    /// The worker holding a live lease, with the lease's run and task.
    pub(super) fn holder(&self, lease: u64) -> Option<(WorkerId, RunKey, usize)> {
        self.leases
            .get(&lease)
            .map(|l| (l.worker, l.pending.job.run, l.pending.job.task))
    }

    /// A worker is gone (its link closed or was dropped): its leases are
    /// lost, then what no worker can take any more fails.
    pub(super) fn detach(&mut self, w: WorkerId, why: &str, now: u64) -> Vec<Effect> {
        let Some(worker) = self.workers.remove(&w) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for lease in worker.leases {
            if let Some(l) = self.leases.remove(&lease) {
                self.lose(l.pending, &worker.name, why, &mut out);
            }
        }
        self.fail_unsatisfiable(&mut out);
        self.assign(now, &mut out);
        out
    }

    /// A worker's `Ready`: it may take `free` more tasks (replacing its
    /// previous credit; never more than its capacity less its leases).
    pub(super) fn ready(&mut self, w: WorkerId, free: u32, now: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        if let Some(worker) = self.workers.get_mut(&w) {
            let room = worker.capacity.saturating_sub(worker.leases.len() as u32);
            worker.credit = free.min(room);
            self.assign(now, &mut out);
        }
        out
    }

    /// A worker's heartbeat: the leases it names that it holds get a new
    /// deadline. Other leases (expired, someone else's) are untouched.
    pub(super) fn heartbeat(&mut self, w: WorkerId, leases: &[u64], now: u64) {
        let deadline = now.saturating_add(self.lease_ms);
        for lease in leases {
            if let Some(l) = self.leases.get_mut(lease)
                && l.worker == w
            {
                l.deadline = l.deadline.max(deadline);
            }
        }
    }

    /// A run starts offering tasks (`local`: its own lanes take some).
    pub(super) fn open_run(&mut self, run: RunKey, local: bool) {
        self.runs.insert(run, local);
    }

    /// A run ends (or stops): its pending tasks are withdrawn and its
    /// leases revoked. Returns the tasks that were pending, those that
    /// were leased, and the revocations.
    pub(super) fn close_run(
        &mut self,
        run: RunKey,
        reason: &str,
    ) -> (Vec<usize>, Vec<usize>, Vec<Effect>) {
        self.runs.remove(&run);
        let mut pending = Vec::new();
        let mut tasks = Vec::new();
        self.pending.retain(|p| {
            if p.job.run == run {
                pending.push(p.job.task);
                false
            } else {
                true
            }
        });
        let mut out = Vec::new();
        let gone: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.pending.job.run == run)
            .map(|(k, _)| *k)
            .collect();
        for lease in gone {
            if let Some(l) = self.leases.remove(&lease) {
                tasks.push(l.pending.job.task);
                if let Some(w) = self.workers.get_mut(&l.worker) {
                    w.leases.remove(&lease);
                }
                out.push(Effect::Revoke {
                    worker: l.worker,
                    lease,
                    reason: reason.to_string(),
                });
            }
        }
        pending.sort_unstable();
        tasks.sort_unstable();
        (pending, tasks, out)
    }

    /// A run offers a task. It fails at once when nothing can take it.
    pub(super) fn offer(&mut self, job: Job, now: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        let p = Pending {
            job,
            seq: self.next_seq,
            losses: Vec::new(),
        };
        self.next_seq += 1;
        if let Some(message) = self.unsatisfiable(&p.job) {
            out.push(Effect::Fail {
                run: p.job.run,
                task: p.job.task,
                message,
            });
            return out;
        }
        self.pending.push(p);
        self.assign(now, &mut out);
        out
    }

    /// A pending task's dependencies are now in the remote cache: workers
    /// may take it. `false` instead: they never will (only local lanes).
    pub(super) fn set_remote(
        &mut self,
        run: RunKey,
        task: usize,
        ok: bool,
        now: u64,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        if let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| p.job.run == run && p.job.task == task)
        {
            p.job.remote_ok = ok;
            p.job.remote_possible = ok;
        }
        self.fail_unsatisfiable(&mut out);
        self.assign(now, &mut out);
        out
    }

    /// The run's local lanes take up to `n` of its pending tasks (those
    /// needing no label), highest priority first.
    pub(super) fn take_local(&mut self, run: RunKey, n: usize) -> Vec<usize> {
        if n == 0 || self.runs.get(&run) != Some(&true) {
            return Vec::new();
        }
        let mut mine: Vec<(Reverse<usize>, u64, usize)> = self
            .pending
            .iter()
            .filter(|p| p.job.run == run && p.job.labels.is_empty())
            .map(|p| (Reverse(p.job.priority), p.seq, p.job.task))
            .collect();
        mine.sort_unstable();
        mine.truncate(n);
        let taken: BTreeSet<u64> = mine.iter().map(|m| m.1).collect();
        self.pending.retain(|p| !taken.contains(&p.seq));
        mine.into_iter().map(|m| m.2).collect()
    }

    /// A worker's report for a lease. Counts only when the lease is live
    /// and that worker holds it; then the lease ends.
    pub(super) fn report(
        &mut self,
        w: WorkerId,
        lease: u64,
        report: Report,
        now: u64,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        match self.leases.get(&lease) {
            Some(l) if l.worker == w => {}
            _ => return out,
        }
        let Some(l) = self.leases.remove(&lease) else {
            return out;
        };
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.leases.remove(&lease);
        }
        out.push(Effect::Done {
            run: l.pending.job.run,
            task: l.pending.job.task,
            worker: w,
            report,
        });
        self.assign(now, &mut out);
        out
    }

    /// Expires the leases whose deadline passed: revoked, and lost.
    pub(super) fn tick(&mut self, now: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        let expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for lease in expired {
            let Some(l) = self.leases.remove(&lease) else {
                continue;
            };
            let name = match self.workers.get_mut(&l.worker) {
                Some(w) => {
                    w.leases.remove(&lease);
                    w.name.clone()
                }
                None => format!("worker {}", l.worker),
            };
            let why = format!("no heartbeat for {} ms", self.lease_ms);
            out.push(Effect::Revoke {
                worker: l.worker,
                lease,
                reason: format!("lease {lease} expired ({why})"),
            });
            self.lose(l.pending, &name, &why, &mut out);
        }
        if !out.is_empty() {
            self.assign(now, &mut out);
        }
        out
    }

    /// The earliest lease deadline (when [`Pool::tick`] has work).
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.leases.values().map(|l| l.deadline).min()
    }

    /// A task lost its lease: counted; pending again, or failed when the
    /// budget is spent.
    fn lose(&mut self, mut p: Pending, worker: &str, why: &str, out: &mut Vec<Effect>) {
        p.losses.push(format!("{worker}: {why}"));
        let (run, task) = (p.job.run, p.job.task);
        if !self.runs.contains_key(&run) {
            return; // the run is over
        }
        if p.losses.len() as u32 > self.retries {
            out.push(Effect::Fail {
                run,
                task,
                message: format!(
                    "{} lost its worker {} times, more than `[workers] retries = {}` allows ({})",
                    p.job.id,
                    p.losses.len(),
                    self.retries,
                    p.losses.join("; ")
                ),
            });
            return;
        }
        out.push(Effect::Requeued {
            run,
            task,
            message: format!(
                "{} lost its worker ({worker}: {why}); offered again (loss {} of at most {})",
                p.job.id,
                p.losses.len(),
                self.retries
            ),
        });
        self.pending.push(p);
    }

    /// Why no one can take `job` now, if so.
    fn unsatisfiable(&self, job: &Job) -> Option<String> {
        let local = self.runs.get(&job.run) == Some(&true);
        if job.labels.is_empty() && local {
            return None;
        }
        if !job.remote_possible {
            let why = if job.labels.is_empty() {
                "`--no-local` leaves no local lane"
            } else {
                "it needs worker labels, which the local lanes do not have"
            };
            return Some(format!(
                "{} cannot run on a worker (a dependency's outputs cannot reach one: it is not cached, or not in the remote cache) and {why}",
                job.id
            ));
        }
        let fits = self
            .workers
            .values()
            .any(|w| job.labels.iter().all(|l| w.labels.contains(l)));
        if fits {
            return None;
        }
        let connected = if self.workers.is_empty() {
            "no worker is connected".to_string()
        } else {
            let list: Vec<String> = self
                .workers
                .values()
                .map(|w| {
                    if w.labels.is_empty() {
                        format!("{} (no labels)", w.name)
                    } else {
                        let l: Vec<&str> = w.labels.iter().map(String::as_str).collect();
                        format!("{} ({})", w.name, l.join(", "))
                    }
                })
                .collect();
            format!("connected: {}", list.join("; "))
        };
        if job.labels.is_empty() {
            return Some(format!(
                "{}: no worker can take it and `--no-local` leaves no local lane ({connected})",
                job.id
            ));
        }
        let missing: Vec<&str> = job
            .labels
            .iter()
            .filter(|l| !self.workers.values().any(|w| w.labels.contains(*l)))
            .map(String::as_str)
            .collect();
        let what = if missing.is_empty() {
            format!(
                "needs the labels {} together, which no connected worker has",
                job.labels.join(", ")
            )
        } else {
            format!(
                "needs the label{} {}, which no connected worker has",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", ")
            )
        };
        Some(format!("{} {what} ({connected})", job.id))
    }

    fn fail_unsatisfiable(&mut self, out: &mut Vec<Effect>) {
        let mut i = 0;
        while i < self.pending.len() {
            if let Some(message) = self.unsatisfiable(&self.pending[i].job) {
                let p = self.pending.remove(i);
                out.push(Effect::Fail {
                    run: p.job.run,
                    task: p.job.task,
                    message,
                });
            } else {
                i += 1;
            }
        }
    }

    /// Hands pending tasks (highest priority first) to workers with
    /// credit and the labels they need; the worker with the most credit
    /// first (spreading the load), then the oldest.
    fn assign(&mut self, now: u64, out: &mut Vec<Effect>) {
        if self.pending.is_empty() || self.workers.values().all(|w| w.credit == 0) {
            return;
        }
        self.pending
            .sort_by_key(|p| (Reverse(p.job.priority), p.seq));
        let mut i = 0;
        while i < self.pending.len() {
            let job = &self.pending[i].job;
            if !job.remote_ok {
                i += 1;
                continue;
            }
            let pick = self
                .workers
                .iter()
                .filter(|(_, w)| w.credit > 0 && job.labels.iter().all(|l| w.labels.contains(l)))
                .max_by_key(|(id, w)| (w.credit, Reverse(**id)))
                .map(|(id, _)| *id);
            let Some(wid) = pick else {
                i += 1;
                continue;
            };
            let p = self.pending.remove(i);
            let lease = self.next_lease;
            self.next_lease += 1;
            if let Some(w) = self.workers.get_mut(&wid) {
                w.credit -= 1;
                w.leases.insert(lease);
            }
            out.push(Effect::Assign {
                worker: wid,
                lease,
                run: p.job.run,
                task: p.job.task,
            });
            self.leases.insert(
                lease,
                Lease {
                    worker: wid,
                    deadline: now.saturating_add(self.lease_ms),
                    pending: p,
                },
            );
            if self.workers.values().all(|w| w.credit == 0) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vx_proto::TaskStatus;

    fn job(run: RunKey, task: usize, priority: usize, labels: &[&str]) -> Job {
        Job {
            run,
            task,
            id: format!("p#t{task}"),
            priority,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            remote_ok: true,
            remote_possible: true,
        }
    }

    fn ok() -> Report {
        Report {
            status: TaskStatus::Success,
            exit_code: Some(0),
            duration_ms: 5,
            error: None,
            uploaded: true,
            cpu_ms: None,
            peak_rss_bytes: None,
        }
    }

    fn assigns(e: &[Effect]) -> Vec<(WorkerId, usize)> {
        e.iter()
            .filter_map(|e| match e {
                Effect::Assign { worker, task, .. } => Some((*worker, *task)),
                _ => None,
            })
            .collect()
    }

    fn lease_of(e: &[Effect], t: usize) -> u64 {
        e.iter()
            .find_map(|e| match e {
                Effect::Assign { lease, task, .. } if *task == t => Some(*lease),
                _ => None,
            })
            .expect("assigned")
    }

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    /// Assignment order and capacity: (worker capacity, Ready free,
    /// offered (task, priority), expected tasks assigned, in order).
    #[test]
    fn assignment_order_and_capacity() {
        type Case = (u32, u32, &'static [(usize, usize)], &'static [usize]);
        let cases: &[Case] = &[
            // Highest priority first.
            (4, 4, &[(0, 1), (1, 9), (2, 5)], &[1, 2, 0]),
            // Never more than the credit asked for.
            (4, 2, &[(0, 1), (1, 9), (2, 5)], &[1, 2]),
            // Never more than the capacity, whatever Ready says.
            (1, 5, &[(0, 1), (1, 9), (2, 5)], &[1]),
            // Equal priority: offer order.
            (3, 3, &[(7, 2), (3, 2), (5, 2)], &[7, 3, 5]),
            // No credit: nothing.
            (3, 0, &[(0, 1)], &[]),
        ];
        for (n, (cap, free, offered, want)) in cases.iter().enumerate() {
            let mut p = Pool::new(1000, 2);
            p.open_run(1, false);
            let w = p.attach("w", *cap, &[]);
            for (t, prio) in offered.iter() {
                assert!(assigns(&p.offer(job(1, *t, *prio, &[]), 0)).is_empty());
            }
            let got: Vec<usize> = assigns(&p.ready(w, *free, 0)).iter().map(|a| a.1).collect();
            assert_eq!(&got, want, "case {n}");
        }
    }

    #[test]
    fn ready_replaces_credit_and_counts_live_leases() {
        let mut p = Pool::new(1000, 2);
        p.open_run(1, false);
        let w = p.attach("w", 2, &[]);
        p.ready(w, 2, 0);
        let e = p.offer(job(1, 0, 1, &[]), 0);
        assert_eq!(assigns(&e), vec![(w, 0)]);
        // A repeated Ready(2) while one lease is live gives one more, not two.
        p.ready(w, 2, 1);
        let e1 = p.offer(job(1, 1, 1, &[]), 1);
        let e2 = p.offer(job(1, 2, 1, &[]), 1);
        assert_eq!(assigns(&e1), vec![(w, 1)]);
        assert!(assigns(&e2).is_empty());
    }

    #[test]
    fn labels_route_and_fail_fast() {
        let mut p = Pool::new(1000, 2);
        p.open_run(1, true);
        let plain = p.attach("plain", 4, &[]);
        let gpu = p.attach("gpu-box", 4, &labels(&["gpu", "linux"]));
        p.ready(plain, 4, 0);
        p.ready(gpu, 4, 0);
        // A gpu task goes to the worker with the label, even though the
        // other has as much credit.
        assert_eq!(assigns(&p.offer(job(1, 0, 1, &["gpu"]), 0)), vec![(gpu, 0)]);
        // A label nobody has: fails at once, naming it and the workers.
        let e = p.offer(job(1, 1, 1, &["tpu", "gpu"]), 0);
        match &e[..] {
            [
                Effect::Fail {
                    task: 1, message, ..
                },
            ] => {
                assert!(message.contains("needs the label tpu"), "{message}");
                assert!(message.contains("gpu-box (gpu, linux)"), "{message}");
                assert!(message.contains("plain (no labels)"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Labels each present on some worker but on none together.
        let e = p.offer(job(1, 2, 1, &["gpu", "arm"]), 0);
        assert!(matches!(&e[..], [Effect::Fail { .. }]), "{e:?}");
        // No labels and local lanes: never failed, even with no worker.
        let mut q = Pool::new(1000, 2);
        q.open_run(1, true);
        assert!(q.offer(job(1, 0, 1, &[]), 0).is_empty());
        assert_eq!(q.take_local(1, 4), vec![0]);
        // No labels, --no-local and no worker: fails fast.
        let mut q = Pool::new(1000, 2);
        q.open_run(1, false);
        let e = q.offer(job(1, 0, 1, &[]), 0);
        match &e[..] {
            [Effect::Fail { message, .. }] => assert!(message.contains("no worker is connected")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pending_labelled_task_fails_when_its_only_worker_leaves() {
        let mut p = Pool::new(1000, 2);
        p.open_run(1, true);
        let gpu = p.attach("g", 1, &labels(&["gpu"]));
        // No credit yet: pending.
        assert!(p.offer(job(1, 0, 1, &["gpu"]), 0).is_empty());
        let e = p.detach(gpu, "disconnected", 5);
        assert!(
            matches!(&e[..], [Effect::Fail { task: 0, message, .. }] if message.contains("gpu")),
            "{e:?}"
        );
    }

    #[test]
    fn local_lanes_take_unlabelled_tasks_by_priority() {
        let mut p = Pool::new(1000, 2);
        p.open_run(1, true);
        p.open_run(2, true);
        let w = p.attach("w", 2, &labels(&["gpu"]));
        for (t, prio, l) in [(0, 1, &[][..]), (1, 5, &["gpu"][..]), (2, 3, &[][..])] {
            p.offer(job(1, t, prio, l), 0);
        }
        p.offer(job(2, 9, 100, &[]), 0);
        // Run 1's lanes: its own unlabelled tasks only, by priority.
        assert_eq!(p.take_local(1, 5), vec![2, 0]);
        assert_eq!(p.take_local(1, 5), Vec::<usize>::new());
        // The gpu task waits for the worker, which also takes run 2's
        // (a labelled worker takes unlabelled tasks), by priority.
        assert_eq!(assigns(&p.ready(w, 2, 0)), vec![(w, 9), (w, 1)]);
        // A --no-local run's lanes take nothing.
        p.open_run(3, false);
        p.offer(job(3, 0, 1, &[]), 0);
        assert!(p.take_local(3, 5).is_empty());
    }

    #[test]
    fn not_remote_ok_waits_for_its_dependencies() {
        let mut p = Pool::new(1000, 2);
        p.open_run(1, false);
        let w = p.attach("w", 2, &[]);
        p.ready(w, 2, 0);
        let mut j = job(1, 0, 1, &[]);
        j.remote_ok = false;
        assert!(assigns(&p.offer(j, 0)).is_empty());
        assert_eq!(assigns(&p.set_remote(1, 0, true, 1)), vec![(w, 0)]);
        // Never possible on a worker, and no local lanes: failed.
        let mut j = job(1, 1, 1, &[]);
        j.remote_ok = false;
        p.offer(j, 1);
        let e = p.set_remote(1, 1, false, 2);
        assert!(matches!(&e[..], [Effect::Fail { task: 1, .. }]), "{e:?}");
    }

    #[test]
    fn expiry_reassigns_and_late_reports_are_ignored() {
        let mut p = Pool::new(100, 2);
        p.open_run(1, false);
        let a = p.attach("a", 1, &[]);
        let b = p.attach("b", 1, &[]);
        p.ready(a, 1, 0);
        let e = p.offer(job(1, 0, 1, &[]), 0);
        let l1 = lease_of(&e, 0);
        assert_eq!(assigns(&e), vec![(a, 0)]);
        // Heartbeats push the deadline back.
        p.heartbeat(a, &[l1], 90);
        assert!(p.tick(150).is_empty());
        assert_eq!(p.next_deadline(), Some(190));
        // Someone else's heartbeat changes nothing.
        p.heartbeat(b, &[l1], 180);
        p.ready(b, 1, 180);
        let e = p.tick(190);
        assert!(
            e.iter().any(|x| matches!(x, Effect::Revoke { worker, lease, .. } if *worker == a && *lease == l1)),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|x| matches!(x, Effect::Requeued { task: 0, .. }))
        );
        let l2 = lease_of(&e, 0);
        assert_ne!(l1, l2);
        assert_eq!(assigns(&e), vec![(b, 0)]);
        // a's late report is ignored; so is one from b for a's lease.
        assert!(p.report(a, l1, ok(), 200).is_empty());
        assert!(p.report(b, l1, ok(), 200).is_empty());
        // b's counts once; a duplicate is ignored.
        let e = p.report(b, l2, ok(), 210);
        assert!(matches!(&e[..], [Effect::Done { task: 0, .. }]), "{e:?}");
        assert!(p.report(b, l2, ok(), 211).is_empty());
    }

    #[test]
    fn retry_budget_is_spent_then_the_task_fails() {
        // (retries, losses before the task fails)
        for retries in [0u32, 1, 2] {
            let mut p = Pool::new(100, retries);
            p.open_run(1, false);
            // A worker that never asks for work keeps the task satisfiable.
            p.attach("spare", 1, &[]);
            p.offer(job(1, 0, 1, &[]), 0);
            let mut now = 0;
            let mut failed = None;
            for n in 1..=retries + 1 {
                let w = p.attach(&format!("w{n}"), 1, &[]);
                let e = p.ready(w, 1, now);
                assert_eq!(assigns(&e), vec![(w, 0)], "retries {retries}, loss {n}");
                now += 10;
                let e = if n % 2 == 0 {
                    p.detach(w, "disconnected", now)
                } else {
                    now += 100;
                    p.tick(now)
                };
                if let Some(m) = e.iter().find_map(|x| match x {
                    Effect::Fail { message, .. } => Some(message.clone()),
                    _ => None,
                }) {
                    failed = Some((n, m));
                }
            }
            let (n, m) = failed.expect("failed");
            assert_eq!(n, retries + 1);
            assert!(m.contains(&format!("{} times", retries + 1)), "{m}");
            assert!(m.contains("w1: no heartbeat"), "{m}");
        }
    }

    #[test]
    fn loss_of_a_worker_requeues_its_leases() {
        let mut p = Pool::new(1000, 2);
        p.open_run(1, false);
        let a = p.attach("a", 2, &[]);
        p.ready(a, 2, 0);
        p.offer(job(1, 0, 1, &[]), 0);
        p.offer(job(1, 1, 1, &[]), 0);
        let b = p.attach("b", 2, &[]);
        let e = p.detach(a, "disconnected", 10);
        assert_eq!(
            e.iter()
                .filter(|x| matches!(x, Effect::Requeued { .. }))
                .count(),
            2
        );
        assert_eq!(assigns(&p.ready(b, 2, 11)).len(), 2);
        assert_eq!(p.workers().len(), 1);
    }

    #[test]
    fn closing_a_run_revokes_and_withdraws() {
        let mut p = Pool::new(1000, 2);
        p.open_run(1, false);
        p.open_run(2, false);
        let a = p.attach("a", 1, &[]);
        p.ready(a, 1, 0);
        let e = p.offer(job(1, 0, 1, &[]), 0);
        let l = lease_of(&e, 0);
        p.offer(job(1, 1, 1, &[]), 0);
        p.offer(job(2, 5, 1, &[]), 0);
        let (pending, leased, e) = p.close_run(1, "the run was cancelled");
        assert_eq!((pending, leased), (vec![1], vec![0]));
        assert_eq!(
            e,
            vec![Effect::Revoke {
                worker: a,
                lease: l,
                reason: "the run was cancelled".into()
            }]
        );
        // The report of the revoked lease is ignored; the worker's slot is
        // free for run 2.
        assert!(p.report(a, l, ok(), 1).is_empty());
        assert_eq!(assigns(&p.ready(a, 1, 1)), vec![(a, 5)]);
    }
}
