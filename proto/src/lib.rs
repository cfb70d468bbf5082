//! `vx-proto` — the contract between the `vx` client and the `vxd` engine.
//!
//! This crate owns the wire: JSON-RPC 2.0 envelopes, one message per line
//! (NDJSON), the method names, their parameter and result types, the run
//! events, the stable error codes and the [`Digest`] type. It depends on
//! nothing of ours, and it is the *only* thing the client and the daemon share.
//! It never does I/O: [`framing::LineFramer`] turns bytes into lines and
//! [`Message::decode`] turns a line into a message; the caller owns the socket.

pub mod catalogue;
pub mod framing;
pub mod history;
pub mod init;
pub mod knobs;
pub mod live;
pub mod methods;
pub mod paths;
pub mod plugins;
pub mod upgrade;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use methods::*;

/// With the `schema` feature, the bound every wire type meets
/// (`schemars::JsonSchema`); without it, no bound at all.
#[cfg(feature = "schema")]
pub trait MaybeSchema: schemars::JsonSchema {}
#[cfg(feature = "schema")]
impl<T: schemars::JsonSchema> MaybeSchema for T {}
/// With the `schema` feature, the bound every wire type meets
/// (`schemars::JsonSchema`); without it, no bound at all.
#[cfg(not(feature = "schema"))]
pub trait MaybeSchema {}
#[cfg(not(feature = "schema"))]
impl<T> MaybeSchema for T {}

/// Version of the wire protocol. Bumped on any incompatible change to a
/// method, a parameter, a result or an event.
pub const PROTOCOL_VERSION: u32 = 1;

/// The JSON-RPC version string every envelope carries.
pub const JSONRPC: &str = "2.0";

/// A content digest as in the Bazel Remote Execution API: the blake3 hash of
/// the bytes (lower-case hex) and their length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Digest {
    pub hash: String,
    pub size_bytes: u64,
}

/// A request id: JSON-RPC allows numbers, strings and (discouraged, but
/// valid) `null`. A request whose `id` is `null` is still a request: it is
/// answered with `"id": null`. Only a message without an `id` member is a
/// notification.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Id {
    Num(i64),
    Str(String),
    Null,
}

/// A JSON-RPC error object. `code` is one of [`codes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// Stable error codes. The JSON-RPC reserved range is used for envelope
/// problems; vx's own errors live in -32000..=-32099.
pub mod codes {
    /// The line is not valid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Valid JSON, but not a JSON-RPC 2.0 request.
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    /// A bug in the engine (a handler panicked or returned an unexpected error).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The workspace configuration is invalid (file, line and field in the message).
    pub const CONFIG_ERROR: i64 = -32001;
    /// A requested task, project or filter matched nothing.
    pub const NOT_FOUND: i64 = -32002;
    /// The task graph has a cycle (its path is in the message).
    pub const CYCLE: i64 = -32003;
    /// The run was cancelled (by a signal, `run.cancel` or a disconnect).
    pub const CANCELLED: i64 = -32004;
    /// `daemon.hello` was not the first request, or the protocol versions differ.
    pub const PROTOCOL_MISMATCH: i64 = -32005;
    /// The cache could not be opened or written.
    pub const CACHE_ERROR: i64 = -32006;
    /// A git operation needed by `--affected` failed.
    pub const GIT_ERROR: i64 = -32007;
    /// Any other user-facing error (bad flag value, unreadable file, ...).
    pub const USER_ERROR: i64 = -32008;
    /// The request's `cwd` belongs to another workspace than this daemon's;
    /// `data.root` names the right one.
    pub const WRONG_WORKSPACE: i64 = -32009;
    /// The request must be served by the no-daemon engine: the run would
    /// give an interactive task the client's terminal, which a daemon does
    /// not have, or the client's `VX_CACHE_DIR` names another cache than the
    /// daemon's. The client re-sends it to `vxd --stdio`.
    pub const NEEDS_TERMINAL: i64 = -32010;
    /// [`NEEDS_TERMINAL`] under the name that says what the client does.
    pub const NEEDS_NO_DAEMON: i64 = NEEDS_TERMINAL;
    /// The caller's principal was not granted the scope the method needs
    /// (`data.scope` names it).
    pub const FORBIDDEN: i64 = -32011;
}

/// One JSON-RPC 2.0 message: a request (has `id` and `method`), a
/// notification (`method`, no `id`) or a response (`id`, `result` or `error`).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Id,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    Response {
        id: Option<Id>,
        result: Result<Value, RpcError>,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    jsonrpc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<RpcError>,
}

impl Message {
    pub fn request(id: Id, method: &str, params: impl Serialize) -> Self {
        Message::Request {
            id,
            method: method.to_string(),
            params: serde_json::to_value(params).unwrap_or(Value::Null),
        }
    }

    pub fn notification(method: &str, params: impl Serialize) -> Self {
        Message::Notification {
            method: method.to_string(),
            params: serde_json::to_value(params).unwrap_or(Value::Null),
        }
    }

    pub fn ok(id: Id, result: impl Serialize) -> Self {
        Message::Response {
            id: Some(id),
            result: Ok(serde_json::to_value(result).unwrap_or(Value::Null)),
        }
    }

    pub fn err(id: Option<Id>, error: RpcError) -> Self {
        Message::Response {
            id,
            result: Err(error),
        }
    }

    /// Parses one line (without its newline). A line that is not JSON gives a
    /// `PARSE_ERROR`, JSON that is not a JSON-RPC 2.0 message an
    /// `INVALID_REQUEST` (a batch — a JSON array — too: batches are not
    /// supported); both are meant to be answered with [`Message::err`] and an
    /// id of `None`, after which the connection goes on. `"id": null` makes a
    /// request ([`Id::Null`]), not a notification.
    pub fn decode(line: &[u8]) -> Result<Message, RpcError> {
        let v = serde_json::from_slice::<Value>(line)
            .map_err(|e| RpcError::new(codes::PARSE_ERROR, format!("parse error: {e}")))?;
        if v.is_array() {
            return Err(RpcError::new(
                codes::INVALID_REQUEST,
                "batch requests are not supported: send one JSON-RPC request per line",
            ));
        }
        let has_id = v.as_object().is_some_and(|o| o.contains_key("id"));
        let env: Envelope = serde_json::from_value(v).map_err(|e| {
            RpcError::new(
                codes::INVALID_REQUEST,
                format!("not a JSON-RPC 2.0 message: {e}"),
            )
        })?;
        if env.jsonrpc != JSONRPC {
            return Err(RpcError::new(
                codes::INVALID_REQUEST,
                format!("unsupported jsonrpc version {:?}", env.jsonrpc),
            ));
        }
        let id = match env.id {
            // `Option<Value>` reads `null` as absent: tell them apart here.
            None | Some(Value::Null) => has_id.then_some(Id::Null),
            Some(v) => Some(serde_json::from_value::<Id>(v).map_err(|_| {
                RpcError::new(
                    codes::INVALID_REQUEST,
                    "id must be a number, a string or null",
                )
            })?),
        };
        // A response's `"id": null` means "unknown request" (as before).
        let id_of_response = |id: Option<Id>| id.filter(|i| *i != Id::Null);
        match (env.method, id, env.result, env.error) {
            (Some(method), Some(id), None, None) => Ok(Message::Request {
                id,
                method,
                params: env.params.unwrap_or(Value::Null),
            }),
            (Some(method), None, None, None) => Ok(Message::Notification {
                method,
                params: env.params.unwrap_or(Value::Null),
            }),
            (None, id, Some(result), None) => Ok(Message::Response {
                id: id_of_response(id),
                result: Ok(result),
            }),
            (None, id, None, Some(error)) => Ok(Message::Response {
                id: id_of_response(id),
                result: Err(error),
            }),
            _ => Err(RpcError::new(
                codes::INVALID_REQUEST,
                "a message has either a method, or exactly one of result and error",
            )),
        }
    }

    /// Serialises the message as one line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let env = match self {
            Message::Request { id, method, params } => Envelope {
                jsonrpc: JSONRPC.into(),
                id: serde_json::to_value(id).ok(),
                method: Some(method.clone()),
                params: Some(params.clone()),
                result: None,
                error: None,
            },
            Message::Notification { method, params } => Envelope {
                jsonrpc: JSONRPC.into(),
                id: None,
                method: Some(method.clone()),
                params: Some(params.clone()),
                result: None,
                error: None,
            },
            Message::Response { id, result } => Envelope {
                jsonrpc: JSONRPC.into(),
                id: Some(
                    id.as_ref()
                        .and_then(|i| serde_json::to_value(i).ok())
                        .unwrap_or(Value::Null),
                ),
                method: None,
                params: None,
                result: result.as_ref().ok().cloned(),
                error: result.as_ref().err().cloned(),
            },
        };
        // Serialising these plain values cannot fail; fall back to an
        // internal-error line rather than panicking if it ever does.
        let mut out = serde_json::to_vec(&env).unwrap_or_else(|_| {
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"encode failed"}}"#
                .to_vec()
        });
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_every_kind() {
        let msgs = vec![
            Message::request(Id::Num(1), "daemon.hello", json!({"protocol": 1})),
            Message::request(Id::Str("a".into()), "run.start", json!({})),
            Message::notification("run.event", json!({"x": 1})),
            Message::ok(Id::Num(7), json!({"ok": true})),
            Message::err(None, RpcError::new(codes::PARSE_ERROR, "bad")),
        ];
        for m in msgs {
            let line = m.encode();
            assert_eq!(*line.last().unwrap(), b'\n');
            let back = Message::decode(&line[..line.len() - 1]).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn garbage_gives_stable_codes() {
        assert_eq!(
            Message::decode(b"{not json").unwrap_err().code,
            codes::PARSE_ERROR
        );
        assert_eq!(
            Message::decode(b"[1,2]").unwrap_err().code,
            codes::INVALID_REQUEST
        );
        assert_eq!(
            Message::decode(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#)
                .unwrap_err()
                .code,
            codes::INVALID_REQUEST
        );
        assert_eq!(
            Message::decode(br#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#)
                .unwrap_err()
                .code,
            codes::INVALID_REQUEST
        );
    }

    #[test]
    fn null_id_is_a_request_and_is_answered_with_null() {
        let m =
            Message::decode(br#"{"jsonrpc":"2.0","id":null,"method":"daemon.status"}"#).unwrap();
        assert_eq!(
            m,
            Message::Request {
                id: Id::Null,
                method: "daemon.status".into(),
                params: Value::Null
            }
        );
        let reply = Message::ok(Id::Null, json!({}));
        let v: Value = serde_json::from_slice(&reply.encode()).unwrap();
        assert_eq!(v["id"], Value::Null);
        assert!(v.as_object().unwrap().contains_key("id"));
        // Without an `id` member it stays a notification.
        assert!(matches!(
            Message::decode(br#"{"jsonrpc":"2.0","method":"run.cancel"}"#).unwrap(),
            Message::Notification { .. }
        ));
        // A response with `"id": null` answers no known request.
        assert!(matches!(
            Message::decode(br#"{"jsonrpc":"2.0","id":null,"result":1}"#).unwrap(),
            Message::Response { id: None, .. }
        ));
    }

    #[test]
    fn batches_get_a_clear_error() {
        for batch in [&b"[]"[..], br#"[{"jsonrpc":"2.0","id":1,"method":"m"}]"#] {
            let e = Message::decode(batch).unwrap_err();
            assert_eq!(e.code, codes::INVALID_REQUEST);
            assert!(
                e.message.contains("batch requests are not supported"),
                "{e}"
            );
        }
    }
}
