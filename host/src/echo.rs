//! A small upstream that echoes what it received, for the demo and the tests.
//!
//! - `GET /bytes/{n}` streams `n` bytes of a repeating `a..z` pattern in 64 KiB chunks.
//! - `GET /delay/{ms}` answers like any other path, after `ms` milliseconds.
//! - Any other request gets a JSON description: method, path, query, headers, and the
//!   length and SHA-256 of the body (read as a stream, never buffered).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::message::BoxBody;

/// Serves the echo upstream on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = conn.serve_connection(TokioIo::new(stream), service_fn(respond)).await;
        });
    }
}

/// Binds `addr` and serves the echo upstream in a background task; returns where.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(local)
}

async fn respond(req: http::Request<Incoming>) -> Result<http::Response<BoxBody>, Infallible> {
    if let Some(n) = req.uri().path().strip_prefix("/bytes/").and_then(|n| n.parse().ok()) {
        return Ok(pattern_response(n));
    }
    if let Some(ms) = req.uri().path().strip_prefix("/delay/").and_then(|n| n.parse().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            hasher.update(&data);
        }
    }
    let mut headers = BTreeMap::<String, String>::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes());
        headers
            .entry(k.as_str().to_owned())
            .and_modify(|e| *e = format!("{e}, {v}"))
            .or_insert(v.into());
    }
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": len,
        "body_sha256": format!("{:x}", hasher.finalize()),
    });
    let mut text = serde_json::to_string_pretty(&echo).expect("json values serialize");
    text.push('\n');
    let mut resp = http::Response::new(full(Bytes::from(text)));
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// The byte at offset `i` of a `/bytes/{n}` response.
pub fn pattern_byte(i: u64) -> u8 {
    b'a' + (i % 26) as u8
}

fn pattern_response(n: u64) -> http::Response<BoxBody> {
    const CHUNK: u64 = 64 * 1024;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut sent = 0;
        while sent < n {
            let len = CHUNK.min(n - sent);
            let chunk: Vec<u8> = (sent..sent + len).map(pattern_byte).collect();
            if tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
            sent += len;
        }
    });
    http::Response::new(ChannelBody(rx).boxed_unsync())
}

/// A body fed chunk by chunk through a channel, with no declared length, so it is streamed
/// (chunked) end to end. Used by the echo server and by tests that send large bodies.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = crate::message::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

fn full(b: Bytes) -> BoxBody {
    http_body_util::Full::new(b).map_err(|never| match never {}).boxed_unsync()
}
