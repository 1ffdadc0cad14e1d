//! An upstream that records exactly what reached it: every request head as it arrived, and
//! which requests arrived whole (body and all). It answers 200 `ok` once a body is whole.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    pub headers: http::HeaderMap,
    /// `Some` once the whole body arrived; `None` if it broke off.
    pub body: Option<Bytes>,
}

#[derive(Clone, Default)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    /// Starts recording on a free port of 127.0.0.1.
    pub async fn start() -> (Recorder, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let rec = Recorder::default();
        let seen = rec.seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let index = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(Seen {
                                    method: parts.method.to_string(),
                                    target: parts.uri.to_string(),
                                    headers: parts.headers.clone(),
                                    body: None,
                                });
                                seen.len() - 1
                            };
                            let body = body.collect().await.map(|b| b.to_bytes());
                            if let Ok(bytes) = &body {
                                seen.lock().unwrap()[index].body = Some(bytes.clone());
                            }
                            let status = if body.is_ok() { 200 } else { 400 };
                            let resp = http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (rec, addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests whose whole body arrived.
    pub fn whole(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.body.is_some()).collect()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// Sends `raw` bytes on a new connection from `from` (an address on 127.0.0.0/8), then
/// reads until the gateway closes or `wait` passes; returns what came back.
pub async fn raw_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    raw: &[u8],
    half_close: bool,
    wait: std::time::Duration,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = socket.connect(addr).await.expect("connect");
    s.write_all(raw).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// [`raw_from`] 127.0.0.1, with a 10 s bound.
pub async fn raw(addr: SocketAddr, raw: &[u8], half_close: bool) -> String {
    let local = std::net::Ipv4Addr::LOCALHOST.into();
    raw_from(local, addr, raw, half_close, std::time::Duration::from_secs(10)).await
}

/// The status code of a raw HTTP/1.1 response, or 0 when there was none.
pub fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}
