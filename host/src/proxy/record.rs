//! Recording a request once it is over: its metrics and its access-log line, from its
//! [`RequestCtx`]. "Over" is when the response body's last byte left (or the client went
//! away), so durations and byte counts cover the whole exchange; the response's body is
//! wrapped in [`Recorded`] to count it and to hold the context until then.

use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde::Serialize;

use super::ctx::{BodyEnd, RequestCtx};
use crate::config::AccessLogFormat;
use crate::message::{BoxBody, BoxError};
use crate::telemetry::{method_label, metrics};

/// nginx's "client closed request": the client left before the response.
const CLIENT_CLOSED: u16 = 499;

/// Records `ctx` (called as it is dropped).
pub(super) fn request(ctx: &RequestCtx) {
    let m = metrics();
    let total = ctx.timings.arrived.elapsed();
    let (status, origin) = match &ctx.outcome {
        Some(o) => (o.status, o.error.map(|o| o.label())),
        None => (
            StatusCode::from_u16(CLIENT_CLOSED).expect("a valid status"),
            Some(super::Origin::Downstream.label()),
        ),
    };
    let route = ctx.route().unwrap_or_default();
    let method = method_label(&ctx.method);
    let mut labels = smallvec::SmallVec::<[&str; 4]>::new();
    labels.push(route);
    if m.settings.method_label {
        labels.push(method);
    }
    if m.settings.status_label {
        labels.push(status.as_str());
    }
    m.request_duration.with_label_values(&labels).observe(total.as_secs_f64());
    labels.push(origin.unwrap_or_default());
    m.requests.with_label_values(&labels).inc();
    let bytes_in = ctx.body_in.as_ref().map_or(0, |w| w.bytes());
    m.request_body_size.with_label_values(&[route]).observe(bytes_in as f64);
    m.response_body_size.with_label_values(&[route]).observe(ctx.bytes_out as f64);
    if ctx.traced
        && let Some(tracer) = crate::telemetry::otel::tracer()
    {
        spans::record(tracer, ctx, status, origin);
    }
    if let Some(log) = &ctx.access_log
        && log.wants(status.as_u16())
    {
        let line = Line::of(ctx, status.as_u16(), origin, bytes_in, total);
        log.write(match log.format() {
            AccessLogFormat::Json => serde_json::to_string(&line).unwrap_or_default(),
            AccessLogFormat::Common => line.clf(false),
            AccessLogFormat::Combined => line.clf(true),
        });
    }
}

/// One access-log line's fields. No header but the user agent and referer is ever read,
/// and no query string (where API keys and tokens travel), so no secret reaches the log.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    client: String,
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    /// From arrival to the response body's end.
    duration_ms: f64,
    /// Time spent in upstream attempts (to each response head), summed.
    upstream_ms: Option<f64>,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    endpoint: Option<&'a str>,
    attempts: usize,
    answered_by: Option<&'a str>,
    error_origin: Option<&'a str>,
    /// How the response body ended: complete, failed, abandoned (by the client), or none
    /// (no response was sent).
    body: &'static str,
    trace_id: String,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
}

impl<'a> Line<'a> {
    fn of(
        ctx: &'a RequestCtx,
        status: u16,
        origin: Option<&'a str>,
        bytes_in: u64,
        total: Duration,
    ) -> Self {
        let attempts = &ctx.upstream.attempts;
        let upstream_time: Duration = attempts.iter().map(|a| a.took).sum();
        let text = |v: &'a Option<http::HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok());
        Line {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: ctx.id(),
            client: ctx.conn.peer.to_string(),
            method: ctx.method.as_str(),
            path: ctx.path.as_ref().map_or("", |p| p.path()),
            protocol: protocol(ctx.version),
            status,
            bytes_in,
            bytes_out: ctx.bytes_out,
            duration_ms: ms(total),
            upstream_ms: (!attempts.is_empty()).then(|| ms(upstream_time)),
            route: ctx.route(),
            upstream: ctx.upstream.upstream.as_deref(),
            endpoint: attempts.last().map(|a| a.endpoint.as_str()),
            attempts: attempts.len(),
            answered_by: ctx.outcome.as_ref().and_then(|o| o.answered_by.as_deref()),
            error_origin: origin,
            body: match ctx.body_end {
                BodyEnd::Pending => "none",
                BodyEnd::Complete => "complete",
                BodyEnd::Failed => "failed",
                BodyEnd::Abandoned => "abandoned",
            },
            trace_id: ctx.trace.trace_id_hex(),
            user_agent: text(&ctx.user_agent),
            // Only where the client came from, not what it carried in its query.
            referer: text(&ctx.referer).map(|r| r.split(['?', '#']).next().unwrap_or_default()),
        }
    }

    /// NCSA common log format (with `combined`: referer and user agent), then the
    /// gateway's fields as `key=value`.
    fn clf(&self, combined: bool) -> String {
        let mut s = String::with_capacity(256);
        let host = self.client.rsplit_once(':').map_or(&*self.client, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let time = chrono::DateTime::parse_from_rfc3339(&self.time)
            .map(|t| t.format("%d/%b/%Y:%H:%M:%S %z").to_string())
            .unwrap_or_default();
        let _ = write!(s, "{host} - - [{time}] \"{} ", self.method);
        quoted(&mut s, self.path);
        let _ = write!(s, " {}\" {} {}", self.protocol, self.status, self.bytes_out);
        if combined {
            s.push_str(" \"");
            quoted(&mut s, self.referer.unwrap_or("-"));
            s.push_str("\" \"");
            quoted(&mut s, self.user_agent.unwrap_or("-"));
            s.push('"');
        }
        let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
        let _ = write!(
            s,
            " request_id={} route={} upstream={} endpoint={} attempts={} bytes_in={} \
             duration_ms={:.3} upstream_ms={} answered_by={} error_origin={} body={} trace_id={}",
            self.request_id,
            or_dash(self.route),
            or_dash(self.upstream),
            or_dash(self.endpoint),
            self.attempts,
            self.bytes_in,
            self.duration_ms,
            self.upstream_ms.map_or("-".to_owned(), |m| format!("{m:.3}")),
            or_dash(self.answered_by),
            or_dash(self.error_origin),
            self.body,
            self.trace_id,
        );
        s
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Text inside a quoted field: `"` and `\` escaped, anything not printable ASCII as
/// `\xHH`, so no client can forge a field or a line.
fn quoted(out: &mut String, text: &str) {
    for b in text.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts the bytes it sends and holds the request's context
    /// until it ends, when the context is dropped and the request recorded.
    pub(super) struct Recorded {
        #[pin]
        inner: BoxBody,
        ctx: RequestCtx,
    }

    impl PinnedDrop for Recorded {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.ctx.body_end == BodyEnd::Pending {
                // hyper stops polling a body that says it has ended (an empty one, or one
                // whose Content-Length was sent); any other is left unfinished.
                this.ctx.body_end = match this.inner.is_end_stream() {
                    true => BodyEnd::Complete,
                    false => BodyEnd::Abandoned,
                };
            }
        }
    }
}

impl Recorded {
    pub(super) fn new(inner: BoxBody, ctx: RequestCtx) -> Self {
        Self { inner, ctx }
    }
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.ctx.bytes_out += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(Some(Err(_))) => this.ctx.body_end = BodyEnd::Failed,
            Poll::Ready(None) => this.ctx.body_end = BodyEnd::Complete,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

mod spans {
    //! A traced request's spans, by the OpenTelemetry HTTP semantic conventions: the
    //! server span `{method} {route}`, a child per plugin call, and a client span per
    //! upstream attempt, whose id the upstream got as its parent in `traceparent`.

    use std::borrow::Cow;
    use std::time::SystemTime;

    use http::StatusCode;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState};
    use opentelemetry::{KeyValue, TraceId};
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

    use super::super::ctx::RequestCtx;
    use crate::telemetry::method_label;
    use crate::telemetry::otel::Tracer;
    use crate::upstream::Outcome;

    pub(super) fn record(
        tracer: &Tracer,
        ctx: &RequestCtx,
        status: StatusCode,
        origin: Option<&'static str>,
    ) {
        let trace_id = TraceId::from(ctx.trace.trace_id);
        let server = SpanId::from(ctx.trace.span_id);
        let arrived = ctx.timings.arrived.into_std();
        let at = |t: std::time::Instant| ctx.arrived_at + t.saturating_duration_since(arrived);
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
            start_time: ctx.arrived_at,
            end_time: ctx.arrived_at,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_cannot_break_out() {
        let mut s = String::new();
        quoted(&mut s, "a\"b\\c\nd\u{7f}é");
        assert_eq!(s, "a\\\"b\\\\c\\x0Ad\\x7F\\xC3\\xA9");
    }
}
