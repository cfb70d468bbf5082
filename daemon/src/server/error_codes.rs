//! `server::error_codes` — the one place engine error kinds become
//! protocol error codes.
//!
//! Owns: the mapping [`code_of`] from [`ErrorKind`] to the stable
//! `vx_proto::codes`, and [`rpc_error`], an [`EngineError`] as a JSON-RPC
//! error. Never: decides a kind (the engine does) or changes a code a
//! client relies on (`docs/protocol.md` lists them).

use crate::error::{EngineError, ErrorKind};
use vx_proto::{RpcError, codes};

/// The stable protocol code of an error kind.
pub fn code_of(kind: ErrorKind) -> i64 {
    match kind {
        ErrorKind::InvalidParams => codes::INVALID_PARAMS,
        ErrorKind::Config => codes::CONFIG_ERROR,
        ErrorKind::NotFound => codes::NOT_FOUND,
        ErrorKind::Cycle => codes::CYCLE,
        ErrorKind::Cancelled => codes::CANCELLED,
        ErrorKind::Cache => codes::CACHE_ERROR,
        ErrorKind::Git => codes::GIT_ERROR,
        ErrorKind::User => codes::USER_ERROR,
        ErrorKind::WrongWorkspace => codes::WRONG_WORKSPACE,
        ErrorKind::NeedsTerminal => codes::NEEDS_TERMINAL,
        ErrorKind::NeedsNoDaemon => codes::NEEDS_NO_DAEMON,
        ErrorKind::Internal => codes::INTERNAL_ERROR,
    }
}

/// An engine error as the JSON-RPC error a client gets.
pub fn rpc_error(e: EngineError) -> RpcError {
    let mut r = RpcError::new(code_of(e.kind), e.message);
    r.data = e.data;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind has its own code, except the two names of one outcome
    /// (the client re-sends to the foreground engine either way).
    #[test]
    fn kinds_map_to_their_documented_codes() {
        let cases = [
            (ErrorKind::InvalidParams, -32602),
            (ErrorKind::Config, -32001),
            (ErrorKind::NotFound, -32002),
            (ErrorKind::Cycle, -32003),
            (ErrorKind::Cancelled, -32004),
            (ErrorKind::Cache, -32006),
            (ErrorKind::Git, -32007),
            (ErrorKind::User, -32008),
            (ErrorKind::WrongWorkspace, -32009),
            (ErrorKind::NeedsTerminal, -32010),
            (ErrorKind::NeedsNoDaemon, -32010),
            (ErrorKind::Internal, -32603),
        ];
        for (kind, code) in cases {
            assert_eq!(code_of(kind), code, "{kind:?}");
        }
        let e = rpc_error(
            EngineError::new(ErrorKind::WrongWorkspace, "elsewhere")
                .with_data(serde_json::json!({"root": "/w"})),
        );
        assert_eq!((e.code, e.message.as_str()), (-32009, "elsewhere"));
        assert_eq!(e.data, Some(serde_json::json!({"root": "/w"})));
    }
}
