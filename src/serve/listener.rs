//! The accept loop shared by the gateway and admin listeners, with the limits that keep
//! slow or idle clients from holding the gateway.
//!
//! ```text
//! permit (at most max_connections open; beyond, wait: counted) ─▶ accept (errors logged at
//!   most once a second) ─▶ connection task: HTTP/1.1 + h2c with upgrades,
//!   max_header_bytes (431 beyond), header_read_timeout (also bounds the wait between
//!   HTTP/1 keep-alive requests),
//!   idle watch (no request in flight and no byte moved for idle_timeout: closed)
//! shutdown ─▶ stop accepting ─▶ in-flight requests finish (at most `[server] drain_seconds`)
//! ```
//!
//! A connection that upgrades hands its socket to the WebSocket tunnel and leaves the count.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::tls::Tls;
use crate::config::ServerConfig;
use crate::proxy::response::Body;
use crate::request::TlsSession;
use crate::telemetry::metrics::Connections;

/// At most one accept-error log line per this period (the others are counted).
const ACCEPT_LOG_PERIOD: Duration = Duration::from_secs(1);

/// What bounds a listener's connections (`[server]`).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Longest wait for a request's headers.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Where connections are counted.
    pub counters: Arc<Connections>,
    /// TLS of the listener (`[server.tls]`), when it has one.
    pub tls: Option<Arc<Tls>>,
    /// How long in-flight requests may run after the listener closed.
    pub drain: Duration,
}

impl Limits {
    /// The limits of `[server]`, counted into `counters`.
    pub(crate) fn new(server: &ServerConfig, counters: Arc<Connections>) -> Limits {
        Limits {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_connections: server.max_connections,
            max_header_bytes: server.max_header_bytes,
            counters,
            tls: None,
            drain: server.drain,
        }
    }

    /// The same limits on a TLS listener.
    pub(crate) fn with_tls(self, tls: Option<Arc<Tls>>) -> Limits {
        Limits { tls, ..self }
    }
}

/// Accepts connections on `listener` and answers with `handler` until `shutdown` completes,
/// then lets in-flight requests finish (at most the limits' `drain`).
pub(crate) async fn serve_http<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    let header_list = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
    builder.http2().max_header_list_size(header_list);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut accept_log = RateLimited::default();
    tokio::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                limits.counters.limited.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        limits.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                        accept_log.warn(&e);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = Connection {
                    builder: builder.clone(),
                    watcher: graceful.watcher(),
                    counters: limits.counters.clone(),
                    idle: limits.idle_timeout,
                    handshake: limits.header_read_timeout,
                    peer,
                };
                let (handler, tls) = (handler.clone(), limits.tls.clone());
                tokio::spawn(async move {
                    let _open = Open::new(&connection.counters, permit);
                    connection.serve(stream, tls, handler).await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after the grace period");
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    counters: Arc<Connections>,
    idle: Duration,
    handshake: Duration,
    peer: SocketAddr,
}

impl Connection {
    /// Serves HTTP on the socket (after the TLS handshake, on a TLS listener) until it
    /// closes, idles out, or the graceful shutdown ends it.
    async fn serve<H, F>(self, stream: TcpStream, tls: Option<Arc<Tls>>, handler: H)
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let activity = Activity::default();
        let tracked = Tracked {
            inner: stream,
            activity: activity.clone(),
        };
        let Some(tls) = tls else {
            return self
                .http(TokioIo::new(tracked), None, activity, handler)
                .await;
        };
        let accepted = tokio::time::timeout(self.handshake, tls.acceptor().accept(tracked)).await;
        match accepted {
            Ok(Ok(stream)) => {
                let session = TlsSession {
                    client: super::tls::client(stream.get_ref().1),
                };
                self.http(
                    TokioIo::new(stream),
                    Some(Arc::new(session)),
                    activity,
                    handler,
                )
                .await;
            }
            Ok(Err(e)) => {
                self.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                self.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
            }
        }
    }

    async fn http<I, H, F>(
        self,
        io: TokioIo<I>,
        tls: Option<Arc<TlsSession>>,
        activity: Activity,
        handler: H,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let peer = self.peer;
        let service = {
            let activity = activity.clone();
            service_fn(move |mut request: Request<Incoming>| {
                let in_flight = activity.begin();
                if let Some(tls) = &tls {
                    request.extensions_mut().insert(tls.clone());
                }
                let answer = handler(request, peer);
                async move {
                    // in flight until the whole response body is sent
                    let response = answer.await.map(|body| {
                        Guarded {
                            body,
                            _in_flight: in_flight,
                        }
                        .boxed()
                    });
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let connection = self.builder.serve_connection_with_upgrades(io, service);
        let connection = self.watcher.watch(connection.into_owned());
        tokio::select! {
            ended = connection => if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            },
            () = activity.idle_for(self.idle) => {
                self.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "idle connection closed");
            }
        }
    }
}

/// An open connection: counted while it lives, holding its permit.
struct Open {
    counters: Arc<Connections>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Open {
    fn new(counters: &Arc<Connections>, permit: tokio::sync::OwnedSemaphorePermit) -> Open {
        counters.open.fetch_add(1, Ordering::Relaxed);
        Open {
            counters: counters.clone(),
            _permit: permit,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Logs accept errors at most once per [`ACCEPT_LOG_PERIOD`], with how many were not.
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn warn(&mut self, e: &io::Error) {
        if self.last.is_some_and(|t| t.elapsed() < ACCEPT_LOG_PERIOD) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %e, suppressed = self.suppressed, "accept failed");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// Milliseconds since the first call, a cheap monotonic clock for activity stamps.
fn clock_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let elapsed = BASE.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// When a connection last moved a byte, and how many of its requests are in flight.
#[derive(Debug, Clone, Default)]
struct Activity(Arc<ActivityState>);

#[derive(Debug, Default)]
struct ActivityState {
    last_ms: AtomicU64,
    in_flight: AtomicU64,
}

/// A request in flight on a connection (the connection is not idle while it lives).
struct InFlight(Activity);

/// A response body that keeps its request in flight until it is sent or dropped, and keeps
/// the body's size (so a body of known length goes out with `Content-Length`, not chunked).
struct Guarded {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = crate::proxy::response::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0 .0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl Activity {
    fn touch(&self) {
        self.0.last_ms.store(clock_ms(), Ordering::Relaxed);
    }

    fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Completes once no request is in flight and nothing moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        self.touch();
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            let quiet = clock_ms().saturating_sub(self.0.last_ms.load(Ordering::Relaxed));
            if quiet >= idle_ms && self.0.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            let wait = idle_ms.saturating_sub(quiet).max(50);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// A socket that stamps its [`Activity`] whenever bytes move.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
