//! The request path: route -> request phases -> upstream -> response phases -> client.
//!
//! Bodies stay streams unless a plugin reads or replaces them. Failures are turned into
//! responses in one place ([`ProxyError::into_response`]) and logged once, here.

mod attempts;
mod error;
mod forward;
pub mod normalize;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

pub use error::{Origin, ProxyError};
pub use forward::{append_forwarded_for, set_forwarded, strip_hop_by_hop};

use crate::config::Rewrite;
use crate::gateway::{Gateway, Route};
use crate::message::{Body, BodyWatch, BoxBody, ClientBody, RequestMeta, RequestMsg, ResponseMsg};
use crate::router::RequestView;

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Serves one request. Never fails: every error becomes a response.
///
/// `peer` is the connection's remote address and `peer_header` the same as a header value,
/// written once per connection.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    peer: IpAddr,
    peer_header: HeaderValue,
) -> Response<BoxBody> {
    let id = request_id(req.headers());
    let (mut parts, body) = req.into_parts();
    let server = &gw.config.server;
    let trusted = server.trusts(peer);
    // Once, before anything reads the request: the router, every plugin and the upstream
    // see the same method, host, path and headers.
    let arrived = normalize::request(&mut parts, server.paths)
        .and_then(|()| forward::from_client(&mut parts.headers, trusted, server.underscores));
    if let Err(refused) = arrived {
        tracing::debug!(%peer, request_id = id.to_str().unwrap_or_default(), "refused: {refused}");
        return ProxyError::Refused(refused).into_response(id);
    }
    let (client_ip, client_header) = match trusted {
        false => (peer, peer_header.clone()),
        true => {
            let ip = forward::client_ip(&parts.headers, peer, &|ip| server.trusts(ip));
            (ip, crate::message::ip_header(ip))
        }
    };
    forward::append_forwarded_for(&mut parts.headers, &peer_header);
    let Some(found) = gw.route(&RequestView::of_parts(&parts)) else {
        return ProxyError::NoRoute.into_response(id);
    };
    let (route, params) = (found.value.clone(), found.params);
    if let Some(rewrite) = &route.rewrite {
        rewrite_prefix(&mut parts, rewrite);
    }
    let meta = Arc::new(RequestMeta {
        id_header: id,
        client_ip,
        client_header,
        route: route.name.clone(),
        params,
        max_body_bytes: route.max_body_bytes,
    });
    // A body still to come is watched, so that a client who breaks it or goes quiet is
    // told so, and never counts against an upstream.
    let (body, watch) = match http_body::Body::is_end_stream(&body) {
        true => (Body::empty(), None),
        false => {
            let watch = Arc::new(BodyWatch::default());
            let body = ClientBody::new(body, watch.clone(), server.body_timeout);
            (Body::stream(body), Some(watch))
        }
    };
    let request = RequestMsg { parts, body, meta: meta.clone(), context: Default::default() };
    match proxy(&route, request, watch.as_deref()).await {
        Ok(mut resp) => {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), meta.id_header.clone());
            resp
        }
        Err(e) => {
            log_failure(&e, &meta);
            e.into_response(meta.id_header.clone())
        }
    }
}

/// One line per failed request, except that a flood of the same failure (a broken plugin,
/// a dead upstream) is throttled to a few lines a second per route, with a count.
fn log_failure(e: &ProxyError, meta: &RequestMeta) {
    use crate::throttle::{Throttle, Verdict, suppressed_note};
    static THROTTLE: std::sync::LazyLock<Throttle> = std::sync::LazyLock::new(Throttle::default);
    if e.origin() == Origin::Downstream {
        tracing::debug!(route = %meta.route, request_id = %meta.id(), "{e}");
        return;
    }
    let text = e.to_string();
    let Verdict::Write { suppressed } = THROTTLE.check((&*meta.route, &text)) else { return };
    let note = suppressed_note(suppressed);
    match e.origin() {
        Origin::Plugin => {
            tracing::error!(route = %meta.route, request_id = %meta.id(), "{text}{note}")
        }
        _ => tracing::warn!(route = %meta.route, request_id = %meta.id(), "{text}{note}"),
    }
}

async fn proxy(
    route: &Route,
    request: RequestMsg,
    watch: Option<&BodyWatch>,
) -> Result<Response<BoxBody>, ProxyError> {
    if route.chain.is_empty() {
        let (_, resp) = forward(route, request, false, watch).await?;
        return Ok(resp.into_http());
    }
    let phase = route.chain.run_request(request).await?;
    let keep = route.chain.has_response_hooks();
    let (request, response) = match phase.local {
        Some(local) => (Some(phase.request), local),
        None => forward(route, phase.request, keep, watch).await?,
    };
    let response = match request {
        Some(request) => route.chain.run_response(phase.reached, request, response).await?,
        None => response,
    };
    Ok(response.into_http())
}

/// Sends the request upstream. With `keep`, the request's head comes back (without its
/// body) for the response phases; without, nothing is copied.
async fn forward(
    route: &Route,
    request: RequestMsg,
    keep: bool,
    watch: Option<&BodyWatch>,
) -> Result<(Option<RequestMsg>, ResponseMsg), ProxyError> {
    let RequestMsg { parts, body, meta, context } = request;
    // A body a plugin could not read whole is not the request: never send it on.
    if let Body::Broken(e) = &body {
        use crate::message::{BodyError, ClientBodyError};
        return Err(client_fault(watch).unwrap_or_else(|| {
            ProxyError::ClientBody(match e {
                BodyError::TimedOut(d) => ClientBodyError::TimedOut(*d),
                e => ClientBodyError::Broken(e.to_string()),
            })
        }));
    }
    let upstream = attempts::choose_upstream(route, &parts, &meta);
    let key = attempts::balance_key(upstream, &parts, &meta);
    let sent = attempts::send(upstream, &parts, body, key, watch, |req, endpoint| {
        prepare_upstream_request(req, endpoint, &meta)
    })
    .await?;
    let (mut resp_parts, resp_body) = sent.response.into_parts();
    strip_hop_by_hop(&mut resp_parts.headers);
    // An upstream that stops sending its body part way is cut by the client connection's
    // idle watchdog (`server.idle_timeout`): no timer per response.
    let body = match sent.in_flight {
        None => Body::stream(resp_body),
        Some(guard) => Body::stream(Guarded { body: resp_body, _guard: guard }),
    };
    let request = keep.then(|| RequestMsg { parts, body: Body::empty(), meta, context });
    Ok((request, ResponseMsg { parts: resp_parts, body }))
}

pin_project_lite::pin_project! {
    /// A response body that keeps its endpoint's in-flight count until it ends.
    struct Guarded {
        #[pin]
        body: Incoming,
        _guard: crate::upstream::InFlight,
    }
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

static X_FORWARDED_PREFIX: http::HeaderName = http::HeaderName::from_static("x-forwarded-prefix");

/// Replaces the route's literal prefix; the upstream learns what was stripped from
/// `X-Forwarded-Prefix`.
fn rewrite_prefix(parts: &mut http::request::Parts, rewrite: &Rewrite) {
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix(rewrite.prefix.as_str()) else { return };
    let mut new_path = format!("{}{rest}", rewrite.replacement);
    if !new_path.starts_with('/') {
        new_path.insert(0, '/');
    }
    // Left as it was if the result is not a valid path.
    let _ = crate::message::replace_path(&mut parts.uri, &new_path);
    if !rewrite.prefix.is_empty()
        && let Ok(v) = HeaderValue::from_str(&rewrite.prefix)
    {
        parts.headers.insert(X_FORWARDED_PREFIX.clone(), v);
    }
}

/// The client's fault, if its body failed.
fn client_fault(watch: Option<&BodyWatch>) -> Option<ProxyError> {
    watch?.failure().map(|e| ProxyError::ClientBody(e.clone()))
}

fn prepare_upstream_request(
    req: &mut Request<BoxBody>,
    endpoint: &http::uri::Authority,
    meta: &RequestMeta,
) {
    let client_host = req.headers().get(http::header::HOST).cloned();
    // HTTP/2 clients send `:authority` instead of Host; the upstream needs a Host header.
    let authority_host = match client_host {
        Some(_) => None,
        None => req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(endpoint.clone());
    uri.path_and_query = req.uri().path_and_query().cloned();
    if let Ok(u) = http::Uri::from_parts(uri) {
        *req.uri_mut() = u;
    }
    // The upstream client speaks HTTP/1.1 whatever the client spoke.
    *req.version_mut() = http::Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if let Some(h) = &authority_host {
        headers.insert(http::header::HOST, h.clone());
    }
    set_forwarded(headers, client_host.or(authority_host));
    headers.insert(X_REQUEST_ID.clone(), meta.id_header.clone());
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The client's `x-request-id` when it is short and printable (reused without a copy),
/// else a new one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && v.to_str().is_ok()
        && !v.is_empty()
        && v.len() <= 128
    {
        return v.clone();
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::process::id()) as u32
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let Ok(n) = u32::try_from(n) else {
        let id = format!("{prefix:08x}{n:08x}");
        return HeaderValue::try_from(id).expect("hex digits are a valid header value");
    };
    // 16 hex digits, written directly: `format!` cost ~1,100 instructions a request.
    let id = (u64::from(*prefix) << 32) | u64::from(n);
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
}
