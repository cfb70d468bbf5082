//! `graph` — the task graph and what a run selects from it.
//!
//! Owns: turning every project's task definitions into one petgraph DAG
//! (edges from a task to the tasks it depends on: `name`, `^name`,
//! `project#name`), cycle detection with the cycle's path, and selection:
//! requested task names, `--filter`, `--all`, `--affected` (git is asked only
//! here), and the dependency closure a run must execute.
//!
//! Never: reads file contents for hashing, touches the cache, or spawns a task.

use crate::error::{EngineError, ErrorKind};
use crate::globs::Patterns;
use crate::workspace::{ConfigKind, Project, TaskDef, Workspace};
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::process::Command;

/// A graph or selection error and the kind of failure it is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GraphError {
    pub kind: ErrorKind,
    pub message: String,
}

impl From<GraphError> for EngineError {
    fn from(e: GraphError) -> Self {
        EngineError::new(e.kind, e.message)
    }
}

fn gerr(kind: ErrorKind, message: impl Into<String>) -> GraphError {
    GraphError {
        kind,
        message: message.into(),
    }
}

/// One task node.
#[derive(Debug, Clone)]
pub struct TaskNode {
    /// `project#task`.
    pub id: String,
    /// Index into `Workspace::projects`.
    pub project: usize,
    pub name: String,
    pub def: TaskDef,
}

/// All tasks of the workspace and their dependency edges.
#[derive(Debug, Clone)]
pub struct TaskGraph {
    pub nodes: Vec<TaskNode>,
    /// Edge `a -> b` means `a` depends on `b`. Node indices equal `nodes` indices.
    pub graph: DiGraph<(), ()>,
    by_id: HashMap<String, usize>,
}

fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let best = candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(s, _)| *s > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, c)) => format!(" (did you mean `{c}`?)"),
        None => String::new(),
    }
}

impl TaskGraph {
    /// Builds the graph of every task in the workspace and checks it for cycles.
    pub fn build(ws: &Workspace) -> Result<Self, GraphError> {
        let mut nodes = Vec::new();
        let mut by_id = HashMap::new();
        for (pi, p) in ws.projects.iter().enumerate() {
            for (name, def) in &p.tasks {
                let id = format!("{}#{}", p.name, name);
                by_id.insert(id.clone(), nodes.len());
                nodes.push(TaskNode {
                    id,
                    project: pi,
                    name: name.clone(),
                    def: def.clone(),
                });
            }
        }
        let mut graph = DiGraph::with_capacity(nodes.len(), nodes.len() * 2);
        for _ in 0..nodes.len() {
            graph.add_node(());
        }
        let lenient = ws.kind == ConfigKind::Turbo;
        let declared: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        let mut edges: Vec<(usize, usize)> = Vec::new();
        let project_index: HashMap<&str, usize> = ws
            .projects
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        for (ni, node) in nodes.iter().enumerate() {
            let project = &ws.projects[node.project];
            for form in &node.def.depends_on {
                let here = || {
                    format!(
                        "{}: task `{}` depends_on `{}`",
                        project.config_file, node.name, form
                    )
                };
                if let Some(name) = form.strip_prefix('^') {
                    if !declared.contains(name) {
                        if lenient {
                            continue;
                        }
                        return Err(gerr(
                            ErrorKind::Config,
                            format!(
                                "{}: no project declares a task `{name}`{}",
                                here(),
                                did_you_mean(name, declared.iter().copied())
                            ),
                        ));
                    }
                    for target in frontier(ws, &project_index, node.project, name, &by_id) {
                        edges.push((ni, target));
                    }
                } else if let Some((proj, name)) = form.split_once('#') {
                    match by_id.get(&format!("{proj}#{name}")) {
                        Some(&t) => edges.push((ni, t)),
                        None if lenient && ws.project(proj).is_some() => {}
                        None => {
                            let msg = if ws.project(proj).is_none() {
                                format!(
                                    "{}: no project named `{proj}`{}",
                                    here(),
                                    did_you_mean(proj, ws.projects.iter().map(|p| p.name.as_str()))
                                )
                            } else {
                                let p = ws
                                    .project(proj)
                                    .map(|p| p.tasks.keys())
                                    .into_iter()
                                    .flatten();
                                format!(
                                    "{}: project `{proj}` has no task `{name}`{}",
                                    here(),
                                    did_you_mean(name, p.map(|s| s.as_str()))
                                )
                            };
                            return Err(gerr(ErrorKind::Config, msg));
                        }
                    }
                } else {
                    match by_id.get(&format!("{}#{}", project.name, form)) {
                        Some(&t) => edges.push((ni, t)),
                        None if lenient => {}
                        None => {
                            return Err(gerr(
                                ErrorKind::Config,
                                format!(
                                    "{}: project `{}` has no task `{form}`{}",
                                    here(),
                                    project.name,
                                    did_you_mean(form, project.tasks.keys().map(|s| s.as_str()))
                                ),
                            ));
                        }
                    }
                }
            }
        }
        edges.sort_unstable();
        edges.dedup();
        for (a, b) in edges {
            graph.add_edge(NodeIndex::new(a), NodeIndex::new(b), ());
        }
        let g = TaskGraph {
            nodes,
            graph,
            by_id,
        };
        g.check_cycles()?;
        Ok(g)
    }

    pub fn get(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Direct dependencies of a node.
    pub fn deps(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .neighbors_directed(NodeIndex::new(n), Direction::Outgoing)
            .map(|i| i.index())
    }

    /// Direct dependents of a node.
    pub fn dependents(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .neighbors_directed(NodeIndex::new(n), Direction::Incoming)
            .map(|i| i.index())
    }

    fn check_cycles(&self) -> Result<(), GraphError> {
        if petgraph::algo::toposort(&self.graph, None).is_ok() {
            return Ok(());
        }
        for scc in petgraph::algo::tarjan_scc(&self.graph) {
            let self_loop = scc.len() == 1 && self.graph.contains_edge(scc[0], scc[0]);
            if scc.len() < 2 && !self_loop {
                continue;
            }
            let members: HashSet<NodeIndex> = scc.iter().copied().collect();
            // Walk inside the component from its first node until a node repeats.
            let start = scc[0];
            let mut path = vec![start];
            let mut seen = HashMap::from([(start, 0usize)]);
            let mut cur = start;
            loop {
                let next = self
                    .graph
                    .neighbors_directed(cur, Direction::Outgoing)
                    .find(|n| members.contains(n));
                let Some(next) = next else { break };
                if let Some(&at) = seen.get(&next) {
                    let mut cycle: Vec<&str> = path[at..]
                        .iter()
                        .map(|n| self.nodes[n.index()].id.as_str())
                        .collect();
                    cycle.push(self.nodes[next.index()].id.as_str());
                    return Err(gerr(
                        ErrorKind::Cycle,
                        format!("task dependency cycle: {}", cycle.join(" → ")),
                    ));
                }
                seen.insert(next, path.len());
                path.push(next);
                cur = next;
            }
        }
        Err(gerr(ErrorKind::Cycle, "task dependency cycle"))
    }

    /// Every node reachable from `start` through dependency edges (inclusive).
    pub fn closure(&self, start: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<usize> = start.into_iter().collect();
        while let Some(n) = queue.pop_front() {
            if seen.insert(n) {
                queue.extend(self.deps(n));
            }
        }
        seen
    }

    /// Every node that transitively depends on one of `start` (inclusive).
    pub fn reverse_closure(&self, start: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<usize> = start.into_iter().collect();
        while let Some(n) = queue.pop_front() {
            if seen.insert(n) {
                queue.extend(self.dependents(n));
            }
        }
        seen
    }
}

/// `^name` from a project: each dependency path stops at the first project
/// that declares `name`; projects without it are passed through.
fn frontier(
    ws: &Workspace,
    index: &HashMap<&str, usize>,
    from: usize,
    name: &str,
    by_id: &HashMap<String, usize>,
) -> Vec<usize> {
    let mut out = Vec::new();
    let mut seen = HashSet::from([from]);
    let mut queue: VecDeque<usize> = VecDeque::from([from]);
    while let Some(p) = queue.pop_front() {
        for dep in &ws.projects[p].deps {
            let Some(&di) = index.get(dep.as_str()) else {
                continue;
            };
            if !seen.insert(di) {
                continue;
            }
            match by_id.get(&format!("{}#{}", dep, name)) {
                Some(&t) => out.push(t),
                None => queue.push_back(di),
            }
        }
    }
    out
}

/// What a run executes: the requested nodes and their dependency closure.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Every node to run, in a dependency-respecting order.
    pub nodes: Vec<usize>,
    /// The nodes the user asked for (forwarded args reach only these).
    pub requested: HashSet<usize>,
    /// With `--affected`: the base it was computed against, when nothing was affected.
    pub nothing_affected: Option<String>,
}

/// The selection inputs (a subset of the run parameters).
#[derive(Debug, Clone)]
pub struct SelectArgs<'a> {
    pub cwd: &'a Path,
    pub tasks: &'a [String],
    pub filters: &'a [String],
    pub all: bool,
    pub affected: Option<&'a str>,
}

/// Resolves the requested tasks of a run.
pub fn select(ws: &Workspace, g: &TaskGraph, args: &SelectArgs) -> Result<Selection, GraphError> {
    if args.tasks.is_empty() {
        return Err(no_task_given(ws, g, args));
    }
    let scope = project_scope(ws, args)?;
    if scope.is_empty()
        && let Some(range) = args
            .filters
            .iter()
            .find(|f| git_range(f.trim_start_matches('!').trim_matches('.')).is_some())
    {
        // `--filter '[main]'` and nothing changed: nothing to run.
        return Ok(Selection {
            nothing_affected: Some(format!("{range} (no project changed)")),
            ..Selection::default()
        });
    }
    let mut requested: HashSet<usize> = HashSet::new();
    let mut missing = Vec::new();
    for t in args.tasks {
        if let Some((proj, name)) = t.split_once('#') {
            match g.get(&format!("{proj}#{name}")) {
                Some(n) => {
                    requested.insert(n);
                }
                None => {
                    let hint = did_you_mean(t, g.nodes.iter().map(|n| n.id.as_str()));
                    return Err(gerr(
                        ErrorKind::NotFound,
                        format!("no task `{t}` in the workspace{hint}"),
                    ));
                }
            }
            continue;
        }
        let before = requested.len();
        for &pi in &scope {
            if let Some(n) = g.get(&format!("{}#{}", ws.projects[pi].name, t)) {
                requested.insert(n);
            }
        }
        if requested.len() == before {
            missing.push(t.clone());
        }
    }
    // As turbo: a task some selected project lacks is skipped there, and a
    // task name no project of the workspace declares is an error.
    let declared = |t: &str| g.nodes.iter().any(|n| n.name == t);
    let unknown: Vec<&String> = missing.iter().filter(|t| !declared(t)).collect();
    if let Some(first) = unknown.first() {
        return Err(gerr(
            ErrorKind::NotFound,
            missing_task_message(ws, g, first, &scope, true),
        ));
    }
    if requested.is_empty()
        && let Some(first) = missing.first()
    {
        return Err(gerr(
            ErrorKind::NotFound,
            missing_task_message(ws, g, first, &scope, false),
        ));
    }
    let mut nothing_affected = None;
    if let Some(base) = args.affected {
        let (base, changed) = changed_files(&ws.root, base)?;
        let affected = affected_nodes(ws, g, &changed)?;
        requested.retain(|n| affected.contains(n));
        if requested.is_empty() {
            nothing_affected = Some(base);
        }
    }
    let closure = g.closure(requested.iter().copied());
    let order = topo_order(g, &closure);
    Ok(Selection {
        nodes: order,
        requested,
        nothing_affected,
    })
}

/// The error for a bare task name no project in scope declares: names the
/// scope, the projects that do declare it, or a near name (never itself);
/// `web:build` (the output prefix) points at `web#build`.
fn missing_task_message(
    ws: &Workspace,
    g: &TaskGraph,
    t: &str,
    scope: &[usize],
    nowhere: bool,
) -> String {
    if let Some((proj, name)) = t.split_once(':')
        && g.get(&format!("{proj}#{name}")).is_some()
    {
        return format!(
            "no task `{t}`: vx names a project's task `{proj}#{name}` (did you mean `{proj}#{name}`?)"
        );
    }
    let scope_desc = if nowhere || scope.len() == ws.projects.len() {
        "no project declares".to_string()
    } else if scope.len() == 1 {
        format!("project `{}` does not declare", ws.projects[scope[0]].name)
    } else {
        format!("none of the {} projects in scope declares", scope.len())
    };
    let owners: BTreeSet<&str> = g
        .nodes
        .iter()
        .filter(|n| n.name == t)
        .map(|n| ws.projects[n.project].name.as_str())
        .collect();
    let hint = if owners.is_empty() {
        let all: BTreeSet<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        did_you_mean(t, all.iter().copied())
    } else {
        let shown: Vec<&str> = owners.iter().take(5).copied().collect();
        let more = if owners.len() > 5 { ", …" } else { "" };
        format!(" (declared by {}{more})", shown.join(", "))
    };
    format!("{scope_desc} task `{t}`{hint}{}", member_notes(ws))
}

/// The workspace's member notes, one `note:` line each.
fn member_notes(ws: &Workspace) -> String {
    ws.member_notes
        .iter()
        .take(5)
        .map(|n| format!("\n  note: {n}"))
        .collect()
}

/// `vx run` with no task: the error lists the tasks the workspace has.
fn no_task_given(ws: &Workspace, g: &TaskGraph, args: &SelectArgs) -> GraphError {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let scope = project_scope(ws, args).unwrap_or_else(|_| (0..ws.projects.len()).collect());
    for n in &g.nodes {
        if scope.contains(&n.project) {
            *counts.entry(n.name.as_str()).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return gerr(
            ErrorKind::User,
            format!(
                "no task given, and no project here declares a task (add `[tasks.<name>]` to a vx.toml){}",
                member_notes(ws)
            ),
        );
    }
    let list: Vec<String> = counts
        .iter()
        .map(|(t, n)| {
            if *n == 1 {
                t.to_string()
            } else {
                format!("{t} ({n} projects)")
            }
        })
        .collect();
    let first = counts.keys().next().copied().unwrap_or("build");
    gerr(
        ErrorKind::User,
        format!(
            "no task given: try `vx run {first}`; the tasks here: {} (`vx ls` lists them by project)",
            list.join(", ")
        ),
    )
}

/// `vx ls`: every task of the projects the filters select (all projects
/// without filters), in a dependency-respecting order; nothing requested.
pub fn select_listing(
    ws: &Workspace,
    g: &TaskGraph,
    cwd: &Path,
    filters: &[String],
) -> Result<Selection, GraphError> {
    let scope: BTreeSet<usize> = if filters.is_empty() {
        (0..ws.projects.len()).collect()
    } else {
        filter_projects(ws, cwd, filters)?.into_iter().collect()
    };
    let set: BTreeSet<usize> = (0..g.nodes.len())
        .filter(|&n| scope.contains(&g.nodes[n].project))
        .collect();
    Ok(Selection {
        nodes: topo_order(g, &set),
        requested: HashSet::new(),
        nothing_affected: None,
    })
}

/// Dependencies before dependents, ties by id for a stable order.
fn topo_order(g: &TaskGraph, set: &BTreeSet<usize>) -> Vec<usize> {
    let mut indeg: HashMap<usize, usize> = set
        .iter()
        .map(|&n| (n, g.deps(n).filter(|d| set.contains(d)).count()))
        .collect();
    let mut ready: BTreeSet<(&str, usize)> = indeg
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(&n, _)| (g.nodes[n].id.as_str(), n))
        .collect();
    let mut out = Vec::with_capacity(set.len());
    while let Some(first) = ready.pop_first() {
        let n = first.1;
        out.push(n);
        for d in g.dependents(n) {
            if let Some(c) = indeg.get_mut(&d) {
                *c -= 1;
                if *c == 0 {
                    ready.insert((g.nodes[d].id.as_str(), d));
                }
            }
        }
    }
    out
}

/// The projects a bare task name applies to.
fn project_scope(ws: &Workspace, args: &SelectArgs) -> Result<Vec<usize>, GraphError> {
    if !args.filters.is_empty() {
        return filter_projects(ws, args.cwd, args.filters);
    }
    let all: Vec<usize> = (0..ws.projects.len()).collect();
    if args.all || args.affected.is_some() {
        return Ok(all);
    }
    let cwd = args.cwd;
    match ws.project_at(cwd) {
        Some(p) if p.dir != "." => Ok(vec![
            ws.projects
                .iter()
                .position(|q| q.name == p.name)
                .unwrap_or(0),
        ]),
        _ => Ok(all),
    }
}

/// Applies `--filter` patterns: includes are unioned, then excludes removed.
pub fn filter_projects(
    ws: &Workspace,
    cwd: &Path,
    filters: &[String],
) -> Result<Vec<usize>, GraphError> {
    let mut include: BTreeSet<usize> = BTreeSet::new();
    let mut exclude: BTreeSet<usize> = BTreeSet::new();
    let mut any_include = false;
    for f in filters {
        let (neg, body) = match f.strip_prefix('!') {
            Some(b) => (true, b),
            None => (false, f.as_str()),
        };
        let (dependents, body) = match body.strip_prefix("...") {
            Some(b) => (true, b),
            None => (false, body),
        };
        let (deps, body) = match body.strip_suffix("...") {
            Some(b) => (true, b),
            None => (false, body),
        };
        // Turbo's `...^pkg` / `pkg^...`: the dependents or dependencies
        // without the matched projects themselves.
        let (without_self, body) = match (
            dependents.then(|| body.strip_prefix('^')).flatten(),
            deps.then(|| body.strip_suffix('^')).flatten(),
        ) {
            (Some(b), _) => (true, b.strip_suffix('^').filter(|_| deps).unwrap_or(b)),
            (None, Some(b)) => (true, b),
            (None, None) => (false, body),
        };
        if body.is_empty() {
            return Err(gerr(ErrorKind::User, format!("empty filter `{f}`")));
        }
        let matched = match_projects(ws, cwd, body)?;
        // A git range that changed nothing selects nothing (not an error).
        if matched.is_empty() && git_range(body).is_none() {
            let hint = did_you_mean(body, ws.projects.iter().map(|p| p.name.as_str()));
            return Err(gerr(
                ErrorKind::NotFound,
                format!("filter `{f}` matched no project{hint}"),
            ));
        }
        let mut set: BTreeSet<usize> = matched.iter().copied().collect();
        if deps {
            set.extend(project_walk(ws, &matched, false));
        }
        if dependents {
            set.extend(project_walk(ws, &matched, true));
        }
        if without_self {
            for m in &matched {
                set.remove(m);
            }
        }
        if neg {
            exclude.extend(set);
        } else {
            any_include = true;
            include.extend(set);
        }
    }
    if !any_include {
        include = (0..ws.projects.len()).collect();
    }
    Ok(include.difference(&exclude).copied().collect())
}

/// `[REF]` (turbo's git-range filter): the ref inside.
fn git_range(pat: &str) -> Option<&str> {
    pat.strip_prefix('[')?.strip_suffix(']')
}

/// The projects with a file changed since the merge base with `base` (all of
/// them when a workspace-wide input changed).
fn changed_projects(ws: &Workspace, base: &str) -> Result<Vec<usize>, GraphError> {
    if base.is_empty() {
        return Err(gerr(
            ErrorKind::User,
            "empty git range `[]`: write `[main]` or `[HEAD^1]`",
        ));
    }
    let (_, changed) = changed_files(&ws.root, base)?;
    let global = Patterns::new(&ws.global.keyed_inputs())
        .map_err(|e| gerr(ErrorKind::Config, e.to_string()))?;
    if changed
        .iter()
        .any(|f| GLOBAL_FILES.contains(&f.as_str()) || global.matches(f))
    {
        return Ok((0..ws.projects.len()).collect());
    }
    Ok(ws
        .projects
        .iter()
        .enumerate()
        .filter(|(_, p)| changed.iter().any(|f| project_relative(ws, p, f).is_some()))
        .map(|(i, _)| i)
        .collect())
}

fn match_projects(ws: &Workspace, cwd: &Path, pat: &str) -> Result<Vec<usize>, GraphError> {
    if let Some(base) = git_range(pat) {
        return changed_projects(ws, base);
    }
    if let Some(tag) = pat.strip_prefix("tag:") {
        let glob = globset::Glob::new(tag)
            .map_err(|e| {
                gerr(
                    ErrorKind::User,
                    format!("invalid filter `{pat}`: {}", e.kind()),
                )
            })?
            .compile_matcher();
        let found: Vec<usize> = ws
            .projects
            .iter()
            .enumerate()
            .filter(|(_, p)| p.tags.iter().any(|t| glob.is_match(t)))
            .map(|(i, _)| i)
            .collect();
        if found.is_empty() {
            let tags: BTreeSet<&str> = ws
                .projects
                .iter()
                .flat_map(|p| p.tags.iter().map(String::as_str))
                .collect();
            let known = if tags.is_empty() {
                " (no project has tags: `[project] tags = [...]` in its vx.toml)".to_string()
            } else {
                let hint = did_you_mean(tag, tags.iter().copied());
                let list: Vec<&str> = tags.iter().copied().collect();
                format!("{hint}; the tags: {}", list.join(", "))
            };
            return Err(gerr(
                ErrorKind::NotFound,
                format!("filter `{pat}` matched no project{known}"),
            ));
        }
        return Ok(found);
    }
    if pat == "//" {
        return Ok(ws
            .projects
            .iter()
            .position(|p| p.name == "//")
            .into_iter()
            .collect());
    }
    if pat.starts_with("./") || pat.starts_with("../") || pat == "." || pat.starts_with('{') {
        let inner = pat.trim_start_matches('{').trim_end_matches('}');
        let abs = normalize(&cwd.join(inner));
        let rel = match abs.strip_prefix(&ws.root) {
            Ok(r) => r.to_string_lossy().replace('\\', "/"),
            Err(_) => {
                return Err(gerr(
                    ErrorKind::User,
                    format!("filter `{pat}` points outside the workspace"),
                ));
            }
        };
        let rel = if rel.is_empty() { ".".to_string() } else { rel };
        let pats = if rel == "." {
            None
        } else {
            Some(Patterns::new(&[rel.as_str()]).map_err(|e| gerr(ErrorKind::User, e.to_string()))?)
        };
        return Ok(ws
            .projects
            .iter()
            .enumerate()
            .filter(|(_, p)| match &pats {
                None => true,
                Some(m) => m.matches(&p.dir),
            })
            .map(|(i, _)| i)
            .collect());
    }
    let glob = globset::GlobBuilder::new(pat)
        .literal_separator(false)
        .build()
        .map_err(|e| {
            gerr(
                ErrorKind::User,
                format!("invalid filter `{pat}`: {}", e.kind()),
            )
        })?
        .compile_matcher();
    Ok(ws
        .projects
        .iter()
        .enumerate()
        .filter(|(_, p)| glob.is_match(&p.name) || unscoped(&p.name) == pat)
        .map(|(i, _)| i)
        .collect())
}

/// `@scope/name` → `name`, so `--filter name` works when unique.
fn unscoped(name: &str) -> &str {
    match name.split_once('/') {
        Some((scope, rest)) if scope.starts_with('@') => rest,
        _ => name,
    }
}

fn normalize(p: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Transitive project dependencies (`reverse = false`) or dependents.
fn project_walk(ws: &Workspace, from: &[usize], reverse: bool) -> BTreeSet<usize> {
    let index: HashMap<&str, usize> = ws
        .projects
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut rdeps: HashMap<usize, Vec<usize>> = HashMap::new();
    if reverse {
        for (i, p) in ws.projects.iter().enumerate() {
            for d in &p.deps {
                if let Some(&di) = index.get(d.as_str()) {
                    rdeps.entry(di).or_default().push(i);
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<usize> = from.iter().copied().collect();
    while let Some(p) = queue.pop_front() {
        if !seen.insert(p) {
            continue;
        }
        if reverse {
            queue.extend(rdeps.get(&p).into_iter().flatten().copied());
        } else {
            queue.extend(
                ws.projects[p]
                    .deps
                    .iter()
                    .filter_map(|d| index.get(d.as_str()).copied()),
            );
        }
    }
    seen
}

fn git(root: &Path, args: &[&str]) -> Result<String, GraphError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .map_err(|e| gerr(ErrorKind::Git, format!("--affected needs git: {e}")))?;
    if !out.status.success() {
        return Err(gerr(
            ErrorKind::Git,
            format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The default base: the remote's default branch, else `main`.
fn default_base(root: &Path) -> String {
    if let Ok(s) = git(
        root,
        &["symbolic-ref", "--quiet", "refs/remotes/origin/HEAD"],
    ) && let Some(b) = s.trim().strip_prefix("refs/remotes/")
    {
        return b.to_string();
    }
    "main".to_string()
}

/// Files changed since the merge base with `base` (root-relative): committed,
/// staged, unstaged and untracked.
pub fn changed_files(root: &Path, base: &str) -> Result<(String, BTreeSet<String>), GraphError> {
    let base = if base.is_empty() {
        default_base(root)
    } else {
        base.to_string()
    };
    let base = base.strip_suffix("...HEAD").unwrap_or(&base).to_string();
    if base.starts_with('-') {
        // git would read it as an option (`--output=...` writes a file).
        return Err(gerr(
            ErrorKind::User,
            format!("--affected takes a git ref, and `{base}` starts with `-`"),
        ));
    }
    if base.contains("..") || base.starts_with('^') {
        return Err(gerr(
            ErrorKind::User,
            format!("--affected takes one ref, not a range: `{base}`"),
        ));
    }
    let mb = git(root, &["merge-base", &base, "HEAD"])?;
    let mb = mb.trim();
    let mut files = BTreeSet::new();
    let diff = git(
        root,
        &[
            "diff",
            "--name-only",
            "--no-renames",
            "--relative",
            "-z",
            mb,
        ],
    )?;
    let untracked = git(root, &["ls-files", "--others", "--exclude-standard", "-z"])?;
    for f in diff.split('\0').chain(untracked.split('\0')) {
        if !f.is_empty() {
            files.insert(f.to_string());
        }
    }
    Ok((base, files))
}

/// Root files whose change affects every task.
const GLOBAL_FILES: &[&str] = &[
    "vx.toml",
    "turbo.json",
    "package.json",
    "pnpm-workspace.yaml",
    "package-lock.json",
    "pnpm-lock.yaml",
    "yarn.lock",
    "bun.lock",
    "bun.lockb",
];

/// Tasks whose inputs hold a changed path, plus their dependents.
fn affected_nodes(
    ws: &Workspace,
    g: &TaskGraph,
    changed: &BTreeSet<String>,
) -> Result<BTreeSet<usize>, GraphError> {
    if changed.iter().any(|f| GLOBAL_FILES.contains(&f.as_str())) {
        return Ok((0..g.nodes.len()).collect());
    }
    let global = Patterns::new(&ws.global.keyed_inputs())
        .map_err(|e| gerr(ErrorKind::Config, e.to_string()))?;
    if changed.iter().any(|f| global.matches(f)) {
        return Ok((0..g.nodes.len()).collect());
    }
    let mut seeds = Vec::new();
    for (ni, node) in g.nodes.iter().enumerate() {
        let p: &Project = &ws.projects[node.project];
        let inputs =
            Patterns::new(&node.def.inputs).map_err(|e| gerr(ErrorKind::Config, e.to_string()))?;
        let outputs =
            Patterns::new(&node.def.outputs).map_err(|e| gerr(ErrorKind::Config, e.to_string()))?;
        let root_inputs = Patterns::new(&node.def.root_inputs)
            .map_err(|e| gerr(ErrorKind::Config, e.to_string()))?;
        let hit = changed.iter().any(|f| {
            if root_inputs.matches(f) || *f == p.config_file {
                return true;
            }
            let Some(rel) = project_relative(ws, p, f) else {
                return false;
            };
            (rel == "package.json" || rel == "vx.toml" || rel == "turbo.json")
                || (inputs.matches(rel) && !outputs.matches(rel))
        });
        if hit {
            seeds.push(ni);
        }
    }
    Ok(g.reverse_closure(seeds))
}

/// `f` relative to project `p`, when `p` owns it (nested projects fence their parent).
pub fn project_relative<'a>(ws: &Workspace, p: &Project, f: &'a str) -> Option<&'a str> {
    let owner = ws
        .projects
        .iter()
        .filter(|q| q.dir == "." || f.starts_with(&format!("{}/", q.dir)));
    let owner = owner.max_by_key(|q| if q.dir == "." { 0 } else { q.dir.len() + 1 })?;
    if owner.name != p.name {
        return None;
    }
    if p.dir == "." {
        Some(f)
    } else {
        f.strip_prefix(&p.dir).and_then(|r| r.strip_prefix('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affected_refuses_option_like_refs() {
        // Refused before git is asked (the directory does not exist).
        for bad in ["-x", "--output=/tmp/pwned", "-"] {
            let e = changed_files(Path::new("/nonexistent/vx"), bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::User, "{bad}");
            assert!(e.message.contains("starts with `-`"), "{bad}: {e}");
        }
    }

    #[test]
    fn turbo_transit_nodes_carry_edges() {
        let t = tempfile::tempdir().unwrap();
        let files: &[(&str, &str)] = &[
            ("package.json", r#"{"workspaces": ["p/*"]}"#),
            (
                "turbo.json",
                r#"{"tasks": {"topo": {"dependsOn": ["^topo"]}, "typecheck": {"dependsOn": ["^topo", "^build"]}, "build": {"dependsOn": ["^build"]}}}"#,
            ),
            ("p/a/package.json", r#"{"name": "a"}"#),
            (
                "p/b/package.json",
                r#"{"name": "b", "dependencies": {"a": "*"}}"#,
            ),
            (
                "p/c/package.json",
                r#"{"name": "c", "dependencies": {"b": "*"}, "scripts": {"typecheck": "tsc"}}"#,
            ),
        ];
        for (p, c) in files {
            let p = t.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
        let ws = crate::workspace::load(t.path()).unwrap();
        let g = TaskGraph::build(&ws).unwrap();
        let deps = |id: &str| -> Vec<&str> {
            let mut v: Vec<&str> = g
                .deps(g.get(id).unwrap())
                .map(|d| g.nodes[d].id.as_str())
                .collect();
            v.sort();
            v
        };
        assert_eq!(deps("c#typecheck"), vec!["b#build", "b#topo"]);
        assert_eq!(deps("b#topo"), vec!["a#topo"]);
        assert!(g.nodes[g.get("a#topo").unwrap()].def.command.is_none());
        let closure: Vec<&str> = g
            .closure([g.get("c#typecheck").unwrap()])
            .into_iter()
            .map(|n| g.nodes[n].id.as_str())
            .collect();
        assert!(closure.contains(&"a#topo") && closure.contains(&"a#build"));
    }
}
