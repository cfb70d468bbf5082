//! `vx-cache-server` — vx's self-hosted remote cache: Turborepo's `/v8`
//! and Nx's `/v1/cache` APIs over an `object_store` (a local directory by
//! default; S3-compatible by `s3://bucket/prefix?endpoint=…`), with tokens
//! that carry a role and a namespace, write-once artifacts, signature
//! checks, provenance beside each artifact, eviction by age and size in
//! the background, `/health` and Prometheus `/metrics`. `vx cache serve`
//! runs it. The same port also answers the Bazel Remote Execution API's
//! cache services over gRPC ([`reapi`]: `--remote_cache=grpc://HOST:PORT`).
//!
//! Never links the engine; never blocks start-up on the store's listing;
//! on SIGINT/SIGTERM it stops accepting, lets uploads in flight finish,
//! saves its last-read times and exits.

mod auth;
mod http;
mod metrics;
mod reapi;
mod serve;
mod store;

use anyhow::{Context, Result, bail};
use auth::{Role, Tokens, quick};
use clap::Parser;
use object_store::ObjectStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// vx's remote cache server (Turborepo /v8 and Nx /v1/cache APIs).
#[derive(Parser, Debug)]
#[command(name = "vx-cache-server", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4280")]
    listen: String,
    /// Where artifacts go: a directory, or s3://BUCKET[/PREFIX][?endpoint=URL&region=R]
    /// (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    #[arg(long)]
    store: String,
    /// A TOML file of `[[token]]` tables (name, secret or secret_env, role, namespace, read).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// A read-write token in the default namespace (quick start).
    #[arg(long = "token-rw")]
    token_rw: Vec<String>,
    /// A read-only token in the default namespace (quick start).
    #[arg(long = "token-ro")]
    token_ro: Vec<String>,
    /// The environment variable holding the HMAC key: uploads must carry a
    /// valid `x-artifact-tag`.
    #[arg(long)]
    signature_key_env: Option<String>,
    /// The largest artifact accepted (bytes; K, M, G suffixes).
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    max_artifact_size: u64,
    /// Evict the least recently read artifacts past this total (K, M, G).
    #[arg(long, value_parser = parse_size)]
    max_size: Option<u64>,
    /// Evict artifacts older than this (`30s`, `12h`, `7d`).
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// How often eviction runs (besides after uploads).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    evict_interval: Duration,
    /// Memory for uploads in flight (K, M, G); uploads wait beyond it.
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    upload_memory: u64,
    /// Where partial REAPI ByteStream uploads are kept until complete, in a
    /// directory of this process's own (default: the system's temporary
    /// directory).
    #[arg(long)]
    spool: Option<PathBuf>,
    /// How long a connection may take to send a request's headers (and its
    /// first request) before it is closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..]
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1u64 << 40,
                u => return Err(format!("unknown size unit {u:?}")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let i = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit (ms, s, m, h, d)"))?;
    let n: u64 = s[..i]
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let ms = match &s[i..] {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => return Err(format!("unknown duration unit {u:?}")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

/// The object store of `--store`.
fn open_store(spec: &str) -> Result<(store::Store, String)> {
    if let Some(rest) = spec.strip_prefix("s3://") {
        let (loc, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = loc.split_once('/').unwrap_or((loc, ""));
        if bucket.is_empty() {
            bail!("--store {spec}: no bucket");
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            b = match k {
                "endpoint" => b
                    .with_endpoint(v)
                    .with_allow_http(v.starts_with("http://"))
                    .with_virtual_hosted_style_request(false),
                "region" => b.with_region(v),
                _ => bail!("--store {spec}: unknown option {k:?} (endpoint, region)"),
            };
        }
        let s3 = b.build().with_context(|| format!("--store {spec}"))?;
        let prefix = prefix.trim_matches('/');
        let os: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        return Ok((store::Store::new(os), format!("s3://{loc}")));
    }
    let dir = PathBuf::from(spec.strip_prefix("file://").unwrap_or(spec));
    std::fs::create_dir_all(&dir).with_context(|| format!("--store {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .with_context(|| format!("--store {}", dir.display()))?;
    Ok((store::Store::local(fs), dir.display().to_string()))
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut tokens = Tokens::default();
    if let Some(f) = &args.tokens {
        tokens.load_file(f).map_err(anyhow::Error::msg)?;
    }
    for (i, s) in args.token_rw.iter().enumerate() {
        tokens
            .add(s, quick(&format!("rw{i}"), Role::Write))
            .map_err(anyhow::Error::msg)?;
    }
    for (i, s) in args.token_ro.iter().enumerate() {
        tokens
            .add(s, quick(&format!("ro{i}"), Role::Read))
            .map_err(anyhow::Error::msg)?;
    }
    if tokens.is_empty() {
        bail!("no tokens: give --tokens FILE, --token-rw SECRET or --token-ro SECRET");
    }
    let signature_key = match &args.signature_key_env {
        Some(n) => Some(
            std::env::var(n)
                .ok()
                .filter(|v| !v.is_empty())
                .with_context(|| format!("--signature-key-env: ${n} is not set"))?
                .into_bytes(),
        ),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args, tokens, signature_key))
}

async fn serve(args: Args, tokens: Tokens, signature_key: Option<Vec<u8>>) -> Result<()> {
    let (store, describe) = open_store(&args.store)?;
    let store = Arc::new(store);
    let budget_mib = (args.upload_memory >> 20).clamp(1, u32::MAX as u64 >> 4) as u32;
    let app = Arc::new(http::App {
        store: store.clone(),
        tokens,
        metrics: Default::default(),
        signature_key,
        max_artifact: args.max_artifact_size,
        upload_budget: tokio::sync::Semaphore::new(budget_mib as usize),
        upload_budget_mib: budget_mib,
    });
    let spool_parent = args.spool.clone().unwrap_or_else(std::env::temp_dir);
    let grpc = Arc::new(
        reapi::Reapi::new(app.clone(), &spool_parent)
            .with_context(|| format!("--spool {}", spool_parent.display()))?,
    );
    let spool = grpc.spool.clone();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let addr = listener.local_addr()?;
    // The index is built in the background: start-up never waits for it.
    {
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.load().await {
                tracing::error!(error = %e, "could not list the store; eviction is off");
            }
        });
    }
    let ev = store::Eviction {
        max_bytes: args.max_size,
        ttl: args.ttl,
        interval: args.evict_interval,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let housekeeping = {
        let (store, app) = (store.clone(), app.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ev.interval) => {}
                    _ = store.kick.notified() => {}
                    _ = stop.changed() => break,
                }
                if ev.max_bytes.is_some() || ev.ttl.is_some() {
                    let (n, bytes) = store.evict(&ev).await;
                    app.metrics
                        .evictions
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    app.metrics
                        .evicted_bytes
                        .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                }
                store.save_access().await;
            }
        })
    };
    tracing::info!(listen = %addr, store = %describe, signed = app.signature_key.is_some(), "vx-cache-server listening");
    // The one line a caller (vx cache serve, tests) waits for.
    println!("vx-cache-server listening on http://{addr}");
    let shutdown = async move {
        let mut term = signal(SignalKind::terminate()).ok();
        let int = tokio::signal::ctrl_c();
        tokio::select! {
            _ = int => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
        tracing::info!("shutting down: finishing requests in flight");
    };
    // HTTP/1.1 for the turbo/Nx routes and HTTP/2 (gRPC) for REAPI on one port.
    let routes = http::router(app.clone()).merge(reapi::router(grpc));
    let limits = serve::Limits {
        header_timeout: args.header_timeout,
        max_connections: args.max_connections,
    };
    serve::serve(listener, routes, limits, shutdown).await?;
    let _ = stop_tx.send(true);
    let _ = housekeeping.await;
    store.save_access().await;
    let _ = std::fs::remove_dir_all(&spool);
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        for (s, want) in [
            ("10", Some(10)),
            ("4K", Some(4096)),
            ("2MiB", Some(2 << 20)),
            ("1G", Some(1 << 30)),
            ("x", None),
            ("3Q", None),
        ] {
            assert_eq!(parse_size(s).ok(), want, "{s}");
        }
        for (s, want) in [
            ("30s", Some(30_000)),
            ("5m", Some(300_000)),
            ("7d", Some(604_800_000)),
            ("10", None),
            ("3y", None),
        ] {
            assert_eq!(
                parse_duration(s).ok().map(|d| d.as_millis() as u64),
                want,
                "{s}"
            );
        }
    }
}
