//! The validated config: every name resolved, every duration parsed, every path absolute.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A whole, checked gateway config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file (or name) this config was read from, for messages.
    pub source_name: String,
    pub server: Server,
    pub runtime: Runtime,
    pub upstreams: BTreeMap<String, Upstream>,
    pub plugins: BTreeMap<String, Plugin>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// Tokio worker threads; `None` means one per core.
    pub workers: Option<usize>,
    pub connect_timeout: Duration,
    /// From sending the request upstream until the response headers arrive.
    pub request_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM / Ctrl-C.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Runtime {
    /// Where shipped plugins (`module = "header-transform"`) are looked up.
    pub plugin_dirs: Vec<PathBuf>,
    /// Compiled-module cache; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Instance slots in the pooling allocator, shared by all plugins.
    pub max_instances: u32,
    pub max_memory_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port` authorities.
    pub endpoints: Vec<http::uri::Authority>,
}

/// How instances of a plugin are used across requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceModel {
    /// Instances are pooled and reused across requests (fast; state may persist).
    Reuse,
    /// Every hook call gets a freshly instantiated and initialised instance (isolated).
    Fresh,
}

/// What a failing plugin does to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPolicy {
    /// The request fails with a 500 (fail closed).
    Fail,
    /// The plugin is skipped and the request goes on (fail open).
    Continue,
}

/// A named plugin instance: a module plus its config.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    pub name: Arc<str>,
    pub module: PathBuf,
    /// The `config` table, as the JSON text handed to the plugin's `init`.
    pub config_json: String,
    pub instances: InstanceModel,
    pub on_error: FailPolicy,
    /// The longest one hook call may run before it is stopped (a trap).
    pub timeout: Duration,
    /// At most this many live instances of this plugin; further calls wait.
    pub max_instances: u32,
    /// Idle instances unused this long are dropped (one stays warm).
    pub idle_timeout: Duration,
    /// A new module version serving a share of the traffic, if one is being rolled out.
    pub rollout: Option<Rollout>,
}

/// A staged rollout of a new module version for one plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub module: PathBuf,
    /// Share of requests (or of sticky keys) the new version serves, 0-100.
    pub percent: f64,
    pub sticky: Sticky,
    /// Roll back when the new version fails more than this share of its calls.
    pub max_error_rate: f64,
    /// Roll back when the new version's p99 hook time exceeds the old one's by more.
    pub max_p99_increase: Duration,
    /// No verdict before the new version has served this many calls.
    pub min_requests: u64,
    /// Promote once the new version has served this many calls within the limits.
    pub promote_after: u64,
}

/// What keeps a client on one version during a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// Each request is assigned on its own.
    None,
    ClientIp,
    Header(http::HeaderName),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    /// A path prefix, matched on segment boundaries.
    pub path: String,
    pub upstream: String,
    pub plugins: Vec<String>,
    /// The most a plugin may buffer when it reads a body.
    pub max_body_bytes: u64,
}
