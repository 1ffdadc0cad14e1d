//! A test upstream that can be told to misbehave: answer with a status, hang, refuse
//! connections (killed), and come back on the same port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the backend's name as body and `x-endpoint` header.
    Ok,
    /// Every request (health checks included) gets this status.
    Status(u16),
    /// Requests wait this long before a 200; health checks too.
    Hang(Duration),
}

pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
    /// The accept loop; it owns the connections, so aborting it resets them all.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let mut b = Backend {
            name,
            addr,
            mode: Arc::new(Mutex::new(Mode::Ok)),
            hits: Arc::new(AtomicUsize::new(0)),
            task: None,
        };
        b.serve(listener);
        b
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (mode, hits, name) = (self.mode.clone(), self.hits.clone(), self.name);
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (mode, hits) = (mode.clone(), hits.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (mode, hits) = (mode.clone(), hits.clone());
                        async move {
                            let is_check = req.uri().path() == "/health";
                            if !is_check {
                                hits.fetch_add(1, Ordering::SeqCst);
                            }
                            let now = *mode.lock().unwrap();
                            let status = match now {
                                Mode::Ok => 200,
                                Mode::Status(s) => s,
                                Mode::Hang(d) => {
                                    tokio::time::sleep(d).await;
                                    200
                                }
                            };
                            let resp = http::Response::builder()
                                .status(status)
                                .header("x-endpoint", name)
                                .body(Full::new(Bytes::from(name)))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }));
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Requests served (health checks not counted).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and resets every open connection: new connections are refused.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn revive(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("rebind the port");
        self.serve(listener);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
