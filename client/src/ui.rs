//! `vx ui` — the address of the daemon's insights dashboard.
//!
//! Owns: starting the daemon if needed, reading its HTTP discovery file
//! (`<socket>.json` in the private runtime directory: url, token, pid),
//! printing the dashboard's URL with its token, and opening it in a browser
//! when one is available (a desktop session: `DISPLAY`/`WAYLAND_DISPLAY`
//! with `xdg-open`, or macOS `open`), unless `--no-open`.
//!
//! Never: links a transport (the client stays tokio-free: the browser does
//! the HTTP), or prints the token anywhere but stdout.

use crate::conn::{self, Conn};
use anyhow::{Result, anyhow};
use std::path::Path;
use vx_proto::methods;

#[derive(serde::Deserialize)]
struct Discovery {
    url: String,
    token: String,
    pid: u32,
}

/// The dashboard's URL (with its token) for the workspace at `cwd`.
pub fn url(cwd: &Path) -> Result<String> {
    let root = conn::guess_root(cwd)
        .ok_or_else(|| anyhow!("{} is not inside a workspace", cwd.display()))?;
    let paths = vx_proto::paths::daemon_paths(&root).map_err(|e| anyhow!(e))?;
    let mut c = Conn::daemon(&root)?;
    let pid = c.hello.pid;
    let v = c.call(methods::STATUS, &serde_json::json!({}), |_| {})?;
    c.finish();
    let status: vx_proto::DaemonStatus = serde_json::from_value(v)?;
    let Some(advertised) = status.endpoints.get("http") else {
        return Err(anyhow!(
            "the daemon (pid {pid}) serves no HTTP: it was started with VX_HTTP=0 or its server failed to start (see `vx daemon logs`)"
        ));
    };
    let file = paths.socket.with_extension("json");
    let text = std::fs::read(&file).map_err(|e| {
        anyhow!(
            "cannot read the daemon's HTTP discovery file {}: {e}",
            file.display()
        )
    })?;
    let d: Discovery = serde_json::from_slice(&text)
        .map_err(|e| anyhow!("{} is not a discovery file: {e}", file.display()))?;
    if d.pid != pid || &d.url != advertised {
        return Err(anyhow!(
            "{} belongs to another daemon (pid {}, not {pid}); run `vx daemon restart`",
            file.display(),
            d.pid
        ));
    }
    Ok(format!("{}/?token={}", d.url, d.token))
}

/// Opens `url` in the desktop's browser; `false` when there is none.
fn open(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        Some("open")
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        Some("xdg-open")
    } else {
        None
    };
    let Some(opener) = opener else { return false };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

pub fn ui(cwd: &Path, no_open: bool) -> Result<i32> {
    let url = url(cwd)?;
    println!("{url}");
    if !no_open && open(&url) {
        eprintln!("vx: opened the dashboard in your browser");
    }
    Ok(0)
}
