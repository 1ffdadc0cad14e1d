//! Upstreams: named endpoint sets, and the pooled keep-alive client that reaches them.
//!
//! Endpoint choice is round robin for now; this is the seam where balancers, health sets
//! and circuit breakers plug in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::message::BoxBody;

/// The pooled HTTP/1.1 client shared by all upstreams of a gateway.
pub type Client = HyperClient<HttpConnector, BoxBody>;

pub fn client(connect_timeout: Duration) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Authority>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(name: String, endpoints: Vec<Authority>) -> Self {
        assert!(!endpoints.is_empty(), "config validation guarantees an endpoint");
        Self { name, endpoints, next: AtomicUsize::new(0) }
    }

    /// The endpoint for the next request.
    pub fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        &self.endpoints[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let eps: Vec<Authority> =
            ["a:1", "b:2", "c:3"].iter().map(|s| s.parse().unwrap()).collect();
        let up = Upstream::new("u".into(), eps);
        let picked: Vec<_> = (0..6).map(|_| up.pick().as_str().to_owned()).collect();
        assert_eq!(picked, ["a:1", "b:2", "c:3", "a:1", "b:2", "c:3"]);
    }
}
