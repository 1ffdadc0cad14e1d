//! The admin listener (`[admin] listen`): what an operator and their orchestrator ask the
//! gateway, apart from its traffic.
//!
//! - `GET /metrics`: Prometheus text format (docs/observability.md lists every series);
//! - `GET /live`: 200 while the process serves its admin listener;
//! - `GET /ready`: 200 once a config is loaded and serving, 503 before (plugins still
//!   compiling) and while draining on shutdown;
//! - `/api/v1/...`: the admin API ([`api`], docs/admin.md), behind the tokens of [`auth`];
//! - `GET /`: the dashboard, a page (and its script and style) that polls the API.
//!
//! It is a listener of its own: a flood of traffic, or a traffic listener's connection
//! cap, never keeps an operator from it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

mod api;
pub mod auth;
pub mod log_level;
mod redact;
mod stats;

use crate::gateway::Gateway;
use crate::plugin::{RolloutState, Runtime};
use crate::reload::Reloader;
use crate::server::Shared;
use crate::telemetry::metrics;
use crate::throttle::{Throttle, Verdict, suppressed_note};
use crate::upstream::breaker;

/// What the admin listener reads: set as the gateway comes up and goes down.
pub struct AdminState {
    gateway: OnceLock<(Shared, Arc<Runtime>, Arc<Reloader>)>,
    draining: AtomicBool,
    auth: auth::Auth,
    started: std::time::Instant,
    /// Each endpoint's recent attempts, sampled every few seconds.
    recent: stats::Recent,
}

impl AdminState {
    fn new(auth: auth::Auth) -> Self {
        Self {
            gateway: OnceLock::new(),
            draining: AtomicBool::new(false),
            auth,
            started: std::time::Instant::now(),
            recent: stats::Recent::new(),
        }
    }

    /// The gateway is serving: `/ready` says so from now on.
    pub fn serving(&self, gateway: Shared, runtime: Arc<Runtime>, reloader: Arc<Reloader>) {
        let _ = self.gateway.set((gateway, runtime, reloader));
    }

    fn serving_gateway(&self) -> Option<(&Shared, &Arc<Runtime>, &Arc<Reloader>)> {
        self.gateway.get().map(|(g, rt, r)| (g, rt, r))
    }

    fn auth(&self) -> &auth::Auth {
        &self.auth
    }

    /// Shutdown began: `/ready` answers 503 so load balancers stop sending traffic.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn ready(&self) -> bool {
        self.gateway.get().is_some() && !self.draining.load(Ordering::Acquire)
    }
}

/// The running admin listener; dropping it stops it.
pub struct AdminHandle {
    pub addr: SocketAddr,
    pub state: Arc<AdminState>,
    task: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<()>,
}

impl AdminHandle {
    /// Reads (or generates) the tokens, binds `[admin] listen` and serves there from now
    /// on: `/live` at once, `/ready` and the API once [`AdminState::serving`] is called.
    pub async fn start(config: &crate::config::Admin) -> Result<Self, StartFailure> {
        let auth = auth::Auth::load(config).map_err(StartFailure::Token)?;
        let tls = match &config.tls {
            None => None,
            Some(settings) => {
                let loaded = crate::tls::load(settings, "admin.tls").map_err(StartFailure::Tls)?;
                crate::tls::log_certs("admin", &loaded);
                // The admin listener speaks HTTP/1.1 only.
                let mut config = (*loaded.config).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
            }
        };
        let listener = TcpListener::bind(config.listen).await.map_err(StartFailure::Listen)?;
        let addr = listener.local_addr().map_err(StartFailure::Listen)?;
        let protected = match auth.required() {
            true => "tokens required",
            false => "no tokens: loopback only",
        };
        let state = Arc::new(AdminState::new(auth));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_certs = match config.tls.as_ref().map(|t| t.client_auth) {
            Some(crate::config::ClientAuth::Required) => ", client certificates required",
            Some(crate::config::ClientAuth::Optional) => ", client certificates optional",
            _ => "",
        };
        let task = tokio::spawn(serve(listener, tls, state.clone(), std::future::pending()));
        let sampler = tokio::spawn({
            let state = state.clone();
            async move {
                let mut every = tokio::time::interval(stats::SAMPLE_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    state.recent.sample();
                }
            }
        });
        tracing::info!(
            "admin listener on {scheme}://{addr} (/metrics, /live, /ready, /api/v1: \
             {protected}{client_certs})"
        );
        Ok(Self { addr, state, task, sampler })
    }
}

/// Why the admin listener could not start.
#[derive(Debug)]
pub enum StartFailure {
    Token(std::io::Error),
    Listen(std::io::Error),
    /// `admin.tls`'s files did not load, with their TOML paths.
    Tls(Vec<crate::config::ConfigError>),
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.task.abort();
        self.sampler.abort();
    }
}

/// Connections the admin listener holds open at once, in all and from one address. A
/// dashboard takes about six; a client past either cap is closed at once, so no one
/// address (nor a flood of unauthenticated ones) can crowd out the operator.
const MAX_CONNECTIONS: usize = 64;
const MAX_CONNECTIONS_PER_IP: usize = 16;

/// Serves the admin endpoints on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AdminState>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let limits = crate::server::Limits::default();
    let throttle = Throttle::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let Some(slot) = limits.admit(peer.ip(), MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP) else {
            if let Verdict::Write { suppressed } = throttle.check("admin-shed") {
                tracing::warn!(
                    %peer,
                    "admin connection refused: {MAX_CONNECTIONS} open in all or \
                     {MAX_CONNECTIONS_PER_IP} from one address{}",
                    suppressed_note(suppressed)
                );
            }
            drop(stream);
            continue;
        };
        let (state, tls) = (state.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(stream, peer, state).await,
                // The handshake counts against the header timeout's 10 s.
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, state).await,
                    Ok(Err(e)) => tracing::debug!(%peer, "admin TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                },
            }
        });
    }
}

/// The longest an admin connection may take to send its request head (and its TLS
/// handshake); a connection is closed after 300 s whatever it does.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_connection<S>(stream: S, peer: std::net::SocketAddr, state: Arc<AdminState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move {
            Ok::<_, Infallible>(match req.uri().path().starts_with("/api/") {
                true => api::answer(&state, peer, req).await,
                false => answer(&state, &req),
            })
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    // A scraper keeps its connection; one that goes quiet is closed.
    let _ = tokio::time::timeout(Duration::from_secs(300), conn).await;
}

/// The dashboard's files, built into the binary: no build step, no network.
const DASHBOARD: [(&str, &str, &str); 3] = [
    ("/", "text/html; charset=utf-8", include_str!("admin/dashboard/index.html")),
    (
        "/dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("admin/dashboard/dashboard.js"),
    ),
    ("/dashboard.css", "text/css; charset=utf-8", include_str!("admin/dashboard/dashboard.css")),
];

fn answer(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some((_, kind, body)) = DASHBOARD.iter().find(|(p, ..)| *p == path)
        && matches!(*req.method(), Method::GET | Method::HEAD)
    {
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(kind));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
        );
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, http::HeaderValue::from_static("nosniff"));
        return resp;
    }
    if !matches!(path, "/metrics" | "/live" | "/ready") {
        return text(StatusCode::NOT_FOUND, "not found: try /metrics, /live, /ready or /api/v1\n");
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        resp.headers_mut().insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => match (state.ready(), state.draining.load(Ordering::Acquire)) {
            (true, _) => text(StatusCode::OK, "ready\n"),
            (false, true) => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            (false, false) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting: no config loaded yet\n")
            }
        },
        _ if !metrics().settings.enabled => {
            text(StatusCode::NOT_FOUND, "metrics are off: [metrics] enabled = false\n")
        }
        _ => {
            let body = match state.gateway.get() {
                Some((gateway, runtime, _)) => scrape(Some((&gateway.load(), runtime))),
                None => scrape(None),
            };
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Every series, in Prometheus text format: the gauges describing the running gateway are
/// set from it first, so an endpoint or plugin that is gone leaves no series behind.
pub fn scrape(serving: Option<(&Gateway, &Runtime)>) -> String {
    // Concurrent scrapes must not interleave resetting and setting the gauges.
    static SCRAPING: Mutex<()> = Mutex::new(());
    let _one = SCRAPING.lock().unwrap_or_else(|p| p.into_inner());
    let m = metrics();
    for g in [
        &m.endpoint_healthy,
        &m.endpoint_in_flight,
        &m.breaker_state,
        &m.plugin_instances_idle,
        &m.plugin_instances_busy,
        &m.tls_cert_expiry,
    ] {
        g.reset();
    }
    m.rollout_share.reset();
    let mut families = Vec::new();
    if let Some((gw, runtime)) = serving {
        for (name, u) in gw.upstreams() {
            for (i, e) in u.endpoints().iter().enumerate() {
                let labels = [name.as_str(), e.address.as_str()];
                m.endpoint_healthy.with_label_values(&labels).set(u.usable_now(i) as i64);
                m.endpoint_in_flight.with_label_values(&labels).set(i64::from(e.in_flight()));
                if let Some(b) = &e.breaker {
                    let now = b.state();
                    for s in breaker::State::ALL {
                        m.breaker_state
                            .with_label_values(&[name.as_str(), e.address.as_str(), s.label()])
                            .set((s == now) as i64);
                    }
                }
            }
        }
        for (listener, t) in gw.tls_listeners() {
            for c in &t.certs {
                let name = c.names.first().map_or("", String::as_str);
                let secs = c.not_after.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                m.tls_cert_expiry.with_label_values(&[listener, name]).set(secs.as_secs() as i64);
            }
        }
        for (name, p) in gw.plugins() {
            m.plugin_instances_idle.with_label_values(&[name]).set(p.idle_instances() as i64);
            m.plugin_instances_busy.with_label_values(&[name]).set(p.busy_instances() as i64);
            if let Some(r) = p.rollout() {
                let (share, state) = match r.state() {
                    RolloutState::Active => (r.spec.percent / 100.0, "active"),
                    RolloutState::Promoted => (1.0, "promoted"),
                    RolloutState::RolledBack => (0.0, "rolled_back"),
                };
                m.rollout_share.with_label_values(&[name, state]).set(share);
            }
        }
        families.extend(runtime.capabilities.metrics.registry.gather());
    }
    families.extend(m.registry.gather());
    prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_default()
}
