//! `vx plugins` — the daemon's plugins (`plugins.list`): state, version,
//! hooks, notifications delivered and dropped, last error.
//!
//! Never: starts a daemon (plugins live in one; without one it says so).

use anyhow::Result;
use std::path::Path;
use vx_proto::plugins::{PLUGINS_LIST, PluginList};

/// `vx plugins [--json]`.
pub fn plugins(cwd: &Path, no_daemon: bool, json: bool) -> Result<i32> {
    let c = crate::history::connect(cwd, no_daemon)?;
    let (c, v) = crate::call_following(c, PLUGINS_LIST, &serde_json::json!({}), &mut |_| {})?;
    c.finish();
    let list: PluginList = serde_json::from_value(v)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if let Some(e) = &list.config_error {
        println!("config error: {e}");
    }
    if !list.hosted {
        println!(
            "no daemon is running for this workspace: plugins run in the daemon (they start with it)"
        );
        return Ok(0);
    }
    if list.plugins.is_empty() {
        println!("no plugins ([[plugins]] in the root vx.toml declares them)");
    }
    for p in &list.plugins {
        let state = serde_json::to_value(p.state)?;
        println!(
            "{}  {}  v{}  hooks: {}  events: {}  starts: {}  delivered: {}  dropped: {}",
            p.name,
            state.as_str().unwrap_or("?"),
            p.version.as_deref().unwrap_or("?"),
            if p.hooks.is_empty() {
                "-".to_string()
            } else {
                p.hooks.join(",")
            },
            p.events.join(","),
            p.starts,
            p.delivered,
            p.dropped
        );
        if let Some(e) = &p.last_error {
            println!("  last error: {e}");
        }
    }
    Ok(0)
}
