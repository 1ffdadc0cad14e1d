//! gRPC through the gateway. A call is an HTTP/2 request like any other: plugins see its
//! path (`/pkg.Service/Method`) and its metadata as headers, and it reaches an
//! `protocol = "h2"` upstream with `TE: trailers` kept and its trailers passed back. What
//! this module adds for calls:
//!
//! - the client's deadline (`grpc-timeout`) bounds the upstream attempts;
//! - each message the client sends is checked against `grpc.max_message_bytes` as it
//!   streams (the 5-byte length prefix is read; nothing is buffered);
//! - failures the gateway or a plugin answers itself (no route, a denial, an upstream that
//!   is down or late) go out as gRPC statuses in a trailers-only response, as gRPC clients
//!   expect, instead of HTTP error pages;
//! - gRPC-Web from browsers is translated to and from gRPC ([`web`]).

pub mod web;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};

use super::ProxyError;
use crate::message::{BodyWatch, BoxBody, BoxError, ClientBodyError};

/// The status codes the gateway answers with (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// A status code's name, as gRPC's docs and metrics write it (`OK`, `UNAVAILABLE`); codes
/// past 16 are `UNKNOWN`, as gRPC clients read them.
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The `grpc-status` a header block (a trailers-only head, or trailers) carries.
fn status_of(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The status a call ended with, as its response passes through the gateway: from a
/// trailers-only head, or from the trailers after the messages. Shared between the
/// response body (which sees the trailers) and the request's record (which reports it).
#[derive(Debug)]
pub struct CallStatus(AtomicU32);

impl CallStatus {
    const NONE: u32 = u32::MAX;

    /// What the call ended with; `None` if no status went by (the call broke off).
    pub fn get(&self) -> Option<u32> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&c| c != Self::NONE)
    }

    fn set(&self, code: Option<u32>) {
        if let Some(code) = code.filter(|&c| c != Self::NONE) {
            self.0.store(code, Ordering::Relaxed);
        }
    }
}

/// Watches `response` for the call's status (before any gRPC-Web translation, which turns
/// the trailers into body bytes).
pub fn watch_status(response: Response<BoxBody>) -> (Response<BoxBody>, Arc<CallStatus>) {
    let status = Arc::new(CallStatus(AtomicU32::new(CallStatus::NONE)));
    status.set(status_of(response.headers()));
    let watched = status.clone();
    let response = response.map(|inner| BoxBody::new(StatusWatch { inner, status: watched }));
    (response, status)
}

pin_project_lite::pin_project! {
    /// A response body that notes the `grpc-status` of its trailers.
    struct StatusWatch {
        #[pin]
        inner: BoxBody,
        status: Arc<CallStatus>,
    }
}

impl HttpBody for StatusWatch {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
        {
            this.status.set(status_of(trailers));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the message is gRPC: `application/grpc`, alone or with a `+codec`.
pub fn is_call(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| is_type(ct.as_bytes(), b"application/grpc"))
}

/// Whether `content_type` is `kind`, alone or with a `+codec` or parameters.
fn is_type(content_type: &[u8], kind: &[u8]) -> bool {
    content_type.get(..kind.len()).is_some_and(|p| p.eq_ignore_ascii_case(kind))
        && matches!(content_type.get(kind.len()), None | Some(b'+' | b';'))
}

/// What a request is, by its content type (one lookup; most requests are neither).
pub fn kind(headers: &HeaderMap) -> (bool, Option<web::Web>) {
    let Some(ct) = headers.get(http::header::CONTENT_TYPE) else { return (false, None) };
    let ct = ct.as_bytes();
    if !ct.get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")) {
        return (false, None);
    }
    let web = web::Web::of(ct);
    (web.is_some() || is_type(ct, b"application/grpc"), web)
}

/// The call's `grpc-timeout`: 1 to 8 digits and a unit (H, M, S, m, u, n). A malformed
/// one is ignored, as gRPC servers do.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The code for an HTTP status, as gRPC maps one it did not get a status with
/// (grpc/doc/http-grpc-status-mapping.md), plus 413 and 504, which the gateway means
/// exactly.
pub fn code_for_status(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        413 => Code::ResourceExhausted,
        504 => Code::DeadlineExceeded,
        429 | 502 | 503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The code for a failure of the gateway's own.
fn code_for_error(e: &ProxyError) -> Code {
    match e {
        ProxyError::NoRoute => Code::Unimplemented,
        ProxyError::ClientCertRequired => Code::Unauthenticated,
        ProxyError::ClientBody(ClientBodyError::Deadline(_) | ClientBodyError::TimedOut(_)) => {
            Code::DeadlineExceeded
        }
        ProxyError::Refused(_) | ProxyError::Internal(_) => Code::Internal,
        ProxyError::ClientBody(_) | ProxyError::Plugin(_) | ProxyError::Upstream(_) => {
            code_for_status(e.status())
        }
    }
}

/// A trailers-only response: HTTP 200 with the status in its only header block, and no
/// body (HTTP/2 ends the stream with those headers).
fn trailers_only(code: Code, message: &str, mut headers: HeaderMap) -> Response<BoxBody> {
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(m) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", m);
    }
    let mut response = Response::new(BoxBody::default());
    *response.headers_mut() = headers;
    response
}

/// The gateway's failure as the call's status, with the short reason the client would
/// otherwise read in the body (details go to the log).
pub fn error_response(e: &ProxyError, request_id: HeaderValue) -> Response<BoxBody> {
    let mut headers = HeaderMap::new();
    headers.insert(super::request_id::X_REQUEST_ID.clone(), request_id);
    trailers_only(code_for_error(e), e.client_text(), headers)
}

/// A plugin's local reply (a 401 from `jwt`, a 429 from `rate-limit`) as the call's status.
/// Its headers stay (as metadata: `www-authenticate`, `retry-after`); its body does not.
pub fn from_local_reply(response: Response<BoxBody>, plugin: &str) -> Response<BoxBody> {
    if response.status() == StatusCode::OK || is_call(response.headers()) {
        return response;
    }
    let status = response.status();
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let reason = status.canonical_reason().unwrap_or("refused");
    let message = format!("{} {reason} (plugin {plugin})", status.as_u16());
    trailers_only(code_for_status(status), &message, parts.headers)
}

/// grpc-message's encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b' '..=b'~' if b != b'%' => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pin_project_lite::pin_project! {
    /// A call's request body, its messages' lengths checked as they pass: a message larger
    /// than `max` fails the body (the client's fault, told to its watch) before the upstream
    /// has more of it than the bytes already sent.
    pub struct Limited<B> {
        #[pin]
        body: B,
        framing: Framing,
        watch: Option<Arc<BodyWatch>>,
    }
}

impl<B> Limited<B> {
    pub fn new(body: B, max: u64, watch: Option<Arc<BodyWatch>>) -> Self {
        Limited { body, framing: Framing { max, ..Framing::default() }, watch }
    }
}

/// Where a call's body is in its messages: each is a flag byte and a 4-byte big-endian
/// length, then that many bytes.
#[derive(Debug, Default)]
struct Framing {
    max: u64,
    /// The current message's 5-byte prefix, and how much of it has been read.
    prefix: [u8; 5],
    have: usize,
    /// Bytes of the current message's payload still to pass.
    skip: u64,
}

impl Framing {
    /// Walks `chunk` through the framing: `Err(len)` for the first message over `max`.
    fn check(&mut self, chunk: &[u8]) -> Result<(), u64> {
        let mut at = 0;
        while at < chunk.len() {
            if self.skip > 0 {
                let n = self.skip.min((chunk.len() - at) as u64);
                self.skip -= n;
                at += n as usize;
                continue;
            }
            let n = (5 - self.have).min(chunk.len() - at);
            self.prefix[self.have..self.have + n].copy_from_slice(&chunk[at..at + n]);
            self.have += n;
            at += n;
            if self.have == 5 {
                self.have = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u64::from(u32::from_be_bytes([a, b, c, d]));
                if len > self.max {
                    return Err(len);
                }
                self.skip = len;
            }
        }
        Ok(())
    }
}

impl<B> HttpBody for Limited<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(len) = this.framing.check(data)
        {
            let fault = ClientBodyError::MessageTooLarge(len);
            if let Some(w) = this.watch {
                w.fail(fault.clone());
            }
            return Poll::Ready(Some(Err(fault.into())));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_and_what_a_body_ended_with() {
        assert_eq!(
            (code_name(0), code_name(14), code_name(16)),
            ("OK", "UNAVAILABLE", "UNAUTHENTICATED")
        );
        assert_eq!(code_name(17), "UNKNOWN");
        assert_eq!(code_name(u32::MAX), "UNKNOWN");
        let mut head = HeaderMap::new();
        head.insert("grpc-status", HeaderValue::from_static("7"));
        let (_, status) = watch_status(Response::from_parts(
            Response::new(()).into_parts().0,
            BoxBody::default(),
        ));
        assert_eq!(status.get(), None);
        let mut response = Response::new(BoxBody::default());
        *response.headers_mut() = head;
        let (_, status) = watch_status(response);
        assert_eq!(status.get(), Some(7), "a trailers-only head");
    }

    #[tokio::test]
    async fn a_status_in_trailers_is_seen_as_the_body_passes() {
        use http_body_util::BodyExt;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body = http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\x01x"))
            .with_trailers(async move { Some(Ok(trailers)) })
            .map_err(|never| -> BoxError { match never {} });
        let (response, status) = watch_status(Response::new(BoxBody::new(body)));
        assert_eq!(status.get(), None);
        response.into_body().collect().await.unwrap();
        assert_eq!(status.get(), Some(0));
    }

    #[test]
    fn calls_are_told_by_content_type() {
        let call = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_call(&h)
        };
        assert!(call("application/grpc") && call("application/grpc+proto"));
        assert!(call("Application/GRPC;charset=utf-8"));
        assert!(!call("application/grpc-web") && !call("application/json"));
        assert!(!call("application/grp"));
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_nonsense_is_ignored() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            timeout(&h)
        };
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("1S"), Some(Duration::from_secs(1)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "100", "123456789S", "1s", "-1S", "1.5S", "1 S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn message_lengths_are_read_across_chunk_boundaries() {
        let mut framed = Vec::new();
        for len in [3u32, 0, 10] {
            framed.push(0);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend(std::iter::repeat_n(b'x', len as usize));
        }
        framed.extend_from_slice(&[0, 0, 0, 0, 11]);
        // Every way of cutting it into two chunks finds the 11-byte message over 10.
        for cut in 0..framed.len() {
            let mut f = Framing { max: 10, ..Framing::default() };
            let first = f.check(&framed[..cut]);
            assert_eq!(first.and_then(|()| f.check(&framed[cut..])), Err(11), "cut at {cut}");
        }
        assert_eq!(Framing { max: 11, ..Framing::default() }.check(&framed), Ok(()));
    }

    #[test]
    fn plugin_replies_become_statuses_and_keep_their_headers() {
        let mut reply = Response::new(BoxBody::default());
        *reply.status_mut() = StatusCode::UNAUTHORIZED;
        reply.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        reply.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(12));
        let out = from_local_reply(reply, "auth");
        assert_eq!(out.status(), 200);
        let h = out.headers();
        assert_eq!(h["grpc-status"], "16");
        assert_eq!(h["grpc-message"], "401 Unauthorized (plugin auth)");
        assert_eq!(h["www-authenticate"], "Bearer");
        assert!(h.get(http::header::CONTENT_LENGTH).is_none());
        assert_eq!(percent_encode("50% off: ü"), "50%25 off: %C3%BC");
    }
}
