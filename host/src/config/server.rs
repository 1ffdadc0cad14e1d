//! `[server]`: listeners, timeouts, limits, and what is trusted from clients.

use super::check::*;
use super::error::Errors;
use super::model::*;
use super::*;

/// The server section, plus the default body limit that routes inherit.
pub(super) fn validate_server(s: &schema::Server, errors: &mut Errors) -> Option<(Server, u64)> {
    let listen = errors.check(
        "server.listen",
        s.listen.parse().map_err(|_| format!("not an address:port: {:?}", s.listen)),
    );
    if let Some(w) = s.workers
        && !(1..=MAX_WORKERS).contains(&w)
    {
        let msg = format!("must be between 1 and {MAX_WORKERS} (leave it out for one per core)");
        errors.push("server.workers", msg);
    }
    let connect = duration(errors, "server.connect_timeout", &s.connect_timeout);
    let request = duration(errors, "server.request_timeout", &s.request_timeout);
    let shutdown = duration(errors, "server.shutdown_timeout", &s.shutdown_timeout);
    let body = duration(errors, "server.body_timeout", &s.body_timeout);
    let header = duration(errors, "server.header_timeout", &s.header_timeout);
    let idle = duration(errors, "server.idle_timeout", &s.idle_timeout);
    let escaped_slashes = one_of(
        errors,
        "server.escaped_slashes",
        &s.escaped_slashes,
        &[("reject", EscapedSlashes::Reject), ("keep", EscapedSlashes::Keep)],
    );
    let underscores = one_of(
        errors,
        "server.headers_with_underscores",
        &s.headers_with_underscores,
        &[
            ("drop", Underscores::Drop),
            ("reject", Underscores::Reject),
            ("allow", Underscores::Allow),
        ],
    );
    let mut trusted_proxies = Vec::new();
    for (i, text) in s.trusted_proxies.iter().flatten().enumerate() {
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("not an address or CIDR range: {text:?}"));
        trusted_proxies.extend(errors.check(format!("server.trusted_proxies[{i}]"), net));
    }
    let max_connections = count(
        errors,
        "server.max_connections",
        s.max_connections,
        DEFAULT_MAX_CONNECTIONS,
        1_000_000,
    );
    let per_ip =
        s.max_connections_per_ip.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP.min(max_connections));
    if !(1..=max_connections).contains(&per_ip) {
        let msg = format!(
            "must be between 1 and server.max_connections ({max_connections}), got {per_ip}"
        );
        errors.push("server.max_connections_per_ip", msg);
    }
    let max_body = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    let http2 = validate_http2(s.http2.as_ref(), errors);
    let server = Server {
        listen: listen?,
        workers: s.workers,
        connect_timeout: connect?.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        request_timeout: request?.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
        shutdown_timeout: shutdown?.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        paths: PathPolicy {
            merge_slashes: s.merge_slashes.unwrap_or(true),
            escaped_slashes: escaped_slashes?,
        },
        underscores: underscores?,
        trusted_proxies,
        body_timeout: body?.unwrap_or(DEFAULT_BODY_TIMEOUT),
        header_timeout: header?.unwrap_or(DEFAULT_HEADER_TIMEOUT),
        idle_timeout: idle?.unwrap_or(DEFAULT_CONNECTION_IDLE_TIMEOUT),
        max_connections: max_connections as usize,
        max_connections_per_ip: per_ip.clamp(1, max_connections) as usize,
        http2,
    };
    Some((server, max_body))
}

/// `[server.http2]`, each number within what the protocol and a sane gateway allow.
fn validate_http2(h: Option<&schema::Http2>, errors: &mut Errors) -> Http2Settings {
    let d = Http2Settings::default();
    let Some(h) = h else { return d };
    let mut within = |key: &str, v: Option<u64>, default: u32, min: u64, max: u64| {
        let n = v.unwrap_or(u64::from(default));
        if !(min..=max).contains(&n) {
            errors.push(
                format!("server.http2.{key}"),
                format!("must be between {min} and {max}, got {n}"),
            );
        }
        n.clamp(min, max) as u32
    };
    Http2Settings {
        max_concurrent_streams: within(
            "max_concurrent_streams",
            h.max_concurrent_streams,
            d.max_concurrent_streams,
            1,
            10_000,
        ),
        max_header_list_bytes: within(
            "max_header_list_bytes",
            h.max_header_list_bytes,
            d.max_header_list_bytes,
            1024,
            1024 * 1024,
        ),
        // 65535 is the protocol's initial window; 2^31-1 its largest.
        stream_window_bytes: within(
            "stream_window_bytes",
            h.stream_window_bytes,
            d.stream_window_bytes,
            65_535,
            16 * 1024 * 1024,
        ),
        connection_window_bytes: within(
            "connection_window_bytes",
            h.connection_window_bytes,
            d.connection_window_bytes,
            65_535,
            64 * 1024 * 1024,
        ),
        max_client_resets: within(
            "max_client_resets",
            h.max_client_resets,
            d.max_client_resets,
            1,
            100_000,
        ),
    }
}
