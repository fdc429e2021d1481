//! iotgate: an authorization sidecar for IoT platforms.
//!
//! Layers, each depending only on the ones above it:
//!
//! ```text
//! config/     the gateway config, TOML with lines, load problems, folder walks
//! request/    strict readers of what a client sends: path and query, headers, JSON bodies
//! authn/      tokens → verified identities
//! model/      schema, route table, directory, policies, license: what decisions read
//! authz/      the decision path, policy index, caches, snapshots
//! telemetry/  the decision log and metrics
//! proxy/      the gateway: decide, forward, the one failure → HTTP mapping
//! serve/      listeners, limits, admin endpoints, reload
//! commands/   the command line: serve, check, validate, token, demo
//! ```
pub mod authn;
pub mod authz;
pub mod commands;
pub mod config;
pub mod model;
pub mod proxy;
pub mod request;
pub mod serve;
pub mod telemetry;
#[cfg(test)]
mod testutil;
