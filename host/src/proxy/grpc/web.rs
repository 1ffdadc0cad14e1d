//! gRPC-Web (grpc/doc/PROTOCOL-WEB.md), translated at the edge so that browsers reach
//! plain gRPC upstreams: the request becomes a gRPC call (its content type, `TE: trailers`,
//! and for `-text` its body base64-decoded) before routing, so plugins and the upstream see
//! gRPC; the response goes back with the gRPC-Web content type, its trailers as a last
//! message flagged 0x80, and for `-text` the whole body base64-encoded.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body as HttpBody, Frame};

use crate::message::{BodyWatch, BoxBody, BoxError, ClientBodyError};

/// Which gRPC-Web the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Web {
    /// `application/grpc-web[+proto]`: gRPC's framing as it is.
    Binary,
    /// `application/grpc-web-text[+proto]`: the same, base64-encoded.
    Text,
}

impl Web {
    /// The client's mode, from its content type.
    pub fn of(content_type: &[u8]) -> Option<Web> {
        if super::is_type(content_type, b"application/grpc-web-text") {
            Some(Web::Text)
        } else if super::is_type(content_type, b"application/grpc-web") {
            Some(Web::Binary)
        } else {
            None
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Web::Binary => "application/grpc-web+proto",
            Web::Text => "application/grpc-web-text+proto",
        })
    }

    /// The request as a gRPC call: its headers here; its body through [`Web::request_body`].
    pub fn to_grpc(self, headers: &mut HeaderMap) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        if self == Web::Text {
            headers.remove(CONTENT_LENGTH);
        }
    }

    /// The request's body as gRPC; a `-text` body that is not base64 is the client's
    /// fault, told to its `watch`.
    pub fn request_body(self, body: BoxBody, watch: Option<Arc<BodyWatch>>) -> BoxBody {
        match self {
            Web::Binary => body,
            Web::Text => BoxBody::new(Decoding { body, pending: BytesMut::new(), watch }),
        }
    }

    /// The response for the client: a gRPC one translated, anything else (an error page of
    /// an upstream that is not gRPC) as it is.
    pub fn response(self, response: Response<BoxBody>) -> Response<BoxBody> {
        if !super::is_call(response.headers()) {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        parts.headers.insert(CONTENT_TYPE, self.content_type());
        parts.headers.remove(CONTENT_LENGTH);
        let body = Encoding { body, text: self == Web::Text, carry: BytesMut::new(), done: false };
        Response::from_parts(parts, BoxBody::new(body))
    }
}

/// Trailers as gRPC-Web carries them: a message flagged 0x80 of `name: value\r\n` lines.
fn trailer_message(trailers: &HeaderMap) -> Bytes {
    let mut lines = BytesMut::new();
    for (name, value) in trailers {
        lines.put_slice(name.as_str().as_bytes());
        lines.put_slice(b": ");
        lines.put_slice(value.as_bytes());
        lines.put_slice(b"\r\n");
    }
    let mut message = BytesMut::with_capacity(5 + lines.len());
    message.put_u8(0x80);
    message.put_u32(lines.len() as u32);
    message.put_slice(&lines);
    message.freeze()
}

pin_project_lite::pin_project! {
    /// A `-text` request body, base64-decoded as it streams (chunks may each be padded).
    struct Decoding {
        #[pin]
        body: BoxBody,
        pending: BytesMut,
        watch: Option<Arc<BodyWatch>>,
    }
}

/// Decodes the complete 4-character groups of `pending`, leaving the rest there. A group
/// with padding ends one encoded chunk; the next may follow it.
fn decode_groups(pending: &mut BytesMut) -> Result<Bytes, base64::DecodeError> {
    let whole = pending.len() / 4 * 4;
    let text = pending.split_to(whole);
    let mut out = Vec::with_capacity(whole / 4 * 3);
    let mut start = 0;
    for end in (4..=whole).step_by(4) {
        if text[end - 1] == b'=' || end == whole {
            STANDARD.decode_vec(&text[start..end], &mut out)?;
            start = end;
        }
    }
    Ok(out.into())
}

impl HttpBody for Decoding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            match std::task::ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    this.pending.extend(data.iter().filter(|b| !b.is_ascii_whitespace()));
                    match decode_groups(this.pending) {
                        Ok(decoded) if decoded.is_empty() => {}
                        Ok(decoded) => return Poll::Ready(Some(Ok(Frame::data(decoded)))),
                        Err(e) => {
                            let e = format!("grpc-web-text body is not base64: {e}");
                            return Poll::Ready(Some(Err(fail(this.watch, e))));
                        }
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None if this.pending.is_empty() => return Poll::Ready(None),
                None => {
                    let e = "grpc-web-text body ends inside a base64 group".to_owned();
                    return Poll::Ready(Some(Err(fail(this.watch, e))));
                }
            }
        }
    }
}

/// A body the client broke: its fault, told to its watch.
fn fail(watch: &Option<Arc<BodyWatch>>, why: String) -> BoxError {
    let fault = ClientBodyError::Broken(why);
    if let Some(w) = watch {
        w.fail(fault.clone());
    }
    fault.into()
}

pin_project_lite::pin_project! {
    /// A gRPC response body as gRPC-Web: data as it is (base64 in text mode, keeping the
    /// encoding aligned across chunks), trailers as the last message.
    struct Encoding {
        #[pin]
        body: BoxBody,
        text: bool,
        carry: BytesMut,
        done: bool,
    }
}

impl Encoding {
    /// `data` for the wire; `last` pads out what is left of the encoding.
    fn encode(text: bool, carry: &mut BytesMut, data: Bytes, last: bool) -> Bytes {
        if !text {
            return data;
        }
        carry.extend_from_slice(&data);
        let take = if last { carry.len() } else { carry.len() / 3 * 3 };
        Bytes::from(STANDARD.encode(carry.split_to(take)))
    }
}

impl HttpBody for Encoding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            let out = match std::task::ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Self::encode(*this.text, this.carry, data, false),
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else { continue };
                        *this.done = true;
                        Self::encode(*this.text, this.carry, trailer_message(&trailers), true)
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    *this.done = true;
                    Self::encode(*this.text, this.carry, Bytes::new(), true)
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// A body of these frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn body(frames: Vec<Frame<Bytes>>) -> BoxBody {
        BoxBody::new(Frames(frames.into()))
    }

    #[test]
    fn modes_are_told_by_content_type() {
        let mode = |ct: &str| Web::of(ct.as_bytes());
        assert_eq!(mode("application/grpc-web"), Some(Web::Binary));
        assert_eq!(mode("application/grpc-web+proto"), Some(Web::Binary));
        assert_eq!(mode("application/grpc-web-text"), Some(Web::Text));
        assert_eq!(mode("application/grpc-web-text+proto"), Some(Web::Text));
        assert_eq!(mode("application/grpc"), None);
        assert_eq!(mode("application/grpc-webx"), None);
    }

    #[tokio::test]
    async fn text_requests_decode_across_chunks_and_padded_chunks() {
        let raw = b"\x00\x00\x00\x00\x05hello";
        let encoded = STANDARD.encode(raw);
        // Cut anywhere, and also sent as two separately padded chunks.
        for cut in 0..encoded.len() {
            let (a, b) = encoded.split_at(cut);
            let frames = vec![
                Frame::data(Bytes::from(a.to_owned())),
                Frame::data(Bytes::from(b.to_owned())),
            ];
            let out =
                Web::Text.request_body(body(frames), None).collect().await.unwrap().to_bytes();
            assert_eq!(&out[..], raw, "cut at {cut}");
        }
        let padded = format!("{}{}", STANDARD.encode(&raw[..4]), STANDARD.encode(&raw[4..]));
        let frames = vec![Frame::data(Bytes::from(padded))];
        let out = Web::Text.request_body(body(frames), None).collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], raw);
        let bad = vec![Frame::data(Bytes::from_static(b"!!!!"))];
        assert!(Web::Text.request_body(body(bad), None).collect().await.is_err());
    }

    #[tokio::test]
    async fn responses_carry_trailers_as_a_last_message_and_text_stays_aligned() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = || {
            vec![
                Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x01a")),
                Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x02bc")),
                Frame::trailers(trailers.clone()),
            ]
        };
        let grpc = |b| {
            let mut r = Response::new(b);
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            r
        };
        let expected =
            b"\x00\x00\x00\x00\x01a\x00\x00\x00\x00\x02bc\x80\x00\x00\x00\x10grpc-status: 0\r\n";
        let binary = Web::Binary.response(grpc(body(frames())));
        assert_eq!(binary.headers()[CONTENT_TYPE], "application/grpc-web+proto");
        let out = binary.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], expected);
        let text = Web::Text.response(grpc(body(frames())));
        let out = text.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(STANDARD.decode(&out).unwrap(), expected, "one base64 text, padded at the end");
    }
}
