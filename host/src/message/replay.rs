//! Request bodies that a retry can send again.
//!
//! An empty or buffered body is replayed from memory. A streamed body is lent to one
//! attempt through a shared slot; if that attempt failed before reading any of it (a
//! connect failure), the next attempt takes it back. Once read, it cannot be sent again.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::{Body, BoxBody, BoxError};

pub enum Replay {
    Bytes(Bytes),
    Lent { slot: Arc<Slot> },
    Gone,
}

pub struct Slot {
    body: Mutex<Option<BoxBody>>,
    read: AtomicBool,
}

impl Replay {
    pub fn new(body: Body) -> Self {
        match body {
            Body::Full(bytes) => Replay::Bytes(bytes),
            Body::Stream { body, .. } if body.is_end_stream() => Replay::Bytes(Bytes::new()),
            // The request path never sends a broken body; if it did, nothing is sent.
            Body::Broken(_) => Replay::Gone,
            Body::Stream { body, .. } => Replay::Lent {
                slot: Arc::new(Slot { body: Mutex::new(Some(body)), read: AtomicBool::new(false) }),
            },
        }
    }

    /// The body for the next attempt, if it can still be sent.
    pub fn for_attempt(&mut self) -> Option<BoxBody> {
        match self {
            Replay::Bytes(b) => Some(
                http_body_util::Full::new(b.clone()).map_err(|never| match never {}).boxed_unsync(),
            ),
            Replay::Lent { slot } if !slot.read.load(Ordering::Acquire) => {
                // The previous attempt's handle may still be alive inside the client; a
                // fresh slot makes sure only the new attempt can read from now on.
                let body = slot.body.lock().unwrap_or_else(|p| p.into_inner()).take()?;
                let fresh =
                    Arc::new(Slot { body: Mutex::new(Some(body)), read: AtomicBool::new(false) });
                *slot = fresh.clone();
                Some(LentBody { slot: fresh }.boxed_unsync())
            }
            Replay::Lent { .. } | Replay::Gone => {
                *self = Replay::Gone;
                None
            }
        }
    }

    /// Can a further attempt send this body?
    pub fn replayable(&self) -> bool {
        match self {
            Replay::Bytes(_) => true,
            Replay::Lent { slot } => !slot.read.load(Ordering::Acquire),
            Replay::Gone => false,
        }
    }
}

struct LentBody {
    slot: Arc<Slot>,
}

impl HttpBody for LentBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.slot.read.store(true, Ordering::Release);
        let mut body = self.slot.body.lock().unwrap_or_else(|p| p.into_inner());
        match body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let body = self.slot.body.lock().unwrap_or_else(|p| p.into_inner());
        body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let body = self.slot.body.lock().unwrap_or_else(|p| p.into_inner());
        body.as_ref().map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(data: &'static [u8]) -> Body {
        // A stream body that does not know it is short, like a chunked upload.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(data)).await;
        });
        Body::stream(crate::echo::ChannelBody(rx))
    }

    #[tokio::test]
    async fn an_unread_stream_is_taken_back_and_a_read_one_is_not() {
        let mut r = Replay::new(streamed(b"payload"));
        let first = r.for_attempt().unwrap();
        drop(first); // a connect failure: never polled
        assert!(r.replayable());
        let second = r.for_attempt().unwrap();
        assert_eq!(second.collect().await.unwrap().to_bytes().as_ref(), b"payload");
        assert!(!r.replayable());
        assert!(r.for_attempt().is_none());
    }

    #[tokio::test]
    async fn buffered_bodies_replay_from_memory() {
        let mut r = Replay::new(Body::Full(Bytes::from_static(b"abc")));
        for _ in 0..3 {
            assert_eq!(
                r.for_attempt().unwrap().collect().await.unwrap().to_bytes().as_ref(),
                b"abc"
            );
        }
    }
}
