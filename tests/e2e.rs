//! End-to-end tests: real plugins built from plugins/ and tests/plugins/, a real echo
//! upstream, and the real gateway (in-process, or the `sluice` binary), all on 127.0.0.1
//! port 0.

mod common;

mod admin;
mod auth;
mod cli;
mod compression;
mod config_fuzz;
mod config_ui;
mod cors;
mod dashboard;
mod extism;
mod grpc;
mod h2;
mod host_state;
mod observability;
mod plugin_chain;
mod plugin_failures;
mod proxy;
mod quick_start;
mod rate_limit;
mod reload;
mod reload_under_load;
mod rollout;
mod routing;
mod sdks;
mod security;
mod shipped_plugins;
mod tls;
mod traffic;
mod websocket;
