//! Where a workspace's daemon listens: the socket path both sides compute.
//!
//! `$XDG_RUNTIME_DIR/vx/<16 hex>.sock`, else `${TMPDIR:-/tmp}/vx-<uid>/<16 hex>.sock`,
//! where the hex is a stable 64-bit FNV-1a hash of the workspace root's bytes.
//! Beside the socket: `<16 hex>.live` (a lock the daemon holds for its life) and
//! `<16 hex>.spawn` (the lock clients take to start one daemon at a time).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The longest path a Unix socket address can hold (`sun_path` minus the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The directory that holds the sockets of the current user.
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("vx"),
        _ => {
            let tmp = std::env::var_os("TMPDIR")
                .filter(|t| !t.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp"));
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            tmp.join(format!("vx-{uid}"))
        }
    }
}

/// 16 hex digits identifying a workspace root.
pub fn workspace_id(root: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in root.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Paths of one workspace's daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonPaths {
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// Held (flock) by the daemon for its whole life: liveness.
    pub live_lock: PathBuf,
    /// Held by a client while it starts a daemon: single flight.
    pub spawn_lock: PathBuf,
}

/// The daemon paths for `root`, or an error when the socket path would be
/// too long for a Unix socket.
pub fn daemon_paths(root: &Path) -> Result<DaemonPaths, String> {
    let dir = runtime_dir();
    let id = workspace_id(root);
    let socket = dir.join(format!("{id}.sock"));
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the daemon socket path {} is longer than {MAX_SOCKET_PATH} bytes; set XDG_RUNTIME_DIR or TMPDIR to a shorter directory",
            socket.display()
        ));
    }
    Ok(DaemonPaths {
        live_lock: dir.join(format!("{id}.live")),
        spawn_lock: dir.join(format!("{id}.spawn")),
        socket,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(
            workspace_id(Path::new("/a/b")),
            workspace_id(Path::new("/a/b"))
        );
        assert_ne!(
            workspace_id(Path::new("/a/b")),
            workspace_id(Path::new("/a/c"))
        );
        assert_eq!(workspace_id(Path::new("/a/b")).len(), 16);
    }

    #[test]
    fn paths_sit_side_by_side() {
        let p = daemon_paths(Path::new("/repo")).unwrap();
        assert_eq!(p.socket.parent(), Some(p.dir.as_path()));
        assert!(p.socket.to_string_lossy().ends_with(".sock"));
    }
}
