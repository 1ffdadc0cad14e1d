//! What is known about the connection a request came on: written by the server's
//! acceptor, read by every stage of the request path.

use std::net::SocketAddr;
use std::sync::Arc;

/// One client connection, as every request on it sees it.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The listener's address the client connected to.
    pub local: SocketAddr,
    /// The listener's name (`default` for `server.listen`), which routes can select.
    pub listener: Arc<str>,
    /// `None` on a plain-text connection.
    pub tls: Option<TlsInfo>,
    /// `peer`'s IP as the header value it is forwarded as, written once per connection.
    pub peer_header: http::HeaderValue,
    /// The connection's place under `server.max_connections`, freed when the last holder
    /// of this info (the connection, or a WebSocket tunnel that outlives it) is gone.
    pub(crate) slot: Option<crate::server::Slot>,
}

/// What a TLS handshake settled.
#[derive(Debug, Default)]
pub struct TlsInfo {
    /// The protocol ALPN chose (`h2`, `http/1.1`), if any.
    pub alpn: Option<Vec<u8>>,
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: Option<&'static str>,
    /// The client's certificate, verified against the listener's `client_ca`; shared with
    /// every request on the connection (plugins read it through `request.client-cert`).
    pub client: Option<Arc<ClientCert>>,
}

/// Who a verified client certificate names (serialized as is for Extism plugins, and read
/// from `sluice plugin test` cases).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientCert {
    /// The subject's distinguished name (`CN=alice, O=Example`).
    pub subject: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Its subject alternative names: `DNS:...`, `URI:...`, `email:...`, `IP:...`.
    pub sans: Vec<String>,
    /// The SHA-256 of its DER bytes, in lower-case hex.
    pub fingerprint: String,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: SocketAddr, listener: Arc<str>) -> Self {
        let peer_header = crate::message::ip_header(peer.ip());
        Self { peer, local, listener, tls: None, peer_header, slot: None }
    }

    /// The verified client certificate, if the client sent one.
    pub fn client_cert(&self) -> Option<&Arc<ClientCert>> {
        self.tls.as_ref()?.client.as_ref()
    }

    /// The scheme requests on this connection arrive with.
    pub fn scheme(&self) -> http::uri::Scheme {
        match self.tls {
            Some(_) => http::uri::Scheme::HTTPS,
            None => http::uri::Scheme::HTTP,
        }
    }
}
