//! `vxd-remote` — vx's remote cache client: the engine's
//! [`vxd::cache::remote::Remote`] over HTTP, speaking Turborepo's
//! `/v8/artifacts` (with its headers and its HMAC-SHA256 `x-artifact-tag`
//! when a signature key is set) or Nx's `/v1/cache`, with artifacts packed
//! as `tar` + `zstd` like turbo's ([`archive`]). The `vxd` binary calls
//! [`register`] at start-up, so the daemon and `vxd --stdio` both have it.
//!
//! Owns: requests (bounded by a timeout), response bodies (bounded by
//! [`Limits::max_body`]), signature checks, and unpacking (bounded by
//! [`Limits::max_unpacked`], refusing every entry that is not a plain file
//! or a link under the task's project: `..`, absolute paths, devices,
//! hard links).
//! Never: writes a file (the engine restores an artifact through its
//! confined restore, after checking every path against the task's declared
//! outputs), and never turns a remote failure into anything but an error
//! the engine treats as a miss.

pub mod archive;
pub mod sign;

use reqwest::StatusCode;
use reqwest::blocking::{Client as Http, Response};
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use vxd::cache::remote::{
    Artifact, ArtifactId, CacheEvent, EventSource, Remote, RemoteError, RemoteProtocol,
    RemoteSettings, set_factory,
};

/// The time a usage-event request may take (they are best effort).
const EVENTS_TIMEOUT: Duration = Duration::from_secs(2);

/// Size caps of one download.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest response body accepted (compressed bytes).
    pub max_body: u64,
    /// The largest total of unpacked bytes (a zstd bomb stops here).
    pub max_unpacked: u64,
    /// The most entries in one archive.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 512 << 20,
            max_unpacked: 2 << 30,
            max_entries: 200_000,
        }
    }
}

/// Registers this client with the engine (the `vxd` binary does, once).
pub fn register() {
    set_factory(|s| client_for(s).map(|c| c as Arc<dyn Remote>));
}

/// One client per distinct settings, kept for the process's life: a
/// blocking HTTP client owns a runtime thread, which must not be dropped
/// on an async thread, and keeping it reuses its connections across runs.
/// It is built on first use, so a run served from the local cache never
/// pays for it.
fn client_for(s: &RemoteSettings) -> Result<Arc<LazyRemote>, String> {
    if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
        return Err(format!("{:?} is not an http:// or https:// URL", s.url));
    }
    static CLIENTS: OnceLock<Mutex<HashMap<RemoteSettings, Arc<LazyRemote>>>> = OnceLock::new();
    let map = CLIENTS.get_or_init(Default::default);
    let mut map = map
        .lock()
        .map_err(|_| "client table poisoned".to_string())?;
    let c = map
        .entry(s.clone())
        .or_insert_with(|| {
            Arc::new(LazyRemote {
                s: s.clone(),
                http: OnceLock::new(),
            })
        })
        .clone();
    Ok(c)
}

/// An [`HttpRemote`] made on first use.
pub struct LazyRemote {
    s: RemoteSettings,
    http: OnceLock<Result<HttpRemote, String>>,
}

impl LazyRemote {
    fn client(&self) -> Result<&HttpRemote, RemoteError> {
        self.http
            .get_or_init(|| HttpRemote::new(self.s.clone(), Limits::default()))
            .as_ref()
            .map_err(|e| RemoteError::Unavailable(e.clone()))
    }
}

impl Remote for LazyRemote {
    fn describe(&self) -> String {
        self.s.url.clone()
    }

    fn get(&self, id: &ArtifactId) -> Result<Option<Artifact>, RemoteError> {
        self.client()?.get(id)
    }

    fn put(&self, id: &ArtifactId, a: &Artifact) -> Result<(), RemoteError> {
        self.client()?.put(id, a)
    }

    fn status(&self) -> Result<(), RemoteError> {
        self.client()?.status()
    }

    fn query(&self, keys: &[String]) -> Result<Option<Vec<bool>>, RemoteError> {
        self.client()?.query(keys)
    }

    fn events(&self, session: &str, events: &[CacheEvent]) -> Result<(), RemoteError> {
        self.client()?.events(session, events)
    }
}

/// A remote cache over HTTP.
pub struct HttpRemote {
    http: Http,
    s: RemoteSettings,
    limits: Limits,
    /// The server has no batch query (404/405 once): not asked again.
    no_query: AtomicBool,
}

fn unavailable(e: reqwest::Error) -> RemoteError {
    let what = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            src = inner.source();
        }
        s
    };
    RemoteError::Unavailable(what)
}

impl HttpRemote {
    pub fn new(s: RemoteSettings, limits: Limits) -> Result<HttpRemote, String> {
        if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
            return Err(format!("{:?} is not an http:// or https:// URL", s.url));
        }
        let http = Http::builder()
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("vx/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(HttpRemote {
            http,
            s,
            limits,
            no_query: AtomicBool::new(false),
        })
    }

    fn base(&self) -> &str {
        self.s.url.trim_end_matches('/')
    }

    /// turbo's team query: `teamId=team_…` or `slug=…`.
    fn team_query(&self) -> Vec<(&'static str, String)> {
        match &self.s.team {
            Some(t) if t.starts_with("team_") => vec![("teamId", t.clone())],
            Some(t) => vec![("slug", t.clone())],
            None => Vec::new(),
        }
    }

    /// The team id turbo folds into a signature (empty for a slug).
    fn signing_team(&self) -> &[u8] {
        match &self.s.team {
            Some(t) if t.starts_with("team_") => t.as_bytes(),
            _ => b"",
        }
    }

    /// A turbo endpoint under `/v8/artifacts` (`rest`: `""`, `/status`,
    /// `/events`, `/<hash>`) with the team's query.
    fn turbo_url(&self, rest: &str) -> String {
        let q: Vec<String> = self
            .team_query()
            .into_iter()
            .map(|(k, v)| format!("{k}={}", encode(&v)))
            .collect();
        let q = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        format!("{}/v8/artifacts{rest}{q}", self.base())
    }

    fn url(&self, key: &str) -> String {
        match self.s.protocol {
            RemoteProtocol::Turbo => self.turbo_url(&format!("/{key}")),
            RemoteProtocol::Nx => format!("{}/v1/cache/{key}", self.base()),
        }
    }

    fn request(&self, method: reqwest::Method, key: &str) -> reqwest::blocking::RequestBuilder {
        self.authed(self.http.request(method, self.url(key)))
    }

    fn authed(
        &self,
        mut rb: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        if let Some(t) = &self.s.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// A small JSON answer (at most 4 MiB).
    fn read_json(&self, resp: Response) -> Result<serde_json::Value, RemoteError> {
        let mut body = Vec::new();
        resp.take(4 << 20)
            .read_to_end(&mut body)
            .map_err(|e| RemoteError::Unavailable(format!("reading the answer: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| RemoteError::Unavailable(format!("the answer is not JSON: {e}")))
    }

    /// The body of a hit, within [`Limits::max_body`].
    fn read_body(&self, mut resp: Response) -> Result<Vec<u8>, RemoteError> {
        let cap = self.limits.max_body;
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(RemoteError::Refused(format!(
                "the artifact is larger than {cap} bytes"
            )));
        }
        let mut body = Vec::new();
        (&mut resp)
            .take(cap + 1)
            .read_to_end(&mut body)
            .map_err(|e| RemoteError::Unavailable(format!("reading the artifact: {e}")))?;
        if body.len() as u64 > cap {
            return Err(RemoteError::Refused(format!(
                "the artifact is larger than {cap} bytes"
            )));
        }
        Ok(body)
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn status_error(what: &str, st: StatusCode) -> RemoteError {
    let hint = match st.as_u16() {
        401 => " (is the token right?)",
        403 => " (the token may not do this)",
        _ => "",
    };
    RemoteError::Unavailable(format!("{what} answered {st}{hint}"))
}

impl Remote for HttpRemote {
    fn describe(&self) -> String {
        self.s.url.clone()
    }

    /// turbo's `GET /v8/artifacts/status`: `{"status": "enabled" |
    /// "disabled" | "over_limit" | "paused"}`. A server without the
    /// endpoint (404) and Nx's API count as enabled.
    fn status(&self) -> Result<(), RemoteError> {
        if self.s.protocol != RemoteProtocol::Turbo {
            return Ok(());
        }
        let resp = self
            .authed(self.http.get(self.turbo_url("/status")))
            .send()
            .map_err(unavailable)?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => return Ok(()),
            st => return Err(status_error("GET /v8/artifacts/status", st)),
        }
        let v = self.read_json(resp)?;
        match v.get("status").and_then(|s| s.as_str()) {
            Some("enabled") => Ok(()),
            Some(other) => Err(RemoteError::Unavailable(format!(
                "remote caching is {} for this token and team",
                other.replace('_', " ")
            ))),
            None => Err(RemoteError::Unavailable(
                "GET /v8/artifacts/status answered without a status".into(),
            )),
        }
    }

    /// turbo's batch query `POST /v8/artifacts` `{"hashes": [...]}`: an
    /// object by hash, each an artifact's `{size, taskDurationMs, tag}`, an
    /// `{error}` or null. `None` for Nx and for a server without it.
    fn query(&self, keys: &[String]) -> Result<Option<Vec<bool>>, RemoteError> {
        if self.s.protocol != RemoteProtocol::Turbo || self.no_query.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let body = serde_json::json!({ "hashes": keys }).to_string();
        let resp = self
            .authed(self.http.post(self.turbo_url("")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .map_err(unavailable)?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                self.no_query.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            st => return Err(status_error("POST /v8/artifacts", st)),
        }
        let v = self.read_json(resp)?;
        let Some(map) = v.as_object() else {
            return Err(RemoteError::Unavailable(
                "POST /v8/artifacts answered something other than an object".into(),
            ));
        };
        // Only a well-formed artifact counts as present; an entry missing
        // from the answer is unknown, which is not "absent": ask for it.
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            match map.get(k) {
                Some(e) if e.get("size").is_some_and(|s| s.is_u64()) => out.push(true),
                Some(serde_json::Value::Null) => out.push(false),
                Some(e) if e.get("error").is_some() => out.push(false),
                _ => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// turbo's `POST /v8/artifacts/events`: `[{sessionId, source, event,
    /// hash, duration}]`, within [`EVENTS_TIMEOUT`].
    fn events(&self, session: &str, events: &[CacheEvent]) -> Result<(), RemoteError> {
        if self.s.protocol != RemoteProtocol::Turbo || events.is_empty() {
            return Ok(());
        }
        let body: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "sessionId": session,
                    "source": match e.source { EventSource::Local => "LOCAL", EventSource::Remote => "REMOTE" },
                    "event": if e.hit { "HIT" } else { "MISS" },
                    "hash": e.key,
                    "duration": e.duration_ms,
                })
            })
            .collect();
        let resp = self
            .authed(self.http.post(self.turbo_url("/events")))
            .timeout(EVENTS_TIMEOUT)
            .header("content-type", "application/json")
            .body(serde_json::Value::Array(body).to_string())
            .send()
            .map_err(unavailable)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_error("POST /v8/artifacts/events", resp.status()))
        }
    }

    fn get(&self, id: &ArtifactId) -> Result<Option<Artifact>, RemoteError> {
        let resp = self
            .request(reqwest::Method::GET, id.key)
            .send()
            .map_err(unavailable)?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            st => return Err(status_error("GET", st)),
        }
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let tag = header("x-artifact-tag");
        let duration_ms = header("x-artifact-duration")
            .and_then(|d| d.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let body = self.read_body(resp)?;
        if let Some(k) = &self.s.signature_key {
            let Some(tag) = tag else {
                return Err(RemoteError::Refused(
                    "the artifact has no signature (x-artifact-tag) and a signature key is set"
                        .into(),
                ));
            };
            if !sign::verify(k, id.key, self.signing_team(), &body, &tag) {
                return Err(RemoteError::Refused(
                    "its signature does not verify with this signature key".into(),
                ));
            }
        }
        let mut a = archive::unpack(&body, id, &self.limits).map_err(RemoteError::Refused)?;
        a.duration_ms = duration_ms;
        Ok(Some(a))
    }

    fn put(&self, id: &ArtifactId, a: &Artifact) -> Result<(), RemoteError> {
        let body = archive::pack(a, id).map_err(|e| RemoteError::Refused(e.to_string()))?;
        let mut rb = self
            .request(reqwest::Method::PUT, id.key)
            .header("content-type", "application/octet-stream")
            .header("x-artifact-duration", a.duration_ms.to_string());
        if let Some(k) = &self.s.signature_key {
            rb = rb.header(
                "x-artifact-tag",
                sign::tag(k, id.key, self.signing_team(), &body),
            );
        }
        let resp = rb.body(body).send().map_err(unavailable)?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            // Written by someone else first: never overwritten, not an error.
            StatusCode::CONFLICT => Ok(()),
            StatusCode::FORBIDDEN => Err(RemoteError::WriteDenied(
                "the server refused the upload (403: a read-only token?)".into(),
            )),
            st => Err(status_error("PUT", st)),
        }
    }
}
