//! `state::memo` — what the daemon remembers between runs to skip work.
//!
//! Owns: per graph node of the current model, the input list (valid while
//! its project's file list is the very same object), the key and the parts
//! it was folded from, and the key whose outputs were verified on disk
//! since the watcher last reported a change in the project; per project,
//! the file list whose hashes were last warmed. Everything is dropped when
//! the model is replaced. Per request: the last whole-run answer kept to
//! be replayed ([`RunAnswer`], kept and judged by `engine::replay`), and
//! the last run's in-place hits ([`RunMemo`], likewise); which projects
//! each sync found changed ([`ChangeLog`]).
//! Never: computes a key, a hash or a check itself; it only answers "the
//! same as last time?" by identity and equality.

use super::Hot;
use crate::model::Model;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;
use vx_proto::history::RunRecord;
use vx_proto::{RunEvent, RunSummary, TaskResult};

/// At most this many whole-run answers are kept (one per distinct request).
const MAX_ANSWERS: usize = 4;

/// A finished run's whole answer and the state it was computed in (what
/// `engine::replay` compares before replaying it).
pub struct RunAnswer {
    /// [`Hot::generation`] the run started and ended with.
    pub generation: u64,
    /// The store it read (by identity: a closed and reopened store differs).
    pub store: Weak<crate::cache::Store>,
    /// The store's index generation the run started and ended with.
    pub store_generation: u64,
    /// When the run ended.
    pub at: Instant,
    /// Every event the run emitted, in order (its `run_started` included);
    /// `true` marks one only the bus's watchers got (`Events::observe`).
    pub events: Vec<(bool, RunEvent)>,
    /// The watchers got every event meant for them while the run went on
    /// (the bus was watched at each task): the answer may be replayed to a
    /// watched bus. `false`: only to an unwatched one.
    pub observed_whole: bool,
    pub summary: RunSummary,
    /// Its history record (`None`: the run was not recorded).
    pub record: Option<Arc<RunRecord>>,
}

/// A run's in-place hits, kept so that the next run of the same request
/// serves the ones nothing can have changed without looking at them
/// (judged by `engine::replay`).
pub struct RunMemo {
    /// The model the graph nodes belong to.
    pub model: Weak<Model>,
    /// The store the hits were read from (by identity).
    pub store: Weak<crate::cache::Store>,
    /// `Store::removals` as the run started.
    pub removals: u64,
    /// The mark of the snapshot the run used ([`Hot::sync_marked`]).
    pub mark: u64,
    /// When the run ended.
    pub at: Instant,
    /// The run's selection (graph nodes in dependency order).
    pub nodes: Vec<usize>,
    /// By graph node: its hit (or a group task's key).
    pub tasks: Vec<Option<Arc<MemoTask>>>,
}

/// One task's in-place hit as a run served it (a group task: its key).
pub struct MemoTask {
    /// When the run that found it checked it (a served task keeps the time
    /// of the check it was served from: it is checked again, and its
    /// access time recorded for `cache prune`, once that is too old).
    pub at: Instant,
    pub key: String,
    pub result: Option<TaskResult>,
    /// The log it replayed (only when its logs were shown in full).
    pub log: Option<Arc<Vec<u8>>>,
}

/// The kept per-task memos by request hash.
#[derive(Default)]
pub(super) struct RunMemos(Vec<([u8; 32], Arc<RunMemo>)>);

/// Which projects each [`Hot::sync`] found changed, by the sync's mark.
#[derive(Default)]
pub(super) struct ChangeLog {
    /// The mark of the latest sync that found anything changed.
    seq: u64,
    /// The latest mark at which everything may have changed.
    all: u64,
    /// Project → the latest mark at which it changed.
    projects: Vec<u64>,
}

impl ChangeLog {
    /// Notes a sync's changes (`None`: everything; `None` in the list: a
    /// path outside every project) and returns its snapshot's mark.
    pub(super) fn note(&mut self, changed: Option<&[Option<usize>]>) -> u64 {
        match changed {
            Some([]) => {}
            None => {
                self.seq += 1;
                self.all = self.seq;
                self.projects.clear();
            }
            Some(list) => {
                self.seq += 1;
                for p in list {
                    match *p {
                        None => self.all = self.seq,
                        Some(p) => {
                            if self.projects.len() <= p {
                                self.projects.resize(p + 1, 0);
                            }
                            self.projects[p] = self.seq;
                        }
                    }
                }
            }
        }
        self.seq
    }

    /// The projects that changed after mark `mark`; `None` when anything
    /// may have (or the mark is not one this log gave).
    pub(super) fn since(&self, mark: u64) -> Option<Vec<usize>> {
        if self.all > mark || mark > self.seq {
            return None;
        }
        Some(
            self.projects
                .iter()
                .enumerate()
                .filter(|(_, m)| **m > mark)
                .map(|(p, _)| p)
                .collect(),
        )
    }
}

/// The kept answers by request hash.
#[derive(Default)]
pub(super) struct Answers(Vec<([u8; 32], Arc<RunAnswer>)>);

pub(super) type FileList = Arc<Vec<crate::hash::FileMeta>>;
pub(super) type InputList = Arc<Vec<(String, String)>>;

#[derive(Default)]
pub(super) struct InputsMemo {
    /// The model the entries belong to (held, so its address is not reused).
    pub(super) model: Option<Arc<Model>>,
    /// Graph node → (the project file list it was computed from, the inputs).
    pub(super) by_node: HashMap<usize, (FileList, InputList)>,
    /// Project → the file list whose hashes were last warmed.
    pub(super) warmed: HashMap<usize, FileList>,
    /// Graph node → the key whose outputs were verified on disk since the
    /// last change the watcher reported in the node's project.
    pub(super) outputs_ok: HashMap<usize, String>,
    /// Graph node → the parts its last key was folded from, and the key.
    pub(super) keys: HashMap<usize, (crate::hash::KeyParts, String)>,
}

impl InputsMemo {
    pub(super) fn for_model(&mut self, model: &Arc<Model>) {
        if !self.model.as_ref().is_some_and(|m| Arc::ptr_eq(m, model)) {
            self.model = Some(model.clone());
            self.by_node.clear();
            self.warmed.clear();
            self.outputs_ok.clear();
            self.keys.clear();
        }
    }
}

impl Hot {
    /// The memoised inputs of node `n`, if `files` is the list they were computed from.
    pub fn inputs_memo(&self, model: &Arc<Model>, n: usize, files: &FileList) -> Option<InputList> {
        let m = self.inputs_memo.lock().ok()?;
        if !m.model.as_ref().is_some_and(|mm| Arc::ptr_eq(mm, model)) {
            return None;
        }
        let (f, inputs) = m.by_node.get(&n)?;
        Arc::ptr_eq(f, files).then(|| inputs.clone())
    }

    pub fn set_inputs_memo(
        &self,
        model: &Arc<Model>,
        n: usize,
        files: FileList,
        inputs: InputList,
    ) {
        let Ok(mut m) = self.inputs_memo.lock() else {
            return;
        };
        m.for_model(model);
        m.by_node.insert(n, (files, inputs));
    }

    /// Whether project `p`'s file list is the one whose hashes were last warmed.
    pub fn warmed(&self, model: &Arc<Model>, p: usize, files: &FileList) -> bool {
        let Ok(m) = self.inputs_memo.lock() else {
            return false;
        };
        m.model.as_ref().is_some_and(|mm| Arc::ptr_eq(mm, model))
            && m.warmed.get(&p).is_some_and(|f| Arc::ptr_eq(f, files))
    }

    pub fn set_warmed(&self, model: &Arc<Model>, lists: Vec<(usize, FileList)>) {
        let Ok(mut m) = self.inputs_memo.lock() else {
            return;
        };
        m.for_model(model);
        m.warmed.extend(lists);
    }

    /// The memoised key of node `n`, if every varying part equals the parts
    /// it was folded from (the input list compared by identity).
    pub fn key_memo(
        &self,
        model: &Arc<Model>,
        n: usize,
        inputs: &InputList,
        upstream: &[String],
        env: &[(String, Option<String>)],
        args: &[String],
    ) -> Option<String> {
        let m = self.inputs_memo.lock().ok()?;
        if !m.model.as_ref().is_some_and(|mm| Arc::ptr_eq(mm, model)) {
            return None;
        }
        let (p, key) = m.keys.get(&n)?;
        (Arc::ptr_eq(&p.inputs, inputs) && p.upstream == upstream && p.env == env && p.args == args)
            .then(|| key.clone())
    }

    pub fn set_key_memo(
        &self,
        model: &Arc<Model>,
        n: usize,
        parts: crate::hash::KeyParts,
        key: &str,
    ) {
        let Ok(mut m) = self.inputs_memo.lock() else {
            return;
        };
        m.for_model(model);
        m.keys.insert(n, (parts, key.to_string()));
    }

    /// Whether node `n`'s outputs for `key` were verified and nothing in its
    /// project changed since.
    pub fn outputs_known_ok(&self, model: &Arc<Model>, n: usize, key: &str) -> bool {
        let Ok(m) = self.inputs_memo.lock() else {
            return false;
        };
        m.model.as_ref().is_some_and(|mm| Arc::ptr_eq(mm, model))
            && m.outputs_ok.get(&n).is_some_and(|k| k == key)
    }

    /// Records that node `n`'s outputs match `key` on disk. Call only after
    /// [`Hot::watch_outputs`] and then the check, so no change can slip between.
    pub fn set_outputs_ok(&self, model: &Arc<Model>, n: usize, key: &str) {
        let Ok(mut m) = self.inputs_memo.lock() else {
            return;
        };
        m.for_model(model);
        m.outputs_ok.insert(n, key.to_string());
    }
}

impl Hot {
    /// The answer kept for `request`, if any.
    pub fn answer(&self, request: &[u8; 32]) -> Option<Arc<RunAnswer>> {
        let a = self.answers.lock().ok()?;
        a.0.iter()
            .find(|(r, _)| r == request)
            .map(|(_, a)| a.clone())
    }

    /// Keeps `answer` for `request`, replacing the request's previous one;
    /// answers of an older generation go (they can never be replayed), and
    /// at most [`MAX_ANSWERS`] are kept (the oldest go first).
    pub fn keep_answer(&self, request: [u8; 32], answer: RunAnswer) {
        let Ok(mut a) = self.answers.lock() else {
            return;
        };
        let g = answer.generation;
        a.0.retain(|(r, old)| *r != request && old.generation == g);
        if a.0.len() >= MAX_ANSWERS {
            a.0.remove(0);
        }
        a.0.push((request, Arc::new(answer)));
    }

    /// Forgets every kept answer.
    pub fn forget_answers(&self) {
        if let Ok(mut a) = self.answers.lock() {
            a.0.clear();
        }
    }
}

impl Hot {
    /// The per-task memo kept for `request`, if any.
    pub fn run_memo(&self, request: &[u8; 32]) -> Option<Arc<RunMemo>> {
        let m = self.run_memos.lock().ok()?;
        m.0.iter()
            .find(|(r, _)| r == request)
            .map(|(_, m)| m.clone())
    }

    /// Keeps `memo` for `request`, replacing the request's previous one; at
    /// most [`MAX_ANSWERS`] are kept (the oldest go first).
    pub fn keep_run_memo(&self, request: [u8; 32], memo: RunMemo) {
        let Ok(mut m) = self.run_memos.lock() else {
            return;
        };
        m.0.retain(|(r, _)| *r != request);
        if m.0.len() >= MAX_ANSWERS {
            m.0.remove(0);
        }
        m.0.push((request, Arc::new(memo)));
    }

    /// Forgets the per-task memo kept for `request`.
    pub fn forget_run_memo(&self, request: &[u8; 32]) {
        if let Ok(mut m) = self.run_memos.lock() {
            m.0.retain(|(r, _)| r != request);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ChangeLog;

    /// Marks and what `since` answers for them, step by step.
    #[test]
    fn change_log_names_what_changed_since_a_mark() {
        let mut l = ChangeLog::default();
        let m0 = l.note(None); // the first sync: a rescan
        assert_eq!(l.since(m0), Some(vec![]));
        assert_eq!(l.note(Some(&[])), m0, "nothing changed: same mark");
        let m1 = l.note(Some(&[Some(3)]));
        assert!(m1 > m0);
        assert_eq!(l.since(m0), Some(vec![3]));
        assert_eq!(l.since(m1), Some(vec![]));
        let m2 = l.note(Some(&[Some(1), Some(3)]));
        assert_eq!(l.since(m0), Some(vec![1, 3]));
        assert_eq!(l.since(m1), Some(vec![1, 3]));
        assert_eq!(l.since(m2), Some(vec![]));
        // A change outside every project: everything before is unknown.
        let m3 = l.note(Some(&[None, Some(2)]));
        assert_eq!(l.since(m2), None);
        assert_eq!(l.since(m3), Some(vec![]));
        // A rescan, likewise; a mark never given is unknown.
        let m4 = l.note(None);
        assert_eq!(l.since(m3), None);
        assert_eq!(l.since(m4), Some(vec![]));
        assert_eq!(l.since(m4 + 1), None);
    }
}
