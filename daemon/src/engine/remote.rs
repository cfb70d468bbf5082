//! `engine::remote` — a run's use of the remote cache: resolving its
//! settings ([`resolve`]: `VX_REMOTE_CACHE_*`, then turbo's `TURBO_*`, then
//! the root `vx.toml`'s `[remote_cache]`, then `--cache`; a REAPI server
//! from `VX_REAPI_*` over `[remote_execution]`, [`resolve_reapi`], wins over
//! an HTTP remote), opening it for the
//! run ([`open`]), the read-through after a local miss ([`Shared::remote_fetch`]:
//! fetch, admit, hydrate the local store; the caller restores through the
//! ordinary confined restore), and the uploads of executed results in the
//! background ([`Shared::upload`]), drained before the run answers
//! ([`Shared::drain_uploads`]).
//!
//! Never: consulted on a local hit (only [`super::task::try_hit`] with a
//! local miss comes here); never fails a run or gives a wrong hit — every
//! remote failure is a miss and one warning, and a remote that cannot be
//! reached is not asked again in the same run.

use super::prepare::Shared;
use crate::cache::Entry;
use crate::cache::remote::ReapiSettings;
use crate::cache::remote::{
    self, ArtifactId, CachePolicy, RemoteError, RemoteProtocol, RemoteSettings, RunRemote,
    parse_cache_flag,
};
use crate::model::Model;
use crate::workspace::{RemoteApi, RemoteCacheConfig, RemoteExecutionConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use vx_proto::{RunEvent, RunParams};

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
        Ok(r) => Ok((r.map(Arc::new), policy, note)),
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
    if knobs::REMOTE_ONLY.on(env) || on("TURBO_REMOTE_ONLY") {
        policy.local_read = false;
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
        }
    }

    /// After a local miss: the remote's artifact for `key`, checked and
    /// taken into the local store. `None`: a miss (with a warning when the
    /// remote failed or the artifact was refused).
    pub(super) fn remote_fetch(&self, g: usize, key: &str) -> Option<Entry> {
        let r = self.remote.as_ref()?;
        if !r.policy.remote_read || !r.usable() {
            return None;
        }
        let a = match r.remote.get(&self.artifact_id(g, key)) {
            Ok(Some(a)) => a,
            Ok(None) => return None,
            Err(e) => {
                self.remote_failed(r, g, e, "fetching");
                return None;
            }
        };
        if let Err(why) = remote::admit(&a, &self.patterns[&g].outputs) {
            self.remote_failed(r, g, RemoteError::Refused(why), "fetching");
            return None;
        }
        let node = &self.model.graph.nodes[g];
        match remote::hydrate(&self.store, key, &node.id, &a) {
            Ok(e) => Some(e),
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
            if !r.writable() {
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

    /// Waits for this run's uploads (before the run answers).
    pub(super) async fn drain_uploads(&self) {
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
}
