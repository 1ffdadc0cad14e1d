//! The listener: accepts connections (HTTP/1.1 and h2c), serves each request from the
//! current gateway snapshot, and shuts down gracefully: stop accepting, let in-flight
//! requests finish (up to `shutdown_timeout`), then return.
//!
//! No class of client may hold what the others need: connections are capped in all and
//! per client address (over the cap, a new one is closed at once), a connection must send
//! its first bytes within `header_timeout`, and one with no request in flight and no byte
//! either way for `idle_timeout` is closed, whatever protocol it claims to speak.

mod accept;
mod conn;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::message::ConnInfo;
use crate::proxy;
use crate::throttle::{Throttle, Verdict, suppressed_note};
pub use accept::{Acceptor, PlainTcp};
pub use conn::Hold;
use conn::{Activity, Answer, Resets};
pub(crate) use conn::{Limits, Slot};

/// The live gateway: swapped whole on reload, read per request without locking.
pub type Shared = Arc<ArcSwap<Gateway>>;

/// Serves `listener` until `shutdown` resolves, then drains in-flight requests.
/// `acceptor` turns each connection into the stream HTTP is spoken on (see [`Acceptor`]).
pub async fn serve<A: Acceptor>(
    listener: TcpListener,
    name: Arc<str>,
    acceptor: Arc<A>,
    gateway: Shared,
    shutdown: impl Future<Output = ()>,
    shutdown_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let limits = Limits::metered();
    let throttle = Throttle::default();
    let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    if let Verdict::Write { suppressed } = throttle.check("accept") {
                        tracing::warn!("accept failed: {e}{}", suppressed_note(suppressed));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Settings are read per connection, so a reload applies to new connections.
        let (max, max_per_ip, settings) = {
            let gw = gateway.load();
            let s = &gw.config.server;
            let settings = ConnSettings {
                header_timeout: s.header_timeout,
                idle_timeout: s.idle_timeout,
                http2: s.http2,
            };
            (s.max_connections, s.max_connections_per_ip, settings)
        };
        let Some(slot) = limits.admit(peer.ip(), max, max_per_ip) else {
            crate::telemetry::metrics().connections_refused.inc();
            if let Verdict::Write { suppressed } = throttle.check("shed") {
                tracing::warn!(
                    %peer,
                    "connection refused: server.max_connections ({max}) or \
                     max_connections_per_ip ({max_per_ip}) reached{}",
                    suppressed_note(suppressed)
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (gateway, acceptor, watcher) = (gateway.clone(), acceptor.clone(), graceful.watcher());
        let name = name.clone();
        tokio::spawn(async move {
            let mut info = ConnInfo::new(peer, local, name);
            // Held by the connection and whatever outlives it (a WebSocket tunnel).
            info.slot = Some(slot);
            let handshake = tokio::time::timeout(
                settings.header_timeout,
                acceptor.handshake(stream, &mut info),
            );
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(%peer, "handshake failed: {e}"),
                Err(_) => return tracing::debug!(%peer, "handshake timed out"),
            };
            serve_connection(stream, Arc::new(info), gateway, watcher, settings).await;
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!("shutdown timeout ({shutdown_timeout:?}) reached; closing remaining connections")
        }
    }
    // WebSockets have left their HTTP connections; they get what is left of the time.
    proxy::tunnel::drain(deadline).await;
}

/// What a connection is allowed, read from the config when it is accepted.
#[derive(Clone, Copy)]
struct ConnSettings {
    header_timeout: Duration,
    idle_timeout: Duration,
    http2: crate::config::Http2Settings,
}

/// Serves HTTP on one connection until it ends, goes quiet, or (HTTP/2) resets more
/// streams than it lets finish.
async fn serve_connection<S>(
    stream: S,
    conn: Arc<ConnInfo>,
    gateway: Shared,
    watcher: Watcher,
    settings: ConnSettings,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let activity = Activity::new();
    let in_flight = activity.clone();
    let resets = Resets::new(settings.http2.max_client_resets);
    let counted = resets.clone();
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let gw = gateway.load_full();
        let conn = conn.clone();
        let busy = in_flight.busy();
        if req.extensions().get::<hyper::ext::Protocol>().is_some() {
            // An extended CONNECT (a WebSocket over HTTP/2) may become a tunnel inside
            // this connection, which must not count as idle while the tunnel is open.
            req.extensions_mut().insert(in_flight.hold());
        }
        // HTTP/2 streams that the client resets before their response are counted.
        let h2 = req.version() == http::Version::HTTP_2;
        if h2 {
            in_flight.speaks_h2();
        }
        let stream = h2.then(|| counted.stream());
        async move {
            let resp = proxy::handle(gw, req, conn).await;
            if let Some(stream) = stream {
                stream.answered();
            }
            // Until its body is written, the connection is not waiting for a head.
            let responding = busy.responding();
            Ok::<_, Infallible>(resp.map(|body| Answer::new(body, responding)))
        }
    });
    let h2 = settings.http2;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout is kept by the connection's watchdog (`activity.idle` below), not
    // by hyper, whose timer costs a registration in tokio's timer wheel per request.
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(h2.max_header_list_bytes)
        .initial_stream_window_size(h2.stream_window_bytes)
        .initial_connection_window_size(h2.connection_window_bytes)
        // WebSockets over HTTP/2 (RFC 8441): SETTINGS_ENABLE_CONNECT_PROTOCOL.
        .enable_connect_protocol();
    let io = TokioIo::new(activity.watch(stream));
    let conn = watcher.watch(builder.serve_connection_with_upgrades(io, service).into_owned());
    tokio::select! {
        ended = conn => if let Err(e) = ended {
            if calmed(&*e) {
                flood(peer, "h2 refused it (ENHANCE_YOUR_CALM: streams reset before they \
                             were accepted, or similar abuse)");
            }
            tracing::debug!(%peer, "connection ended with an error: {e}");
        },
        quiet = activity.idle(settings.header_timeout, settings.idle_timeout) => {
            tracing::debug!(%peer, ?quiet, "closing a connection that went quiet");
        }
        () = resets.flooded() => flood(
            peer,
            &format!(
                "it reset more streams than it let finish (server.http2.max_client_resets = {})",
                h2.max_client_resets
            ),
        ),
    }
}

/// Whether h2 closed the connection with ENHANCE_YOUR_CALM: its own defences (streams
/// reset before they were accepted, too many local error resets) fired.
fn calmed(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source())
        .filter_map(|e| e.downcast_ref::<h2::Error>())
        .any(|e| e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
}

/// An HTTP/2 connection closed for flooding: counted, and logged a few times a second.
fn flood(peer: SocketAddr, why: &str) {
    static THROTTLE: std::sync::LazyLock<Throttle> = std::sync::LazyLock::new(Throttle::default);
    crate::telemetry::metrics().http2_floods.inc();
    if let Verdict::Write { suppressed } = THROTTLE.check("h2 flood") {
        let note = suppressed_note(suppressed);
        tracing::warn!(%peer, "closed an HTTP/2 connection: {why}{note}");
    }
}

/// Raises this process's open-file limit to its hard limit, as a gateway holding many
/// connections needs; returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// A gateway serving on a bound socket, as started by [`crate::start`].
pub struct Running {
    /// Where `server.listen` is bound.
    pub addr: SocketAddr,
    /// Every listener by name, `default` first, with its bound address.
    pub listeners: Vec<(Arc<str>, SocketAddr)>,
    pub gateway: Shared,
    /// Applies config changes to this gateway.
    pub reloader: Arc<crate::Reloader>,
    /// The admin listener, if `[admin]` is configured.
    pub admin: Option<crate::admin::AdminHandle>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub(crate) fn new(
        addr: SocketAddr,
        listeners: Vec<(Arc<str>, SocketAddr)>,
        gateway: Shared,
        reloader: Arc<crate::Reloader>,
        admin: Option<crate::admin::AdminHandle>,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self { addr, listeners, gateway, reloader, admin, stop, task }
    }

    /// Stops accepting and waits for in-flight requests to finish. Meanwhile the admin
    /// listener answers `/ready` with 503; it stops last.
    pub async fn shutdown(self) {
        if let Some(admin) = &self.admin {
            admin.state.drain();
        }
        let _ = self.stop.send(true);
        let _ = self.task.await;
        crate::telemetry::otel::flush(std::time::Duration::from_secs(5)).await;
        drop(self.admin);
    }
}
