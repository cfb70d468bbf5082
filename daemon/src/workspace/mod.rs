//! `workspace` — discovery and configuration: from a directory to a
//! validated [`Workspace`] model.
//!
//! Owns: finding the workspace root, reading `vx.toml` files, npm/pnpm/yarn/bun
//! workspace manifests (`package.json` `workspaces`, `pnpm-workspace.yaml`),
//! zero-config Turborepo repos (`turbo.json` + `package.json` scripts), and
//! turning local package dependencies into project dependencies. Every
//! config error names the file, the line where the format has one, the field
//! and a did-you-mean. Refuses configs that would make vx destroy files
//! (`guard`): outputs that select sources or config, cache directories that
//! `vx cache clean` must never remove.
//!
//! Never: builds the task graph (that is `graph`), reads source files for
//! hashing (`hash`), touches the cache, or spawns a process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod check;
mod error;
mod framework;
mod guard;
mod load;
mod members;
mod npm;
#[cfg(test)]
mod tests;
mod text;
mod turbo;
mod vxtoml;

pub use error::ConfigError;
pub use load::{CACHE_ENV, find_root, load, resolve_cache_dir};
pub(crate) use text::strip_jsonc;
pub use vxtoml::{check_text, schema_json, workers_config};

/// Where the tasks of the workspace came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigKind {
    /// Root `vx.toml` with a `[workspace]` table.
    Vx,
    /// Root `turbo.json`, commands from `package.json` scripts.
    Turbo,
}

/// The validated model of one workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Absolute, canonical root directory.
    pub root: PathBuf,
    pub kind: ConfigKind,
    /// Sorted by name; names are unique.
    pub projects: Vec<Project>,
    /// Inputs and env keyed into every task of the workspace.
    pub global: GlobalConfig,
    pub defaults: Defaults,
    /// Every config or manifest file read, root-relative (for invalidation).
    pub config_files: Vec<String>,
    /// Why a member glob gave no project: a glob that matches no directory,
    /// a matched directory with no `vx.toml` or `package.json`. Shown when a
    /// task is not found.
    pub member_notes: Vec<String>,
    /// What the config accepts but should not say (Turborepo 1 keys that
    /// turbo 2 rejects): shown as a warning by every run.
    pub warnings: Vec<String>,
}

/// Workspace-wide key contributions (`global_inputs`, turbo's
/// `globalDependencies` / `globalEnv` / `globalPassThroughEnv`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GlobalConfig {
    /// Root-relative globs whose files are keyed into every task.
    pub inputs: Vec<String>,
    /// Env names (exact, or with `*` wildcards; `!` excludes) keyed into every task and passed to it.
    pub env: Vec<String>,
    /// Env names passed to every task, not keyed.
    pub pass_env: Vec<String>,
    /// Root-relative globs of the packages the root package.json depends on
    /// (and theirs), keyed into every task like `inputs` but, unlike them,
    /// only their files git does not ignore (turbo's
    /// `hashOfInternalDependencies`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub internal: Vec<String>,
}

impl GlobalConfig {
    /// Every root-relative glob keyed into every task.
    pub fn keyed_inputs(&self) -> Vec<String> {
        let mut all = self.inputs.clone();
        all.extend(self.internal.iter().cloned());
        all
    }
}

/// Run defaults from the root config; flags override them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    pub concurrency: Option<usize>,
    pub timeout_ms: Option<u64>,
    /// Absolute cache directory, when configured (default `<root>/.vx/cache`);
    /// never `/`, the root or a parent of it, `$HOME` or a project's sources.
    pub cache_dir: Option<PathBuf>,
    /// Which environment reaches tasks (turbo.json `envMode`); a run's
    /// `--env-mode` wins.
    pub env_mode: Option<vx_proto::EnvMode>,
    /// The root `vx.toml`'s `[remote_cache]`.
    pub remote_cache: Option<RemoteCacheConfig>,
    /// The root `vx.toml` declares a plugin with `hooks` (every run asks
    /// it: `docs/plugins.md`).
    pub plugin_hooks: bool,
    /// The root `vx.toml`'s `[remote_execution]`.
    pub remote_execution: Option<RemoteExecutionConfig>,
}

/// Which remote API a remote cache speaks (`[remote_cache] protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemoteApi {
    /// Turborepo's `/v8/artifacts`.
    #[default]
    Turbo,
    /// Nx's self-hosted `/v1/cache`.
    Nx,
}

/// The root `vx.toml`'s `[remote_cache]` section, as written
/// (docs/remote-cache.md); the engine resolves it against the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteCacheConfig {
    pub url: Option<String>,
    pub protocol: RemoteApi,
    pub team: Option<String>,
    /// The name of the environment variable holding the token.
    pub token_env: Option<String>,
    /// The name of the environment variable holding the signature key.
    pub signature_key_env: Option<String>,
    pub read: bool,
    pub write: bool,
    pub timeout_ms: Option<u64>,
}

/// The root `vx.toml`'s `[remote_execution]` section, as written
/// (docs/remote-execution.md); the engine resolves it against the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteExecutionConfig {
    /// `grpc://host:port` or `grpcs://host:port`.
    pub endpoint: Option<String>,
    pub instance_name: String,
    /// gRPC metadata (name, value with `${NAME}` references), in name order.
    pub headers: Vec<(String, String)>,
    /// The name of the environment variable holding a bearer token.
    pub token_env: Option<String>,
    pub tls: Option<ReapiTlsConfig>,
    pub read: bool,
    pub write: bool,
    pub timeout_ms: Option<u64>,
    /// Execute cached tasks on the server (`execute = true`).
    pub execute: bool,
    /// Platform properties of remotely executed actions, in name order.
    pub platform: Vec<(String, String)>,
}

/// The root `vx.toml`'s `[workers]` section, as written
/// (docs/distributed.md); defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkersConfig {
    /// The worker door's `host:port`.
    pub listen: Option<String>,
    /// The link token (`None`: the daemon's HTTP token).
    pub token: Option<String>,
    /// A lease's deadline without a heartbeat, in ms.
    pub lease_ms: u64,
    /// How many times a task may lose its worker before it fails.
    pub retries: u32,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            listen: None,
            token: None,
            lease_ms: 10_000,
            retries: 2,
        }
    }
}

/// `[remote_execution.tls]`: paths as written (root-relative or absolute).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapiTlsConfig {
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub domain_name: Option<String>,
}

/// One project (package).
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// Unique name; `//` is the workspace root project.
    pub name: String,
    /// Root-relative directory, `/`-separated; `.` for the root project.
    pub dir: String,
    /// Names of the projects this one depends on (sorted, unique, all exist).
    pub deps: Vec<String>,
    pub tags: Vec<String>,
    /// `package.json` version, when there is one.
    pub version: Option<String>,
    /// The project's config file, root-relative (`vx.toml`, `package.json`, `turbo.json`).
    pub config_file: String,
    pub tasks: BTreeMap<String, TaskDef>,
}

/// One task as configured (before graph resolution).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskDef {
    /// The shell command; `None` makes a group task (it only has dependencies).
    pub command: Option<String>,
    pub description: Option<String>,
    /// Raw dependency forms: `name`, `^name`, `project#name`.
    pub depends_on: Vec<String>,
    /// Project-relative input globs (`!` excludes). Default `["**"]`.
    pub inputs: Vec<String>,
    /// Root-relative input globs (turbo's `$TURBO_ROOT$/...`).
    pub root_inputs: Vec<String>,
    /// Project-relative output globs (`!` excludes).
    pub outputs: Vec<String>,
    /// Env names keyed and passed (exact or `*` wildcards; `!` excludes).
    pub env: Vec<String>,
    /// Env names passed through, not keyed.
    pub pass_env: Vec<String>,
    /// Literal env values set for the task (keyed through the config).
    pub define: BTreeMap<String, String>,
    /// Whether results are cached.
    pub cache: bool,
    pub persistent: bool,
    pub ready_when: Option<String>,
    pub interactive: bool,
    pub timeout_ms: Option<u64>,
    pub retries: u32,
    /// The command is a `package.json` script: set `npm_package_name`,
    /// `npm_package_version` and `npm_lifecycle_event`.
    pub npm_script: bool,
    /// Env wildcards of the framework the package uses (`NEXT_PUBLIC_*`),
    /// keyed and passed unless the run turns framework inference off.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub framework_env: Vec<String>,
    /// The task's own log mode (turbo.json `outputLogs`), used when the
    /// run does not choose one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_logs: Option<vx_proto::OutputLogs>,
    /// Labels a worker must all have to run it (`labels = ["gpu"]`); only
    /// `vx run --distribute` looks at them (the local lanes have none).
    /// Not keyed: where a task runs does not change its result.
    #[serde(skip)]
    pub labels: Vec<String>,
    /// Whether the task may be executed on a REAPI server
    /// (`[remote_execution] execute`); `remote = false` pins it here. Not
    /// keyed, like labels.
    #[serde(skip)]
    pub remote: bool,
}

impl Default for TaskDef {
    fn default() -> Self {
        Self {
            command: None,
            description: None,
            depends_on: Vec::new(),
            inputs: vec!["**".to_string()],
            root_inputs: Vec::new(),
            outputs: Vec::new(),
            env: Vec::new(),
            pass_env: Vec::new(),
            define: BTreeMap::new(),
            cache: false,
            persistent: false,
            ready_when: None,
            interactive: false,
            timeout_ms: None,
            retries: 0,
            npm_script: false,
            framework_env: Vec::new(),
            output_logs: None,
            labels: Vec::new(),
            remote: true,
        }
    }
}

impl Workspace {
    pub fn project(&self, name: &str) -> Option<&Project> {
        self.projects
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.projects[i])
    }

    /// The project whose directory contains `dir` (absolute), deepest first.
    pub fn project_at(&self, dir: &Path) -> Option<&Project> {
        let rel = dir.strip_prefix(&self.root).ok()?;
        let rel = rel.to_string_lossy().replace('\\', "/");
        self.projects
            .iter()
            .filter(|p| p.dir == "." || rel == p.dir || rel.starts_with(&format!("{}/", p.dir)))
            .max_by_key(|p| if p.dir == "." { 0 } else { p.dir.len() + 1 })
    }

    pub fn abs_dir(&self, p: &Project) -> PathBuf {
        if p.dir == "." {
            self.root.clone()
        } else {
            self.root.join(&p.dir)
        }
    }
}
