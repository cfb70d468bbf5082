//! `engine::priority` — the order the scheduler prefers among ready tasks.
//!
//! Owns: each selected task's priority — the expected remaining critical
//! path from the run history (own p50 plus the longest path through its
//! dependents) with the transitive-dependent count breaking ties, or that
//! count alone without history (`VX_SCHEDULE=structural` forces it); a
//! weights plugin's expected cost of a task stands in for its history
//! (`docs/plugins.md`); a repeat run under the daemon without weights
//! reuses the last ordering.
//! Never: starts, skips or delays a task (that is [`super::schedule`]).

use super::prepare::Shared;
use super::schedule::transitive_dependent_counts;
use crate::history::{self, History};
use std::sync::{Arc, Mutex};
use vx_proto::RunEvent;
use vx_proto::knobs;

/// Scheduling priorities of the selected tasks: with history, the expected
/// remaining critical path (own p50 + the longest path through its
/// dependents; unknown durations take the workspace median) with the
/// transitive-dependent count breaking ties; without, that count alone.
/// `VX_SCHEDULE=structural` forces the structural order.
pub(super) fn priorities(
    sh: &Shared,
    nodes: &[usize],
    deps: &[Vec<usize>],
    dependents: &[Vec<usize>],
    history: Option<&History>,
) -> Vec<usize> {
    let structural = transitive_dependent_counts(deps, dependents);
    let forced = knobs::SCHEDULE.is(&sh.params.env, "structural");
    if forced {
        return structural;
    }
    // Plugins' weights stand in for the history's durations of the tasks
    // they weigh (`docs/plugins.md`).
    let weights = &sh.plugins.weights;
    let Some(h) = history.filter(|_| weights.is_empty()) else {
        if weights.is_empty() {
            return structural;
        }
        let graph = &sh.model.graph;
        let ids: Vec<String> = nodes
            .iter()
            .filter(|&&g| graph.nodes[g].def.command.is_some())
            .map(|&g| graph.nodes[g].id.clone())
            .collect();
        let durations = history
            .and_then(|h| h.durations(&ids, history::DEFAULT_WINDOW).ok())
            .unwrap_or_default();
        let own: Vec<Option<u64>> = nodes
            .iter()
            .map(|&g| {
                let node = &graph.nodes[g];
                if node.def.command.is_none() {
                    Some(0)
                } else {
                    weights.get(&g).or_else(|| durations.get(&node.id)).copied()
                }
            })
            .collect();
        return ordering(deps, dependents, &own, &structural);
    };
    // The same selection under the same durations orders the same: a repeat
    // run under the daemon reuses the last ordering.
    let memo_key = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (Arc::as_ptr(&sh.model) as usize).hash(&mut hasher);
        nodes.hash(&mut hasher);
        deps.hash(&mut hasher);
        (hasher.finish(), h.lists_generation())
    };
    type Memo = Option<((u64, u64), Arc<Vec<usize>>)>;
    static MEMO: Mutex<Memo> = Mutex::new(None);
    if sh.hot.is_some()
        && let Ok(m) = MEMO.lock()
        && let Some((k, v)) = m.as_ref()
        && *k == memo_key
    {
        return (**v).clone();
    }
    let graph = &sh.model.graph;
    let ids: Vec<String> = nodes
        .iter()
        .filter(|&&g| graph.nodes[g].def.command.is_some())
        .map(|&g| graph.nodes[g].id.clone())
        .collect();
    let durations = match h.durations(&ids, history::DEFAULT_WINDOW) {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => return structural,
        Err(e) => {
            sh.emit(RunEvent::Warning {
                message: format!(
                    "the run history cannot be read ({e}); tasks are scheduled in structural order"
                ),
            });
            return structural;
        }
    };
    let own: Vec<Option<u64>> = nodes
        .iter()
        .map(|&g| {
            let node = &graph.nodes[g];
            if node.def.command.is_none() {
                Some(0)
            } else {
                durations.get(&node.id).copied()
            }
        })
        .collect();
    let out = ordering(deps, dependents, &own, &structural);
    if sh.hot.is_some()
        && let Ok(mut m) = MEMO.lock()
    {
        *m = Some((memo_key, Arc::new(out.clone())));
    }
    out
}

/// The priorities from each task's own expected cost (`None`: unknown,
/// the median of the known) — the expected remaining critical path —
/// with the transitive-dependent counts `structural` breaking ties.
fn ordering(
    deps: &[Vec<usize>],
    dependents: &[Vec<usize>],
    own: &[Option<u64>],
    structural: &[usize],
) -> Vec<usize> {
    let ecp = history::critical_path(deps, dependents, own);
    const LOW: usize = (1 << 20) - 1;
    ecp.iter()
        .zip(structural)
        .map(|(&e, &b)| ((e as usize).min(usize::MAX >> 21) << 20) | b.min(LOW))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::schedule::{Scheduler, Step};
    use super::*;
    use vx_proto::ContinueMode;

    /// The order a one-lane scheduler starts `deps`' tasks in, under the
    /// priorities from `own` costs.
    fn start_order(deps: &[&[usize]], own: &[Option<u64>]) -> Vec<usize> {
        let deps: Vec<Vec<usize>> = deps.iter().map(|d| d.to_vec()).collect();
        let mut dependents = vec![Vec::new(); deps.len()];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        let structural = transitive_dependent_counts(&deps, &dependents);
        let priority = ordering(&deps, &dependents, own, &structural);
        let mut s = Scheduler::new(deps, dependents, priority, 1, ContinueMode::Never);
        let mut out = Vec::new();
        let mut now = 0;
        while let Some(Step::Start { task, .. }) = s.next(now) {
            out.push(task);
            s.spawned(task);
            now += 1;
            s.finished(task, false, false, now);
        }
        out
    }

    #[test]
    fn weights_change_the_order_by_table() {
        // (what, deps, own costs, start order)
        type Case = (
            &'static str,
            &'static [&'static [usize]],
            &'static [Option<u64>],
            &'static [usize],
        );
        let cases: &[Case] = &[
            (
                "three independent tasks, unknown costs: by index",
                &[&[], &[], &[]],
                &[None, None, None],
                &[0, 1, 2],
            ),
            (
                "the heaviest first",
                &[&[], &[], &[]],
                &[Some(10), Some(5000), Some(200)],
                &[1, 2, 0],
            ),
            (
                "a light task ahead of a heavy chain waits for it",
                // 0 alone; 1 -> 2 (2 depends on 1)
                &[&[], &[], &[1]],
                &[Some(3000), Some(100), Some(100)],
                &[0, 1, 2],
            ),
            (
                "a chain whose tail is heavy goes first",
                &[&[], &[], &[1]],
                &[Some(1000), Some(100), Some(5000)],
                &[1, 2, 0],
            ),
            (
                "structure breaks ties between equal costs",
                // 2 depends on 1: 1 has a dependent, 0 has none
                &[&[], &[], &[1]],
                &[Some(100), Some(100), Some(0)],
                &[1, 0, 2],
            ),
        ];
        for (what, deps, own, want) in cases {
            assert_eq!(&start_order(deps, own), want, "{what}");
        }
    }
}
