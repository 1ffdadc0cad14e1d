//! The gateway's own metrics, in one Prometheus registry for the process, named after the
//! OpenTelemetry HTTP semantic conventions mapped to Prometheus (seconds, `_total`
//! counters, `http_route` rather than the raw path). Each series is described in
//! docs/observability.md.
//!
//! Counters and histograms are recorded where the event happens (a request's end, an
//! upstream attempt, a plugin call, a reload). Gauges that describe the running gateway
//! (endpoint health, breaker state, idle instances, rollout share) are read from the live
//! gateway when scraped (`admin::scrape`), so a removed endpoint or plugin leaves no stale
//! series behind.

use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::config::MetricsSettings;

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Sets the buckets and label sets from the first config; later calls keep the first
/// (a series cannot change shape while it is scraped). Returns whether these settings are
/// the ones in force.
pub fn init(settings: &MetricsSettings) -> bool {
    &METRICS.get_or_init(|| Metrics::new(settings.clone())).settings == settings
}

/// The process's metrics (with the default settings if [`init`] was not called).
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(MetricsSettings::default()))
}

pub struct Metrics {
    pub registry: Registry,
    pub settings: MetricsSettings,
    // Downstream.
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub request_body_size: HistogramVec,
    pub response_body_size: HistogramVec,
    pub grpc_calls: IntCounterVec,
    pub active_requests: IntGauge,
    pub active_connections: IntGauge,
    pub connections_refused: IntCounter,
    pub http2_floods: IntCounter,
    pub websockets_active: IntGaugeVec,
    pub websocket_closes: IntCounterVec,
    // Upstreams.
    pub attempts: IntCounterVec,
    pub attempt_duration: HistogramVec,
    pub retries: IntCounterVec,
    pub budget_exhausted: IntCounterVec,
    pub ejections: IntCounterVec,
    pub breaker_transitions: IntCounterVec,
    pub endpoint_healthy: IntGaugeVec,
    pub endpoint_in_flight: IntGaugeVec,
    pub breaker_state: IntGaugeVec,
    /// Each TLS listener certificate's expiry (Unix seconds), set at scrape time.
    pub tls_cert_expiry: IntGaugeVec,
    // Plugins.
    pub plugin_calls: IntCounterVec,
    pub plugin_duration: HistogramVec,
    pub plugin_fail_open: IntCounterVec,
    pub plugin_instances_idle: IntGaugeVec,
    pub plugin_instances_busy: IntGaugeVec,
    pub plugin_waits: IntCounterVec,
    pub plugin_instantiations: IntCounterVec,
    pub module_loads: IntCounterVec,
    pub module_load_seconds: Histogram,
    pub rollout_share: prometheus::GaugeVec,
    pub rollout_verdicts: IntCounterVec,
    pub kv_operations: IntCounterVec,
    pub kv_errors: IntCounterVec,
    // Config.
    pub reloads: IntCounterVec,
    pub swaps: IntCounterVec,
    pub config_version: IntGauge,
    pub access_log_dropped: IntCounterVec,
    pub trace_spans: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = HistogramVec::new(opts, labels).expect("a valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Metrics {
    fn new(settings: MetricsSettings) -> Self {
        let r = Registry::new();
        let s = &settings;
        // The request series: route always, method and status when switched on.
        let mut req_labels = vec!["http_route"];
        if s.method_label {
            req_labels.push("http_request_method");
        }
        if s.status_label {
            req_labels.push("http_response_status_code");
        }
        let mut counted = req_labels.clone();
        counted.push("error_origin");
        let endpoint: &[&str] =
            if s.endpoint_label { &["upstream", "endpoint"] } else { &["upstream"] };
        let with = |extra: &'static str| [endpoint, &[extra]].concat();
        let single = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("a valid metric");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let module_load_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_module_load_duration_seconds",
                "Time to compile a plugin module, or to load it from the compiled cache",
            )
            .buckets(vec![0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 180.0]),
        )
        .expect("a valid metric");
        r.register(Box::new(module_load_seconds.clone())).expect("registered once");
        let build = gauge(
            &r,
            "sluice_build_info",
            "The running build: version, git commit, plugin WIT world",
            &["version", "commit", "wit_world"],
        );
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("SLUICE_GIT_COMMIT"),
                sluice_bindings::WORLD_VERSION,
            ])
            .set(1);
        let metrics = Self {
            requests: counter(
                &r,
                "http_server_requests_total",
                "Requests answered, by route, method, status and where a failure came from",
                &counted,
            ),
            request_duration: histogram(
                &r,
                "http_server_request_duration_seconds",
                "From a request's arrival to the end of its response body",
                &req_labels,
                &s.duration_buckets,
            ),
            request_body_size: histogram(
                &r,
                "http_server_request_body_size_bytes",
                "Request body bytes read from the client",
                &["http_route"],
                &s.size_buckets,
            ),
            response_body_size: histogram(
                &r,
                "http_server_response_body_size_bytes",
                "Response body bytes sent to the client",
                &["http_route"],
                &s.size_buckets,
            ),
            grpc_calls: counter(
                &r,
                "sluice_grpc_calls_total",
                "gRPC and gRPC-Web calls answered, by route and the gRPC status they ended with \
                 (CANCELLED when the client left first, UNKNOWN when none was sent)",
                &["http_route", "grpc_code"],
            ),
            active_requests: single(
                "http_server_active_requests",
                "Requests in flight (until their response body ends)",
            ),
            active_connections: single(
                "sluice_connections_active",
                "Client connections open on the traffic listeners",
            ),
            connections_refused: {
                let c = IntCounter::new(
                    "sluice_connections_refused_total",
                    "Connections closed at once: server.max_connections or \
                     max_connections_per_ip reached",
                )
                .expect("a valid metric");
                r.register(Box::new(c.clone())).expect("registered once");
                c
            },
            http2_floods: {
                let c = IntCounter::new(
                    "sluice_http2_floods_total",
                    "HTTP/2 connections closed for flooding: resetting more streams than they \
                     let finish (server.http2.max_client_resets), or refused by h2 itself \
                     (ENHANCE_YOUR_CALM)",
                )
                .expect("a valid metric");
                r.register(Box::new(c.clone())).expect("registered once");
                c
            },
            websockets_active: gauge(
                &r,
                "sluice_websockets_active",
                "WebSocket connections open, by route",
                &["http_route"],
            ),
            websocket_closes: counter(
                &r,
                "sluice_websocket_closes_total",
                "WebSocket connections ended, by route and reason: closed, idle_timeout, \
                 max_lifetime, shutdown, frame_too_large, error",
                &["http_route", "reason"],
            ),
            attempts: counter(
                &r,
                "sluice_upstream_attempts_total",
                "Attempts sent upstream, by outcome: a status class (2xx..5xx), timeout, \
                 connect_failed, failed, or client_fault",
                &with("outcome"),
            ),
            attempt_duration: histogram(
                &r,
                "sluice_upstream_attempt_duration_seconds",
                "From sending an attempt to its response head (or its failure)",
                endpoint,
                &s.duration_buckets,
            ),
            retries: counter(
                &r,
                "sluice_upstream_retries_total",
                "Attempts that were retries",
                &["upstream"],
            ),
            budget_exhausted: counter(
                &r,
                "sluice_upstream_retry_budget_exhausted_total",
                "Retries refused because the upstream's retry budget was spent",
                &["upstream"],
            ),
            ejections: counter(
                &r,
                "sluice_upstream_outlier_ejections_total",
                "Endpoints ejected by passive health checks",
                &["upstream", "endpoint"],
            ),
            breaker_transitions: counter(
                &r,
                "sluice_upstream_breaker_transitions_total",
                "Circuit-breaker state changes, by the state entered",
                &["upstream", "endpoint", "state"],
            ),
            tls_cert_expiry: gauge(
                &r,
                "sluice_tls_certificate_expiry_timestamp_seconds",
                "When a TLS listener's certificate expires, in Unix seconds (name: its first DNS name)",
                &["listener", "name"],
            ),
            endpoint_healthy: gauge(
                &r,
                "sluice_upstream_endpoint_healthy",
                "1 if the endpoint may be picked: up, passing health checks, not ejected",
                &["upstream", "endpoint"],
            ),
            endpoint_in_flight: gauge(
                &r,
                "sluice_upstream_endpoint_in_flight",
                "Requests in flight to the endpoint",
                &["upstream", "endpoint"],
            ),
            breaker_state: gauge(
                &r,
                "sluice_upstream_breaker_state",
                "1 for the circuit breaker's current state (closed, open, half_open)",
                &["upstream", "endpoint", "state"],
            ),
            plugin_calls: counter(
                &r,
                "sluice_plugin_calls_total",
                "Plugin hook calls, by outcome: continue, local_reply (with its status), \
                 trap, timeout, error, overloaded, store_closed",
                &["plugin", "phase", "outcome", "status"],
            ),
            plugin_duration: histogram(
                &r,
                "sluice_plugin_call_duration_seconds",
                "One plugin hook call, including waiting for an instance",
                &["plugin", "phase"],
                &s.plugin_buckets,
            ),
            plugin_fail_open: counter(
                &r,
                "sluice_plugin_fail_open_total",
                "Failed plugin calls skipped because of on_error = \"continue\"",
                &["plugin", "phase"],
            ),
            plugin_instances_idle: gauge(
                &r,
                "sluice_plugin_instances_idle",
                "Instances kept warm in the plugin's pool",
                &["plugin"],
            ),
            plugin_instances_busy: gauge(
                &r,
                "sluice_plugin_instances_busy",
                "Instances running a call now",
                &["plugin"],
            ),
            plugin_waits: counter(
                &r,
                "sluice_plugin_instance_waits_total",
                "Calls that waited for an instance (all of the plugin's max_instances busy)",
                &["plugin"],
            ),
            plugin_instantiations: counter(
                &r,
                "sluice_plugin_instantiations_total",
                "Instances created (the pool had none idle)",
                &["plugin"],
            ),
            module_loads: counter(
                &r,
                "sluice_module_loads_total",
                "Plugin modules made ready, by source: compiled (Cranelift), cache (the compiled cache), baseline (the baseline compiler, runtime.quick_start), or memory (already loaded)",
                &["source"],
            ),
            module_load_seconds,
            rollout_share: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "sluice_rollout_share",
                        "The share of requests the new version of a plugin serves (0 to 1)",
                    ),
                    &["plugin", "state"],
                )
                .expect("a valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            rollout_verdicts: counter(
                &r,
                "sluice_rollout_verdicts_total",
                "Rollout decisions: promoted or rolled_back",
                &["plugin", "verdict"],
            ),
            kv_operations: counter(
                &r,
                "sluice_kv_operations_total",
                "Key-value store operations plugins made, by backend and operation",
                &["backend", "op"],
            ),
            kv_errors: counter(
                &r,
                "sluice_kv_errors_total",
                "Key-value store operations that failed (store unreachable or timed out)",
                &["backend", "op"],
            ),
            reloads: counter(
                &r,
                "sluice_config_reloads_total",
                "Config reloads, by result: applied or refused",
                &["result"],
            ),
            swaps: counter(
                &r,
                "sluice_plugin_swaps_total",
                "Plugin modules hot-swapped by a reload",
                &["plugin"],
            ),
            config_version: single(
                "sluice_config_version",
                "The version of the config serving (1 at start, counting up per applied change)",
            ),
            access_log_dropped: counter(
                &r,
                "sluice_access_log_dropped_total",
                "Access-log lines not written: full (the writer fell behind) or error (the \
                 sink failed)",
                &["reason"],
            ),
            trace_spans: counter(
                &r,
                "sluice_trace_spans_total",
                "Finished spans: exported, failed (the collector refused or did not answer), \
                 or dropped (the export queue was full)",
                &["result"],
            ),
            registry: r,
            settings,
        };
        // Series an alert watches start at 0, rather than appearing with their first event.
        for reason in ["full", "error"] {
            metrics.access_log_dropped.with_label_values(&[reason]);
        }
        for result in ["exported", "failed", "dropped"] {
            metrics.trace_spans.with_label_values(&[result]);
        }
        for result in ["applied", "refused"] {
            metrics.reloads.with_label_values(&[result]);
        }
        metrics
    }
}

/// The method as a label: one of the standard methods, or `_OTHER` (a client cannot mint
/// series by inventing methods).
pub fn method_label(m: &http::Method) -> &'static str {
    use http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::CONNECT => "CONNECT",
        M::OPTIONS => "OPTIONS",
        M::TRACE => "TRACE",
        M::PATCH => "PATCH",
        _ => "_OTHER",
    }
}
