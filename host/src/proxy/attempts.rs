//! Sending a request upstream: choosing the upstream (split) and the endpoint (balancer),
//! then attempts with timeouts, retries with back-off under a budget, and each attempt's
//! outcome reported to the endpoint's health and circuit breaker.
//!
//! What is retried: a connect failure for any method (nothing was sent); for idempotent
//! methods also a timeout, a broken connection and the configured statuses. Never once the
//! request body has been streamed, since it cannot be sent again.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokio::time::Instant;

use super::{ProxyError, error_chain};
use crate::config::{KeySource, Strategy};
use crate::gateway::Route;
use crate::message::{BodyWatch, BoxBody, ClientBodyError, Replay, RequestMeta};
use crate::upstream::{InFlight, Outcome, Unavailable, Upstream, retry, stable_hash};

/// Picks the upstream of a route: its only one, or one of its split by weight, sticky per
/// client key when configured.
pub fn choose_upstream<'r>(
    route: &'r Route,
    parts: &http::request::Parts,
    meta: &RequestMeta,
) -> &'r Arc<Upstream> {
    if let [(only, _)] = route.targets.as_slice() {
        return only;
    }
    let total: u64 = route.targets.iter().map(|(_, w)| u64::from(*w)).sum();
    let key = route.split_sticky.as_ref().and_then(|k| request_key(k, parts, meta));
    let mut point = match key {
        Some(k) => k % total,
        None => fastrand::u64(0..total),
    };
    for (u, w) in &route.targets {
        if point < u64::from(*w) {
            return u;
        }
        point -= u64::from(*w);
    }
    &route.targets[0].0
}

/// The hash of a request's client key, if the request has one.
pub fn request_key(
    source: &KeySource,
    parts: &http::request::Parts,
    meta: &RequestMeta,
) -> Option<u64> {
    match source {
        KeySource::ClientIp => Some(stable_hash(meta.client_ip.to_string().as_bytes())),
        KeySource::Header(name) => parts.headers.get(name).map(|v| stable_hash(v.as_bytes())),
        KeySource::Cookie(name) => parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .map(|c| stable_hash(c.value().as_bytes())),
    }
}

/// What came back from upstream: the response, and the in-flight guard that must live as
/// long as its body when the balancer counts load.
pub struct Sent {
    pub response: http::Response<hyper::body::Incoming>,
    pub in_flight: Option<InFlight>,
}

/// Sends `parts` + `body` to `upstream`, with retries. `prepare` fills in the upstream
/// request for the chosen endpoint (URI, Host, forwarding headers). `watch` follows the
/// client's body while it streams: an attempt that failed because of it is the client's
/// fault, reported as such, never retried and never held against the endpoint.
pub async fn send(
    upstream: &Arc<Upstream>,
    parts: &http::request::Parts,
    body: crate::message::Body,
    key: Option<u64>,
    watch: Option<&BodyWatch>,
    prepare: impl Fn(&mut Request<BoxBody>, &http::uri::Authority),
) -> Result<Sent, ProxyError> {
    let config = &upstream.config;
    let policy = &config.retry;
    let idempotent = matches!(
        parts.method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    );
    let deadline = config.total_timeout.map(|t| Instant::now() + t);
    let hold_load = upstream.tracks_load().then_some(upstream);
    if policy.attempts > 1 {
        upstream.budget.deposit();
    }
    let mut body = Replay::new(body);
    let mut tried = Vec::new();
    // The previous attempt's failure: what the client gets if a retry cannot even start.
    let mut last: Option<ProxyError> = None;
    for attempt_no in 1..=policy.attempts {
        let attempt = match (upstream.pick(key, &tried), last) {
            (Ok(attempt), _) => attempt,
            (Err(_), Some(previous)) => return Err(previous),
            (Err(u), None) => return Err(unavailable(upstream, u)),
        };
        let (index, endpoint) = (attempt.index, attempt.endpoint().clone());
        let Some(attempt_body) = body.for_attempt() else {
            // The failed attempt read the body after all (a race with its connection):
            // it cannot be sent again.
            return Err(ProxyError::Upstream {
                endpoint: endpoint.to_string(),
                reason: "the request body was already sent; not retried".into(),
            });
        };
        let mut req = Request::from_parts(parts.clone(), attempt_body);
        prepare(&mut req, &endpoint);
        let timeout = match deadline {
            Some(d) => config.timeout.min(d.saturating_duration_since(Instant::now())),
            None => config.timeout,
        };
        let sent = tokio::time::timeout(timeout, upstream.client.request(req)).await;
        if sent.as_ref().is_ok_and(Result::is_ok) {
            // Answered; the client's body may still fail later, as the response streams.
        } else if let Some(fault) = client_fault(watch, sent.is_err(), timeout) {
            // Dropped unfinished, the attempt records nothing against the endpoint.
            drop(attempt);
            return Err(fault);
        }
        // What failed, and whether a retry may help.
        let (error, retry) = match sent {
            Ok(Ok(response)) if badly_framed(&response) => {
                // What follows on that connection cannot be told apart from this body.
                upstream.connector.close_connection_of(&response);
                attempt.finish(Outcome::Failed, None);
                let reason = "response has both Content-Length and Transfer-Encoding".to_owned();
                (ProxyError::Upstream { endpoint: endpoint.to_string(), reason }, idempotent)
            }
            Ok(Ok(response)) => {
                let status = response.status();
                let in_flight = attempt.finish(Outcome::Status(status), hold_load);
                let retry_status = idempotent && policy.statuses.contains(&status.as_u16());
                if !(retry_status && may_retry(upstream, attempt_no, &body, deadline)) {
                    return Ok(Sent { response, in_flight });
                }
                tracing::debug!(upstream = %upstream.name, %endpoint, "retrying after status {status}");
                let error = ProxyError::Upstream {
                    endpoint: endpoint.to_string(),
                    reason: format!("status {status}"),
                };
                (error, true)
            }
            Err(_) => {
                attempt.finish(Outcome::TimedOut, None);
                (
                    ProxyError::UpstreamTimeout { endpoint: endpoint.to_string(), timeout },
                    idempotent,
                )
            }
            Ok(Err(e)) if e.is_connect() => {
                attempt.finish(Outcome::ConnectFailed, None);
                let reason = error_chain(&e);
                (ProxyError::UpstreamConnect { endpoint: endpoint.to_string(), reason }, true)
            }
            Ok(Err(e)) => {
                attempt.finish(Outcome::Failed, None);
                let reason = error_chain(&e);
                (ProxyError::Upstream { endpoint: endpoint.to_string(), reason }, idempotent)
            }
        };
        if !(retry && may_retry(upstream, attempt_no, &body, deadline)) {
            return Err(error);
        }
        tracing::debug!(upstream = %upstream.name, "attempt {attempt_no} failed, retrying: {error}");
        tried.push(index);
        last = Some(error);
        let wait = retry::backoff(attempt_no, policy.backoff, policy.max_backoff);
        tokio::time::sleep(wait).await;
    }
    // Only reached if `attempts` were 0, which validation refuses.
    Err(last.unwrap_or_else(|| unavailable(upstream, Unavailable::NoHealthy)))
}

/// A response whose length two headers disagree about (RFC 9112 section 6.3): whichever
/// one the gateway believed, a client or a cache behind it might believe the other.
fn badly_framed<B>(response: &http::Response<B>) -> bool {
    let h = response.headers();
    h.contains_key(http::header::TRANSFER_ENCODING) && h.contains_key(http::header::CONTENT_LENGTH)
}

/// Whether a failed attempt was the client's doing: its body broke, or the attempt timed
/// out while the client was still sending it (an upstream cannot answer a request it has
/// not been given whole).
fn client_fault(
    watch: Option<&BodyWatch>,
    timed_out: bool,
    timeout: Duration,
) -> Option<ProxyError> {
    let watch = watch?;
    if let Some(e) = watch.failure() {
        return Some(ProxyError::ClientBody(e.clone()));
    }
    (timed_out && !watch.ended())
        .then_some(ProxyError::ClientBody(ClientBodyError::TimedOut(timeout)))
}

/// A further attempt is allowed, the body can be sent again, time is left, and the
/// budget has a retry.
fn may_retry(up: &Upstream, attempt_no: u32, body: &Replay, deadline: Option<Instant>) -> bool {
    attempt_no < up.config.retry.attempts
        && body.replayable()
        && deadline.is_none_or(|d| d > Instant::now() + up.config.retry.backoff)
        && up.budget.try_withdraw(Instant::now())
}

fn unavailable(up: &Upstream, u: Unavailable) -> ProxyError {
    match u {
        Unavailable::NoHealthy => ProxyError::NoHealthyEndpoint { upstream: up.name.clone() },
        Unavailable::CircuitOpen { retry_after } => {
            ProxyError::CircuitOpen { upstream: up.name.clone(), retry_after }
        }
    }
}

/// The hash key for consistent hashing, when the upstream uses it.
pub fn balance_key(
    upstream: &Upstream,
    parts: &http::request::Parts,
    meta: &RequestMeta,
) -> Option<u64> {
    match &upstream.config.strategy {
        Strategy::ConsistentHash(source) => request_key(source, parts, meta),
        _ => None,
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}
