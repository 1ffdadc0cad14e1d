//! Header rules for forwarding: hop-by-hop headers stay on their hop, and the upstream
//! learns who the client was (`X-Forwarded-*`).
//!
//! The client's own headers are cleaned once, on arrival, before any plugin runs
//! ([`from_client`]): its `Connection` list is applied then (so it can never remove a header
//! a plugin sets later), headers with `_` in their names are dropped (some servers read
//! `x_user_id` as `x-user-id`), and the headers that claim who the client is are trusted
//! only from `server.trusted_proxies`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Scheme;

use super::normalize::Refused;
pub use crate::config::Underscores;
use crate::message::{HOP_BY_HOP, hop_by_hop_bit, is_hop_by_hop};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that say who the client is or what it asked for; only a trusted proxy may send
/// them, and the gateway writes its own.
fn is_identity_header(name: &HeaderName) -> bool {
    is_identity_name(name.as_str())
}

fn is_identity_name(s: &str) -> bool {
    match s.as_bytes().first() {
        Some(b'x') => s.starts_with("x-forwarded-") || s == "x-real-ip",
        Some(b'f') => s == "forwarded",
        _ => false,
    }
}

/// Headers the gateway sets end to end; a client's `Connection` may not name them.
fn is_gateway_owned(name: &HeaderName) -> bool {
    is_identity_header(name)
        || *name == header::HOST
        || *name == header::CONTENT_LENGTH
        || *name == X_REQUEST_ID
}

/// Cleans the client's headers on arrival, before routing conditions and plugins read them.
/// `trusted`: the peer is one of `server.trusted_proxies`, whose forwarding headers are kept.
pub fn from_client(
    headers: &mut HeaderMap,
    trusted: bool,
    underscores: Underscores,
) -> Result<(), Refused> {
    // One pass over the names finds whatever needs work; most requests need none.
    let (mut hop, mut underscored, mut identity) = (false, false, false);
    for name in headers.keys() {
        hop |= is_hop_by_hop(name);
        let s = name.as_str();
        // A plain loop: names are short, and `contains` calls `memchr` for each.
        underscored |= s.bytes().any(|b| b == b'_');
        identity |= is_identity_name(s);
    }
    if hop {
        for v in headers.get_all(header::CONNECTION) {
            let Ok(v) = v.to_str() else { continue };
            for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes())
                    && is_gateway_owned(&n)
                {
                    return Err(Refused::ConnectionNamesOwnedHeader(n.as_str().to_owned()));
                }
            }
        }
        strip_hop_by_hop_but_trailers(headers);
    }
    if underscored && underscores != Underscores::Allow {
        if underscores == Underscores::Reject {
            let name = headers.keys().find(|n| n.as_str().contains('_')).map(|n| n.to_string());
            return Err(Refused::UnderscoreHeader(name.unwrap_or_default()));
        }
        remove_where(headers, |n| n.as_str().contains('_'));
    }
    if identity && !trusted {
        remove_where(headers, is_identity_header);
    }
    Ok(())
}

/// Removes every header whose name passes `doomed`.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
/// nearest address in `X-Forwarded-For` (read from the right) that is not itself trusted.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &dyn Fn(IpAddr) -> bool) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted(ip) {
                    break;
                }
            }
            // Not an address: nothing further left can be believed.
            Err(_) => break,
        }
    }
    client
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1): the fixed set and any header the
/// `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, false);
}

/// [`strip_hop_by_hop`], but `TE: trailers` stays when the client sent it: it says the
/// client takes trailers, which the gateway passes through, and gRPC servers refuse a call
/// without it (a proxy that drops it breaks gRPC). Any other TE value goes.
pub fn strip_hop_by_hop_but_trailers(headers: &mut HeaderMap) {
    strip(headers, true);
}

const CONNECTION_BIT: u16 = 1 << 0;
const TE_BIT: u16 = 1 << 1;

fn strip(headers: &mut HeaderMap, keep_te_trailers: bool) {
    // One pass over the message's few names finds the hop-by-hop ones present (most
    // messages carry none, or only `connection`), then one removal per name present. No
    // allocation unless `Connection` names a header that is there. (callgrind: a hashed
    // removal per hop-by-hop name cost ~3,400 instructions a request, collecting the
    // names to remove ~1,000.)
    let present = headers.keys().fold(0, |bits, name| bits | hop_by_hop_bit(name));
    if present == 0 {
        return;
    }
    let trailers = keep_te_trailers
        && present & TE_BIT != 0
        && headers.get_all(header::TE).iter().any(|te| {
            te.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
        });
    if present & CONNECTION_BIT != 0 {
        // Its usual tokens (`keep-alive`, `close`) name no header that is there: looked up
        // by `&str`, which makes no `HeaderName`.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty() && headers.contains_key(*n))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Appends the peer's address to `X-Forwarded-For` (which, from an untrusted peer, was
/// removed on arrival, so it then holds the peer alone).
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let xff = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(prior) if !prior.is_empty() => {
            let mut v = prior.to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        _ => Some(peer.clone()),
    };
    if let Some(xff) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
}

/// Sets `X-Forwarded-Proto` (the scheme the client spoke) and `X-Forwarded-Host` (from
/// `host`, the client's Host or `:authority`).
pub fn set_forwarded(headers: &mut HeaderMap, host: Option<HeaderValue>, scheme: &Scheme) {
    let proto = if *scheme == Scheme::HTTPS { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        for name in ["te", "trailer", "proxy-authorization", "proxy-connection", "keep-alive"] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"], "{name}");
        }
    }

    #[test]
    fn strips_what_connection_names_in_any_case_and_keeps_te_trailers_only_when_asked() {
        assert_eq!(hop_by_hop_bit(&header::CONNECTION), CONNECTION_BIT);
        assert_eq!(hop_by_hop_bit(&header::TE), TE_BIT);
        let message = || {
            let mut h = HeaderMap::new();
            h.append(header::CONNECTION, HeaderValue::from_static("close, X-Secret"));
            h.append(header::CONNECTION, HeaderValue::from_static("TE ,, x-other"));
            h.insert("x-secret", HeaderValue::from_static("1"));
            h.insert("x-other", HeaderValue::from_static("1"));
            h.insert(header::TE, HeaderValue::from_static("gzip, Trailers"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            h
        };
        let mut h = message();
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        let mut h = message();
        strip_hop_by_hop_but_trailers(&mut h);
        assert_eq!(h.len(), 2);
        assert_eq!(h[header::TE], "trailers");
        let mut h = message();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop_but_trailers(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn appends_to_an_existing_forwarded_for_chain() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        append_forwarded_for(&mut h, &HeaderValue::from_static("127.0.0.1"));
        set_forwarded(&mut h, Some(HeaderValue::from_static("a.test")), &Scheme::HTTP);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.test");
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn an_untrusted_client_cannot_claim_an_identity_or_strip_what_the_gateway_sets() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-prefix", "/admin"),
            ("x_user_id", "root"),
            ("connection", "x-trace"),
            ("x-trace", "1"),
            ("x-kept", "1"),
        ]);
        from_client(&mut h, false, Underscores::Drop).unwrap();
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        let mut h = headers(&[("x_user_id", "root")]);
        assert_eq!(
            from_client(&mut h, false, Underscores::Reject),
            Err(Refused::UnderscoreHeader("x_user_id".into()))
        );
        for owned in ["x-forwarded-for", "host", "content-length", "x-request-id"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(owned));
            assert_eq!(
                from_client(&mut h, true, Underscores::Drop),
                Err(Refused::ConnectionNamesOwnedHeader(owned.into()))
            );
        }
        // A trusted proxy's forwarding headers stay.
        let mut h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        from_client(&mut h, true, Underscores::Drop).unwrap();
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop() {
        let trusted = |ip: IpAddr| ip.to_string().starts_with("10.");
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(client_ip(&h, peer, &trusted).to_string(), "1.2.3.4");
        let untrusted: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(client_ip(&h, untrusted, &trusted), untrusted);
        let h = headers(&[("x-forwarded-for", "garbage, 10.0.0.2")]);
        assert_eq!(client_ip(&h, peer, &trusted).to_string(), "10.0.0.2");
    }
}
