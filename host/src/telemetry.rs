//! What the gateway tells its operator: Prometheus metrics ([`metrics`]), the access log
//! ([`access_log`]), the W3C trace context each request carries ([`trace_context`]), and
//! OpenTelemetry spans exported over OTLP ([`otel`]).
//! A leaf: it knows the config, nothing of plugins, upstreams or requests, which record
//! into it where things happen (a request in `proxy/record.rs` when its response body
//! ends, an attempt in `upstream/send.rs`, a plugin call in `plugin/series.rs`).

pub mod access_log;
pub mod metrics;
pub mod otel;
pub mod trace_context;

pub use metrics::{Metrics, init as init_metrics, method_label, metrics};
