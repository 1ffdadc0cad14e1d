//! The client's request body as it streams in, watched: whether it ended, failed or went
//! quiet for too long. A body the client broke is the client's fault, and the request path
//! asks the watch before blaming an upstream for a failed attempt.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::BoxError;

/// How the client's body went, shared by the body and the request path.
#[derive(Debug, Default)]
pub struct BodyWatch {
    state: AtomicU8,
    failure: OnceLock<ClientBodyError>,
    /// Body bytes read from the client so far.
    bytes: AtomicU64,
}

const STREAMING: u8 = 0;
const ENDED: u8 = 1;
const FAILED: u8 = 2;

/// Why a client's body did not arrive whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    /// Bad framing (a malformed chunk), or the client went away before the end.
    #[error("the client's body did not arrive whole: {0}")]
    Broken(String),
    /// No byte for `body_timeout`, or not whole within the time allowed to buffer it.
    #[error("the client's body timed out after {0:?}")]
    TimedOut(Duration),
    /// Decompressed (`request_decompression`), it grew past the route's limit.
    #[error("the client's body decompresses to more than {0} bytes")]
    TooLarge(u64),
    /// The deadline the client set (gRPC's `grpc-timeout`) passed before the upstream
    /// answered: the client chose it, so it is not held against the upstream.
    #[error("the client's deadline (grpc-timeout) passed {0:?} into the attempt")]
    Deadline(Duration),
    /// A gRPC message larger than the route allows (`grpc.max_message_bytes`).
    #[error("a gRPC message of {0} bytes is larger than the route allows")]
    MessageTooLarge(u64),
}

impl ClientBodyError {
    /// 400 for a broken body, 408 for a slow one, 413 for one that decompresses too large
    /// or a gRPC message too large, 504 for a client's deadline.
    pub fn status(&self) -> http::StatusCode {
        match self {
            ClientBodyError::Broken(_) => http::StatusCode::BAD_REQUEST,
            ClientBodyError::TimedOut(_) => http::StatusCode::REQUEST_TIMEOUT,
            ClientBodyError::TooLarge(_) | ClientBodyError::MessageTooLarge(_) => {
                http::StatusCode::PAYLOAD_TOO_LARGE
            }
            ClientBodyError::Deadline(_) => http::StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl BodyWatch {
    /// The body failed; `None` while it is streaming or once it ended well.
    pub fn failure(&self) -> Option<&ClientBodyError> {
        match self.state.load(Ordering::Acquire) {
            FAILED => self.failure.get(),
            _ => None,
        }
    }

    /// Body bytes read from the client so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the client sent its whole body.
    pub fn ended(&self) -> bool {
        self.state.load(Ordering::Acquire) == ENDED
    }

    pub fn fail(&self, e: ClientBodyError) {
        let _ = self.failure.set(e);
        self.state.store(FAILED, Ordering::Release);
    }

    fn end(&self) {
        let _ = self.state.compare_exchange(STREAMING, ENDED, Ordering::AcqRel, Ordering::Acquire);
    }
}

pin_project_lite::pin_project! {
    /// The client's body: fails with [`ClientBodyError::TimedOut`] when it is waited on for
    /// `idle` without a byte arriving, and reports how it went to its [`BodyWatch`].
    pub struct ClientBody<B> {
        #[pin]
        inner: B,
        watch: Arc<BodyWatch>,
        idle: Duration,
        // Armed when a poll finds nothing to read, disarmed by the next frame: time the
        // gateway spends not asking (an upstream not reading) never counts. Made on the
        // first wait: many bodies never wait.
        timer: Option<Pin<Box<Sleep>>>,
        waiting: bool,
    }
}

impl<B> ClientBody<B> {
    pub fn new(inner: B, watch: Arc<BodyWatch>, idle: Duration) -> Self {
        Self { inner, watch, idle, timer: None, waiting: false }
    }
}

impl<B> HttpBody for ClientBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(e) = this.watch.failure() {
            return Poll::Ready(Some(Err(e.clone().into())));
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.waiting = false;
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                this.watch.bytes.fetch_add(n, Ordering::Relaxed);
                if this.inner.is_end_stream() {
                    // The last frame: a sender that knows (HTTP/2 sets END_STREAM on it)
                    // never polls again, so the end is noted now.
                    this.watch.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = ClientBodyError::Broken(e.into().to_string());
                this.watch.fail(e.clone());
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.watch.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = Instant::now() + *this.idle;
                let timer =
                    this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !*this.waiting {
                    *this.waiting = true;
                    timer.as_mut().reset(deadline);
                }
                ready!(timer.as_mut().poll(cx));
                let e = ClientBodyError::TimedOut(*this.idle);
                this.watch.fail(e.clone());
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::echo::ChannelBody;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_client_times_out_but_a_slow_reader_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let watch = Arc::new(BodyWatch::default());
        let mut body = ClientBody::new(ChannelBody(rx), watch.clone(), Duration::from_secs(5));
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        // Nobody reads for a minute: that is not the client's fault.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "a");
        let started = Instant::now();
        let e = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(e.to_string().contains("timed out"), "{e}");
        assert_eq!(watch.failure(), Some(&ClientBodyError::TimedOut(Duration::from_secs(5))));
        assert!(!watch.ended());
    }

    #[tokio::test]
    async fn the_watch_sees_the_end() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let watch = Arc::new(BodyWatch::default());
        let body = ClientBody::new(ChannelBody(rx), watch.clone(), Duration::from_secs(5));
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
        assert!(watch.ended());
        assert_eq!(watch.failure(), None);
    }
}
