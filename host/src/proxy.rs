//! The request path: route -> request phases -> upstream -> response phases -> client.
//!
//! Bodies stay streams unless a plugin reads or replaces them. Failures are turned into
//! responses in one place ([`ProxyError::into_response`]) and logged once, here.

mod error;
mod forward;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

pub use error::{Origin, ProxyError};
pub use forward::{set_forwarded, strip_hop_by_hop};

use crate::gateway::{Gateway, Route};
use crate::message::{Body, BoxBody, RequestMeta, RequestMsg, ResponseMsg};

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Serves one request. Never fails: every error becomes a response.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    client_ip: IpAddr,
) -> Response<BoxBody> {
    let id = request_id(req.headers());
    let Some(route) = gw.route(req.uri().path()) else {
        return ProxyError::NoRoute.into_response(id);
    };
    let route = route.clone();
    let (parts, body) = req.into_parts();
    let meta = Arc::new(RequestMeta {
        id_header: id,
        client_ip,
        route: route.name.clone(),
        max_body_bytes: route.max_body_bytes,
    });
    let request = RequestMsg { parts, body: Body::stream(body), meta: meta.clone() };
    match proxy(&gw, &route, request).await {
        Ok(mut resp) => {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), meta.id_header.clone());
            resp
        }
        Err(e) => {
            match e.origin() {
                Origin::Plugin => {
                    tracing::error!(route = %meta.route, request_id = %meta.id(), "{e}")
                }
                Origin::Upstream | Origin::Downstream => {
                    tracing::warn!(route = %meta.route, request_id = %meta.id(), "{e}")
                }
            }
            e.into_response(meta.id_header.clone())
        }
    }
}

async fn proxy(
    gw: &Gateway,
    route: &Route,
    request: RequestMsg,
) -> Result<Response<BoxBody>, ProxyError> {
    if route.chain.is_empty() {
        let (_, resp) = forward(gw, route, request, false).await?;
        return Ok(resp.into_http());
    }
    let phase = route.chain.run_request(request).await?;
    let keep = route.chain.has_response_hooks();
    let (request, response) = match phase.local {
        Some(local) => (Some(phase.request), local),
        None => forward(gw, route, phase.request, keep).await?,
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
    gw: &Gateway,
    route: &Route,
    request: RequestMsg,
    keep: bool,
) -> Result<(Option<RequestMsg>, ResponseMsg), ProxyError> {
    let RequestMsg { parts, body, meta } = request;
    let endpoint = route.upstream.pick();
    let kept = keep.then(|| parts.clone());
    let mut upstream_req = Request::from_parts(parts, body.into_box());
    prepare_upstream_request(&mut upstream_req, endpoint, &meta);

    let timeout = gw.config.server.request_timeout;
    let sent = tokio::time::timeout(timeout, gw.client.request(upstream_req)).await;
    let response = match sent {
        Err(_) => {
            return Err(ProxyError::UpstreamTimeout { endpoint: endpoint.to_string(), timeout });
        }
        Ok(Err(e)) if e.is_connect() => {
            let reason = error_chain(&e);
            return Err(ProxyError::UpstreamConnect { endpoint: endpoint.to_string(), reason });
        }
        Ok(Err(e)) => {
            return Err(ProxyError::Upstream {
                endpoint: endpoint.to_string(),
                reason: error_chain(&e),
            });
        }
        Ok(Ok(response)) => response,
    };
    let (mut resp_parts, resp_body) = response.into_parts();
    strip_hop_by_hop(&mut resp_parts.headers);
    let request = kept.map(|parts| RequestMsg { parts, body: Body::empty(), meta });
    Ok((request, ResponseMsg { parts: resp_parts, body: Body::stream(resp_body) }))
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
    set_forwarded(headers, meta.client_ip, client_host.or(authority_host));
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
    let id = format!("{prefix:08x}{:08x}", NEXT.fetch_add(1, Ordering::Relaxed));
    HeaderValue::try_from(id).expect("hex digits are a valid header value")
}
