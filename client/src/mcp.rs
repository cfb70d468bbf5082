//! `vx mcp` — the stdio entry an AI agent launches (Claude Code, Cursor,
//! Codex, ...).
//!
//! Owns: connecting to the workspace's engine exactly as the other verbs
//! do (the daemon, started if needed; `vxd --stdio` when the daemon is off
//! or unusable), asking it to switch the connection to MCP
//! (`daemon.upgrade`, carrying this process's environment, with which the
//! agent's runs are keyed), then copying bytes: stdin → engine on one
//! thread, engine → stdout on this one. The MCP server is the engine's
//! (`vxd-mcp`); this end never parses MCP.
//!
//! Never: links tokio or an MCP library, writes anything but the engine's
//! bytes to stdout (messages go to stderr), or outlives either end.

use crate::conn;
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::Path;
use vx_proto::upgrade::{DAEMON_UPGRADE, UpgradeParams, UpgradeResult};

pub fn mcp(cwd: &Path, no_daemon: bool) -> Result<i32> {
    // An agent shows a server's stderr in its logs: say it plainly.
    if conn::guess_root(cwd).is_none() {
        anyhow::bail!(
            "vx mcp: no vx workspace at or above {} (start the agent in the workspace, or set its working directory there)",
            cwd.display()
        );
    }
    let mut c = conn::connect(cwd, no_daemon)?;
    let params = UpgradeParams {
        protocol: "mcp".into(),
        cwd: cwd.to_string_lossy().into_owned(),
        env: std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
    };
    let answer = c
        .call(DAEMON_UPGRADE, &params, |_| {})
        .context("the vx engine cannot serve MCP")?;
    let _: UpgradeResult = serde_json::from_value(answer)?;
    let conn::Raw {
        leftover,
        mut reader,
        writer,
        sock,
        child,
    } = c.into_raw();
    let mut writer = writer.context("the connection to the vx engine is closed")?;
    // The agent → the engine; at the agent's EOF, the engine sees ours.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer
                        .write_all(&buf[..n])
                        .and_then(|()| writer.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        if let Some(s) = &sock {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        drop(writer);
    });
    // The engine → the agent, until the engine closes the connection.
    let mut stdout = std::io::stdout().lock();
    let mut ok = stdout
        .write_all(&leftover)
        .and_then(|()| stdout.flush())
        .is_ok();
    let mut buf = vec![0u8; 64 * 1024];
    while ok {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                ok = stdout
                    .write_all(&buf[..n])
                    .and_then(|()| stdout.flush())
                    .is_ok()
            }
        }
    }
    // A foreground engine ends with its connection; when the agent is gone
    // instead, leaving ends it (it dies with its parent).
    if ok && let Some(mut child) = child {
        let _ = child.wait();
    }
    Ok(0)
}
