//! Every way a request can fail, and the one place where failures become HTTP responses.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::normalize::Refused;
use crate::message::{BoxBody, ClientBodyError};
use crate::plugin::{FailureKind, PluginError};
use crate::upstream::{SendError, UpstreamError};

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Downstream,
    Upstream,
    Plugin,
    /// The gateway itself: a bug, never the client's or an upstream's doing.
    Internal,
}

impl Origin {
    /// The origin's name in metrics and the access log.
    pub fn label(self) -> &'static str {
        match self {
            Origin::Downstream => "downstream",
            Origin::Upstream => "upstream",
            Origin::Plugin => "plugin",
            Origin::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("refused: {0}")]
    Refused(Refused),
    #[error(transparent)]
    ClientBody(ClientBodyError),
    #[error("no route for this path")]
    NoRoute,
    /// The route has `require_client_cert` and the connection has no verified one.
    #[error("the route requires a client certificate")]
    ClientCertRequired,
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<SendError> for ProxyError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Upstream(e) => ProxyError::Upstream(e),
            SendError::Client(e) => ProxyError::ClientBody(e),
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ProxyError::Refused(_) => S::BAD_REQUEST,
            ProxyError::ClientBody(e) => e.status(),
            ProxyError::NoRoute => S::NOT_FOUND,
            ProxyError::ClientCertRequired => S::FORBIDDEN,
            ProxyError::Plugin(e) => match e.kind {
                FailureKind::Overloaded(_) | FailureKind::StoreClosed(_) => S::SERVICE_UNAVAILABLE,
                _ => S::INTERNAL_SERVER_ERROR,
            },
            ProxyError::Upstream(e) => e.status(),
            ProxyError::Internal(_) => S::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::NoRoute
            | ProxyError::ClientCertRequired
            | ProxyError::Refused(_)
            | ProxyError::ClientBody(_) => Origin::Downstream,
            ProxyError::Plugin(_) => Origin::Plugin,
            ProxyError::Upstream(_) => Origin::Upstream,
            ProxyError::Internal(_) => Origin::Internal,
        }
    }

    /// The short reason the client is told; details go to the log, not to the client.
    pub fn client_text(&self) -> &str {
        let status = self.status();
        match self {
            ProxyError::Refused(_) => "bad request",
            ProxyError::ClientBody(ClientBodyError::Deadline(_)) => "deadline exceeded",
            ProxyError::ClientBody(ClientBodyError::MessageTooLarge(_)) => {
                "message larger than the route allows"
            }
            ProxyError::ClientBody(_) if status == http::StatusCode::REQUEST_TIMEOUT => {
                "request body timed out"
            }
            ProxyError::ClientBody(_) if status == http::StatusCode::PAYLOAD_TOO_LARGE => {
                "request body too large"
            }
            ProxyError::ClientBody(_) => "bad request body",
            ProxyError::NoRoute => "no route",
            ProxyError::ClientCertRequired => "a client certificate is required",
            ProxyError::Plugin(_) if status == http::StatusCode::SERVICE_UNAVAILABLE => {
                "plugin overloaded"
            }
            ProxyError::Plugin(_) => "plugin failed",
            ProxyError::Upstream(e) => e.client_text(),
            ProxyError::Internal(_) => "internal error",
        }
    }

    /// The client sees a short plain-text reason; details go to the log, not to the client.
    pub fn into_response(self, request_id: http::HeaderValue) -> http::Response<BoxBody> {
        let status = self.status();
        let text = self.client_text();
        let retry_after = match &self {
            ProxyError::Upstream(e) => e.retry_after().map(retry_after_secs),
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

/// `Retry-After` in whole seconds, at least 1.
fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// An error with its causes, on one line: `outer: cause: root cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
