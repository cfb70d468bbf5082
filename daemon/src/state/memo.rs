//! `state::memo` — what the daemon remembers between runs to skip work.
//!
//! Owns: per graph node of the current model, the input list (valid while
//! its project's file list is the very same object), the key and the parts
//! it was folded from, and the key whose outputs were verified on disk
//! since the watcher last reported a change in the project; per project,
//! the file list whose hashes were last warmed. Everything is dropped when
//! the model is replaced. Per request: the last whole-run answer kept to
//! be replayed ([`RunAnswer`], kept and judged by `engine::replay`).
//! Never: computes a key, a hash or a check itself; it only answers "the
//! same as last time?" by identity and equality.

use super::Hot;
use crate::model::Model;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;
use vx_proto::history::RunRecord;
use vx_proto::{RunEvent, RunSummary};

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
