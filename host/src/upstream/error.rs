//! Why sending a request upstream failed, with the cause kept as the error's source.

use std::time::Duration;

use crate::message::{BoxError, ClientBodyError};

/// An upstream could not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: nothing was sent.
    #[error("cannot connect to upstream {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: BoxError,
    },
    #[error("upstream {endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    /// The connection broke, or the response could not be read.
    #[error("upstream {endpoint} failed")]
    Broken {
        endpoint: String,
        #[source]
        source: BoxError,
    },
    /// A response whose length two headers disagree about (RFC 9112 section 6.3).
    #[error("upstream {endpoint} failed: response has both Content-Length and Transfer-Encoding")]
    BadFraming { endpoint: String },
    /// A status the upstream's retry policy retries, when no retry was left to make.
    #[error("upstream {endpoint} failed: status {status}")]
    Status { endpoint: String, status: http::StatusCode },
    /// A failed attempt had read the request body after all, so it cannot be sent again.
    #[error("upstream {endpoint} failed: the request body was already sent; not retried")]
    BodySpent { endpoint: String },
    #[error("upstream {upstream:?} has no healthy endpoint")]
    NoHealthyEndpoint { upstream: String },
    #[error("upstream {upstream:?}: every healthy endpoint's circuit is open")]
    CircuitOpen { upstream: String, retry_after: Duration },
}

impl UpstreamError {
    /// Whether another attempt may help. A connect failure sent nothing, so any method may
    /// be tried again; the rest may have reached the upstream, so only an idempotent
    /// request is repeated.
    pub fn retryable(&self, idempotent: bool) -> bool {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::Status { .. } => true,
            UpstreamError::Timeout { .. }
            | UpstreamError::Broken { .. }
            | UpstreamError::BadFraming { .. } => idempotent,
            UpstreamError::BodySpent { .. }
            | UpstreamError::NoHealthyEndpoint { .. }
            | UpstreamError::CircuitOpen { .. } => false,
        }
    }

    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            UpstreamError::Timeout { .. } => S::GATEWAY_TIMEOUT,
            UpstreamError::NoHealthyEndpoint { .. } | UpstreamError::CircuitOpen { .. } => {
                S::SERVICE_UNAVAILABLE
            }
            _ => S::BAD_GATEWAY,
        }
    }

    /// The few words the client is told.
    pub fn client_text(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "upstream unavailable",
            UpstreamError::Timeout { .. } => "upstream timed out",
            UpstreamError::NoHealthyEndpoint { .. } => "no healthy upstream",
            UpstreamError::CircuitOpen { .. } => "upstream circuit open",
            _ => "upstream failed",
        }
    }

    /// How long the client should wait before trying again, if the gateway knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Why [`super::Targets::send`] gave no response: the upstream's fault, or the client's
/// (its body broke or went quiet while an attempt was sending it).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Client(#[from] ClientBodyError),
}
