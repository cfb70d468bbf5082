//! `auth` — the guard every HTTP request passes.
//!
//! Owns: the checks, in order (the token itself is the daemon's, made once
//! by [`vxd::server::attach::Door::token`] and shared with the worker
//! links): the `Host` must name the server on loopback (`127.0.0.1:PORT`,
//! `localhost:PORT`, `[::1]:PORT`: a DNS rebinding page sends its own name
//! and is refused), an `Origin` (when
//! sent) must be the server's own (a foreign page's WebSocket, SSE or POST
//! is refused), then the token (`Authorization: Bearer`, or `?token=` where
//! a browser API cannot set headers) on every route but `GET /health`.
//!
//! Never: logs or echoes the token, or lets a request through on a partial
//! match.

use crate::Shared;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// A fresh token (the daemon's is made once, by [`vxd::server::attach::Door::token`]).
pub fn new_token() -> anyhow::Result<String> {
    Ok(vxd::server::attach::new_token()?)
}

pub use vxd::server::attach::constant_time_eq;

/// The server's token and port.
pub struct Guard {
    token: String,
    port: u16,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a loopback `Host` for this port (403).
    Host,
    /// An `Origin` other than the server's own (403).
    Origin,
    /// No token or a wrong one (401).
    Token,
}

impl Guard {
    pub fn new(token: String, port: u16) -> Guard {
        Guard { token, port }
    }

    /// Whether `host` names this server on loopback.
    pub fn host_ok(&self, host: &str) -> bool {
        let p = self.port.to_string();
        ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .any(|h| host.strip_prefix(h).and_then(|r| r.strip_prefix(':')) == Some(p.as_str()))
    }

    /// Whether `origin` is this server's own.
    pub fn origin_ok(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|h| self.host_ok(h))
    }

    pub fn token_ok(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.token.as_bytes())
    }

    /// Checks one request (see the module doc).
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !self.host_ok(host) {
            return Err(Refusal::Host);
        }
        if let Some(o) = headers.get(header::ORIGIN)
            && !o.to_str().is_ok_and(|o| self.origin_ok(o))
        {
            return Err(Refusal::Origin);
        }
        if *method == Method::GET && path == "/health" {
            return Ok(());
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        let from_query = query.and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(|t| t.to_string())
        });
        match bearer.map(str::to_string).or(from_query) {
            Some(t) if self.token_ok(&t) => Ok(()),
            _ => Err(Refusal::Token),
        }
    }
}

/// The axum middleware around every route.
pub async fn middleware(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let uri = req.uri();
    match s
        .guard
        .check(req.method(), uri.path(), uri.query(), req.headers())
    {
        Ok(()) => {
            s.door.touch();
            next.run(req).await
        }
        Err(Refusal::Host) => (
            StatusCode::FORBIDDEN,
            "refused: Host is not this server on loopback\n",
        )
            .into_response(),
        Err(Refusal::Origin) => {
            (StatusCode::FORBIDDEN, "refused: foreign Origin\n").into_response()
        }
        Err(Refusal::Token) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong token: see docs/http.md (Authorization: Bearer, or ?token=)\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// method, path, query, headers, expected
    type Case<'a> = (
        &'a Method,
        &'a str,
        Option<&'a str>,
        &'a [(&'static str, &'a str)],
        Result<(), Refusal>,
    );

    #[test]
    fn requests_are_checked_in_order() {
        let g = Guard::new("s3cret".into(), 4242);
        let get = Method::GET;
        let post = Method::POST;
        let cases: &[Case] = &[
            (&get, "/health", None, &[("host", "127.0.0.1:4242")], Ok(())),
            (
                &get,
                "/health",
                None,
                &[("host", "evil.example:4242")],
                Err(Refusal::Host),
            ),
            (
                &get,
                "/version",
                None,
                &[("host", "127.0.0.1:4242")],
                Err(Refusal::Token),
            ),
            (
                &get,
                "/version",
                Some("token=s3cret"),
                &[("host", "localhost:4242")],
                Ok(()),
            ),
            (
                &get,
                "/version",
                Some("a=1&token=s3cret"),
                &[("host", "[::1]:4242")],
                Ok(()),
            ),
            (
                &get,
                "/version",
                Some("token=s3cre"),
                &[("host", "127.0.0.1:4242")],
                Err(Refusal::Token),
            ),
            (
                &get,
                "/version",
                None,
                &[
                    ("host", "127.0.0.1:4242"),
                    ("authorization", "Bearer s3cret"),
                ],
                Ok(()),
            ),
            (
                &get,
                "/version",
                None,
                &[
                    ("host", "127.0.0.1:4243"),
                    ("authorization", "Bearer s3cret"),
                ],
                Err(Refusal::Host),
            ),
            (
                &get,
                "/version",
                None,
                &[("host", "127.0.0.1"), ("authorization", "Bearer s3cret")],
                Err(Refusal::Host),
            ),
            (
                &get,
                "/version",
                None,
                &[
                    ("host", "127.0.0.1:42420"),
                    ("authorization", "Bearer s3cret"),
                ],
                Err(Refusal::Host),
            ),
            (
                &get,
                "/version",
                None,
                &[("authorization", "Bearer s3cret")],
                Err(Refusal::Host),
            ),
            (
                &get,
                "/events",
                None,
                &[
                    ("host", "127.0.0.1:4242"),
                    ("origin", "http://127.0.0.1:4242"),
                    ("authorization", "Bearer s3cret"),
                ],
                Ok(()),
            ),
            (
                &get,
                "/events",
                None,
                &[
                    ("host", "127.0.0.1:4242"),
                    ("origin", "http://evil.example"),
                    ("authorization", "Bearer s3cret"),
                ],
                Err(Refusal::Origin),
            ),
            (
                &post,
                "/rpc",
                None,
                &[
                    ("host", "127.0.0.1:4242"),
                    ("origin", "null"),
                    ("authorization", "Bearer s3cret"),
                ],
                Err(Refusal::Origin),
            ),
            (
                &post,
                "/rpc",
                None,
                &[
                    ("host", "127.0.0.1:4242"),
                    ("origin", "https://127.0.0.1:4242"),
                    ("authorization", "Bearer s3cret"),
                ],
                Err(Refusal::Origin),
            ),
            (
                &post,
                "/health",
                None,
                &[("host", "127.0.0.1:4242")],
                Err(Refusal::Token),
            ),
        ];
        for (i, (m, path, q, h, want)) in cases.iter().enumerate() {
            assert_eq!(
                g.check(m, path, *q, &headers(h)),
                *want,
                "case {i}: {m} {path} {h:?}"
            );
        }
    }

    #[test]
    fn tokens_are_long_random_hex() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(constant_time_eq(a.as_bytes(), a.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b.as_bytes()));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
