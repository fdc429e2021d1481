//! The gateway configuration (README, "Configuration"): strict TOML in, validated
//! [`Config`] out.
//!
//! ```text
//! iotgate.toml ──tomlfile::load──▶ FileConfig (serde, unknown keys reported)
//!              ──Config::from_file──▶ Config (typed addresses, paths resolved against the
//!                                      config file's folder, every problem collected)
//! ```
//!
//! Key material, routes, schema, policies and the directory are only *named* here; their
//! loaders (`auth`, `routes`, `policy`, `directory`) read and check them.

pub(crate) mod diagnostic;
pub(crate) mod files;
pub(crate) mod problem;
pub(crate) mod tomlfile;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use self::tomlfile::TomlFile;
use crate::config::problem::{Problem, Problems};

const DEFAULT_MAX_BODY_BYTES: usize = 65_536;
const DEFAULT_UPSTREAM_TIMEOUT_SECONDS: u64 = 30;
const DEFAULT_LEEWAY_SECONDS: u64 = 30;
const DEFAULT_PRINCIPAL_CLAIM: &str = "sub";
const DEFAULT_CACHE_ENTRIES: u64 = 100_000;
const DEFAULT_CACHE_TTL_SECONDS: u64 = 30;
const DEFAULT_CACHE_MAX_BYTES: u64 = 64 << 20;
const DEFAULT_CACHE_MAX_ENTRY_BYTES: u64 = 16 << 10;
const DEFAULT_HEADER_READ_TIMEOUT_SECONDS: u64 = 10;
const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 60;
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_MAX_HEADER_BYTES: usize = 32 << 10;
/// Longest header-read and idle timeouts (a day): far larger ones overflow timers.
const MAX_TIMEOUT_SECONDS: u64 = 86_400;
/// Most connections one listener may hold open.
const MAX_CONNECTIONS: u64 = 1_000_000;
/// hyper's smallest HTTP/1 read buffer.
const MIN_HEADER_BYTES: usize = 8192;
/// Requests per second and client on public routes, unless configured.
const DEFAULT_PUBLIC_RATE: u64 = 10;
/// Most public requests per second (and burst) a limit may allow.
const MAX_RATE: u64 = 1_000_000;

// === file structs (as written) ===

#[derive(Debug, Deserialize)]
struct FileConfig {
    server: Option<FileServer>,
    auth: FileAuth,
    policy: FilePolicy,
    #[serde(default)]
    cache: FileCache,
    license: Option<FileLicense>,
    directory: Option<FileDirectory>,
    admin: Option<FileAdmin>,
    log: Option<FileLog>,
    decision_api: Option<FileDecisionApi>,
}

#[derive(Debug, Deserialize)]
struct FileDecisionApi {
    listen: String,
    token_file: Option<String>,
    admin_token_file: Option<String>,
    #[serde(default = "default_max_batch")]
    max_batch: u64,
    #[serde(default = "default_api_body")]
    max_body_bytes: u64,
    base_url: Option<String>,
    tls: Option<FileTls>,
}

fn default_max_batch() -> u64 {
    DEFAULT_MAX_BATCH
}

fn default_api_body() -> u64 {
    DEFAULT_API_BODY
}

/// Evaluations one batch may ask for by default.
const DEFAULT_MAX_BATCH: u64 = 100;
/// Largest decision API request body by default (1 MiB).
const DEFAULT_API_BODY: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
struct FileLog {
    decision_inputs: Option<String>,
    #[serde(default = "default_inputs_max_bytes")]
    decision_inputs_max_bytes: u64,
}

/// Size at which the decision-input record is rotated by default (100 MiB).
const DEFAULT_INPUTS_MAX_BYTES: u64 = 100 << 20;
/// The smallest rotation size accepted.
const MIN_INPUTS_MAX_BYTES: u64 = 64 << 10;

fn default_inputs_max_bytes() -> u64 {
    DEFAULT_INPUTS_MAX_BYTES
}

#[derive(Debug, Deserialize)]
struct FileDirectory {
    journal: Option<String>,
    #[serde(default)]
    store: StoreKind,
    url: Option<String>,
    url_file: Option<String>,
    state_dir: Option<String>,
    #[serde(default = "default_compact_after")]
    compact_after: usize,
    sync: Option<FileSync>,
}

#[derive(Debug, Deserialize)]
struct FileSync {
    from: String,
    url: String,
    token_file: String,
    #[serde(default = "default_sync_interval")]
    interval_seconds: u64,
    root: Option<String>,
    original: Option<String>,
    policies: Option<String>,
}

fn default_sync_interval() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
struct FileAdmin {
    token_file: Option<String>,
}

fn default_compact_after() -> usize {
    1000
}

#[derive(Debug, Deserialize)]
struct FileServer {
    listen: String,
    upstream: Option<String>,
    #[serde(default)]
    mode: Mode,
    decide: Option<FileDecide>,
    admin_listen: Option<String>,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default = "default_upstream_timeout")]
    upstream_timeout_seconds: u64,
    upstream_ca_file: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    forward_cookies: bool,
    #[serde(default = "default_header_read_timeout")]
    header_read_timeout_seconds: u64,
    #[serde(default = "default_idle_timeout")]
    idle_timeout_seconds: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_max_header_bytes")]
    max_header_bytes: usize,
    #[serde(default)]
    admin_hosts: Vec<String>,
    #[serde(default = "default_public_rate")]
    public_rate_per_second: u64,
    public_burst: Option<u64>,
    #[serde(default)]
    expose_messages: bool,
    #[serde(default)]
    shutdown_delay_seconds: u64,
    #[serde(default = "default_drain")]
    drain_seconds: u64,
    cors: Option<FileCors>,
    tls: Option<FileTls>,
}

/// How long in-flight requests may run after a shutdown by default.
const DEFAULT_DRAIN_SECONDS: u64 = 10;

fn default_drain() -> u64 {
    DEFAULT_DRAIN_SECONDS
}

#[derive(Debug, Deserialize)]
struct FileDecide {
    from: Option<FrontProxy>,
    #[serde(default)]
    path_prefix: String,
    #[serde(default)]
    body_routes: BodyRoutes,
}

#[derive(Debug, Deserialize)]
struct FileTls {
    cert_file: String,
    key_file: String,
    client_ca_file: Option<String>,
    #[serde(default)]
    client_cert: ClientCert,
}

#[derive(Debug, Deserialize)]
struct FileCors {
    allowed_origins: Vec<String>,
    #[serde(default = "default_cors_headers")]
    allowed_headers: Vec<String>,
    #[serde(default = "default_cors_max_age")]
    max_age_seconds: u64,
}

fn default_public_rate() -> u64 {
    DEFAULT_PUBLIC_RATE
}

fn default_cors_headers() -> Vec<String> {
    vec!["authorization".into(), "content-type".into()]
}

fn default_cors_max_age() -> u64 {
    600
}

#[derive(Debug, Deserialize)]
struct FileAuth {
    // the keys of the one issuer, when there is no [[auth.issuer]] (see `FileKeys`); not
    // `#[serde(flatten)]`, which would hide unknown keys from the line-numbered report
    #[serde(default)]
    algorithms: Vec<String>,
    hs256_secret_file: Option<String>,
    public_key_pem: Option<String>,
    jwks_file: Option<String>,
    jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh_seconds: u64,
    audience: Option<String>,
    /// `issuer = "https://idp"` (one issuer), or `[[auth.issuer]]` tables (several).
    issuer: Option<FileIssuers>,
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    #[serde(default = "default_principal_claim")]
    principal_claim: String,
    query_parameter: Option<String>,
    #[serde(default = "default_true")]
    require_exp: bool,
}

/// What verifies one issuer's tokens.
#[derive(Debug, Default)]
struct FileKeys {
    algorithms: Vec<String>,
    hs256_secret_file: Option<String>,
    public_key_pem: Option<String>,
    jwks_file: Option<String>,
    jwks_url: Option<String>,
    jwks_refresh_seconds: u64,
    audience: Option<String>,
}

#[derive(Debug)]
enum FileIssuers {
    One(String),
    Many(Vec<FileIssuer>),
}

/// A string or an array of tables, read without buffering (`#[serde(untagged)]` would
/// hide unknown keys of the tables from the line-numbered report).
impl<'de> Deserialize<'de> for FileIssuers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = FileIssuers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an issuer name, or [[auth.issuer]] tables")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileIssuers, E> {
                Ok(FileIssuers::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<FileIssuers, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element()? {
                    all.push(one);
                }
                Ok(FileIssuers::Many(all))
            }
        }
        d.deserialize_any(Either)
    }
}

#[derive(Debug, Deserialize)]
struct FileIssuer {
    /// The `iss` its tokens carry; none: tokens without `iss` (or an unlisted one).
    issuer: Option<String>,
    #[serde(default)]
    algorithms: Vec<String>,
    hs256_secret_file: Option<String>,
    public_key_pem: Option<String>,
    jwks_file: Option<String>,
    jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh_seconds: u64,
    audience: Option<String>,
    principal_claim: Option<String>,
}

/// The key settings of a `FileAuth` or `FileIssuer` (the same names in both tables).
macro_rules! file_keys {
    ($t:expr) => {
        FileKeys {
            algorithms: $t.algorithms,
            hs256_secret_file: $t.hs256_secret_file,
            public_key_pem: $t.public_key_pem,
            jwks_file: $t.jwks_file,
            jwks_url: $t.jwks_url,
            jwks_refresh_seconds: $t.jwks_refresh_seconds,
            audience: $t.audience,
        }
    };
}

impl FileKeys {
    /// Whether any key setting is given.
    fn has_any(&self) -> bool {
        !self.algorithms.is_empty()
            || self.hs256_secret_file.is_some()
            || self.public_key_pem.is_some()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
            || self.audience.is_some()
    }
}

fn default_jwks_refresh() -> u64 {
    300
}

#[derive(Debug, Deserialize)]
struct FilePolicy {
    schema: String,
    routes: String,
    policies: Vec<String>,
    #[serde(default)]
    directory: Vec<String>,
    #[serde(default)]
    reload: Reload,
    #[serde(default)]
    shadow: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct FileCache {
    #[serde(default = "default_cache_entries")]
    max_entries: u64,
    #[serde(default = "default_cache_ttl")]
    ttl_seconds: u64,
    #[serde(default = "default_cache_max_bytes")]
    max_bytes: u64,
    #[serde(default = "default_cache_max_entry_bytes")]
    max_entry_bytes: u64,
}

impl Default for FileCache {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_CACHE_ENTRIES,
            ttl_seconds: DEFAULT_CACHE_TTL_SECONDS,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            max_entry_bytes: DEFAULT_CACHE_MAX_ENTRY_BYTES,
        }
    }
}

#[derive(Debug, Deserialize)]
struct FileLicense {
    max_accounts: u64,
    #[serde(default = "default_licensed_roles")]
    licensed_roles: Vec<String>,
}

fn default_licensed_roles() -> Vec<String> {
    vec!["admin".to_string(), "developer".to_string()]
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_upstream_timeout() -> u64 {
    DEFAULT_UPSTREAM_TIMEOUT_SECONDS
}
fn default_header_read_timeout() -> u64 {
    DEFAULT_HEADER_READ_TIMEOUT_SECONDS
}
fn default_idle_timeout() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECONDS
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_max_header_bytes() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
fn default_cache_max_bytes() -> u64 {
    DEFAULT_CACHE_MAX_BYTES
}
fn default_cache_max_entry_bytes() -> u64 {
    DEFAULT_CACHE_MAX_ENTRY_BYTES
}
fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECONDS
}
fn default_principal_claim() -> String {
    DEFAULT_PRINCIPAL_CLAIM.to_string()
}
fn default_true() -> bool {
    true
}
fn default_cache_entries() -> u64 {
    DEFAULT_CACHE_ENTRIES
}
fn default_cache_ttl() -> u64 {
    DEFAULT_CACHE_TTL_SECONDS
}

// === validated config ===

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, for locating problems found by later loaders.
    pub source: TomlFile,
    /// `[server]`; only `serve` needs it.
    pub server: Option<ServerConfig>,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[policy]`.
    pub policy: PolicyConfig,
    /// `[cache]`.
    pub cache: CacheConfig,
    /// `[license]`.
    pub license: Option<LicenseConfig>,
    /// `[directory]`: runtime changes.
    pub directory: DirectoryConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[decision_api]`: the AuthZEN listener, when configured.
    pub decision_api: Option<DecisionApiConfig>,
}

/// `[decision_api]`: the AuthZEN Authorization API for the platform's own applications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionApiConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The bearer token callers send (`Authorization: Bearer …`); optional only when a
    /// client certificate is required instead.
    pub token_file: Option<PathBuf>,
    /// A second token whose callers are also told the determining policies
    /// (`context.reason_admin`).
    pub admin_token_file: Option<PathBuf>,
    /// Evaluations one batch may ask for (400 beyond).
    pub max_batch: usize,
    /// Largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// `policy_decision_point` of the metadata (default: the scheme and `Host` asked).
    pub base_url: Option<String>,
    /// TLS (and caller mTLS) on the listener.
    pub tls: Option<TlsConfig>,
}

/// `[log]`: what `serve` records besides its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Where each decision's inputs are recorded (JSON lines) for `check --replay`.
    pub decision_inputs: Option<PathBuf>,
    /// The record is rotated (to `<file>.1`) past this size.
    pub decision_inputs_max_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            decision_inputs: None,
            decision_inputs_max_bytes: DEFAULT_INPUTS_MAX_BYTES,
        }
    }
}

/// `[directory] store`: where runtime changes are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    /// The replica's own `journal` file (one node).
    #[default]
    File,
    /// A PostgreSQL database every replica shares and follows.
    Postgres,
}

/// `[directory] store = "postgres"`: how to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresUrl {
    /// `url`, written in the config.
    Inline(String),
    /// `url_file`: a file holding it (read at start: it may carry a password).
    File(PathBuf),
}

/// `[directory]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// `store = "postgres"`: the shared database (none: the file journal).
    pub postgres: Option<PostgresUrl>,
    /// `store = "postgres"`: the replica's own folder, for the cache of the shared directory
    /// it can start from while the database is down and the outbox of write-through
    /// effects waiting for the database.
    pub state_dir: Option<PathBuf>,
    /// Where runtime changes are journaled (none: they are refused).
    pub journal: Option<PathBuf>,
    /// Entries after which the journal is compacted (at start and on write).
    pub compact_after: usize,
    /// `[directory.sync]`: the platform imported live.
    pub sync: Option<SyncConfig>,
}

/// `[directory.sync]`: which platform, where, how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// The platform and what its import needs.
    pub from: SyncFrom,
    /// Its base URL.
    pub url: String,
    /// A file holding an administrator's API token.
    pub token_file: PathBuf,
    /// Time between two imports.
    pub interval: Duration,
    /// The policy folder the generated project files are written to (under `projects/`);
    /// one of `[policy] policies`.
    pub policies: Option<PathBuf>,
}

/// The platforms `[directory.sync]` follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncFrom {
    /// A Thinger server; `original` is the subscription's account.
    Thinger {
        /// The subscription's own account.
        original: Option<String>,
    },
    /// An IoT Central-style server, from the organization `root` down.
    Central {
        /// The top organization.
        root: String,
    },
}

/// `[admin]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// A file holding the bearer token the admin listener's write endpoints require.
    pub token_file: Option<PathBuf>,
}

/// `[server]`: where to listen and where to forward.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Client-facing listener.
    pub listen: SocketAddr,
    /// The existing IoT server (`http://` or `https://`, no path); optional in decide mode,
    /// where `/readyz` probes it only when given.
    pub upstream: Option<http::Uri>,
    /// `[server] mode = "decide"`: answer a front proxy's authorization sub-requests
    /// instead of forwarding (`None`: the reverse proxy).
    pub decide: Option<DecideConfig>,
    /// Optional admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Largest body read for context extraction (413 beyond).
    pub max_body_bytes: usize,
    /// How long to wait for the upstream's response head.
    pub upstream_timeout: Duration,
    /// Extra CA certificate (PEM) trusted for an `https://` upstream.
    pub upstream_ca_file: Option<PathBuf>,
    /// Peers whose `Forwarded` / `X-Forwarded-For/Proto/Host` are kept (else replaced).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Whether client `Cookie` headers reach the upstream (off: the bearer token that was
    /// verified is the only credential forwarded).
    pub forward_cookies: bool,
    /// Longest wait for a request's headers (and between keep-alive requests on HTTP/1).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Open client connections at most; beyond it, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head (request line and headers); beyond it, 431.
    pub max_header_bytes: usize,
    /// After SIGTERM, how long `/readyz` fails while everything is still served (so a load
    /// balancer stops sending new requests first).
    pub shutdown_delay: Duration,
    /// Then, how long in-flight requests may run once the listener closed.
    pub drain: Duration,
    /// `Host` values the admin listener answers besides its own address and `localhost`.
    pub admin_hosts: Vec<String>,
    /// Requests per second and client address on public routes (`None`: unlimited).
    pub public_rate: Option<Rate>,
    /// Whether refusals by a policy carry its `@reason` as `message`.
    pub expose_messages: bool,
    /// `[server.cors]`, when browsers of other origins may call.
    pub cors: Option<CorsConfig>,
    /// `[server.tls]`: the client listener speaks TLS.
    pub tls: Option<TlsConfig>,
}

/// `[server] mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Decide and forward (the reverse proxy).
    #[default]
    Proxy,
    /// Decide only: a front proxy asks, then forwards itself.
    Decide,
}

/// `[server.decide]`: how the front proxy tells the original request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecideConfig {
    /// Which front proxy's sub-request convention.
    pub from: FrontProxy,
    /// Envoy `path_prefix`: the sub-request's path is this prefix, then the original path.
    pub path_prefix: String,
    /// What happens to routes that read body fields.
    pub body_routes: BodyRoutes,
}

/// `[server.decide] from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrontProxy {
    /// nginx `auth_request`: `X-Original-Method` and `X-Original-URI`; only 2xx, 401 and
    /// 403 may answer (nginx turns anything else into a 500).
    Nginx,
    /// Traefik `forwardAuth`, Caddy `forward_auth`: `X-Forwarded-Method`,
    /// `X-Forwarded-Uri`, `X-Forwarded-Host`; the answer reaches the client as it is.
    Forwarded,
    /// Envoy `ext_authz` (HTTP service): the original method, `path_prefix` + the original
    /// path; the answer reaches the client as it is.
    Envoy,
}

/// `[server.decide] body_routes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyRoutes {
    /// Routes that read body fields are refused (403 `body_not_forwarded`): the front
    /// proxy sends no body.
    #[default]
    Refuse,
    /// Decided on the sub-request's body (Envoy `with_request_body`); only with `envoy`.
    Decide,
}

/// `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to (device mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required or only verified when sent.
    pub client_cert: ClientCert,
}

/// `[server.tls] client_cert`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCert {
    /// Verified when a client sends one; routes that read `{tls.subject}` need one.
    #[default]
    Optional,
    /// Every connection must present one (handshake fails otherwise).
    Required,
}

/// A token bucket's refill rate and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens held (the burst a quiet client may send at once).
    pub burst: f64,
}

/// `[server.cors]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Origins (`scheme://host[:port]`) whose browsers may read answers; `*` for any.
    pub allowed_origins: Vec<String>,
    /// Request headers a preflight may ask for (lowercase).
    pub allowed_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age_seconds: u64,
}

impl ServerConfig {
    /// The `[server]` a config without one decides with offline (`check`): the defaults,
    /// nothing to listen on, no upstream to reach.
    pub fn offline() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream: None,
            decide: None,
            admin_listen: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            upstream_timeout: Duration::from_secs(DEFAULT_UPSTREAM_TIMEOUT_SECONDS),
            upstream_ca_file: None,
            trusted_proxies: Vec::new(),
            forward_cookies: false,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECONDS),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECONDS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            admin_hosts: Vec::new(),
            public_rate: None,
            expose_messages: false,
            shutdown_delay: Duration::ZERO,
            drain: Duration::from_secs(DEFAULT_DRAIN_SECONDS),
            cors: None,
            tls: None,
        }
    }
}

/// Where verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A shared secret file (HS256/384/512); surrounding whitespace is trimmed.
    Secret(PathBuf),
    /// A PEM public key, inline (starts with `-----BEGIN`) or a path.
    PublicPem(PemSource),
    /// A JWKS file.
    Jwks(PathBuf),
    /// A JWKS served over HTTPS (or HTTP on loopback), fetched at start, every `refresh`,
    /// and (rate-limited) when a token names an unknown `kid`.
    JwksUrl {
        /// Where.
        url: http::Uri,
        /// How often.
        refresh: Duration,
    },
}

/// A PEM given inline or by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemSource {
    /// The PEM text itself.
    Inline(String),
    /// A file holding it.
    File(PathBuf),
}

/// `[auth]`: how tokens are verified and who they name.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Who issues tokens, each with its keys (at least one; at most one without `issuer`).
    pub issuers: Vec<IssuerConfig>,
    /// Clock skew allowed on `exp` / `nbf`.
    pub leeway_seconds: u64,
    /// Claim holding the principal id.
    pub principal_claim: String,
    /// Query parameter that may carry the token.
    pub query_parameter: Option<String>,
    /// Whether tokens without `exp` are rejected.
    pub require_exp: bool,
}

/// One issuer of tokens: the top-level `[auth]` keys, or one `[[auth.issuer]]`.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The `iss` its tokens must carry; `None`: tokens with no `iss`, or one no other
    /// issuer claims.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Accepted algorithms (never `none`).
    pub algorithms: Vec<Algorithm>,
    /// Verification keys.
    pub key: KeySource,
    /// Claim holding the principal id.
    pub principal_claim: String,
}

impl AuthConfig {
    /// The first issuer (the top-level `[auth]` one when there is no `[[auth.issuer]]`).
    pub fn primary(&self) -> &IssuerConfig {
        // INVARIANT: `Ctx::auth` refuses an `[auth]` without issuers.
        &self.issuers[0]
    }
}

/// `[policy]`: what the decision snapshot is built from.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// `.cedarschema` file.
    pub schema: PathBuf,
    /// Route table (TOML).
    pub routes: PathBuf,
    /// Policy directories, read recursively for `*.cedar`.
    pub policies: Vec<PathBuf>,
    /// Entity JSON files or directories of `*.json`.
    pub directory: Vec<PathBuf>,
    /// How changes are picked up.
    pub reload: Reload,
    /// Candidate policy directories decided beside the live ones (never enforced).
    pub shadow: Vec<PathBuf>,
}

/// `[policy] reload`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reload {
    /// Watch the files and reload on change.
    #[default]
    Watch,
    /// Reload on SIGHUP (and `POST /reload`) only.
    Signal,
    /// Never reload.
    Off,
}

/// `[cache]`.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Bound on cached decisions (0 disables the cache).
    pub max_entries: u64,
    /// Lifetime of a cached decision.
    pub ttl: Duration,
    /// Bound on the decision cache's estimated size in bytes.
    pub max_bytes: u64,
    /// Decisions estimated larger than this are never cached.
    pub max_entry_bytes: u64,
}

/// `[license]`.
#[derive(Debug, Clone)]
pub struct LicenseConfig {
    /// Licensed accounts (admins and developers) the instance may have.
    pub max_accounts: u64,
    /// Roles whose accounts count against the license, enabled or not.
    pub licensed_roles: Vec<String>,
}

impl Config {
    /// Loads and validates a config file, reporting every problem found.
    ///
    /// # Errors
    /// All problems with the file, each with its line.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        Self::from_file(tomlfile::load(path)?)
    }

    /// Loads config text held in memory (`path` locates relative paths and messages).
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Config, Problems> {
        Self::from_file(tomlfile::parse(path, text)?)
    }

    /// Loads the config file and returns whatever of it is usable beside every problem, so
    /// `validate` goes on to the files it names (an unknown key does not hide a missing
    /// folder). `None` only when the file cannot be read or parsed, or `[auth]` is unusable.
    pub fn load_all(path: &Path) -> (Option<Config>, Problems) {
        match tomlfile::load(path) {
            Ok(parsed) => Self::from_file_all(parsed),
            Err(problems) => (None, problems),
        }
    }

    fn from_file(parsed: tomlfile::Parsed<FileConfig>) -> Result<Config, Problems> {
        match Self::from_file_all(parsed) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(problems),
        }
    }

    fn from_file_all(parsed: tomlfile::Parsed<FileConfig>) -> (Option<Config>, Problems) {
        let tomlfile::Parsed {
            value: file,
            file: source,
            unknown,
        } = parsed;
        let base = source
            .path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut problems = unknown;
        let ctx = Ctx {
            source: &source,
            base: &base,
        };
        let server = file
            .server
            .and_then(|s| problems.take(ctx.server(s).map_err(Problems::from)));
        let auth = problems.take(ctx.auth(file.auth));
        let policy = ctx.policy(file.policy);
        let cache = CacheConfig {
            max_entries: file.cache.max_entries,
            ttl: Duration::from_secs(file.cache.ttl_seconds),
            max_bytes: file.cache.max_bytes,
            max_entry_bytes: file.cache.max_entry_bytes,
        };
        let directory = file.directory.map_or_else(DirectoryConfig::default, |d| {
            let postgres = problems.take(ctx.postgres(&d).map_err(Problems::from));
            let sync = d.sync.and_then(|s| match ctx.sync(s, &policy) {
                Ok(sync) => Some(sync),
                Err(found) => {
                    problems.extend(found);
                    None
                }
            });
            DirectoryConfig {
                postgres: postgres.flatten(),
                state_dir: d.state_dir.as_deref().map(|p| ctx.path(p)),
                journal: d.journal.as_deref().map(|p| ctx.path(p)),
                compact_after: d.compact_after.max(1),
                sync,
            }
        });
        let admin = AdminConfig {
            token_file: file.admin.and_then(|a| a.token_file).map(|p| ctx.path(&p)),
        };
        let log = file.log.map_or_else(LogConfig::default, |l| {
            if l.decision_inputs_max_bytes < MIN_INPUTS_MAX_BYTES {
                problems.push(source.problem(
                    "log.decision_inputs_max_bytes",
                    format!("must be at least {MIN_INPUTS_MAX_BYTES}"),
                ));
            }
            LogConfig {
                decision_inputs: l.decision_inputs.as_deref().map(|p| ctx.path(p)),
                decision_inputs_max_bytes: l.decision_inputs_max_bytes,
            }
        });
        let decision_api = file
            .decision_api
            .and_then(|d| problems.take(ctx.decision_api(d)));
        let license = file.license.map(|l| LicenseConfig {
            max_accounts: l.max_accounts,
            licensed_roles: l.licensed_roles,
        });
        let config = auth.map(|auth| Config {
            source,
            server,
            auth,
            policy,
            cache,
            license,
            directory,
            admin,
            log,
            decision_api,
        });
        (config, problems)
    }

    /// A problem located at a key of the config file.
    pub fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        self.source.problem(key, message)
    }
}

/// What the section validators share.
struct Ctx<'a> {
    source: &'a TomlFile,
    base: &'a Path,
}

impl Ctx<'_> {
    fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    fn tls(&self, key: &str, t: FileTls) -> Result<TlsConfig, Problem> {
        if t.client_cert == ClientCert::Required && t.client_ca_file.is_none() {
            return Err(self.source.problem(
                &format!("{key}.client_cert"),
                "`client_cert = \"required\"` needs `client_ca_file`",
            ));
        }
        Ok(TlsConfig {
            cert_file: self.path(&t.cert_file),
            key_file: self.path(&t.key_file),
            client_ca_file: t.client_ca_file.as_deref().map(|p| self.path(p)),
            client_cert: t.client_cert,
        })
    }

    /// `[directory] store`, `url`, `url_file`: the shared database, when there is one.
    fn postgres(&self, d: &FileDirectory) -> Result<Option<PostgresUrl>, Problem> {
        let problem = |key: &str, m: &str| self.source.problem(&format!("directory.{key}"), m);
        if d.store == StoreKind::File {
            return match (&d.url, &d.url_file, &d.state_dir) {
                (None, None, None) => Ok(None),
                (None, None, Some(_)) => Err(problem(
                    "state_dir",
                    "`state_dir` needs `store = \"postgres\"` (the file store keeps `journal`)",
                )),
                _ => Err(problem(
                    "url",
                    "`url` and `url_file` need `store = \"postgres\"`",
                )),
            };
        }
        if d.state_dir.is_none() {
            return Err(problem(
                "state_dir",
                "`store = \"postgres\"` needs `state_dir`: a folder of this replica's own, for \
                 the directory cache it starts from while the database is down and the outbox \
                 of effects waiting for it",
            ));
        }
        if d.journal.is_some() {
            return Err(problem(
                "journal",
                "with `store = \"postgres\"` the database keeps the changes: remove `journal`",
            ));
        }
        match (&d.url, &d.url_file) {
            (Some(url), None) => {
                if let Err(e) = url.parse::<tokio_postgres::Config>() {
                    return Err(problem("url", &format!("not a PostgreSQL URL: {e}")));
                }
                Ok(Some(PostgresUrl::Inline(url.clone())))
            }
            (None, Some(file)) => Ok(Some(PostgresUrl::File(self.path(file)))),
            (Some(_), Some(_)) => Err(problem("url", "set `url` or `url_file`, not both")),
            (None, None) => Err(problem(
                "url",
                "`store = \"postgres\"` needs `url` (or `url_file`): postgres://user@host/db",
            )),
        }
    }

    /// `[decision_api]`: every problem of it, at once.
    fn decision_api(&self, d: FileDecisionApi) -> Result<DecisionApiConfig, Problems> {
        let mut problems = Problems::new();
        let listen = d.listen.parse::<SocketAddr>().map_err(|_| {
            self.source.problem(
                "decision_api.listen",
                format!("`{}` is not a socket address (ip:port)", d.listen),
            )
        });
        let listen = problems.take(listen.map_err(Problems::from));
        let tls = d
            .tls
            .and_then(|t| problems.take(self.tls("decision_api.tls", t).map_err(Problems::from)));
        let mtls = tls
            .as_ref()
            .is_some_and(|t| t.client_cert == ClientCert::Required);
        if d.token_file.is_none() && !mtls {
            problems.push(self.source.problem(
                "decision_api.token_file",
                "required: callers authenticate with this bearer token (or with a client \
                 certificate: [decision_api.tls] client_cert = \"required\")",
            ));
        }
        for (key, value, most) in [
            ("decision_api.max_batch", d.max_batch, 10_000),
            ("decision_api.max_body_bytes", d.max_body_bytes, 64 << 20),
        ] {
            if !(1..=most).contains(&value) {
                problems.push(
                    self.source
                        .problem(key, format!("must be between 1 and {most}, not {value}")),
                );
            }
        }
        if let Some(url) = &d.base_url {
            let fits = url
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme().is_some() && u.query().is_none() && !url.contains('#'));
            if !fits {
                problems.push(self.source.problem(
                    "decision_api.base_url",
                    format!("`{url}` is not an absolute URL without query or fragment"),
                ));
            }
        }
        let config = listen.map(|listen| DecisionApiConfig {
            listen,
            token_file: d.token_file.as_deref().map(|p| self.path(p)),
            admin_token_file: d.admin_token_file.as_deref().map(|p| self.path(p)),
            max_batch: usize::try_from(d.max_batch).unwrap_or(usize::MAX),
            max_body_bytes: usize::try_from(d.max_body_bytes).unwrap_or(usize::MAX),
            base_url: d.base_url.map(|u| u.trim_end_matches('/').to_string()),
            tls,
        });
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(problems),
        }
    }

    fn server(&self, s: FileServer) -> Result<ServerConfig, Problem> {
        let addr = |key: &str, value: &str| {
            value.parse::<SocketAddr>().map_err(|_| {
                self.source
                    .problem(key, format!("`{value}` is not a socket address (ip:port)"))
            })
        };
        let bounded = |key: &str, value: u64, most: u64| {
            (1..=most).contains(&value).then_some(value).ok_or_else(|| {
                self.source
                    .problem(key, format!("must be between 1 and {most}, not {value}"))
            })
        };
        let header_read = bounded(
            "server.header_read_timeout_seconds",
            s.header_read_timeout_seconds,
            MAX_TIMEOUT_SECONDS,
        )?;
        let idle = bounded(
            "server.idle_timeout_seconds",
            s.idle_timeout_seconds,
            MAX_TIMEOUT_SECONDS,
        )?;
        let max_connections = bounded(
            "server.max_connections",
            s.max_connections as u64,
            MAX_CONNECTIONS,
        )? as usize;
        let drain = bounded("server.drain_seconds", s.drain_seconds, MAX_TIMEOUT_SECONDS)?;
        let shutdown_delay = match s.shutdown_delay_seconds {
            0 => 0,
            delay => bounded("server.shutdown_delay_seconds", delay, MAX_TIMEOUT_SECONDS)?,
        };
        let listen = addr("server.listen", &s.listen)?;
        let admin_listen = match &s.admin_listen {
            Some(a) => Some(addr("server.admin_listen", a)?),
            None => None,
        };
        let upstream = match (&s.upstream, s.mode) {
            (Some(u), _) => {
                Some(parse_upstream(u).map_err(|m| self.source.problem("server.upstream", m))?)
            }
            (None, Mode::Decide) => None,
            (None, Mode::Proxy) => {
                return Err(self.source.problem(
                    "server",
                    "missing field `upstream` (the server to forward to)",
                ))
            }
        };
        let decide = self.decide(&s)?;
        let public_rate = match s.public_rate_per_second {
            0 => None,
            rate => {
                let rate = bounded("server.public_rate_per_second", rate, MAX_RATE)?;
                let burst = s.public_burst.unwrap_or(rate.saturating_mul(2));
                let burst = bounded("server.public_burst", burst, MAX_RATE)?;
                Some(Rate {
                    per_second: rate as f64,
                    burst: burst as f64,
                })
            }
        };
        let cors = s.cors.map(|c| self.cors(c)).transpose()?;
        let tls = s.tls.map(|t| self.tls("server.tls", t)).transpose()?;
        Ok(ServerConfig {
            listen,
            upstream,
            decide,
            admin_listen,
            max_body_bytes: s.max_body_bytes,
            upstream_timeout: Duration::from_secs(s.upstream_timeout_seconds.max(1)),
            upstream_ca_file: s.upstream_ca_file.as_deref().map(|p| self.path(p)),
            trusted_proxies: s
                .trusted_proxies
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    parse_net(p).ok_or_else(|| {
                        self.source.problem(
                            &format!("server.trusted_proxies.{i}"),
                            format!("`{p}` is not an IP address or network (10.0.0.0/8)"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            forward_cookies: s.forward_cookies,
            header_read_timeout: Duration::from_secs(header_read),
            idle_timeout: Duration::from_secs(idle),
            max_connections,
            max_header_bytes: s.max_header_bytes.max(MIN_HEADER_BYTES),
            admin_hosts: s.admin_hosts,
            public_rate,
            expose_messages: s.expose_messages,
            shutdown_delay: Duration::from_secs(shutdown_delay),
            drain: Duration::from_secs(drain),
            cors,
            tls,
        })
    }

    /// `mode` and `[server.decide]`, which go together; decide mode refuses what only a
    /// forwarding gateway can do (answer CORS) and needs the proxies it trusts named.
    fn decide(&self, s: &FileServer) -> Result<Option<DecideConfig>, Problem> {
        let problem = |key: &str, message: &str| Err(self.source.problem(key, message));
        let d = match (s.mode, &s.decide) {
            (Mode::Proxy, None) => return Ok(None),
            (Mode::Proxy, Some(_)) => {
                return problem("server.decide", "[server.decide] needs `mode = \"decide\"`")
            }
            (Mode::Decide, None) => {
                return problem(
                    "server.mode",
                    "`mode = \"decide\"` needs [server.decide] with `from = \"nginx\"`, `\"forwarded\"` or `\"envoy\"`",
                )
            }
            (Mode::Decide, Some(d)) => d,
        };
        let Some(from) = d.from else {
            return problem(
                "server.decide",
                "missing field `from` (`\"nginx\"`, `\"forwarded\"` or `\"envoy\"`)",
            );
        };
        if s.trusted_proxies.is_empty() {
            return problem(
                "server.trusted_proxies",
                "decide mode takes the original request only from the proxies named here",
            );
        }
        if s.cors.is_some() {
            return problem(
                "server.cors",
                "in decide mode the front proxy answers CORS (iotgate's answer never reaches the browser on a preflight)",
            );
        }
        if d.body_routes == BodyRoutes::Decide && from != FrontProxy::Envoy {
            return problem(
                "server.decide.body_routes",
                "only Envoy (`with_request_body`) sends the body to decide on",
            );
        }
        let prefix = &d.path_prefix;
        if !prefix.is_empty()
            && (from != FrontProxy::Envoy || !prefix.starts_with('/') || prefix.ends_with('/'))
        {
            return problem(
                "server.decide.path_prefix",
                "an Envoy `path_prefix` such as `/authz` (starts with `/`, does not end with one)",
            );
        }
        Ok(Some(DecideConfig {
            from,
            path_prefix: prefix.clone(),
            body_routes: d.body_routes,
        }))
    }

    fn cors(&self, c: FileCors) -> Result<CorsConfig, Problem> {
        for (i, origin) in c.allowed_origins.iter().enumerate() {
            let plain = origin == "*"
                || http::Uri::try_from(origin.as_str()).is_ok_and(|u| {
                    u.scheme().is_some()
                        && u.authority().is_some()
                        && u.path_and_query().is_none_or(|p| p.as_str() == "/")
                        && !origin.ends_with('/')
                });
            if !plain {
                return Err(self.source.problem(
                    &format!("server.cors.allowed_origins.{i}"),
                    format!("`{origin}` is not an origin (`https://console.example.com`, or `*`)"),
                ));
            }
        }
        Ok(CorsConfig {
            allowed_origins: c.allowed_origins,
            allowed_headers: c
                .allowed_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            max_age_seconds: c.max_age_seconds,
        })
    }

    fn auth(&self, a: FileAuth) -> Result<AuthConfig, Problems> {
        let mut problems = Problems::new();
        if a.principal_claim.is_empty() {
            problems.push(
                self.source
                    .problem("auth.principal_claim", "must not be empty"),
            );
        }
        let mut issuers = Vec::new();
        let (issuer, principal_claim) = (a.issuer, a.principal_claim);
        let (leeway_seconds, query_parameter, require_exp) =
            (a.leeway_seconds, a.query_parameter, a.require_exp);
        let keys = file_keys!(a);
        match issuer {
            Some(FileIssuers::Many(list)) => {
                if keys.has_any() {
                    problems.push(self.source.problem(
                        "auth",
                        "with [[auth.issuer]], keys, `algorithms` and `audience` go in each issuer",
                    ));
                }
                let mut unnamed = 0;
                for (i, entry) in list.into_iter().enumerate() {
                    unnamed += usize::from(entry.issuer.is_none());
                    let claim = entry
                        .principal_claim
                        .clone()
                        .unwrap_or_else(|| principal_claim.clone());
                    let at = format!("auth.issuer.{i}");
                    let name = entry.issuer.clone();
                    let keys = file_keys!(entry);
                    if let Some(issuer) = problems.take(self.issuer(&at, keys, name, claim)) {
                        issuers.push(issuer);
                    }
                }
                if unnamed > 1 {
                    problems.push(self.source.problem(
                        "auth.issuer",
                        "at most one [[auth.issuer]] may leave out `issuer`",
                    ));
                }
                if issuers.is_empty() && problems.is_empty() {
                    problems.push(self.source.problem("auth.issuer", "no issuer"));
                }
            }
            one => {
                let name = match one {
                    Some(FileIssuers::One(name)) => Some(name),
                    _ => None,
                };
                let claim = principal_claim.clone();
                if let Some(issuer) = problems.take(self.issuer("auth", keys, name, claim)) {
                    issuers.push(issuer);
                }
            }
        }
        problems.into_result(AuthConfig {
            issuers,
            leeway_seconds,
            principal_claim,
            query_parameter,
            require_exp,
        })
    }

    /// One issuer's keys, checked; `at` is its table (`auth` or `auth.issuer.N`).
    fn issuer(
        &self,
        at: &str,
        k: FileKeys,
        issuer: Option<String>,
        principal_claim: String,
    ) -> Result<IssuerConfig, Problems> {
        let mut problems = Problems::new();
        let mut algorithms = Vec::new();
        for (i, name) in k.algorithms.iter().enumerate() {
            match parse_algorithm(name) {
                Ok(alg) => algorithms.push(alg),
                Err(m) => problems.push(self.source.problem(&format!("{at}.algorithms.{i}"), m)),
            }
        }
        if k.algorithms.is_empty() {
            problems.push(
                self.source
                    .problem(&format!("{at}.algorithms"), "no algorithm is allowed"),
            );
        }
        let url = match k.jwks_url.as_deref().map(parse_jwks_url) {
            Some(Err(m)) => {
                problems.push(self.source.problem(&format!("{at}.jwks_url"), m));
                return Err(problems);
            }
            Some(Ok(url)) => Some(url),
            None => None,
        };
        let refresh = Duration::from_secs(k.jwks_refresh_seconds.clamp(1, MAX_TIMEOUT_SECONDS));
        let sources = [
            k.hs256_secret_file
                .as_deref()
                .map(|p| KeySource::Secret(self.path(p))),
            k.public_key_pem.as_deref().map(|p| {
                KeySource::PublicPem(if p.trim_start().starts_with("-----BEGIN") {
                    PemSource::Inline(p.to_string())
                } else {
                    PemSource::File(self.path(p))
                })
            }),
            k.jwks_file
                .as_deref()
                .map(|p| KeySource::Jwks(self.path(p))),
            url.map(|url| KeySource::JwksUrl { url, refresh }),
        ];
        let mut keys = sources.into_iter().flatten();
        let key = match (keys.next(), keys.next()) {
            (Some(key), None) => Some(key),
            (first, second) => {
                let what = match (first, second) {
                    (None, _) => "no key: set one of",
                    _ => "several keys: set only one of",
                };
                problems.push(self.source.problem(
                    at,
                    format!(
                        "{what} `hs256_secret_file`, `public_key_pem`, `jwks_file`, `jwks_url`"
                    ),
                ));
                None
            }
        };
        if let Some(key) = &key {
            check_key_family(
                key,
                &algorithms,
                &format!("{at}.algorithms"),
                self.source,
                &mut problems,
            );
        }
        match key {
            Some(key) if problems.is_empty() => Ok(IssuerConfig {
                issuer,
                audience: k.audience,
                algorithms,
                key,
                principal_claim,
            }),
            _ => Err(problems),
        }
    }

    /// `[directory.sync]`, every problem at once.
    fn sync(&self, s: FileSync, policy: &PolicyConfig) -> Result<SyncConfig, Problems> {
        let mut problems = Problems::new();
        let at = |key: &str| format!("directory.sync.{key}");
        let from = match (s.from.as_str(), s.root) {
            ("thinger", _) if s.original.is_none() => {
                // the API does not say which account is the subscription's; without it the
                // sync would strip `original` from the directory, and its protection
                problems.push(self.source.problem(
                    &at("from"),
                    "a thinger sync needs `original`, the subscription's account",
                ));
                None
            }
            ("thinger", _) => Some(SyncFrom::Thinger {
                original: s.original,
            }),
            ("central", Some(root)) => Some(SyncFrom::Central { root }),
            ("central", None) => {
                problems.push(self.source.problem(
                    &at("root"),
                    "a central sync needs `root`, the top organization",
                ));
                None
            }
            (other, _) => {
                problems.push(self.source.problem(
                    &at("from"),
                    format!("`{other}` is not a platform (thinger, central)"),
                ));
                None
            }
        };
        if !(s.url.starts_with("http://") || s.url.starts_with("https://"))
            || s.url.parse::<http::Uri>().is_err()
        {
            problems.push(
                self.source
                    .problem(&at("url"), format!("`{}` is not an http(s) URL", s.url)),
            );
        }
        if !(5..=86_400).contains(&s.interval_seconds) {
            problems.push(
                self.source
                    .problem(&at("interval_seconds"), "must be between 5 and 86400"),
            );
        }
        let policies = s.policies.as_deref().map(|p| self.path(p));
        match (&from, &policies) {
            (Some(SyncFrom::Thinger { .. }), None) => problems.push(self.source.problem(
                &at("from"),
                "a thinger sync needs `policies`, the folder its project files are written to",
            )),
            (_, Some(dir)) if !policy.policies.contains(dir) => problems.push(self.source.problem(
                &at("policies"),
                format!(
                    "`{}` must also be listed in [policy] policies",
                    dir.display()
                ),
            )),
            _ => {}
        }
        match from {
            Some(from) if problems.is_empty() => Ok(SyncConfig {
                from,
                url: s.url.trim_end_matches('/').to_string(),
                token_file: self.path(&s.token_file),
                interval: Duration::from_secs(s.interval_seconds),
                policies,
            }),
            _ => Err(problems),
        }
    }

    fn policy(&self, p: FilePolicy) -> PolicyConfig {
        let paths = |v: &[String]| v.iter().map(|p| self.path(p)).collect();
        PolicyConfig {
            schema: self.path(&p.schema),
            routes: self.path(&p.routes),
            policies: paths(&p.policies),
            directory: paths(&p.directory),
            reload: p.reload,
            shadow: paths(&p.shadow),
        }
    }
}

/// Parses an algorithm name of the allow-list; `none` is refused by name.
fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("algorithm `none` is never accepted".to_string());
    }
    name.parse::<Algorithm>()
        .map_err(|_| format!("unknown algorithm `{name}`"))
}

/// HMAC algorithms need the secret; the others need a public key or a JWKS.
fn check_key_family(
    key: &KeySource,
    algs: &[Algorithm],
    at: &str,
    source: &TomlFile,
    out: &mut Problems,
) {
    use jsonwebtoken::AlgorithmFamily::Hmac;
    for alg in algs {
        let hmac = alg.family() == Hmac;
        match key {
            KeySource::Secret(_) if !hmac => out.push(source.problem(
                at,
                format!("`{alg:?}` needs a public key, not `hs256_secret_file`"),
            )),
            KeySource::PublicPem(_) | KeySource::Jwks(_) | KeySource::JwksUrl { .. } if hmac => out
                .push(source.problem(
                    at,
                    format!("`{alg:?}` needs `hs256_secret_file`, not a public key"),
                )),
            _ => {}
        }
    }
}

/// A JWKS address: `https://`, or `http://` to a loopback host (a JWKS fetched in clear text
/// over a network could be replaced by anyone on the path).
fn parse_jwks_url(value: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|_| format!("`{value}` is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(uri),
        Some("http") if loopback => Ok(uri),
        Some("http") => Err(format!(
            "`{value}`: a JWKS is fetched over https (http only on loopback)"
        )),
        _ => Err(format!("`{value}` is not an https:// URL")),
    }
}

/// `10.0.0.0/8`, or a single address.
fn parse_net(value: &str) -> Option<ipnet::IpNet> {
    value.parse().ok().or_else(|| {
        value
            .parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn parse_upstream(value: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| format!("`{value}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{value}` must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("`{value}` has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("`{value}` must not have a path or query"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:8081"

[auth]
algorithms = ["HS256"]
hs256_secret_file = "secret.key"
principal_claim = "usr"

[policy]
schema = "schema/s.cedarschema"
routes = "schema/s.routes.toml"
policies = ["policies"]
directory = ["dir"]
"#;

    fn errors(text: &str) -> Vec<String> {
        Config::parse(Path::new("/etc/gw/c.toml"), text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn good_config_resolves_paths_against_its_folder() {
        let c = Config::parse(Path::new("/etc/gw/c.toml"), GOOD).unwrap();
        assert_eq!(c.policy.schema, Path::new("/etc/gw/schema/s.cedarschema"));
        assert_eq!(
            c.auth.primary().key,
            KeySource::Secret("/etc/gw/secret.key".into())
        );
        assert_eq!(c.auth.principal_claim, "usr");
        assert_eq!(c.auth.leeway_seconds, 30);
        assert_eq!(c.policy.reload, Reload::Watch);
        assert_eq!(c.server.unwrap().max_body_bytes, 65_536);
    }

    #[test]
    fn all_semantic_problems_are_reported_at_once() {
        let text = GOOD
            .replace("127.0.0.1:8080", "localhost")
            .replace("[\"HS256\"]", "[\"none\", \"RS256\", \"XX1\"]");
        let errs = errors(&text);
        assert_eq!(
            errs,
            vec![
                "/etc/gw/c.toml:3: `localhost` is not a socket address (ip:port)",
                "/etc/gw/c.toml:7: algorithm `none` is never accepted",
                "/etc/gw/c.toml:7: unknown algorithm `XX1`",
                "/etc/gw/c.toml:7: `RS256` needs a public key, not `hs256_secret_file`",
            ]
        );
    }

    #[test]
    fn a_shared_store_needs_one_postgres_url_and_no_journal() {
        let with = |lines: &str| format!("{GOOD}\n[directory]\n{lines}");
        let c = Config::parse(
            Path::new("/etc/gw/c.toml"),
            &with("store = \"postgres\"\nurl_file = \"pg.url\"\nstate_dir = \"state\"\n"),
        )
        .unwrap();
        assert_eq!(
            c.directory.postgres,
            Some(PostgresUrl::File("/etc/gw/pg.url".into()))
        );
        assert_eq!(c.directory.state_dir, Some("/etc/gw/state".into()));
        let inline = with(
            "store = \"postgres\"\nurl = \"postgres://iotgate@db/iotgate\"\nstate_dir = \"s\"\n",
        );
        let c = Config::parse(Path::new("/etc/gw/c.toml"), &inline).unwrap();
        assert!(matches!(c.directory.postgres, Some(PostgresUrl::Inline(_))));
        let cases = [
            ("store = \"postgres\"\nstate_dir = \"s\"\n", "needs `url` (or `url_file`)"),
            ("store = \"postgres\"\nurl = \"postgres://db/x\"\n", "needs `state_dir`"),
            ("state_dir = \"s\"\n", "`state_dir` needs `store = \"postgres\"`"),
            ("url = \"postgres://db/x\"\n", "need `store = \"postgres\"`"),
            (
                "store = \"postgres\"\nurl = \"postgres://db/x\"\nstate_dir = \"s\"\njournal = \"j\"\n",
                "the database keeps the changes: remove `journal`",
            ),
            (
                "store = \"postgres\"\nurl = \"postgres://db/x\"\nstate_dir = \"s\"\nurl_file = \"f\"\n",
                "not both",
            ),
            (
                "store = \"postgres\"\nstate_dir = \"s\"\nurl = \"postgres://db/x?sslmode=bogus\"\n",
                "not a PostgreSQL URL",
            ),
            ("store = \"redis\"\n", "unknown variant `redis`"),
        ];
        for (lines, wanted) in cases {
            let errs = errors(&with(lines));
            assert!(errs.iter().any(|e| e.contains(wanted)), "{lines}: {errs:?}");
        }
    }

    #[test]
    fn a_sync_section_is_checked_whole() {
        let good = format!(
            "{GOOD}\n[directory.sync]\nfrom = \"thinger\"\nurl = \"http://10.0.0.5:8081/\"\ntoken_file = \"t\"\npolicies = \"policies\"\noriginal = \"acme\"\n"
        );
        let c = Config::parse(Path::new("/etc/gw/c.toml"), &good).unwrap();
        let sync = c.directory.sync.unwrap();
        assert_eq!(sync.url, "http://10.0.0.5:8081");
        assert_eq!(sync.interval, Duration::from_secs(60));
        assert_eq!(sync.policies, Some(PathBuf::from("/etc/gw/policies")));
        assert_eq!(
            sync.from,
            SyncFrom::Thinger {
                original: Some("acme".into())
            }
        );
        let unprotected = good.replace("original = \"acme\"\n", "");
        assert!(errors(&unprotected)
            .iter()
            .any(|e| e.ends_with("a thinger sync needs `original`, the subscription's account")));
        let bad = format!(
            "{GOOD}\n[directory.sync]\nfrom = \"central\"\nurl = \"ftp://x\"\ntoken_file = \"t\"\ninterval_seconds = 1\npolicies = \"elsewhere\"\n"
        );
        assert_eq!(
            errors(&bad),
            vec![
                "/etc/gw/c.toml:17: a central sync needs `root`, the top organization",
                "/etc/gw/c.toml:19: `ftp://x` is not an http(s) URL",
                "/etc/gw/c.toml:21: must be between 5 and 86400",
                "/etc/gw/c.toml:22: `/etc/gw/elsewhere` must also be listed in [policy] policies",
            ]
        );
        let thinger = bad
            .replace("central", "thinger")
            .replace("policies = \"elsewhere\"\n", "original = \"acme\"\n");
        assert!(errors(&thinger).iter().any(|e| e.ends_with(
            "a thinger sync needs `policies`, the folder its project files are written to"
        )));
    }

    #[test]
    fn decide_mode_is_checked_with_what_it_rules_out() {
        let decide = |server: &str, section: &str| {
            let text = GOOD.replace("[auth]", &format!("{server}\n{section}\n[auth]"));
            Config::parse(Path::new("/etc/gw/c.toml"), &text)
        };
        let trusted = "mode = \"decide\"\ntrusted_proxies = [\"10.0.0.0/8\"]";
        let c = decide(
            trusted,
            "[server.decide]\nfrom = \"envoy\"\npath_prefix = \"/authz\"\nbody_routes = \"decide\"",
        )
        .unwrap();
        let d = c.server.unwrap().decide.unwrap();
        assert_eq!(
            (d.from, d.path_prefix.as_str(), d.body_routes),
            (FrontProxy::Envoy, "/authz", BodyRoutes::Decide)
        );
        let wrong = [
            (trusted, "", "needs [server.decide]"),
            (
                "",
                "[server.decide]\nfrom = \"nginx\"",
                "needs `mode = \"decide\"`",
            ),
            (
                "mode = \"decide\"",
                "[server.decide]\nfrom = \"nginx\"",
                "only from the proxies named here",
            ),
            (
                trusted,
                "[server.decide]\nbody_routes = \"refuse\"",
                "missing field `from`",
            ),
            (
                trusted,
                "[server.decide]\nfrom = \"nginx\"\nbody_routes = \"decide\"",
                "only Envoy",
            ),
            (
                trusted,
                "[server.decide]\nfrom = \"nginx\"\npath_prefix = \"/authz\"",
                "an Envoy `path_prefix`",
            ),
            (
                trusted,
                "[server.decide]\nfrom = \"envoy\"\npath_prefix = \"authz/\"",
                "an Envoy `path_prefix`",
            ),
            (
                trusted,
                "[server.decide]\nfrom = \"traefik\"",
                "unknown variant",
            ),
            (
                &format!("{trusted}\n[server.cors]\nallowed_origins = [\"*\"]"),
                "[server.decide]\nfrom = \"nginx\"",
                "the front proxy answers CORS",
            ),
        ];
        for (server, section, wanted) in wrong {
            let errs: Vec<String> = decide(server, section)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert!(
                errs.iter().any(|e| e.contains(wanted)),
                "{server} {section}: {errs:?}"
            );
        }
        // decide mode may name no upstream; the reverse proxy must
        let text = GOOD.replace("upstream = \"http://127.0.0.1:8081\"\n", "");
        assert!(
            errors(&text)
                .iter()
                .any(|e| e.contains("missing field `upstream`")),
            "{:?}",
            errors(&text)
        );
        let text = text.replace(
            "[auth]",
            &format!("{trusted}\n[server.decide]\nfrom = \"nginx\"\n[auth]"),
        );
        assert!(Config::parse(Path::new("/etc/gw/c.toml"), &text)
            .unwrap()
            .server
            .unwrap()
            .upstream
            .is_none());
    }

    #[test]
    fn listener_limits_are_bounded() {
        for (key, value) in [
            ("header_read_timeout_seconds", "0"),
            ("idle_timeout_seconds", "18446744073709551615"),
            ("max_connections", "0"),
            ("max_connections", "10000000000"),
            ("drain_seconds", "0"),
            ("shutdown_delay_seconds", "18446744073709551615"),
        ] {
            let text = GOOD.replace("[auth]", &format!("{key} = {value}\n\n[auth]"));
            let errs = errors(&text);
            assert!(
                errs[0].contains("must be between 1 and"),
                "{key} = {value}: {errs:?}"
            );
        }
    }

    #[test]
    fn key_sources_are_exclusive_and_required() {
        let both = GOOD.replace("principal_claim", "jwks_file = \"k.json\"\nprincipal_claim");
        assert!(errors(&both)[0].contains("several keys"));
        let none = GOOD.replace("hs256_secret_file = \"secret.key\"", "");
        assert!(errors(&none)[0].contains("no key"));
    }

    #[test]
    fn upstream_must_be_a_bare_http_url() {
        for bad in ["ftp://x", "http://x/path", "nonsense url", "http://x?q=1"] {
            let text = GOOD.replace("http://127.0.0.1:8081", bad);
            assert!(errors(&text)[0].contains("c.toml:4:"), "{bad}");
        }
    }

    #[test]
    fn inline_pem_is_told_apart_from_a_path() {
        let text = GOOD.replace("[\"HS256\"]", "[\"RS256\"]").replace(
            "hs256_secret_file = \"secret.key\"",
            "public_key_pem = \"k.pem\"",
        );
        let c = Config::parse(Path::new("/g/c.toml"), &text).unwrap();
        assert_eq!(
            c.auth.primary().key,
            KeySource::PublicPem(PemSource::File("/g/k.pem".into()))
        );
    }

    const ISSUERS: &str = r#"
[auth]
principal_claim = "usr"

[[auth.issuer]]
algorithms = ["HS256"]
hs256_secret_file = "secret.key"

[[auth.issuer]]
issuer = "https://idp.example"
audience = "iotgate"
algorithms = ["RS256"]
jwks_url = "https://idp.example/.well-known/jwks.json"
jwks_refresh_seconds = 60
principal_claim = "sub"

[policy]
schema = "s"
routes = "r"
policies = []
"#;

    #[test]
    fn several_issuers_each_have_their_keys() {
        let c = Config::parse(Path::new("/etc/gw/c.toml"), ISSUERS).unwrap();
        let [platform, idp] = c.auth.issuers.as_slice() else {
            panic!("{:?}", c.auth.issuers)
        };
        assert_eq!(
            (
                platform.issuer.as_deref(),
                platform.principal_claim.as_str()
            ),
            (None, "usr")
        );
        assert_eq!(idp.issuer.as_deref(), Some("https://idp.example"));
        assert_eq!(idp.principal_claim, "sub");
        assert_eq!(
            idp.key,
            KeySource::JwksUrl {
                url: "https://idp.example/.well-known/jwks.json".parse().unwrap(),
                refresh: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn issuer_mistakes_are_reported_with_their_lines() {
        let reported = |text: &str, needles: &[&str]| {
            let all = errors(text);
            assert!(
                all.iter().any(|e| needles.iter().all(|n| e.contains(n))),
                "{needles:?} not in {all:?}"
            );
        };
        let two_unnamed = ISSUERS.replace("issuer = \"https://idp.example\"\n", "");
        reported(
            &two_unnamed,
            &["at most one [[auth.issuer]] may leave out `issuer`"],
        );
        let clear = ISSUERS.replace("https://idp.example/.well", "http://idp.example/.well");
        reported(&clear, &[":13: ", "http only on loopback"]);
        let loopback = ISSUERS.replace("https://idp.example/.well", "http://127.0.0.1:9/.well");
        assert!(Config::parse(Path::new("/c.toml"), &loopback).is_ok());
        let mixed = ISSUERS.replace(
            "principal_claim = \"usr\"\n",
            "principal_claim = \"usr\"\naudience = \"x\"\n",
        );
        reported(&mixed, &["go in each issuer"]);
        let none = ISSUERS.replace("hs256_secret_file = \"secret.key\"\n", "");
        reported(&none, &[":5: no key: set one of"]);
    }
}
