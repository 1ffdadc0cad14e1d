//! The request path, as named stages:
//!
//! ```text
//! arrive -> route -> request phases -> upstream -> response phases -> finish
//! ```
//!
//! Each stage writes what it learned into the request's [`RequestCtx`]. [`finish`] is the
//! one place where a result becomes a status and where the request is recorded. Bodies
//! stay streams unless a plugin reads or replaces them.

mod compress;
mod ctx;
mod error;
mod forward;
mod grpc;
pub mod normalize;
mod record;
mod request_id;
mod send;
pub mod tunnel;

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

pub use ctx::{Outcome, RequestCtx, Timings};
pub use error::{Origin, ProxyError, error_chain};
pub use forward::{append_forwarded_for, set_forwarded, strip_hop_by_hop};
use request_id::X_REQUEST_ID;

use crate::config::Rewrite;
use crate::gateway::{Gateway, Route};
use crate::message::ConnInfo;
use crate::message::{Body, BodyWatch, BoxBody, ClientBody, RequestMeta, RequestMsg, ResponseMsg};
use crate::router::RequestView;

/// Serves one request. Never fails: every error becomes a response.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let id = request_id::of(&parts.headers);
    let mut ctx = RequestCtx::new(conn, id, &parts, gw.access_log.clone());
    let result = serve(&gw, &mut ctx, parts, body).await;
    let response = finish(&mut ctx, result);
    // The context goes with the body: the request is recorded when the body ends.
    response.map(|body| BoxBody::new(record::Recorded::new(body, ctx)))
}

async fn serve(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    parts: http::request::Parts,
    body: Incoming,
) -> Result<Response<BoxBody>, ProxyError> {
    let Arrived { request, route, watch } = arrive_and_route(gw, ctx, parts, body)?;
    if let Some(port) = route.https_redirect
        && ctx.conn.tls.is_none()
    {
        return redirect_https(&request.parts, port);
    }
    if route.chain.is_empty() {
        let (_, resp) = send::upstream(ctx, &route, request, false, watch.as_deref()).await?;
        if ctx.switched.is_some() {
            return Ok(switch_or(ctx, &route, resp));
        }
        return Ok(compressed(ctx, &route, resp.into_http()));
    }
    // Request phases.
    let phase = route.chain.run_request(request).await?;
    ctx.timings.request_phases = Some(ctx.timings.arrived.elapsed());
    let keep = route.chain.has_response_hooks();
    let (request, response) = match phase.local {
        Some(local) => {
            ctx.answered_by = route.chain.plugin_name(phase.reached);
            (Some(phase.request), local)
        }
        None => send::upstream(ctx, &route, phase.request, keep, watch.as_deref()).await?,
    };
    if ctx.switched.is_some() {
        // A 101 has no body and ends the HTTP exchange: no response phase runs on it.
        return Ok(switch_or(ctx, &route, response));
    }
    // Response phases.
    let Some(request) = request else { return Ok(compressed(ctx, &route, response.into_http())) };
    let started = tokio::time::Instant::now();
    let response = route.chain.run_response(phase.reached, request, response).await?;
    ctx.timings.response_phases = Some(started.elapsed());
    Ok(compressed(ctx, &route, response.into_http()))
}

/// The response compressed for the client, if its route compresses (`proxy/compress.rs`).
fn compressed(ctx: &RequestCtx, route: &Route, response: Response<BoxBody>) -> Response<BoxBody> {
    match &route.compression {
        Some(settings) => compress::response(settings, &ctx.method, &ctx.accept_encoding, response),
        None => response,
    }
}

/// The response as it is, unless the upstream switched to a WebSocket: then the client
/// gets the 101 with the upstream's `Upgrade`, and the tunnel starts once both sides have
/// switched.
fn switch_or(ctx: &mut RequestCtx, route: &Route, response: ResponseMsg) -> Response<BoxBody> {
    let mut response = response.into_http();
    let (Some(upstream), Some(client)) = (ctx.switched.take(), ctx.upgrade.take()) else {
        return response;
    };
    let headers = response.headers_mut();
    match client.h2 {
        // RFC 8441 5: the stream is the socket once the CONNECT is answered 2xx.
        Some(_) => {
            headers.remove(http::header::SEC_WEBSOCKET_ACCEPT);
            *response.status_mut() = http::StatusCode::OK;
        }
        None => {
            headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
            headers.insert(http::header::UPGRADE, upstream.protocol.clone());
        }
    }
    tunnel::spawn(client, upstream, route.name.clone(), ctx.conn.clone());
    response
}

/// An HTTP/2 WebSocket request that was answered 2xx without a switch (an upstream that
/// ignored the upgrade, an `h2` upstream, a plugin's local reply) cannot be passed on: the
/// client would take the stream for its socket.
fn unswitched(ctx: &RequestCtx) -> ProxyError {
    match &ctx.answered_by {
        Some(plugin) => ProxyError::Internal(format!(
            "plugin {plugin:?} answered a WebSocket request over HTTP/2 with a 2xx, which \
             only a switched upstream may"
        )),
        None => ProxyError::Upstream(crate::upstream::UpstreamError::Broken {
            endpoint: ctx
                .upstream
                .attempts
                .last()
                .map(|a| a.endpoint.to_string())
                .unwrap_or_default(),
            source: "answered a WebSocket request without switching protocols (101)".into(),
        }),
    }
}

/// `308 Permanent Redirect` to the same host, path and query over HTTPS on `port`; no
/// plugin runs and nothing goes upstream.
fn redirect_https(
    parts: &http::request::Parts,
    port: u16,
) -> Result<Response<BoxBody>, ProxyError> {
    let host = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok());
    let host = host.map(crate::router::strip_port).unwrap_or_default();
    let authority = match port {
        443 => host.to_owned(),
        p => format!("{host}:{p}"),
    };
    let target = http::Uri::builder()
        .scheme(http::uri::Scheme::HTTPS)
        .authority(authority)
        .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| ProxyError::Refused(crate::proxy::normalize::Refused::BadHost))?;
    let location = http::HeaderValue::try_from(target.to_string())
        .map_err(|_| ProxyError::Refused(crate::proxy::normalize::Refused::BadHost))?;
    let mut resp = Response::new(BoxBody::default());
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(http::header::LOCATION, location);
    Ok(resp)
}

/// Arrival and routing: the request is normalised and its client headers cleaned, once,
/// before anything reads it, so the router, every plugin and the upstream see the same
/// method, host, path and headers. Then it is routed, and its body watched.
fn arrive_and_route(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    mut parts: http::request::Parts,
    body: Incoming,
) -> Result<Arrived, ProxyError> {
    let server = &gw.config.server;
    let peer = ctx.conn.peer.ip();
    // Read before the hop-by-hop headers (Connection, Upgrade) are dropped.
    let websocket = tunnel::wants_websocket(&parts);
    if websocket == tunnel::Wants::Http2 {
        tunnel::h2_as_get(&mut parts);
    }
    let trusted = server.trusts(peer);
    if let Some(web) = ctx.web {
        // From here on it is a gRPC call: plugins and the upstream see gRPC.
        web.to_grpc(&mut parts.headers);
    }
    normalize::request(&mut parts, server.paths)
        .and_then(|()| forward::from_client(&mut parts.headers, trusted, server.underscores))
        .map_err(ProxyError::Refused)?;
    ctx.path = parts.uri.path_and_query().cloned();
    // Plugins and the upstream see the gateway's span as the parent.
    ctx.trace.propagate(&mut parts.headers);
    let (client_ip, client_header) = match trusted {
        false => (peer, ctx.conn.peer_header.clone()),
        true => {
            let ip = forward::client_ip(&parts.headers, peer, &|ip| server.trusts(ip));
            (ip, crate::message::ip_header(ip))
        }
    };
    forward::append_forwarded_for(&mut parts.headers, &ctx.conn.peer_header);
    let found =
        gw.route(&RequestView::of_parts(&parts, &ctx.conn.listener)).ok_or(ProxyError::NoRoute)?;
    let (route, params) = (found.value.clone(), found.params);
    if route.require_client_cert && ctx.conn.client_cert().is_none() {
        return Err(ProxyError::ClientCertRequired);
    }
    if let Some(rewrite) = &route.rewrite {
        rewrite_prefix(&mut parts, rewrite);
    }
    if route.compression.is_some() {
        let accept = parts.headers.get_all(http::header::ACCEPT_ENCODING);
        ctx.accept_encoding = accept.iter().cloned().collect();
    }
    if websocket != tunnel::Wants::No
        && let Some(settings) = route.websocket
        && let Some(on) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    {
        let h2 = match websocket {
            tunnel::Wants::Http2 => {
                let key = tunnel::new_key().ok_or_else(|| {
                    ProxyError::Internal("the system's random generator failed".into())
                })?;
                Some((key, parts.extensions.remove::<crate::server::Hold>()))
            }
            _ => None,
        };
        ctx.upgrade = Some(tunnel::ClientUpgrade { on, settings, h2 });
    } else if websocket == tunnel::Wants::Http2 {
        // A CONNECT stream answered with a plain response would leave the client waiting
        // for a tunnel: refuse it instead.
        return Err(ProxyError::Refused(normalize::Refused::WebSocketOff));
    }
    let meta = Arc::new(RequestMeta {
        id_header: ctx.id.clone(),
        client_ip,
        client_header,
        route: route.name.clone(),
        params,
        max_body_bytes: route.max_body_bytes,
        trace_id: ctx.trace.trace_id,
        calls: ctx.traced.then(Default::default),
        client_cert: ctx.conn.client_cert().cloned(),
    });
    ctx.meta = Some(meta.clone());
    // A body still to come is watched, so that a client who breaks it or goes quiet is
    // told so, and never counts against an upstream.
    let (body, watch) = match http_body::Body::is_end_stream(&body) {
        true => (Body::empty(), None),
        false => {
            let watch = Arc::new(BodyWatch::default());
            let body = ClientBody::new(body, watch.clone(), server.body_timeout);
            ctx.body_in = Some(watch.clone());
            let decode = route.request_decompression.zip(compress::decode::coding(&parts.headers));
            let body = match decode {
                None if ctx.grpc => {
                    let body = BoxBody::new(http_body_util::BodyExt::map_err(body, Into::into));
                    let body = match ctx.web {
                        Some(web) => web.request_body(body, Some(watch.clone())),
                        None => body,
                    };
                    let max = route.grpc_max_message_bytes;
                    Body::stream(grpc::Limited::new(body, max, Some(watch.clone())))
                }
                None => Body::stream(body),
                Some((max, coding)) => {
                    parts.headers.remove(http::header::CONTENT_ENCODING);
                    parts.headers.remove(http::header::CONTENT_LENGTH);
                    let body = BoxBody::new(http_body_util::BodyExt::map_err(body, Into::into));
                    Body::stream(compress::decode::decoded(body, coding, max, Some(watch.clone())))
                }
            };
            (body, Some(watch))
        }
    };
    let request = RequestMsg { parts, body, meta, context: Default::default() };
    Ok(Arrived { request, route, watch })
}

/// A routed request, its route, and the watch on the client's body while it streams.
struct Arrived {
    request: RequestMsg,
    route: Arc<Route>,
    watch: Option<Arc<BodyWatch>>,
}

/// Where a result becomes a status, and the outcome is written into `ctx`, to be recorded
/// (metrics, the access log) when the response body ends (`proxy/record.rs`).
fn finish(
    ctx: &mut RequestCtx,
    result: Result<Response<BoxBody>, ProxyError>,
) -> Response<BoxBody> {
    ctx.timings.total = ctx.timings.arrived.elapsed();
    let result = match result {
        Ok(resp)
            if resp.status().is_success()
                && ctx.upgrade.as_ref().is_some_and(|u| u.h2.is_some()) =>
        {
            Err(unswitched(ctx))
        }
        other => other,
    };
    let (mut response, error) = match result {
        Ok(mut resp) => {
            if ctx.grpc
                && let Some(plugin) = &ctx.answered_by
            {
                resp = grpc::from_local_reply(resp, plugin);
            }
            resp.headers_mut().insert(X_REQUEST_ID.clone(), ctx.id.clone());
            (resp, None)
        }
        Err(e) => {
            log_failure(ctx, &e);
            let origin = e.origin();
            let resp = match ctx.grpc {
                true => grpc::error_response(&e, ctx.id.clone()),
                false => e.into_response(ctx.id.clone()),
            };
            (resp, Some(origin))
        }
    };
    if ctx.grpc {
        let status;
        (response, status) = grpc::watch_status(response);
        ctx.grpc_status = Some(status);
        if let Some(web) = ctx.web {
            response = web.response(response);
        }
    }
    let answered_by = ctx.answered_by.take();
    ctx.outcome = Some(Outcome { status: response.status(), error, answered_by });
    response
}

/// One line per failed request, except that a flood of the same failure (a broken plugin,
/// a dead upstream) is throttled to a few lines a second per route, with a count.
fn log_failure(ctx: &RequestCtx, e: &ProxyError) {
    use crate::throttle::{Throttle, Verdict, suppressed_note};
    static THROTTLE: std::sync::LazyLock<Throttle> = std::sync::LazyLock::new(Throttle::default);
    let route = ctx.route().unwrap_or_default();
    if e.origin() == Origin::Downstream {
        let peer = ctx.conn.peer;
        tracing::debug!(route = %route, %peer, request_id = %ctx.id(), "{e}");
        return;
    }
    let text = match e {
        ProxyError::Upstream(e) => error_chain(e),
        e => e.to_string(),
    };
    let Verdict::Write { suppressed } = THROTTLE.check((route, &text)) else { return };
    let note = suppressed_note(suppressed);
    match e.origin() {
        Origin::Plugin | Origin::Internal => {
            tracing::error!(route = %route, request_id = %ctx.id(), "{text}{note}")
        }
        _ => tracing::warn!(route = %route, request_id = %ctx.id(), "{text}{note}"),
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
        && let Ok(v) = http::HeaderValue::from_str(&rewrite.prefix)
    {
        parts.headers.insert(X_FORWARDED_PREFIX.clone(), v);
    }
}
