//! `find_root` and `load`: from a directory to a validated [`Workspace`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::check::{self, ProjectRef};
use super::guard;
use super::members::MemberGlobs;
use super::npm::{self, LocalPackage, PackageJson};
use super::text::{Src, did_you_mean, find_key, find_quoted, strip_jsonc, toml_error};
use super::turbo::{self, TurboPackage, TurboRoot};
use super::vxtoml::{self, VxFile};
use super::{ConfigError, ConfigKind, Defaults, GlobalConfig, Project, TaskDef, Workspace};

const VX: &str = "vx.toml";
const PKG: &str = "package.json";
const PNPM: &str = "pnpm-workspace.yaml";
const TURBO: &str = "turbo.json";

fn io_error(path: &Path, e: &std::io::Error) -> ConfigError {
    ConfigError::new(format!("cannot read {}: {e}", path.display()))
}

/// A config file's bytes as text; invalid UTF-8 is an error at the line and
/// column of the first bad byte.
fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let bad = bytes.get(good).copied().unwrap_or_default();
        // The prefix is valid UTF-8 by construction.
        let before = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let (line, col) = super::text::line_col(before, before.len());
        ConfigError::in_file(
            path,
            format!("invalid UTF-8 (byte 0x{bad:02x}): config files must be UTF-8 text"),
        )
        .at(line, col)
    })
}

fn read_abs(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read(path) {
        Ok(b) => utf8(path, b).map(Some),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(io_error(path, &e)),
    }
}

// ---------------------------------------------------------------------------
// find_root

/// The member globs of `dir` when it is a workspace-root candidate.
fn candidate_globs(dir: &Path) -> Result<Option<Vec<String>>, ConfigError> {
    let mut candidate = false;
    let mut vx_members: Option<Vec<String>> = None;
    let vx_path = dir.join(VX);
    if let Some(text) = read_abs(&vx_path)? {
        let src = Src::new(vx_path.display().to_string(), text);
        let table: toml::Table = toml::from_str(&src.text).map_err(|e| toml_error(&src, &e))?;
        if let Some(ws) = table.get("workspace").and_then(|w| w.as_table()) {
            candidate = true;
            vx_members = ws.get("members").and_then(|m| m.as_array()).map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            });
        }
    }
    let mut pm_globs: Option<Vec<String>> = None;
    let pnpm_path = dir.join(PNPM);
    let pkg_path = dir.join(PKG);
    let mut has_pkg = false;
    if let Some(text) = read_abs(&pnpm_path)? {
        candidate = true;
        pm_globs = Some(npm::parse_pnpm(&Src::new(
            pnpm_path.display().to_string(),
            text,
        ))?);
    }
    if let Some(text) = read_abs(&pkg_path)? {
        has_pkg = true;
        if pm_globs.is_none() {
            let pkg = npm::parse_package_json(&Src::new(pkg_path.display().to_string(), text))?;
            if let Some(ws) = pkg.workspaces {
                candidate = true;
                pm_globs = Some(ws);
            }
        }
    }
    if !candidate && has_pkg && is_root_turbo(&dir.join(TURBO)) {
        candidate = true;
    }
    Ok(candidate.then(|| vx_members.or(pm_globs).unwrap_or_default()))
}

/// A `turbo.json` that is not a package config (no `extends`).
fn is_root_turbo(path: &Path) -> bool {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // Unreadable as text: still a candidate, so `load` reports it.
        Err(e) => return e.kind() == std::io::ErrorKind::InvalidData,
    };
    match serde_json::from_str::<serde_json::Value>(&strip_jsonc(&text)) {
        Ok(v) => v.get("extends").is_none(),
        Err(_) => true,
    }
}

fn has_manifest(dir: &Path) -> bool {
    dir.join(VX).is_file() || dir.join(PKG).is_file()
}

/// Whether the globs of the candidate root `root` claim `cwd` (a directory
/// at or under `root`).
fn claims(root: &Path, cwd: &Path, globs: &[String]) -> bool {
    let Ok(g) = MemberGlobs::new(globs) else {
        return false;
    };
    let Ok(rel) = cwd.strip_prefix(root) else {
        return false;
    };
    let comps: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    (1..=comps.len()).rev().any(|n| {
        let r = comps[..n].join("/");
        g.selects(&r) && has_manifest(&root.join(&r))
    })
}

/// Finds the workspace root for `cwd` (see the module docs of `workspace`).
pub fn find_root(cwd: &Path) -> Result<PathBuf, ConfigError> {
    let mut cwd = cwd.canonicalize().map_err(|e| io_error(cwd, &e))?;
    if !cwd.is_dir()
        && let Some(parent) = cwd.parent()
    {
        cwd = parent.to_path_buf();
    }
    let mut nearest: Option<&Path> = None;
    let mut fallback: Option<&Path> = None;
    for dir in cwd.ancestors() {
        match candidate_globs(dir)? {
            Some(globs) => {
                if dir == cwd || claims(dir, &cwd, &globs) {
                    return Ok(dir.to_path_buf());
                }
                nearest.get_or_insert(dir);
            }
            None => {
                if fallback.is_none() && has_manifest(dir) {
                    fallback = Some(dir);
                }
            }
        }
    }
    nearest.or(fallback).map(Path::to_path_buf).ok_or_else(|| {
        ConfigError::new(format!(
            "no workspace found above {}: expected a vx.toml with [workspace], package.json workspaces, pnpm-workspace.yaml or turbo.json",
            cwd.display()
        ))
    })
}

// ---------------------------------------------------------------------------
// load

struct Loader {
    root: PathBuf,
    files: BTreeSet<String>,
}

impl Loader {
    /// Reads a root-relative file, recording it.
    fn read(&mut self, rel: &str) -> Result<Option<Src>, ConfigError> {
        let text = read_abs(&self.root.join(rel)).map_err(|e| e.with_file(rel))?;
        Ok(text.map(|t| {
            self.files.insert(rel.to_string());
            Src::new(rel, t)
        }))
    }
}

fn rel_join(dir: &str, file: &str) -> String {
    if dir == "." {
        file.to_string()
    } else {
        format!("{dir}/{file}")
    }
}

/// A project being assembled.
struct Draft {
    project: Project,
    /// `package.json` name, when there is one (for dependency specs).
    pkg_name: Option<String>,
    pkg: Option<PackageJson>,
    pkg_file: Option<String>,
    declared: Vec<ProjectRef>,
    task_refs: Vec<ProjectRef>,
}

/// Loads and validates the workspace at `root`.
pub fn load(root: &Path) -> Result<Workspace, ConfigError> {
    let root = root.canonicalize().map_err(|e| io_error(root, &e))?;
    let mut ld = Loader {
        root: root.clone(),
        files: BTreeSet::new(),
    };

    let root_vx: Option<VxFile> = ld.read(VX)?.map(vxtoml::parse).transpose()?;
    let root_pkg_src = ld.read(PKG)?;
    let root_pkg = root_pkg_src
        .as_ref()
        .map(npm::parse_package_json)
        .transpose()?;
    let pnpm_src = ld.read(PNPM)?;
    let pnpm_globs = pnpm_src.as_ref().map(npm::parse_pnpm).transpose()?;

    let ws = root_vx.as_ref().and_then(|v| v.workspace.clone());
    let turbo_root: Option<TurboRoot> = if ws.is_none() {
        ld.read(TURBO)?.map(|s| turbo::parse_root(&s)).transpose()?
    } else {
        None
    };
    let kind = if ws.is_none() && turbo_root.is_some() {
        ConfigKind::Turbo
    } else {
        ConfigKind::Vx
    };

    // Member globs and the file that lists them.
    let (globs, globs_src, globs_pos): (Vec<String>, Option<&Src>, Option<(usize, usize)>) =
        if let Some(m) = ws.as_ref().and_then(|w| w.members.clone()) {
            (
                m,
                root_vx.as_ref().map(|v| &v.src),
                ws.as_ref().and_then(|w| w.members_pos),
            )
        } else if let Some(g) = pnpm_globs {
            (g, pnpm_src.as_ref(), None)
        } else if let Some(g) = root_pkg.as_ref().and_then(|p| p.workspaces.clone()) {
            let pos = root_pkg_src
                .as_ref()
                .and_then(|s| find_key(&s.text, "workspaces"));
            (g, root_pkg_src.as_ref(), pos)
        } else if ws.is_some() {
            (Vec::new(), None, None)
        } else {
            // Single-project workspace: the root is the project.
            (vec![".".to_string()], None, None)
        };
    let member_globs = MemberGlobs::new(&globs).map_err(|(glob, reason)| {
        let msg = format!("invalid member glob `{glob}`: {reason}");
        match globs_src {
            Some(src) => {
                let pos = find_quoted(&src.text, &glob).or(globs_pos);
                src.err(msg).at_opt(pos)
            }
            None => ConfigError::new(msg),
        }
    })?;
    let turbo_mode = kind == ConfigKind::Turbo;
    // No `[workspace]` and no package-manager workspace: the root is the
    // only project (a project's vx.toml with no workspace root above it).
    let single_project = ws.is_none() && globs_src.is_none();
    let dirs = member_globs.expand(&root, &|_| true);
    let reads = read_members(&root, &dirs, turbo_mode);

    let mut member_notes: Vec<String> = globs
        .iter()
        .filter(|g| !g.starts_with('!') && g.as_str() != ".")
        .filter(|g| {
            MemberGlobs::new(&[g.as_str()])
                .map(|one| !dirs.iter().any(|d| one.selects(d)))
                .unwrap_or(false)
        })
        .map(|g| format!("member glob `{g}` matches no directory"))
        .collect();
    let mut warnings: Vec<String> = turbo_root
        .as_ref()
        .map(|t| t.warnings.clone())
        .unwrap_or_default();
    let mut drafts: Vec<Draft> = Vec::with_capacity(dirs.len() + 1);
    let mut root_is_member = false;
    for (dir, read) in dirs.iter().zip(reads) {
        let draft = if dir == "." {
            if root_pkg.is_none() && (turbo_mode || root_vx.is_none()) {
                continue;
            }
            root_is_member = true;
            member_draft(
                &ld.root,
                dir,
                root_vx.clone(),
                root_pkg_src.clone().zip(root_pkg.clone()),
                None,
                turbo_root.as_ref(),
            )?
        } else {
            let Some(r) = read? else {
                member_notes.push(format!(
                    "`{dir}` matches the member globs but has no {} (so it is no project)",
                    if turbo_mode {
                        "package.json"
                    } else {
                        "vx.toml or package.json"
                    }
                ));
                continue;
            };
            for f in [
                &r.pkg.as_ref().map(|p| &p.0),
                &r.vx.as_ref().map(|v| &v.src),
                &r.turbo.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                ld.files.insert(f.file.clone());
            }
            if let Some(v) = &r.vx
                && v.workspace.is_some()
            {
                return Err(v
                    .src
                    .err("`[workspace]` is only allowed in the root vx.toml")
                    .at_opt(find_line_starting(&v.src.text, "[workspace]"))
                    .with_hint(format!(
                        "`{dir}` is a member of the workspace at the root; move the table there"
                    )));
            }
            let own_turbo = r.turbo.as_ref().map(turbo::parse_package).transpose()?;
            if let Some(t) = &own_turbo {
                warnings.extend(t.warnings.iter().cloned());
            }
            member_draft(&ld.root, dir, r.vx, r.pkg, own_turbo, turbo_root.as_ref())?
        };
        if let Some(d) = draft {
            drafts.push(d);
        }
    }

    // The root project `//`.
    if !root_is_member {
        let root_pkg_file = root_pkg_src.as_ref().map(|s| s.file.clone());
        match (&root_vx, &turbo_root) {
            (_, Some(t)) if turbo::has_root_tasks(t) => {
                let scripts = root_pkg
                    .as_ref()
                    .map(|p| p.scripts.clone())
                    .unwrap_or_default();
                drafts.push(Draft {
                    project: Project {
                        name: "//".to_string(),
                        dir: ".".to_string(),
                        deps: Vec::new(),
                        tags: Vec::new(),
                        version: root_pkg.as_ref().and_then(|p| p.version.clone()),
                        config_file: TURBO.to_string(),
                        tasks: turbo::root_tasks(t, &scripts),
                    },
                    pkg_name: None,
                    pkg: root_pkg.clone(),
                    pkg_file: root_pkg_file,
                    declared: Vec::new(),
                    task_refs: Vec::new(),
                });
            }
            (Some(v), None) if v.tasks.is_some() => {
                if let Some(n) = &v.project.name {
                    return Err(v
                        .src
                        .err(format!("the root project is always named `//`, not `{n}`"))
                        .at_opt(v.project.name_pos)
                        .with_hint("remove `name` from the root [project]"));
                }
                drafts.push(Draft {
                    project: Project {
                        name: "//".to_string(),
                        dir: ".".to_string(),
                        deps: Vec::new(),
                        tags: v.project.tags.clone(),
                        version: root_pkg.as_ref().and_then(|p| p.version.clone()),
                        config_file: VX.to_string(),
                        tasks: v.tasks.clone().unwrap_or_default(),
                    },
                    pkg_name: None,
                    pkg: root_pkg.clone(),
                    pkg_file: root_pkg_file,
                    declared: v.project.deps.clone(),
                    task_refs: v.task_refs.clone(),
                });
            }
            _ => {}
        }
    } else if let Some(t) = &turbo_root
        && turbo::has_root_tasks(t)
    {
        let key = t
            .tasks
            .keys()
            .find(|k| k.starts_with("//#"))
            .cloned()
            .unwrap_or_default();
        let src = Src::new(
            TURBO,
            std::fs::read_to_string(root.join(TURBO)).unwrap_or_default(),
        );
        return Err(src
            .err_near(&key, &key, format!("`{key}`: the root is itself a member package here, so there is no separate root project `//`"))
            .with_hint("define the task without `//#`"));
    }

    if turbo_mode {
        turbo_scripts(&root, root_pkg.as_ref(), &mut drafts);
    }

    // Unique names.
    drafts.sort_by(|a, b| a.project.name.cmp(&b.project.name));
    for w in drafts.windows(2) {
        if w[0].project.name == w[1].project.name {
            return Err(ConfigError::in_file(
                &w[1].project.config_file,
                format!(
                    "duplicate project name `{}`: `{}` and `{}`",
                    w[0].project.name, w[0].project.dir, w[1].project.dir
                ),
            )
            .with_hint("project names must be unique; rename one of them"));
        }
    }

    let names: Vec<&str> = drafts.iter().map(|d| d.project.name.as_str()).collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let check_ref = |r: &ProjectRef| -> Result<usize, ConfigError> {
        if let Some(i) = index.get(r.name.as_str()) {
            return Ok(*i);
        }
        let mut hint = did_you_mean(&r.name, names.iter().copied());
        if r.name == "//" {
            hint =
                Some("the root project `//` exists only when the root config defines tasks".into());
        } else if hint.is_none() && single_project {
            hint = Some(format!(
                "no `[workspace]` above this file: vx took {} as a workspace of one project; add a vx.toml with `[workspace]` and `members = [...]` at the repository's root (or run `vx init` there)",
                root.display()
            ));
        }
        Err(ConfigError::in_file(
            &r.file,
            format!("{}: unknown project `{}`", r.context, r.name),
        )
        .at_opt(r.pos)
        .with_hint_opt(hint))
    };

    // Package-name lookups for dependency specs.
    let by_pkg: HashMap<&str, usize> = drafts
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.pkg_name.as_deref().map(|n| (n, i)))
        .collect();
    let by_dir: HashMap<&str, usize> = drafts
        .iter()
        .enumerate()
        .filter(|(_, d)| d.pkg_name.is_some())
        .map(|(i, d)| (d.project.dir.as_str(), i))
        .collect();
    let lookup_name = |n: &str| {
        by_pkg.get(n).map(|&i| LocalPackage {
            version: drafts[i].project.version.as_deref(),
        })
    };
    let lookup_dir = |d: &str| by_dir.get(d).and_then(|&i| drafts[i].pkg_name.clone());

    if let Some(t) = &turbo_root {
        for r in &t.refs {
            check_ref(r)?;
        }
    }

    let n = drafts.len();
    let mut hard: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut peers: Vec<(usize, usize)> = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        for r in &d.declared {
            let j = check_ref(r)?;
            if j == i {
                return Err(ConfigError::in_file(
                    &r.file,
                    format!("project `{}` lists itself in `deps`", r.name),
                )
                .at_opt(r.pos));
            }
            hard[i].insert(j);
        }
        for r in &d.task_refs {
            check_ref(r)?;
        }
        if let Some(pkg) = &d.pkg {
            let resolve = |key: &str, spec: &str| {
                npm::local_target(key, spec, &d.project.dir, &lookup_name, &lookup_dir)
                    .and_then(|name| by_pkg.get(name.as_str()).copied())
                    .filter(|&j| j != i)
            };
            for (k, s) in &pkg.deps {
                if let Some(j) = resolve(k, s) {
                    hard[i].insert(j);
                }
            }
            for (k, s) in &pkg.peer_deps {
                if let Some(j) = resolve(k, s)
                    && !hard[i].contains(&j)
                {
                    peers.push((i, j));
                }
            }
        }
    }
    // Turbo keys the files of the root package's workspace dependencies
    // (and theirs) into every task (its global `hashOfInternalDependencies`):
    // a shared config package the root depends on changes every key.
    let root_internal: Vec<usize> = match (&root_pkg, turbo_mode && !root_is_member) {
        (Some(pkg), true) => {
            let mut todo: Vec<usize> = pkg
                .deps
                .iter()
                .filter_map(|(k, s)| {
                    npm::local_target(k, s, ".", &lookup_name, &lookup_dir)
                        .and_then(|name| by_pkg.get(name.as_str()).copied())
                })
                .collect();
            let mut seen = BTreeSet::new();
            while let Some(i) = todo.pop() {
                if seen.insert(i) {
                    todo.extend(hard[i].iter().copied());
                }
            }
            seen.into_iter().collect()
        }
        _ => Vec::new(),
    };
    if let Some(cycle) = find_cycle(&hard) {
        let path: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
        let first = &drafts[cycle[0]];
        let file = first
            .pkg_file
            .clone()
            .filter(|_| first.declared.is_empty())
            .unwrap_or_else(|| first.project.config_file.clone());
        return Err(ConfigError::in_file(
            file,
            format!("package dependency cycle: {}", path.join(" → ")),
        )
        .with_hint(
            "remove one of these dependencies (package.json dependencies or vx.toml `deps`)",
        ));
    }
    // A peer dependency orders only when it does not close a cycle.
    peers.sort_unstable();
    for (i, j) in peers {
        if !reaches(&hard, j, i) {
            hard[i].insert(j);
        }
    }

    let mut projects: Vec<Project> = Vec::with_capacity(n);
    let dep_names: Vec<Vec<String>> = hard
        .iter()
        .map(|s| s.iter().map(|&j| names[j].to_string()).collect())
        .collect();
    for (d, deps) in drafts.into_iter().zip(dep_names) {
        let mut p = d.project;
        p.deps = deps; // indices are in name order, so already sorted
        projects.push(p);
    }

    // Defaults and global config.
    let mut defaults = Defaults::default();
    let mut global = GlobalConfig::default();
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let dirs: Vec<guard::ProjectDir<'_>> = projects
        .iter()
        .map(|p| guard::ProjectDir {
            name: &p.name,
            dir: &p.dir,
        })
        .collect();
    if let Some(w) = &ws {
        defaults.concurrency = w.concurrency;
        defaults.timeout_ms = w.timeout_ms;
        if let Some(d) = &w.cache_dir {
            let here = |msg: String| match &root_vx {
                Some(v) => v.src.err(msg).at_opt(w.cache_dir_pos),
                None => ConfigError::in_file(VX, msg),
            };
            let abs = resolve_cache_dir(&root, Path::new(d), home.as_deref())
                .map_err(|m| here(format!("`cache_dir = {d:?}`: {m}")).with_hint(CACHE_HINT))?;
            if let Some(why) = guard::cache_dir_problem(&root, &abs, home.as_deref(), &dirs) {
                return Err(here(format!(
                    "`cache_dir = {d:?}` is refused: {why}, and `vx cache clean` deletes the cache directory"
                ))
                .with_hint(CACHE_HINT));
            }
            defaults.cache_dir = Some(abs);
        }
        global = w.global.clone();
        defaults.remote_cache = root_vx.as_ref().and_then(|v| v.remote_cache.clone());
        defaults.plugin_hooks = root_vx.as_ref().is_some_and(|v| v.plugin_hooks);
        defaults.remote_execution = root_vx.as_ref().and_then(|v| v.remote_execution.clone());
    } else if let Some(t) = &turbo_root {
        defaults.concurrency = t.concurrency;
        defaults.env_mode = t.env_mode;
        global = t.global.clone();
    }
    for &i in &root_internal {
        let dir = &projects[i].dir;
        if dir != "." {
            global.internal.push(format!("{dir}/**"));
        }
    }

    if defaults.cache_dir.is_none()
        && let Some(v) = vx_proto::knobs::CACHE_DIR.inherited_os()
    {
        let shown = Path::new(&v).display().to_string();
        let abs = resolve_cache_dir(&root, Path::new(&v), home.as_deref()).map_err(|m| {
            ConfigError::new(format!("{CACHE_ENV}={shown}: {m}")).with_hint(CACHE_HINT)
        })?;
        if let Some(why) = guard::cache_dir_problem(&root, &abs, home.as_deref(), &dirs) {
            return Err(ConfigError::new(format!(
                "{CACHE_ENV}={shown} is refused: {why}, and `vx cache clean` deletes the cache directory"
            ))
            .with_hint(CACHE_HINT));
        }
    }
    drop(dirs);

    Ok(Workspace {
        root,
        kind,
        projects,
        global,
        defaults,
        config_files: ld.files.into_iter().collect(),
        member_notes,
        warnings,
    })
}

/// What a package manager adds to a `package.json` script task, in turbo
/// mode: `pre<task>` and `post<task>` scripts around it (when the manager
/// runs them, [`npm::runs_pre_post`]), and the env wildcards of the
/// framework the package uses (turbo's framework inference).
fn turbo_scripts(root: &Path, root_pkg: Option<&npm::PackageJson>, drafts: &mut [Draft]) {
    let pre_post = npm::runs_pre_post(root, root_pkg);
    for d in drafts.iter_mut() {
        let Some(pkg) = &d.pkg else { continue };
        let framework = super::framework::detect(pkg.deps.iter().map(|(n, _)| n.as_str()));
        for (name, def) in d.project.tasks.iter_mut() {
            if let Some((_, env)) = framework {
                def.framework_env = env.iter().map(|e| e.to_string()).collect();
            }
            let Some(cmd) = def.command.as_ref().filter(|_| def.npm_script && pre_post) else {
                continue;
            };
            let pre = pkg.scripts.get(&format!("pre{name}"));
            let post = pkg.scripts.get(&format!("post{name}"));
            if pre.is_none() && post.is_none() {
                continue;
            }
            let parts: Vec<String> = [pre, Some(cmd), post]
                .into_iter()
                .flatten()
                .map(|c| format!("( {c} )"))
                .collect();
            def.command = Some(parts.join(" && "));
        }
    }
}

fn find_line_starting(text: &str, prefix: &str) -> Option<(usize, usize)> {
    text.lines()
        .position(|l| l.trim_start().starts_with(prefix))
        .map(|i| (i + 1, 1))
}

/// The environment variable that sets the cache directory when the config
/// does not.
pub const CACHE_ENV: &str = vx_proto::knobs::CACHE_DIR.name;

const CACHE_HINT: &str = "give the cache a directory of its own: leave it unset (the default is `.vx/cache` in the workspace), or name one outside the workspace such as `~/.cache/vx/<name>`";

/// A configured cache directory (`cache_dir` or `VX_CACHE_DIR`) made
/// absolute: relative to the workspace root, `~` and `~/...` under `$HOME`.
/// Err: `~user` forms (not expanded: they would make a directory named `~...`),
/// or `~` without `$HOME`.
pub fn resolve_cache_dir(root: &Path, d: &Path, home: Option<&Path>) -> Result<PathBuf, String> {
    let mut comps = d.components();
    if let Some(std::path::Component::Normal(first)) = comps.clone().next()
        && first.as_encoded_bytes().starts_with(b"~")
    {
        if first != "~" {
            return Err(format!(
                "`{}` is not expanded; write the home directory's path",
                first.to_string_lossy()
            ));
        }
        comps.next();
        let Some(home) = home else {
            return Err("`~` needs $HOME, which is not set".to_string());
        };
        return Ok(home.join(comps.as_path()));
    }
    Ok(if d.is_absolute() {
        d.to_path_buf()
    } else {
        root.join(d)
    })
}

/// The manifests of one member directory.
struct MemberRead {
    pkg: Option<(Src, PackageJson)>,
    vx: Option<VxFile>,
    turbo: Option<Src>,
}

fn read_rel(root: &Path, rel: String) -> Result<Option<Src>, ConfigError> {
    let text = read_abs(&root.join(&rel)).map_err(|e| e.with_file(&rel))?;
    Ok(text.map(|t| Src::new(rel, t)))
}

/// Reads and parses one member's manifests (`None`: not a member).
fn read_member(
    root: &Path,
    dir: &str,
    turbo_mode: bool,
) -> Result<Option<MemberRead>, ConfigError> {
    let pkg = match read_rel(root, rel_join(dir, PKG))? {
        Some(s) => {
            let p = npm::parse_package_json(&s)?;
            Some((s, p))
        }
        None => None,
    };
    if turbo_mode {
        if pkg.is_none() {
            return Ok(None);
        }
        let turbo = read_rel(root, rel_join(dir, TURBO))?;
        return Ok(Some(MemberRead {
            pkg,
            vx: None,
            turbo,
        }));
    }
    let vx = read_rel(root, rel_join(dir, VX))?
        .map(vxtoml::parse)
        .transpose()?;
    if pkg.is_none() && vx.is_none() {
        return Ok(None);
    }
    Ok(Some(MemberRead {
        pkg,
        vx,
        turbo: None,
    }))
}

type MemberResult = Result<Option<MemberRead>, ConfigError>;

/// Reads every member (in parallel for large workspaces), in `dirs` order.
fn read_members(root: &Path, dirs: &[String], turbo_mode: bool) -> Vec<MemberResult> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads < 2 || dirs.len() < 64 {
        return dirs
            .iter()
            .map(|d| read_member(root, d, turbo_mode))
            .collect();
    }
    let chunk = dirs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|d| read_member(root, d, turbo_mode))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// One member directory → a draft project (`None`: skipped).
fn member_draft(
    root: &Path,
    dir: &str,
    vx: Option<VxFile>,
    pkg: Option<(Src, PackageJson)>,
    own_turbo: Option<TurboPackage>,
    turbo_root: Option<&TurboRoot>,
) -> Result<Option<Draft>, ConfigError> {
    let pkg_name = match &pkg {
        Some((src, p)) => match &p.name {
            Some(n) => {
                check::project_name(n).map_err(|e| src.err_near(n, "name", e))?;
                Some(n.clone())
            }
            None => None,
        },
        None => None,
    };
    let base = || {
        if dir == "." {
            root.file_name().map(|s| s.to_string_lossy().into_owned())
        } else {
            dir.rsplit('/').next().map(str::to_string)
        }
    };
    let name = match (vx.as_ref().and_then(|v| v.project.name.clone()), &pkg_name) {
        (Some(n), _) => n,
        (None, Some(n)) => n.clone(),
        (None, None) if vx.is_some() || dir == "." => match base() {
            Some(b) => b,
            None => return Ok(None),
        },
        (None, None) => {
            tracing::debug!(dir, "skipping member: package.json has no name");
            return Ok(None);
        }
    };
    if vx.as_ref().and_then(|v| v.project.name.as_ref()).is_none() && pkg_name.is_none() {
        check::project_name(&name).map_err(|e| {
            ConfigError::new(format!("{e} (the name of `{dir}`, from its directory)"))
                .with_hint("set `[project] name` in its vx.toml")
        })?;
    }
    let version = pkg.as_ref().and_then(|(_, p)| p.version.clone());
    let pkg_file = pkg.as_ref().map(|(s, _)| s.file.clone());

    let (tasks, tags, config_file, declared, task_refs) = match turbo_root {
        Some(troot) => {
            let own = own_turbo;
            let scripts = pkg
                .as_ref()
                .map(|(_, p)| p.scripts.clone())
                .unwrap_or_default();
            let config_file = match &own {
                Some(_) => rel_join(dir, TURBO),
                None => pkg_file.clone().unwrap_or_else(|| rel_join(dir, PKG)),
            };
            let tasks = turbo::package_tasks(
                troot,
                pkg_name.as_deref().unwrap_or(&name),
                own.as_ref(),
                &scripts,
            )
            .map_err(|(task, o)| {
                let file = if own.is_some() { &config_file } else { TURBO };
                ConfigError::in_file(
                    file,
                    o.message(&format!("`outputs` of task `{task}` (merged for `{name}`)")),
                )
                .with_hint(o.hint())
            })?;
            let own = own.unwrap_or_default();
            (tasks, own.tags, config_file, Vec::new(), own.refs)
        }
        None => match vx {
            Some(v) => (
                v.tasks.unwrap_or_default(),
                v.project.tags,
                v.src.file.clone(),
                v.project.deps,
                v.task_refs,
            ),
            None => (
                BTreeMap::<String, TaskDef>::new(),
                Vec::new(),
                pkg_file.clone().unwrap_or_else(|| rel_join(dir, PKG)),
                Vec::new(),
                Vec::new(),
            ),
        },
    };
    Ok(Some(Draft {
        project: Project {
            name,
            dir: dir.to_string(),
            deps: Vec::new(),
            tags,
            version,
            config_file,
            tasks,
        },
        pkg_name,
        pkg: pkg.map(|(_, p)| p),
        pkg_file,
        declared,
        task_refs,
    }))
}

/// A cycle in `edges` as a node path that starts and ends on the same node.
fn find_cycle(edges: &[BTreeSet<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum C {
        White,
        Grey,
        Black,
    }
    let n = edges.len();
    let mut color = vec![C::White; n];
    for start in 0..n {
        if color[start] != C::White {
            continue;
        }
        let mut stack: Vec<(usize, std::collections::btree_set::Iter<'_, usize>)> =
            vec![(start, edges[start].iter())];
        color[start] = C::Grey;
        while let Some((node, it)) = stack.last_mut() {
            let node = *node;
            match it.next() {
                Some(&next) => match color[next] {
                    C::White => {
                        color[next] = C::Grey;
                        stack.push((next, edges[next].iter()));
                    }
                    C::Grey => {
                        let pos = stack.iter().position(|(x, _)| *x == next).unwrap_or(0);
                        let mut path: Vec<usize> = stack[pos..].iter().map(|(x, _)| *x).collect();
                        path.push(next);
                        return Some(path);
                    }
                    C::Black => {}
                },
                None => {
                    color[node] = C::Black;
                    stack.pop();
                }
            }
        }
    }
    None
}

/// Whether `to` is reachable from `from`.
fn reaches(edges: &[BTreeSet<usize>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; edges.len()];
    let mut stack = vec![from];
    while let Some(x) = stack.pop() {
        if x == to {
            return true;
        }
        if std::mem::replace(&mut seen[x], true) {
            continue;
        }
        stack.extend(edges[x].iter().copied());
    }
    false
}
