//! How an accepted TCP connection becomes the stream HTTP is spoken on, and what is known
//! about it. Plain TCP needs nothing more; a TLS acceptor does its handshake here, inside
//! the connection's own task (never in the accept loop), and fills in [`TlsInfo`].

use std::future::Future;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::message::ConnInfo;

/// Turns an accepted connection into the stream HTTP is spoken on.
pub trait Acceptor: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Runs in the connection's task, bounded by `server.header_timeout`; may fill in
    /// `info.tls`.
    fn handshake(
        &self,
        tcp: TcpStream,
        info: &mut ConnInfo,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain TCP: HTTP/1.1, or HTTP/2 by prior knowledge (h2c).
pub struct PlainTcp;

impl Acceptor for PlainTcp {
    type Stream = TcpStream;

    async fn handshake(&self, tcp: TcpStream, _: &mut ConnInfo) -> io::Result<TcpStream> {
        Ok(tcp)
    }
}
