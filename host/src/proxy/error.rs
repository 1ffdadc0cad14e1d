//! Every way a request can fail, and the one place where failures become HTTP responses.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::normalize::Refused;
use crate::message::{BoxBody, ClientBodyError};
use crate::plugin::{FailureKind, PluginError};

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Downstream,
    Upstream,
    Plugin,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("refused: {0}")]
    Refused(Refused),
    #[error(transparent)]
    ClientBody(ClientBodyError),
    #[error("no route for this path")]
    NoRoute,
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("cannot connect to upstream {endpoint}: {reason}")]
    UpstreamConnect { endpoint: String, reason: String },
    #[error("upstream {endpoint} did not answer within {timeout:?}")]
    UpstreamTimeout { endpoint: String, timeout: Duration },
    #[error("upstream {endpoint} failed: {reason}")]
    Upstream { endpoint: String, reason: String },
    #[error("upstream {upstream:?} has no healthy endpoint")]
    NoHealthyEndpoint { upstream: String },
    #[error("upstream {upstream:?}: every healthy endpoint's circuit is open")]
    CircuitOpen { upstream: String, retry_after: Duration },
}

impl ProxyError {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ProxyError::Refused(_) => S::BAD_REQUEST,
            ProxyError::ClientBody(e) => e.status(),
            ProxyError::NoRoute => S::NOT_FOUND,
            ProxyError::Plugin(e) => match e.kind {
                FailureKind::Overloaded(_) | FailureKind::StoreClosed(_) => S::SERVICE_UNAVAILABLE,
                _ => S::INTERNAL_SERVER_ERROR,
            },
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } => S::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => S::GATEWAY_TIMEOUT,
            ProxyError::NoHealthyEndpoint { .. } | ProxyError::CircuitOpen { .. } => {
                S::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::NoRoute | ProxyError::Refused(_) | ProxyError::ClientBody(_) => {
                Origin::Downstream
            }
            ProxyError::Plugin(_) => Origin::Plugin,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::NoHealthyEndpoint { .. }
            | ProxyError::CircuitOpen { .. } => Origin::Upstream,
        }
    }

    /// The client sees a short plain-text reason; details go to the log, not to the client.
    pub fn into_response(self, request_id: http::HeaderValue) -> http::Response<BoxBody> {
        let status = self.status();
        let text = match &self {
            ProxyError::Refused(_) => "bad request",
            ProxyError::ClientBody(_) if status == http::StatusCode::REQUEST_TIMEOUT => {
                "request body timed out"
            }
            ProxyError::ClientBody(_) => "bad request body",
            ProxyError::NoRoute => "no route",
            ProxyError::Plugin(_) if status == http::StatusCode::SERVICE_UNAVAILABLE => {
                "plugin overloaded"
            }
            ProxyError::Plugin(_) => "plugin failed",
            ProxyError::UpstreamConnect { .. } => "upstream unavailable",
            ProxyError::UpstreamTimeout { .. } => "upstream timed out",
            ProxyError::Upstream { .. } => "upstream failed",
            ProxyError::NoHealthyEndpoint { .. } => "no healthy upstream",
            ProxyError::CircuitOpen { .. } => "upstream circuit open",
        };
        let retry_after = match &self {
            ProxyError::CircuitOpen { retry_after, .. } => {
                Some(super::attempts::retry_after_secs(*retry_after))
            }
            _ => None,
        };
        let body = Bytes::from(format!("{text}\n"));
        let mut resp = http::Response::new(
            http_body_util::Full::new(body).map_err(|never| match never {}).boxed_unsync(),
        );
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
        h.insert("x-request-id", request_id);
        if self.origin() == Origin::Downstream && status != http::StatusCode::NOT_FOUND {
            // What the client sent cannot be trusted to end where it should: do not read on.
            h.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        if let Some(secs) = retry_after {
            h.insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        resp
    }
}
