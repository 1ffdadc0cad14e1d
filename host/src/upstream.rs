//! Upstreams: named endpoint sets, how a request picks an endpoint, and what each attempt's
//! outcome teaches the gateway about that endpoint.
//!
//! An endpoint is *available* when its config state is `up`, the active checks last found
//! it healthy, passive checks have not ejected it, and its circuit breaker lets requests
//! through. The balancer picks among available endpoints only; a retry avoids the
//! endpoints already tried when any other is available. Health checks run as background
//! tasks that publish into per-endpoint atomics; the request path only reads them.

mod balance;
pub mod breaker;
mod connector;
mod error;
mod h1pool;
mod h2pool;
mod health;
pub mod retry;
mod send;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;

use tokio::time::Instant;

use balance::{Balancer, View};
use breaker::{Admit, Breaker};
use connector::{Connections, Connector};
pub use error::{SendError, UpstreamError};
use health::Passive;
pub use send::{AttemptRecord, Outgoing, Sent, Targets, Trace};

use crate::config::{self, EndpointState};

/// The upstream's connections: the HTTP/1.1 or the HTTP/2 pool, over a connector (which
/// can close a connection for good).
fn connections(
    config: &config::Upstream,
    tls: Option<Arc<crate::tls::UpstreamClient>>,
) -> Connections {
    let mut http = HttpConnector::new();
    // `https://` URIs reach this connector, which speaks TLS itself.
    http.enforce_http(tls.is_none());
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = tls.is_some();
    let connector = Connector::new(http, tls);
    match config.protocol {
        config::UpstreamProtocol::Http1 => Connections::Http1(h1pool::H1::new(
            connector,
            https,
            config.connect_timeout,
            config.idle_timeout,
        )),
        config::UpstreamProtocol::H2 { max_concurrent_streams } => {
            Connections::H2(h2pool::H2::new(
                connector,
                https,
                max_concurrent_streams,
                config.connect_timeout,
                config.idle_timeout,
            ))
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream response's body. Over HTTP/2 it holds its stream on the connection,
    /// and with a balancer that counts load its endpoint's in-flight count, until dropped.
    pub struct ResponseBody {
        #[pin]
        body: hyper::body::Incoming,
        stream: Option<h2pool::Stream>,
        lease: Option<h1pool::Lease>,
        in_flight: Option<InFlight>,
    }
}

impl ResponseBody {
    fn held(body: hyper::body::Incoming, stream: h2pool::Stream) -> Self {
        ResponseBody { body, stream: Some(stream), lease: None, in_flight: None }
    }

    /// Over HTTP/1.1: the connection goes back to its pool once this body has ended.
    fn leased(body: hyper::body::Incoming, mut lease: h1pool::Lease) -> Self {
        if http_body::Body::is_end_stream(&body) {
            lease.ended();
        }
        ResponseBody { body, stream: None, lease: Some(lease), in_flight: None }
    }

    /// The HTTP/1.1 connection this body came on must not be used again: its address.
    fn retire_lease(&self) -> Option<std::net::SocketAddr> {
        self.lease.as_ref()?.retire()
    }

    /// Keeps the endpoint's in-flight count up as long as the body lives.
    pub fn hold_load(&mut self, in_flight: Option<InFlight>) {
        self.in_flight = in_flight;
    }
}

impl http_body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        if let Some(lease) = this.lease {
            // Ended: the last frame came (or none was left). The connection is then free.
            match &polled {
                std::task::Poll::Ready(None) => lease.ended(),
                std::task::Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => lease.ended(),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

pub struct Endpoint {
    pub address: Authority,
    pub weight: u32,
    pub state: EndpointState,
    in_flight: AtomicU32,
    /// Published by the active checker.
    healthy: AtomicBool,
    passive: Passive,
    pub breaker: Option<Breaker>,
    /// When the endpoint last came back (nanoseconds since the upstream's epoch; 0: never),
    /// for slow start.
    recovered_at: AtomicU64,
    /// Its attempt series, resolved on first use.
    series: send::AttemptSeries,
    /// An operator's override of `state` (the admin API): 0 none, else a state + 1.
    admin_state: AtomicU8,
    /// An operator's override of `weight`: 0 none.
    admin_weight: AtomicU32,
    /// An operator's override of the health checks: 0 none, 1 healthy, 2 unhealthy.
    admin_health: AtomicU8,
}

/// The largest weight, in the config and from the admin API.
pub const MAX_WEIGHT: u32 = 1000;

impl Endpoint {
    /// The state the balancer goes by: an operator's override, else the config's.
    pub fn effective_state(&self) -> EndpointState {
        self.admin_override().unwrap_or(self.state)
    }

    /// An operator's override of the config's state, if any.
    pub fn admin_override(&self) -> Option<EndpointState> {
        match self.admin_state.load(Ordering::Relaxed) {
            1 => Some(EndpointState::Up),
            2 => Some(EndpointState::Drain),
            3 => Some(EndpointState::Down),
            _ => None,
        }
    }

    /// Overrides the config's state (`None`: back to the config's).
    pub fn set_override(&self, state: Option<EndpointState>) {
        let n = match state {
            None => 0,
            Some(EndpointState::Up) => 1,
            Some(EndpointState::Drain) => 2,
            Some(EndpointState::Down) => 3,
        };
        self.admin_state.store(n, Ordering::Relaxed);
    }

    /// The weight the balancer goes by: an operator's override, else the config's.
    pub fn effective_weight(&self) -> u32 {
        match self.admin_weight.load(Ordering::Relaxed) {
            0 => self.weight,
            w => w,
        }
    }

    /// An operator's weight, if one is set.
    pub fn weight_override(&self) -> Option<u32> {
        Some(self.admin_weight.load(Ordering::Relaxed)).filter(|&w| w != 0)
    }

    /// Overrides the config's weight (`None`: back to it). `weight` is 1..=[`MAX_WEIGHT`].
    pub fn set_weight_override(&self, weight: Option<u32>) {
        let w = weight.map_or(0, |w| w.clamp(1, MAX_WEIGHT));
        self.admin_weight.store(w, Ordering::Relaxed);
    }

    /// An operator's verdict on the endpoint's health, which the active and passive checks
    /// then do not change: `Some(true)` healthy, `Some(false)` unhealthy.
    pub fn health_override(&self) -> Option<bool> {
        match self.admin_health.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    /// Overrides the health checks (`None`: back to them).
    pub fn set_health_override(&self, healthy: Option<bool>) {
        let n = match healthy {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        self.admin_health.store(n, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// What the active health checks last found.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Why no endpoint could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Every endpoint is down, drained, failing its checks or ejected.
    NoHealthy,
    /// The healthy endpoints' circuits are all open; one may be tried after this long.
    CircuitOpen { retry_after: Duration },
}

/// How one attempt went, as far as the endpoint's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(http::StatusCode),
    ConnectFailed,
    TimedOut,
    /// The connection failed after it was made (reset, bad response).
    Failed,
}

pub struct Upstream {
    name: Arc<str>,
    config: config::Upstream,
    /// Its TLS settings, loaded (`None`: plain HTTP).
    tls: Option<Arc<crate::tls::UpstreamClient>>,
    transport: Connections,
    endpoints: Vec<Endpoint>,
    balancer: Balancer,
    budget: retry::Budget,
    epoch: Instant,
    checker: OnceLock<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(checker) = self.checker.get() {
            checker.abort();
        }
    }
}

impl Upstream {
    /// `tls` is `config.tls` loaded ([`crate::tls::load_client`]).
    pub fn new(
        name: &str,
        config: config::Upstream,
        tls: Option<Arc<crate::tls::UpstreamClient>>,
    ) -> Self {
        assert!(!config.endpoints.is_empty(), "config validation guarantees an endpoint");
        let ids: Vec<(String, u32)> =
            config.endpoints.iter().map(|e| (e.address.to_string(), e.weight)).collect();
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| Endpoint {
                address: e.address.clone(),
                weight: e.weight,
                state: e.state,
                in_flight: AtomicU32::new(0),
                healthy: AtomicBool::new(true),
                passive: Passive::default(),
                breaker: config.circuit_breaker.clone().map(Breaker::new),
                recovered_at: AtomicU64::new(0),
                series: send::AttemptSeries::new(name, &e.address),
                admin_state: AtomicU8::new(0),
                admin_weight: AtomicU32::new(0),
                admin_health: AtomicU8::new(0),
            })
            .collect();
        Upstream {
            transport: connections(&config, tls.clone()),
            tls,
            balancer: Balancer::new(&config.strategy, &ids),
            budget: retry::Budget::new(
                config.retry.budget_ratio,
                config.retry.budget_min_per_second,
            ),
            epoch: Instant::now(),
            checker: OnceLock::new(),
            endpoints,
            name: name.into(),
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &config::Upstream {
        &self.config
    }

    /// Whether this upstream was built from `config` and TLS files with `digest`.
    pub fn built_from(&self, config: &config::Upstream, digest: Option<[u8; 32]>) -> bool {
        self.config == *config && self.tls.as_ref().map(|t| t.digest) == digest
    }

    /// Carries operators' overrides (endpoint states, forced breakers) over from the
    /// upstream this one replaces, for every endpoint both have: a reload does not undo a
    /// drain.
    pub fn inherit_overrides(&self, before: &Upstream) {
        let now = Instant::now();
        for e in &self.endpoints {
            let Some(old) = before.endpoints.iter().find(|o| o.address == e.address) else {
                continue;
            };
            e.set_override(old.admin_override());
            e.set_weight_override(old.weight_override());
            e.set_health_override(old.health_override());
            if let (Some(b), Some(old_b)) = (&e.breaker, &old.breaker)
                && old_b.mode() != breaker::Mode::Auto
            {
                b.set_mode(old_b.mode(), now);
            }
        }
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Starts the active health checks, once (a gateway kept across reloads keeps them).
    pub fn start_checks(self: &Arc<Self>) {
        let Some(check) = self.config.health_check.clone() else { return };
        self.checker.get_or_init(|| {
            let task = tokio::spawn(health::check_loop(Arc::downgrade(self), check));
            task.abort_handle()
        });
    }

    /// Whether in-flight counts must last until the response body ends.
    pub(crate) fn tracks_load(&self) -> bool {
        self.balancer.uses_load()
    }

    fn nanos(&self, now: Instant) -> u64 {
        // +1 so that 0 can mean "never".
        now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    fn usable(&self, i: usize, now_nanos: u64) -> bool {
        let e = &self.endpoints[i];
        let healthy = match e.health_override() {
            Some(verdict) => verdict,
            None => e.healthy() && !e.passive.ejected(now_nanos),
        };
        e.effective_state() == EndpointState::Up && healthy
    }

    /// Share of its weight a recovering endpoint gets now (slow start), if below 1.
    fn warming(&self, i: usize, now_nanos: u64) -> Option<f64> {
        let window = self.config.slow_start?.as_nanos() as u64;
        let since = self.endpoints[i].recovered_at.load(Ordering::Relaxed);
        let elapsed = now_nanos.checked_sub(since).filter(|_| since != 0)?;
        (elapsed < window).then(|| 0.1 + 0.9 * elapsed as f64 / window as f64)
    }

    /// Picks the endpoint for an attempt. `key` is the request's hash key; `tried` are the
    /// endpoints earlier attempts used, avoided while any other is available.
    pub(crate) fn pick(
        &self,
        key: Option<u64>,
        tried: &[usize],
    ) -> Result<Attempt<'_>, Unavailable> {
        let now = Instant::now();
        let now_nanos = self.nanos(now);
        let mut refused: Vec<usize> = Vec::new();
        for avoid_tried in [true, false] {
            if !avoid_tried && tried.is_empty() {
                break;
            }
            let mut skip_warming = false;
            for _ in 0..=self.endpoints.len() {
                let ok = |i: usize| {
                    let excluded = refused.contains(&i) || (avoid_tried && tried.contains(&i));
                    !excluded
                        && self.usable(i, now_nanos)
                        && self.endpoints[i].breaker.as_ref().is_none_or(|b| b.admits(now))
                };
                let view = View {
                    n: self.endpoints.len(),
                    weight: &|i| self.endpoints[i].effective_weight(),
                    load: &|i| self.endpoints[i].in_flight(),
                    ok: &ok,
                };
                let Some(i) = self.balancer.pick(&view, key) else { break };
                if !skip_warming && let Some(share) = self.warming(i, now_nanos) {
                    skip_warming = true;
                    if fastrand::f64() > share {
                        refused.push(i);
                        continue;
                    }
                }
                let endpoint = &self.endpoints[i];
                let admit = match &endpoint.breaker {
                    None => None,
                    Some(b) => match b.try_acquire(now) {
                        Ok((admit, transition)) => {
                            if let Some((from, to)) = transition {
                                self.log_breaker(i, from, to);
                            }
                            Some(admit)
                        }
                        Err(_) => {
                            refused.push(i);
                            continue;
                        }
                    },
                };
                endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
                return Ok(Attempt { upstream: self, index: i, admit, done: false });
            }
            // Endpoints refused only for warming up may still serve.
            refused.retain(|&i| self.warming(i, now_nanos).is_none());
        }
        let retry_after = (0..self.endpoints.len())
            .filter(|&i| self.usable(i, now_nanos))
            .filter_map(|i| self.endpoints[i].breaker.as_ref()?.retry_after(now))
            .min();
        Err(match retry_after {
            Some(retry_after) => Unavailable::CircuitOpen { retry_after },
            None => Unavailable::NoHealthy,
        })
    }

    fn log_breaker(&self, i: usize, from: breaker::State, to: breaker::State) {
        let endpoint = &self.endpoints[i].address;
        crate::telemetry::metrics()
            .breaker_transitions
            .with_label_values(&[&*self.name, endpoint.as_str(), to.label()])
            .inc();
        match to {
            breaker::State::Open => tracing::warn!(
                upstream = %self.name, %endpoint, "circuit breaker {from:?} -> Open"
            ),
            _ => {
                tracing::info!(upstream = %self.name, %endpoint, "circuit breaker {from:?} -> {to:?}")
            }
        }
        if to == breaker::State::Closed {
            self.endpoints[i].recovered_at.store(self.nanos(Instant::now()), Ordering::Relaxed);
        }
    }

    fn record(&self, i: usize, admit: Option<Admit>, outcome: Outcome) {
        let now = Instant::now();
        let endpoint = &self.endpoints[i];
        if let (Some(b), Some(admit)) = (&endpoint.breaker, admit) {
            let kinds = &b.config().failures;
            let failed = match outcome {
                Outcome::Status(s) => kinds.statuses.binary_search(&s.as_u16()).is_ok(),
                Outcome::ConnectFailed | Outcome::Failed => kinds.connect,
                Outcome::TimedOut => kinds.timeout,
            };
            if let Some((from, to)) = b.record(admit, failed, now) {
                self.log_breaker(i, from, to);
            }
        }
        let Some(passive) = &self.config.passive_health else { return };
        let failed = match outcome {
            Outcome::Status(s) => s.is_server_error(),
            _ => true,
        };
        let now_nanos = self.nanos(now);
        let may_eject = || {
            let out = (0..self.endpoints.len())
                .filter(|&j| self.endpoints[j].passive.ejected(now_nanos))
                .count();
            (out + 1) * 100 <= passive.max_ejected_percent as usize * self.endpoints.len()
        };
        if let Some(length) = endpoint.passive.record(failed, passive, now, now_nanos, may_eject) {
            tracing::warn!(
                upstream = %self.name,
                endpoint = %endpoint.address,
                "ejected for {length:?} after {} consecutive failures",
                passive.consecutive_failures
            );
            endpoint.recovered_at.store(endpoint.passive.returns_at(), Ordering::Relaxed);
            crate::telemetry::metrics()
                .ejections
                .with_label_values(&[&*self.name, endpoint.address.as_str()])
                .inc();
        }
    }

    /// Whether endpoint `i` may be picked now: up, healthy, not ejected (the breaker is
    /// reported on its own).
    pub fn usable_now(&self, i: usize) -> bool {
        self.usable(i, self.nanos(Instant::now()))
    }
}

/// One attempt on one endpoint. Report how it went with [`Attempt::finish`]; dropped
/// unfinished (the client went away), it reports nothing.
pub struct Attempt<'a> {
    upstream: &'a Upstream,
    pub index: usize,
    admit: Option<Admit>,
    done: bool,
}

impl Attempt<'_> {
    pub fn endpoint(&self) -> &Authority {
        &self.upstream.endpoints[self.index].address
    }

    /// Records the outcome. With `hold_load`, the in-flight count is handed to the returned
    /// guard, to be dropped when the response body ends.
    pub fn finish(
        mut self,
        outcome: Outcome,
        hold_load: Option<&Arc<Upstream>>,
    ) -> Option<InFlight> {
        self.done = true;
        self.upstream.record(self.index, self.admit, outcome);
        match hold_load {
            Some(up) => Some(InFlight { upstream: up.clone(), index: self.index }),
            None => {
                self.upstream.endpoints[self.index].in_flight.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let endpoint = &self.upstream.endpoints[self.index];
        endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let (Some(b), Some(admit)) = (&endpoint.breaker, self.admit) {
            b.release(admit);
        }
    }
}

/// Keeps an endpoint's in-flight count up until dropped (with the response body).
pub struct InFlight {
    upstream: Arc<Upstream>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.endpoints[self.index].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Two round-robin endpoints, 10.0.0.1:80 and 10.0.0.2:80, with `retry`, for unit tests.
#[cfg(test)]
fn test_config(retry: config::RetryPolicy) -> config::Upstream {
    let endpoint = |a: &str| config::Endpoint {
        address: a.parse().unwrap(),
        weight: 1,
        state: EndpointState::Up,
    };
    config::Upstream {
        endpoints: vec![endpoint("10.0.0.1:80"), endpoint("10.0.0.2:80")],
        strategy: config::Strategy::RoundRobin,
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        total_timeout: None,
        idle_timeout: Duration::from_secs(1),
        slow_start: None,
        health_check: None,
        passive_health: None,
        circuit_breaker: None,
        retry,
        tls: None,
        protocol: config::UpstreamProtocol::Http1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryPolicy;

    fn upstream(slow_start: Option<Duration>) -> Upstream {
        let mut config = test_config(RetryPolicy {
            attempts: 1,
            statuses: vec![],
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            budget_ratio: 0.0,
            budget_min_per_second: 0,
        });
        config.slow_start = slow_start;
        Upstream::new("u", config, None)
    }

    /// Share of 4,000 picks that went to endpoint 1.
    fn share_of_second(u: &Upstream) -> f64 {
        let picks = (0..4000).filter(|_| u.pick(None, &[]).unwrap().index == 1).count();
        picks as f64 / 4000.0
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_a_recovered_endpoint_up_over_the_window() {
        let u = upstream(Some(Duration::from_secs(10)));
        u.endpoints[1].recovered_at.store(u.nanos(Instant::now()), Ordering::Relaxed);
        let start = share_of_second(&u);
        tokio::time::advance(Duration::from_secs(5)).await;
        let middle = share_of_second(&u);
        tokio::time::advance(Duration::from_secs(6)).await;
        let after = share_of_second(&u);
        // Round robin offers it every other pick and each refusal re-picks, so it is
        // offered about once per request: ~10% at first, against 50% once warm.
        assert!(start < 0.15, "just recovered: {start}");
        assert!((0.2..0.4).contains(&middle), "half way: {middle}");
        assert!((after - 0.5).abs() < 0.01, "warmed up: {after}");
    }

    #[tokio::test]
    async fn retries_avoid_tried_endpoints_unless_none_other_is_left() {
        let u = upstream(None);
        for _ in 0..10 {
            assert_eq!(u.pick(None, &[0]).unwrap().index, 1);
        }
        u.endpoints[1].healthy.store(false, Ordering::Relaxed);
        assert_eq!(u.pick(None, &[0]).unwrap().index, 0);
        u.endpoints[0].healthy.store(false, Ordering::Relaxed);
        assert_eq!(u.pick(None, &[]).err(), Some(Unavailable::NoHealthy));
    }
}
