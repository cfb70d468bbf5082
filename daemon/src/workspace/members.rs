//! Member globs: which directories of the workspace are projects.
//!
//! Each include glob is walked from its literal prefix only (`packages/*`
//! lists `packages/`), so large workspaces load fast. `node_modules`, `.git`,
//! `.vx` and hidden directories are skipped unless a glob names them
//! literally. Under `**`, symlinks are not followed.

use std::collections::BTreeSet;
use std::path::Path;

use crate::globs::{Patterns, is_literal};

/// Compiled member globs.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemberGlobs {
    includes: Vec<Include>,
    all: Patterns,
    /// `.` is listed: the root itself is a member.
    root: bool,
}

#[derive(Debug, Clone)]
struct Include {
    /// Normalised pattern.
    body: String,
    comps: Vec<String>,
    single: Patterns,
}

/// Why a member glob was refused: (the glob, the reason).
pub(crate) type MemberGlobError = (String, String);

fn normalise(p: &str) -> String {
    let mut s = p.trim();
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    let mut s = s.trim_end_matches('/').to_string();
    while s.contains("//") {
        s = s.replace("//", "/");
    }
    while s.contains("/./") {
        s = s.replace("/./", "/");
    }
    s
}

const ALWAYS_SKIPPED: &[&str] = &["node_modules", ".git", ".vx"];

fn skipped(name: &str) -> bool {
    ALWAYS_SKIPPED.contains(&name) || name.starts_with('.')
}

impl MemberGlobs {
    pub fn new<S: AsRef<str>>(globs: &[S]) -> Result<Self, MemberGlobError> {
        let mut includes = Vec::new();
        let mut rest = Vec::new();
        let mut root = false;
        for raw in globs {
            let raw = raw.as_ref();
            let (neg, body) = match raw.strip_prefix('!') {
                Some(b) => (true, b),
                None => (false, raw),
            };
            let trimmed = body.trim();
            if trimmed.starts_with('/') || trimmed.split('/').any(|c| c == "..") {
                return Err((
                    raw.to_string(),
                    "member globs may not reach outside the workspace root".to_string(),
                ));
            }
            if trimmed.starts_with("!(")
                || trimmed.contains("/!(")
                || trimmed.contains("@(")
                || trimmed.contains("+(")
            {
                return Err((
                    raw.to_string(),
                    "extglob is not supported; use `{a,b}` alternatives or a `!` entry".to_string(),
                ));
            }
            let norm = normalise(body);
            if norm.is_empty() || norm == "." {
                if !neg {
                    root = true;
                }
                continue;
            }
            rest.push(raw.to_string());
            if !neg {
                let single =
                    Patterns::new(&[norm.as_str()]).map_err(|e| (raw.to_string(), e.reason))?;
                includes.push(Include {
                    comps: norm.split('/').map(str::to_string).collect(),
                    body: norm,
                    single,
                });
            }
        }
        let all = Patterns::new(&rest).map_err(|e| (e.pattern, e.reason))?;
        Ok(Self {
            includes,
            all,
            root,
        })
    }

    /// Whether the directory `rel` (root-relative, `.` for the root) is
    /// selected by the globs (manifest presence not checked).
    pub fn selects(&self, rel: &str) -> bool {
        if rel.is_empty() || rel == "." {
            return self.root;
        }
        self.all.matches(rel) && self.includes.iter().any(|inc| inc.accepts(rel))
    }

    /// Every selected directory holding a manifest (`is_member(abs_dir)`),
    /// sorted; the root is `.`.
    pub fn expand(&self, root: &Path, is_member: &dyn Fn(&Path) -> bool) -> Vec<String> {
        let mut found = BTreeSet::new();
        if self.root && is_member(root) {
            found.insert(".".to_string());
        }
        for inc in &self.includes {
            let mut cands = BTreeSet::new();
            walk(root, "", &inc.comps, false, &mut cands);
            for rel in cands {
                if !found.contains(&rel)
                    && inc.accepts(&rel)
                    && self.all.matches(&rel)
                    && is_member(&root.join(&rel))
                {
                    found.insert(rel);
                }
            }
        }
        found.into_iter().collect()
    }
}

impl Include {
    fn accepts(&self, rel: &str) -> bool {
        if is_literal(&self.body) {
            return rel == self.body;
        }
        if !self.single.matches(rel) {
            return false;
        }
        // A skipped component must be named by the glob.
        rel.split('/')
            .all(|c| !skipped(c) || self.comps.iter().any(|p| p == c))
    }
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Subdirectory names of `dir`; symlinks followed unless `under_globstar`.
fn subdirs(dir: &Path, under_globstar: bool, allow_hidden: bool) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if ALWAYS_SKIPPED.contains(&name) || (name.starts_with('.') && !allow_hidden) {
            continue;
        }
        let Ok(ft) = entry.file_type() else { continue };
        let is_dir = if ft.is_symlink() {
            !under_globstar && entry.path().is_dir()
        } else {
            ft.is_dir()
        };
        if is_dir {
            out.push(name.to_string());
        }
    }
    out
}

fn walk(root: &Path, rel: &str, comps: &[String], globstar: bool, out: &mut BTreeSet<String>) {
    let Some(c) = comps.first() else {
        if !rel.is_empty() {
            out.insert(rel.to_string());
        }
        return;
    };
    let abs = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    if c == "**" {
        walk(root, rel, &comps[1..], true, out);
        for name in subdirs(&abs, true, false) {
            walk(root, &join(rel, &name), comps, true, out);
        }
    } else if is_literal(c) {
        let child = join(rel, c);
        if root.join(&child).is_dir() {
            walk(root, &child, &comps[1..], globstar, out);
        }
    } else {
        for name in subdirs(&abs, globstar, c.starts_with('.')) {
            walk(root, &join(rel, &name), &comps[1..], globstar, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn expands_and_excludes() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in [
            "packages/a",
            "packages/b",
            "packages/legacy",
            "packages/nomanifest",
            "apps/web",
            "apps/web/node_modules/x",
            "packages/.hidden",
            "deep/x/y/z",
            "deep/node_modules/q",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
            if d != "packages/nomanifest" {
                fs::write(r.join(d).join("package.json"), "{}").unwrap();
            }
        }
        let has = |p: &Path| p.join("package.json").is_file();
        let g = MemberGlobs::new(&["packages/*", "!packages/legacy", "apps/*"]).unwrap();
        assert_eq!(
            g.expand(r, &has),
            vec!["apps/web", "packages/a", "packages/b"]
        );
        assert!(g.selects("packages/a"));
        assert!(!g.selects("packages/legacy"));
        assert!(!g.selects("packages/.hidden"));
        let g = MemberGlobs::new(&["deep/**"]).unwrap();
        assert_eq!(g.expand(r, &has), vec!["deep/x/y/z"]);
        let g = MemberGlobs::new(&["./apps/web/", "."]).unwrap();
        assert_eq!(g.expand(r, &has), vec!["apps/web"]);
        fs::write(r.join("package.json"), "{}").unwrap();
        assert_eq!(g.expand(r, &has), vec![".", "apps/web"]);
        let g = MemberGlobs::new(&["packages/*-x", "packages"]).unwrap();
        assert_eq!(g.expand(r, &has), Vec::<String>::new());
    }

    #[test]
    fn refuses_outside_root() {
        assert!(MemberGlobs::new(&["../x/*"]).is_err());
        assert!(MemberGlobs::new(&["/abs/*"]).is_err());
        assert!(MemberGlobs::new(&["packages/{a"]).is_err());
    }
}
