//! iotgate: an authorization sidecar for IoT platforms.
pub mod problem;
pub mod tomlfile;
pub mod config;
pub mod uri;
pub mod auth;
