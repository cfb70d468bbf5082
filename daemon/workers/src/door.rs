//! `door` — the daemon's side of worker links: the `WorkerLink` gRPC
//! service, started with the daemon as an [`Attachment`].
//!
//! Owns: the listener (`[workers] listen`, default `127.0.0.1:0`; beyond
//! loopback only with its own `[workers] token`), the `worker` endpoint in
//! `daemon.status` (`vx daemon status` shows it as `worker_url`), the
//! bearer-token check (constant time; a missing or wrong token is
//! `UNAUTHENTICATED` and nothing else), the bounds a hostile caller meets
//! (at most [`MAX_CONNECTIONS`] TCP connections and [`MAX_LINKS`] links, a
//! Hello within [`HELLO_WITHIN`], messages of at most
//! [`crate::MAX_MESSAGE`], a bounded outbox per link, HTTP/2 keepalive so a
//! vanished machine is noticed), and one pump per link between the wire
//! and the engine's [`Link`] (a refusal is `FAILED_PRECONDITION` with its
//! message). A connected worker counts as a daemon connection (no idling
//! out under it).
//!
//! Never: decides anything about a worker's tasks (the engine's
//! `Coordinator` does), blocks the engine on a slow worker (the engine's
//! queue to a link is bounded; this pump only drains it), or logs a token.

use crate::{MAX_MESSAGE, pb, wire};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status, Streaming};
use vxd::engine::distribute::{Coordinator, Link};
use vxd::server::attach::{Attachment, ConnectionGuard, Door, constant_time_eq};

/// How long a new link may take to send its Hello.
pub const HELLO_WITHIN: Duration = Duration::from_secs(10);
/// The most worker links at once.
pub const MAX_LINKS: usize = 256;
/// The most TCP connections at once (a connection beyond is closed at
/// accept).
pub const MAX_CONNECTIONS: usize = 2 * MAX_LINKS;
/// Messages queued to one worker before the pump waits for it.
const OUTBOX: usize = 64;
/// HTTP/2 pings: every interval, and a connection whose ping is not
/// answered within the timeout is closed (its worker is lost).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The worker door (see the module doc).
#[derive(Default)]
pub struct WorkerDoor;

impl Attachment for WorkerDoor {
    fn name(&self) -> &'static str {
        "workers"
    }

    fn start(&self, door: Door) -> anyhow::Result<()> {
        let settings =
            vxd::engine::distribute::settings(door.root()).map_err(anyhow::Error::msg)?;
        let listen = settings
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:0".to_string());
        let std_listener = std::net::TcpListener::bind(&listen)
            .with_context(|| format!("binding the worker door on {listen} ([workers] listen)"))?;
        let addr = std_listener.local_addr()?;
        let token = match &settings.token {
            Some(t) => t.clone(),
            None if addr.ip().is_loopback() => door.token().context("making the daemon's token")?,
            None => anyhow::bail!(
                "[workers] listen = {listen:?} is beyond loopback: set [workers] token too (the daemon's own token never leaves this machine)"
            ),
        };
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let url = advertised_url(addr);
        let svc = Service {
            token: token.into(),
            door: door.clone(),
            links: Arc::new(Semaphore::new(MAX_LINKS)),
        };
        let stopping = door.stopping();
        let incoming = accept_loop(listener, stopping.clone());
        tokio::spawn(async move {
            let server = pb::worker_link_server::WorkerLinkServer::new(svc)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            let served = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
                .max_concurrent_streams(Some(4))
                .add_service(server)
                .serve_with_incoming_shutdown(incoming, stopping.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!("worker door failed: {e}");
            }
        });
        door.advertise("worker", &url);
        tracing::info!("worker door on {url}");
        Ok(())
    }
}

/// The URL workers connect to: the bound address, with this host's name in
/// place of an unspecified IP (`0.0.0.0`).
fn advertised_url(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = crate::worker::hostname().unwrap_or_else(|| "localhost".into());
        format!("http://{host}:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

/// A TCP connection holding one of the [`MAX_CONNECTIONS`] permits.
struct Conn {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts connections while permits last; one beyond is closed at once.
fn accept_loop(
    listener: tokio::net::TcpListener,
    stopping: CancellationToken,
) -> ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(16);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stopping.cancelled() => break,
                a = listener.accept() => a,
            };
            let (io, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("worker door: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "worker door: {MAX_CONNECTIONS} connections open, closing a new one");
                continue;
            };
            let _ = io.set_nodelay(true);
            if tx
                .send(Ok(Conn {
                    io,
                    _permit: permit,
                }))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

struct Service {
    token: Arc<str>,
    door: Door,
    links: Arc<Semaphore>,
}

impl Service {
    fn authorized<T>(&self, req: &Request<T>) -> bool {
        req.metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.as_bytes(), self.token.as_bytes()))
    }
}

#[tonic::async_trait]
impl pb::worker_link_server::WorkerLink for Service {
    type ConnectStream = ReceiverStream<Result<pb::ToWorker, Status>>;

    async fn connect(
        &self,
        req: Request<Streaming<pb::FromWorker>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        if !self.authorized(&req) {
            return Err(Status::unauthenticated(
                "missing or wrong token (authorization: Bearer; see docs/distributed.md)",
            ));
        }
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let permit = self.links.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the coordinator already has {MAX_LINKS} worker links"
            ))
        })?;
        let mut inbound = req.into_inner();
        let first = match tokio::time::timeout(HELLO_WITHIN, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no Hello within {} s",
                    HELLO_WITHIN.as_secs()
                )));
            }
            Ok(Err(s)) => return Err(s),
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument("the link closed before its Hello"));
            }
            Ok(Ok(Some(m))) => m,
        };
        let Some(pb::from_worker::Msg::Hello(hello)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message must be a Hello",
            ));
        };
        let hello = wire::hello_from_wire(hello).map_err(Status::invalid_argument)?;
        let name = hello.name.clone();
        // The coordinator may read the daemon's checkout (its commit).
        let attached = tokio::task::spawn_blocking(move || Coordinator::global().attach(hello))
            .await
            .map_err(|_| Status::internal("attaching the worker failed"))?;
        let link = match attached {
            Ok(l) => l,
            Err(r) => {
                tracing::info!(worker = %name, %peer, "worker refused: {}", r.0);
                return Err(Status::failed_precondition(r.0));
            }
        };
        tracing::info!(worker = %name, %peer, "worker attached");
        let (tx, rx) = mpsc::channel(OUTBOX);
        tokio::spawn(pump(
            link,
            inbound,
            tx,
            self.door.connection(),
            permit,
            self.door.stopping(),
            name,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Moves messages between one worker's stream and its engine [`Link`]
/// until either side ends; dropping the link tells the engine the worker
/// is lost.
async fn pump(
    mut link: Link,
    mut inbound: Streaming<pb::FromWorker>,
    out: mpsc::Sender<Result<pb::ToWorker, Status>>,
    _connection: ConnectionGuard,
    _permit: OwnedSemaphorePermit,
    stopping: CancellationToken,
    name: String,
) {
    loop {
        tokio::select! {
            _ = stopping.cancelled() => {
                let _ = out.try_send(Err(Status::unavailable("the coordinator is stopping")));
                break;
            }
            m = inbound.message() => match m {
                Ok(Some(m)) => match wire::from_worker_from_wire(m) {
                    Ok(msg) => link.from_worker(msg),
                    Err(e) => {
                        tracing::warn!(worker = %name, "closing the link: {e}");
                        let _ = out.try_send(Err(Status::invalid_argument(e)));
                        break;
                    }
                },
                Ok(None) => {
                    tracing::info!(worker = %name, "worker closed its link");
                    break;
                }
                Err(s) => {
                    tracing::info!(worker = %name, "worker link lost: {}", s.message());
                    break;
                }
            },
            t = link.to_worker.recv() => match t {
                Some(t) => {
                    let sent = tokio::select! {
                        r = out.send(Ok(wire::to_worker_to_wire(t))) => r.is_ok(),
                        _ = stopping.cancelled() => false,
                    };
                    if !sent {
                        break;
                    }
                }
                None => {
                    tracing::info!(worker = %name, "the coordinator dropped the link");
                    break;
                }
            },
        }
    }
    drop(link);
}
