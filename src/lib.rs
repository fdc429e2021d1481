//! iotgate: an authorization sidecar for IoT platforms.
pub mod auth;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod decision;
pub mod diagnostic;
pub mod directory;
pub mod policy;
pub mod problem;
pub mod routes;
pub mod schema;
pub mod snapshot;
pub mod tomlfile;
pub mod uri;
