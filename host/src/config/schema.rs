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
    pub kv: Kv,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub plugins: BTreeMap<String, Plugin>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub metrics: Metrics,
    pub access_log: Option<AccessLog>,
    pub tracing: Option<Tracing>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub tls: Option<Tls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(default)]
    pub certs: Vec<CertPair>,
    pub min_version: Option<String>,
    pub client_ca: Option<String>,
    pub client_auth: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    pub endpoint: Option<String>,
    pub sample_ratio: Option<f64>,
    pub parent_based: Option<bool>,
    pub service_name: Option<String>,
    pub max_queue_spans: Option<u32>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub read_token: Option<String>,
    pub read_token_file: Option<String>,
    /// `[admin.tokens.NAME]`: one token per person or system, named in the audit log.
    #[serde(default)]
    pub tokens: BTreeMap<String, AdminToken>,
    /// HTTPS on the admin listener, with client certificates if `client_ca` is set.
    pub tls: Option<Tls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    pub role: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub enabled: Option<bool>,
    pub duration_buckets: Option<Vec<f64>>,
    pub plugin_buckets: Option<Vec<f64>>,
    pub size_buckets: Option<Vec<f64>>,
    pub labels: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    pub format: Option<String>,
    pub path: Option<String>,
    pub max_size_kib: Option<u64>,
    pub rotate: Option<String>,
    pub keep: Option<u32>,
    pub sample: Option<f64>,
    pub statuses: Option<Vec<String>>,
    pub buffer_lines: Option<u32>,
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
    pub merge_slashes: Option<bool>,
    pub escaped_slashes: Option<String>,
    pub headers_with_underscores: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub body_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub http2: Option<Http2>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2 {
    pub max_concurrent_streams: Option<u64>,
    pub max_header_list_bytes: Option<u64>,
    pub stream_window_bytes: Option<u64>,
    pub connection_window_bytes: Option<u64>,
    pub max_client_resets: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub plugin_dir: Option<String>,
    pub cache_dir: Option<String>,
    pub cache: Option<bool>,
    pub max_instances: Option<u32>,
    pub max_memory_mib: Option<u32>,
    pub memory_budget_mib: Option<u32>,
    pub quick_start: Option<bool>,
    pub quick_start_min_kib: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kv {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub timeout: Option<String>,
    pub recheck: Option<String>,
    pub prefix: Option<String>,
    pub on_unavailable: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub endpoints: Vec<Endpoint>,
    pub strategy: Option<String>,
    pub hash_key: Option<String>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub total_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub slow_start: Option<String>,
    pub health_check: Option<HealthCheck>,
    pub passive_health: Option<PassiveHealth>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub retry: Option<Retry>,
    pub tls: Option<UpstreamTls>,
    pub protocol: Option<String>,
    pub http2: Option<UpstreamHttp2>,
}

/// `http2 = { max_concurrent_streams = 100 }` for an upstream spoken to over HTTP/2.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHttp2 {
    pub max_concurrent_streams: Option<u64>,
}

/// `tls = {}` (the system's roots) or with a CA bundle, a name and a client certificate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `"host:port"`, or a table with a weight and an admin state.
#[derive(Debug)]
pub struct Endpoint {
    pub address: String,
    pub weight: Option<u32>,
    pub state: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointTable {
    address: String,
    weight: Option<u32>,
    state: Option<String>,
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Endpoint;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "\"host:port\" or { address = \"host:port\", weight = N, state = \"up\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Endpoint, E> {
                Ok(Endpoint { address: v.to_owned(), weight: None, state: None })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Endpoint, A::Error> {
                let t =
                    EndpointTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Endpoint { address: t.address, weight: t.weight, state: t.state })
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
    pub expected_statuses: Option<Vec<u16>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    pub enabled: Option<bool>,
    pub consecutive_failures: Option<u32>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    pub max_ejected_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    pub failure_threshold: Option<u32>,
    pub success_threshold: Option<u32>,
    pub open_timeout: Option<String>,
    pub half_open_requests: Option<u32>,
    pub failures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    pub attempts: Option<u32>,
    pub statuses: Option<Vec<u16>>,
    pub backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub budget_ratio: Option<f64>,
    pub budget_min_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    pub module: String,
    pub kind: Option<String>,
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Files whose contents the plugin gets in `config.files.KEY` (keys, htpasswd, JWKS).
    pub files: Option<BTreeMap<String, String>>,
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
    pub path: Option<String>,
    pub prefix: Option<String>,
    pub priority: Option<i32>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<FieldMatch>,
    #[serde(default)]
    pub query: Vec<FieldMatch>,
    pub strip_prefix: Option<bool>,
    pub replace_prefix: Option<String>,
    pub upstream: Option<String>,
    pub split: Option<Vec<Split>>,
    pub split_sticky: Option<String>,
    #[serde(default)]
    pub plugins: Vec<String>,
    pub max_body_bytes: Option<u64>,
    /// Names of the listeners the route serves (empty: all).
    #[serde(default)]
    pub listeners: Vec<String>,
    pub require_client_cert: Option<bool>,
    /// On a plain-HTTP connection, answer 308 to `https://` on this port instead.
    pub https_redirect: Option<u32>,
    /// WebSocket upgrades on this route (proxied by default).
    pub websocket: Option<WebSocket>,
    /// Response compression (off unless the table is present).
    pub compression: Option<Compression>,
    /// Request bodies decoded (off unless the table is present).
    pub request_decompression: Option<RequestDecompression>,
    pub grpc: Option<RouteGrpc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDecompression {
    pub enabled: Option<bool>,
    pub max_bytes: Option<u64>,
}

/// `grpc = { max_message_bytes = 4194304 }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteGrpc {
    pub max_message_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    pub enabled: Option<bool>,
    pub encodings: Option<Vec<String>>,
    pub min_bytes: Option<u64>,
    pub content_types: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocket {
    pub enabled: Option<bool>,
    pub idle_timeout: Option<String>,
    pub max_lifetime: Option<String>,
    pub max_frame_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMatch {
    pub name: String,
    pub exact: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub upstream: String,
    pub weight: u32,
}
