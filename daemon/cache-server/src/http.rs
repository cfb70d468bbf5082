//! `http` — the routes: turbo's `/v8/artifacts` (status, HEAD/GET/PUT of
//! one artifact, the batch query, events) and Nx's `/v1/cache/{hash}`,
//! plus `/health` and `/metrics`. Every artifact route needs a bearer
//! token; uploads need a `write` token and go to its namespace; downloads
//! look in the namespaces it reads. An upload is streamed in within
//! `--max-artifact-size` (413 past it), its signature checked when a key
//! is configured, and stored only if no artifact of that hash exists
//! (409 otherwise).
//! Never: serves or stores a path built from unchecked input (hashes and
//! teams are checked against tight character sets).

// A handler's early return is its response: built once per request, not
// worth boxing.
#![allow(clippy::result_large_err)]

use crate::auth::{Grant, Role, Tokens, valid_name};
use crate::metrics::Metrics;
use crate::store::{Content, Found, Meta, Store, StoreError, artifact_path, now_ms};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::Semaphore;

pub struct App {
    pub store: Arc<Store>,
    pub tokens: Tokens,
    pub metrics: Metrics,
    pub signature_key: Option<Vec<u8>>,
    pub max_artifact: u64,
    /// Bounds the memory held by uploads in flight: one permit per MiB.
    pub upload_budget: Semaphore,
    pub upload_budget_mib: u32,
}

type S = State<Arc<App>>;

/// A turbo request's team (`teamId` or `slug`).
#[derive(Deserialize, Default)]
pub struct TeamQuery {
    #[serde(rename = "teamId")]
    team_id: Option<String>,
    slug: Option<String>,
}

impl TeamQuery {
    fn team(&self) -> Result<String, Response> {
        let t = self
            .team_id
            .as_deref()
            .or(self.slug.as_deref())
            .unwrap_or("_");
        if t == "_" || valid_name(t) {
            Ok(t.to_string())
        } else {
            Err(err(StatusCode::BAD_REQUEST, "invalid team"))
        }
    }

    /// The team id turbo folds into a signature (empty for a slug).
    fn signing_team(&self) -> &[u8] {
        self.team_id.as_deref().unwrap_or("").as_bytes()
    }
}

fn err(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"error": {"message": message}}).to_string(),
    )
        .into_response()
}

fn valid_hash(h: &str) -> bool {
    !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn grant<'a>(app: &'a App, headers: &HeaderMap) -> Result<&'a Grant, Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    app.tokens
        .check(auth)
        .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "a valid bearer token is required"))
}

fn done(app: &App, route: &'static str, r: Response) -> Response {
    app.metrics.request(route, r.status().as_u16());
    r
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v8/artifacts/status", get(status))
        .route("/v8/artifacts/events", post(events))
        .route("/v8/artifacts", post(query))
        .route(
            "/v8/artifacts/{hash}",
            get(turbo_get).head(turbo_head).put(turbo_put),
        )
        .route("/v1/cache/{hash}", get(nx_get).put(nx_put))
        .with_state(app)
}

async fn health(State(app): S) -> Response {
    let loaded = app.store.loaded.load(Relaxed);
    done(
        &app,
        "health",
        axum::Json(serde_json::json!({"status": "ok", "indexed": loaded})).into_response(),
    )
}

async fn metrics(State(app): S) -> Response {
    let (bytes, n) = app.store.totals();
    let body = app.metrics.render(bytes, n);
    done(
        &app,
        "metrics",
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
    )
}

async fn status(State(app): S, headers: HeaderMap) -> Response {
    let r = match grant(&app, &headers) {
        Ok(_) => axum::Json(serde_json::json!({"status": "enabled"})).into_response(),
        Err(r) => r,
    };
    done(&app, "status", r)
}

/// Reads a small JSON body (at most 1 MiB).
async fn small_body(body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|_| err(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large"))
}

/// One of turbo's cache usage events (`POST /v8/artifacts/events`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // read for validation: a malformed event is a 400
struct UsageEvent {
    #[serde(default)]
    session_id: Option<String>,
    #[serde(deserialize_with = "one_of_source")]
    source: String,
    #[serde(deserialize_with = "one_of_event")]
    event: String,
    hash: String,
    #[serde(default)]
    duration: Option<u64>,
}

fn one_of<'de, D: serde::Deserializer<'de>>(d: D, allowed: &[&str]) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if allowed.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "{s:?} is not one of {allowed:?}"
        )))
    }
}

fn one_of_source<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    one_of(d, &["LOCAL", "REMOTE"])
}

fn one_of_event<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    one_of(d, &["HIT", "MISS"])
}

async fn events(State(app): S, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        grant(&app, &headers)?;
        let b = small_body(body).await?;
        let v: Vec<UsageEvent> = serde_json::from_slice(&b).map_err(|_| {
            err(
                StatusCode::BAD_REQUEST,
                "expected a JSON array of {sessionId, source: LOCAL|REMOTE, event: HIT|MISS, hash, duration}",
            )
        })?;
        for e in &v {
            app.metrics.event(e.source == "REMOTE", e.event == "HIT");
        }
        Ok::<_, Response>(StatusCode::OK.into_response())
    }
    .await;
    done(&app, "events", r.unwrap_or_else(|e| e))
}

/// Finds an artifact in the namespaces a grant reads; `touch` notes a
/// read of the one found.
async fn find(
    app: &App,
    g: &Grant,
    team: &str,
    hash: &str,
    touch: bool,
) -> Result<Option<(String, Found)>, Response> {
    for ns in &g.reads {
        let p = artifact_path(ns, team, hash);
        match app.store.lookup(&p, touch).await {
            Ok(Some(f)) => return Ok(Some((p, f))),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "store read failed");
                return Err(err(StatusCode::SERVICE_UNAVAILABLE, "the store failed"));
            }
        }
    }
    Ok(None)
}

#[derive(Deserialize)]
struct QueryBody {
    hashes: Vec<String>,
}

async fn query(
    State(app): S,
    Query(q): Query<TeamQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let g = grant(&app, &headers)?;
        let team = q.team()?;
        let b = small_body(body).await?;
        let qb: QueryBody = serde_json::from_slice(&b)
            .map_err(|_| err(StatusCode::BAD_REQUEST, "expected {\"hashes\": [...]}"))?;
        if qb.hashes.len() > 1000 {
            return Err(err(StatusCode::BAD_REQUEST, "at most 1000 hashes"));
        }
        let mut out = serde_json::Map::new();
        for h in qb.hashes {
            if !valid_hash(&h) {
                out.insert(h, serde_json::json!({"error": {"message": "invalid hash"}}));
                continue;
            }
            let v = match find(&app, g, &team, &h, false).await? {
                Some((_, m)) => serde_json::json!({
                    "size": m.size,
                    "taskDurationMs": m.duration_ms,
                    "tag": m.tag,
                }),
                None => serde_json::Value::Null,
            };
            out.insert(h, v);
        }
        Ok::<_, Response>(axum::Json(serde_json::Value::Object(out)).into_response())
    }
    .await;
    done(&app, "query", r.unwrap_or_else(|e| e))
}

fn artifact_headers(m: &Found) -> Vec<(header::HeaderName, HeaderValue)> {
    let mut h = vec![
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ),
        (
            header::HeaderName::from_static("x-artifact-duration"),
            HeaderValue::from(m.duration_ms),
        ),
    ];
    if let Some(t) = &m.tag
        && let Ok(v) = HeaderValue::from_str(t)
    {
        h.push((header::HeaderName::from_static("x-artifact-tag"), v));
    }
    h
}

async fn download(
    app: &App,
    headers: &HeaderMap,
    team: &str,
    hash: &str,
    body: bool,
) -> Result<Response, Response> {
    let g = grant(app, headers)?;
    if !valid_hash(hash) {
        return Err(err(StatusCode::BAD_REQUEST, "invalid hash"));
    }
    let Some((path, meta)) = find(app, g, team, hash, body).await? else {
        app.metrics.misses.fetch_add(1, Relaxed);
        return Err(err(StatusCode::NOT_FOUND, "no such artifact"));
    };
    let mut resp = if body {
        let Some((size, content)) = app.store.read(&path).await.map_err(|e| {
            tracing::warn!(error = %e, "store read failed");
            err(StatusCode::SERVICE_UNAVAILABLE, "the store failed")
        })?
        else {
            app.metrics.misses.fetch_add(1, Relaxed);
            return Err(err(StatusCode::NOT_FOUND, "no such artifact"));
        };
        app.metrics.hits.fetch_add(1, Relaxed);
        app.metrics.bytes_out.fetch_add(size, Relaxed);
        let mut r = Response::new(match content {
            Content::Whole(b) => Body::from(b),
            Content::Stream(s) => Body::from_stream(s),
        });
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        r
    } else {
        let mut r = Response::new(Body::empty());
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
        r
    };
    for (k, v) in artifact_headers(&meta) {
        resp.headers_mut().insert(k, v);
    }
    Ok(resp)
}

async fn turbo_get(
    State(app): S,
    UrlPath(hash): UrlPath<String>,
    Query(q): Query<TeamQuery>,
    headers: HeaderMap,
) -> Response {
    let r = match q.team() {
        Ok(team) => download(&app, &headers, &team, &hash, true).await,
        Err(e) => Err(e),
    };
    done(&app, "turbo_get", r.unwrap_or_else(|e| e))
}

async fn turbo_head(
    State(app): S,
    UrlPath(hash): UrlPath<String>,
    Query(q): Query<TeamQuery>,
    headers: HeaderMap,
) -> Response {
    let r = match q.team() {
        Ok(team) => download(&app, &headers, &team, &hash, false).await,
        Err(e) => Err(e),
    };
    done(&app, "turbo_head", r.unwrap_or_else(|e| e))
}

async fn nx_get(State(app): S, UrlPath(hash): UrlPath<String>, headers: HeaderMap) -> Response {
    let r = download(&app, &headers, "_", &hash, true).await;
    done(&app, "nx_get", r.unwrap_or_else(|e| e))
}

struct Upload<'a> {
    team: String,
    hash: String,
    signing_team: &'a [u8],
    api: &'static str,
}

async fn upload(
    app: &App,
    headers: &HeaderMap,
    u: Upload<'_>,
    body: Body,
) -> Result<Response, Response> {
    let g = grant(app, headers)?;
    if g.role != Role::Write {
        return Err(err(StatusCode::FORBIDDEN, "this token may only read"));
    }
    if !valid_hash(&u.hash) {
        return Err(err(StatusCode::BAD_REQUEST, "invalid hash"));
    }
    let hv = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let declared = hv("content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_artifact) {
        return Err(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the artifact is too large",
        ));
    }
    let path = artifact_path(&g.namespace, &u.team, &u.hash);
    // Early refusal; the create below decides races.
    if let Ok(Some(_)) = app.store.lookup(&path, false).await {
        app.metrics.conflicts.fetch_add(1, Relaxed);
        return Err(err(
            StatusCode::CONFLICT,
            "the artifact exists and is never overwritten",
        ));
    }
    let want = declared
        .unwrap_or(app.max_artifact)
        .div_ceil(1 << 20)
        .max(1);
    let permits = want.min(app.upload_budget_mib as u64) as u32;
    let _budget = app
        .upload_budget
        .acquire_many(permits)
        .await
        .map_err(|_| err(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let tag = hv("x-artifact-tag");
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(c) = stream.next().await {
        let c = c.map_err(|_| err(StatusCode::BAD_REQUEST, "the upload broke off"))?;
        size += c.len() as u64;
        if size > app.max_artifact {
            return Err(err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the artifact is too large",
            ));
        }
        chunks.push(c);
    }
    if let Some(k) = &app.signature_key {
        // turbo's "artifact-signature:v2": every field length-prefixed
        // (u64 little-endian), the body's length known only now.
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(k)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new_from_slice(b"").expect("empty key"));
        for field in [
            &b"artifact-signature:v2"[..],
            u.hash.as_bytes(),
            u.signing_team,
        ] {
            m.update(&(field.len() as u64).to_le_bytes());
            m.update(field);
        }
        m.update(&size.to_le_bytes());
        for c in &chunks {
            m.update(c);
        }
        use base64::Engine;
        let ok = tag
            .as_deref()
            .and_then(|t| {
                base64::engine::general_purpose::STANDARD
                    .decode(t.trim())
                    .ok()
            })
            .is_some_and(|want| m.verify_slice(&want).is_ok());
        if !ok {
            app.metrics.bad_signatures.fetch_add(1, Relaxed);
            tracing::warn!(token = %g.name, hash = %u.hash, "upload refused: bad or missing signature");
            return Err(err(
                StatusCode::BAD_REQUEST,
                "the artifact's signature (x-artifact-tag) does not verify",
            ));
        }
    }
    let meta = Meta {
        size,
        writer: g.name.clone(),
        namespace: g.namespace.clone(),
        created_ms: now_ms(),
        duration_ms: hv("x-artifact-duration")
            .and_then(|d| d.parse().ok())
            .unwrap_or(0),
        ci: hv("x-artifact-client-ci"),
        tag,
        user_agent: hv("user-agent"),
        api: u.api.to_string(),
    };
    match app.store.create(&path, chunks, &meta).await {
        Ok(()) => {
            app.metrics.uploads.fetch_add(1, Relaxed);
            app.metrics.bytes_in.fetch_add(size, Relaxed);
            tracing::info!(token = %g.name, namespace = %g.namespace, team = %u.team, hash = %u.hash, size, "stored");
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Err(StoreError::Exists) => {
            app.metrics.conflicts.fetch_add(1, Relaxed);
            Err(err(
                StatusCode::CONFLICT,
                "the artifact exists and is never overwritten",
            ))
        }
        Err(StoreError::Os(e)) => {
            tracing::warn!(error = %e, "store write failed");
            Err(err(StatusCode::SERVICE_UNAVAILABLE, "the store failed"))
        }
    }
}

async fn turbo_put(
    State(app): S,
    UrlPath(hash): UrlPath<String>,
    Query(q): Query<TeamQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let team = q.team()?;
        let r = upload(
            &app,
            &headers,
            Upload {
                team,
                hash: hash.clone(),
                signing_team: q.signing_team(),
                api: "turbo",
            },
            body,
        )
        .await?;
        let _ = r;
        Ok::<_, Response>(
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({"urls": [format!("/v8/artifacts/{hash}")]})),
            )
                .into_response(),
        )
    }
    .await;
    done(&app, "turbo_put", r.unwrap_or_else(|e| e))
}

async fn nx_put(
    State(app): S,
    UrlPath(hash): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = upload(
        &app,
        &headers,
        Upload {
            team: "_".into(),
            hash,
            signing_team: b"",
            api: "nx",
        },
        body,
    )
    .await
    .map(|_| StatusCode::OK.into_response());
    done(&app, "nx_put", r.unwrap_or_else(|e| e))
}
