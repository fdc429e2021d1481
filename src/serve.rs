//! `iotgate serve`: load everything, bind, accept, shut down gracefully.
//!
//! ```text
//! config ─▶ Loaded (snapshot + keys; every problem printed, exit 2, nothing bound)
//!        ─▶ Gateway ─▶ bind listen ─▶ accept loop (HTTP/1.1 + h2c, upgrades)
//! SIGTERM / SIGINT ─▶ stop accepting ─▶ in-flight requests finish (bounded) ─▶ exit 0
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::check::Loaded;
use crate::cli::{ExitStatus, ServeArgs};
use crate::proxy::Gateway;

/// How long in-flight requests may run after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs `serve` until a shutdown signal.
pub async fn run(args: &ServeArgs) -> ExitStatus {
    let (gateway, listen) = match load(&args.config.config) {
        Ok(g) => g,
        Err(problems) => {
            eprint!("{problems}");
            return ExitStatus::Error;
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            return ExitStatus::Error;
        }
    };
    let snapshot = gateway.snapshot();
    let bound = listener
        .local_addr()
        .map_or_else(|_| listen.to_string(), |a| a.to_string());
    tracing::info!(
        listen = bound.as_str(),
        policy_version = &*snapshot.policy_version,
        directory_version = &*snapshot.directory_version,
        routes = snapshot.routes.routes().len(),
        entities = snapshot.directory.len(),
        "iotgate serving"
    );
    serve(listener, gateway, shutdown_signal()).await;
    tracing::info!("iotgate stopped");
    ExitStatus::Ok
}

/// Loads config, snapshot and keys into a gateway, with its listen address.
///
/// # Errors
/// Every problem found.
pub fn load(
    config: &std::path::Path,
) -> Result<(Arc<Gateway>, SocketAddr), crate::problem::Problems> {
    let Loaded {
        config,
        snapshot,
        verifier,
    } = Loaded::load(config)?;
    let gateway = Gateway::new(&config, snapshot, verifier)?;
    let listen = config
        .server
        .as_ref()
        .map(|s| s.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    Ok((Arc::new(gateway), listen))
}

/// Accepts connections on `listener` until `shutdown` completes, then lets in-flight
/// requests finish (at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
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
                let gateway = gateway.clone();
                let service = service_fn(move |request| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(gateway.handle(request, peer).await) }
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
    pub fn start(listener: TcpListener, gateway: Arc<Gateway>) -> std::io::Result<Running> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, gateway, async {
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
