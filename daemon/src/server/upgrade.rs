//! `server::upgrade` — handing a connection of the NDJSON transport to
//! another protocol served over the same byte stream (`daemon.upgrade`).
//!
//! Owns: the process-wide registry of protocol handlers (a crate of the
//! `vxd` binary registers one with [`on_upgrade`] or
//! [`super::attach::Door::on_upgrade`]; the MCP crate registers `mcp`), and
//! [`Upgraded`], what a handler gets: the connection's reader (with any
//! bytes already read after the `daemon.upgrade` line in front) and writer,
//! the engine context, the caller's principal, the request's params and a
//! cancellation scope that a stopping engine cancels.
//!
//! Never: knows a protocol, or links one (the handlers live in their own
//! crates).

use super::Ctx;
use super::router::{BoxFuture, Cancel, Principal};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use tokio::io::{AsyncRead, AsyncWrite};

/// A connection handed to a protocol.
pub struct Upgraded {
    /// The connection's bytes from the peer.
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    /// The connection's bytes to the peer.
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
    pub ctx: Arc<Ctx>,
    /// Who is on the other end (as the NDJSON connection knew them).
    pub principal: Principal,
    /// The `daemon.upgrade` params as sent (`vx_proto::upgrade::UpgradeParams`).
    pub params: serde_json::Value,
    /// Cancelled when the engine stops (or the stdio engine gets a signal):
    /// the handler stops its work and returns.
    pub cancel: Cancel,
}

/// A protocol's handler: serves the connection until it closes (or
/// [`Upgraded::cancel`] fires).
pub type Handler = Arc<dyn Fn(Upgraded) -> BoxFuture<()> + Send + Sync>;

fn registry() -> &'static RwLock<BTreeMap<String, Handler>> {
    static R: OnceLock<RwLock<BTreeMap<String, Handler>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Registers (or replaces) the handler of `protocol`.
pub fn on_upgrade(
    protocol: &str,
    handler: impl Fn(Upgraded) -> BoxFuture<()> + Send + Sync + 'static,
) {
    if let Ok(mut r) = registry().write() {
        r.insert(protocol.to_string(), Arc::new(handler));
    }
}

/// The handler of `protocol`, when one is registered.
pub fn handler(protocol: &str) -> Option<Handler> {
    registry().read().ok()?.get(protocol).cloned()
}

/// The protocols a connection can switch to, sorted.
pub fn protocols() -> Vec<String> {
    registry()
        .read()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A protocol that answers each byte stream in upper case.
    fn register_shout() {
        on_upgrade("shout-test", |up| {
            Box::pin(async move {
                let Upgraded {
                    mut reader,
                    mut writer,
                    ..
                } = up;
                let mut buf = [0u8; 256];
                loop {
                    match tokio::io::AsyncReadExt::read(&mut reader, &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let up: Vec<u8> = buf[..n].to_ascii_uppercase();
                            if writer.write_all(&up).await.is_err() {
                                break;
                            }
                            let _ = writer.flush().await;
                        }
                    }
                }
            })
        });
    }

    #[tokio::test]
    async fn a_connection_switches_protocol_and_keeps_the_bytes_after_the_switch() {
        register_shout();
        assert!(protocols().contains(&"shout-test".to_string()));
        let (client, server) = tokio::io::duplex(1 << 16);
        let (sr, sw) = tokio::io::split(server);
        let (_sig, rx) = tokio::sync::mpsc::unbounded_channel();
        let served = tokio::spawn(super::super::serve(sr, sw, Ctx::stdio(), rx));
        let (cr, mut cw) = tokio::io::split(client);
        let mut lines = BufReader::new(cr);
        let hello = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "daemon.hello",
            "params": {"protocol": vx_proto::PROTOCOL_VERSION, "client_version": "t"}});
        let refused = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "daemon.upgrade",
            "params": {"protocol": "nope", "cwd": "/"}});
        let upgrade = serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "daemon.upgrade",
            "params": {"protocol": "shout-test", "cwd": "/"}});
        // The switch and the other protocol's first bytes in one write.
        let first = format!("{hello}\n{refused}\n{upgrade}\nping\npar");
        cw.write_all(first.as_bytes()).await.unwrap();
        let mut line = String::new();
        for want in ["\"id\":1", "not switch a connection to `nope`", "\"id\":3"] {
            line.clear();
            lines.read_line(&mut line).await.unwrap();
            assert!(line.contains(want), "{want}: {line}");
        }
        assert!(line.contains("shout-test"), "{line}");
        cw.write_all(b"tial\n").await.unwrap();
        let mut got = String::new();
        while !got.ends_with("PARTIAL\n") {
            line.clear();
            assert!(
                lines.read_line(&mut line).await.unwrap() > 0,
                "closed: {got}"
            );
            got.push_str(&line);
        }
        assert_eq!(got, "PING\nPARTIAL\n");
        // The peer closes: the protocol's handler ends, and so does serve.
        cw.shutdown().await.unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), served)
            .await
            .expect("serve ended")
            .unwrap()
            .unwrap();
        assert!(!r, "an upgraded connection never asks the engine to stop");
    }
}
