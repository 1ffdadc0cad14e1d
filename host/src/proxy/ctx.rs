//! What the gateway knows about one request as it passes through the stages: written by
//! each stage, finished in [`super::finish`], and recorded (metrics, the access log) when
//! it is dropped: after the response body's last byte, or when the client went away first.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::error::Origin;
use crate::message::{BodyWatch, ConnInfo, RequestMeta};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics;
use crate::telemetry::trace_context::TraceContext;
use crate::upstream::Trace;

pub struct RequestCtx {
    /// The connection the request came on.
    pub conn: Arc<ConnInfo>,
    /// The request id, as it is sent upstream and back to the client.
    pub id: HeaderValue,
    pub method: http::Method,
    /// The scheme the client spoke (from the connection: `https` behind TLS).
    pub scheme: http::uri::Scheme,
    /// The HTTP version the client spoke.
    pub version: http::Version,
    /// Set once the request is routed.
    pub meta: Option<Arc<RequestMeta>>,
    /// What the upstream side did: which upstream, and each attempt with its outcome.
    pub upstream: Trace,
    pub timings: Timings,
    /// The plugin that answered locally, if one did.
    pub answered_by: Option<Arc<str>>,
    /// Set by [`super::finish`]; `None` if the client went away before the response.
    pub outcome: Option<Outcome>,
    /// The path the client asked for (normalised once it is), without the query.
    pub path: Option<http::uri::PathAndQuery>,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    /// The client's body while it streams, with the bytes read so far.
    pub body_in: Option<Arc<BodyWatch>>,
    /// The W3C trace this request belongs to, and the gateway's span in it.
    pub trace: TraceContext,
    /// Whether this request's spans are recorded (`[tracing]` on, and sampled).
    pub traced: bool,
    /// The wall-clock time of arrival, when the request is traced (for its spans; durations
    /// use `timings`, and the access log stamps its line when it writes it).
    pub arrived_at: Option<std::time::SystemTime>,
    /// Where this request's line goes, if the access log is on.
    pub access_log: Option<Arc<AccessLog>>,
    /// Response body bytes sent, and how the body ended.
    pub bytes_out: u64,
    pub body_end: BodyEnd,
    /// The client asked for a WebSocket and its route proxies them.
    pub upgrade: Option<super::tunnel::ClientUpgrade>,
    /// The upstream answered the upgrade with 101.
    pub switched: Option<super::tunnel::UpstreamUpgrade>,
    /// The client's `Accept-Encoding`, kept when its route compresses responses.
    pub accept_encoding: Vec<HeaderValue>,
    /// The request is a gRPC call: the gateway's own failures are answered as statuses.
    pub grpc: bool,
    /// It came as gRPC-Web, to be answered so.
    pub web: Option<super::grpc::web::Web>,
    /// The call's deadline, from its `grpc-timeout`.
    pub deadline: Option<Instant>,
    /// The status the call's response carries, as it passes (gRPC calls only).
    pub grpc_status: Option<Arc<super::grpc::CallStatus>>,
}

/// How the response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Not yet, or the response was never sent (the client left first).
    Pending,
    Complete,
    /// The body failed part way (the upstream broke it).
    Failed,
    /// The client stopped reading before the end.
    Abandoned,
}

/// When the request arrived, and how long each stage it reached took. The upstream's
/// time is in each attempt's record ([`Trace`]).
#[derive(Debug)]
pub struct Timings {
    pub arrived: Instant,
    pub request_phases: Option<Duration>,
    pub response_phases: Option<Duration>,
    /// From arrival to the response head leaving the gateway (the body may still stream).
    pub total: Duration,
}

/// How the request ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: http::StatusCode,
    /// Where a failure came from; `None` when the request was served.
    pub error: Option<Origin>,
    /// The plugin that answered locally, if one did.
    pub answered_by: Option<Arc<str>>,
}

impl RequestCtx {
    pub fn new(
        conn: Arc<ConnInfo>,
        id: HeaderValue,
        parts: &http::request::Parts,
        access_log: Option<Arc<AccessLog>>,
    ) -> Self {
        metrics().active_requests.inc();
        // Only the access log reads these: without it, two header lookups saved.
        let header = |name| access_log.as_ref().and_then(|_| parts.headers.get(name).cloned());
        let mut trace = TraceContext::from_headers(&parts.headers);
        let traced = match crate::telemetry::otel::tracer() {
            Some(t) => {
                let parent_sampled = trace.parent_id.map(|_| trace.sampled());
                let sampled = t.sample(trace.trace_id, parent_sampled);
                trace.set_sampled(sampled);
                sampled
            }
            None => false,
        };
        // Calls are POSTs: other requests skip the header lookup.
        let (grpc, web) = match parts.method == http::Method::POST {
            true => super::grpc::kind(&parts.headers),
            false => (false, None),
        };
        let arrived = Instant::now();
        let deadline = grpc.then(|| super::grpc::timeout(&parts.headers)).flatten();
        Self {
            grpc,
            web,
            deadline: deadline.and_then(|t| arrived.checked_add(t)),
            grpc_status: None,
            traced,
            arrived_at: traced.then(std::time::SystemTime::now),
            path: parts.uri.path_and_query().cloned(),
            user_agent: header(http::header::USER_AGENT),
            referer: header(http::header::REFERER),
            body_in: None,
            trace,
            access_log,
            bytes_out: 0,
            body_end: BodyEnd::Pending,
            upgrade: None,
            switched: None,
            accept_encoding: Vec::new(),
            scheme: conn.scheme(),
            conn,
            id,
            method: parts.method.clone(),
            version: parts.version,
            meta: None,
            upstream: Trace::default(),
            timings: Timings {
                arrived,
                request_phases: None,
                response_phases: None,
                total: Duration::ZERO,
            },
            answered_by: None,
            outcome: None,
        }
    }

    /// The route's name, once routed.
    pub fn route(&self) -> Option<&str> {
        self.meta.as_deref().map(|m| &*m.route)
    }

    /// The id as text (always visible ASCII).
    pub fn id(&self) -> &str {
        self.id.to_str().unwrap_or_default()
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        metrics().active_requests.dec();
        super::record::request(self);
    }
}
