//! `iotgate serve`: load everything, bind, accept, reload, shut down gracefully.
//!
//! ```text
//! config ─▶ Loaded (snapshot + keys; every problem printed, exit 2, nothing bound)
//!        ─▶ Gateway ─▶ bind listen (+ admin_listen) ─▶ accept loops (HTTP/1.1 + h2c, upgrades)
//!        ─▶ Reloader: file watch + SIGHUP (reload = "watch"), SIGHUP only ("signal"), none ("off")
//! SIGTERM / SIGINT ─▶ stop accepting ─▶ in-flight requests finish (bounded) ─▶ exit 0
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::check::Loaded;
use crate::cli::{ExitStatus, ServeArgs};
use crate::config::Reload;
use crate::problem::Problems;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::response::Body;

/// How long in-flight requests may run after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs `serve` until a shutdown signal.
pub async fn run(args: &ServeArgs) -> ExitStatus {
    match run_inner(&args.config.config).await {
        Ok(()) => ExitStatus::Ok,
        Err(message) => {
            eprint!("{message}");
            ExitStatus::Error
        }
    }
}

async fn run_inner(config_path: &std::path::Path) -> Result<(), String> {
    let (gateway, config) = load(config_path).map_err(|p| p.to_string())?;
    let server = config
        .server
        .clone()
        .ok_or("`serve` needs a [server] section\n")?;
    let listener = TcpListener::bind(server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}\n", server.listen))?;
    let admin_listener = match server.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}\n"))?,
        ),
        None => None,
    };
    let reloader = Reloader::new(config.clone(), gateway.clone());
    let mode = config.policy.reload;
    let background = match mode {
        Reload::Watch => vec![reloader.spawn_watch(), reloader.spawn_sighup()],
        Reload::Signal => vec![reloader.spawn_sighup()],
        Reload::Off => Vec::new(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let admin = admin_listener.map(|l| {
        let admin = Arc::new(Admin::new(gateway.clone(), reloader.clone(), mode));
        let stopped = stopped(stop_rx.clone());
        tokio::spawn(serve_http(
            l,
            move |req, _| admin.clone().handle(req),
            stopped,
        ))
    });
    log_start(&listener, admin_addr, &gateway);
    serve_http(listener, gateway_handler(gateway), async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    })
    .await;
    for task in background {
        task.abort();
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    tracing::info!("iotgate stopped");
    Ok(())
}

fn log_start(listener: &TcpListener, admin: Option<SocketAddr>, gateway: &Gateway) {
    let snapshot = gateway.snapshot();
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin = admin.map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        listen = bound.as_str(),
        admin = admin.as_str(),
        policy_version = &*snapshot.policy_version,
        directory_version = &*snapshot.directory_version,
        routes = snapshot.routes.routes().len(),
        entities = snapshot.directory.len(),
        "iotgate serving"
    );
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Loads config, snapshot and keys into a gateway.
///
/// # Errors
/// Every problem found.
pub fn load(config: &std::path::Path) -> Result<(Arc<Gateway>, crate::config::Config), Problems> {
    let Loaded {
        config,
        snapshot,
        verifier,
    } = Loaded::load(config)?;
    let gateway = Gateway::new(&config, snapshot, verifier)?;
    Ok((Arc::new(gateway), config))
}

/// The request handler of a gateway.
pub fn gateway_handler(
    gateway: Arc<Gateway>,
) -> impl Fn(
    Request<Incoming>,
    SocketAddr,
) -> std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |request, peer| {
        let gateway = gateway.clone();
        Box::pin(async move { gateway.handle(request, peer).await })
    }
}

/// Accepts connections on `listener` and answers with `handler` until `shutdown` completes,
/// then lets in-flight requests finish (at most [`SHUTDOWN_GRACE`]).
pub async fn serve_http<H, F>(listener: TcpListener, handler: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let service = service_fn(move |request| {
                    let answer = handler(request, peer);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let connection = graceful.watch(connection.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after the grace period");
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// A gateway serving in the background (tests, `demo`).
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    /// Serves `gateway` on `listener` in a background task.
    ///
    /// # Errors
    /// The listener has no local address.
    pub fn start(listener: TcpListener, gateway: Arc<Gateway>) -> std::io::Result<Running> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_http(listener, gateway_handler(gateway), async {
            let _ = stopped.await;
        }));
        Ok(Running { addr, stop, task })
    }

    /// Stops accepting and waits for in-flight requests.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
