//! `vx init`: one `workspace.init` request to the no-daemon engine (a
//! daemon is not needed to write config files, and there may be no vx
//! workspace yet), then the files written and the items not translated.

use crate::conn::Conn;
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::Path;
use vx_proto::init::{InitParams, InitResult, InitSource, WORKSPACE_INIT};

/// `vx init` arguments.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  vx init --dry-run     show what would be written\n  vx init               translate turbo.json / nx.json / package.json scripts\n  vx init --from scripts --force"
)]
pub struct InitArgs {
    /// What to translate (default: turbo.json if present, else nx.json, else
    /// package.json scripts).
    #[arg(long, value_enum)]
    from: Option<From>,
    /// Replace vx.toml files that already exist.
    #[arg(long)]
    force: bool,
    /// Print what would be written; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON (files with their content).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum From {
    Turbo,
    Nx,
    Scripts,
}

pub fn init(args: InitArgs, cwd: &Path) -> Result<i32> {
    let params = InitParams {
        cwd: cwd.to_string_lossy().into_owned(),
        from: args.from.map(|f| match f {
            From::Turbo => InitSource::Turbo,
            From::Nx => InitSource::Nx,
            From::Scripts => InitSource::Scripts,
        }),
        force: args.force,
        dry_run: args.dry_run,
    };
    let c = Conn::stdio()?;
    let (c, v) = crate::call_following(c, WORKSPACE_INIT, &params, &mut |_| {})?;
    c.finish();
    let r: InitResult = serde_json::from_value(v)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(if r.load_error.is_some() { 1 } else { 0 });
    }
    let verb = if r.dry_run { "would write" } else { "wrote" };
    println!("vx init: from {} in {}", r.source.name(), r.root);
    for f in &r.files {
        let note = if f.replaced { " (replaced)" } else { "" };
        println!("  {verb} {}{note}", f.path);
        if r.dry_run {
            for line in f.content.lines() {
                println!("    │ {line}");
            }
        }
    }
    if r.untranslated.is_empty() {
        println!("everything was translated");
    } else {
        println!("not translated ({}):", r.untranslated.len());
        for i in &r.untranslated {
            println!("  {}: {}: {}", i.file, i.item, i.reason);
        }
    }
    if let Some(e) = &r.load_error {
        eprintln!("vx: error: the written config does not load: {e}");
        return Ok(1);
    }
    if !r.dry_run {
        println!(
            "next: vx run build --dry   (and edit the vx.toml files: each task says where it came from)"
        );
    }
    Ok(0)
}
