//! Syntactic validation shared by the vx.toml and turbo.json readers.

/// A reference to a project by name, checked once every project is known.
#[derive(Debug, Clone)]
pub(crate) struct ProjectRef {
    /// Root-relative file the reference is written in.
    pub file: String,
    pub pos: Option<(usize, usize)>,
    /// The referenced project name.
    pub name: String,
    /// Where it is used, e.g. "`depends_on` of task `build`".
    pub context: String,
}

/// Task names: non-empty, no surrounding whitespace, no `#` or `*`, not
/// starting with `^` or `!`.
pub(crate) fn task_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a task name may not be empty".into());
    }
    if name.trim() != name {
        return Err(format!("task name `{name}` has surrounding whitespace"));
    }
    if name.contains('#') || name.contains('*') {
        return Err(format!("task name `{name}` may not contain `#` or `*`"));
    }
    if name.starts_with('^') || name.starts_with('!') {
        return Err(format!("task name `{name}` may not start with `^` or `!`"));
    }
    if name.contains(char::is_control) {
        return Err(format!("task name `{name}` contains a control character"));
    }
    Ok(())
}

/// Project names: non-empty, no surrounding whitespace, no `#`.
pub(crate) fn project_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a project name may not be empty".into());
    }
    if name.trim() != name {
        return Err(format!("project name `{name}` has surrounding whitespace"));
    }
    if name.contains('#') {
        return Err(format!("project name `{name}` may not contain `#`"));
    }
    if name == "//" {
        return Err("`//` is reserved for the workspace root project".into());
    }
    Ok(())
}

/// A syntactically valid `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DepForm<'a> {
    /// `name`: a task of the same project.
    Same(&'a str),
    /// `^name`: the task in the project's dependencies.
    Upstream(&'a str),
    /// `project#name` (`//#name` for the root project).
    Explicit { project: &'a str, task: &'a str },
}

pub(crate) fn dep_form(dep: &str) -> Result<DepForm<'_>, String> {
    let msg = |why: &str| format!("invalid dependency `{dep}`: {why}");
    let bad = |why: &str| Err(msg(why));
    if dep.trim() != dep || dep.is_empty() {
        return bad("empty or surrounded by whitespace");
    }
    if let Some(rest) = dep.strip_prefix('^') {
        if rest.contains('#') {
            return bad("`^` cannot be combined with `project#task`");
        }
        return task_name(rest)
            .map(|_| DepForm::Upstream(rest))
            .or_else(|e| bad(&e));
    }
    if let Some((project, task)) = dep.split_once('#') {
        if project.is_empty() {
            return bad("the project before `#` is empty (write `//#task` for the root)");
        }
        if project != "//" {
            project_name(project).map_err(|e| msg(&e))?;
        }
        task_name(task).map_err(|e| msg(&e))?;
        return Ok(DepForm::Explicit { project, task });
    }
    task_name(dep)
        .map(|_| DepForm::Same(dep))
        .or_else(|e| bad(&e))
}

/// Env names: optional leading `!`, then letters, digits, `_` and `*`
/// wildcards. `allow_patterns` = false refuses `!` and `*`.
pub(crate) fn env_name(name: &str, allow_patterns: bool) -> Result<(), String> {
    let body = if allow_patterns {
        name.strip_prefix('!').unwrap_or(name)
    } else {
        name
    };
    let ok = !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || (allow_patterns && c == '*'))
        && !body.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else if allow_patterns {
        Err(format!(
            "invalid env name `{name}`: use letters, digits and `_` (a `*` wildcard and a leading `!` are allowed)"
        ))
    } else {
        Err(format!(
            "invalid env name `{name}`: use letters, digits and `_`"
        ))
    }
}

/// Tags: non-empty, no whitespace, no `*`.
pub(crate) fn tag(t: &str) -> Result<(), String> {
    if t.is_empty() || t.contains(char::is_whitespace) || t.contains('*') {
        return Err(format!(
            "invalid tag `{t}`: tags are non-empty, without whitespace or `*`"
        ));
    }
    Ok(())
}

/// A worker label (`labels = [...]`, `vx worker --label`): `[A-Za-z0-9_.-]+`.
pub(crate) fn label(l: &str) -> Result<(), String> {
    if l.is_empty()
        || l.len() > 64
        || !l
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "invalid label `{l}`: labels are 1 to 64 of `A-Z a-z 0-9 _ . -`"
        ));
    }
    Ok(())
}

/// A listen address: `host:port` (an IPv6 host in brackets), port 0-65535.
pub(crate) fn listen_addr(v: &str) -> Result<(), String> {
    let bad = || format!("`{v}` is not `host:port` (e.g. `0.0.0.0:7420`, `[::1]:7420`)");
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(char::is_whitespace) || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad());
    }
    Ok(())
}

/// A REAPI endpoint: `grpc://host:port` (plaintext) or `grpcs://host:port`
/// (TLS); `http://` and `https://` are taken as their synonyms.
pub(crate) fn reapi_endpoint(v: &str) -> Result<(), String> {
    let rest = ["grpc://", "grpcs://", "http://", "https://"]
        .iter()
        .find_map(|p| v.strip_prefix(p));
    match rest {
        Some(hostport) if !hostport.is_empty() && !hostport.contains(char::is_whitespace) => Ok(()),
        _ => Err(format!(
            "`endpoint = {v:?}` is not a grpc://HOST:PORT or grpcs://HOST:PORT address"
        )),
    }
}

/// A gRPC metadata entry: a lower-case name of `[a-z0-9-_.]` (not `-bin`,
/// not a reserved `grpc-` name) and a printable ASCII value.
pub(crate) fn grpc_header(name: &str, value: &str) -> Result<(), String> {
    let name_ok = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && !name.ends_with("-bin")
        && !name.starts_with("grpc-")
        && !matches!(name, "te" | "content-type" | "user-agent");
    if !name_ok {
        return Err(format!(
            "{name:?} is not a usable gRPC metadata name (lower-case letters, digits, `-`, `_`, `.`; not `grpc-…` or `…-bin`)"
        ));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("the value of {name:?} must be printable ASCII"));
    }
    Ok(())
}

/// A REAPI platform property (`OSFamily = "linux"`): a non-empty name
/// without blanks or control characters, a value without control characters.
pub(crate) fn platform_property(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{name:?} is not a platform property name (non-empty, no blanks or control characters)"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "the value of platform property {name:?} contains a control character"
        ));
    }
    Ok(())
}

/// The largest timeout accepted, in ms.
pub(crate) const MAX_TIMEOUT_MS: u64 = 2_147_483_647;

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"` (or a bare number of ms) → ms.
pub(crate) fn duration_str(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid duration `{s}`: write a number of ms, or a string like \"250ms\", \"30s\", \"5m\", \"1h\""
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    duration_ms(n.checked_mul(mult).ok_or_else(bad)? as i128)
}

/// Range-checks a duration in ms.
pub(crate) fn duration_ms(ms: i128) -> Result<u64, String> {
    if ms <= 0 {
        return Err("a timeout must be positive".into());
    }
    if ms > MAX_TIMEOUT_MS as i128 {
        return Err(format!(
            "a timeout may not exceed {MAX_TIMEOUT_MS} ms (about 24.8 days)"
        ));
    }
    Ok(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_forms() {
        assert!(task_name("build").is_ok());
        for bad in ["", " a", "a#b", "a*", "^a", "!a"] {
            assert!(task_name(bad).is_err(), "{bad}");
        }
        assert_eq!(dep_form("^build"), Ok(DepForm::Upstream("build")));
        assert_eq!(
            dep_form("//#fmt"),
            Ok(DepForm::Explicit {
                project: "//",
                task: "fmt"
            })
        );
        assert_eq!(
            dep_form("@s/web#build"),
            Ok(DepForm::Explicit {
                project: "@s/web",
                task: "build"
            })
        );
        for bad in ["^a#b", "#b", "a#", "^", "a*", "!x", "a#b#c"] {
            assert!(dep_form(bad).is_err(), "{bad}");
        }
        assert!(env_name("NODE_*", true).is_ok());
        assert!(env_name("!SECRET", true).is_ok());
        assert!(env_name("A-B", true).is_err());
        assert!(env_name("A*", false).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration_str("250ms"), Ok(250));
        assert_eq!(duration_str("30s"), Ok(30_000));
        assert_eq!(duration_str("5m"), Ok(300_000));
        assert_eq!(duration_str("1h"), Ok(3_600_000));
        assert!(duration_str("0s").is_err());
        assert!(duration_str("5 days").is_err());
        assert!(duration_str("1000h").is_err());
    }
}
