//! `hooks` — the seam through which a run asks plugins for what they may
//! contribute to it: key material per task and scheduling weights
//! (`docs/plugins.md`).
//!
//! Owns: the question ([`HookTask`], one per task whose key the run
//! computes), the answers ([`Answers`]: per plugin, its values or why it
//! gave none) and the process-wide registration of who answers
//! ([`install`]: the plugin host, in the daemon and in `vxd --stdio`).
//! Never: starts or talks to a plugin itself, or decides what a failed
//! answer means for a run (the engine does: its tasks run uncached).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

/// One task a run asks about (what a plugin may key on: all of it comes
/// from the configuration, so the same task gets the same question in
/// every run and every engine).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct HookTask {
    /// `project#task`.
    pub id: String,
    pub project: String,
    pub task: String,
    /// The project's directory, relative to the workspace root (`.` for the root).
    pub dir: String,
    /// The task's command line (without forwarded args).
    pub command: String,
}

/// A plugin's answer: its values by task id, or why it gave none.
pub type Answer<T> = Result<HashMap<String, T>, String>;

/// What the hook plugins answered, each by plugin name (sorted).
#[derive(Debug, Default)]
pub struct Answers {
    /// Key material per plugin declaring the `key` hook.
    pub keys: Vec<(String, Answer<String>)>,
    /// Expected cost (ms) per plugin declaring the `weights` hook.
    pub weights: Vec<(String, Answer<u64>)>,
}

/// Who answers the hooks (the plugin host).
pub trait Hooks: Send + Sync {
    /// Asks every plugin of the workspace at `root` that declares a hook
    /// about `tasks`, within each plugin's hook timeout. Blocking: called
    /// from the run's blocking preparation.
    fn ask(&self, root: &Path, tasks: &[HookTask]) -> Answers;
}

static HOOKS: OnceLock<Box<dyn Hooks>> = OnceLock::new();

/// Registers the process's hook answerer (the first call wins).
pub fn install(h: Box<dyn Hooks>) {
    let _ = HOOKS.set(h);
}

/// The process's hook answerer, when one is installed.
pub fn installed() -> Option<&'static dyn Hooks> {
    HOOKS.get().map(|b| b.as_ref())
}
