//! `iotgate serve`: load everything, bind, accept, reload, shut down gracefully.
//!
//! ```text
//! config ─▶ Loaded (snapshot + keys; every problem printed, exit 2, nothing bound)
//!        ─▶ Gateway ─▶ bind listen (+ admin_listen) ─▶ accept loops (HTTP/1.1 + h2c, upgrades)
//!        ─▶ Reloader: file watch + SIGHUP (reload = "watch"), SIGHUP only ("signal"), none ("off")
//! SIGTERM / SIGINT ─▶ /readyz 503 for shutdown_delay_seconds (still serving) ─▶ stop
//!   accepting ─▶ in-flight requests finish (at most drain_seconds) ─▶ exit 0
//! ```

pub(crate) mod admin;
pub(crate) mod entities;
pub(crate) mod listener;
pub(crate) mod reload;
pub(crate) mod replica;
pub(crate) mod sync;
pub(crate) mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::authz::snapshot::Loaded;
use crate::config::problem::{Problem, Problems};
use crate::config::Reload;
use crate::proxy::response::Body;
use crate::proxy::Gateway;
use crate::serve::admin::Admin;
use crate::serve::listener::{serve_http, Limits};
use crate::serve::reload::Reloader;

/// Runs `serve` with the config at `config_path` until a shutdown signal.
///
/// # Errors
/// Every load problem, or a listener that cannot bind (told against the config file).
pub(crate) async fn run(config_path: &std::path::Path) -> Result<(), Problems> {
    bind(config_path).await?.serve().await;
    Ok(())
}

/// A gateway loaded and validated, its listeners bound, not serving yet.
pub(crate) struct Bound {
    gateway: Arc<Gateway>,
    config: crate::config::Config,
    tls: Option<Arc<tls::Tls>>,
    admin_token: Option<String>,
    sync: Option<Arc<sync::Sync>>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    /// `[decision_api]`: the API, its listener and its TLS.
    access: Option<(Arc<crate::access::Api>, TcpListener, Option<Arc<tls::Tls>>)>,
}

/// Loads everything `config_path` names and binds its listeners: every problem is found
/// before any port is bound.
///
/// # Errors
/// Every load problem, or a listener that cannot bind (told against the config file).
pub(crate) async fn bind(config_path: &std::path::Path) -> Result<Bound, Problems> {
    let (gateway, config) = load(config_path)?;
    replica::start(&gateway, config_path).await?;
    let in_config = |message: String| Problem::in_file(config_path, message);
    // Gateway::new refuses a config without [server]: this is the section it serves
    let server = gateway.server();
    let tls = tls_of(server)?;
    let admin_token = read_token(config.admin.token_file.as_deref(), "the admin token")?;
    let sync = config
        .directory
        .sync
        .as_ref()
        .map(sync::Sync::new)
        .transpose()
        .map_err(|e| in_config(e.to_string()))?;
    let bind = |addr: SocketAddr| async move {
        let bound = TcpListener::bind(addr).await;
        bound.map_err(|e| in_config(format!("cannot listen on {addr}: {e}")))
    };
    let listener = bind(server.listen).await?;
    let admin_listener = match server.admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let access = match &config.decision_api {
        Some(api) => {
            let token = read_token(api.token_file.as_deref(), "the decision API token")?;
            let admin = read_token(
                api.admin_token_file.as_deref(),
                "the decision API admin token",
            )?;
            let tls = api
                .tls
                .as_ref()
                .map(|c| tls::Tls::load(c).map(Arc::new))
                .transpose()?;
            let listener = bind(api.listen).await?;
            let api = crate::access::Api::new(gateway.clone(), api.clone(), token, admin);
            Some((Arc::new(api), listener, tls))
        }
        None => None,
    };
    Ok(Bound {
        gateway,
        config,
        tls,
        admin_token,
        sync,
        listener,
        admin_listener,
        access,
    })
}

/// A bearer token from its file (trimmed; an empty one is a problem), when configured.
fn read_token(path: Option<&std::path::Path>, what: &str) -> Result<Option<String>, Problems> {
    let Some(path) = path else {
        return Ok(None);
    };
    let token = crate::config::problem::read_text(path)?;
    match token.trim() {
        "" => Err(Problem::in_file(path, format!("{what} is empty")).into()),
        token => Ok(Some(token.to_string())),
    }
}

impl Bound {
    /// Where the client listener and the admin listener (if any) are bound.
    pub(crate) fn addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let admin = self
            .admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok());
        (self.listener.local_addr().ok(), admin)
    }

    /// The config it serves.
    pub(crate) fn config(&self) -> &crate::config::Config {
        &self.config
    }

    /// Serves until a shutdown signal (SIGTERM, Ctrl-C), then drains.
    pub(crate) async fn serve(self) {
        let (_, admin_addr) = self.addrs();
        let Bound {
            gateway,
            config,
            tls,
            admin_token,
            sync,
            listener,
            admin_listener,
            access,
        } = self;
        let server = gateway.server();
        let reloader = Reloader::new(config.clone(), gateway.clone(), tls.clone());
        let mode = config.policy.reload;
        let mut background = match mode {
            Reload::Watch => vec![reloader.spawn_watch(), reloader.spawn_sighup()],
            Reload::Signal => vec![reloader.spawn_sighup()],
            Reload::Off => Vec::new(),
        };
        background.extend(fetch_remote_keys(&gateway).await);
        if let Some(replica) = gateway.replica() {
            background.push(tokio::spawn(replica::follow(
                gateway.clone(),
                replica.clone(),
            )));
            background.push(tokio::spawn(replica::keep_cache(gateway.clone())));
        }
        if let Some(sync) = &sync {
            // the first import before serving; a failure serves the files and the journal
            let _ = sync.once(&gateway, &reloader).await;
            background.push(tokio::spawn(
                sync.clone().run(gateway.clone(), reloader.clone()),
            ));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let admin = admin_listener.zip(admin_addr).map(|(l, addr)| {
            let admin = Arc::new(Admin::new(
                gateway.clone(),
                reloader.clone(),
                mode,
                addr,
                &server.admin_hosts,
                admin_token.clone(),
                sync.clone(),
            ));
            let stopped = stopped(stop_rx.clone());
            let limits = Limits::new(server, Arc::default());
            tokio::spawn(serve_http(
                l,
                move |req, _| admin.clone().handle(req),
                stopped,
                limits,
            ))
        });
        let access_addr = access.as_ref().and_then(|(_, l, _)| l.local_addr().ok());
        let access = access.map(|(api, l, tls)| {
            let stopped = stopped(stop_rx.clone());
            let limits = Limits::new(server, Arc::default()).with_tls(tls);
            tokio::spawn(serve_http(
                l,
                move |req, peer| api.clone().handle(req, peer),
                stopped,
                limits,
            ))
        });
        log_start(&listener, [admin_addr, access_addr], &gateway);
        let limits = Limits::new(gateway.server(), gateway.metrics().connections()).with_tls(tls);
        let (draining, stopping) = (gateway.clone(), gateway.clone());
        serve_http(
            listener,
            gateway_handler(gateway),
            async move {
                shutdown_signal().await;
                // fail readiness first, keep serving while the load balancer notices, then stop
                draining.start_draining();
                let delay = draining.server().shutdown_delay;
                if !delay.is_zero() {
                    tracing::info!(
                        seconds = delay.as_secs(),
                        "shutting down: not ready, still serving"
                    );
                    tokio::time::sleep(delay).await;
                }
                let _ = stop_tx.send(true);
            },
            limits,
        )
        .await;
        for task in background {
            task.abort();
        }
        // a restart while the shared database is down starts from what was served last
        if let Err(e) = stopping.write_cache().await {
            tracing::warn!(error = %e, "shared directory cache not written");
        }
        for task in admin.into_iter().chain(access) {
            let _ = task.await;
        }
        tracing::info!("iotgate stopped");
    }
}

/// The client listener's TLS, when `[server.tls]` is set.
///
/// # Errors
/// The certificate, key or client CA cannot be used.
pub(crate) fn tls_of(
    server: &crate::config::ServerConfig,
) -> Result<Option<Arc<tls::Tls>>, Problems> {
    server
        .tls
        .as_ref()
        .map(|c| tls::Tls::load(c).map(Arc::new))
        .transpose()
}

/// Fetches every JWKS URL once (a failure is logged; its issuer's tokens are refused until
/// a fetch succeeds), then keeps each fresh in the background.
async fn fetch_remote_keys(gateway: &Gateway) -> Vec<JoinHandle<()>> {
    let remotes = gateway.verifier().remotes();
    for remote in &remotes {
        if remote.fetch().await.is_ok() {
            tracing::info!(url = %remote.status().url, keys = remote.status().keys, "JWKS fetched");
        }
    }
    remotes
        .into_iter()
        .map(|remote| tokio::spawn(remote.run()))
        .collect()
}

/// The start line; `others` are the admin and decision API listeners, when bound.
fn log_start(listener: &TcpListener, others: [Option<SocketAddr>; 2], gateway: &Gateway) {
    let snapshot = gateway.snapshot();
    for warning in &snapshot.routes.warnings {
        tracing::warn!(%warning, "route table");
    }
    for warning in &snapshot.warnings {
        tracing::warn!(warning = warning.as_str(), "snapshot");
    }
    if let Some(decide) = &gateway.server().decide {
        crate::proxy::decide::warn_unservable(&snapshot);
        tracing::info!(from = ?decide.from, "decide mode: answering the front proxy's sub-requests");
    }
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let [admin, decision_api] = others.map(|a| a.map(|a| a.to_string()).unwrap_or_default());
    tracing::info!(
        listen = bound.as_str(),
        admin = admin.as_str(),
        decision_api = decision_api.as_str(),
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
pub(crate) fn gateway_handler(
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

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
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
    /// The JWKS URL fetchers (first fetch, then refreshes).
    keys: Vec<JoinHandle<()>>,
    tls: Option<Arc<tls::Tls>>,
}

impl Running {
    /// Serves `gateway` on `listener` in a background task (over TLS with `[server.tls]`).
    ///
    /// # Errors
    /// The listener has no local address, or the TLS files cannot be used.
    pub fn start(listener: TcpListener, gateway: Arc<Gateway>) -> std::io::Result<Running> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let tls = tls_of(gateway.server()).map_err(|p| std::io::Error::other(p.to_string()))?;
        let limits =
            Limits::new(gateway.server(), gateway.metrics().connections()).with_tls(tls.clone());
        let keys = gateway
            .verifier()
            .remotes()
            .into_iter()
            .map(|remote| {
                tokio::spawn(async move {
                    let _ = remote.fetch().await;
                    remote.run().await;
                })
            })
            .collect();
        let task = tokio::spawn(serve_http(
            listener,
            gateway_handler(gateway),
            async {
                let _ = stopped.await;
            },
            limits,
        ));
        Ok(Running {
            addr,
            stop,
            task,
            keys,
            tls,
        })
    }

    /// The listener's TLS (give it to a [`Reloader`] to reload its certificate).
    pub fn tls(&self) -> Option<Arc<tls::Tls>> {
        self.tls.clone()
    }

    /// Stops accepting and waits for in-flight requests.
    pub async fn stop(self) {
        for fetcher in &self.keys {
            fetcher.abort();
        }
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
