//! `vx.toml`: the root (`[workspace]`, optional root `[project]`/`[tasks]`)
//! and per-project (`[project]`, `[tasks]`) schema.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::check::{self, ProjectRef};
use super::guard;
use super::text::{Src, toml_error};
use super::{ConfigError, GlobalConfig, TaskDef};
use crate::globs::Patterns;

// The raw types are also the source of the JSON Schema (`vx schema`,
// docs/vx.schema.json): `Spanned` fields name their plain type with
// `schemars(with)`, and the doc comments become the schema's descriptions.

/// A `vx.toml`: the workspace root's (with `[workspace]`) or a project's.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "vx.toml")]
struct RawFile {
    /// Only in the root `vx.toml`: the members and workspace-wide settings.
    #[schemars(with = "Option<RawWorkspace>")]
    workspace: Option<Spanned<RawWorkspace>>,
    /// The project this file's directory is.
    project: Option<RawProject>,
    /// The project's tasks, by name.
    #[schemars(with = "Option<BTreeMap<String, RawTask>>")]
    tasks: Option<BTreeMap<String, Spanned<RawTask>>>,
    /// Only in the root `vx.toml`: the daemon's plugins (`docs/plugins.md`;
    /// read and checked by the engine's `plugins` module).
    #[schemars(with = "Option<Vec<PluginSchema>>")]
    plugins: Option<toml::Value>,
    /// Only in the root `vx.toml`: the remote cache (docs/remote-cache.md).
    #[schemars(with = "Option<RawRemoteCache>")]
    remote_cache: Option<Spanned<RawRemoteCache>>,
    /// Only in the root `vx.toml`: a Bazel Remote Execution API server used
    /// as the remote cache (docs/remote-execution.md).
    #[schemars(with = "Option<RawRemoteExecution>")]
    remote_execution: Option<Spanned<RawRemoteExecution>>,
    /// Only in the root `vx.toml`: remote workers' links to the daemon
    /// (`vx run --distribute`, docs/distributed.md).
    #[schemars(with = "Option<RawWorkers>")]
    workers: Option<Spanned<RawWorkers>>,
}

/// `[workers]`: where `vx worker` processes connect to the daemon, and
/// how their leases behave.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Workers")]
struct RawWorkers {
    /// The worker door's `host:port` (default `127.0.0.1:0`: loopback, a free port).
    #[schemars(with = "Option<String>")]
    listen: Option<Spanned<String>>,
    /// The token workers present (default: the daemon's HTTP token).
    #[schemars(with = "Option<String>")]
    token: Option<Spanned<String>>,
    /// How long a lease lasts without a heartbeat (default 10s).
    #[schemars(with = "Option<DurationSchema>")]
    lease: Option<Spanned<toml::Value>>,
    /// How many times a task may lose its worker (a crash, an expired
    /// lease) and be reassigned before it fails (default 2).
    #[schemars(with = "Option<u64>", range(max = 100))]
    retries: Option<Spanned<i64>>,
}

/// A `[[plugins]]` entry: a child process of the daemon speaking JSON-RPC
/// 2.0 over stdio.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
#[schemars(rename = "Plugin", deny_unknown_fields)]
struct PluginSchema {
    /// Its name (letters, digits, `-`, `_`, `.`), unique.
    name: String,
    /// The program to run (looked up on `PATH`), in the workspace root.
    command: String,
    /// Its arguments.
    args: Option<Vec<String>>,
    /// Environment variables set for it.
    env: Option<BTreeMap<String, String>>,
    /// The notifications it gets: `run`, `task`, `output` (default `run`, `task`).
    events: Option<Vec<String>>,
    /// How long it has to answer the `initialize` handshake (default 5000).
    handshake_timeout_ms: Option<u64>,
    /// The hooks vx calls on it: `key` (key material per task), `weights`
    /// (expected cost per task, for scheduling). A hook plugin is started
    /// by every engine, the no-daemon one too.
    hooks: Option<Vec<String>>,
    /// How long it has to answer a hook request (default 2000).
    hook_timeout_ms: Option<u64>,
}

/// `[remote_cache]`: a Turborepo- or Nx-compatible remote cache.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RemoteCache")]
struct RawRemoteCache {
    /// Base URL (`http://cache.internal:8080`); `TURBO_API` / `VX_REMOTE_CACHE_URL` win.
    #[schemars(with = "Option<String>")]
    url: Option<Spanned<String>>,
    /// `turbo` (`/v8/artifacts`, the default) or `nx` (`/v1/cache`).
    #[schemars(with = "Option<String>")]
    protocol: Option<Spanned<String>>,
    /// The team (turbo's `slug`; `team_…` is sent as `teamId`).
    team: Option<String>,
    /// Name of the environment variable holding the token.
    #[schemars(with = "Option<String>")]
    token_env: Option<Spanned<String>>,
    /// Name of the environment variable holding the HMAC signature key.
    #[schemars(with = "Option<String>")]
    signature_key_env: Option<Spanned<String>>,
    /// Read the remote cache (default true).
    read: Option<bool>,
    /// Upload to the remote cache (default true).
    write: Option<bool>,
    /// Timeout of one request.
    #[schemars(with = "Option<DurationSchema>")]
    timeout: Option<Spanned<toml::Value>>,
}

/// `[remote_execution]`: a Bazel Remote Execution API (REAPI) server
/// (BuildGrid, Buildbarn, BuildBuddy, NativeLink, `vx cache serve`) used as
/// the remote cache.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RemoteExecution")]
struct RawRemoteExecution {
    /// `grpc://host:port` (plaintext) or `grpcs://host:port` (TLS); `VX_REAPI_ENDPOINT` wins.
    #[schemars(with = "Option<String>")]
    endpoint: Option<Spanned<String>>,
    /// The REAPI instance name (default empty); `VX_REAPI_INSTANCE_NAME` wins.
    instance_name: Option<String>,
    /// gRPC metadata sent with every call (lower-case names); `${NAME}` in a
    /// value is replaced by the run's environment variable `NAME`.
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    headers: Option<Spanned<BTreeMap<String, String>>>,
    /// Name of the environment variable holding a bearer token (sent as `authorization: Bearer …`).
    #[schemars(with = "Option<String>")]
    token_env: Option<Spanned<String>>,
    /// TLS settings of a `grpcs://` endpoint.
    tls: Option<RawReapiTls>,
    /// Read the remote cache (default true).
    read: Option<bool>,
    /// Upload to the remote cache (default true).
    write: Option<bool>,
    /// Timeout of one call.
    #[schemars(with = "Option<DurationSchema>")]
    timeout: Option<Spanned<toml::Value>>,
    /// Execute cached tasks on the server (REAPI `Execute`; default false); `VX_REAPI_EXECUTE` wins.
    execute: Option<bool>,
    /// Platform properties of every remotely executed action (`{ OSFamily = "linux" }`): what the server matches workers by.
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    platform: Option<Spanned<BTreeMap<String, String>>>,
}

/// `[remote_execution.tls]`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RemoteExecutionTls")]
struct RawReapiTls {
    /// A PEM file of CA certificates to trust (besides the system's), root-relative or absolute.
    ca_cert: Option<String>,
    /// A PEM client certificate (mutual TLS); needs `client_key`.
    client_cert: Option<String>,
    /// The PEM key of `client_cert`.
    client_key: Option<String>,
    /// The name the server's certificate must carry (default: the endpoint's host).
    domain_name: Option<String>,
}

type Strings = Option<Vec<Spanned<String>>>;

/// A duration: milliseconds, or a string like `"30s"`, `"1500ms"`, `"2m"`.
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
#[schemars(rename = "Duration")]
enum DurationSchema {
    Ms(u64),
    Text(String),
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Workspace")]
struct RawWorkspace {
    /// Globs of the project directories (each with a `vx.toml`, or a `package.json` with scripts).
    #[schemars(with = "Option<Vec<String>>")]
    members: Strings,
    /// How many tasks run at once (default: twice the number of CPUs, at least 8).
    #[schemars(with = "Option<u64>", range(min = 1))]
    concurrency: Option<Spanned<i64>>,
    /// Default timeout of every task.
    #[schemars(with = "Option<DurationSchema>")]
    timeout: Option<Spanned<toml::Value>>,
    /// The local cache directory (default `.vx/cache`).
    #[schemars(with = "Option<String>")]
    cache_dir: Option<Spanned<String>>,
    /// Root-relative globs whose files are keyed into every task.
    #[schemars(with = "Option<Vec<String>>")]
    global_inputs: Strings,
    /// Env names (`*` wildcards, `!` excludes) keyed into every task and passed to it.
    #[schemars(with = "Option<Vec<String>>")]
    global_env: Strings,
    /// Env names passed to every task, not keyed.
    #[schemars(with = "Option<Vec<String>>")]
    global_pass_env: Strings,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Project")]
struct RawProject {
    /// The project's name (default: the directory's name).
    #[schemars(with = "Option<String>")]
    name: Option<Spanned<String>>,
    /// Names of the projects this one depends on.
    #[schemars(with = "Option<Vec<String>>")]
    deps: Strings,
    /// Tags, for `--filter tag:NAME`.
    #[schemars(with = "Option<Vec<String>>")]
    tags: Strings,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Task")]
struct RawTask {
    /// The shell command (`sh -c`); without it the task is a group of its `depends_on`.
    #[schemars(with = "Option<String>")]
    command: Option<Spanned<String>>,
    /// One line for `vx ls` and the docs.
    description: Option<String>,
    /// `task` (same project), `^task` (the project's dependencies), `project#task`.
    #[schemars(with = "Option<Vec<String>>")]
    depends_on: Strings,
    /// Project-relative globs keyed into the task (default: every file of the project).
    #[schemars(with = "Option<Vec<String>>")]
    inputs: Strings,
    /// Project-relative globs the task writes; cached and restored.
    #[schemars(with = "Option<Vec<String>>")]
    outputs: Strings,
    /// Env names keyed into the task and passed to it.
    #[schemars(with = "Option<Vec<String>>")]
    env: Strings,
    /// Env names passed to the task, not keyed.
    #[schemars(with = "Option<Vec<String>>")]
    pass_env: Strings,
    /// Labels a worker must all have to run the task under `vx run --distribute` (`["gpu"]`).
    #[schemars(with = "Option<Vec<String>>")]
    labels: Strings,
    /// Env values set for the task (keyed).
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    define: Option<Spanned<BTreeMap<String, String>>>,
    /// `false`: never read or write the cache for this task.
    #[schemars(with = "Option<bool>")]
    cache: Option<Spanned<bool>>,
    /// A long-running task (a server, a watcher): never cached, never "finished".
    #[schemars(with = "Option<bool>")]
    persistent: Option<Spanned<bool>>,
    /// A persistent task counts as ready once its output matches this regex.
    #[schemars(with = "Option<String>")]
    ready_when: Option<Spanned<String>>,
    /// The task reads the terminal (runs alone, with stdin).
    #[schemars(with = "Option<bool>")]
    interactive: Option<Spanned<bool>>,
    /// The task is killed after this long.
    #[schemars(with = "Option<DurationSchema>")]
    timeout: Option<Spanned<toml::Value>>,
    /// How many times a failed run is retried.
    #[schemars(with = "Option<u64>", range(max = 100))]
    retries: Option<Spanned<i64>>,
    /// `false`: never execute the task on the REAPI server (`[remote_execution] execute`); it runs here.
    #[schemars(with = "Option<bool>")]
    remote: Option<Spanned<bool>>,
}

/// The JSON Schema of `vx.toml`, pretty-printed (docs/vx.schema.json).
pub fn schema_json() -> String {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<RawFile>();
    let mut v = schema.to_value();
    drop_null(&mut v);
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// TOML has no null: an optional key is just absent, so the schema's
/// `Option` alternatives (`["string", "null"]`, `anyOf [X, null]`) become X.
fn drop_null(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".to_string(), only);
                }
            }
            if let Some(Value::Array(alts)) = map.get_mut("anyOf") {
                alts.retain(|a| a.get("type").is_none_or(|t| t != "null"));
                if alts.len() == 1
                    && let Some(Value::Object(only)) = alts.pop()
                {
                    map.remove("anyOf");
                    for (k, x) in only {
                        map.entry(k).or_insert(x);
                    }
                }
            }
            map.values_mut().for_each(drop_null);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null),
        _ => {}
    }
}

/// Parses and validates one `vx.toml` text on its own (no workspace: project
/// references are not resolved). For tests and tools.
pub fn check_text(file: &str, text: &str) -> Result<(), ConfigError> {
    parse(Src::new(file, text)).map(|_| ())
}

/// A parsed, validated `vx.toml`.
#[derive(Debug, Clone)]
pub(crate) struct VxFile {
    pub src: Src,
    pub workspace: Option<WorkspaceSection>,
    pub project: ProjectSection,
    /// `None` when the file has no `[tasks]` table.
    pub tasks: Option<BTreeMap<String, TaskDef>>,
    /// `project#task` references in `depends_on`, checked later.
    pub task_refs: Vec<ProjectRef>,
    /// `[remote_cache]` (root file only).
    pub remote_cache: Option<super::RemoteCacheConfig>,
    /// Whether a `[[plugins]]` entry declares `hooks` (checked in full by
    /// the engine's `plugins` module).
    pub plugin_hooks: bool,
    /// `[remote_execution]` (root file only).
    pub remote_execution: Option<super::RemoteExecutionConfig>,
    /// `[workers]` (root file only).
    pub workers: Option<super::WorkersConfig>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct WorkspaceSection {
    pub members: Option<Vec<String>>,
    /// Position of `members`, for glob errors.
    pub members_pos: Option<(usize, usize)>,
    pub concurrency: Option<usize>,
    pub timeout_ms: Option<u64>,
    pub cache_dir: Option<String>,
    /// Position of the `cache_dir` value, for refusals.
    pub cache_dir_pos: Option<(usize, usize)>,
    pub global: GlobalConfig,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ProjectSection {
    pub name: Option<String>,
    pub name_pos: Option<(usize, usize)>,
    /// Declared deps (`name` = the dependency), checked later.
    pub deps: Vec<ProjectRef>,
    pub tags: Vec<String>,
}

fn pos(src: &Src, offset: usize) -> (usize, usize) {
    super::text::line_col(&src.text, offset)
}

fn plain(v: Strings) -> Option<Vec<(String, usize)>> {
    v.map(|v| {
        v.into_iter()
            .map(|s| {
                let off = s.span().start;
                (s.into_inner(), off)
            })
            .collect()
    })
}

fn check_globs(src: &Src, list: &[(String, usize)], what: &str) -> Result<(), ConfigError> {
    for (g, off) in list {
        if let Err(e) = Patterns::new(&[g.as_str()]) {
            return Err(src.err_at(*off, format!("invalid glob `{g}` in {what}: {}", e.reason)));
        }
    }
    // Negations and order are checked together too.
    let all: Vec<&str> = list.iter().map(|(g, _)| g.as_str()).collect();
    Patterns::new(&all).map_err(|e| src.err(format!("invalid glob in {what}: {e}")))?;
    Ok(())
}

fn check_env(src: &Src, list: &[(String, usize)], patterns: bool) -> Result<(), ConfigError> {
    for (n, off) in list {
        check::env_name(n, patterns).map_err(|e| src.err_at(*off, e))?;
    }
    Ok(())
}

fn duration(src: &Src, v: &Spanned<toml::Value>) -> Result<u64, ConfigError> {
    let r = match v.get_ref() {
        toml::Value::Integer(i) => check::duration_ms(*i as i128),
        toml::Value::String(s) => check::duration_str(s),
        _ => Err("`timeout` must be a number of ms or a string like \"30s\"".to_string()),
    };
    r.map_err(|e| src.err_span(v.span(), e))
}

fn values(list: Option<Vec<(String, usize)>>) -> Vec<String> {
    list.unwrap_or_default()
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

/// Parses and validates a `vx.toml`.
pub(crate) fn parse(src: Src) -> Result<VxFile, ConfigError> {
    let raw: RawFile = toml::from_str(&src.text).map_err(|e| toml_error(&src, &e))?;

    let workspace = match raw.workspace {
        None => None,
        Some(ws) => Some(workspace_section(&src, ws.into_inner())?),
    };

    let mut project = ProjectSection::default();
    if let Some(p) = raw.project {
        if let Some(n) = p.name {
            let at = pos(&src, n.span().start);
            check::project_name(n.get_ref()).map_err(|e| src.err(e).at(at.0, at.1))?;
            project.name = Some(n.into_inner());
            project.name_pos = Some(at);
        }
        for (d, off) in plain(p.deps).unwrap_or_default() {
            project.deps.push(ProjectRef {
                file: src.file.clone(),
                pos: Some(pos(&src, off)),
                name: d,
                context: "`deps`".to_string(),
            });
        }
        for (t, off) in plain(p.tags).unwrap_or_default() {
            check::tag(&t).map_err(|e| src.err_at(off, e))?;
            if !project.tags.contains(&t) {
                project.tags.push(t);
            }
        }
        project.tags.sort();
    }

    let mut task_refs = Vec::new();
    let tasks = match raw.tasks {
        None => None,
        Some(map) => {
            let mut out = BTreeMap::new();
            for (name, t) in map {
                let off = t.span().start;
                check::task_name(&name).map_err(|e| src.err_at(off, e))?;
                let def = task(&src, &name, t.into_inner(), &mut task_refs)?;
                out.insert(name, def);
            }
            Some(out)
        }
    };

    let remote_cache = match raw.remote_cache {
        None => None,
        Some(r) if workspace.is_none() => {
            return Err(src.err_span(
                r.span(),
                "`[remote_cache]` belongs in the root vx.toml (the one with `[workspace]`)",
            ));
        }
        Some(r) => Some(remote_cache(&src, r.into_inner())?),
    };
    let remote_execution = match raw.remote_execution {
        None => None,
        Some(r) if workspace.is_none() => {
            return Err(src.err_span(
                r.span(),
                "`[remote_execution]` belongs in the root vx.toml (the one with `[workspace]`)",
            ));
        }
        Some(r) => Some(remote_execution(&src, r.into_inner())?),
    };
    let workers = match raw.workers {
        None => None,
        Some(w) if workspace.is_none() => {
            return Err(src.err_span(
                w.span(),
                "`[workers]` belongs in the root vx.toml (the one with `[workspace]`)",
            ));
        }
        Some(w) => Some(workers(&src, w.into_inner())?),
    };

    let plugin_hooks = raw
        .plugins
        .as_ref()
        .and_then(|p| p.as_array())
        .is_some_and(|list| {
            list.iter().any(|p| {
                p.get("hooks")
                    .and_then(|h| h.as_array())
                    .is_some_and(|h| !h.is_empty())
            })
        });
    Ok(VxFile {
        src,
        workspace,
        project,
        tasks,
        task_refs,
        remote_cache,
        plugin_hooks,
        remote_execution,
        workers,
    })
}

fn workers(src: &Src, w: RawWorkers) -> Result<super::WorkersConfig, ConfigError> {
    let mut out = super::WorkersConfig::default();
    if let Some(l) = w.listen {
        check::listen_addr(l.get_ref())
            .map_err(|m| src.err_span(l.span(), format!("`[workers] listen`: {m}")))?;
        out.listen = Some(l.into_inner());
    }
    if let Some(t) = w.token {
        let v = t.get_ref();
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(src.err_span(
                t.span(),
                "`[workers] token` must be non-empty, without whitespace or control characters",
            ));
        }
        out.token = Some(t.into_inner());
    }
    if let Some(l) = &w.lease {
        let ms = duration(src, l)?;
        if !(1_000..=3_600_000).contains(&ms) {
            return Err(src.err_span(
                l.span(),
                "`[workers] lease` must be between 1s and 1h (heartbeats come every third of it)",
            ));
        }
        out.lease_ms = ms;
    }
    if let Some(r) = &w.retries {
        let n = *r.get_ref();
        if !(0..=100).contains(&n) {
            return Err(src.err_span(r.span(), "`[workers] retries` must be between 0 and 100"));
        }
        out.retries = n as u32;
    }
    Ok(out)
}

/// The root `vx.toml`'s `[workers]` at `root` (`None`: no section, or
/// no root `vx.toml`); a bad file is an error naming its line.
pub fn workers_config(root: &std::path::Path) -> Result<Option<super::WorkersConfig>, ConfigError> {
    let path = root.join("vx.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ConfigError::in_file(
                path.display().to_string(),
                format!("cannot read it: {e}"),
            ));
        }
    };
    Ok(parse(Src::new(path.display().to_string(), text))?.workers)
}

fn remote_execution(
    src: &Src,
    r: RawRemoteExecution,
) -> Result<super::RemoteExecutionConfig, ConfigError> {
    use super::{ReapiTlsConfig, RemoteExecutionConfig};
    let mut out = RemoteExecutionConfig {
        read: r.read.unwrap_or(true),
        write: r.write.unwrap_or(true),
        instance_name: r.instance_name.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(e) = r.endpoint {
        let v = e.get_ref().trim();
        check::reapi_endpoint(v).map_err(|m| src.err_span(e.span(), m))?;
        out.endpoint = Some(v.trim_end_matches('/').to_string());
    }
    if let Some(h) = r.headers {
        let span = h.span();
        for (k, v) in h.into_inner() {
            check::grpc_header(&k, &v)
                .map_err(|m| src.err_span(span.clone(), format!("`headers`: {m}")))?;
            out.headers.push((k, v));
        }
    }
    if let Some(n) = r.token_env {
        check::env_name(n.get_ref(), false).map_err(|e| src.err_span(n.span(), e))?;
        out.token_env = Some(n.into_inner());
    }
    if let Some(t) = r.tls {
        if t.client_cert.is_some() != t.client_key.is_some() {
            return Err(src.err(
                "`[remote_execution.tls]`: give both `client_cert` and `client_key`, or neither",
            ));
        }
        out.tls = Some(ReapiTlsConfig {
            ca_cert: t.ca_cert,
            client_cert: t.client_cert,
            client_key: t.client_key,
            domain_name: t.domain_name,
        });
    }
    if let Some(t) = &r.timeout {
        out.timeout_ms = Some(duration(src, t)?);
    }
    out.execute = r.execute.unwrap_or(false);
    if let Some(p) = r.platform {
        let span = p.span();
        for (k, v) in p.into_inner() {
            check::platform_property(&k, &v)
                .map_err(|m| src.err_span(span.clone(), format!("`platform`: {m}")))?;
            out.platform.push((k, v));
        }
    }
    Ok(out)
}

fn remote_cache(src: &Src, r: RawRemoteCache) -> Result<super::RemoteCacheConfig, ConfigError> {
    use super::{RemoteApi, RemoteCacheConfig};
    let mut out = RemoteCacheConfig {
        read: r.read.unwrap_or(true),
        write: r.write.unwrap_or(true),
        team: r.team,
        ..Default::default()
    };
    if let Some(u) = r.url {
        let v = u.get_ref().trim();
        if !(v.starts_with("http://") || v.starts_with("https://")) || v.len() < 8 {
            return Err(src.err_span(
                u.span(),
                format!("`url = {v:?}` is not an http:// or https:// URL"),
            ));
        }
        out.url = Some(v.trim_end_matches('/').to_string());
    }
    if let Some(p) = r.protocol {
        out.protocol = match p.get_ref().as_str() {
            "turbo" => RemoteApi::Turbo,
            "nx" => RemoteApi::Nx,
            other => {
                return Err(src.err_span(
                    p.span(),
                    format!("`protocol = {other:?}`: expected \"turbo\" or \"nx\""),
                ));
            }
        };
    }
    for (field, slot) in [
        (r.token_env, &mut out.token_env),
        (r.signature_key_env, &mut out.signature_key_env),
    ] {
        if let Some(n) = field {
            check::env_name(n.get_ref(), false).map_err(|e| src.err_span(n.span(), e))?;
            *slot = Some(n.into_inner());
        }
    }
    if let Some(t) = &r.timeout {
        out.timeout_ms = Some(duration(src, t)?);
    }
    Ok(out)
}

fn workspace_section(src: &Src, ws: RawWorkspace) -> Result<WorkspaceSection, ConfigError> {
    let mut out = WorkspaceSection::default();
    if let Some(m) = &ws.members {
        out.members_pos = find_members_pos(src);
        out.members = Some(m.iter().map(|s| s.get_ref().clone()).collect());
    }
    if let Some(c) = ws.concurrency {
        if *c.get_ref() < 1 {
            return Err(src.err_span(c.span(), "`concurrency` must be a positive integer"));
        }
        out.concurrency = Some(*c.get_ref() as usize);
    }
    if let Some(t) = &ws.timeout {
        out.timeout_ms = Some(duration(src, t)?);
    }
    if let Some(d) = ws.cache_dir {
        if d.get_ref().trim().is_empty() {
            return Err(src.err_span(d.span(), "`cache_dir` may not be empty"));
        }
        out.cache_dir_pos = Some(pos(src, d.span().start));
        out.cache_dir = Some(d.into_inner());
    }
    let gi = plain(ws.global_inputs).unwrap_or_default();
    check_globs(src, &gi, "`global_inputs`")?;
    let ge = plain(ws.global_env).unwrap_or_default();
    check_env(src, &ge, true)?;
    let gp = plain(ws.global_pass_env).unwrap_or_default();
    check_env(src, &gp, true)?;
    out.global = GlobalConfig {
        inputs: values(Some(gi)),
        env: values(Some(ge)),
        pass_env: values(Some(gp)),
        internal: Vec::new(),
    };
    Ok(out)
}

fn find_members_pos(src: &Src) -> Option<(usize, usize)> {
    super::text::find_key(&src.text, "members")
}

fn task(
    src: &Src,
    name: &str,
    t: RawTask,
    refs: &mut Vec<ProjectRef>,
) -> Result<TaskDef, ConfigError> {
    let what = |field: &str| format!("`{field}` of task `{name}`");
    let mut def = TaskDef::default();

    let persistent = t.persistent.as_ref().is_some_and(|p| *p.get_ref());
    let interactive = t.interactive.as_ref().is_some_and(|p| *p.get_ref());

    match &t.command {
        Some(c) => {
            if c.get_ref().trim().is_empty() {
                return Err(src.err_span(c.span(), format!("{} is empty", what("command"))));
            }
            if c.get_ref().contains('\0') {
                return Err(
                    src.err_span(c.span(), format!("{} contains a NUL byte", what("command")))
                );
            }
            def.command = Some(c.get_ref().clone());
        }
        None => {
            // Group task.
            let hint =
                "add a `command`, or remove the field (a task without `command` is a group task)";
            let refuse = |field: &str, span: std::ops::Range<usize>| {
                Err(src
                    .err_span(
                        span,
                        format!("group task `{name}` (no `command`) cannot set `{field}`"),
                    )
                    .with_hint(hint))
            };
            if let Some(v) = &t.cache {
                return refuse("cache", v.span());
            }
            if let Some(v) = t.outputs.as_ref().and_then(|o| o.first()) {
                return refuse("outputs", v.span());
            }
            if let Some(v) = &t.persistent {
                return refuse("persistent", v.span());
            }
            if let Some(v) = &t.interactive {
                return refuse("interactive", v.span());
            }
            if let Some(v) = &t.ready_when {
                return refuse("ready_when", v.span());
            }
            if let Some(v) = &t.retries {
                return refuse("retries", v.span());
            }
            if let Some(v) = &t.remote {
                return refuse("remote", v.span());
            }
            if t.outputs.is_some() {
                return Err(src
                    .err_near(
                        name,
                        "outputs",
                        format!("group task `{name}` (no `command`) cannot set `outputs`"),
                    )
                    .with_hint(hint));
            }
            if t.depends_on.is_none() {
                return Err(src
                    .err_near(
                        name,
                        name,
                        format!("task `{name}` has neither `command` nor `depends_on`"),
                    )
                    .with_hint(
                        "give it a `command`, or `depends_on = [...]` to make it a group task",
                    ));
            }
        }
    }
    def.description = t.description;

    for (d, off) in plain(t.depends_on).unwrap_or_default() {
        let form = check::dep_form(&d).map_err(|e| {
            let err = src.err_at(off, format!("{e} (in {})", what("depends_on")));
            if d.starts_with('$') {
                err.with_hint("env dependencies are declared with `env = [...]`")
            } else {
                err
            }
        })?;
        if let check::DepForm::Explicit { project, .. } = form {
            refs.push(ProjectRef {
                file: src.file.clone(),
                pos: Some(pos(src, off)),
                name: project.to_string(),
                context: format!("dependency `{d}` of task `{name}`"),
            });
        }
        if !def.depends_on.contains(&d) {
            def.depends_on.push(d);
        }
    }

    let inputs_set = t.inputs.is_some();
    let outputs_set = t.outputs.is_some();
    if let Some(list) = plain(t.inputs) {
        check_globs(src, &list, &what("inputs"))?;
        def.inputs = values(Some(list));
    }
    let mut output_offsets = Vec::new();
    if let Some(list) = plain(t.outputs) {
        check_globs(src, &list, &what("outputs"))?;
        output_offsets = list.clone();
        def.outputs = values(Some(list));
    }
    // Outputs are deleted before the task runs: they may not select its
    // sources or the project's config.
    if let Err(o) = guard::check_outputs(&def.inputs, inputs_set, &def.outputs) {
        let off = output_offsets
            .iter()
            .find(|(g, _)| *g == o.output)
            .map(|(_, off)| *off);
        let msg = o.message(&what("outputs"));
        let err = match off {
            Some(off) => src.err_at(off, msg),
            None => src.err_near(name, "outputs", msg),
        };
        return Err(err.with_hint(o.hint()));
    }
    let env = plain(t.env).unwrap_or_default();
    check_env(src, &env, true)?;
    def.env = values(Some(env));
    let pass = plain(t.pass_env).unwrap_or_default();
    check_env(src, &pass, true)?;
    def.pass_env = values(Some(pass));
    for (l, off) in plain(t.labels).unwrap_or_default() {
        check::label(&l).map_err(|e| src.err_at(off, format!("{e} (in {})", what("labels"))))?;
        if def.command.is_none() {
            return Err(src
                .err_at(
                    off,
                    format!("group task `{name}` (no `command`) cannot set `labels`"),
                )
                .with_hint(
                    "labels say where a command may run; put them on the tasks with a command",
                ));
        }
        if !def.labels.contains(&l) {
            def.labels.push(l);
        }
    }
    def.labels.sort();
    if let Some(d) = t.define {
        let off = d.span().start;
        for k in d.get_ref().keys() {
            check::env_name(k, false)
                .map_err(|e| src.err_at(off, format!("{e} (in {})", what("define"))))?;
        }
        def.define = d.into_inner();
    }

    def.persistent = persistent;
    def.interactive = interactive;
    def.remote = t.remote.as_ref().is_none_or(|r| *r.get_ref());

    if let Some(r) = t.ready_when {
        if !persistent {
            return Err(src
                .err_span(
                    r.span(),
                    format!("task `{name}` sets `ready_when` without `persistent = true`"),
                )
                .with_hint("add `persistent = true`, or remove `ready_when`"));
        }
        if r.get_ref().is_empty() {
            return Err(src.err_span(r.span(), format!("{} is empty", what("ready_when"))));
        }
        if let Err(e) = regex::Regex::new(r.get_ref()) {
            let first = e.to_string();
            let detail = first.lines().last().unwrap_or("invalid").trim().to_string();
            return Err(src
                .err_span(
                    r.span(),
                    format!(
                        "{} is not a valid regular expression: {detail}",
                        what("ready_when")
                    ),
                )
                .with_hint("ready_when is a regex matched against each output line, e.g. \"listening on|ready\""));
        }
        def.ready_when = Some(r.into_inner());
    }

    if let Some(c) = &t.cache {
        if *c.get_ref() {
            let why = if persistent {
                Some("persistent")
            } else if interactive {
                Some("interactive")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(src
                    .err_span(
                        c.span(),
                        format!("task `{name}` is {why} and cannot be cached"),
                    )
                    .with_hint("remove `cache = true`"));
            }
        }
        def.cache = *c.get_ref();
    } else {
        def.cache = inputs_set && outputs_set && !persistent && !interactive;
    }

    if let Some(tm) = &t.timeout {
        def.timeout_ms = Some(duration(src, tm)?);
    }
    if let Some(r) = &t.retries {
        let n = *r.get_ref();
        if !(0..=100).contains(&n) {
            return Err(src.err_span(
                r.span(),
                format!("{} must be between 0 and 100", what("retries")),
            ));
        }
        if persistent && n > 0 {
            return Err(src
                .err_span(
                    r.span(),
                    format!("persistent task `{name}` cannot set `retries`"),
                )
                .with_hint("remove `retries`"));
        }
        def.retries = n as u32;
    }
    Ok(def)
}
