//! `nx.json` + `project.json` → `vx.toml`: targets (merged with
//! `targetDefaults`) become tasks; `dependsOn`, `inputs` (named inputs
//! expanded, `{projectRoot}` / `{workspaceRoot}` tokens), `outputs`,
//! `cache` and `continuous` map to their vx fields; `nx:run-commands`,
//! `nx:run-script` and `package.json` scripts give the command. Other
//! executors become a group task with a TODO and a report line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value};

use super::emit::{TaskOut, WorkspaceOut};
use super::scripts::scripts_of;
use super::{FileOut, Translation, read_json, rel_join, strings};
use crate::error::EngineError;

/// Directories never searched for `project.json`.
const SKIP: &[&str] = &["node_modules", "dist", "target", "build", "coverage", "tmp"];

/// Root-relative directories holding a `project.json`, sorted.
fn project_dirs(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::from("."), 0usize)];
    while let Some((abs, rel, depth)) = stack.pop() {
        if abs.join("project.json").is_file() {
            out.push(rel.clone());
        }
        if depth >= 6 {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&abs) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || SKIP.contains(&name.as_str()) {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), rel_join(&rel, &name), depth + 1));
            }
        }
    }
    out.sort();
    out
}

/// One Nx project as read.
struct NxProject {
    name: String,
    dir: String,
    /// Name vx would give it without `[project] name`.
    vx_default_name: String,
    tags: Vec<String>,
    implicit: Vec<String>,
    /// Target name → merged target (defaults applied) and where it came from.
    targets: BTreeMap<String, (Map<String, Value>, String)>,
    scripts: BTreeMap<String, String>,
}

fn obj(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// `over` on top of `base`, with `options` merged key by key.
fn merge(base: &Map<String, Value>, over: &Map<String, Value>) -> Map<String, Value> {
    let mut out = base.clone();
    for (k, v) in over {
        if k == "options"
            && let (Some(b), Some(o)) = (base.get(k).and_then(Value::as_object), v.as_object())
        {
            let mut m = b.clone();
            m.extend(o.clone());
            out.insert(k.clone(), Value::Object(m));
            continue;
        }
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Replaces `{projectRoot}`, `{projectName}` and `{workspaceRoot}/` in a path.
fn tokens(s: &str, dir: &str, name: &str) -> String {
    let pr = if dir == "." { "" } else { dir };
    s.replace("{workspaceRoot}/", "")
        .replace("{workspaceRoot}", "")
        .replace("{projectRoot}", pr)
        .replace("{projectName}", name)
        .trim_start_matches('/')
        .to_string()
}

/// A root-relative path → project-relative, when it lies inside the project.
fn in_project(path: &str, dir: &str) -> Option<String> {
    let path = path.trim_start_matches("./");
    if dir == "." {
        return Some(path.to_string());
    }
    if path == dir {
        return Some("**".to_string());
    }
    path.strip_prefix(&format!("{dir}/")).map(str::to_string)
}

/// `a/**/*` → `a/**`; `**/*` → `**`.
fn tidy(g: &str) -> String {
    if g == "**/*" || g.is_empty() {
        "**".to_string()
    } else if let Some(b) = g.strip_suffix("/**/*") {
        format!("{b}/**")
    } else {
        g.to_string()
    }
}

/// The relative path from project `dir` to root-relative `to`.
fn rel_path(dir: &str, to: &str) -> String {
    let from: Vec<&str> = if dir == "." {
        vec![]
    } else {
        dir.split('/').collect()
    };
    let to: Vec<&str> = if to == "." || to.is_empty() {
        vec![]
    } else {
        to.trim_start_matches("./")
            .trim_end_matches('/')
            .split('/')
            .collect()
    };
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend(&to[common..]);
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

struct Ctx<'a> {
    named: &'a Map<String, Value>,
    note: Vec<(String, String, String)>,
    global: Vec<String>,
}

impl Ctx<'_> {
    fn note(&mut self, file: &str, item: String, reason: &str) {
        self.note.push((file.to_string(), item, reason.to_string()));
    }

    /// Expands an Nx inputs list into project-relative globs and env names.
    #[allow(clippy::too_many_arguments)]
    fn inputs(
        &mut self,
        list: &[Value],
        p: &NxProject,
        file: &str,
        what: &str,
        has_up: bool,
        globs: &mut Vec<String>,
        env: &mut Vec<String>,
        depth: usize,
    ) {
        for i in list {
            match i {
                Value::String(s) => {
                    if let Some(n) = s.strip_prefix('^') {
                        if !has_up {
                            self.note(
                                file,
                                format!("{what} \"{s}\""),
                                "vx keys a task by its dependency tasks' keys, not their files: add `depends_on = [\"^<task>\"]` if these files matter",
                            );
                        }
                        let _ = n;
                        continue;
                    }
                    if let Some(named) = self.named.get(s.as_str()).and_then(Value::as_array) {
                        if depth < 8 {
                            let named = named.clone();
                            self.inputs(&named, p, file, what, has_up, globs, env, depth + 1);
                        }
                        continue;
                    }
                    self.file_input(s, p, file, what, globs);
                }
                Value::Object(o) => {
                    if let Some(e) = o.get("env").and_then(Value::as_str) {
                        if !env.contains(&e.to_string()) {
                            env.push(e.to_string());
                        }
                    } else if let Some(f) = o.get("fileset").and_then(Value::as_str) {
                        self.file_input(f, p, file, what, globs);
                    } else {
                        let k = o.keys().next().cloned().unwrap_or_default();
                        let why = match k.as_str() {
                            "runtime" => {
                                "vx does not key a command's output: list an env variable or a file instead"
                            }
                            "externalDependencies" => {
                                "vx does not key installed package versions: add the lockfile to `global_inputs` if they matter"
                            }
                            "dependentTasksOutputFiles" => {
                                "vx keys a task by its dependency tasks' keys, which cover their outputs"
                            }
                            _ => "an Nx input with no vx counterpart",
                        };
                        self.note(file, format!("{what} {{\"{k}\": …}}"), why);
                    }
                }
                _ => {}
            }
        }
    }

    fn file_input(
        &mut self,
        s: &str,
        p: &NxProject,
        file: &str,
        what: &str,
        globs: &mut Vec<String>,
    ) {
        let (neg, body) = match s.strip_prefix('!') {
            Some(b) => ("!", b),
            None => ("", s),
        };
        let in_root = body.starts_with("{workspaceRoot}");
        let path = tokens(body, &p.dir, &p.name);
        if !in_root && let Some(r) = in_project(&path, &p.dir) {
            let g = format!("{neg}{}", tidy(&r));
            if !globs.contains(&g) {
                globs.push(g);
            }
            return;
        }
        let g = format!("{neg}{}", tidy(&path));
        if !self.global.contains(&g) {
            self.global.push(g.clone());
            self.note(
                file,
                format!("{what} \"{s}\""),
                "a workspace file: vx.toml has no per-task root input, so it went to `global_inputs` (keyed into every task)",
            );
        }
    }
}

pub(crate) fn translate(root: &Path) -> Result<Translation, EngineError> {
    let nx = read_json(&root.join("nx.json"))?.unwrap_or(Value::Null);
    let defaults = obj(nx.get("targetDefaults"));
    let named = obj(nx.get("namedInputs"));
    let mut t = Translation::default();
    for k in nx.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !matches!(k.as_str(), "$schema" | "targetDefaults" | "namedInputs") {
            t.note("nx.json", k.clone(), "an Nx setting with no vx counterpart");
        }
    }

    let mut projects: Vec<NxProject> = Vec::new();
    for dir in project_dirs(root) {
        let pj_file = rel_join(&dir, "project.json");
        let pj = read_json(&root.join(&pj_file))?.unwrap_or(Value::Null);
        let pkg = read_json(&root.join(rel_join(&dir, "package.json")))?.unwrap_or(Value::Null);
        let pkg_name = pkg.get("name").and_then(Value::as_str).map(str::to_string);
        let base = if dir == "." {
            root.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            dir.rsplit('/').next().unwrap_or(&dir).to_string()
        };
        let vx_default_name = pkg_name.clone().unwrap_or_else(|| base.clone());
        let name = pj
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| vx_default_name.clone());
        let scripts = scripts_of(&pkg);
        let mut targets: BTreeMap<String, (Map<String, Value>, String)> = BTreeMap::new();
        for s in scripts.keys() {
            let mut m = Map::new();
            m.insert("script".into(), Value::String(s.clone()));
            targets.insert(
                s.clone(),
                (
                    m,
                    format!("{} \"scripts.{s}\"", rel_join(&dir, "package.json")),
                ),
            );
        }
        for (k, v) in obj(pj.get("targets")) {
            let m = v.as_object().cloned().unwrap_or_default();
            targets.insert(k.clone(), (m, format!("{pj_file} \"targets.{k}\"")));
        }
        for (k, (m, from)) in targets.iter_mut() {
            let exec = m
                .get("executor")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let def = defaults
                .get(k.as_str())
                .or_else(|| defaults.get(&exec))
                .and_then(Value::as_object);
            if let Some(d) = def {
                *m = merge(d, m);
                from.push_str(&format!(
                    ", nx.json \"targetDefaults.{}\"",
                    if defaults.contains_key(k.as_str()) {
                        k.as_str()
                    } else {
                        &exec
                    }
                ));
            }
        }
        projects.push(NxProject {
            name,
            dir,
            vx_default_name,
            tags: strings(pj.get("tags")).unwrap_or_default(),
            implicit: strings(pj.get("implicitDependencies")).unwrap_or_default(),
            targets,
            scripts,
        });
    }
    if projects.is_empty() {
        return Err(EngineError::new(
            crate::error::ErrorKind::User,
            "nx.json found, but no project.json: vx init --from nx translates project.json targets (try --from scripts)",
        ));
    }
    let names: BTreeSet<String> = projects.iter().map(|p| p.name.clone()).collect();
    let has_target = |p: &str, tgt: &str| {
        projects
            .iter()
            .any(|x| x.name == p && x.targets.contains_key(tgt))
    };
    let any_target = |tgt: &str| projects.iter().any(|x| x.targets.contains_key(tgt));

    let mut ctx = Ctx {
        named: &named,
        note: Vec::new(),
        global: Vec::new(),
    };
    let mut files = Vec::new();
    let mut root_tasks = Vec::new();
    for p in &projects {
        let pj_file = rel_join(&p.dir, "project.json");
        let mut deps = Vec::new();
        for d in &p.implicit {
            if names.contains(d) && d != &p.name {
                deps.push(d.clone());
            } else {
                ctx.note(&pj_file, format!("implicitDependencies \"{d}\""), "not a project name vx can list in `deps` (negations and globs are not translated)");
            }
        }
        let mut tasks = Vec::new();
        for (tname, (m, from)) in &p.targets {
            let what = format!("targets.{tname}");
            let mut task = TaskOut {
                name: tname.clone(),
                comments: vec![format!("from {from}")],
                ..TaskOut::default()
            };
            // Command.
            let exec = m
                .get("executor")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let opts = obj(m.get("options"));
            let script = if let Some(s) = m.get("script").and_then(Value::as_str) {
                Some(s.to_string())
            } else if exec == "nx:run-script" {
                opts.get("script")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            } else {
                None
            };
            if let Some(s) = script {
                match p.scripts.get(&s) {
                    Some(text) => task.command = Some(text.clone()),
                    None => task
                        .todos
                        .push(format!("package.json has no script \"{s}\"")),
                }
            } else if exec == "nx:run-commands"
                || m.contains_key("command")
                || (exec.is_empty() && opts.contains_key("command"))
            {
                let mut cmds: Vec<String> = Vec::new();
                if let Some(c) = m
                    .get("command")
                    .or_else(|| opts.get("command"))
                    .and_then(Value::as_str)
                {
                    cmds.push(c.to_string());
                }
                for c in opts
                    .get("commands")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match c {
                        Value::String(s) => cmds.push(s.clone()),
                        Value::Object(o) => cmds
                            .extend(o.get("command").and_then(Value::as_str).map(str::to_string)),
                        _ => {}
                    }
                }
                let parallel = opts
                    .get("parallel")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                if cmds.len() > 1 && parallel {
                    ctx.note(
                        &pj_file,
                        format!("{what}.options.commands"),
                        "Nx runs these in parallel; vx.toml runs them one after the other (`&&`)",
                    );
                }
                let cwd = opts
                    .get("cwd")
                    .and_then(Value::as_str)
                    .map(|c| tokens(c, &p.dir, &p.name))
                    .unwrap_or_default();
                let rel = rel_path(&p.dir, if cwd.is_empty() { "." } else { &cwd });
                let joined: Vec<String> = cmds
                    .iter()
                    .map(|c| tokens_cmd(c, &p.dir, &p.name))
                    .collect();
                if joined.is_empty() {
                    task.todos.push("nx:run-commands without a command".into());
                } else if rel == "." {
                    task.command = Some(joined.join(" && "));
                } else {
                    task.comments.push(format!(
                        "Nx runs it in `{}`",
                        if cwd.is_empty() {
                            "the workspace root"
                        } else {
                            &cwd
                        }
                    ));
                    task.command = Some(format!("cd {rel} && {}", joined.join(" && ")));
                }
                for k in opts.keys() {
                    if !matches!(k.as_str(), "command" | "commands" | "cwd" | "parallel") {
                        ctx.note(
                            &pj_file,
                            format!("{what}.options.{k}"),
                            "an nx:run-commands option with no vx counterpart",
                        );
                    }
                }
            } else if exec == "nx:noop" {
                task.comments.push("nx:noop: a group task".into());
            } else if !exec.is_empty() {
                task.todos.push(format!(
                    "executor `{exec}` has no vx translation: write its command"
                ));
                ctx.note(&pj_file, format!("{what}.executor \"{exec}\""), "vx runs shell commands, not Nx executors: the task is a group task with a TODO until its command is written");
            }
            for k in [
                "configurations",
                "defaultConfiguration",
                "parallelism",
                "syncGenerators",
            ] {
                if m.contains_key(k) {
                    ctx.note(&pj_file, format!("{what}.{k}"), "no vx counterpart");
                }
            }
            // Dependencies.
            let mut deps_on: Vec<String> = Vec::new();
            let push = |d: String, v: &mut Vec<String>| {
                if !v.contains(&d) {
                    v.push(d);
                }
            };
            for d in m
                .get("dependsOn")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (form, raw) = match d {
                    Value::String(s) => (dep_string(s, &names), s.clone()),
                    Value::Object(o) => (dep_object(o), Value::Object(o.clone()).to_string()),
                    _ => (Err("not a string or an object".into()), d.to_string()),
                };
                match form {
                    Ok(forms) => {
                        for f in forms {
                            let ok = if let Some(n) = f.strip_prefix('^') {
                                any_target(n)
                            } else if let Some((pp, n)) = f.split_once('#') {
                                has_target(pp, n)
                            } else {
                                p.targets.contains_key(&f)
                            };
                            if ok {
                                push(f, &mut deps_on);
                            } else {
                                ctx.note(
                                    &pj_file,
                                    format!("{what}.dependsOn {raw}"),
                                    "names a target no project defines: dropped",
                                );
                            }
                        }
                    }
                    Err(why) => ctx.note(&pj_file, format!("{what}.dependsOn {raw}"), &why),
                }
            }
            let has_up = deps_on.iter().any(|d| d.starts_with('^'));
            // Outputs.
            let mut outputs = Vec::new();
            for o in strings(m.get("outputs")).unwrap_or_default() {
                let (neg, body) = match o.strip_prefix('!') {
                    Some(b) => ("!", b.to_string()),
                    None => ("", o.clone()),
                };
                let mut path = body.clone();
                let mut unresolved = false;
                while let Some(start) = path.find("{options.") {
                    let Some(end) = path[start..].find('}') else {
                        break;
                    };
                    let key = &path[start + 9..start + end];
                    match opts.get(key).and_then(Value::as_str) {
                        Some(v) => {
                            path = format!("{}{}{}", &path[..start], v, &path[start + end + 1..])
                        }
                        None => {
                            unresolved = true;
                            break;
                        }
                    }
                }
                if unresolved {
                    ctx.note(
                        &pj_file,
                        format!("{what}.outputs \"{o}\""),
                        "names an option the target does not set: dropped",
                    );
                    continue;
                }
                let path = tokens(&path, &p.dir, &p.name);
                match in_project(&path, &p.dir) {
                    Some(r) if r != "**" => outputs.push(format!("{neg}{}", tidy(&r))),
                    _ => ctx.note(
                        &pj_file,
                        format!("{what}.outputs \"{o}\""),
                        "outside the project: vx caches only files inside the project's directory",
                    ),
                }
            }
            // Inputs.
            let list: Vec<Value> = match m.get("inputs").and_then(Value::as_array) {
                Some(l) => l.clone(),
                None if named.contains_key("default") => vec![Value::String("default".into())],
                None => vec![Value::String("{projectRoot}/**/*".into())],
            };
            let mut globs = Vec::new();
            let mut env = Vec::new();
            ctx.inputs(
                &list,
                p,
                &pj_file,
                &format!("{what}.inputs"),
                has_up,
                &mut globs,
                &mut env,
                0,
            );
            let inputs = if globs == ["**"] || globs.is_empty() {
                None
            } else {
                let mut g = globs;
                for o in outputs.iter().filter(|o| !o.starts_with('!')) {
                    let neg = format!("!{o}");
                    if !g.contains(&neg) {
                        g.push(neg);
                    }
                }
                Some(g)
            };
            let continuous = m
                .get("continuous")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let cache = m.get("cache").and_then(Value::as_bool).unwrap_or(false);
            if task.command.is_some() {
                task.depends_on = (!deps_on.is_empty()).then_some(deps_on);
                task.outputs = (!outputs.is_empty()).then_some(outputs);
                task.persistent = continuous;
                task.cache = (!continuous).then_some(cache);
            } else {
                task.depends_on = Some(deps_on);
                if !outputs.is_empty() {
                    task.todos
                        .push(format!("outputs in Nx: {}", outputs.join(", ")));
                }
            }
            task.inputs = inputs;
            task.env = env;
            tasks.push(task);
        }
        if p.dir == "." {
            root_tasks = tasks;
            continue;
        }
        files.push(FileOut {
            path: rel_join(&p.dir, "vx.toml"),
            header: vec![format!(
                "Generated by `vx init` from {pj_file} and nx.json (project `{}`).",
                p.name
            )],
            name: (p.name != p.vx_default_name).then(|| p.name.clone()),
            deps,
            tags: p.tags.clone(),
            tasks,
            ..FileOut::default()
        });
    }
    for (f, i, r) in std::mem::take(&mut ctx.note) {
        t.note(&f, i, r);
    }
    t.note(
        "nx.json",
        "project graph",
        "Nx also infers dependencies from imports in source files; vx uses package.json dependencies and [project] deps (from implicitDependencies): add the missing ones to `deps`",
    );
    let members: Vec<String> = projects
        .iter()
        .filter(|p| p.dir != ".")
        .map(|p| p.dir.clone())
        .collect();
    let mut all = vec![FileOut {
        path: "vx.toml".into(),
        header: vec!["Generated by `vx init` from nx.json and the project.json files.".into()],
        workspace: Some(WorkspaceOut {
            comments: vec!["members: every directory with a project.json".into()],
            members: Some(members),
            global_inputs: ctx.global,
            ..WorkspaceOut::default()
        }),
        tasks: root_tasks,
        ..FileOut::default()
    }];
    all.extend(files);
    t.files = all;
    Ok(t)
}

/// `{projectRoot}` etc. in a command.
fn tokens_cmd(c: &str, dir: &str, name: &str) -> String {
    c.replace("{workspaceRoot}", ".")
        .replace("{projectRoot}", if dir == "." { "." } else { dir })
        .replace("{projectName}", name)
}

/// A string `dependsOn` entry: `build`, `^build`, `project:target`.
fn dep_string(s: &str, names: &BTreeSet<String>) -> Result<Vec<String>, String> {
    if let Some((p, tgt)) = s.split_once(':')
        && names.contains(p)
    {
        return Ok(vec![format!("{p}#{tgt}")]);
    }
    if s.contains('*') || s.contains('{') {
        return Err("a target pattern: vx names targets exactly".into());
    }
    Ok(vec![s.to_string()])
}

/// An object `dependsOn` entry: `{target, projects|dependencies, params}`.
fn dep_object(o: &Map<String, Value>) -> Result<Vec<String>, String> {
    let Some(target) = o.get("target").and_then(Value::as_str) else {
        return Err("no `target`".into());
    };
    if o.contains_key("params") {
        // Forwarding args has no vx counterpart; the edge itself still maps.
    }
    if o.get("dependencies").and_then(Value::as_bool) == Some(true) {
        return Ok(vec![format!("^{target}")]);
    }
    match o.get("projects") {
        None => Ok(vec![target.to_string()]),
        Some(Value::String(s)) if s == "self" => Ok(vec![target.to_string()]),
        Some(Value::String(s)) if s == "dependencies" => Ok(vec![format!("^{target}")]),
        Some(Value::String(s)) if !s.contains('*') && !s.contains(':') => {
            Ok(vec![format!("{s}#{target}")])
        }
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for p in a {
                match p.as_str() {
                    Some(p) if !p.contains('*') && !p.contains(':') && !p.starts_with('!') => {
                        out.push(format!("{p}#{target}"))
                    }
                    _ => {
                        return Err(
                            "project patterns and tags are not translated: list the projects"
                                .into(),
                        );
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err("project patterns and tags are not translated: list the projects".into()),
    }
}

#[cfg(test)]
pub(crate) fn rel_path_for_test(dir: &str, to: &str) -> String {
    rel_path(dir, to)
}
