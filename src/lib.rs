//! iotgate: an authorization sidecar for IoT platforms.
//!
//! A request through the gateway (`check` drives the same handler offline):
//!
//! ```text
//! client ─▶ serve::listener (connection limits, timeouts) ─▶ proxy::Gateway::exchange
//!   ─▶ request: strict path, query and headers; one credential   (400)
//!   ─▶ authn: token ─▶ verified identity                         (401)
//!   ─▶ model::routes: method + path ─▶ route, action, fields     (404, 400)
//!   ─▶ authz::decision: directory, entity slice, policy index, Cedar, cache (403, 500)
//!   ─▶ allow: proxy::forward rewrites and sends, the answer streams back (502, 504)
//!      refuse: proxy::response, the one failure ─▶ HTTP mapping
//!   ─▶ telemetry: one decision record (also when the client went away), metrics
//! ```
//!
//! Layers, each depending only on the ones above it (`tests/integration/layers.rs` checks
//! it over the `use` graph):
//!
//! ```text
//! config/     the gateway config, TOML with lines, load problems, folder walks
//! request/    strict readers of what a client sends: path and query, headers, JSON bodies
//! authn/      tokens → verified identities
//! model/      schema, route table, directory, policies, license: what decisions read
//! platform/   the platforms followed: import of a server's REST API, stand-in servers
//! authz/      the decision path, policy index, caches, snapshots
//! telemetry/  the decision log and metrics
//! proxy/      the gateway: decide, forward, the one failure → HTTP mapping
//! access/     the decision API (AuthZEN) for the platform's own applications
//! serve/      listeners, limits, admin endpoints, reload
//! commands/   the command line: serve, check, validate, token, demo
//! ```
mod access;
mod authn;
mod authz;
mod commands;
mod config;
mod model;
mod platform;
mod proxy;
mod request;
mod serve;
mod store;
mod telemetry;

// The public surface: what the binary, the integration tests and the benches use.
pub use crate::access::narrow::{candidates as search_candidates, Searched};
pub use crate::access::search::{every as search, Target as SearchTarget};
pub use crate::access::wire::WireError;
pub use crate::authn::{now, Signer, Verifier};
pub use crate::authz::cache::{Caches, DecisionKey, TokenCache};
pub use crate::authz::decision::{authorize, begin, Credentials, Decision, RequestHead};
pub use crate::authz::snapshot::{Loaded, Snapshot};
pub use crate::commands::check::load_suite;
pub use crate::commands::checker::{Checker, Probe};
pub use crate::commands::cli::{Cli, ExitStatus};
pub use crate::commands::run;
pub use crate::config::{CacheConfig, Config};
pub use crate::model::directory::change::{Change as DirectoryChange, Uid as DirectoryUid};
pub use crate::model::routes::field::FieldValue;
pub use crate::model::routes::trie::Segment;
pub use crate::model::routes::{Resolved, RouteTable};
pub use crate::model::schema::Catalog;
pub use crate::platform::mock::{Flavor as MockFlavor, Platform as MockPlatform};
pub use crate::proxy::forward::{rewrite, Stamp, Upstream};
pub use crate::proxy::response::{full, Body, BoxError};
pub use crate::proxy::Gateway;
pub use crate::request::uri::{check_query, segments, Query};
pub use crate::request::TlsClient;
pub use crate::serve::reload::Reloader;
pub use crate::serve::tls::Tls;
pub use crate::serve::{load, Running};
#[cfg(test)]
mod testutil;
