//! `cache::remote` — the engine's side of a remote cache: the [`Remote`]
//! trait a client crate implements (`vxd-remote` for HTTP, registered by the
//! `vxd` binary through [`set_factory`]; `vxd-reapi` for the Bazel Remote
//! Execution API, through [`set_reapi_factory`]), what an artifact is to the engine
//! ([`Artifact`]), the `--cache` policy ([`parse_cache_flag`]), the checks an artifact passes before it
//! is taken into the local store ([`admit`]: every path confined and
//! inside the task's declared outputs, every link inside the project), and
//! its hydration into the local store ([`hydrate`]).
//!
//! Never: speaks HTTP, links a transport crate (the engine must not), or
//! writes into a project — a remote hit is restored by the ordinary
//! [`super::restore`], which verifies every blob and confines every write.
//! A remote failure is never an error of the run: the caller turns it into
//! a miss and one warning.

use super::*;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which remote API a remote cache speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RemoteProtocol {
    /// Turborepo's `/v8/artifacts` (Vercel, `turborepo-remote-cache`, vx's server).
    #[default]
    Turbo,
    /// Nx's self-hosted `/v1/cache`.
    Nx,
}

/// What a remote cache client is built from (the resolved settings of a run).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteSettings {
    pub url: String,
    pub protocol: RemoteProtocol,
    pub team: Option<String>,
    pub token: Option<String>,
    /// HMAC-SHA256 key: uploads are signed, downloads must verify.
    pub signature_key: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Set when the remote is a REAPI server (`[remote_execution]`): then
    /// `url` is its `grpc://` / `grpcs://` endpoint, `token` its bearer token,
    /// and the REAPI factory makes the client.
    pub reapi: Option<ReapiSettings>,
}

/// What a REAPI remote needs beyond an endpoint and a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ReapiSettings {
    pub instance_name: String,
    /// gRPC metadata sent with every call (values resolved from the run's env).
    pub headers: Vec<(String, String)>,
    /// Absolute paths of PEM files: extra CA certificates, a client
    /// certificate and its key.
    pub tls_ca_cert: Option<std::path::PathBuf>,
    pub tls_client_cert: Option<std::path::PathBuf>,
    pub tls_client_key: Option<std::path::PathBuf>,
    pub tls_domain_name: Option<String>,
}

/// Which caches a run reads and writes (`--cache=local:rw,remote:r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub local_read: bool,
    pub local_write: bool,
    pub remote_read: bool,
    pub remote_write: bool,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            local_read: true,
            local_write: true,
            remote_read: true,
            remote_write: true,
        }
    }
}

/// Parses turbo 2's `--cache` value: `local:rw,remote:r`, `remote:rw`,
/// `local:,remote:` … A cache not named is neither read nor written.
pub fn parse_cache_flag(s: &str) -> Result<CachePolicy, String> {
    let mut p = CachePolicy {
        local_read: false,
        local_write: false,
        remote_read: false,
        remote_write: false,
    };
    let mut seen = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((which, rw)) = part.split_once(':') else {
            return Err(format!(
                "`--cache={s}`: `{part}` is not `local:RW` or `remote:RW` (RW is `r`, `w`, `rw` or empty)"
            ));
        };
        if seen.contains(&which) {
            return Err(format!("`--cache={s}`: `{which}` is named twice"));
        }
        seen.push(which);
        let (r, w) = match rw {
            "" => (false, false),
            "r" => (true, false),
            "w" => (false, true),
            "rw" | "wr" => (true, true),
            _ => {
                return Err(format!(
                    "`--cache={s}`: `{rw}` is not `r`, `w`, `rw` or empty"
                ));
            }
        };
        match which {
            "local" => (p.local_read, p.local_write) = (r, w),
            "remote" => (p.remote_read, p.remote_write) = (r, w),
            _ => {
                return Err(format!(
                    "`--cache={s}`: `{which}` is not `local` or `remote`"
                ));
            }
        }
    }
    Ok(p)
}

/// One entry of an artifact, its path relative to the task's project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFile {
    pub path: String,
    pub mode: u32,
    /// A regular file's bytes, or a symlink's text.
    pub body: ArtifactBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactBody {
    File(Vec<u8>),
    Symlink(String),
}

/// A task's cached result as it travels to and from a remote: its outputs
/// and its log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Artifact {
    pub files: Vec<ArtifactFile>,
    pub log: Vec<u8>,
    pub duration_ms: u64,
}

/// Which task an artifact belongs to.
#[derive(Debug, Clone, Copy)]
pub struct ArtifactId<'a> {
    /// The task key (64 hex).
    pub key: &'a str,
    /// The project's directory, root-relative (`.` for the root).
    pub project_dir: &'a str,
    /// The task's name (for the log's name in the archive).
    pub task: &'a str,
}

/// Why a remote request gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote could not be used (network, timeout, status, auth):
    /// the run stops asking it.
    #[error("{0}")]
    Unavailable(String),
    /// This artifact was refused (signature, corrupt or unsafe archive, too
    /// big): a miss for this task.
    #[error("{0}")]
    Refused(String),
    /// Uploads are refused (a read-only token): the run stops uploading.
    #[error("{0}")]
    WriteDenied(String),
    /// A remote execution was cancelled by the run (the server was asked
    /// to cancel it, best effort).
    #[error("cancelled")]
    Cancelled,
}

/// One input file of a [`RemoteJob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInput {
    /// Workspace-root-relative, `/`-separated.
    pub path: String,
    /// Where it is on disk (read when the server lacks its bytes).
    pub abs: PathBuf,
    pub kind: JobInputKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobInputKind {
    File {
        executable: bool,
    },
    /// A symlink, sent as a link with this text.
    Symlink(String),
}

/// A task to execute on a remote execution service (REAPI `Execute`), as
/// the engine describes it; the client turns it into a Command, an input
/// root and an Action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJob {
    /// The task key: part of the Action's salt, so equal keys give equal
    /// Actions and different keys different ones.
    pub key: String,
    /// The task's id (for messages).
    pub task: String,
    /// `["sh", "-c", command]`.
    pub arguments: Vec<String>,
    /// The project's directory relative to the workspace root (`""` for
    /// the root).
    pub working_directory: String,
    /// The task's keyed environment (`define` and declared `env` values,
    /// never pass-through variables), sorted by name.
    pub env: Vec<(String, String)>,
    /// The files of the input root, sorted by path, unique.
    pub inputs: Vec<JobInput>,
    /// What to bring back, relative to the working directory, sorted and
    /// unique (`""`: the whole working directory).
    pub output_paths: Vec<String>,
    /// The action's timeout.
    pub timeout: Option<Duration>,
    /// Platform properties, sorted by name.
    pub platform: Vec<(String, String)>,
    /// How long the action may wait queued for a worker (the server says
    /// `QUEUED`) before the execution is given up as unavailable.
    pub queue_timeout: Duration,
}

/// What a remote execution gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Executed {
    pub exit_code: i32,
    /// The server stopped the action at its timeout.
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The output files and links, paths relative to the working directory
    /// (the task's project); its log is empty.
    pub outputs: Artifact,
    /// The server answered from its action cache.
    pub cached: bool,
    /// The worker the server named (`ExecutedActionMetadata.worker`).
    pub worker: Option<String>,
}

/// Where a cache event happened (turbo's `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Local,
    Remote,
}

/// One cache usage event for the remote (turbo's `POST /v8/artifacts/events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEvent {
    pub source: EventSource,
    pub hit: bool,
    pub key: String,
    /// On a hit: the time the artifact saves (the task's duration), ms.
    pub duration_ms: u64,
}

/// A remote cache client.
pub trait Remote: Send + Sync {
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// Whether remote caching is enabled for this client (turbo's
    /// `GET /v8/artifacts/status`): `Err(Unavailable)` when it is disabled,
    /// over its limit or paused. Asked once per run, before its first use.
    fn status(&self) -> Result<(), RemoteError> {
        Ok(())
    }
    /// Which of `keys` the remote holds, in one request (turbo's batch
    /// query `POST /v8/artifacts`); `None` when the remote cannot say.
    fn query(&self, keys: &[String]) -> Result<Option<Vec<bool>>, RemoteError> {
        let _ = keys;
        Ok(None)
    }
    /// Records cache usage events (best effort; `session` names the run).
    fn events(&self, session: &str, events: &[CacheEvent]) -> Result<(), RemoteError> {
        let _ = (session, events);
        Ok(())
    }
    /// The artifact stored under `id.key`, `None` when there is none.
    fn get(&self, id: &ArtifactId) -> Result<Option<Artifact>, RemoteError>;
    /// Stores an artifact (an existing one is never overwritten).
    fn put(&self, id: &ArtifactId, a: &Artifact) -> Result<(), RemoteError>;
    /// Whether this remote can execute tasks (asked once per run, when the
    /// run wants remote execution): `Err(why not)`.
    fn can_execute(&self) -> Result<(), String> {
        Err("it has no execution service (REAPI Execute)".into())
    }
    /// Executes `job` remotely and waits for it, bounded by its timeout and
    /// a margin. `cancelled` is polled; when it turns true the server is
    /// asked to cancel and [`RemoteError::Cancelled`] returned. Blocking.
    fn execute(
        &self,
        job: &RemoteJob,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Executed, RemoteError> {
        let _ = (job, cancelled);
        Err(RemoteError::Unavailable(
            "it has no execution service (REAPI Execute)".into(),
        ))
    }
}

type Factory = dyn Fn(&RemoteSettings) -> Result<Arc<dyn Remote>, String> + Send + Sync;

static FACTORY: OnceLock<Box<Factory>> = OnceLock::new();
static REAPI_FACTORY: OnceLock<Box<Factory>> = OnceLock::new();

/// Registers how remote cache clients are made (the `vxd` binary does, at
/// start-up, with `vxd-remote`). Without one a configured remote is
/// ignored with a warning.
pub fn set_factory(
    f: impl Fn(&RemoteSettings) -> Result<Arc<dyn Remote>, String> + Send + Sync + 'static,
) {
    let _ = FACTORY.set(Box::new(f));
}

/// Registers how REAPI remote caches are made (settings with
/// [`RemoteSettings::reapi`]; the `vxd` binary does, with `vxd-reapi`).
pub fn set_reapi_factory(
    f: impl Fn(&RemoteSettings) -> Result<Arc<dyn Remote>, String> + Send + Sync + 'static,
) {
    let _ = REAPI_FACTORY.set(Box::new(f));
}

/// A run's remote: the client, what the run may do with it, and whether
/// it has failed (then it is not asked again this run); its status check
/// (made once, on first use), its batched existence queries and its
/// pending usage events.
pub struct RunRemote {
    pub remote: Arc<dyn Remote>,
    pub policy: CachePolicy,
    broken: AtomicBool,
    no_writes: AtomicBool,
    /// The status check's outcome (`Err`: why the remote is not used).
    pub status: OnceLock<Result<(), String>>,
    /// Names the run in usage events.
    pub session: String,
    /// Existence queries (see [`Batch`]).
    pub batch: Batch,
    /// Usage events not yet sent (at most [`MAX_PENDING_EVENTS`]).
    pub events: Mutex<Vec<CacheEvent>>,
    /// Remote execution, when the run asks for it (`execute = true`).
    pub exec: Option<RunExec>,
}

/// A run's remote execution: its platform, the capability check (made
/// once, on first use) and whether it has failed (then no task of the run
/// is sent again).
#[derive(Debug, Default)]
pub struct RunExec {
    pub platform: Vec<(String, String)>,
    /// [`RemoteJob::queue_timeout`] of the run's jobs.
    pub queue_timeout: Duration,
    /// The capability check's outcome (`Err`: why the remote cannot execute).
    pub ready: OnceLock<Result<(), String>>,
    off: AtomicBool,
}

impl RunExec {
    pub fn new(platform: Vec<(String, String)>, queue_timeout: Duration) -> RunExec {
        RunExec {
            platform,
            queue_timeout,
            ..Default::default()
        }
    }

    /// Whether tasks may still be sent.
    pub fn on(&self) -> bool {
        !self.off.load(Ordering::Relaxed)
    }

    /// Stops remote execution for the rest of the run; true the first time
    /// (warn then only).
    pub fn turn_off(&self) -> bool {
        !self.off.swap(true, Ordering::Relaxed)
    }
}

/// Usage events held for sending; more are dropped (they are best effort).
pub const MAX_PENDING_EVENTS: usize = 1000;

/// The run's existence query: made on its first remote lookup, for every
/// task that was ready from the start (no dependencies, so its key is
/// known before anything runs) and missed locally — one request instead of
/// a GET per missing task.
#[derive(Default)]
pub struct Batch {
    /// Answers by key (`false`: the remote lacks it, no GET is needed).
    pub known: OnceLock<HashMap<String, bool>>,
}

impl RunRemote {
    /// Makes the run's remote from resolved settings. `Err`: a warning for
    /// the run (no client registered, a bad URL).
    pub fn open(s: &RemoteSettings, policy: CachePolicy) -> Result<Option<RunRemote>, String> {
        if !policy.remote_read && !policy.remote_write {
            return Ok(None);
        }
        let factory = match s.reapi {
            Some(_) => REAPI_FACTORY.get(),
            None => FACTORY.get(),
        };
        let Some(f) = factory else {
            return Err(format!(
                "a remote cache is configured ({}) but this engine has no remote cache client; running with the local cache only",
                s.url
            ));
        };
        let remote = f(s).map_err(|e| {
            format!(
                "the remote cache {} cannot be used: {e}; running with the local cache only",
                s.url
            )
        })?;
        Ok(Some(RunRemote {
            remote,
            policy,
            broken: AtomicBool::new(false),
            no_writes: AtomicBool::new(false),
            status: OnceLock::new(),
            session: session_id(),
            batch: Batch::default(),
            events: Mutex::new(Vec::new()),
            exec: None,
        }))
    }

    /// Whether the remote may still be asked.
    pub fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
    }

    /// Marks the remote unusable; true the first time (warn then only).
    pub fn break_off(&self) -> bool {
        !self.broken.swap(true, Ordering::Relaxed)
    }

    /// Whether the run may still upload.
    pub fn writable(&self) -> bool {
        self.policy.remote_write && self.usable() && !self.no_writes.load(Ordering::Relaxed)
    }

    /// Stops the run's uploads; true the first time (warn then only).
    pub fn stop_writes(&self) -> bool {
        !self.no_writes.swap(true, Ordering::Relaxed)
    }
}

/// A random-looking session id in UUID form (8-4-4-4-12 hex), unique per
/// run of this process.
fn session_id() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = format!(
        "{}:{}:{}",
        std::process::id(),
        now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let h = blake3::hash(seed.as_bytes()).to_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Checks a fetched artifact before anything of it is stored: every path
/// is a plain relative path inside the task's declared outputs, every
/// link stays inside the project. `Err`: why it is refused.
pub fn admit(a: &Artifact, outputs: &Patterns) -> Result<(), String> {
    for f in &a.files {
        if crate::fsx::components(&f.path).is_none() {
            return Err(format!("it names the path {:?}", f.path));
        }
        if !outputs.matches(&f.path) {
            return Err(format!(
                "it holds {}, outside the task's declared outputs",
                f.path
            ));
        }
        if let ArtifactBody::Symlink(t) = &f.body
            && let Some(why) = link_refusal(&f.path, t)
        {
            return Err(why);
        }
    }
    Ok(())
}

/// Takes an admitted artifact into the local store as the entry of `key`
/// (blobs first, then the entry) and returns it.
pub fn hydrate(store: &Store, key: &str, task: &str, a: &Artifact) -> Result<Entry, CacheError> {
    let mut outputs = Vec::with_capacity(a.files.len());
    for f in &a.files {
        outputs.push(match &f.body {
            ArtifactBody::File(bytes) => OutputFile {
                path: f.path.clone(),
                mode: f.mode & 0o7777,
                digest: store.put_bytes(bytes)?,
                kind: OutputKind::File,
                link: None,
            },
            ArtifactBody::Symlink(t) => OutputFile {
                path: f.path.clone(),
                mode: 0o777,
                digest: digest_of(t.as_bytes()),
                kind: OutputKind::Symlink,
                link: Some(t.clone()),
            },
        });
    }
    let log = store.put_bytes(&a.log)?;
    let m = Manifest {
        version: MANIFEST_VERSION,
        key: key.to_string(),
        task: task.to_string(),
        outputs,
        log,
        exit_code: 0,
        duration_ms: a.duration_ms,
        created_at: now_ms(),
    };
    let stamps = Stamps::new();
    store.put_entry(&m, &stamps);
    Ok(Arc::new((m, None)))
}

/// Restores an admitted artifact straight into the task's outputs, without
/// the local store (a run that may not write it): wipes the current
/// outputs, then writes each file or link confined to `project`.
pub fn restore_artifact(
    a: &Artifact,
    project: &Path,
    pats: &Patterns,
    fence: &HashSet<String>,
) -> Result<Stamps, CacheError> {
    let files = a.files.iter().map(|f| match &f.body {
        ArtifactBody::File(b) => (f.path.as_str(), f.mode & 0o7777, None, b.clone()),
        ArtifactBody::Symlink(t) => (f.path.as_str(), 0o777, Some(t.as_str()), Vec::new()),
    });
    restore::write_checked(project, pats, fence, files)
}

/// The artifact of a task's outputs as they are on disk (an upload when
/// the local store is not written), read like [`capture`] reads them:
/// through a confined, non-following open; a link as its text, refused
/// when it leaves the project.
pub fn artifact_from_disk(
    project: &Path,
    files: &[OnDisk],
    log: &[u8],
    duration_ms: u64,
) -> Result<Artifact, CacheError> {
    if let Some(f) = files.iter().find(|f| f.non_utf8) {
        return Err(CacheError::Refused(format!(
            "output name is not valid UTF-8: {}",
            f.rel
        )));
    }
    let c = Confined::open(project)?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let body = if f.link {
            let target = String::from_utf8(c.read_link(&f.rel)?).map_err(|_| {
                CacheError::Refused(format!("output {} links to a non-UTF-8 path", f.rel))
            })?;
            if let Some(why) = link_refusal(&f.rel, &target) {
                return Err(CacheError::Refused(why));
            }
            ArtifactBody::Symlink(target)
        } else {
            let mut file = c.open_read(&f.rel)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io(&f.abs))?;
            ArtifactBody::File(bytes)
        };
        let mode = match &body {
            ArtifactBody::Symlink(_) => 0o777,
            ArtifactBody::File(_) => f.stat.mode & 0o7777,
        };
        out.push(ArtifactFile {
            path: f.rel.clone(),
            mode,
            body,
        });
    }
    Ok(Artifact {
        files: out,
        log: log.to_vec(),
        duration_ms,
    })
}

/// The artifact of a stored entry (its blobs read back, verified).
pub fn artifact_of(store: &Store, m: &Manifest) -> Result<Artifact, CacheError> {
    let mut files = Vec::with_capacity(m.outputs.len());
    for o in &m.outputs {
        let body = match (&o.kind, &o.link) {
            (OutputKind::Symlink, Some(t)) => ArtifactBody::Symlink(t.clone()),
            _ => ArtifactBody::File(store.read_verified(&o.digest)?),
        };
        files.push(ArtifactFile {
            path: o.path.clone(),
            mode: o.mode,
            body,
        });
    }
    Ok(Artifact {
        files,
        log: store.read_verified(&m.log)?,
        duration_ms: m.duration_ms,
    })
}

#[cfg(test)]
mod remote_tests {
    use super::*;

    #[test]
    fn cache_flag() {
        let all = |lr, lw, rr, rw| CachePolicy {
            local_read: lr,
            local_write: lw,
            remote_read: rr,
            remote_write: rw,
        };
        let table: &[(&str, Result<CachePolicy, ()>)] = &[
            ("local:rw,remote:rw", Ok(all(true, true, true, true))),
            ("local:rw,remote:r", Ok(all(true, true, true, false))),
            ("remote:r", Ok(all(false, false, true, false))),
            ("local:,remote:w", Ok(all(false, false, false, true))),
            ("local:rw", Ok(all(true, true, false, false))),
            ("local", Err(())),
            ("local:x", Err(())),
            ("cloud:r", Err(())),
            ("local:r,local:w", Err(())),
        ];
        for (s, want) in table {
            assert_eq!(parse_cache_flag(s).map_err(|_| ()), *want, "{s}");
        }
    }

    #[test]
    fn admission() {
        let outs = Patterns::new(&["dist/**"]).unwrap();
        let file = |p: &str| ArtifactFile {
            path: p.into(),
            mode: 0o644,
            body: ArtifactBody::File(b"x".to_vec()),
        };
        let link = |p: &str, t: &str| ArtifactFile {
            path: p.into(),
            mode: 0o777,
            body: ArtifactBody::Symlink(t.into()),
        };
        let table: Vec<(ArtifactFile, bool)> = vec![
            (file("dist/a.js"), true),
            (file("src/a.js"), false),
            (file("dist/../../x"), false),
            (file("/etc/passwd"), false),
            (link("dist/l", "a.js"), true),
            (link("dist/l", "../../../etc"), false),
            (link("dist/l", "/etc/passwd"), false),
        ];
        for (f, ok) in table {
            let name = format!("{f:?}");
            let a = Artifact {
                files: vec![f],
                ..Default::default()
            };
            assert_eq!(admit(&a, &outs).is_ok(), ok, "{name}");
        }
    }
}
