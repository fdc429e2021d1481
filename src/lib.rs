//! iotgate: an authorization sidecar for IoT platforms.
pub mod admin;
pub mod auth;
pub mod cache;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod decision;
pub mod demo;
pub mod diagnostic;
pub mod directory;
pub mod index;
pub mod license;
pub mod metrics;
pub mod policy;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod response;
pub mod routes;
pub mod schema;
pub mod serve;
pub mod snapshot;
pub mod telemetry;
#[cfg(test)]
mod testutil;
pub mod tomlfile;
pub mod uri;
