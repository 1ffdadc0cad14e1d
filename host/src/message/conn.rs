//! What is known about the connection a request came on: written by the server's
//! acceptor, read by every stage of the request path.

use std::net::SocketAddr;

/// One client connection, as every request on it sees it.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The listener's address the client connected to.
    pub local: SocketAddr,
    /// `None` on a plain-text connection.
    pub tls: Option<TlsInfo>,
    /// `peer`'s IP as the header value it is forwarded as, written once per connection.
    pub peer_header: http::HeaderValue,
}

/// What a TLS handshake settled.
#[derive(Debug, Default)]
pub struct TlsInfo {
    /// The protocol ALPN chose (`h2`, `http/1.1`), if any.
    pub alpn: Option<Vec<u8>>,
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self { peer, local, tls: None, peer_header: crate::message::ip_header(peer.ip()) }
    }

    /// The scheme requests on this connection arrive with.
    pub fn scheme(&self) -> http::uri::Scheme {
        match self.tls {
            Some(_) => http::uri::Scheme::HTTPS,
            None => http::uri::Scheme::HTTP,
        }
    }
}
