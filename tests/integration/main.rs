//! Integration tests: one binary, the real `iotgate` executable and real files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod access;
mod attacks;
mod cli;
mod deploy;
mod differential;
mod directory;
mod entities;
mod front_door;
mod front_proxy;
mod keys;
mod layers;
mod operations;
mod platform;
mod process;
mod profiles;
mod properties;
mod proxy;
mod replicas;
mod support;
mod tls;
mod workflow;
