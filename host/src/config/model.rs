//! The validated config: every name resolved, every duration parsed, every path absolute.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::ConfigError;

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
    /// `[[listeners]]`: more listeners beside `server.listen`, plain or TLS.
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub metrics: MetricsSettings,
    pub access_log: Option<AccessLogSettings>,
    pub tracing: Option<TracingSettings>,
    /// Problems that do not stop the config from loading (ambiguous routes).
    pub warnings: Vec<ConfigError>,
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
    /// How a request's path is normalised before routing.
    pub paths: PathPolicy,
    pub underscores: Underscores,
    /// Peers whose `X-Forwarded-For` and `Forwarded` headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The longest a client's body may go without a byte.
    pub body_timeout: Duration,
    /// The longest the request head may take to arrive, counted from the connection's
    /// first byte (or from the previous response on a kept-alive connection).
    pub header_timeout: Duration,
    /// A connection with no request in flight and no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once, in all and from one client address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub http2: Http2Settings,
}

/// `[server.http2]`: what one HTTP/2 client connection may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// Streams open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// The largest header block a request may have, decoded (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list_bytes: u32,
    /// Flow-control windows: what a client may send before the gateway reads it.
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    /// Streams a client may reset before their responses on one connection; past it (and
    /// past half of the connection's streams) the connection is closed: rapid reset.
    pub max_client_resets: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 128,
            max_header_list_bytes: 64 * 1024,
            stream_window_bytes: 1024 * 1024,
            connection_window_bytes: 2 * 1024 * 1024,
            max_client_resets: 100,
        }
    }
}

impl Server {
    /// Whether `ip` is one of `trusted_proxies`.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Refuse the request with 400.
    #[default]
    Reject,
    /// Keep them encoded: they are part of a segment and never separate two.
    Keep,
}

/// The operator's choices (`[server] merge_slashes`, `escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self { merge_slashes: true, escaped_slashes: EscapedSlashes::Reject }
    }
}

/// What to do with a client header whose name has an underscore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Underscores {
    /// Remove it (nginx's default).
    #[default]
    Drop,
    /// Refuse the request with 400.
    Reject,
    /// Pass it on.
    Allow,
}

#[derive(Debug, Clone)]
pub struct Runtime {
    /// Where shipped plugins (`module = "header-transform"`) are looked up.
    pub plugin_dirs: Vec<PathBuf>,
    /// Compiled-module cache; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Instance slots in the pooling allocator, shared by all plugins.
    pub max_instances: u32,
    /// One instance's linear memory.
    pub max_memory_bytes: usize,
    /// All instances' linear memory together.
    pub memory_budget_bytes: usize,
    /// Components at least this large, found in no cache, are compiled by the baseline
    /// compiler (Winch) to serve at once, then by Cranelift in the background and swapped
    /// in; `None` compiles everything with Cranelift first (`runtime.quick_start`).
    pub quick_start_min_bytes: Option<usize>,
    /// The plugins' key-value store (`[kv]`); set at start, like the rest of the runtime.
    pub kv: KvSettings,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KvSettings {
    pub backend: KvBackend,
    pub on_unavailable: OnUnavailable,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum KvBackend {
    #[default]
    Local,
    Redis(RedisSettings),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`
    pub url: String,
    /// Connecting, and each operation.
    pub timeout: Duration,
    /// How long an unreachable server is left alone before the next try.
    pub recheck: Duration,
    /// Keys are `{prefix}:{plugin}:{key}`.
    pub prefix: String,
}

/// What store operations do while a remote backend cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Use this process's local store.
    #[default]
    FallbackLocal,
    /// Return `unavailable` to the plugin, which goes on without state.
    FailOpen,
    /// Fail the request with 503.
    FailClosed,
}

/// An upstream: its endpoints and how requests are spread over them, checked and retried.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub endpoints: Vec<Endpoint>,
    pub strategy: Strategy,
    pub connect_timeout: Duration,
    /// One attempt, from sending the request until the response headers arrive.
    pub timeout: Duration,
    /// All attempts together, back-off included; `None`: attempts x `timeout` bounds it.
    pub total_timeout: Option<Duration>,
    /// Pooled connections idle this long are closed.
    pub idle_timeout: Duration,
    /// A recovered endpoint's share ramps from 10% to 100% over this long.
    pub slow_start: Option<Duration>,
    pub health_check: Option<HealthCheck>,
    pub passive_health: Option<PassiveHealth>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub retry: RetryPolicy,
    /// HTTPS to the endpoints; `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
    /// What the gateway speaks to the endpoints.
    pub protocol: UpstreamProtocol,
}

/// `upstreams.NAME.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 (h2 by ALPN over TLS, else h2c by prior knowledge), each connection carrying
    /// at most `max_concurrent_streams` requests at once; more connections open past it.
    H2 {
        max_concurrent_streams: u32,
    },
}

/// The streams one upstream HTTP/2 connection carries at once unless configured: the
/// common servers' advertised limit (nginx 128, Go 250, h2 crates 100+) rounded down.
pub const DEFAULT_UPSTREAM_H2_STREAMS: u32 = 100;

/// How Sluice verifies an upstream's certificate and who it is to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// A PEM CA bundle; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and verified in the certificate; `None`: each endpoint's host.
    pub server_name: Option<String>,
    /// A client certificate chain and key, for upstreams that ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: http::uri::Authority,
    pub weight: u32,
    pub state: EndpointState,
}

/// The operator's say over an endpoint, whatever its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    Up,
    /// Takes no new requests; requests already sent finish.
    Drain,
    /// Out of rotation.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    Random,
    P2c,
    ConsistentHash(KeySource),
}

/// Where a per-client key comes from (hashing, sticky splits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy endpoint out.
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http { method: http::Method, path: String, expected_statuses: Vec<u16> },
}

/// Outlier detection: endpoints failing in a row are ejected for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one doubles it, up to `max_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Never eject more than this share of the endpoints.
    pub max_ejected_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub open_timeout: Duration,
    pub half_open_requests: u32,
    pub failures: FailureKinds,
}

/// Which outcomes of an attempt count as failures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailureKinds {
    pub connect: bool,
    pub timeout: bool,
    /// Sorted.
    pub statuses: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 disables retries.
    pub attempts: u32,
    /// Response statuses retried (idempotent requests only).
    pub statuses: Vec<u16>,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Retries may add at most this share of requests...
    pub budget_ratio: f64,
    /// ...plus this many per second.
    pub budget_min_per_second: u32,
}

/// How instances of a plugin are used across requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceModel {
    /// Instances are pooled and reused across requests (fast; state may persist).
    Reuse,
    /// Every hook call gets a freshly instantiated and initialised instance (isolated).
    Fresh,
}

/// What a plugin's module is, and so how Sluice runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// A Wasm component for the `sluice:plugin` world (the SDKs build these).
    Component,
    /// A core-Wasm Extism plugin exporting `on_request` and/or `on_response`, which take and
    /// return JSON (docs/extism.md).
    Extism,
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
    pub kind: PluginKind,
    /// The `config` table, as the JSON text handed to the plugin's `init`, with the
    /// contents of `files` under `files`.
    pub config_json: String,
    /// The files read into the config: a change to one reloads the config.
    pub files: Vec<PathBuf>,
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
    /// What keeps a client on one version; `None`: each request is assigned on its own.
    pub sticky: Option<KeySource>,
    /// Roll back when the new version fails more than this share of its calls.
    pub max_error_rate: f64,
    /// Roll back when the new version's p99 hook time exceeds the old one's by more.
    pub max_p99_increase: Duration,
    /// No verdict before the new version has served this many calls.
    pub min_requests: u64,
    /// Promote once the new version has served this many calls within the limits.
    pub promote_after: u64,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    /// What the route matches.
    pub rule: crate::router::Rule,
    pub rewrite: Option<Rewrite>,
    /// Upstreams with their weights; one entry unless the route splits traffic.
    pub targets: Vec<(String, u32)>,
    /// Keeps a client on one split target.
    pub split_sticky: Option<KeySource>,
    pub plugins: Vec<String>,
    /// The most a plugin may buffer when it reads a body.
    pub max_body_bytes: u64,
    /// Requests on a connection without a verified client certificate get 403.
    pub require_client_cert: bool,
    /// Plain-HTTP requests get a 308 to `https://HOST[:port]/path`.
    pub https_redirect: Option<u16>,
    /// How WebSocket upgrades are proxied; `None`: they are not (the upstream sees a
    /// plain GET without `Upgrade`).
    pub websocket: Option<WebSocketSettings>,
    /// Response compression; `None`: responses pass as the upstream sent them.
    pub compression: Option<Arc<CompressionSettings>>,
    /// The most a compressed request body may decode to; `None`: bodies are not decoded.
    pub request_decompression: Option<u64>,
    /// The largest message a gRPC call on this route may send.
    pub grpc_max_message_bytes: u64,
}

/// gRPC's own default limit on a received message.
pub const DEFAULT_GRPC_MAX_MESSAGE_BYTES: u64 = 4 * 1024 * 1024;

/// Also what one request may hold in memory at once while its body is decoded (a bomb's
/// expansion within one read of input), so the default is small.
pub const DEFAULT_DECOMPRESSED_MAX_BYTES: u64 = 1024 * 1024;

/// A route's `compression` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionSettings {
    /// In the order of preference among those a client accepts equally.
    pub encodings: Vec<Encoding>,
    /// Bodies known to be smaller pass uncompressed.
    pub min_bytes: u64,
    /// Media types (`application/json`) or whole top-level types (`text/*`), lower case.
    pub content_types: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Br,
    Gzip,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

pub const DEFAULT_COMPRESSION_MIN_BYTES: u64 = 1024;
pub const DEFAULT_COMPRESSION_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/problem+json",
    "application/x-ndjson",
    "image/svg+xml",
];

/// A route's `websocket` table: the limits of one proxied socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSocketSettings {
    /// Closed after this long without a byte either way.
    pub idle_timeout: std::time::Duration,
    /// Closed after this long whatever it does.
    pub max_lifetime: std::time::Duration,
    /// A client frame declaring a larger payload closes the socket (1009).
    pub max_frame_bytes: u64,
}

pub const DEFAULT_WEBSOCKET_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
pub const DEFAULT_WEBSOCKET_MAX_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(24 * 60 * 60);
pub const DEFAULT_WEBSOCKET_MAX_FRAME_BYTES: u64 = 16 * 1024 * 1024;
/// Control frames carry at most 125 bytes (RFC 6455 5.5), so no smaller limit makes sense.
pub const MIN_WEBSOCKET_FRAME_BYTES: u64 = 125;
pub const MAX_WEBSOCKET_FRAME_BYTES: u64 = 1024 * 1024 * 1024;

/// The name of the listener `server.listen` opens.
pub const DEFAULT_LISTENER: &str = "default";

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: Arc<str>,
    pub listen: SocketAddr,
    /// `None`: plain HTTP (and h2c).
    pub tls: Option<TlsSettings>,
}

/// A listener's `tls` table: its certificates (the first is the default, served when the
/// client's SNI names none of them), and who may connect.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub certs: Vec<CertFiles>,
    /// TLS 1.2 and 1.3, or 1.3 only.
    pub tls13_only: bool,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertFiles {
    /// A PEM chain: the certificate first, then its intermediates.
    pub cert: PathBuf,
    /// A PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Whether a TLS listener asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// One is asked for and verified if sent; a client without one is served.
    Optional,
    /// A client without a verified certificate fails the handshake.
    Required,
}

/// Replaces the route's literal prefix before the request goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// `/api`: the matched prefix, without a trailing slash.
    pub prefix: String,
    /// `""` strips it; `/v2` replaces it.
    pub replacement: String,
}

/// `[admin]`: the operator's listener (metrics, health, the admin API).
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Every token the API accepts: `admin.token` (named `admin`), `admin.read_token`
    /// (named `read`) and each `[admin.tokens.NAME]`.
    pub tokens: Vec<AdminToken>,
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
}

/// One bearer token of the admin API and who holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminToken {
    /// Who the audit log says acted.
    pub name: String,
    /// `true`: reads and acts; `false`: reads only.
    pub may_act: bool,
    pub source: TokenSource,
}

/// Where an admin token comes from. Never printed: `Debug` says only where it is.
#[derive(Clone, PartialEq)]
pub enum TokenSource {
    Inline(String),
    /// Read at start; a missing file is created with a generated token (mode 0600).
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSource::File(p) => write!(f, "File({p:?})"),
        }
    }
}

/// `[metrics]`: histogram buckets and which optional label sets are on. Read at start: a
/// metric's buckets and labels cannot change while Prometheus scrapes it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// Off: requests, upstream attempts and plugin calls are not recorded, and `/metrics`
    /// answers 404.
    pub enabled: bool,
    /// Request and upstream durations, in seconds.
    pub duration_buckets: Vec<f64>,
    /// Plugin call durations, in seconds.
    pub plugin_buckets: Vec<f64>,
    /// Body sizes, in bytes.
    pub size_buckets: Vec<f64>,
    /// The request method on the request series.
    pub method_label: bool,
    /// The status code on the request series.
    pub status_label: bool,
    /// The endpoint on the upstream series.
    pub endpoint_label: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            // OpenTelemetry's advice for `http.server.request.duration`.
            duration_buckets: vec![
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            ],
            plugin_buckets: vec![
                0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
                0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            ],
            size_buckets: vec![
                0.0,
                100.0,
                1_000.0,
                10_000.0,
                100_000.0,
                1_000_000.0,
                10_000_000.0,
                100_000_000.0,
            ],
            method_label: true,
            status_label: true,
            endpoint_label: true,
        }
    }
}

/// `[access_log]`: one line per request.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSettings {
    pub format: AccessLogFormat,
    pub sink: LogSink,
    /// The share of requests logged, 0 to 1 (after the status filter).
    pub sample: f64,
    /// Only these statuses are logged (inclusive ranges); all when empty.
    pub statuses: Vec<(u16, u16)>,
    /// Lines waiting for the writer; beyond this they are dropped and counted.
    pub buffer_lines: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    /// NCSA common log format.
    Common,
    /// Common, plus referer and user agent.
    Combined,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogSink {
    Stdout,
    File {
        path: PathBuf,
        /// Rotate when the file reaches this size.
        max_bytes: Option<u64>,
        /// Rotate when the hour or the day changes (UTC).
        every: Option<RotateEvery>,
        /// Rotated files kept beside the current one.
        keep: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateEvery {
    Hour,
    Day,
}

/// `[tracing]`: OpenTelemetry spans exported over OTLP/HTTP (protobuf). Read at start.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The collector's traces URL (`http://host:4318/v1/traces`).
    pub endpoint: http::Uri,
    /// The share of new traces recorded, 0 to 1.
    pub sample_ratio: f64,
    /// Follow the sampled flag of a client's `traceparent` instead of the ratio.
    pub parent_based: bool,
    pub service_name: String,
    /// Spans waiting for export; beyond this they are dropped and counted.
    pub max_queue_spans: usize,
    /// One export's time limit.
    pub timeout: Duration,
}
