//! The one way into upstreams: choose the route's upstream (split), pick an endpoint
//! (balancer, with the request's hash key), then attempts with timeouts, and retries with
//! back-off under the retry budget. Each attempt's outcome is reported to its endpoint's
//! health and circuit breaker, and written into the request's [`Trace`].
//!
//! What is retried: a connect failure for any method (nothing was sent); for idempotent
//! methods also a timeout, a broken connection and the configured statuses. Never once the
//! request body has been streamed, since it cannot be sent again.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use smallvec::SmallVec;
use tokio::time::Instant;

use super::error::{SendError, UpstreamError};
use super::{InFlight, Outcome, Unavailable, Upstream, retry};
use crate::config::{KeySource, Strategy};
use crate::message::{Body, BodyWatch, BoxBody, BoxError, ClientBodyError, Replay, request_key};
use crate::telemetry::trace_context::{TRACEPARENT, TraceContext};

/// A route's upstreams: one, or several sharing its traffic by weight.
pub struct Targets {
    split: Box<[(Arc<Upstream>, u32)]>,
    total: u64,
    /// Keeps a client on one upstream of a split.
    sticky: Option<KeySource>,
}

impl Targets {
    pub fn new(split: Vec<(Arc<Upstream>, u32)>, sticky: Option<KeySource>) -> Self {
        assert!(!split.is_empty(), "config validation guarantees an upstream");
        let total = split.iter().map(|(_, w)| u64::from(*w)).sum();
        Self { split: split.into(), total, sticky }
    }

    /// The upstreams with their split weights.
    pub fn upstreams(&self) -> impl Iterator<Item = (&Arc<Upstream>, u32)> {
        self.split.iter().map(|(u, w)| (u, *w))
    }

    /// Sends the request to the chosen upstream, with retries. `prepare` fills in the
    /// upstream request (Host, forwarding headers); the endpoint goes to the transport
    /// beside it, which writes the request line its protocol needs. `watch`
    /// follows the client's body while it streams: an attempt that failed because of it is
    /// the client's fault, reported as such, never retried and never held against the
    /// endpoint.
    pub async fn send(
        &self,
        trace: &mut Trace,
        request: Outgoing<'_>,
        prepare: impl Fn(&mut Request<BoxBody>),
    ) -> Result<Sent, SendError> {
        let upstream = self.choose(request.parts, request.client_ip);
        let key = match &upstream.config.strategy {
            Strategy::ConsistentHash(source) => {
                request_key(source, request.parts, request.client_ip)
            }
            _ => None,
        };
        upstream.send_with(&upstream.transport, upstream, trace, request, key, prepare).await
    }

    fn choose(&self, parts: &http::request::Parts, client_ip: IpAddr) -> &Arc<Upstream> {
        if let [(only, _)] = &*self.split {
            return only;
        }
        let key = self.sticky.as_ref().and_then(|k| request_key(k, parts, client_ip));
        let mut point = match key {
            Some(k) => k % self.total,
            None => fastrand::u64(0..self.total),
        };
        for (u, w) in &self.split {
            if point < u64::from(*w) {
                return u;
            }
            point -= u64::from(*w);
        }
        &self.split[0].0
    }
}

/// What goes upstream: the request head (sent as a copy per attempt), its body, and what
/// the balancing key may be taken from.
pub struct Outgoing<'a> {
    pub parts: &'a http::request::Parts,
    pub body: Body,
    pub client_ip: IpAddr,
    pub watch: Option<&'a BodyWatch>,
    /// Set when the request is traced: each attempt is a span of its own, named as the
    /// upstream's parent in its `traceparent`.
    pub trace: Option<TraceContext>,
    /// The client's own deadline (gRPC's `grpc-timeout`): no attempt outlives it.
    pub deadline: Option<Instant>,
}

/// What came back: the response, and the in-flight guard that must live as long as its
/// body when the balancer counts load.
pub struct Sent<B = super::ResponseBody> {
    pub response: Response<B>,
    pub in_flight: Option<InFlight>,
}

/// What the upstream side did for one request, for the request's context.
#[derive(Debug, Default)]
pub struct Trace {
    /// The upstream the request went to.
    pub upstream: Option<Arc<str>>,
    pub attempts: SmallVec<[AttemptRecord; 1]>,
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub endpoint: Authority,
    /// When it was sent.
    pub started: Instant,
    /// Its span's id, when the request is traced.
    pub span_id: Option<u64>,
    /// How the attempt went; `None` when it was abandoned because of the client.
    pub outcome: Option<Outcome>,
    /// From sending to the response head (or the failure).
    pub took: Duration,
}

/// How an attempt's request is carried: hyper's pooled client, or a script in tests.
pub(crate) trait Transport: Sync {
    type Body: Send;
    /// Carries `req` to `endpoint`. The request's URI is the client's (origin form, or
    /// absolute with the client's authority): the transport writes the request line or
    /// pseudo-headers its protocol and scheme need.
    fn request(
        &self,
        req: Request<BoxBody>,
        endpoint: &Authority,
    ) -> impl Future<Output = Result<Response<Self::Body>, TransportError>> + Send;
    /// Never reuses the connection that carried `response`.
    fn close_connection_of(&self, response: &Response<Self::Body>);
}

#[derive(Debug)]
pub(crate) enum TransportError {
    /// No connection: nothing was sent.
    Connect(BoxError),
    /// The connection failed after it was made.
    Broken(BoxError),
}

impl Upstream {
    async fn send_with<T: Transport>(
        &self,
        transport: &T,
        this: &Arc<Upstream>,
        trace: &mut Trace,
        request: Outgoing<'_>,
        key: Option<u64>,
        prepare: impl Fn(&mut Request<BoxBody>),
    ) -> Result<Sent<T::Body>, SendError> {
        let Outgoing { parts, body, watch, trace: traced, deadline: client_deadline, .. } = request;
        let policy = &self.config.retry;
        trace.upstream = Some(self.name.clone());
        let idempotent = matches!(
            parts.method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::TRACE
                | http::Method::PUT
                | http::Method::DELETE
        );
        let deadline =
            match (self.config.total_timeout.map(|t| Instant::now() + t), client_deadline) {
                (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
                (ours, theirs) => ours.or(theirs),
            };
        let hold_load = self.tracks_load().then_some(this);
        if policy.attempts > 1 {
            self.budget.deposit();
        }
        let mut body = Replay::new(body);
        let mut tried = SmallVec::<[usize; 4]>::new();
        // The previous attempt's failure: what the client gets if a retry cannot even start.
        let mut last: Option<UpstreamError> = None;
        for attempt_no in 1..=policy.attempts {
            let attempt = match (self.pick(key, &tried), last) {
                (Ok(attempt), _) => attempt,
                (Err(_), Some(previous)) => return Err(previous.into()),
                (Err(u), None) => return Err(self.unavailable(u).into()),
            };
            let (index, endpoint) = (attempt.index, attempt.endpoint().clone());
            let Some(attempt_body) = body.for_attempt() else {
                // The failed attempt read the body after all (a race with its connection).
                return Err(UpstreamError::BodySpent { endpoint: endpoint.to_string() }.into());
            };
            let mut req = Request::from_parts(parts.clone(), attempt_body);
            prepare(&mut req);
            let span_id = traced.map(|t| {
                let span = TraceContext::new_span_id();
                req.headers_mut().insert(TRACEPARENT.clone(), t.with_span(span).traceparent());
                span
            });
            let started = Instant::now();
            let timeout = match deadline {
                Some(d) => self.config.timeout.min(d.saturating_duration_since(started)),
                None => self.config.timeout,
            };
            let sent = tokio::time::timeout(timeout, transport.request(req, &endpoint)).await;
            let retry_status = |status: http::StatusCode| {
                idempotent
                    && policy.statuses.contains(&status.as_u16())
                    && self.may_retry(attempt_no, &body, deadline)
            };
            let client = ClientSide { watch, deadline: client_deadline };
            let (outcome, settled) =
                settle(transport, attempt, sent, timeout, client, hold_load, retry_status);
            let took = started.elapsed();
            let series = &self.endpoints()[index].series;
            record_attempt(&self.name, series, outcome, took, attempt_no);
            trace.attempts.push(AttemptRecord { endpoint, started, span_id, outcome, took });
            let error = match settled {
                Settled::Answered(sent) => return Ok(sent),
                Settled::ClientFault(fault) => return Err(fault.into()),
                Settled::Failed(error) => error,
            };
            // A retried status was already checked against the policy above.
            let status_retry = matches!(error, UpstreamError::Status { .. });
            if !(status_retry
                || error.retryable(idempotent) && self.may_retry(attempt_no, &body, deadline))
            {
                return Err(error.into());
            }
            tracing::debug!(upstream = %self.name, "attempt {attempt_no} failed, retrying: {error}");
            tried.push(index);
            last = Some(error);
            let wait = retry::backoff(attempt_no, policy.backoff, policy.max_backoff);
            tokio::time::sleep(wait).await;
        }
        // Only reached if `attempts` were 0, which validation refuses.
        Err(last.unwrap_or_else(|| self.unavailable(Unavailable::NoHealthy)).into())
    }

    /// A further attempt is allowed, the body can be sent again, time is left, and the
    /// budget has a retry.
    fn may_retry(&self, attempt_no: u32, body: &Replay, deadline: Option<Instant>) -> bool {
        let policy = &self.config.retry;
        let allowed = attempt_no < policy.attempts
            && body.replayable()
            && deadline.is_none_or(|d| d > Instant::now() + policy.backoff);
        if !allowed {
            return false;
        }
        let granted = self.budget.try_withdraw(Instant::now());
        if !granted {
            crate::telemetry::metrics().budget_exhausted.with_label_values(&[&*self.name]).inc();
        }
        granted
    }

    fn unavailable(&self, u: Unavailable) -> UpstreamError {
        let upstream = self.name.to_string();
        match u {
            Unavailable::NoHealthy => UpstreamError::NoHealthyEndpoint { upstream },
            Unavailable::CircuitOpen { retry_after } => {
                UpstreamError::CircuitOpen { upstream, retry_after }
            }
        }
    }
}

/// How an attempt ended, once reported to its endpoint.
enum Settled<B> {
    Answered(Sent<B>),
    /// The client's body failed, or the attempt timed out while the client still sent it.
    ClientFault(ClientBodyError),
    Failed(UpstreamError),
}

/// What an attempt's failure may be blamed on the client for: its body, and its deadline.
#[derive(Clone, Copy)]
struct ClientSide<'a> {
    watch: Option<&'a BodyWatch>,
    deadline: Option<Instant>,
}

/// Reports how an attempt went to its endpoint (health, breaker, load), and says what it
/// means for the request. `retry_status` says whether a response with this status should
/// be tried again (it takes a retry from the budget when it says yes).
fn settle<T: Transport>(
    transport: &T,
    attempt: super::Attempt<'_>,
    sent: Result<Result<Response<T::Body>, TransportError>, tokio::time::error::Elapsed>,
    timeout: Duration,
    client: ClientSide<'_>,
    hold_load: Option<&Arc<Upstream>>,
    retry_status: impl FnOnce(http::StatusCode) -> bool,
) -> (Option<Outcome>, Settled<T::Body>) {
    if !sent.as_ref().is_ok_and(Result::is_ok)
        && let Some(fault) = client_fault(client, sent.is_err(), timeout)
    {
        // Dropped unfinished, the attempt records nothing against the endpoint.
        drop(attempt);
        return (None, Settled::ClientFault(fault));
    }
    // Named only when the attempt failed: a served request allocates nothing for it.
    let endpoint = attempt.endpoint().clone();
    let at = || endpoint.to_string();
    let (outcome, error) = match sent {
        Ok(Ok(response)) if badly_framed(&response) => {
            // What follows on that connection cannot be told apart from this body.
            transport.close_connection_of(&response);
            (Outcome::Failed, UpstreamError::BadFraming { endpoint: at() })
        }
        Ok(Ok(response)) => {
            // Answered; the client's body may still fail later, as the response streams.
            let status = response.status();
            let outcome = Outcome::Status(status);
            let in_flight = attempt.finish(outcome, hold_load);
            if !retry_status(status) {
                return (Some(outcome), Settled::Answered(Sent { response, in_flight }));
            }
            let error = UpstreamError::Status { endpoint: at(), status };
            return (Some(outcome), Settled::Failed(error));
        }
        Err(_) => (Outcome::TimedOut, UpstreamError::Timeout { endpoint: at(), timeout }),
        Ok(Err(TransportError::Connect(source))) => {
            (Outcome::ConnectFailed, UpstreamError::Connect { endpoint: at(), source })
        }
        Ok(Err(TransportError::Broken(source))) => {
            (Outcome::Failed, UpstreamError::Broken { endpoint: at(), source })
        }
    };
    attempt.finish(outcome, None);
    (Some(outcome), Settled::Failed(error))
}

/// A response whose length two headers disagree about (RFC 9112 section 6.3): whichever
/// one the gateway believed, a client or a cache behind it might believe the other.
fn badly_framed<B>(response: &Response<B>) -> bool {
    let h = response.headers();
    h.contains_key(http::header::TRANSFER_ENCODING) && h.contains_key(http::header::CONTENT_LENGTH)
}

/// Whether a failed attempt was the client's doing: its body broke, the attempt timed out
/// while the client was still sending it (an upstream cannot answer a request it has not
/// been given whole), or it timed out at the deadline the client set.
fn client_fault(
    client: ClientSide<'_>,
    timed_out: bool,
    timeout: Duration,
) -> Option<ClientBodyError> {
    if let Some(e) = client.watch.and_then(BodyWatch::failure) {
        return Some(e.clone());
    }
    if timed_out && client.deadline.is_some_and(|d| Instant::now() >= d) {
        return Some(ClientBodyError::Deadline(timeout));
    }
    let sending = client.watch.is_some_and(|w| !w.ended());
    (timed_out && sending).then_some(ClientBodyError::TimedOut(timeout))
}

/// One endpoint's attempt series, by outcome, each resolved the first time it is needed
/// and kept (resolving a series hashes its label values and takes the registry's lock).
pub(super) struct AttemptSeries {
    upstream: Arc<str>,
    endpoint: Authority,
    attempts: [OnceLock<prometheus::IntCounter>; OUTCOMES.len()],
    duration: OnceLock<prometheus::Histogram>,
}

/// The `outcome` label values of `sluice_upstream_attempts_total`.
const OUTCOMES: [&str; 9] =
    ["1xx", "2xx", "3xx", "4xx", "5xx", "connect_failed", "timeout", "failed", "client_fault"];

impl AttemptSeries {
    pub(super) fn new(upstream: &str, endpoint: &Authority) -> Self {
        Self {
            upstream: upstream.into(),
            endpoint: endpoint.clone(),
            attempts: Default::default(),
            duration: OnceLock::new(),
        }
    }

    /// The label values: the upstream, its endpoint unless `[metrics] labels` leaves it out.
    fn labels(&self, with_endpoint: bool) -> SmallVec<[&str; 3]> {
        let mut labels = SmallVec::new();
        labels.push(&*self.upstream);
        if with_endpoint {
            labels.push(self.endpoint.as_str());
        }
        labels
    }
}

/// One upstream attempt: its outcome (`None`: abandoned because of the client) and time.
fn record_attempt(
    upstream: &str,
    series: &AttemptSeries,
    outcome: Option<Outcome>,
    took: Duration,
    attempt_no: u32,
) {
    let m = crate::telemetry::metrics();
    if !m.settings.enabled {
        return;
    }
    let outcome = match outcome {
        Some(Outcome::Status(s)) => match s.as_u16() {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        },
        Some(Outcome::ConnectFailed) => 5,
        Some(Outcome::TimedOut) => 6,
        Some(Outcome::Failed) => 7,
        None => 8,
    };
    let with_endpoint = m.settings.endpoint_label;
    series.attempts[outcome]
        .get_or_init(|| {
            let mut labels = series.labels(with_endpoint);
            labels.push(OUTCOMES[outcome]);
            m.attempts.with_label_values(&labels)
        })
        .inc();
    series
        .duration
        .get_or_init(|| m.attempt_duration.with_label_values(&series.labels(with_endpoint)))
        .observe(took.as_secs_f64());
    if attempt_no > 1 {
        m.retries.with_label_values(&[upstream]).inc();
    }
}

#[cfg(test)]
mod tests;
