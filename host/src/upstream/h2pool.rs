//! HTTP/2 to an upstream (`protocol = "h2"`): per endpoint, connections that each carry at
//! most as many requests at once as both the config and the upstream allow, and more
//! connections when every one is full.
//!
//! hyper-util's pool keeps one HTTP/2 connection per host and queues on it past the peer's
//! stream limit (hyper#3623); this one counts its own streams instead, as Pingora's does:
//! a request reserves a stream on the first connection with one free (a connection being
//! made counts, so a burst of first requests shares it rather than opening one each), holds
//! it until its response body is dropped, and opens a new connection only when none has
//! room. The peer's `SETTINGS_MAX_CONCURRENT_STREAMS` is read off each connection as it
//! passes requests; a connection is handed out only once the peer's first SETTINGS are in
//! force, and requests that reserved more streams on it than the peer allows move on.
//! A connection with no streams for `idle_timeout` is closed.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::client::conn::http2;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::connector::{Conn, Connector};
use super::send::TransportError;
use crate::message::{BoxBody, BoxError};

/// A stream count that marks a connection closed: no reservation can succeed against it.
const CLOSED: u32 = u32::MAX;

/// How many times one request may move off a connection the peer limited below what was
/// reserved on it before it stays and waits in that connection's queue.
const MOVES: u32 = 2;

/// The pool of one upstream.
pub(crate) struct H2 {
    connector: Connector,
    scheme: Scheme,
    /// The configured limit per connection; the peer may lower it.
    max_streams: u32,
    connect_timeout: Duration,
    idle_timeout: Duration,
    builder: http2::Builder<TokioExecutor>,
    endpoints: Mutex<HashMap<Authority, Endpoint>>,
}

/// One endpoint's connections, and the stream limit its last connection was given: a new
/// connection starts from it, so a burst does not pile onto a connection still being made
/// more requests than the peer will take.
#[derive(Default)]
struct Endpoint {
    conns: Vec<Arc<H2Conn>>,
    learned: Arc<AtomicU32>,
}

/// One connection (or one being made) and its stream accounting.
struct H2Conn {
    /// Streams in use or reserved; [`CLOSED`] once it takes no more.
    streams: AtomicU32,
    /// min(configured, the peer's SETTINGS_MAX_CONCURRENT_STREAMS).
    limit: AtomicU32,
    /// The endpoint's limit, which this connection keeps up to date.
    learned: Arc<AtomicU32>,
    state: watch::Sender<State>,
    /// When `streams` last fell to 0.
    idle_since: Mutex<Instant>,
}

#[derive(Clone)]
enum State {
    Connecting,
    Ready(http2::SendRequest<BoxBody>),
    Failed(Arc<str>),
    Closed,
}

impl H2Conn {
    fn new(limit: u32, learned: Arc<AtomicU32>) -> Self {
        H2Conn {
            streams: AtomicU32::new(1),
            limit: AtomicU32::new(limit),
            learned,
            state: watch::Sender::new(State::Connecting),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// Takes a stream if one is free.
    fn reserve(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| (s < limit).then_some(s + 1))
            .is_ok()
    }

    fn release(&self) {
        let left = self.streams.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            (s != CLOSED).then(|| s.saturating_sub(1))
        });
        if left == Ok(1) {
            *lock(&self.idle_since) = Instant::now();
        }
    }

    /// Gives a reservation back if the connection holds more than the peer allows.
    fn over_limit(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != CLOSED && s > limit).then(|| s - 1)
            })
            .is_ok()
    }

    /// Whether it can still take requests (or will, once made).
    fn usable(&self) -> bool {
        self.streams.load(Ordering::Acquire) != CLOSED
            && match &*self.state.borrow() {
                State::Connecting => true,
                State::Ready(sender) => !sender.is_closed(),
                State::Failed(_) | State::Closed => false,
            }
    }

    fn close(&self, state: State) {
        self.streams.store(CLOSED, Ordering::Release);
        self.state.send_replace(state);
    }

    /// Closes the connection once it has had no streams for `idle` (unless one arrives:
    /// the close takes the count from 0 to [`CLOSED`] in one step).
    async fn idle(&self, idle: Duration) {
        loop {
            let since = *lock(&self.idle_since);
            tokio::time::sleep_until(since + idle).await;
            let closed =
                self.streams.compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire);
            if closed.is_ok() {
                return;
            }
            if *lock(&self.idle_since) == since {
                // In use since: look again a period later.
                tokio::time::sleep(idle).await;
            }
        }
    }
}

/// A reserved stream, given back when dropped (with the response body that carries it).
pub(crate) struct Stream {
    conn: Arc<H2Conn>,
    /// False once the reservation was given back another way ([`H2Conn::over_limit`]).
    held: bool,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.held {
            self.conn.release();
        }
    }
}

impl H2 {
    pub(crate) fn new(
        connector: Connector,
        tls: bool,
        max_streams: u32,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // Until the peer's SETTINGS say otherwise, no more than the config allows.
            .initial_max_send_streams(max_streams as usize)
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        H2 {
            connector,
            scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
            max_streams,
            connect_timeout,
            idle_timeout,
            builder,
            endpoints: Mutex::default(),
        }
    }

    /// Sends `req` to `endpoint`.
    pub(crate) async fn request(
        &self,
        mut req: Request<BoxBody>,
        endpoint: &Authority,
    ) -> Result<Response<super::ResponseBody>, TransportError> {
        self.for_h2(&mut req, endpoint);
        let mut moves = 0;
        loop {
            let mut stream = self.checkout(endpoint);
            let conn = stream.conn.clone();
            let mut sender = ready(&conn).await?;
            if moves < MOVES && conn.over_limit() {
                // The peer allows fewer streams than were reserved here: try another.
                stream.held = false;
                moves += 1;
                continue;
            }
            return match sender.try_send_request(req).await {
                Ok(response) => Ok(response.map(|body| super::ResponseBody::held(body, stream))),
                Err(mut e) => match e.take_message() {
                    // Never sent: the connection was closing. Another one may take it.
                    Some(back) if moves < MOVES => {
                        conn.close(State::Closed);
                        req = back;
                        moves += 1;
                        continue;
                    }
                    _ if unprocessed(e.error()) => {
                        Err(TransportError::Connect(e.into_error().into()))
                    }
                    _ => Err(TransportError::Broken(e.into_error().into())),
                },
            };
        }
    }

    /// The request as HTTP/2 carries it: the client's Host becomes `:authority` (a careful
    /// server refuses a request whose Host and :authority differ), the connection-specific
    /// headers HTTP/2 forbids are gone (hyper would warn about each, at the client's
    /// command), and TE stays only as `trailers`.
    fn for_h2(&self, req: &mut Request<BoxBody>, endpoint: &Authority) {
        let host = req.headers_mut().remove(http::header::HOST);
        let authority = host
            .as_ref()
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| endpoint.clone());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority);
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = http::Version::HTTP_2;
        let headers = req.headers_mut();
        for name in
            [http::header::CONNECTION, http::header::UPGRADE, http::header::TRANSFER_ENCODING]
        {
            headers.remove(name);
        }
        headers.remove("keep-alive");
        headers.remove("proxy-connection");
        if headers.get(http::header::TE).is_some_and(|te| te != "trailers") {
            headers.remove(http::header::TE);
        }
    }

    /// A stream on a connection to `endpoint` with room, or on a new one.
    fn checkout(&self, endpoint: &Authority) -> Stream {
        let mut endpoints = lock(&self.endpoints);
        let e = match endpoints.get_mut(endpoint) {
            Some(e) => e,
            None => endpoints.entry(endpoint.clone()).or_default(),
        };
        e.conns.retain(|c| c.usable());
        if let Some(conn) = e.conns.iter().find(|c| c.reserve()) {
            return Stream { conn: conn.clone(), held: true };
        }
        let limit = match e.learned.load(Ordering::Acquire) {
            0 => self.max_streams,
            learned => learned,
        };
        let conn = Arc::new(H2Conn::new(limit, e.learned.clone()));
        e.conns.push(conn.clone());
        drop(endpoints);
        self.connect(endpoint, conn.clone());
        Stream { conn, held: true }
    }

    /// Makes the connection in a task of its own (waiters and their timeouts come and go)
    /// and then drives it until it fails, the upstream closes it, or it idles out.
    fn connect(&self, endpoint: &Authority, conn: Arc<H2Conn>) {
        let mut connector = self.connector.clone();
        let uri = format!("{}://{endpoint}/", self.scheme).parse::<http::Uri>();
        let (builder, configured) = (self.builder.clone(), self.max_streams);
        let (connect_timeout, idle) = (self.connect_timeout, self.idle_timeout);
        tokio::spawn(async move {
            let made = async {
                let uri = uri?;
                poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx)).await?;
                let io = tower_service::Service::call(&mut connector, uri).await?;
                if !io.speaks_h2() {
                    return Err(BoxError::from("the upstream did not agree to h2 (TLS ALPN)"));
                }
                let settled = Arc::new(Notify::new());
                let io = Settling { io, read: false, settled: Some(settled.clone()) };
                let (sender, connection) = builder.handshake::<_, BoxBody>(io).await?;
                Ok::<_, BoxError>((sender, connection, settled))
            };
            let (sender, mut connection, settled) =
                match tokio::time::timeout(connect_timeout, made).await {
                    Ok(Ok(made)) => made,
                    Ok(Err(e)) => return conn.close(State::Failed(chain(&*e).into())),
                    Err(_) => {
                        let msg = format!("no HTTP/2 connection within {connect_timeout:?}");
                        return conn.close(State::Failed(msg.into()));
                    }
                };
            let mut sender = Some(sender);
            let deadline = Instant::now() + connect_timeout;
            let mut settled = std::pin::pin!(settled.notified());
            // Drives the connection's dispatch, following the peer's stream limit as requests
            // pass; hands the connection out once the peer's SETTINGS are in force.
            let drive = poll_fn(|cx| {
                let polled = Pin::new(&mut connection).poll(cx);
                let peer = u32::try_from(connection.current_max_send_streams()).unwrap_or(u32::MAX);
                let limit = configured.min(peer).max(1);
                conn.limit.store(limit, Ordering::Release);
                if sender.is_some() && settled.as_mut().poll(cx).is_ready() {
                    conn.learned.store(limit, Ordering::Release);
                    if let Some(sender) = sender.take() {
                        conn.state.send_replace(State::Ready(sender));
                    }
                }
                polled
            });
            let unanswered = async {
                tokio::time::sleep_until(deadline).await;
                if !matches!(*conn.state.borrow(), State::Ready(_)) {
                    return;
                }
                std::future::pending::<()>().await;
            };
            let ended = tokio::select! {
                r = drive => r.err().map(|e| chain(&e)),
                () = conn.idle(idle) => None,
                () = unanswered => Some(format!("no HTTP/2 SETTINGS within {connect_timeout:?}")),
            };
            let handed_out = matches!(*conn.state.borrow(), State::Ready(_));
            match ended {
                // Its waiters learn why (a connect failure: nothing was sent).
                Some(e) if !handed_out => conn.close(State::Failed(e.into())),
                _ => conn.close(State::Closed),
            }
        });
    }
}

/// Waits for the connection a stream was reserved on.
async fn ready(conn: &H2Conn) -> Result<http2::SendRequest<BoxBody>, TransportError> {
    let mut rx = conn.state.subscribe();
    let state = rx
        .wait_for(|s| !matches!(s, State::Connecting))
        .await
        .map(|s| s.clone())
        .unwrap_or(State::Closed);
    match state {
        State::Ready(sender) => Ok(sender),
        State::Failed(e) => Err(TransportError::Connect(e.to_string().into())),
        State::Connecting | State::Closed => {
            Err(TransportError::Connect("the connection closed before the request was sent".into()))
        }
    }
}

/// Whether the upstream refused the stream without processing it: REFUSED_STREAM, or a
/// GOAWAY that did not include it (RFC 9113 section 8.7), so any method may be sent again.
fn unprocessed(e: &hyper::Error) -> bool {
    let Some(h2) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>()) else {
        return false;
    };
    h2.reason() == Some(h2::Reason::REFUSED_STREAM) || (h2.is_go_away() && h2.is_remote())
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection's bytes, telling when the peer's first SETTINGS are in force. The peer's
/// first frame must be SETTINGS, and h2 applies a peer's SETTINGS as it queues their ACK:
/// the first write after the first read carries that ACK, so by then they are in force.
/// (hyper reads and writes in a task of its own, which nothing else could watch.)
struct Settling {
    io: Conn,
    read: bool,
    settled: Option<Arc<Notify>>,
}

impl Settling {
    fn wrote(&mut self) {
        if self.read
            && let Some(settled) = self.settled.take()
        {
            settled.notify_one();
        }
    }
}

impl Read for Settling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_ready() {
            self.read = true;
        }
        polled
    }
}

impl Write for Settling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_a_lowered_limit_moves_the_excess() {
        let conn = H2Conn::new(3, Arc::default());
        assert!(conn.reserve() && conn.reserve());
        assert!(!conn.reserve(), "3 of 3");
        conn.limit.store(1, Ordering::Release);
        assert!(conn.over_limit() && conn.over_limit());
        assert!(!conn.over_limit(), "1 of 1 left");
        conn.release();
        assert_eq!(conn.streams.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_closes_unless_a_stream_arrives_first() {
        let conn = Arc::new(H2Conn::new(4, Arc::default()));
        conn.release();
        let idle = tokio::spawn({
            let conn = conn.clone();
            async move { conn.idle(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(conn.reserve());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!idle.is_finished(), "a stream is open");
        conn.release();
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(idle.is_finished());
        assert!(!conn.reserve(), "closed for good");
    }
}
