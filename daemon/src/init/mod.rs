//! `init` — `vx init`: reads an existing repo's task config (Turborepo's
//! `turbo.json`, Nx's `nx.json` + `project.json`, or plain `package.json`
//! scripts) and produces the equivalent `vx.toml` files, with a comment on
//! each task saying where it came from and a report of every item it could
//! not translate.
//!
//! Owns: choosing the source, the translators (`turbo`, `nx`, `scripts`),
//! rendering the files (`emit`), refusing to replace existing files without
//! `force`, writing them, and loading the result once written (the same
//! loader and graph as `vx run`) to report a config vx would refuse.
//!
//! Never: runs a task, touches the cache or history, deletes a file, or
//! writes anything but the `vx.toml` files it reports (nothing at all with
//! `dry_run` or when one of them exists without `force`).

use std::path::{Path, PathBuf};

use vx_proto::init::{InitFile, InitItem, InitParams, InitResult, InitSource};

use crate::error::{EngineError, ErrorKind};

mod emit;
mod nx;
mod scripts;
mod turbo;

pub(crate) use emit::FileOut;

/// What a translator produced: the files (root-relative) and the report.
#[derive(Debug, Default)]
pub(crate) struct Translation {
    pub files: Vec<FileOut>,
    pub untranslated: Vec<InitItem>,
}

impl Translation {
    pub fn note(&mut self, file: &str, item: impl Into<String>, reason: impl Into<String>) {
        self.untranslated.push(InitItem {
            file: file.to_string(),
            item: item.into(),
            reason: reason.into(),
        });
    }
}

fn user(msg: impl Into<String>) -> EngineError {
    EngineError::new(ErrorKind::User, msg)
}

/// Whether `dir` holds a `package.json` with `workspaces`.
fn has_workspaces(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("workspaces").is_some())
}

/// A root `turbo.json` (not a package's, which `extends`).
fn is_root_turbo(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("turbo.json"))
        .ok()
        .and_then(|t| {
            serde_json::from_str::<serde_json::Value>(&crate::workspace::strip_jsonc(&t)).ok()
        })
        .is_some_and(|v| v.get("extends").is_none())
}

/// The repo root for `cwd`: the nearest ancestor with `nx.json`, a root
/// `turbo.json`, `pnpm-workspace.yaml` or `package.json` `workspaces`;
/// else `cwd` itself.
pub(crate) fn find_root(cwd: &Path) -> PathBuf {
    for dir in cwd.ancestors() {
        if dir.join("nx.json").is_file()
            || dir.join("pnpm-workspace.yaml").is_file()
            || has_workspaces(dir)
            || is_root_turbo(dir)
        {
            return dir.to_path_buf();
        }
    }
    cwd.to_path_buf()
}

/// The source `vx init` reads when none is given.
pub(crate) fn detect(root: &Path) -> Result<InitSource, EngineError> {
    if root.join("turbo.json").is_file() {
        Ok(InitSource::Turbo)
    } else if root.join("nx.json").is_file() {
        Ok(InitSource::Nx)
    } else if root.join("package.json").is_file() {
        Ok(InitSource::Scripts)
    } else {
        Err(user(format!(
            "nothing to translate in {}: no turbo.json, nx.json or package.json",
            root.display()
        ))
        .with_hint_text("write a vx.toml by hand (see docs/config.md)"))
    }
}

trait HintText {
    fn with_hint_text(self, hint: &str) -> Self;
}

impl HintText for EngineError {
    fn with_hint_text(mut self, hint: &str) -> Self {
        self.message = format!("{}\n  help: {hint}", self.message);
        self
    }
}

/// Translates the repo at `root` from `source` (no I/O but reading).
pub(crate) fn translate(root: &Path, source: InitSource) -> Result<Translation, EngineError> {
    let needs = match source {
        InitSource::Turbo => "turbo.json",
        InitSource::Nx => "nx.json",
        InitSource::Scripts => "package.json",
    };
    if !root.join(needs).is_file() {
        return Err(user(format!(
            "--from {}: there is no {needs} in {}",
            source.name(),
            root.display()
        )));
    }
    match source {
        InitSource::Turbo => turbo::translate(root),
        InitSource::Nx => nx::translate(root),
        InitSource::Scripts => scripts::translate(root),
    }
}

/// `workspace.init`: translate, refuse existing files without `force`,
/// write (unless `dry_run`), load what was written.
pub fn init(p: InitParams) -> Result<InitResult, EngineError> {
    let cwd = PathBuf::from(&p.cwd);
    let cwd = cwd.canonicalize().map_err(|e| {
        EngineError::new(
            ErrorKind::User,
            format!("cannot open {}: {e}", cwd.display()),
        )
    })?;
    let root = find_root(&cwd);
    let source = match p.from {
        Some(s) => s,
        None => detect(&root)?,
    };
    let t = translate(&root, source)?;
    let mut files = Vec::new();
    let mut existing = Vec::new();
    for f in &t.files {
        let abs = root.join(&f.path);
        let replaced = abs.exists();
        if replaced {
            existing.push(f.path.clone());
        }
        files.push(InitFile {
            path: f.path.clone(),
            content: f.render(),
            replaced,
        });
    }
    if !existing.is_empty() && !p.force && !p.dry_run {
        return Err(user(format!(
            "vx init would replace {}: not written (nothing was)",
            existing.join(", ")
        ))
        .with_hint_text(
            "pass --force to replace them, or --dry-run to see what would be written",
        ));
    }
    let mut load_error = None;
    if !p.dry_run {
        for f in &files {
            let abs = root.join(&f.path);
            if let Some(dir) = abs.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| user(format!("cannot create {}: {e}", dir.display())))?;
            }
            std::fs::write(&abs, &f.content)
                .map_err(|e| user(format!("cannot write {}: {e}", abs.display())))?;
            tracing::info!(path = %f.path, "vx init wrote");
        }
        load_error = check_loads(&root).err();
    }
    Ok(InitResult {
        root: root.to_string_lossy().into_owned(),
        source,
        dry_run: p.dry_run,
        files,
        untranslated: t.untranslated,
        load_error,
    })
}

/// Loads the workspace at `root` and builds its task graph, as `vx run` does.
pub(crate) fn check_loads(root: &Path) -> Result<crate::workspace::Workspace, String> {
    let ws = crate::workspace::load(root).map_err(|e| e.to_string())?;
    crate::graph::TaskGraph::build(&ws).map_err(|e| EngineError::from(e).message)?;
    Ok(ws)
}

/// Reads a JSON (or JSONC) file; `None` when absent.
pub(crate) fn read_json(path: &Path) -> Result<Option<serde_json::Value>, EngineError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(EngineError::new(
                ErrorKind::Config,
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    serde_json::from_str(&crate::workspace::strip_jsonc(&text))
        .map(Some)
        .map_err(|e| {
            EngineError::new(
                ErrorKind::Config,
                format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()),
            )
        })
}

/// A JSON array of strings (other elements dropped).
pub(crate) fn strings(v: Option<&serde_json::Value>) -> Option<Vec<String>> {
    v.and_then(|v| v.as_array()).map(|a| {
        a.iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    })
}

/// `dir/file`, or `file` for the root `.`.
pub(crate) fn rel_join(dir: &str, file: &str) -> String {
    if dir == "." || dir.is_empty() {
        file.to_string()
    } else {
        format!("{dir}/{file}")
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::Path;

    /// Writes `(path, content)` pairs under a fresh temp dir.
    pub fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let abs = d.path().join(p);
            std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
            std::fs::write(abs, c).unwrap();
        }
        d
    }

    /// Writes a translation's files into `root` and loads the result.
    pub fn write_and_load(root: &Path, t: &super::Translation) -> crate::workspace::Workspace {
        for f in &t.files {
            let abs = root.join(&f.path);
            std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
            std::fs::write(abs, f.render()).unwrap();
        }
        match super::check_loads(root) {
            Ok(ws) => ws,
            Err(e) => {
                let all: Vec<String> = t
                    .files
                    .iter()
                    .map(|f| format!("--- {}\n{}", f.path, f.render()))
                    .collect();
                panic!("generated config does not load: {e}\n{}", all.join("\n"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
