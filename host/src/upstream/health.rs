//! Endpoint health: active checks (background probes that publish each endpoint's state)
//! and passive checks (outlier detection on real traffic, with growing ejections).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use http_body_util::Empty;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Upstream;
use crate::config::{CheckKind, HealthCheck, PassiveHealth};

/// Consecutive probe results against the thresholds. Starts healthy: a new endpoint takes
/// traffic at once, and `unhealthy_threshold` failed probes take it out.
#[derive(Debug, Clone)]
pub struct Counter {
    pub healthy: bool,
    /// Results in a row that disagree with `healthy`.
    streak: u32,
}

impl Default for Counter {
    fn default() -> Self {
        Counter { healthy: true, streak: 0 }
    }
}

impl Counter {
    /// Records a probe; returns the new state when it changes.
    pub fn record(
        &mut self,
        passed: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { unhealthy_threshold } else { healthy_threshold };
        if self.streak < needed {
            return None;
        }
        self.healthy = passed;
        self.streak = 0;
        Some(passed)
    }
}

/// One probe of `address`: a TCP connect, or an HTTP request (over HTTP/2 with `h2`, as
/// the upstream's traffic goes) whose status must be one of the expected. Bounded by the
/// check's timeout. `Err` says why it failed.
pub async fn probe(
    address: &str,
    check: &HealthCheck,
    tls: Option<&crate::tls::UpstreamClient>,
    h2: bool,
) -> Result<(), String> {
    let run = async {
        let stream = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
        let CheckKind::Http { method, path, expected_statuses } = &check.kind else {
            return Ok(());
        };
        let (mut sender, conn) = match tls {
            None => connect(stream, h2).await?,
            Some(tls) => {
                let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
                let name = match &tls.server_name {
                    Some(n) => n.clone(),
                    None => rustls::pki_types::ServerName::try_from(
                        host.trim_matches(['[', ']']).to_owned(),
                    )
                    .map_err(|e| format!("server name: {e}"))?,
                };
                let stream =
                    tls.connector.connect(name, stream).await.map_err(|e| format!("tls: {e}"))?;
                if h2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("the upstream did not agree to h2 (TLS ALPN)".to_owned());
                }
                connect(stream, h2).await?
            }
        };
        let request = http::Request::builder()
            .method(method.clone())
            .header(http::header::USER_AGENT, "sluice-health-check");
        // HTTP/2 names the host in `:authority`, from an absolute URI.
        let request = match &sender {
            Probe::H1(_) => request.uri(path.as_str()).header(http::header::HOST, address),
            Probe::H2(_) => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                request.uri(format!("{scheme}://{address}{path}"))
            }
        };
        let req =
            request.body(Empty::<bytes::Bytes>::new()).map_err(|e| format!("request: {e}"))?;
        let sent = match &mut sender {
            Probe::H1(s) => s.send_request(req).await,
            Probe::H2(s) => s.send_request(req).await,
        };
        let status = sent.map_err(|e| format!("request: {e}"))?.status();
        conn.abort();
        match expected_statuses.contains(&status.as_u16()) {
            true => Ok(()),
            false => Err(format!("status {}", status.as_u16())),
        }
    };
    match tokio::time::timeout(check.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

enum Probe {
    H1(hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>),
}

/// An HTTP/1.1 or HTTP/2 connection over `stream` for one probe, its task running.
async fn connect<S>(stream: S, h2: bool) -> Result<(Probe, tokio::task::JoinHandle<()>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let failed = |e: hyper::Error| format!("handshake: {e}");
    if h2 {
        let exec = hyper_util::rt::TokioExecutor::new();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(exec, io).await.map_err(failed)?;
        return Ok((Probe::H2(sender), tokio::spawn(async move { drop(conn.await) })));
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(failed)?;
    Ok((Probe::H1(sender), tokio::spawn(async move { drop(conn.await) })))
}

/// Passive health of one endpoint. The request path touches only atomics unless an
/// ejection happens.
#[derive(Debug, Default)]
pub struct Passive {
    consecutive: AtomicU32,
    /// Nanoseconds since the upstream's epoch until which the endpoint is out; 0: never.
    ejected_until: AtomicU64,
    history: Mutex<History>,
}

#[derive(Debug, Default)]
struct History {
    /// Ejections in the current run; reset once the endpoint stays healthy long enough.
    count: u32,
    last_return: Option<Instant>,
}

impl Passive {
    pub fn ejected(&self, now_nanos: u64) -> bool {
        now_nanos < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Records an outcome. Returns the ejection time when this failure ejects the endpoint;
    /// `may_eject` is asked first (it enforces the ejected-share limit).
    pub fn record(
        &self,
        failed: bool,
        config: &PassiveHealth,
        now: Instant,
        now_nanos: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        if !failed {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n < config.consecutive_failures || self.ejected(now_nanos) || !may_eject() {
            return None;
        }
        self.consecutive.store(0, Ordering::Relaxed);
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        // Healthy for longer than the longest ejection since it last came back: start over.
        if h.last_return.is_some_and(|r| now.saturating_duration_since(r) > config.max_ejection) {
            h.count = 0;
        }
        let length = ejection_length(h.count, config);
        h.count += 1;
        h.last_return = Some(now + length);
        self.ejected_until.store(now_nanos + length.as_nanos() as u64, Ordering::Relaxed);
        Some(length)
    }

    /// When the current or last ejection ends (nanoseconds since the epoch; 0: never).
    pub fn returns_at(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }
}

/// `base * 2^previous`, capped at `max`.
pub fn ejection_length(previous: u32, config: &PassiveHealth) -> Duration {
    let factor = 1u32.checked_shl(previous.min(20)).unwrap_or(u32::MAX);
    config.base_ejection.saturating_mul(factor).min(config.max_ejection)
}

/// Probes every endpoint each interval and publishes the result. Holds the upstream only
/// while publishing, so a replaced upstream is freed (and this task ends) promptly.
pub(super) async fn check_loop(upstream: Weak<Upstream>, check: HealthCheck) {
    let (addresses, name, tls, h2) = match upstream.upgrade() {
        Some(up) => {
            let addrs: Vec<String> = up.endpoints.iter().map(|e| e.address.to_string()).collect();
            let h2 = matches!(up.config.protocol, crate::config::UpstreamProtocol::H2 { .. });
            (addrs, up.name.clone(), up.tls.clone(), h2)
        }
        None => return,
    };
    let mut counters = vec![Counter::default(); addresses.len()];
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut probes = tokio::task::JoinSet::new();
        for (i, address) in addresses.iter().enumerate() {
            let (address, check, tls) = (address.clone(), check.clone(), tls.clone());
            probes.spawn(async move { (i, probe(&address, &check, tls.as_deref(), h2).await) });
        }
        let results = probes.join_all().await;
        let Some(up) = upstream.upgrade() else { return };
        for (i, result) in results {
            let endpoint = &up.endpoints[i];
            let passed = result.is_ok();
            let Some(now_healthy) =
                counters[i].record(passed, check.healthy_threshold, check.unhealthy_threshold)
            else {
                continue;
            };
            endpoint.healthy.store(now_healthy, Ordering::Relaxed);
            match result {
                Ok(()) => {
                    tracing::info!(upstream = %name, endpoint = %endpoint.address, "healthy again");
                    endpoint.recovered_at.store(up.nanos(Instant::now()), Ordering::Relaxed);
                }
                Err(why) => tracing::warn!(
                    upstream = %name,
                    endpoint = %endpoint.address,
                    "unhealthy after {} failed checks: {why}",
                    check.unhealthy_threshold
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_take_an_endpoint_out_and_bring_it_back() {
        let mut c = Counter::default();
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), None);
        // A pass in between resets the run of failures.
        assert_eq!(c.record(true, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), Some(false));
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(true, 2, 3), None);
        assert_eq!(c.record(true, 2, 3), Some(true));
        assert!(c.healthy);
    }

    fn passive() -> PassiveHealth {
        PassiveHealth {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejected_percent: 100,
        }
    }

    #[test]
    fn ejections_double_up_to_the_maximum() {
        let c = passive();
        let lengths: Vec<u64> = (0..5).map(|n| ejection_length(n, &c).as_secs()).collect();
        assert_eq!(lengths, [10, 20, 35, 35, 35]);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_the_back_off_resets_after_a_healthy_spell() {
        let c = passive();
        let p = Passive::default();
        let epoch = Instant::now();
        let nanos = || Instant::now().duration_since(epoch).as_nanos() as u64 + 1;
        let fail = |p: &Passive| p.record(true, &c, Instant::now(), nanos(), || true);
        assert_eq!(fail(&p), None);
        assert_eq!(p.record(false, &c, Instant::now(), nanos(), || true), None);
        assert_eq!(fail(&p), None);
        assert_eq!(fail(&p), None);
        assert_eq!(fail(&p), Some(Duration::from_secs(10)));
        assert!(p.ejected(nanos()));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!p.ejected(nanos()));
        for _ in 0..2 {
            fail(&p);
        }
        assert_eq!(fail(&p), Some(Duration::from_secs(20)));
        // Back, then healthy for longer than max_ejection: the next ejection is short again.
        tokio::time::advance(Duration::from_secs(20 + 36)).await;
        for _ in 0..2 {
            fail(&p);
        }
        assert_eq!(fail(&p), Some(Duration::from_secs(10)));
        // The share limit can veto an ejection.
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..2 {
            fail(&p);
        }
        assert_eq!(p.record(true, &c, Instant::now(), nanos(), || false), None);
        assert!(!p.ejected(nanos()));
    }
}
