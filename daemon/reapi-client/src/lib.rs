//! `vxd-reapi` — vx's remote cache over the Bazel Remote Execution API:
//! the engine's [`vxd::cache::remote::Remote`] backed by a REAPI server's
//! ActionCache, CAS and ByteStream (BuildGrid, Buildbarn, BuildBuddy,
//! NativeLink, `vx cache serve`), over tonic. The `vxd` binary calls
//! [`register`] at start-up; a run uses it when `[remote_execution]` (or
//! `VX_REAPI_ENDPOINT`) names a server.
//!
//! A task's result is stored under the synthetic Action of its vx key
//! ([`action`]): its output files as CAS blobs, its links as output
//! symlinks, its log as the stdout blob. The order follows the spec as the
//! strictest servers read it: `FindMissingBlobs` first, every missing blob
//! uploaded (batches up to the server's limit and never above
//! [`vx_reapi::MAX_BATCH_BYTES`], larger blobs through ByteStream in
//! [`vx_reapi::CHUNK`] pieces) — the Action and its Command among them —
//! and only then `UpdateActionResult`, with `stdout_raw` never set.
//! A download checks every blob's SHA-256 and size and is bounded by
//! [`Limits`]; the engine then checks every path against the task's
//! declared outputs and restores through its confined restore.
//!
//! With `[remote_execution] execute = true` it also executes tasks
//! through the Execution service ([`exec`]): the task's inputs as a
//! Merkle tree ([`tree`]), its Command and an Action salted with its vx
//! key, `Execute` / `WaitExecution`, the result downloaded and checked
//! like a hit; the engine decides which tasks go and restores what comes
//! back through its own checks.
//!
//! Never: writes a file, turns a remote failure into anything but an error
//! the engine treats as a miss (with one warning), or sends a checkout path
//! or an environment value to the server.

pub mod action;
pub mod exec;
mod rpc;
pub mod tree;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use vxd::cache::remote::{
    Artifact, ArtifactId, Executed, Remote, RemoteError, RemoteJob, RemoteSettings,
    set_reapi_factory,
};

pub use rpc::Limits;

/// Registers this client with the engine (the `vxd` binary does, once).
pub fn register() {
    set_reapi_factory(|s| client_for(s).map(|c| c as Arc<dyn Remote>));
}

/// `grpc://h:p` / `http://h:p` → (`http://h:p`, plaintext);
/// `grpcs://h:p` / `https://h:p` → (`https://h:p`, TLS).
pub fn endpoint_uri(url: &str) -> Result<(String, bool), String> {
    for (scheme, tls) in [
        ("grpc://", false),
        ("http://", false),
        ("grpcs://", true),
        ("https://", true),
    ] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let rest = rest.trim_end_matches('/');
            if rest.is_empty() || rest.contains(char::is_whitespace) || rest.contains('/') {
                break;
            }
            let s = if tls { "https" } else { "http" };
            return Ok((format!("{s}://{rest}"), tls));
        }
    }
    Err(format!(
        "{url:?} is not a grpc://HOST:PORT or grpcs://HOST:PORT address"
    ))
}

/// One client per distinct settings, kept for the process's life (its
/// runtime and connections are reused across runs; a run served from the
/// local cache never builds one).
fn client_for(s: &RemoteSettings) -> Result<Arc<ReapiRemote>, String> {
    endpoint_uri(&s.url)?;
    if s.reapi.is_none() {
        return Err("not REAPI settings".into());
    }
    static CLIENTS: OnceLock<Mutex<HashMap<RemoteSettings, Arc<ReapiRemote>>>> = OnceLock::new();
    let mut map = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| "client table poisoned".to_string())?;
    Ok(map
        .entry(s.clone())
        .or_insert_with(|| {
            Arc::new(ReapiRemote {
                s: s.clone(),
                conn: OnceLock::new(),
                digests: exec::DigestMemo::default(),
            })
        })
        .clone())
}

/// The REAPI remote: a [`rpc::Conn`] made on first use.
pub struct ReapiRemote {
    s: RemoteSettings,
    conn: OnceLock<Result<rpc::Conn, String>>,
    /// Input files' SHA-256, remembered across runs by stat.
    digests: exec::DigestMemo,
}

impl ReapiRemote {
    fn conn(&self) -> Result<&rpc::Conn, RemoteError> {
        self.conn
            .get_or_init(|| rpc::Conn::new(&self.s, Limits::default()))
            .as_ref()
            .map_err(|e| RemoteError::Unavailable(e.clone()))
    }
}

impl Remote for ReapiRemote {
    fn describe(&self) -> String {
        match self.s.reapi.as_ref().map(|r| r.instance_name.as_str()) {
            Some(i) if !i.is_empty() => format!("{} (instance {i:?})", self.s.url),
            _ => self.s.url.clone(),
        }
    }

    fn get(&self, id: &ArtifactId) -> Result<Option<Artifact>, RemoteError> {
        let c = self.conn()?;
        let ta = action::task_action(id);
        c.get(&ta)
    }

    fn put(&self, id: &ArtifactId, a: &Artifact) -> Result<(), RemoteError> {
        let c = self.conn()?;
        let ta = action::task_action(id);
        c.put(&ta, a)
    }

    fn can_execute(&self) -> Result<(), String> {
        self.conn().map_err(|e| e.to_string())?.can_execute()
    }

    fn execute(
        &self,
        job: &RemoteJob,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Executed, RemoteError> {
        self.conn()?.execute(job, cancelled, &self.digests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint_uri("grpc://127.0.0.1:8980").unwrap(),
            ("http://127.0.0.1:8980".into(), false)
        );
        assert_eq!(
            endpoint_uri("grpcs://remote.example.com").unwrap(),
            ("https://remote.example.com".into(), true)
        );
        for bad in [
            "",
            "127.0.0.1:1",
            "grpc://",
            "ftp://x",
            "grpc://a b",
            "grpc://h/p",
        ] {
            assert!(endpoint_uri(bad).is_err(), "{bad}");
        }
    }
}
