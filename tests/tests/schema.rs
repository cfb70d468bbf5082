//! The JSON Schema of `vx.toml` (docs/vx.schema.json, `vx schema`): it is
//! generated from the engine's config types, the checked-in file equals it
//! (`VX_BLESS=1 cargo test -p vx-tests --test schema` rewrites it), `vx
//! schema` prints it, it accepts every fixture `vx.toml` the engine accepts
//! (the fixtures written by the tests in tests/tests/*.rs, and examples/),
//! and it rejects what the engine rejects as an unknown key.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vx_tests::{Ws, vx_test};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

const SCHEMA_FILE: &str = "docs/vx.schema.json";

fn validator() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(&vxd::workspace::schema_json()).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

/// The TOML document as JSON, as an editor's schema check sees it.
fn as_json(text: &str) -> Option<Value> {
    toml::from_str::<Value>(text).ok()
}

fn schema_errors(v: &jsonschema::Validator, text: &str) -> Vec<String> {
    let Some(doc) = as_json(text) else {
        return vec!["not TOML".to_string()];
    };
    v.iter_errors(&doc).map(|e| e.to_string()).collect()
}

#[test]
fn checked_in_schema_is_the_generated_one() {
    let want = vxd::workspace::schema_json();
    let path = repo().join(SCHEMA_FILE);
    if vx_proto::knobs::BLESS.get_process().as_deref() == Some("1") {
        std::fs::write(&path, &want).expect("write the schema");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{SCHEMA_FILE} differs from the config types; rerun with VX_BLESS=1 to rewrite it"
    );
}

/// Reads one Rust string literal (`"…"` with escapes, or `r#"…"#`) at the
/// start of `s`; returns it and the rest.
fn literal(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix("r#\"") {
        let end = rest.find("\"#")?;
        return Some((rest[..end].to_string(), &rest[end + 2..]));
    }
    let rest = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &rest[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                '0' => out.push('\0'),
                '\n' => {
                    // Line continuation: skip the next line's indentation.
                    let tail = &rest[i + 2..];
                    let skip = tail.len() - tail.trim_start().len();
                    for _ in 0..skip {
                        chars.next();
                    }
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// The `("…vx.toml", <literal or concat!(literals)>)` pairs of a test file.
fn fixtures_in(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = src[at..].find("vx.toml\",") {
        let after = &src[at + i + "vx.toml\",".len()..];
        at += i + 1;
        let after = after.trim_start();
        if let Some(rest) = after.strip_prefix("concat!(") {
            let mut text = String::new();
            let mut rest = rest;
            let mut ok = false;
            while let Some((lit, r)) = literal(rest) {
                text.push_str(&lit);
                let r = r.trim_start();
                rest = r.strip_prefix(',').unwrap_or(r);
                if rest.trim_start().starts_with(')') {
                    ok = true;
                    break;
                }
            }
            if ok {
                out.push(text);
            }
        } else if let Some((lit, _)) = literal(after) {
            out.push(lit);
        }
    }
    out
}

fn all_fixtures() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = repo().join("tests/tests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read tests/tests")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.push(repo().join("tests/src/lib.rs"));
    files.sort();
    for f in files {
        let src = std::fs::read_to_string(&f).expect("read a test file");
        for (n, text) in fixtures_in(&src).into_iter().enumerate() {
            out.push((format!("{}#{n}", f.display()), text));
        }
    }
    let mut stack = vec![repo().join("examples")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "vx.toml") {
                let text = std::fs::read_to_string(&p).expect("read an example");
                out.push((p.display().to_string(), text));
            }
        }
    }
    out
}

#[test]
fn schema_accepts_every_fixture_the_engine_accepts() {
    let v = validator();
    let fixtures = all_fixtures();
    let mut accepted = 0;
    let mut unknown = 0;
    for (name, text) in &fixtures {
        match vxd::workspace::check_text("vx.toml", text) {
            Ok(()) => {
                accepted += 1;
                let errs = schema_errors(&v, text);
                assert!(
                    errs.is_empty(),
                    "{name}: the engine accepts it, the schema does not: {errs:?}\n{text}"
                );
            }
            Err(e) if e.message.starts_with("unknown field") => {
                unknown += 1;
                assert!(
                    !schema_errors(&v, text).is_empty(),
                    "{name}: the engine rejects an unknown key ({e}), the schema accepts it\n{text}"
                );
            }
            Err(_) => {}
        }
    }
    assert!(
        accepted >= 50,
        "only {accepted} of {} fixtures were found and accepted; did the fixture scan break?",
        fixtures.len()
    );
    eprintln!(
        "{} fixtures: {accepted} accepted by both, {unknown} unknown-key rejections by both",
        fixtures.len()
    );
}

/// Misspelled keys, in each table: the schema rejects them, and the engine's
/// error keeps its did-you-mean.
const MISSPELLED: &[(&str, &str)] = &[
    ("[workspace]\nmember = [\"a\"]\n", "did you mean `members`"),
    (
        "[project]\nname = \"a\"\ntag = [\"x\"]\n",
        "did you mean `tags`",
    ),
    (
        "[tasks.build]\ncomand = \"true\"\n",
        "did you mean `command`",
    ),
    (
        "[tasks.build]\ncommand = \"true\"\noutput = [\"dist/**\"]\n",
        "did you mean `outputs`",
    ),
    ("[task.build]\ncommand = \"true\"\n", "did you mean `tasks`"),
];

#[test]
fn schema_rejects_misspelled_keys() {
    let v = validator();
    for (text, hint) in MISSPELLED {
        assert!(
            !schema_errors(&v, text).is_empty(),
            "the schema accepts a misspelled key:\n{text}"
        );
        let e = vxd::workspace::check_text("vx.toml", text)
            .expect_err("the engine rejects a misspelled key");
        let shown = format!("{e}");
        assert!(shown.contains(hint), "{shown:?} lacks {hint:?}");
    }
    // Wrong types too.
    for text in [
        "[workspace]\nconcurrency = 0\n",
        "[tasks.build]\ncommand = 1\n",
        "[tasks.build]\ncommand = \"x\"\ncache = \"no\"\n",
    ] {
        assert!(
            !schema_errors(&v, text).is_empty(),
            "the schema accepts:\n{text}"
        );
    }
}

vx_test!(vx_schema_prints_the_checked_in_schema, || {
    let ws = Ws::new(&[]);
    let r = ws.vx(&["schema"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let have = std::fs::read_to_string(repo().join(SCHEMA_FILE)).unwrap_or_default();
    assert_eq!(r.stdout, have);
    let v: Value = serde_json::from_str(&r.stdout).expect("vx schema prints JSON");
    assert_eq!(v["title"], "vx.toml");
});

vx_test!(misspelled_key_keeps_its_did_you_mean_through_vx, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"app\"]\n"),
        (
            "app/vx.toml",
            "[project]\nname = \"app\"\n[tasks.build]\ncomand = \"true\"\n",
        ),
    ]);
    let r = ws.vx(&["run", "build"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("did you mean `command`"), "{}", r.stderr);
});
