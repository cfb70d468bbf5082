//! `state::memo` — what the daemon remembers between runs to skip work.
//!
//! Owns: per graph node of the current model, the input list (valid while
//! its project's file list is the very same object), the key and the parts
//! it was folded from, and the key whose outputs were verified on disk
//! since the watcher last reported a change in the project; per project,
//! the file list whose hashes were last warmed. Everything is dropped when
//! the model is replaced.
//! Never: computes a key, a hash or a check itself; it only answers "the
//! same as last time?" by identity and equality.

use super::Hot;
use crate::model::Model;
use std::collections::HashMap;
use std::sync::Arc;

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
