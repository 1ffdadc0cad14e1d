//! The TOML schema, as written by operators. Nothing here is validated beyond its shape:
//! see `model` for the checked form.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub server: Server,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub plugins: BTreeMap<String, Plugin>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: String,
    pub workers: Option<usize>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub plugin_dir: Option<String>,
    pub cache_dir: Option<String>,
    pub cache: Option<bool>,
    pub max_instances: Option<u32>,
    pub max_memory_mib: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub endpoints: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    pub module: String,
    #[serde(default)]
    pub config: Option<toml::Table>,
    pub instances: Option<String>,
    pub on_error: Option<String>,
    pub timeout: Option<String>,
    pub max_instances: Option<u32>,
    pub idle_timeout: Option<String>,
    pub rollout: Option<Rollout>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub module: String,
    pub percent: f64,
    pub sticky: Option<String>,
    pub max_error_rate: Option<f64>,
    pub max_p99_increase: Option<String>,
    pub min_requests: Option<u64>,
    pub promote_after: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Option<String>,
    pub path: String,
    pub upstream: String,
    #[serde(default)]
    pub plugins: Vec<String>,
    pub max_body_bytes: Option<u64>,
}
