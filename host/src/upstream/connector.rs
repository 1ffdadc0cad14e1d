//! Upstream connections, made by hyper-util's `HttpConnector` and kept in a registry by
//! local address, so that one can be closed for good when a response on it proves it
//! untrustworthy (a body framed two ways: what follows on it cannot be told apart from the
//! body). The HTTP/1.1 pool knows each response's connection by its local address, and the
//! connection is shut down at the socket: the request path pays nothing for this (a map
//! entry per connection, not per request).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How an upstream's attempts are carried: the gateway's own HTTP/1.1 pool
/// ([`super::h1pool`]) or HTTP/2 pool ([`super::h2pool`]).
pub(crate) enum Connections {
    Http1(super::h1pool::H1),
    H2(super::h2pool::H2),
}

impl super::send::Transport for Connections {
    type Body = super::ResponseBody;

    fn request(
        &self,
        req: http::Request<crate::message::BoxBody>,
        endpoint: &http::uri::Authority,
    ) -> impl Future<Output = Result<http::Response<Self::Body>, super::send::TransportError>> + Send
    {
        match self {
            Connections::Http1(pool) => Sending::Http1 { sent: pool.request(req, endpoint) },
            Connections::H2(pool) => Sending::H2 { sent: pool.request(req, endpoint) },
        }
    }

    fn close_connection_of(&self, response: &http::Response<Self::Body>) {
        // HTTP/2 frames its bodies itself: there is no second reading of one.
        if let Connections::Http1(pool) = self {
            pool.close_connection_of(response);
        }
    }
}

pin_project_lite::pin_project! {
    /// An attempt on its way, by protocol: the request moves into the pool's own future
    /// and nothing wraps it (a wrapping `async` block copied it again: ~700 instructions a
    /// request, benches/instructions.sh).
    #[project = SendingProj]
    enum Sending<A, B> {
        Http1 { #[pin] sent: A },
        H2 { #[pin] sent: B },
    }
}

type Sent = Result<http::Response<super::ResponseBody>, super::send::TransportError>;

impl<A: Future<Output = Sent>, B: Future<Output = Sent>> Future for Sending<A, B> {
    type Output = Sent;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SendingProj::Http1 { sent } => sent.poll(cx),
            SendingProj::H2 { sent } => sent.poll(cx),
        }
    }
}

/// Open connections by local address, with their sockets.
type Registry = Arc<Mutex<HashMap<SocketAddr, RawFd>>>;

/// Makes upstream connections (TCP, then TLS for an upstream with `tls`) and can close one
/// by its local address.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    open: Registry,
    tls: Option<Arc<crate::tls::UpstreamClient>>,
}

impl Connector {
    pub fn new(http: HttpConnector, tls: Option<Arc<crate::tls::UpstreamClient>>) -> Self {
        Self { http, open: Arc::default(), tls }
    }

    /// Closes the connection whose local address is `local`: it is never used again. The
    /// socket is shut down, so its connection task sees the end at once.
    pub fn close_local(&self, local: SocketAddr) {
        let open = lock(&self.open);
        if let Some(&fd) = open.get(&local) {
            // SAFETY: `fd` is the socket of a live `Conn`: its entry leaves the registry
            // (under this lock, which is held here) before the socket is closed, so the
            // descriptor cannot have been closed or reused. shutdown(2) only changes the
            // connection's state; it closes nothing.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = Conn;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
        let connecting = self.http.call(uri);
        let (open, tls) = (self.open.clone(), self.tls.clone());
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let local = tcp.local_addr().ok();
            let fd = tcp.as_raw_fd();
            let io = match tls {
                None => Io::Plain(TokioIo::new(tcp)),
                Some(tls) => {
                    let name = match &tls.server_name {
                        Some(n) => n.clone(),
                        None => rustls::pki_types::ServerName::try_from(host)?,
                    };
                    let stream = tls.connector.connect(name, tcp).await?;
                    Io::Tls(Box::new(TokioIo::new(stream)))
                }
            };
            if let Some(addr) = local {
                lock(&open).insert(addr, fd);
            }
            Ok(Conn { io, fd, local, open })
        })
    }
}

/// The bytes of an upstream connection: plain TCP or TLS over it.
enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// An upstream connection, listed in the registry while it is open.
pub struct Conn {
    io: Io,
    /// Its socket, for `close_connection_of`.
    fd: RawFd,
    local: Option<SocketAddr>,
    open: Registry,
}

impl Conn {
    /// Its local address, by which [`Connector::close_local`] finds it.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Whether HTTP/2 may be spoken on it: over TLS only if ALPN chose h2 (a plain
    /// connection is h2c by prior knowledge, as configured).
    pub fn speaks_h2(&self) -> bool {
        match &self.io {
            Io::Plain(_) => true,
            Io::Tls(io) => io.inner().get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Before `io` (and so the socket) is dropped: see `close_connection_of`.
        if let Some(addr) = self.local {
            let mut open = lock(&self.open);
            if open.get(&addr) == Some(&self.fd) {
                open.remove(&addr);
            }
        }
    }
}

/// Runs `$call` on whichever stream the connection has.
macro_rules! on_io {
    ($self:expr, $io:ident => $call:expr) => {
        match &mut $self.io {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            Io::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $call
            }
        }
    };
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_read(cx, buf))
    }
}

impl Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_io!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_shutdown(cx))
    }
}
