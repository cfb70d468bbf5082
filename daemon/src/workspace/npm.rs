//! Package-manager manifests: `package.json`, `pnpm-workspace.yaml`, and the
//! rules that turn a dependency spec into a local (workspace) edge.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;
use serde_json::Value;

use super::ConfigError;
use super::text::{Src, json_error};

/// The fields of `package.json` that vx reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct PackageJson {
    pub name: Option<String>,
    pub version: Option<String>,
    /// Member globs (`workspaces` array, or yarn's `{ packages: [...] }`).
    pub workspaces: Option<Vec<String>>,
    pub scripts: BTreeMap<String, String>,
    /// (dependency name, spec) from dependencies, devDependencies, optionalDependencies.
    pub deps: Vec<(String, String)>,
    /// (dependency name, spec) from peerDependencies.
    pub peer_deps: Vec<(String, String)>,
    /// `packageManager` (`npm@10.2.0`), when set.
    pub package_manager: Option<String>,
}

#[derive(Deserialize)]
struct RawPackageJson {
    name: Option<Value>,
    version: Option<Value>,
    workspaces: Option<Value>,
    scripts: Option<Value>,
    dependencies: Option<Value>,
    #[serde(rename = "devDependencies")]
    dev_dependencies: Option<Value>,
    #[serde(rename = "optionalDependencies")]
    optional_dependencies: Option<Value>,
    #[serde(rename = "peerDependencies")]
    peer_dependencies: Option<Value>,
    #[serde(rename = "packageManager")]
    package_manager: Option<Value>,
}

fn string_map(v: Option<Value>) -> Vec<(String, String)> {
    match v {
        Some(Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect(),
        _ => Vec::new(),
    }
}

fn string_list(src: &Src, field: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
    let arr = v
        .as_array()
        .ok_or_else(|| src.err_near("", field, format!("`{field}` must be an array of strings")))?;
    arr.iter()
        .map(|x| {
            x.as_str().map(str::to_string).ok_or_else(|| {
                src.err_near("", field, format!("`{field}` must be an array of strings"))
            })
        })
        .collect()
}

/// Parses a `package.json`.
pub(crate) fn parse_package_json(src: &Src) -> Result<PackageJson, ConfigError> {
    let raw: RawPackageJson = serde_json::from_str(&src.text).map_err(|e| json_error(src, &e))?;
    let name = match raw.name {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(src.err_near("", "name", "`name` must be a string")),
    };
    let version = raw.version.and_then(|v| v.as_str().map(str::to_string));
    let workspaces = match raw.workspaces {
        None | Some(Value::Null) => None,
        Some(v @ Value::Array(_)) => Some(string_list(src, "workspaces", &v)?),
        Some(Value::Object(m)) => match m.get("packages") {
            Some(v) => Some(string_list(src, "workspaces.packages", v)?),
            None => Some(Vec::new()),
        },
        Some(_) => {
            return Err(src.err_near(
                "",
                "workspaces",
                "`workspaces` must be an array of globs or `{ \"packages\": [...] }`",
            ));
        }
    };
    let mut deps = string_map(raw.dependencies);
    deps.extend(string_map(raw.dev_dependencies));
    deps.extend(string_map(raw.optional_dependencies));
    Ok(PackageJson {
        name,
        version,
        workspaces,
        scripts: string_map(raw.scripts).into_iter().collect(),
        deps,
        peer_deps: string_map(raw.peer_dependencies),
        package_manager: raw
            .package_manager
            .and_then(|v| v.as_str().map(str::to_string)),
    })
}

/// Whether the workspace's package manager runs `pre<script>` and
/// `post<script>` around a script, as `npm run` does: npm, yarn 1 and bun
/// do; yarn 2+ does not; pnpm only with `enable-pre-post-scripts=true` in
/// the root `.npmrc`. The manager is `packageManager` of the root
/// package.json, else the lockfile found at the root (npm when none).
pub(crate) fn runs_pre_post(root: &Path, root_pkg: Option<&PackageJson>) -> bool {
    let has = |f: &str| root.join(f).is_file();
    let pnpm_opt_in = || {
        std::fs::read_to_string(root.join(".npmrc")).is_ok_and(|t| {
            t.lines().any(|l| {
                let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
                l == "enable-pre-post-scripts=true"
            })
        })
    };
    let yarn_classic = || {
        std::fs::read_to_string(root.join("yarn.lock"))
            .is_ok_and(|t| t.lines().take(5).any(|l| l.contains("yarn lockfile v1")))
    };
    match root_pkg.and_then(|p| p.package_manager.as_deref()) {
        Some(pm) => {
            let (name, version) = pm.split_once('@').unwrap_or((pm, ""));
            match name {
                "pnpm" => pnpm_opt_in(),
                "yarn" => version.starts_with("1."),
                _ => true,
            }
        }
        None if has("pnpm-lock.yaml") => pnpm_opt_in(),
        None if has("yarn.lock") => yarn_classic(),
        None => true,
    }
}

#[derive(Deserialize, Default)]
struct RawPnpm {
    packages: Option<Vec<String>>,
}

/// Parses `pnpm-workspace.yaml`, returning its `packages:` globs.
pub(crate) fn parse_pnpm(src: &Src) -> Result<Vec<String>, ConfigError> {
    if src.text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---"
    }) {
        return Ok(Vec::new());
    }
    let raw: RawPnpm = serde_saphyr::from_str(&src.text).map_err(|e| {
        let full = e.to_string();
        let first = full.lines().next().unwrap_or("invalid YAML").to_string();
        let mut msg = match first.rfind(" at line ") {
            Some(i) => first[..i].to_string(),
            None => first,
        };
        if let Some(rest) = msg.strip_prefix("error: ") {
            msg = rest.to_string();
        }
        if msg.starts_with("line ")
            && let Some((_, rest)) = msg.split_once(": ")
        {
            msg = rest.to_string();
        }
        let mut err = src.err(format!("invalid YAML: {msg}"));
        if let Some(loc) = e.location()
            && loc.line() > 0
        {
            err = err.at(loc.line() as usize, loc.column() as usize);
        }
        err
    })?;
    Ok(raw.packages.unwrap_or_default())
}

/// What a local package looks like to the dependency resolver.
pub(crate) struct LocalPackage<'a> {
    pub version: Option<&'a str>,
}

/// Resolves one dependency entry of the package in `from_dir` (root-relative)
/// to the package-json name of a workspace package, when the package
/// manager would link the local package.
pub(crate) fn local_target<'a>(
    key: &str,
    spec: &str,
    from_dir: &str,
    lookup_name: &dyn Fn(&str) -> Option<LocalPackage<'a>>,
    lookup_dir: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let spec = spec.trim();
    let by_range = |name: &str, range: &str| -> Option<String> {
        let pkg = lookup_name(name)?;
        let r = range.trim();
        if r.is_empty() || r == "*" {
            return Some(name.to_string());
        }
        let v = semver::Version::parse(pkg.version?.trim().trim_start_matches('v')).ok()?;
        range_satisfied(r, &v).then(|| name.to_string())
    };
    let by_path = |p: &str| -> Option<String> {
        let joined = Path::new(from_dir).join(p);
        let rel = normalise_rel(&joined)?;
        lookup_dir(&rel)
    };
    if let Some(rest) = spec.strip_prefix("workspace:") {
        let rest = rest.trim();
        if matches!(rest, "" | "*" | "^" | "~") {
            return lookup_name(key).map(|_| key.to_string());
        }
        if rest.starts_with('.') || rest.starts_with('/') {
            return by_path(rest);
        }
        // `workspace:<name>@<range>` alias.
        if let Some((name, range)) = split_name_at(rest) {
            return match range {
                "" | "*" | "^" | "~" => lookup_name(name).map(|_| name.to_string()),
                r => by_range(name, r),
            };
        }
        return by_range(key, rest);
    }
    for prefix in ["file:", "link:", "portal:"] {
        if let Some(p) = spec.strip_prefix(prefix) {
            return by_path(p);
        }
    }
    if spec.starts_with("./") || spec.starts_with("../") || spec.starts_with('/') {
        return by_path(spec);
    }
    if let Some(rest) = spec.strip_prefix("npm:") {
        let (name, range) = split_name_at(rest).unwrap_or((rest, ""));
        return by_range(name, range);
    }
    if spec.contains(':') || spec.contains("://") {
        return None; // URL, git, catalog:, ...
    }
    by_range(key, spec)
}

/// `name@range` / `@scope/name@range` → (name, range).
fn split_name_at(s: &str) -> Option<(&str, &str)> {
    let start = usize::from(s.starts_with('@'));
    let at = s[start..].find('@')? + start;
    Some((&s[..at], &s[at + 1..]))
}

/// Normalises a relative path (resolving `.` and `..`); `None` when it
/// leaves the root or is absolute.
fn normalise_rel(p: &Path) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => return None,
        }
    }
    Some(if out.is_empty() {
        ".".to_string()
    } else {
        out.join("/")
    })
}

/// Whether `version` satisfies the npm range `range`.
pub(crate) fn range_satisfied(range: &str, version: &semver::Version) -> bool {
    range
        .split("||")
        .any(|alt| alternative_satisfied(alt.trim(), version))
}

fn alternative_satisfied(alt: &str, v: &semver::Version) -> bool {
    if matches!(alt, "" | "*" | "x" | "X") {
        return true;
    }
    // Hyphen range `a - b`.
    if let Some((lo, hi)) = alt.split_once(" - ") {
        let lo = clean_version(lo.trim());
        let hi = clean_version(hi.trim());
        let req = match (lo.is_empty(), hi.is_empty()) {
            (false, false) => format!(">={lo}, <={hi}"),
            _ => return false,
        };
        return semver::VersionReq::parse(&req).is_ok_and(|r| r.matches(v));
    }
    // Join operators separated from their version (`>= 1.2`).
    let mut comparators: Vec<String> = Vec::new();
    let mut pending_op = String::new();
    for tok in alt.split_whitespace() {
        if tok
            .chars()
            .all(|c| matches!(c, '<' | '>' | '=' | '~' | '^'))
        {
            pending_op.push_str(tok);
            continue;
        }
        comparators.push(format!("{pending_op}{tok}"));
        pending_op.clear();
    }
    if comparators.is_empty() {
        return false;
    }
    let mut parts = Vec::new();
    for c in comparators {
        let split = c
            .find(|ch: char| !matches!(ch, '<' | '>' | '=' | '~' | '^'))
            .unwrap_or(c.len());
        let (op, ver) = c.split_at(split);
        let ver = clean_version(ver);
        if ver.is_empty() {
            // `*`, `x`, `>=*`...: any version.
            continue;
        }
        let op = match op {
            "" => "=",
            "~>" => "~",
            o => o,
        };
        parts.push(format!("{op}{ver}"));
    }
    if parts.is_empty() {
        return true;
    }
    semver::VersionReq::parse(&parts.join(", ")).is_ok_and(|r| r.matches(v))
}

/// Drops a `v`/`=` prefix and trailing `x`/`*` components (`1.2.x` → `1.2`).
fn clean_version(s: &str) -> String {
    let s = s.trim().trim_start_matches('=').trim_start_matches('v');
    let mut comps: Vec<&str> = Vec::new();
    // Keep a pre-release / build suffix attached to the patch component.
    for c in s.splitn(3, '.') {
        if matches!(c, "x" | "X" | "*") {
            break;
        }
        comps.push(c);
    }
    comps.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sat(r: &str, v: &str) -> bool {
        range_satisfied(r, &semver::Version::parse(v).unwrap())
    }

    #[test]
    fn npm_ranges() {
        assert!(sat("^1.2.0", "1.4.0"));
        assert!(!sat("^1.2.0", "2.0.0"));
        assert!(sat("1.2.3", "1.2.3"));
        assert!(!sat("1.2.3", "1.2.4"));
        assert!(sat("1.x", "1.9.0"));
        assert!(sat("1.2.x", "1.2.7"));
        assert!(!sat("1.2.x", "1.3.0"));
        assert!(sat(">= 1.0.0 < 2", "1.5.0"));
        assert!(!sat(">=1.0.0 <1.5.0", "1.5.0"));
        assert!(sat("^0.1 || ^2", "2.3.0"));
        assert!(sat("1.0.0 - 1.4.0", "1.4.0"));
        assert!(!sat("1.0.0 - 1.4.0", "1.4.1"));
        assert!(sat("~1.2", "1.2.9"));
        assert!(sat("*", "0.0.1"));
        assert!(sat("v1.0.0", "1.0.0"));
        assert!(!sat("latest", "1.0.0"));
    }

    #[test]
    fn specs() {
        let lookup_name = |n: &str| match n {
            "lib" => Some(LocalPackage {
                version: Some("1.2.0"),
            }),
            "nover" => Some(LocalPackage { version: None }),
            _ => None,
        };
        let lookup_dir = |d: &str| (d == "packages/lib").then(|| "lib".to_string());
        let t = |k: &str, s: &str| local_target(k, s, "apps/web", &lookup_name, &lookup_dir);
        assert_eq!(t("lib", "workspace:*").as_deref(), Some("lib"));
        assert_eq!(t("lib", "workspace:^").as_deref(), Some("lib"));
        assert_eq!(t("lib", "workspace:^1.0.0").as_deref(), Some("lib"));
        assert_eq!(t("lib", "workspace:^2.0.0"), None);
        assert_eq!(t("x", "workspace:lib@*").as_deref(), Some("lib"));
        assert_eq!(t("lib", "^1.1.0").as_deref(), Some("lib"));
        assert_eq!(t("lib", "^2.0.0"), None);
        assert_eq!(t("lib", "*").as_deref(), Some("lib"));
        assert_eq!(t("lib", "").as_deref(), Some("lib"));
        assert_eq!(t("nover", "*").as_deref(), Some("nover"));
        assert_eq!(t("nover", "^1"), None);
        assert_eq!(t("lib", "latest"), None);
        assert_eq!(t("lib", "https://x/y.tgz"), None);
        assert_eq!(t("lib", "catalog:"), None);
        assert_eq!(t("alias", "npm:lib@^1").as_deref(), Some("lib"));
        assert_eq!(
            t("whatever", "file:../../packages/lib").as_deref(),
            Some("lib")
        );
        assert_eq!(
            t("whatever", "link:../../packages/lib/").as_deref(),
            Some("lib")
        );
        assert_eq!(t("whatever", "../../packages/lib").as_deref(), Some("lib"));
        assert_eq!(t("whatever", "file:../../../outside"), None);
        assert_eq!(t("react", "^18"), None);
    }
}
