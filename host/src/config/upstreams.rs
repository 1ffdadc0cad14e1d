//! `[upstreams.NAME]`: endpoints, balancing, active and passive health, circuit breakers
//! and retries.

use std::collections::HashSet;
use std::time::Duration;

use super::check::*;
use super::error::Errors;
use super::model::*;
use super::schema;

pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 2;
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HALF_OPEN_REQUESTS: u32 = 3;
pub const DEFAULT_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_STATUSES: [u16; 3] = [502, 503, 504];
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(250);
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;

/// Defaults an upstream inherits from `[server]`.
pub struct Inherited<'a> {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The config's folder, which relative paths start from.
    pub base: &'a std::path::Path,
}

pub fn validate_upstream(
    name: &str,
    u: &schema::Upstream,
    inherited: &Inherited<'_>,
    errors: &mut Errors,
) -> Option<Upstream> {
    let at = |field: &str| format!("upstreams.{name}.{field}");
    let before = errors.0.len();
    if u.endpoints.is_empty() {
        errors.push(at("endpoints"), "needs at least one endpoint");
    }
    let mut endpoints = Vec::with_capacity(u.endpoints.len());
    for (i, e) in u.endpoints.iter().enumerate() {
        let at = |f: &str| format!("upstreams.{name}.endpoints[{i}]{f}");
        let address = e
            .address
            .parse::<http::uri::Authority>()
            .ok()
            .filter(|a| a.port_u16().is_some() && !e.address.contains('@'))
            .ok_or_else(|| format!("not a host:port endpoint: {:?}", e.address))
            .and_then(|a| match a.port_u16() {
                Some(0) => Err(format!("port 0 is not a port to connect to: {:?}", e.address)),
                _ => Ok(a),
            });
        let address = errors.check(at(if e.weight.is_some() { ".address" } else { "" }), address);
        let weight = e.weight.unwrap_or(1);
        if !(1..=1000).contains(&weight) {
            errors.push(at(".weight"), format!("must be between 1 and 1000, got {weight}"));
        }
        let states = [
            ("up", EndpointState::Up),
            ("drain", EndpointState::Drain),
            ("down", EndpointState::Down),
        ];
        let state = one_of(errors, &at(".state"), &e.state, &states);
        if let (Some(address), Some(state)) = (address, state) {
            endpoints.push(Endpoint { address, weight, state });
        }
    }
    let mut seen = HashSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        if !seen.insert(e.address.clone()) {
            errors.push(at(&format!("endpoints[{i}]")), format!("{} is listed twice", e.address));
        }
    }
    let strategy = validate_strategy(u, &at, errors);
    let connect_timeout = duration(errors, &at("connect_timeout"), &u.connect_timeout);
    let timeout = duration(errors, &at("timeout"), &u.timeout);
    let total_timeout = duration(errors, &at("total_timeout"), &u.total_timeout);
    let idle_timeout = duration(errors, &at("idle_timeout"), &u.idle_timeout);
    let slow_start = duration(errors, &at("slow_start"), &u.slow_start);
    let health_check = match &u.health_check {
        None => Some(None),
        Some(h) => validate_health_check(h, &at, errors).map(Some),
    };
    let passive_health = match &u.passive_health {
        Some(p) if p.enabled == Some(false) => Some(None),
        p => validate_passive(p.as_ref(), &at, errors).map(Some),
    };
    let circuit_breaker = match &u.circuit_breaker {
        None => Some(None),
        Some(b) => validate_breaker(b, &at, errors).map(Some),
    };
    let retry = validate_retry(u.retry.as_ref(), &at, errors);
    let protocol = validate_protocol(u, &at, errors);
    if errors.0.len() > before {
        return None;
    }
    Some(Upstream {
        endpoints,
        strategy: strategy?,
        connect_timeout: connect_timeout?.unwrap_or(inherited.connect_timeout),
        timeout: timeout?.unwrap_or(inherited.request_timeout),
        total_timeout: total_timeout?,
        idle_timeout: idle_timeout?.unwrap_or(DEFAULT_IDLE_CONNECTION_TIMEOUT),
        slow_start: slow_start?,
        health_check: health_check?,
        passive_health: passive_health?,
        circuit_breaker: circuit_breaker?,
        retry: retry?,
        tls: match &u.tls {
            None => None,
            Some(t) => Some(validate_tls(t, &at, inherited.base, errors)?),
        },
        protocol: protocol?,
    })
}

/// `protocol = "http1" | "h2"`, and `http2 = { max_concurrent_streams }` for h2 only.
fn validate_protocol(
    u: &schema::Upstream,
    at: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<UpstreamProtocol> {
    let h2 = one_of(errors, &at("protocol"), &u.protocol, &[("http1", false), ("h2", true)])?;
    let streams = u.http2.as_ref().and_then(|h| h.max_concurrent_streams);
    match (h2, &u.http2) {
        (false, Some(_)) => {
            errors.push(at("http2"), "only used with protocol = \"h2\"");
            None
        }
        (false, None) => Some(UpstreamProtocol::Http1),
        (true, _) => match streams.unwrap_or(u64::from(DEFAULT_UPSTREAM_H2_STREAMS)) {
            n @ 1..=10_000 => Some(UpstreamProtocol::H2 { max_concurrent_streams: n as u32 }),
            n => {
                let msg = format!("must be between 1 and 10000, got {n}");
                errors.push(at("http2.max_concurrent_streams"), msg);
                None
            }
        },
    }
}

fn validate_tls(
    t: &schema::UpstreamTls,
    at: &impl Fn(&str) -> String,
    base: &std::path::Path,
    errors: &mut Errors,
) -> Option<UpstreamTls> {
    let client = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            errors.push(at("tls.cert"), "a client certificate needs both cert and key");
            return None;
        }
    };
    if let Some(n) = &t.server_name
        && rustls::pki_types::ServerName::try_from(n.as_str()).is_err()
    {
        errors.push(at("tls.server_name"), format!("not a DNS name or IP address: {n:?}"));
        return None;
    }
    Some(UpstreamTls {
        ca: t.ca.as_ref().map(|c| base.join(c)),
        server_name: t.server_name.clone(),
        client,
    })
}

pub(super) fn validate_strategy(
    u: &schema::Upstream,
    at: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<Strategy> {
    let names = [
        ("round_robin", Strategy::RoundRobin),
        ("weighted_round_robin", Strategy::WeightedRoundRobin),
        ("least_connections", Strategy::LeastConnections),
        ("random", Strategy::Random),
        ("p2c", Strategy::P2c),
        ("consistent_hash", Strategy::ConsistentHash(KeySource::ClientIp)),
    ];
    let strategy = one_of(errors, &at("strategy"), &u.strategy, &names)?;
    match (strategy, &u.hash_key) {
        (Strategy::ConsistentHash(_), Some(key)) => {
            errors.check(at("hash_key"), key_source(key)).map(Strategy::ConsistentHash)
        }
        (Strategy::ConsistentHash(_), None) => {
            errors.push(at("hash_key"), "consistent_hash needs a hash_key");
            None
        }
        (_, Some(_)) => {
            errors.push(at("hash_key"), "only used with strategy = \"consistent_hash\"");
            None
        }
        (s, None) => Some(s),
    }
}

pub(super) fn validate_health_check(
    h: &schema::HealthCheck,
    up: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<HealthCheck> {
    let at = |f: &str| up(&format!("health_check.{f}"));
    let kinds = [("http", true), ("tcp", false)];
    let http = one_of(errors, &at("kind"), &h.kind, &kinds);
    let interval = duration(errors, &at("interval"), &h.interval);
    let timeout = duration(errors, &at("timeout"), &h.timeout);
    let healthy = at_least_one(
        errors,
        &at("healthy_threshold"),
        h.healthy_threshold,
        DEFAULT_HEALTHY_THRESHOLD,
    );
    let unhealthy = at_least_one(
        errors,
        &at("unhealthy_threshold"),
        h.unhealthy_threshold,
        DEFAULT_UNHEALTHY_THRESHOLD,
    );
    let kind = match http? {
        false => {
            for (f, set) in [
                ("path", h.path.is_some()),
                ("method", h.method.is_some()),
                ("expected_statuses", h.expected_statuses.is_some()),
            ] {
                if set {
                    errors.push(at(f), "only used with kind = \"http\"");
                }
            }
            CheckKind::Tcp
        }
        true => {
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                errors.push(at("path"), format!("not a request path: {path:?}"));
            }
            let method = h.method.as_deref().unwrap_or("GET");
            let method = errors.check(
                at("method"),
                http::Method::from_bytes(method.as_bytes())
                    .map_err(|_| format!("not an HTTP method: {method:?}")),
            );
            let expected = h.expected_statuses.clone().unwrap_or_else(|| (200..300).collect());
            statuses(errors, &at("expected_statuses"), &expected);
            CheckKind::Http { method: method?, path, expected_statuses: expected }
        }
    };
    Some(HealthCheck {
        kind,
        interval: interval?.unwrap_or(DEFAULT_CHECK_INTERVAL),
        timeout: timeout?.unwrap_or(DEFAULT_CHECK_TIMEOUT),
        healthy_threshold: healthy?,
        unhealthy_threshold: unhealthy?,
    })
}

pub(super) fn validate_passive(
    p: Option<&schema::PassiveHealth>,
    up: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<PassiveHealth> {
    let at = |f: &str| up(&format!("passive_health.{f}"));
    let empty = schema::PassiveHealth {
        enabled: None,
        consecutive_failures: None,
        base_ejection: None,
        max_ejection: None,
        max_ejected_percent: None,
    };
    let p = p.unwrap_or(&empty);
    let failures = at_least_one(
        errors,
        &at("consecutive_failures"),
        p.consecutive_failures,
        DEFAULT_CONSECUTIVE_FAILURES,
    );
    let base = duration(errors, &at("base_ejection"), &p.base_ejection);
    let max = duration(errors, &at("max_ejection"), &p.max_ejection);
    let percent = p.max_ejected_percent.unwrap_or(DEFAULT_MAX_EJECTED_PERCENT);
    if percent > 100 {
        errors.push(at("max_ejected_percent"), format!("must be at most 100, got {percent}"));
    }
    let (base, max) =
        (base?.unwrap_or(DEFAULT_BASE_EJECTION), max?.unwrap_or(DEFAULT_MAX_EJECTION));
    if max < base {
        errors.push(at("max_ejection"), format!("must be at least base_ejection ({base:?})"));
    }
    Some(PassiveHealth {
        consecutive_failures: failures?,
        base_ejection: base,
        max_ejection: max,
        max_ejected_percent: percent,
    })
}

pub(super) fn validate_breaker(
    b: &schema::CircuitBreaker,
    up: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<CircuitBreaker> {
    let at = |f: &str| up(&format!("circuit_breaker.{f}"));
    let failure_threshold = at_least_one(
        errors,
        &at("failure_threshold"),
        b.failure_threshold,
        DEFAULT_FAILURE_THRESHOLD,
    );
    let success_threshold = at_least_one(
        errors,
        &at("success_threshold"),
        b.success_threshold,
        DEFAULT_SUCCESS_THRESHOLD,
    );
    let half_open = at_least_one(
        errors,
        &at("half_open_requests"),
        b.half_open_requests,
        DEFAULT_HALF_OPEN_REQUESTS,
    );
    let open_timeout = duration(errors, &at("open_timeout"), &b.open_timeout);
    let default = ["connect", "timeout", "5xx"].map(String::from);
    let mut kinds = FailureKinds::default();
    for (i, f) in b.failures.as_deref().unwrap_or(&default).iter().enumerate() {
        match f.as_str() {
            "connect" => kinds.connect = true,
            "timeout" => kinds.timeout = true,
            "5xx" => kinds.statuses.extend(500..600),
            code => match code.parse::<u16>() {
                Ok(c) if (100..600).contains(&c) => kinds.statuses.push(c),
                _ => errors.push(
                    at(&format!("failures[{i}]")),
                    format!(
                        "expected \"connect\", \"timeout\", \"5xx\" or a status code, got {code:?}"
                    ),
                ),
            },
        }
    }
    kinds.statuses.sort_unstable();
    kinds.statuses.dedup();
    Some(CircuitBreaker {
        failure_threshold: failure_threshold?,
        success_threshold: success_threshold?,
        open_timeout: open_timeout?.unwrap_or(DEFAULT_OPEN_TIMEOUT),
        half_open_requests: half_open?,
        failures: kinds,
    })
}

pub(super) fn validate_retry(
    r: Option<&schema::Retry>,
    up: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<RetryPolicy> {
    let at = |f: &str| up(&format!("retry.{f}"));
    let empty = schema::Retry {
        attempts: None,
        statuses: None,
        backoff: None,
        max_backoff: None,
        budget_ratio: None,
        budget_min_per_second: None,
    };
    let r = r.unwrap_or(&empty);
    let attempts = r.attempts.unwrap_or(DEFAULT_ATTEMPTS);
    if !(1..=10).contains(&attempts) {
        errors.push(at("attempts"), format!("must be between 1 and 10, got {attempts}"));
    }
    let retry_statuses = r.statuses.clone().unwrap_or(DEFAULT_RETRY_STATUSES.to_vec());
    statuses(errors, &at("statuses"), &retry_statuses);
    let backoff = duration(errors, &at("backoff"), &r.backoff);
    let max_backoff = duration(errors, &at("max_backoff"), &r.max_backoff);
    let ratio = r.budget_ratio.unwrap_or(DEFAULT_BUDGET_RATIO);
    if !(0.0..=1.0).contains(&ratio) {
        errors.push(at("budget_ratio"), format!("must be between 0 and 1, got {ratio}"));
    }
    let (backoff, max_backoff) =
        (backoff?.unwrap_or(DEFAULT_BACKOFF), max_backoff?.unwrap_or(DEFAULT_MAX_BACKOFF));
    if max_backoff < backoff {
        errors.push(at("max_backoff"), format!("must be at least backoff ({backoff:?})"));
    }
    Some(RetryPolicy {
        attempts,
        statuses: retry_statuses,
        backoff,
        max_backoff,
        budget_ratio: ratio,
        budget_min_per_second: r.budget_min_per_second.unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND),
    })
}
