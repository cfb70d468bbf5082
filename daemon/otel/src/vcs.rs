//! `vcs` — the `vcs.*` attributes of a workspace, read from its `.git`
//! directory (no `git` process).
//!
//! Owns: the head revision, the branch name and the `origin` URL (with any
//! credentials in it removed).
//! Never: writes, runs git, or fails (what cannot be read is left out).

use std::path::{Path, PathBuf};

/// The git directory and the common directory (they differ in a linked
/// worktree) of `root`, or of the nearest ancestor that has one.
fn git_dirs(root: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut at = Some(root);
    while let Some(d) = at {
        let dot = d.join(".git");
        if dot.is_dir() {
            return Some((dot.clone(), dot));
        }
        if let Ok(s) = std::fs::read_to_string(&dot)
            && let Some(g) = s.trim().strip_prefix("gitdir:")
        {
            let g = d.join(g.trim());
            let common = std::fs::read_to_string(g.join("commondir"))
                .map(|c| g.join(c.trim()))
                .unwrap_or_else(|_| g.clone());
            return Some((g, common));
        }
        at = d.parent();
    }
    None
}

fn resolve(common: &Path, git: &Path, name: &str) -> Option<String> {
    for d in [git, common] {
        if let Ok(s) = std::fs::read_to_string(d.join(name)) {
            return Some(s.trim().to_string());
        }
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|l| {
        let (sha, r) = l.split_once(' ')?;
        (r.trim() == name).then(|| sha.to_string())
    })
}

/// `scheme://user:secret@host/x` → `scheme://host/x`.
fn without_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((_, host)) = rest.split_once('@')
        && !rest.split('/').next().unwrap_or("").is_empty()
        && rest.find('@') < rest.find('/').or(Some(rest.len()))
    {
        return format!("{scheme}://{host}");
    }
    url.to_string()
}

fn origin(common: &Path) -> Option<String> {
    let cfg = std::fs::read_to_string(common.join("config")).ok()?;
    let mut in_origin = false;
    for l in cfg.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            in_origin = l == "[remote \"origin\"]";
        } else if in_origin
            && let Some((k, v)) = l.split_once('=')
            && k.trim() == "url"
        {
            return Some(without_credentials(v.trim()));
        }
    }
    None
}

/// The `vcs.*` attributes of the workspace at `root`.
pub fn attributes(root: &Path) -> Vec<(&'static str, String)> {
    let Some((git, common)) = git_dirs(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let head = std::fs::read_to_string(git.join("HEAD")).unwrap_or_default();
    let head = head.trim();
    if let Some(r) = head.strip_prefix("ref:") {
        let r = r.trim();
        if let Some(sha) = resolve(&common, &git, r) {
            out.push(("vcs.ref.head.revision", sha));
        }
        if let Some(b) = r.strip_prefix("refs/heads/") {
            out.push(("vcs.ref.head.name", b.to_string()));
            out.push(("vcs.ref.head.type", "branch".to_string()));
        }
    } else if head.len() >= 40 {
        out.push(("vcs.ref.head.revision", head.to_string()));
    }
    if let Some(u) = origin(&common) {
        out.push(("vcs.repository.url.full", u));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_removed_from_urls() {
        let cases = [
            (
                "https://u:tok@github.com/o/r.git",
                "https://github.com/o/r.git",
            ),
            ("https://github.com/o/r.git", "https://github.com/o/r.git"),
            ("git@github.com:o/r.git", "git@github.com:o/r.git"),
            ("https://h/a@b", "https://h/a@b"),
        ];
        for (i, o) in cases {
            assert_eq!(without_credentials(i), o, "{i}");
        }
    }
}
