//! `graph.get`: the projects, tasks and edges of a selection, as data.

use crate::engine::{self, EngineError, ErrorKind, Model};
use crate::graph::{self, SelectArgs};
use crate::state::Hot;
use crate::workspace;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use vx_proto::RunParams;
use vx_proto::live::{Graph, GraphEdge, GraphProject, GraphTask};

/// `graph.get` with `run.plan`'s selection params: what a run of them
/// would run, without computing a key (nothing is hashed or opened).
pub fn get(p: &RunParams, hot: Option<&Hot>) -> Result<Graph, EngineError> {
    let cwd = PathBuf::from(&p.cwd);
    if !cwd.is_absolute() {
        return Err(EngineError::new(
            ErrorKind::InvalidParams,
            "cwd must be absolute",
        ));
    }
    let model: Arc<Model> = match hot {
        Some(hot) => {
            let root = workspace::find_root(&cwd)?;
            if root != hot.root {
                // The error names the right workspace.
                engine::request_workspace(&cwd, Some(hot))?;
            }
            hot.sync()?.0
        }
        None => Arc::new(Model::load(&workspace::find_root(&cwd)?)?),
    };
    let (ws, g) = (&model.ws, &model.graph);
    // No task: every task (of the filtered projects), for `vx ls`.
    let sel = if p.tasks.is_empty() {
        graph::select_listing(ws, g, &cwd, &p.filters)?
    } else {
        graph::select(
            ws,
            g,
            &SelectArgs {
                cwd: &cwd,
                tasks: &p.tasks,
                filters: &p.filters,
                all: p.all,
                affected: p.affected.as_deref(),
            },
        )?
    };
    let chosen: std::collections::HashSet<usize> = sel.nodes.iter().copied().collect();
    let mut projects = BTreeSet::new();
    let mut tasks = Vec::with_capacity(sel.nodes.len());
    let mut edges = Vec::new();
    for &n in &sel.nodes {
        let node = &g.nodes[n];
        let project = &ws.projects[node.project];
        projects.insert(node.project);
        tasks.push(GraphTask {
            id: node.id.clone(),
            project: project.name.clone(),
            task: node.name.clone(),
            command: node.def.command.clone(),
            requested: sel.requested.contains(&n),
            persistent: node.def.persistent,
            cache: node.def.cache
                && node.def.command.is_some()
                && !node.def.persistent
                && !node.def.interactive,
            inputs: node.def.inputs.clone(),
            outputs: node.def.outputs.clone(),
        });
        for d in g.deps(n).filter(|d| chosen.contains(d)) {
            edges.push(GraphEdge {
                from: node.id.clone(),
                to: g.nodes[d].id.clone(),
            });
        }
    }
    edges.sort();
    edges.dedup();
    let mut projects: Vec<GraphProject> = projects
        .into_iter()
        .map(|i| {
            let p = &ws.projects[i];
            GraphProject {
                name: p.name.clone(),
                dir: p.dir.clone(),
                deps: p.deps.clone(),
            }
        })
        .collect();
    projects.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Graph {
        root: ws.root.to_string_lossy().into_owned(),
        projects,
        tasks,
        edges,
    })
}
