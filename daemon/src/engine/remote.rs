//! `engine::remote` — a run's use of the remote cache: resolving its
//! settings ([`resolve`]: `VX_REMOTE_CACHE_*`, then turbo's `TURBO_*`, then
//! the root `vx.toml`'s `[remote_cache]`, then `--cache`; a REAPI server
//! from `VX_REAPI_*` over `[remote_execution]`, [`resolve_reapi`], wins over
//! an HTTP remote), opening it for the
//! run ([`open`]), its status check on first use ([`Shared::remote_ready`]),
//! the read-through after a local miss ([`Shared::remote_fetch`]: an
//! existence query batched with the run's other lookups once the remote has
//! mostly missed, fetch, admit, then hydrate the local store — or, when the
//! run may not write it, restore straight into the outputs
//! ([`Shared::remote_restore`])), the uploads of executed results in the
//! background ([`Shared::upload`], [`Shared::upload_outputs`]), drained
//! before the run answers ([`Shared::drain_uploads`]), and the run's usage
//! events, sent in the background in bounded batches.
//!
//! Never: consulted on a local hit (only [`super::task::try_hit`] with a
//! local miss comes here), so a run served by the local cache sends no
//! request at all; never fails a run or gives a wrong hit — every remote
//! failure is a miss and one warning, and a remote that cannot be reached
//! (or says remote caching is disabled) is not asked again in the same run.

use super::prepare::Shared;
use super::task::{Hit, base_result};
use crate::cache::remote::ReapiSettings;
use crate::cache::remote::{
    self, Artifact, ArtifactId, CacheEvent, CachePolicy, EventSource, MAX_PENDING_EVENTS,
    RemoteError, RemoteProtocol, RemoteSettings, RunRemote, parse_cache_flag,
};
use crate::cache::{self, CacheError, Entry};
use crate::model::Model;
use crate::workspace::{RemoteApi, RemoteCacheConfig, RemoteExecutionConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vx_proto::{CacheSource, OutputLogs, RunEvent, RunParams, TaskStatus};

/// What a remote lookup found.
pub(super) enum Fetched {
    /// Taken into the local store: restore it like a local hit.
    Stored(Entry),
    /// The run may not write the local store: restore it directly.
    Direct(Artifact),
}

/// The most keys in one existence query (the API's limit).
const BATCH_MAX: usize = 1000;
/// Usage events are sent in batches of this many (and at the run's end).
const EVENT_BATCH: usize = 100;

/// A run's remote, its cache policy, and a warning for a configured remote
/// that cannot be used.
type Opened = (Option<Arc<RunRemote>>, CachePolicy, Option<String>);

/// The run's remote and cache policy; a warning when a configured remote
/// cannot be used. `Err`: a bad `--cache` value.
pub(super) fn open(model: &Model, params: &RunParams) -> Result<Opened, String> {
    let (settings, mut policy) = resolve(
        model.ws.defaults.remote_cache.as_ref(),
        &params.env,
        params.cache.as_deref(),
    )?;
    let reapi = resolve_reapi(
        model.ws.defaults.remote_execution.as_ref(),
        &model.ws.root,
        &params.env,
    );
    let mut note = None;
    let exec = match &reapi {
        Some(_) => resolve_execute(model.ws.defaults.remote_execution.as_ref(), &params.env),
        None => None,
    };
    let settings = match reapi {
        Some((s, read, write)) => {
            if let Some(http) = &settings {
                note = Some(format!(
                    "both a remote cache ({}) and a REAPI server ({}) are configured; using the REAPI server",
                    http.url, s.url
                ));
            }
            if params.cache.is_none() {
                policy.remote_read = read;
                policy.remote_write = write;
                let env = &params.env;
                if vx_proto::knobs::REMOTE_CACHE_READ_ONLY.on(env) {
                    policy.remote_write = false;
                }
            }
            Some(s)
        }
        None => settings,
    };
    let Some(s) = settings else {
        return Ok((None, policy, None));
    };
    if params.no_cache {
        return Ok((None, policy, None));
    }
    match RunRemote::open(&s, policy) {
        Ok(r) => {
            let r = r.map(|mut r| {
                let queue = vx_proto::knobs::REAPI_QUEUE_TIMEOUT_MS
                    .millis(&params.env)
                    .unwrap_or(QUEUE_TIMEOUT);
                r.exec = exec.map(|p| remote::RunExec::new(p, queue));
                Arc::new(r)
            });
            Ok((r, policy, note))
        }
        Err(w) => Ok((
            None,
            policy,
            Some(match note {
                Some(n) => format!("{n}; {w}"),
                None => w,
            }),
        )),
    }
}

/// Whether a run executes tasks on its REAPI server, and the platform
/// properties of its actions: `VX_REAPI_EXECUTE` (`1` on, `0` off) over
/// `[remote_execution] execute`. `None`: off.
pub(super) fn resolve_execute(
    cfg: Option<&RemoteExecutionConfig>,
    env: &BTreeMap<String, String>,
) -> Option<Vec<(String, String)>> {
    let knob = vx_proto::knobs::REAPI_EXECUTE;
    let on = if knob.off(env) {
        false
    } else if knob.on(env) {
        true
    } else {
        cfg.is_some_and(|c| c.execute)
    };
    on.then(|| {
        let mut p = cfg.map(|c| c.platform.clone()).unwrap_or_default();
        p.sort();
        p
    })
}

/// Resolves a run's REAPI server: `VX_REAPI_*` over the root config's
/// `[remote_execution]`. `None`: no REAPI server (or `VX_REAPI_ENDPOINT=off`).
/// Also: whether the config lets the run read and write it.
pub(super) fn resolve_reapi(
    cfg: Option<&RemoteExecutionConfig>,
    root: &std::path::Path,
    env: &BTreeMap<String, String>,
) -> Option<(RemoteSettings, bool, bool)> {
    use vx_proto::knobs;
    let get = |k: &str| env.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let endpoint = knobs::REAPI_ENDPOINT
        .get(env)
        .map(str::to_string)
        .or_else(|| cfg.and_then(|c| c.endpoint.clone()))
        .filter(|u| u != "off")?;
    let instance_name = knobs::REAPI_INSTANCE_NAME
        .get(env)
        .map(str::to_string)
        .or_else(|| cfg.map(|c| c.instance_name.clone()))
        .unwrap_or_default();
    let token = knobs::REAPI_TOKEN.get(env).map(str::to_string).or_else(|| {
        cfg.and_then(|c| c.token_env.as_deref())
            .and_then(get)
            .map(str::to_string)
    });
    // `${NAME}` in a header value: the run's variable (empty when unset).
    let expand = |v: &str| -> String {
        let mut out = String::new();
        let mut rest = v;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            match rest[i + 2..].find('}') {
                Some(j) => {
                    out.push_str(get(&rest[i + 2..i + 2 + j]).unwrap_or(""));
                    rest = &rest[i + 3 + j..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    };
    let mut headers: Vec<(String, String)> = cfg
        .map(|c| {
            c.headers
                .iter()
                .map(|(k, v)| (k.clone(), expand(v)))
                .collect()
        })
        .unwrap_or_default();
    // `VX_REAPI_HEADERS`: `name=value` pairs, one a line or comma-separated.
    if let Some(h) = knobs::REAPI_HEADERS.get(env) {
        for pair in h
            .split(['\n', ','])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            if let Some((k, v)) = pair.split_once('=') {
                let k = k.trim().to_ascii_lowercase();
                headers.retain(|(n, _)| *n != k);
                headers.push((k, v.trim().to_string()));
            }
        }
    }
    let abs = |p: &Option<String>| p.as_ref().map(|p| root.join(p));
    let tls = cfg.and_then(|c| c.tls.clone()).unwrap_or_default();
    let tls_ca_cert = knobs::REAPI_TLS_CA_CERT
        .get(env)
        .map(|p| root.join(p))
        .or_else(|| abs(&tls.ca_cert));
    let timeout = knobs::REMOTE_CACHE_TIMEOUT_MS
        .millis(env)
        .or_else(|| cfg.and_then(|c| c.timeout_ms).map(Duration::from_millis))
        .unwrap_or(REMOTE_TIMEOUT);
    let (read, write) = cfg.map(|c| (c.read, c.write)).unwrap_or((true, true));
    Some((
        RemoteSettings {
            url: endpoint,
            protocol: RemoteProtocol::default(),
            team: None,
            token,
            signature_key: None,
            timeout,
            reapi: Some(ReapiSettings {
                instance_name,
                headers,
                tls_ca_cert,
                tls_client_cert: abs(&tls.client_cert),
                tls_client_key: abs(&tls.client_key),
                tls_domain_name: tls.domain_name,
            }),
        },
        read,
        write,
    ))
}

/// How long a remotely executed task may wait for a worker, by default.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(600);

/// Default timeout of one remote request.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Resolves a run's remote cache: the environment (`VX_REMOTE_CACHE_*`,
/// then turbo's `TURBO_*`) over the root config, then `--cache`. `None`
/// settings: no remote for this run.
pub(super) fn resolve(
    cfg: Option<&RemoteCacheConfig>,
    env: &BTreeMap<String, String>,
    flag: Option<&str>,
) -> Result<(Option<RemoteSettings>, CachePolicy), String> {
    use vx_proto::knobs;
    let get = |k: &str| env.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let on = |k: &str| get(k).is_some_and(|v| v != "0" && v != "false");
    let mut policy = CachePolicy::default();
    if let Some(c) = cfg {
        policy.remote_read = c.read;
        policy.remote_write = c.write;
    }
    if knobs::REMOTE_CACHE_READ_ONLY.on(env) || on("TURBO_REMOTE_CACHE_READ_ONLY") {
        policy.remote_write = false;
    }
    // turbo: "ignore the local filesystem cache" — neither read nor written.
    if knobs::REMOTE_ONLY.on(env) || on("TURBO_REMOTE_ONLY") {
        policy.local_read = false;
        policy.local_write = false;
    }
    if let Some(f) = flag {
        policy = parse_cache_flag(f)?;
    }
    let url = knobs::REMOTE_CACHE_URL
        .get(env)
        .or_else(|| get("TURBO_API"))
        .map(str::to_string)
        .or_else(|| cfg.and_then(|c| c.url.clone()));
    let Some(url) = url.filter(|u| u != "off") else {
        return Ok((None, policy));
    };
    let from_named = |name: &Option<String>| name.as_deref().and_then(&get).map(str::to_string);
    let token = knobs::REMOTE_CACHE_TOKEN
        .get(env)
        .or_else(|| get("TURBO_TOKEN"))
        .map(str::to_string)
        .or_else(|| cfg.and_then(|c| from_named(&c.token_env)));
    let team = knobs::REMOTE_CACHE_TEAM
        .get(env)
        .or_else(|| get("TURBO_TEAM"))
        .map(str::to_string)
        .or_else(|| cfg.and_then(|c| c.team.clone()));
    let signature_key = knobs::REMOTE_CACHE_SIGNATURE_KEY
        .get(env)
        .or_else(|| get("TURBO_REMOTE_CACHE_SIGNATURE_KEY"))
        .map(str::to_string)
        .or_else(|| cfg.and_then(|c| from_named(&c.signature_key_env)))
        .map(String::into_bytes);
    let timeout = knobs::REMOTE_CACHE_TIMEOUT_MS
        .millis(env)
        .or_else(|| cfg.and_then(|c| c.timeout_ms).map(Duration::from_millis))
        .unwrap_or(REMOTE_TIMEOUT);
    let protocol = match cfg.map(|c| c.protocol).unwrap_or_default() {
        RemoteApi::Turbo => RemoteProtocol::Turbo,
        RemoteApi::Nx => RemoteProtocol::Nx,
    };
    Ok((
        Some(RemoteSettings {
            url,
            protocol,
            team,
            token,
            signature_key,
            timeout,
            reapi: None,
        }),
        policy,
    ))
}

impl Shared {
    fn artifact_id<'a>(&'a self, g: usize, key: &'a str) -> ArtifactId<'a> {
        let node = &self.model.graph.nodes[g];
        ArtifactId {
            key,
            project_dir: &self.model.ws.projects[node.project].dir,
            task: &node.name,
        }
    }

    fn remote_failed(&self, r: &RunRemote, g: usize, e: RemoteError, what: &str) {
        let id = &self.model.graph.nodes[g].id;
        match e {
            RemoteError::Unavailable(why) => {
                if r.break_off() {
                    self.emit(RunEvent::Warning {
                        message: format!(
                            "remote cache {}: {why} ({what} {id}); not using it for the rest of this run",
                            r.remote.describe()
                        ),
                    });
                }
            }
            RemoteError::WriteDenied(why) => {
                if r.stop_writes() {
                    self.emit(RunEvent::Warning {
                        message: format!(
                            "remote cache {}: {why}; not uploading for the rest of this run",
                            r.remote.describe()
                        ),
                    });
                }
            }
            RemoteError::Refused(why) => self.emit(RunEvent::Warning {
                message: format!("{id}: not taken from the remote cache: {why}; running the task"),
            }),
            RemoteError::Cancelled => {}
        }
    }

    /// Whether the run may use its remote: not broken, and its status
    /// (asked once per run, on first use) says remote caching is enabled.
    fn remote_ready(&self, r: &RunRemote, g: usize) -> bool {
        if !r.usable() {
            return false;
        }
        let st = r
            .status
            .get_or_init(|| r.remote.status().map_err(|e| e.to_string()));
        match st {
            Ok(()) => true,
            Err(why) => {
                self.remote_failed(r, g, RemoteError::Unavailable(why.clone()), "checking for");
                false
            }
        }
    }

    /// Whether the run's existence query says the remote lacks `key` (then
    /// no GET is needed); `false` means "ask for it".
    fn known_missing(&self, r: &RunRemote, key: &str) -> bool {
        let known = r.batch.known.get_or_init(|| self.query_ready(r));
        known.get(key) == Some(&false)
    }

    /// Asks the remote, in one request per [`BATCH_MAX`] keys, which of the
    /// run's tasks without dependencies it holds — those it will look up
    /// first, whose keys are known before anything runs (each is computed
    /// again when the task starts; a key that changed meanwhile is simply
    /// asked for). Tasks the local store serves are left out.
    fn query_ready(&self, r: &RunRemote) -> HashMap<String, bool> {
        let mut out = HashMap::new();
        let mut keys = Vec::new();
        let mut nodes: Vec<usize> = self.patterns.keys().copied().collect();
        nodes.sort_unstable();
        for g in nodes {
            if self.model.graph.deps(g).next().is_some() || !self.cache_read(g) {
                continue;
            }
            let Ok(k) = self.key_of(g) else {
                continue;
            };
            if self.policy.local_read && matches!(self.store.get(&k), Ok(Some(_))) {
                continue;
            }
            keys.push(k);
        }
        // One key: its GET is as cheap as the query.
        if keys.len() < 2 {
            return out;
        }
        for chunk in keys.chunks(BATCH_MAX) {
            match r.remote.query(chunk) {
                Ok(Some(v)) if v.len() == chunk.len() => out.extend(chunk.iter().cloned().zip(v)),
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!("batch query failed ({e}); asking one by one");
                    break;
                }
            }
        }
        out
    }

    /// Notes a usage event; a full batch is sent in the background.
    fn note_event(&self, r: &Arc<RunRemote>, ev: CacheEvent) {
        let full = match r.events.lock() {
            Ok(mut q) => {
                if q.len() < MAX_PENDING_EVENTS {
                    q.push(ev);
                }
                q.len() >= EVENT_BATCH
            }
            Err(_) => false,
        };
        if full {
            self.send_events(r);
        }
    }

    /// Sends the pending usage events in the background (best effort).
    /// Under the daemon nothing waits for them; a `--no-daemon` run waits
    /// for them with its uploads (the client bounds the request's time).
    fn send_events(&self, r: &Arc<RunRemote>) {
        let batch: Vec<CacheEvent> = match r.events.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return,
        };
        if batch.is_empty() || !r.usable() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let r2 = r.clone();
        let h = rt.spawn_blocking(move || {
            if let Err(e) = r2.remote.events(&r2.session, &batch) {
                tracing::debug!("usage events not sent: {e}");
            }
        });
        if self.hot.is_none()
            && let Ok(mut u) = self.uploads.lock()
        {
            u.push(h);
        }
    }

    /// After a local miss: the remote's artifact for `key`, checked, and
    /// taken into the local store when the run writes it. `None`: a miss
    /// (with a warning when the remote failed or the artifact was refused).
    pub(super) fn remote_fetch(&self, g: usize, key: &str) -> Option<Fetched> {
        let r = self.remote.clone()?;
        if !r.policy.remote_read || !self.remote_ready(&r, g) {
            return None;
        }
        let t0 = Instant::now();
        if self.policy.local_read {
            self.note_event(
                &r,
                CacheEvent {
                    source: EventSource::Local,
                    hit: false,
                    key: key.to_string(),
                    duration_ms: 0,
                },
            );
        }
        let miss = |sh: &Self| {
            sh.note_event(
                &r,
                CacheEvent {
                    source: EventSource::Remote,
                    hit: false,
                    key: key.to_string(),
                    duration_ms: 0,
                },
            );
            None
        };
        if self.known_missing(&r, key) {
            return miss(self);
        }
        let a = match r.remote.get(&self.artifact_id(g, key)) {
            Ok(Some(a)) => a,
            Ok(None) => return miss(self),
            Err(e) => {
                self.remote_failed(&r, g, e, "fetching");
                return None;
            }
        };
        if let Err(why) = remote::admit(&a, &self.patterns[&g].outputs) {
            self.remote_failed(&r, g, RemoteError::Refused(why), "fetching");
            return None;
        }
        tracing::debug!(key, ms = t0.elapsed().as_millis() as u64, "remote hit");
        self.note_event(
            &r,
            CacheEvent {
                source: EventSource::Remote,
                hit: true,
                key: key.to_string(),
                duration_ms: a.duration_ms,
            },
        );
        if !self.policy.local_write {
            return Some(Fetched::Direct(a));
        }
        let node = &self.model.graph.nodes[g];
        match remote::hydrate(&self.store, key, &node.id, &a) {
            Ok(e) => Some(Fetched::Stored(e)),
            Err(e) => {
                self.emit(RunEvent::Warning {
                    message: format!(
                        "{}: the remote cache's result could not be stored locally: {e}; running the task",
                        node.id
                    ),
                });
                None
            }
        }
    }

    /// Restores a remote hit straight into the task's outputs (the run
    /// does not write the local store). A refusal or a failed write is a
    /// miss with a warning.
    pub(super) fn remote_restore(&self, g: usize, key: &str, a: Artifact, t0: Instant) -> Hit {
        let node = &self.model.graph.nodes[g];
        let p = node.project;
        let dir = self.project_abs(p);
        let fence = self.rel_fence(p);
        match remote::restore_artifact(&a, &dir, &self.patterns[&g].outputs, &fence) {
            // As a local restore: only a task whose inputs reach the
            // restored output bases re-walks the project.
            Ok(st) => self.mark_restored(p, &self.patterns[&g].outputs, &st),
            Err(e) => {
                let why = match e {
                    CacheError::Refused(why) => why,
                    e => e.to_string(),
                };
                self.emit(RunEvent::Warning {
                    message: format!(
                        "{}: not restored from the remote cache: {why}; running the task",
                        node.id
                    ),
                });
                return Hit::Miss;
            }
        }
        let mut r = base_result(self, g);
        r.status = TaskStatus::Cached;
        r.cache = CacheSource::Remote;
        r.key = Some(key.to_string());
        r.exit_code = Some(0);
        r.duration_ms = t0.elapsed().as_millis() as u64;
        let log = if self.logs_of(g) == OutputLogs::Full {
            a.log
        } else {
            Vec::new()
        };
        Hit::Served(r, log)
    }

    /// Uploads the entry just saved for `key`, in the background.
    pub(super) fn upload(self: &Arc<Self>, g: usize, key: &str) {
        let Some(r) = self.remote.clone() else {
            return;
        };
        if !r.writable() {
            return;
        }
        let (sh, key) = (self.clone(), key.to_string());
        let h = tokio::task::spawn_blocking(move || {
            if !r.writable() || !sh.remote_ready(&r, g) {
                return;
            }
            let Ok(Some(entry)) = sh.store.get(&key) else {
                return;
            };
            let a = match remote::artifact_of(&sh.store, &entry.0) {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(%key, "not uploaded: {e}");
                    return;
                }
            };
            if let Err(e) = r.remote.put(&sh.artifact_id(g, &key), &a) {
                sh.remote_failed(&r, g, e, "uploading");
            }
        });
        if let Ok(mut u) = self.uploads.lock() {
            u.push(h);
        }
    }

    /// Uploads a task's outputs as they are on disk (the run does not
    /// write the local store): read now, before the task is reported done,
    /// sent in the background.
    pub(super) async fn upload_outputs(
        self: &Arc<Self>,
        g: usize,
        key: &str,
        log: Vec<u8>,
        duration_ms: u64,
    ) {
        let Some(r) = self.remote.clone() else {
            return;
        };
        if !r.writable() {
            return;
        }
        let sh = self.clone();
        let read = tokio::task::spawn_blocking(move || {
            let node = &sh.model.graph.nodes[g];
            let dir = sh.project_abs(node.project);
            let fence = sh.rel_fence(node.project);
            let files = cache::collect_outputs(&dir, &sh.patterns[&g].outputs, &fence);
            remote::artifact_from_disk(&dir, &files, &log, duration_ms)
        })
        .await;
        let a = match read {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.emit(RunEvent::Warning {
                    message: format!(
                        "{}: not uploaded to the remote cache: {e}",
                        self.model.graph.nodes[g].id
                    ),
                });
                return;
            }
            Err(_) => return,
        };
        let (sh, key) = (self.clone(), key.to_string());
        let h = tokio::task::spawn_blocking(move || {
            if !r.writable() || !sh.remote_ready(&r, g) {
                return;
            }
            if let Err(e) = r.remote.put(&sh.artifact_id(g, &key), &a) {
                sh.remote_failed(&r, g, e, "uploading");
            }
        });
        if let Ok(mut u) = self.uploads.lock() {
            u.push(h);
        }
    }

    /// Makes sure the remote holds `key`'s result (a worker is about to
    /// need it): asked, and when it may lack it, uploaded from the local
    /// store now. `Err`: why it is not there (no local entry, the remote
    /// refused). Blocking.
    pub(super) fn ensure_in_remote(&self, g: usize, key: &str) -> Result<(), String> {
        let id = &self.model.graph.nodes[g].id;
        let r = self
            .remote
            .clone()
            .ok_or_else(|| "the run has no remote cache".to_string())?;
        if !r.usable() {
            return Err(format!(
                "the remote cache {} is not usable",
                r.remote.describe()
            ));
        }
        if let Ok(Some(v)) = r.remote.query(&[key.to_string()])
            && v.first() == Some(&true)
        {
            return Ok(());
        }
        // Not `writable()`: a distributed run checked it may write, and a
        // worker uploads what it executed whatever its own policy says
        // (its background uploads are off so the result goes up once).
        let entry = self
            .store
            .get(key)
            .map_err(|e| format!("{id}: {e}"))?
            .ok_or_else(|| {
                format!(
                    "{id} ({}) is neither in the local cache nor known to be in the remote one",
                    &key[..key.len().min(12)]
                )
            })?;
        let a = remote::artifact_of(&self.store, &entry.0).map_err(|e| format!("{id}: {e}"))?;
        r.remote
            .put(&self.artifact_id(g, key), &a)
            .map_err(|e| format!("{id}: not uploaded to {}: {e}", r.remote.describe()))
    }

    /// A worker executed `key` and uploaded its result: fetched from the
    /// remote (asked afresh, whatever the run's first existence query
    /// said), checked, and restored into the outputs and, when the run
    /// writes it, the local store. `Err`: why not. Blocking.
    pub(super) fn restore_from_remote(&self, g: usize, key: &str) -> Result<(), String> {
        let node = &self.model.graph.nodes[g];
        let r = self
            .remote
            .clone()
            .ok_or_else(|| "the run has no remote cache".to_string())?;
        let a = match r.remote.get(&self.artifact_id(g, key)) {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Err(format!(
                    "its result ({}) is not in the remote cache {}",
                    &key[..key.len().min(12)],
                    r.remote.describe()
                ));
            }
            Err(e) => return Err(format!("fetching its result: {e}")),
        };
        remote::admit(&a, &self.patterns[&g].outputs)?;
        let p = node.project;
        let dir = self.project_abs(p);
        let fence = self.rel_fence(p);
        let st = if self.policy.local_write {
            let entry = remote::hydrate(&self.store, key, &node.id, &a)
                .map_err(|e| format!("storing its result locally: {e}"))?;
            let st = cache::restore(
                &self.store,
                &entry.0,
                &dir,
                &self.patterns[&g].outputs,
                &fence,
            )
            .map_err(|e| format!("restoring its outputs: {e}"))?;
            self.store.put_stamps(key, &st);
            st
        } else {
            remote::restore_artifact(&a, &dir, &self.patterns[&g].outputs, &fence)
                .map_err(|e| format!("restoring its outputs: {e}"))?
        };
        self.mark_restored(p, &self.patterns[&g].outputs, &st);
        Ok(())
    }

    /// Waits for this run's uploads (before the run answers), after
    /// sending its last usage events.
    pub(super) async fn drain_uploads(&self) {
        if let Some(r) = self.remote.clone() {
            self.send_events(&r);
        }
        let pending: Vec<_> = match self.uploads.lock() {
            Ok(mut u) => u.drain(..).collect(),
            Err(_) => return,
        };
        for h in pending {
            let _ = h.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_order() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cfg = RemoteCacheConfig {
            url: Some("http://file".into()),
            token_env: Some("MY_TOKEN".into()),
            read: true,
            write: true,
            ..Default::default()
        };
        let (s, p) = resolve(Some(&cfg), &env(&[("MY_TOKEN", "t1")]), None).unwrap();
        let s = s.unwrap();
        assert_eq!(
            (s.url.as_str(), s.token.as_deref()),
            ("http://file", Some("t1"))
        );
        assert!(p.remote_write);
        let (s, p) = resolve(
            Some(&cfg),
            &env(&[
                ("TURBO_API", "http://turbo"),
                ("TURBO_TOKEN", "t2"),
                ("TURBO_REMOTE_CACHE_READ_ONLY", "1"),
            ]),
            None,
        )
        .unwrap();
        let s = s.unwrap();
        assert_eq!(
            (s.url.as_str(), s.token.as_deref()),
            ("http://turbo", Some("t2"))
        );
        assert!(!p.remote_write && p.remote_read);
        let (s, _) = resolve(
            None,
            &env(&[
                (vx_proto::knobs::REMOTE_CACHE_URL.name, "http://vx"),
                ("TURBO_API", "http://turbo"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(s.unwrap().url, "http://vx");
        let (s, _) = resolve(None, &env(&[]), None).unwrap();
        assert!(s.is_none());
        let (_, p) = resolve(Some(&cfg), &env(&[]), Some("local:rw,remote:r")).unwrap();
        assert!(p.remote_read && !p.remote_write);
    }
    #[test]
    fn reapi_resolution() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let root = std::path::Path::new("/ws");
        let cfg = RemoteExecutionConfig {
            endpoint: Some("grpcs://farm:443".into()),
            instance_name: "main".into(),
            headers: vec![("x-api-key".into(), "k-${API_KEY}-${UNSET}".into())],
            token_env: Some("MY_TOKEN".into()),
            tls: Some(crate::workspace::ReapiTlsConfig {
                ca_cert: Some("certs/ca.pem".into()),
                ..Default::default()
            }),
            read: true,
            write: false,
            timeout_ms: Some(1234),
            ..Default::default()
        };
        let (s, read, write) = resolve_reapi(
            Some(&cfg),
            root,
            &env(&[("API_KEY", "abc"), ("MY_TOKEN", "t")]),
        )
        .unwrap();
        assert!(read && !write);
        assert_eq!(s.url, "grpcs://farm:443");
        assert_eq!(s.token.as_deref(), Some("t"));
        assert_eq!(s.timeout, Duration::from_millis(1234));
        let r = s.reapi.unwrap();
        assert_eq!(r.instance_name, "main");
        assert_eq!(r.headers, vec![("x-api-key".into(), "k-abc-".into())]);
        assert_eq!(
            r.tls_ca_cert.as_deref(),
            Some(root.join("certs/ca.pem").as_path())
        );
        // The environment wins; `off` turns it off.
        let (s, _, _) = resolve_reapi(
            Some(&cfg),
            root,
            &env(&[
                (vx_proto::knobs::REAPI_ENDPOINT.name, "grpc://other:1"),
                (vx_proto::knobs::REAPI_INSTANCE_NAME.name, "pr"),
                (vx_proto::knobs::REAPI_TOKEN.name, "t2"),
                (
                    vx_proto::knobs::REAPI_HEADERS.name,
                    "x-api-key=v1, x-more=v2",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(s.url, "grpc://other:1");
        assert_eq!(s.token.as_deref(), Some("t2"));
        let r = s.reapi.unwrap();
        assert_eq!(r.instance_name, "pr");
        assert_eq!(
            r.headers,
            vec![
                ("x-api-key".into(), "v1".into()),
                ("x-more".into(), "v2".into())
            ]
        );
        let off = env(&[(vx_proto::knobs::REAPI_ENDPOINT.name, "off")]);
        assert!(resolve_reapi(Some(&cfg), root, &off).is_none());
        assert!(resolve_reapi(None, root, &env(&[])).is_none());
    }

    #[test]
    fn execute_resolution() {
        let knob = vx_proto::knobs::REAPI_EXECUTE.name;
        let env = |v: Option<&str>| -> BTreeMap<String, String> {
            v.map(|v| (knob.to_string(), v.to_string()))
                .into_iter()
                .collect()
        };
        let cfg = |execute| RemoteExecutionConfig {
            endpoint: Some("grpc://h:1".into()),
            execute,
            platform: vec![("b".into(), "2".into()), ("A".into(), "1".into())],
            ..Default::default()
        };
        let plat = Some(vec![
            ("A".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]);
        // (config's execute, knob) → on?
        let table: &[(Option<bool>, Option<&str>, bool)] = &[
            (None, None, false),
            (Some(false), None, false),
            (Some(true), None, true),
            (Some(true), Some("0"), false),
            (Some(false), Some("1"), true),
            (None, Some("1"), true),
            (Some(true), Some(""), true),
        ];
        for (c, k, want) in table {
            let c = c.map(cfg);
            let got = resolve_execute(c.as_ref(), &env(*k));
            assert_eq!(got.is_some(), *want, "{c:?} {k:?}");
            if *want && c.is_some() {
                assert_eq!(got, plat, "sorted by name");
            }
        }
    }
}
