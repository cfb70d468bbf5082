//! `engine::priority` — the order the scheduler prefers among ready tasks.
//!
//! Owns: each selected task's priority — the expected remaining critical
//! path from the run history (own p50 plus the longest path through its
//! dependents) with the transitive-dependent count breaking ties, or that
//! count alone without history (`VX_SCHEDULE=structural` forces it); a
//! repeat run under the daemon reuses the last ordering.
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
    let Some(h) = history.filter(|_| !forced) else {
        return structural;
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
    let ecp = history::critical_path(deps, dependents, &own);
    const LOW: usize = (1 << 20) - 1;
    let out: Vec<usize> = ecp
        .iter()
        .zip(&structural)
        .map(|(&e, &b)| ((e as usize).min(usize::MAX >> 21) << 20) | b.min(LOW))
        .collect();
    if sh.hot.is_some()
        && let Ok(mut m) = MEMO.lock()
    {
        *m = Some((memo_key, Arc::new(out.clone())));
    }
    out
}
