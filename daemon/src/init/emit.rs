//! Rendering the generated `vx.toml` files: the values a translator chose,
//! with comments saying where each came from, in a stable order.

use std::collections::BTreeMap;

/// The `[workspace]` table of the root file.
#[derive(Debug, Default, Clone)]
pub(crate) struct WorkspaceOut {
    /// Comment lines above the table.
    pub comments: Vec<String>,
    /// `None`: the package manager's globs (not written).
    pub members: Option<Vec<String>>,
    pub concurrency: Option<u64>,
    pub global_inputs: Vec<String>,
    pub global_env: Vec<String>,
    pub global_pass_env: Vec<String>,
}

/// One task table.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct TaskOut {
    pub name: String,
    /// Comment lines above the table (where the task came from).
    pub comments: Vec<String>,
    /// `None`: a group task (then `depends_on` must be `Some`).
    pub command: Option<String>,
    pub description: Option<String>,
    pub depends_on: Option<Vec<String>>,
    /// `None`: the default (`**`).
    pub inputs: Option<Vec<String>>,
    pub outputs: Option<Vec<String>>,
    pub env: Vec<String>,
    pub pass_env: Vec<String>,
    pub define: BTreeMap<String, String>,
    pub cache: Option<bool>,
    pub persistent: bool,
    pub interactive: bool,
    /// `# TODO:` lines inside the table.
    pub todos: Vec<String>,
}

/// One generated file.
#[derive(Debug, Default, Clone)]
pub(crate) struct FileOut {
    /// Root-relative path.
    pub path: String,
    /// Comment lines at the top.
    pub header: Vec<String>,
    pub workspace: Option<WorkspaceOut>,
    pub name: Option<String>,
    pub deps: Vec<String>,
    pub tags: Vec<String>,
    pub tasks: Vec<TaskOut>,
}

/// A TOML basic string.
pub(crate) fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| quote(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A TOML bare key, or a quoted one.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        quote(k)
    }
}

fn comment(out: &mut String, lines: &[String]) {
    for l in lines {
        for part in l.lines() {
            out.push_str("# ");
            out.push_str(part);
            out.push('\n');
        }
    }
}

impl FileOut {
    pub fn render(&self) -> String {
        let mut out = String::new();
        comment(&mut out, &self.header);
        if let Some(w) = &self.workspace {
            if !out.is_empty() {
                out.push('\n');
            }
            comment(&mut out, &w.comments);
            out.push_str("[workspace]\n");
            if let Some(m) = &w.members {
                out.push_str(&format!("members = {}\n", list(m)));
            }
            if let Some(c) = w.concurrency {
                out.push_str(&format!("concurrency = {c}\n"));
            }
            for (k, v) in [
                ("global_inputs", &w.global_inputs),
                ("global_env", &w.global_env),
                ("global_pass_env", &w.global_pass_env),
            ] {
                if !v.is_empty() {
                    out.push_str(&format!("{k} = {}\n", list(v)));
                }
            }
        }
        if self.name.is_some() || !self.deps.is_empty() || !self.tags.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str("[project]\n");
            if let Some(n) = &self.name {
                out.push_str(&format!("name = {}\n", quote(n)));
            }
            if !self.deps.is_empty() {
                out.push_str(&format!("deps = {}\n", list(&self.deps)));
            }
            if !self.tags.is_empty() {
                out.push_str(&format!("tags = {}\n", list(&self.tags)));
            }
        }
        for t in &self.tasks {
            if !out.is_empty() {
                out.push('\n');
            }
            t.render_into(&mut out);
        }
        out
    }
}

impl TaskOut {
    fn render_into(&self, out: &mut String) {
        comment(out, &self.comments);
        out.push_str(&format!("[tasks.{}]\n", key(&self.name)));
        for t in &self.todos {
            out.push_str(&format!("# TODO: {t}\n"));
        }
        if let Some(c) = &self.command {
            out.push_str(&format!("command = {}\n", quote(c)));
        }
        if let Some(d) = &self.description {
            out.push_str(&format!("description = {}\n", quote(d)));
        }
        if let Some(d) = &self.depends_on {
            out.push_str(&format!("depends_on = {}\n", list(d)));
        }
        if let Some(i) = &self.inputs {
            out.push_str(&format!("inputs = {}\n", list(i)));
        }
        if let Some(o) = &self.outputs {
            out.push_str(&format!("outputs = {}\n", list(o)));
        }
        if !self.env.is_empty() {
            out.push_str(&format!("env = {}\n", list(&self.env)));
        }
        if !self.pass_env.is_empty() {
            out.push_str(&format!("pass_env = {}\n", list(&self.pass_env)));
        }
        if !self.define.is_empty() {
            let kv: Vec<String> = self
                .define
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), quote(v)))
                .collect();
            out.push_str(&format!("define = {{ {} }}\n", kv.join(", ")));
        }
        if let Some(c) = self.cache {
            out.push_str(&format!("cache = {c}\n"));
        }
        if self.persistent {
            out.push_str("persistent = true\n");
        }
        if self.interactive {
            out.push_str("interactive = true\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_quoted_values_and_comments() {
        let f = FileOut {
            path: "vx.toml".into(),
            header: vec!["generated".into()],
            tasks: vec![TaskOut {
                name: "build:prod".into(),
                comments: vec!["from turbo.json".into()],
                command: Some("echo \"hi\" && tsc".into()),
                depends_on: Some(vec!["^build".into()]),
                outputs: Some(vec!["dist/**".into(), "!dist/**/*.map".into()]),
                define: BTreeMap::from([("A".into(), "b c".into())]),
                cache: Some(true),
                todos: vec!["check".into()],
                ..TaskOut::default()
            }],
            ..FileOut::default()
        };
        let text = f.render();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let t = &parsed["tasks"]["build:prod"];
        assert_eq!(t["command"].as_str(), Some("echo \"hi\" && tsc"));
        assert_eq!(t["outputs"][1].as_str(), Some("!dist/**/*.map"));
        assert_eq!(t["define"]["A"].as_str(), Some("b c"));
        assert!(text.starts_with("# generated\n"));
        assert!(text.contains("# from turbo.json\n[tasks.\"build:prod\"]\n# TODO: check\n"));
    }
}
