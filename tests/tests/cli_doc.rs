//! docs/cli.md's command reference is generated from the one clap definition
//! of the command line: between `<!-- commands:start -->` and
//! `<!-- commands:end -->` it holds exactly what `vx __cli-doc` prints (every
//! visible verb, its synopsis, options and examples). `VX_BLESS=1` rewrites
//! the block; the hand-written prose around it is left alone.

use std::path::PathBuf;
use vx_proto::knobs::BLESS;
use vx_tests::{Ws, vx_test};

const START: &str = "<!-- commands:start -->";
const END: &str = "<!-- commands:end -->";

fn cli_md() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("cli.md")
}

// The generated reference in docs/cli.md matches the binary's definition
// (the same in both modes: `__cli-doc` never reaches an engine).
vx_test!(cli_md_reference_matches_clap, || {
    let ws = Ws::new(&[]);
    let r = ws.vx(&["__cli-doc"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let generated = r.stdout;
    for verb in ["run", "watch", "cache prune", "daemon stop", "completions"] {
        assert!(
            generated.contains(&format!("### `vx {verb}`")),
            "`vx {verb}` is missing from the generated reference:\n{generated}"
        );
    }
    assert!(!generated.contains("`vx __man`"), "hidden verbs stay out");

    let path = cli_md();
    let doc = std::fs::read_to_string(&path).expect("read docs/cli.md");
    let (Some(a), Some(b)) = (doc.find(START), doc.find(END)) else {
        panic!("docs/cli.md lacks the {START} / {END} markers");
    };
    assert!(a < b, "markers out of order in docs/cli.md");
    let body_start = a + START.len();
    let want = format!("\n{generated}");
    if doc[body_start..b] == want {
        return;
    }
    if BLESS.get_process().as_deref() == Some("1") {
        let new = format!("{}{}{}", &doc[..body_start], want, &doc[b..]);
        std::fs::write(&path, new).expect("write docs/cli.md");
        return;
    }
    panic!(
        "docs/cli.md's command reference differs from vx's clap definition; rerun with \
         VX_BLESS=1 cargo test -p vx-tests --test cli_doc to rewrite it. Expected:\n{want}"
    );
});
