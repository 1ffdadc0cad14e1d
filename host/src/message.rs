//! The HTTP messages that flow through the gateway and that plugins read and change.
//!
//! A message keeps its body as a stream until a plugin asks for it (`body()` in WIT); only
//! then is it buffered, up to the route's limit. A body over the limit is not lost: what was
//! read is put back in front of the rest of the stream.

mod body;
mod client_body;
mod conn;
mod key;
mod replay;

use std::net::IpAddr;
use std::sync::Arc;

pub use body::{Body, BodyError, BoxBody, BoxError};
pub use client_body::{BodyWatch, ClientBody, ClientBodyError};
pub use conn::{ClientCert, ConnInfo, TlsInfo};
pub use key::{request_key, stable_hash};
pub use replay::Replay;

/// A request on its way upstream.
pub struct RequestMsg {
    pub parts: http::request::Parts,
    pub body: Body,
    pub meta: Arc<RequestMeta>,
    /// Values plugins keep for their later phases (WIT `set-context`).
    pub context: Context,
}

/// The messages a plugin hook call works on. They are moved into the plugin's store for the
/// call and moved back out afterwards, trap or not, so a failing plugin never loses the
/// request.
pub struct Call {
    pub request: RequestMsg,
    /// Only in the response phase.
    pub response: Option<ResponseMsg>,
}

impl RequestMsg {
    /// A bodiless GET of `path` from 127.0.0.1 on route `r`, for unit tests.
    #[cfg(test)]
    pub fn for_test(path: &str) -> Self {
        let (parts, ()) = http::Request::get(path).body(()).unwrap().into_parts();
        let meta = RequestMeta {
            id_header: http::HeaderValue::from_static("t"),
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            client_header: http::HeaderValue::from_static("127.0.0.1"),
            route: Arc::from("r"),
            params: Vec::new(),
            max_body_bytes: 1024,
            trace_id: 0,
            calls: None,
            client_cert: None,
        };
        RequestMsg { parts, body: Body::empty(), meta: Arc::new(meta), context: Context::default() }
    }
}

/// Per-request values, each owned by the plugin that stored it.
#[derive(Debug, Default)]
pub struct Context(Vec<(Arc<str>, String, String)>);

impl Context {
    pub const MAX_KEYS_PER_PLUGIN: usize = 32;
    pub const MAX_BYTES_PER_PLUGIN: usize = 16 * 1024;

    pub fn get(&self, plugin: &str, key: &str) -> Option<&str> {
        self.0.iter().find(|(p, k, _)| **p == *plugin && k == key).map(|(_, _, v)| v.as_str())
    }

    /// Stores `value`; `false` (and nothing stored) past the per-plugin limits.
    pub fn set(&mut self, plugin: &Arc<str>, key: String, value: String) -> bool {
        let mine = || self.0.iter().filter(|(p, k, _)| *p == *plugin && *k != key);
        let (keys, bytes) = mine().fold((0, 0), |(n, b), (_, k, v)| (n + 1, b + k.len() + v.len()));
        if keys + 1 > Self::MAX_KEYS_PER_PLUGIN
            || bytes + key.len() + value.len() > Self::MAX_BYTES_PER_PLUGIN
        {
            return false;
        }
        match self.0.iter_mut().find(|(p, k, _)| *p == *plugin && *k == key) {
            Some(entry) => entry.2 = value,
            None => self.0.push((plugin.clone(), key, value)),
        }
        true
    }
}

/// Facts about a request that no plugin can change.
#[derive(Debug)]
pub struct RequestMeta {
    /// The request id, kept as the header value it is sent as (upstream and back to the
    /// client), so it is built once. Always visible ASCII; read it as text with [`Self::id`].
    pub id_header: http::HeaderValue,
    pub client_ip: IpAddr,
    /// `client_ip` as the header value it is forwarded as (`X-Forwarded-For`), written once
    /// per connection (see [`ip_header`]).
    pub client_header: http::HeaderValue,
    pub route: Arc<str>,
    /// The route's path parameters (`/users/{id}` -> `id`), percent-decoded.
    pub params: crate::router::Params,
    /// The most a plugin may buffer when it reads a body.
    pub max_body_bytes: u64,
    /// The W3C trace id the request belongs to (0: none), for plugins' log lines.
    pub trace_id: u128,
    /// Each plugin call, when the request is traced (for its spans).
    pub calls: Option<std::sync::Mutex<Vec<CallRecord>>>,
    /// The connection's verified client certificate (mTLS), for plugins.
    pub client_cert: Option<Arc<ClientCert>>,
}

/// One plugin hook call, as a traced request keeps it for its span.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub plugin: Arc<str>,
    pub phase: &'static str,
    /// `continue`, `local_reply`, `trap`, ... (as in `sluice_plugin_calls_total`).
    pub outcome: &'static str,
    /// The local reply's status.
    pub status: Option<http::StatusCode>,
    pub started: std::time::Instant,
    pub took: std::time::Duration,
}

/// A response on its way to the client.
pub struct ResponseMsg {
    pub parts: http::response::Parts,
    pub body: Body,
}

/// An IP address as a header value.
pub fn ip_header(ip: IpAddr) -> http::HeaderValue {
    http::HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value")
}

impl RequestMeta {
    pub fn id(&self) -> &str {
        self.id_header.to_str().unwrap_or_default()
    }

    /// The client's address as text (from [`Self::client_header`], not formatted again).
    pub fn client_ip_text(&self) -> &str {
        self.client_header.to_str().unwrap_or_default()
    }
}

impl ResponseMsg {
    pub fn into_http(self) -> http::Response<BoxBody> {
        http::Response::from_parts(self.parts, self.body.into_box())
    }
}

/// The one list of hop-by-hop headers, removed in both directions (RFC 9110 section
/// 7.6.1): `connection` (and, separately, whatever it names), `keep-alive`, `te`,
/// `trailer`, `transfer-encoding`, `upgrade`, `proxy-connection`, and the proxy
/// credentials `proxy-authorization` and `proxy-authenticate`, meant for the proxy itself.
/// Other `proxy-*` names are ordinary end-to-end headers.
pub fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    hop_by_hop_bit(name) != 0
}

/// [`is_hop_by_hop`]'s list, in the order of [`hop_by_hop_bit`]'s bits.
pub static HOP_BY_HOP: [http::HeaderName; 9] = {
    use http::header::*;
    [
        CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        PROXY_AUTHORIZATION,
        PROXY_AUTHENTICATE,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ]
};

/// `1 << i` when `name` is `HOP_BY_HOP[i]`, else 0. A standard name is matched by its
/// tag, the two others by their text; this runs on every header of every message.
pub fn hop_by_hop_bit(name: &http::HeaderName) -> u16 {
    use http::header::*;
    let i = match *name {
        CONNECTION => 0,
        TE => 1,
        TRAILER => 2,
        TRANSFER_ENCODING => 3,
        UPGRADE => 4,
        PROXY_AUTHORIZATION => 5,
        PROXY_AUTHENTICATE => 6,
        _ => match name.as_str() {
            "keep-alive" => 7,
            "proxy-connection" => 8,
            _ => return 0,
        },
    };
    1 << i
}

/// Headers the host owns, which plugins may not set or remove: the hop-by-hop headers
/// (which would be removed anyway) and `content-length`.
pub fn is_host_owned_header(name: &http::HeaderName) -> bool {
    is_hop_by_hop(name) || *name == http::header::CONTENT_LENGTH
}

/// A new path or query that is not valid in a URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUri;

/// Replaces the path and query; on `Err` the URI is left as it was.
pub fn replace_path_and_query(uri: &mut http::Uri, pq: String) -> Result<(), InvalidUri> {
    let pq = http::uri::PathAndQuery::try_from(pq).map_err(|_| InvalidUri)?;
    // From a copy: taking the URI would leave `/` behind if the new one is refused.
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    *uri = http::Uri::from_parts(parts).map_err(|_| InvalidUri)?;
    Ok(())
}

/// Replaces the path, keeping the query; on `Err` the URI is left as it was.
pub fn replace_path(uri: &mut http::Uri, path: &str) -> Result<(), InvalidUri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    replace_path_and_query(uri, pq)
}

/// Sets the framing headers for a body replaced by a plugin or built by the host.
pub fn set_fixed_length(headers: &mut http::HeaderMap, len: usize) {
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_bits_follow_the_list_and_nothing_else_has_one() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name), 1 << i, "{name}");
            let upper = http::HeaderName::from_bytes(name.as_str().to_uppercase().as_bytes());
            assert_eq!(hop_by_hop_bit(&upper.unwrap()), 1 << i, "{name}");
        }
        for name in ["host", "content-length", "proxy-status", "keep-alives", "x-connection"] {
            assert_eq!(hop_by_hop_bit(&http::HeaderName::from_static(name)), 0, "{name}");
        }
    }

    #[test]
    fn context_values_are_private_to_their_plugin_and_bounded() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut c = Context::default();
        assert!(c.set(&a, "k".into(), "1".into()));
        assert!(c.set(&a, "k".into(), "2".into()));
        assert_eq!(c.get("a", "k"), Some("2"));
        assert_eq!(c.get("b", "k"), None);
        for i in 1..Context::MAX_KEYS_PER_PLUGIN {
            assert!(c.set(&a, format!("k{i}"), String::new()));
        }
        assert!(!c.set(&a, "one-too-many".into(), String::new()));
        assert!(c.set(&b, "big".into(), "x".repeat(Context::MAX_BYTES_PER_PLUGIN - 3)));
        assert!(!c.set(&b, "more".into(), "x".into()));
    }
}
