//! The listener: accepts connections (HTTP/1.1 and h2c), serves each request from the
//! current gateway snapshot, and shuts down gracefully: stop accepting, let in-flight
//! requests finish (up to `shutdown_timeout`), then return.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::proxy;

/// The live gateway: swapped whole on reload, read per request without locking.
pub type Shared = Arc<ArcSwap<Gateway>>;

/// Serves `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    gateway: Shared,
    shutdown: impl Future<Output = ()>,
    shutdown_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        // Written once per connection: every request on it forwards the same address.
        let client_header = crate::message::ip_header(peer.ip());
        let service = service_fn(move |req| {
            let gw = gateway.load_full();
            let client_header = client_header.clone();
            async move { Ok::<_, Infallible>(proxy::handle(gw, req, peer.ip(), client_header).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended with an error: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(shutdown_timeout) => {
            tracing::warn!("shutdown timeout ({shutdown_timeout:?}) reached; closing remaining connections")
        }
    }
}

/// A gateway serving on a bound socket, as started by [`crate::start`].
pub struct Running {
    pub addr: SocketAddr,
    pub gateway: Shared,
    /// Applies config changes to this gateway.
    pub reloader: Arc<crate::Reloader>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub(crate) fn new(
        addr: SocketAddr,
        gateway: Shared,
        reloader: Arc<crate::Reloader>,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self { addr, gateway, reloader, stop, task }
    }

    /// Stops accepting and waits for in-flight requests to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
