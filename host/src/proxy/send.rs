//! The upstream stage: the request goes through the route's [`Targets`] (split, endpoint,
//! attempts, retries), and the response head comes back cleaned for the client.

use http::{HeaderValue, Request};

use super::forward::{set_forwarded, strip_hop_by_hop, strip_hop_by_hop_but_trailers};
use super::request_id::X_REQUEST_ID;
use super::tunnel::UpstreamUpgrade;
use super::{ProxyError, RequestCtx};
use crate::gateway::Route;
use crate::message::{Body, BodyWatch, BoxBody, RequestMsg, ResponseMsg};
use crate::upstream::{InFlight, Outgoing};

/// Sends the request upstream. With `keep`, the request's head comes back (without its
/// body) for the response phases; without, nothing is copied.
pub async fn upstream(
    ctx: &mut RequestCtx,
    route: &Route,
    request: RequestMsg,
    keep: bool,
    watch: Option<&BodyWatch>,
) -> Result<(Option<RequestMsg>, ResponseMsg), ProxyError> {
    let RequestMsg { parts, body, meta, context } = request;
    // A body a plugin could not read whole is not the request: never send it on.
    if let Body::Broken(e) = &body {
        use crate::message::{BodyError, ClientBodyError};
        let fault = watch.and_then(BodyWatch::failure).cloned();
        return Err(ProxyError::ClientBody(fault.unwrap_or_else(|| match e {
            BodyError::TimedOut(d) => ClientBodyError::TimedOut(*d),
            e => ClientBodyError::Broken(e.to_string()),
        })));
    }
    let trace = ctx.traced.then_some(ctx.trace);
    let deadline = ctx.deadline;
    let outgoing =
        Outgoing { parts: &parts, body, client_ip: meta.client_ip, watch, trace, deadline };
    let (scheme, id, upgrade) = (&ctx.scheme, &meta.id_header, ctx.upgrade.is_some());
    // Over HTTP/2 the client sent no key: the gateway's stands in for it.
    let h2_key = ctx.upgrade.as_ref().and_then(|u| u.h2.as_ref()).map(|(key, _)| key.clone());
    let compresses = route.compression.is_some();
    let prepare = |req: &mut Request<BoxBody>| {
        prepare(req, scheme, id);
        if compresses {
            // The gateway compresses: plugins and it get the body plain.
            req.headers_mut().remove(http::header::ACCEPT_ENCODING);
        }
        if upgrade {
            let headers = req.headers_mut();
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Some(key) = &h2_key {
                headers.insert(http::header::SEC_WEBSOCKET_KEY, key.clone());
            }
        }
    };
    let sent = route.targets.send(&mut ctx.upstream, outgoing, prepare).await?;
    let (mut resp_parts, mut resp_body) = sent.response.into_parts();
    let mut in_flight = sent.in_flight;
    if resp_parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
        ctx.switched = Some(switched(ctx, &mut resp_parts, in_flight.take())?);
    }
    strip_hop_by_hop(&mut resp_parts.headers);
    // An upstream that stops sending its body part way is cut by the client connection's
    // idle watchdog (`server.idle_timeout`): no timer per response.
    resp_body.hold_load(in_flight);
    let body = Body::stream(resp_body);
    let request = keep.then(|| RequestMsg { parts, body: Body::empty(), meta, context });
    Ok((request, ResponseMsg { parts: resp_parts, body }))
}

/// The upstream's side of a 101: only an answer to a WebSocket upgrade the client asked
/// for is one; any other is a broken upstream (502).
fn switched(
    ctx: &RequestCtx,
    parts: &mut http::response::Parts,
    in_flight: Option<InFlight>,
) -> Result<UpstreamUpgrade, ProxyError> {
    let on = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let protocol = parts.headers.get(http::header::UPGRADE).cloned();
    let broken = |source: &str| {
        let endpoint = ctx.upstream.attempts.last().map(|a| a.endpoint.to_string());
        ProxyError::Upstream(crate::upstream::UpstreamError::Broken {
            endpoint: endpoint.unwrap_or_default(),
            source: source.into(),
        })
    };
    // The gateway made the key of an HTTP/2 client's socket, so it checks the answer
    // (an HTTP/1.1 client checks its own).
    if let Some((key, _)) = ctx.upgrade.as_ref().and_then(|u| u.h2.as_ref()) {
        let accept = parts.headers.get(http::header::SEC_WEBSOCKET_ACCEPT);
        if accept.is_none_or(|a| a.as_bytes() != super::tunnel::accept_for(key).as_bytes()) {
            return Err(broken("answered 101 with a wrong or missing Sec-WebSocket-Accept"));
        }
    }
    match (ctx.upgrade.is_some(), on, protocol) {
        (true, Some(on), Some(protocol)) => Ok(UpstreamUpgrade { on, protocol, in_flight }),
        _ => Err(broken(
            "answered 101 Switching Protocols to a request that did not ask to upgrade, or \
             without an Upgrade header",
        )),
    }
}

/// The upstream request: Host, hop-by-hop headers dropped, and the forwarding headers. Its
/// URI stays the client's: the transport makes the request line for the endpoint.
fn prepare(req: &mut Request<BoxBody>, scheme: &http::uri::Scheme, id: &HeaderValue) {
    let client_host = req.headers().get(http::header::HOST).cloned();
    // HTTP/2 clients send `:authority` instead of Host; the upstream needs a Host header.
    let authority_host = match client_host {
        Some(_) => None,
        None => req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    // HTTP/1.1 whatever the client spoke; an HTTP/2 upstream's pool sets its own.
    *req.version_mut() = http::Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop_but_trailers(headers);
    if let Some(h) = &authority_host {
        headers.insert(http::header::HOST, h.clone());
    }
    set_forwarded(headers, client_host.or(authority_host), scheme);
    headers.insert(X_REQUEST_ID.clone(), id.clone());
}
