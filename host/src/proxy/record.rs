//! Recording a request once it is over: its metrics and its access-log line, from its
//! [`RequestCtx`]. "Over" is when the response body's last byte left (or the client went
//! away), so durations and byte counts cover the whole exchange; the response's body is
//! wrapped in [`Recorded`] to count it and to hold the context until then.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::ctx::{BodyEnd, RequestCtx};
use crate::config::AccessLogFormat;
use crate::message::{BoxBody, BoxError};
use crate::telemetry::{method_label, metrics};
use line::Line;

/// nginx's "client closed request": the client left before the response.
const CLIENT_CLOSED: u16 = 499;

mod line;
mod spans;

/// Records `ctx` (called as it is dropped).
pub(super) fn request(ctx: &RequestCtx) {
    let m = metrics();
    let total = ctx.timings.arrived.elapsed();
    let (status, origin) = match &ctx.outcome {
        Some(o) => (o.status, o.error.map(|o| o.label())),
        None => (
            StatusCode::from_u16(CLIENT_CLOSED).expect("a valid status"),
            Some(super::Origin::Downstream.label()),
        ),
    };
    let bytes_in = ctx.body_in.as_ref().map_or(0, |w| w.bytes());
    // A call's status; without one, the client left first (gRPC clients call that
    // CANCELLED) or the response broke off (UNKNOWN, as clients read a missing status).
    let grpc_status = ctx.grpc_status.as_ref().map(|s| match s.get() {
        Some(code) => code,
        None if status.as_u16() == CLIENT_CLOSED || ctx.body_end == BodyEnd::Abandoned => 1,
        None => 2,
    });
    if m.settings.enabled {
        if let Some(code) = grpc_status {
            let route = ctx.meta.as_ref().map_or("", |meta| &meta.route);
            m.grpc_calls.with_label_values(&[route, super::grpc::code_name(code)]).inc();
        }
        let route = ctx.meta.as_ref().map(|meta| &meta.route);
        RequestSeries::with(route, method_label(&ctx.method), status, origin, |s| {
            s.duration.observe(total.as_secs_f64());
            s.requests.inc();
            s.request_size.observe(bytes_in as f64);
            s.response_size.observe(ctx.bytes_out as f64);
        });
    }
    if ctx.traced
        && let Some(tracer) = crate::telemetry::otel::tracer()
    {
        spans::record(tracer, ctx, status, origin, grpc_status);
    }
    if let Some(log) = &ctx.access_log
        && log.wants(status.as_u16())
    {
        let mut line = Line::of(ctx, status.as_u16(), origin, bytes_in, total);
        line.grpc_status = grpc_status;
        log.write(|out| match log.format() {
            AccessLogFormat::Json => line.json(out),
            AccessLogFormat::Common => line.clf(out, false),
            AccessLogFormat::Combined => line.clf(out, true),
        });
    }
}

/// One request's series, resolved once per thread for each route, method, status and
/// error origin seen, and reused: resolving them through the registry hashes every label
/// value and takes a lock, four times a request.
struct RequestSeries {
    requests: prometheus::IntCounter,
    duration: prometheus::Histogram,
    request_size: prometheus::Histogram,
    response_size: prometheus::Histogram,
    /// Held so the route's name (whose address is in the key) is not freed and reused.
    _route: Option<Arc<str>>,
}

/// The route's address, and the addresses of the method and origin labels (both static).
type SeriesKey = (usize, usize, u16, usize);

/// A multiply-and-rotate hash for [`SeriesKey`]s: a few instructions where SipHash takes
/// hundreds. The keys are addresses and a status (no client picks them), at most
/// [`MAX_CACHED_SERIES`] of them, so there is nothing to flood.
#[derive(Default, Clone, Copy)]
struct KeyHash(u64);

impl std::hash::Hasher for KeyHash {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl std::hash::BuildHasher for KeyHash {
    type Hasher = KeyHash;
    fn build_hasher(&self) -> KeyHash {
        KeyHash(0)
    }
}

/// Entries kept per thread; past this (routes churned by many reloads) the cache starts over.
const MAX_CACHED_SERIES: usize = 4096;

impl RequestSeries {
    fn with(
        route: Option<&Arc<str>>,
        method: &'static str,
        status: StatusCode,
        origin: Option<&'static str>,
        record: impl FnOnce(&RequestSeries),
    ) {
        thread_local! {
            static CACHE: RefCell<HashMap<SeriesKey, RequestSeries, KeyHash>> =
                RefCell::new(HashMap::default());
        }
        let key = (
            route.map_or(0, |r| r.as_ptr() as usize),
            method.as_ptr() as usize,
            status.as_u16(),
            origin.map_or(0, |o| o.as_ptr() as usize),
        );
        CACHE.with_borrow_mut(|cache| {
            if let Some(series) = cache.get(&key) {
                return record(series);
            }
            if cache.len() >= MAX_CACHED_SERIES {
                cache.clear();
            }
            let series = cache.entry(key).or_insert_with(|| {
                let m = metrics();
                let name = route.map_or("", |r| r);
                let mut labels = smallvec::SmallVec::<[&str; 4]>::new();
                labels.push(name);
                if m.settings.method_label {
                    labels.push(method);
                }
                if m.settings.status_label {
                    labels.push(status.as_str());
                }
                let duration = m.request_duration.with_label_values(&labels);
                labels.push(origin.unwrap_or_default());
                RequestSeries {
                    requests: m.requests.with_label_values(&labels),
                    duration,
                    request_size: m.request_body_size.with_label_values(&[name]),
                    response_size: m.response_body_size.with_label_values(&[name]),
                    _route: route.cloned(),
                }
            });
            record(series);
        });
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts the bytes it sends and holds the request's context
    /// until it ends, when the context is dropped and the request recorded.
    pub(super) struct Recorded {
        #[pin]
        inner: BoxBody,
        ctx: RequestCtx,
    }

    impl PinnedDrop for Recorded {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.ctx.body_end == BodyEnd::Pending {
                // hyper stops polling a body that says it has ended (an empty one, or one
                // whose Content-Length was sent); any other is left unfinished.
                this.ctx.body_end = match this.inner.is_end_stream() {
                    true => BodyEnd::Complete,
                    false => BodyEnd::Abandoned,
                };
            }
        }
    }
}

impl Recorded {
    pub(super) fn new(inner: BoxBody, ctx: RequestCtx) -> Self {
        Self { inner, ctx }
    }
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.ctx.bytes_out += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(Some(Err(_))) => this.ctx.body_end = BodyEnd::Failed,
            Poll::Ready(None) => this.ctx.body_end = BodyEnd::Complete,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
