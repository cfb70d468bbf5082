//! `cache::entry` — what a cache entry is: the manifest of one successful
//! execution (its outputs, its log, its exit code) and the stamps of its
//! outputs as last written on this machine. The serde encoding here is the
//! index's stored format ([`MANIFEST_VERSION`]); changing a field is a
//! storage change. Never touches the filesystem or the index.

use super::*;

/// What an output is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// A regular file: `digest` names a blob of its bytes.
    #[default]
    File,
    /// A symlink: `link` is its link text and `digest` that text's digest
    /// (no blob); restored as a link.
    Symlink,
}

/// One output of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Project-relative path.
    pub path: String,
    pub mode: u32,
    pub digest: Digest,
    #[serde(default)]
    pub kind: OutputKind,
    /// The link text of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl OutputFile {
    pub(super) fn is_link(&self) -> bool {
        self.kind == OutputKind::Symlink
    }
}

/// What a cache entry records about one successful task execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub key: String,
    pub task: String,
    pub outputs: Vec<OutputFile>,
    /// The task's combined output log.
    pub log: Digest,
    pub exit_code: i32,
    pub duration_ms: u64,
    /// Unix milliseconds.
    pub created_at: u64,
}

/// Output stats (size, mtime, inode) as last written by vx on this machine.
pub type Stamps = BTreeMap<String, (u64, i64, u64)>;

/// An entry as read from the index: its manifest and (if known) its stamps.
pub type Entry = Arc<(Manifest, Option<Stamps>)>;
