//! A traced request's spans, by the OpenTelemetry HTTP semantic conventions: the
//! server span `{method} {route}`, a child per plugin call, and a client span per
//! upstream attempt, whose id the upstream got as its parent in `traceparent`.

use std::borrow::Cow;
use std::time::SystemTime;

use http::StatusCode;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{KeyValue, TraceId};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::proxy::ctx::RequestCtx;
use crate::telemetry::method_label;
use crate::telemetry::otel::Tracer;
use crate::upstream::Outcome;

pub(super) fn record(
    tracer: &Tracer,
    ctx: &RequestCtx,
    status: StatusCode,
    origin: Option<&'static str>,
    grpc_status: Option<u32>,
) {
    let trace_id = TraceId::from(ctx.trace.trace_id);
    let server = SpanId::from(ctx.trace.span_id);
    let arrived = ctx.timings.arrived.into_std();
    // Set for every traced request; a fallback rather than a panic on the recording path.
    let arrived_at = ctx.arrived_at.unwrap_or_else(std::time::SystemTime::now);
    let at = |t: std::time::Instant| arrived_at + t.saturating_duration_since(arrived);
    let span = |id: SpanId, parent: SpanId, kind, name: Cow<'static, str>| SpanData {
        span_context: SpanContext::new(
            trace_id,
            id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: kind,
        name,
        start_time: arrived_at,
        end_time: arrived_at,
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: tracer.scope.clone(),
    };
    let method = method_label(&ctx.method);
    let shown = if method == "_OTHER" { "HTTP" } else { method };
    let name = match ctx.route() {
        Some(route) => format!("{shown} {route}"),
        None => shown.to_owned(),
    };
    let parent = ctx.trace.parent_id.map_or(SpanId::INVALID, SpanId::from);
    let mut root = span(server, parent, SpanKind::Server, name.into());
    root.parent_span_is_remote = ctx.trace.parent_id.is_some();
    root.end_time = SystemTime::now();
    let mut attrs = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("url.scheme", ctx.scheme.to_string()),
        KeyValue::new("url.path", ctx.path.as_ref().map_or("", |p| p.path()).to_owned()),
        KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        KeyValue::new("network.protocol.version", protocol_version(ctx.version)),
        KeyValue::new("client.address", ctx.conn.peer.ip().to_string()),
        KeyValue::new("sluice.request_id", ctx.id().to_owned()),
    ];
    if let Some(route) = ctx.route() {
        attrs.push(KeyValue::new("http.route", route.to_owned()));
    }
    if let Some(plugin) = ctx.outcome.as_ref().and_then(|o| o.answered_by.as_deref()) {
        attrs.push(KeyValue::new("sluice.answered_by", plugin.to_owned()));
    }
    if let Some(origin) = origin {
        attrs.push(KeyValue::new("sluice.error_origin", origin));
    }
    if let Some(code) = grpc_status {
        attrs.push(KeyValue::new("rpc.system", "grpc"));
        attrs.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    }
    if status.is_server_error() {
        attrs.push(KeyValue::new("error.type", status.as_str().to_owned()));
        root.status = Status::error(origin.unwrap_or("").to_owned());
    }
    root.attributes = attrs;
    tracer.record(root);
    let calls = ctx.meta.as_ref().and_then(|m| m.calls.as_ref());
    for call in
        calls.map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
    {
        let name = format!("plugin {} {}", call.plugin, call.phase);
        let mut s = span(
            SpanId::from(crate::telemetry::trace_context::TraceContext::new_span_id()),
            server,
            SpanKind::Internal,
            name.into(),
        );
        s.start_time = at(call.started);
        s.end_time = s.start_time + call.took;
        s.attributes = vec![
            KeyValue::new("sluice.plugin.name", call.plugin.to_string()),
            KeyValue::new("sluice.plugin.phase", call.phase),
            KeyValue::new("sluice.plugin.outcome", call.outcome),
        ];
        if let Some(status) = call.status {
            s.attributes
                .push(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        }
        if !matches!(call.outcome, "continue" | "local_reply") {
            s.status = Status::error(call.outcome);
        }
        tracer.record(s);
    }
    for (i, attempt) in ctx.upstream.attempts.iter().enumerate() {
        let Some(id) = attempt.span_id else { continue };
        let mut s = span(SpanId::from(id), server, SpanKind::Client, method.into());
        s.start_time = at(attempt.started.into_std());
        s.end_time = s.start_time + attempt.took;
        let endpoint = &attempt.endpoint;
        s.attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("server.address", endpoint.host().to_owned()),
            KeyValue::new("server.port", i64::from(endpoint.port_u16().unwrap_or(80))),
            KeyValue::new(
                "sluice.upstream",
                ctx.upstream.upstream.as_deref().unwrap_or("").to_owned(),
            ),
            KeyValue::new("http.request.resend_count", i as i64),
        ];
        match attempt.outcome {
            Some(Outcome::Status(st)) => {
                s.attributes
                    .push(KeyValue::new("http.response.status_code", i64::from(st.as_u16())));
                if st.is_server_error() {
                    s.attributes.push(KeyValue::new("error.type", st.as_str().to_owned()));
                    s.status = Status::error("");
                }
            }
            other => {
                let kind = match other {
                    Some(Outcome::TimedOut) => "timeout",
                    Some(Outcome::ConnectFailed) => "connect_failed",
                    Some(Outcome::Failed) => "failed",
                    _ => "client_fault",
                };
                s.attributes.push(KeyValue::new("error.type", kind));
                s.status = Status::error(kind);
            }
        }
        tracer.record(s);
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}
