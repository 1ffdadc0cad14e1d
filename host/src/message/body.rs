//! A message body that is streamed until someone needs it whole.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

/// Errors from any body the gateway streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type the gateway hands to hyper, in both directions.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Why a body could not be buffered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    #[error("body is larger than the {0}-byte limit")]
    TooLarge(u64),
    #[error("reading the body failed: {0}")]
    ReadFailed(String),
    #[error("the body did not arrive whole within {0:?}")]
    TimedOut(std::time::Duration),
}

/// A message body: still a stream, or buffered because a plugin read or replaced it.
pub enum Body {
    Full(Bytes),
    Stream {
        body: BoxBody,
        /// Set once buffering found the body too large, so later reads fail fast.
        too_large: Option<u64>,
    },
    /// Reading it failed part way: what arrived is not the message, and it is never sent
    /// on as if it were (it fails again wherever it is read or forwarded).
    Broken(BodyError),
}

impl Body {
    pub fn empty() -> Self {
        Body::Full(Bytes::new())
    }

    pub fn stream<B>(body: B) -> Self
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body::Stream { body: body.map_err(Into::into).boxed_unsync(), too_large: None }
    }

    /// Buffers the whole body, reading at most `limit` bytes. Over the limit, the bytes read
    /// so far are put back in front of the unread rest, so the body still goes on whole.
    pub async fn buffer(&mut self, limit: u64) -> Result<&Bytes, BodyError> {
        let mut stream = match std::mem::replace(self, Body::empty()) {
            Body::Full(bytes) => {
                *self = Body::Full(bytes);
                return match self {
                    Body::Full(bytes) => Ok(bytes),
                    _ => unreachable!("just stored a full body"),
                };
            }
            Body::Stream { too_large: Some(limit), body } => {
                *self = Body::Stream { body, too_large: Some(limit) };
                return Err(BodyError::TooLarge(limit));
            }
            Body::Stream { body, too_large: None } => body,
            Body::Broken(e) => {
                *self = Body::Broken(e.clone());
                return Err(e);
            }
        };
        let mut chunks = VecDeque::new();
        let mut len = 0u64;
        loop {
            let frame = match stream.frame().await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    let e = BodyError::ReadFailed(e.to_string());
                    *self = Body::Broken(e.clone());
                    return Err(e);
                }
            };
            // Trailers are dropped once a body is buffered: a buffered body has a length.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            len += data.len() as u64;
            chunks.push_back(data);
            if len > limit {
                let body = Prefixed { prefix: chunks, rest: stream }.boxed_unsync();
                *self = Body::Stream { body, too_large: Some(limit) };
                return Err(BodyError::TooLarge(limit));
            }
        }
        *self = Body::Full(concat(chunks, len as usize));
        match self {
            Body::Full(bytes) => Ok(bytes),
            _ => unreachable!("just stored a full body"),
        }
    }

    pub fn is_buffered(&self) -> bool {
        matches!(self, Body::Full(_))
    }

    pub fn into_box(self) -> BoxBody {
        match self {
            Body::Full(bytes) => {
                http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
            }
            Body::Stream { body, .. } => body,
            Body::Broken(e) => Failed(Some(Box::new(e))).boxed_unsync(),
        }
    }

    pub fn is_broken(&self) -> bool {
        matches!(self, Body::Broken(_))
    }
}

/// A body whose one frame is an error.
struct Failed(Option<BoxError>);

impl HttpBody for Failed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}

fn concat(mut chunks: VecDeque<Bytes>, len: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop_front().unwrap_or_default();
    }
    let mut out = Vec::with_capacity(len);
    for c in chunks {
        out.extend_from_slice(&c);
    }
    Bytes::from(out)
}

pin_project_lite::pin_project! {
    /// Chunks already read, then the rest of the stream.
    struct Prefixed {
        prefix: VecDeque<Bytes>,
        #[pin]
        rest: BoxBody,
    }
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.prefix.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None => this.rest.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.prefix.iter().map(|c| c.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A streamed body arriving in the given chunks.
    fn chunked(parts: &[&'static [u8]]) -> Body {
        let prefix = parts.iter().map(|p| Bytes::from_static(p)).collect();
        let rest = http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync();
        Body::stream(Prefixed { prefix, rest })
    }

    async fn collect(body: Body) -> Bytes {
        body.into_box().collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn buffers_a_body_within_the_limit() {
        let mut body = chunked(&[b"hello ", b"world"]);
        assert_eq!(body.buffer(11).await.expect("fits").as_ref(), b"hello world");
        assert!(body.is_buffered());
        // A second read answers from the buffer.
        assert_eq!(body.buffer(11).await.expect("fits").as_ref(), b"hello world");
    }

    #[tokio::test]
    async fn a_body_that_failed_part_way_stays_failed_and_is_never_forwarded_short() {
        let prefix = [Bytes::from_static(b"half")].into();
        let rest = Failed(Some("reset".into())).boxed_unsync();
        let mut body = Body::stream(Prefixed { prefix, rest });
        assert!(matches!(body.buffer(100).await, Err(BodyError::ReadFailed(_))));
        assert!(body.is_broken());
        assert!(matches!(body.buffer(100).await, Err(BodyError::ReadFailed(_))));
        assert!(body.into_box().collect().await.is_err());
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused_but_not_lost() {
        let mut body = chunked(&[b"0123", b"4567", b"89"]);
        assert!(matches!(body.buffer(5).await, Err(BodyError::TooLarge(5))));
        assert!(matches!(body.buffer(5).await, Err(BodyError::TooLarge(5))));
        assert!(!body.is_buffered());
        assert_eq!(collect(body).await.as_ref(), b"0123456789");
    }
}
