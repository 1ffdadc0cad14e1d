//! WebSocket tunnels. An upgrade request goes through the route's request phases (so auth
//! protects the socket) and the upstream like any GET; when the upstream answers
//! `101 Switching Protocols`, the client gets the 101 and both connections become one
//! byte tunnel, run here in a task of its own.
//!
//! Over HTTP/2 a client opens a WebSocket with an extended CONNECT (RFC 8441: `:method
//! CONNECT`, `:protocol websocket`) on one stream of its connection. It goes through the
//! route as the same GET an HTTP/1.1 client would send (plugins see no difference), the
//! gateway adds the `Sec-WebSocket-Key` an HTTP/1.1 upstream needs and checks its
//! `Sec-WebSocket-Accept`, answers the client `200`, and the stream carries the same
//! frames as the tunnel's client side. Either way:
//!
//! - closed after the route's `websocket.idle_timeout` without a byte either way, and after
//!   `websocket.max_lifetime` whatever it does;
//! - a client frame that declares more than `websocket.max_frame_bytes` closes it (1009)
//!   before any of that frame reaches the upstream: frame headers are read as they pass,
//!   payloads are never buffered;
//! - it keeps the client connection's slot (`server.max_connections`) and, for
//!   least-connections balancing, its endpoint's in-flight count;
//! - on shutdown, open tunnels get `server.shutdown_timeout` to end by themselves, then
//!   are closed with 1001 (going away).
//!
//! A close frame is sent to the client only at a frame boundary of the upstream's stream,
//! so that it never lands inside one of the upstream's frames; otherwise the connection is
//! just closed.

mod frames;

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};

use crate::config::WebSocketSettings;
use crate::message::ConnInfo;
use crate::upstream::InFlight;
pub use frames::Frames;

/// The client's side of an upgrade it asked for, taken from its request.
pub struct ClientUpgrade {
    pub(super) on: OnUpgrade,
    pub(super) settings: WebSocketSettings,
    /// Over HTTP/2: the key the gateway sent the upstream in its place, and the hold that
    /// keeps the client's connection from counting as idle while the tunnel is open.
    pub(super) h2: Option<(HeaderValue, Option<crate::server::Hold>)>,
}

/// How a request asks to become a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    No,
    /// An HTTP/1.1 upgrade (RFC 6455 4.1).
    Http1,
    /// An HTTP/2 extended CONNECT (RFC 8441 4).
    Http2,
}

/// The upstream's side, once it answered 101.
pub struct UpstreamUpgrade {
    pub(super) on: OnUpgrade,
    /// The upstream's `Upgrade` header, sent on to the client.
    pub(super) protocol: HeaderValue,
    pub(super) in_flight: Option<InFlight>,
}

/// Whether a request asks to become a WebSocket: an HTTP/1.1 GET with `Connection:
/// upgrade` and `Upgrade: websocket` (RFC 6455 4.1), or an HTTP/2 CONNECT with `:protocol`
/// `websocket` (RFC 8441 4). Read before the hop-by-hop headers are dropped. Other
/// upgrades (h2c, TLS) and other extended CONNECTs are never tunneled.
pub fn wants_websocket(parts: &http::request::Parts) -> Wants {
    use http::header::{CONNECTION, UPGRADE};
    if parts.version == http::Version::HTTP_2 {
        let protocol = parts.extensions.get::<hyper::ext::Protocol>();
        let websocket = protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        return match parts.method == http::Method::CONNECT && websocket {
            true => Wants::Http2,
            false => Wants::No,
        };
    }
    let has_token = |name, token: &str| {
        parts.headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    match parts.method == http::Method::GET
        && parts.version == http::Version::HTTP_11
        && has_token(CONNECTION, "upgrade")
        && has_token(UPGRADE, "websocket")
    {
        true => Wants::Http1,
        false => Wants::No,
    }
}

/// An HTTP/2 WebSocket request as the GET an HTTP/1.1 client sends, for routing, plugins
/// and the upstream (which gets `Connection`, `Upgrade` and a key when it is sent).
pub fn h2_as_get(parts: &mut http::request::Parts) {
    parts.method = http::Method::GET;
    parts.extensions.remove::<hyper::ext::Protocol>();
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 4.1); `None` if the
/// system's random generator fails (the request then fails, the gateway does not).
pub fn new_key() -> Option<HeaderValue> {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut nonce = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut nonce).ok()?;
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key).ok()
}

/// The `Sec-WebSocket-Accept` an upstream must answer `key` with (RFC 6455 4.2.2).
pub fn accept_for(key: &HeaderValue) -> String {
    use base64::Engine as _;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Open tunnels, and the signal that closes them at the end of a shutdown.
struct Registry {
    open: AtomicUsize,
    changed: Notify,
    closing: watch::Sender<bool>,
}

static TUNNELS: LazyLock<Registry> = LazyLock::new(|| Registry {
    open: AtomicUsize::new(0),
    changed: Notify::new(),
    closing: watch::Sender::new(false),
});

/// Tunnels open now.
pub fn open() -> usize {
    TUNNELS.open.load(Ordering::Acquire)
}

/// Waits until every tunnel has ended, or until `deadline`; then closes those left (1001)
/// and gives them a second to go.
pub async fn drain(deadline: tokio::time::Instant) {
    let all_ended = async {
        loop {
            let changed = TUNNELS.changed.notified();
            if open() == 0 {
                return;
            }
            changed.await;
        }
    };
    if tokio::time::timeout_at(deadline, all_ended).await.is_ok() {
        return;
    }
    let left = open();
    tracing::info!("closing {left} WebSocket connection(s) still open (going away)");
    TUNNELS.closing.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while open() > 0 {
            TUNNELS.changed.notified().await;
        }
    })
    .await;
}

/// Counts one open tunnel, by route in the metrics.
struct Open(Arc<str>);

impl Open {
    fn new(route: Arc<str>) -> Self {
        TUNNELS.open.fetch_add(1, Ordering::AcqRel);
        crate::telemetry::metrics().websockets_active.with_label_values(&[&*route]).inc();
        Self(route)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        crate::telemetry::metrics().websockets_active.with_label_values(&[&*self.0]).dec();
        TUNNELS.open.fetch_sub(1, Ordering::AcqRel);
        TUNNELS.changed.notify_waiters();
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both sides closed (or one did and the other followed).
    Closed,
    IdleTimeout,
    MaxLifetime,
    Shutdown,
    FrameTooLarge,
    /// A read or write failed.
    Error,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::MaxLifetime => "max_lifetime",
            End::Shutdown => "shutdown",
            End::FrameTooLarge => "frame_too_large",
            End::Error => "error",
        }
    }

    /// The close frame the gateway sends the client, when it is the one ending the tunnel.
    fn close_frame(self) -> Option<Vec<u8>> {
        let (code, reason): (u16, &str) = match self {
            End::Closed | End::Error => return None,
            End::IdleTimeout => (1001, "idle timeout"),
            End::MaxLifetime => (1001, "maximum lifetime reached"),
            End::Shutdown => (1001, "going away"),
            End::FrameTooLarge => (1009, "frame too large"),
        };
        // FIN + close opcode, an unmasked payload of the code and reason (< 126 bytes).
        let mut frame = vec![0x88, (2 + reason.len()) as u8];
        frame.extend_from_slice(&code.to_be_bytes());
        frame.extend_from_slice(reason.as_bytes());
        Some(frame)
    }
}

/// Runs the tunnel once both sides have switched. `conn` keeps the client connection's
/// slot for as long as the tunnel is open.
pub fn spawn(
    client: ClientUpgrade,
    upstream: UpstreamUpgrade,
    route: Arc<str>,
    conn: Arc<ConnInfo>,
) {
    let open = Open::new(route.clone());
    tokio::spawn(async move {
        let settings = client.settings;
        // The client's side resolves once its 101 is written, the upstream's at once.
        let switched = tokio::time::timeout(settings.idle_timeout, async {
            tokio::try_join!(client.on, upstream.on)
        });
        let (c, u) = match switched.await {
            Ok(Ok(both)) => both,
            Ok(Err(e)) => return tracing::debug!(route = %route, "upgrade failed: {e}"),
            Err(_) => return tracing::debug!(route = %route, "upgrade timed out"),
        };
        let end = run(TokioIo::new(c), TokioIo::new(u), settings).await;
        tracing::debug!(route = %route, peer = %conn.peer, "WebSocket ended: {}", end.label());
        crate::telemetry::metrics()
            .websocket_closes
            .with_label_values(&[&*route, end.label()])
            .inc();
        drop((open, upstream.in_flight, conn, client.h2));
    });
}

/// Copies both ways until both sides close or the gateway ends the tunnel.
async fn run<C, U>(client: C, upstream: U, settings: WebSocketSettings) -> End
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    U: AsyncRead + AsyncWrite + Send + 'static,
{
    let (client_in, client_out) = tokio::io::split(client);
    let (upstream_in, upstream_out) = tokio::io::split(upstream);
    let moved = AtomicU64::new(0);
    let (stop_tx, stop) = watch::channel(None::<End>);
    let up =
        pump(client_in, upstream_out, Frames::limited(settings.max_frame_bytes), &moved, &stop_tx);
    let down = pump(upstream_in, client_out, Frames::unlimited(), &moved, &stop_tx);
    let pumps = async { tokio::join!(up, down) };
    tokio::pin!(pumps);
    let mut shutdown = TUNNELS.closing.subscribe();
    let lifetime = tokio::time::sleep(settings.max_lifetime);
    tokio::pin!(lifetime);
    let tick = (settings.idle_timeout / 4).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    let (mut seen, mut quiet) = (0, Duration::ZERO);
    let ended = loop {
        tokio::select! {
            ended = &mut pumps => break Some(ended),
            _ = ticks.tick() => {
                let now = moved.load(Ordering::Relaxed);
                quiet = if now == seen { quiet + tick } else { Duration::ZERO };
                seen = now;
                if quiet >= settings.idle_timeout {
                    stop_tx.send_replace(Some(End::IdleTimeout));
                    break None;
                }
            }
            () = &mut lifetime => {
                stop_tx.send_replace(Some(End::MaxLifetime));
                break None;
            }
            _ = shutdown.wait_for(|closing| *closing) => {
                stop_tx.send_replace(Some(End::Shutdown));
                break None;
            }
        }
    };
    // Stopped pumps return at their next read; one stuck writing to a peer that does not
    // read gets a second, then the tunnel is dropped.
    let ended = match ended {
        Some(ended) => ended,
        None => match tokio::time::timeout(Duration::from_secs(1), &mut pumps).await {
            Ok(ended) => ended,
            Err(_) => return (*stop.borrow()).unwrap_or(End::Error),
        },
    };
    let ((client_in, _, _), (_, client_out, down_frames)) = ended;
    let end = (*stop.borrow()).unwrap_or(End::Closed);
    if let Some(frame) = end.close_frame()
        && down_frames.at_boundary()
    {
        let (mut input, mut out) = (client_in, client_out);
        // Then a lingering close: what the client still sends (the rest of a refused
        // frame, its own close frame) is read and dropped until it closes too, so the
        // socket does not reset and take the close frame with it.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            out.write_all(&frame).await?;
            out.shutdown().await?;
            let mut sink = [0u8; 4096];
            while input.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    }
    end
}

/// Copies `from` to `to` until `from` ends (then `to` is shut down for writing) or a stop
/// is signalled. `frames` reads the frame headers passing through; a frame over its limit
/// stops both directions before any of it is written.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut frames: Frames,
    moved: &AtomicU64,
    stop_tx: &watch::Sender<Option<End>>,
) -> (R, W, Frames)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut stop = stop_tx.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = stop.wait_for(Option::is_some) => break,
        };
        let n = match read {
            Ok(0) => {
                let _ = to.shutdown().await;
                break;
            }
            Ok(n) => n,
            Err(_) => {
                stop_tx.send_if_modified(|s| s.is_none().then(|| *s = Some(End::Error)).is_some());
                break;
            }
        };
        let (ok, over) = match frames.feed(&buf[..n]) {
            Ok(()) => (n, false),
            Err(at) => (at, true),
        };
        if to.write_all(&buf[..ok]).await.is_err() {
            stop_tx.send_if_modified(|s| s.is_none().then(|| *s = Some(End::Error)).is_some());
            break;
        }
        moved.fetch_add(1, Ordering::Relaxed);
        if over {
            stop_tx
                .send_if_modified(|s| s.is_none().then(|| *s = Some(End::FrameTooLarge)).is_some());
            break;
        }
    }
    (from, to, frames)
}

#[cfg(test)]
mod tests;
