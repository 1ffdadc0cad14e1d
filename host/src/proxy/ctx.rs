//! What the gateway knows about one request as it passes through the stages: written by
//! each stage, read in [`super::finish`], where metrics and the access log are recorded.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::error::Origin;
use crate::message::ConnInfo;
use crate::message::RequestMeta;
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
    /// Set by [`super::finish`].
    pub outcome: Option<Outcome>,
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
    pub fn new(conn: Arc<ConnInfo>, id: HeaderValue, parts: &http::request::Parts) -> Self {
        Self {
            scheme: conn.scheme(),
            conn,
            id,
            method: parts.method.clone(),
            version: parts.version,
            meta: None,
            upstream: Trace::default(),
            timings: Timings {
                arrived: Instant::now(),
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
