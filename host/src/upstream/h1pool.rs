//! HTTP/1.1 to an upstream: the gateway's own pool over hyper's `client::conn::http1`, in
//! place of hyper-util's legacy client, whose pool cost ~9,100 instructions a request (a
//! keyed checkout with waiters, and a task spawned per response to watch its connection
//! become idle again: docs/performance.md).
//!
//! Per endpoint, idle connections wait on a stack, most recently used on top, so that warm
//! connections are reused and cold ones idle out. A request takes the top one, or makes a
//! connection. HTTP/1.1 carries one exchange at a time, so a connection goes back only
//! when its response body has ended and the upstream kept it open ([`Lease`]). A connection
//! the upstream closed while it waited is dropped at checkout; one it closes just as a
//! request is put on it hands the request back unsent, and the request goes to another
//! connection (what hyper-util's retry of canceled requests did). A connection idle for
//! `idle_timeout` is closed by its own task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::client::conn::http1;
use tokio::time::Instant;

use super::connector::Connector;
use super::send::TransportError;
use crate::message::{BoxBody, BoxError};

/// The pool of one upstream.
pub(crate) struct H1 {
    connector: Connector,
    scheme: Scheme,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// By the endpoint's `host:port` as written in the config: hashed whole with foldhash
    /// (`Authority`'s own hash lowercases and feeds SipHash a byte at a time, ~500
    /// instructions a request; the keys come from the config, not from clients).
    endpoints: Mutex<HashMap<Box<str>, Arc<Idle>, foldhash::fast::RandomState>>,
    /// Numbers the connections, so that an idle one can find itself on its stack.
    ids: AtomicU64,
}

/// One endpoint's idle connections.
#[derive(Default)]
struct Idle {
    conns: Mutex<Vec<Parked>>,
}

/// An idle connection, ready for its next request.
struct Parked {
    sender: http1::SendRequest<BoxBody>,
    id: u64,
    local: Option<SocketAddr>,
    since: Instant,
}

/// A connection lent to one exchange: it goes back to its endpoint's stack when dropped
/// (with the response body that holds it) if the body ended and nothing closed it.
pub(crate) struct Lease {
    sender: Option<http1::SendRequest<BoxBody>>,
    idle: Arc<Idle>,
    id: u64,
    local: Option<SocketAddr>,
    /// The response body was read to its end.
    ended: bool,
    /// Cleared when the response proved the connection unusable.
    reusable: AtomicBool,
}

impl Lease {
    pub(crate) fn ended(&mut self) {
        self.ended = true;
    }

    /// The connection's local address, and that it must not be used again.
    pub(crate) fn retire(&self) -> Option<SocketAddr> {
        self.reusable.store(false, Ordering::Relaxed);
        self.local
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else { return };
        if self.ended && self.reusable.load(Ordering::Relaxed) && !sender.is_closed() {
            let (id, local, since) = (self.id, self.local, Instant::now());
            lock(&self.idle.conns).push(Parked { sender, id, local, since });
        }
    }
}

impl H1 {
    pub(crate) fn new(
        connector: Connector,
        tls: bool,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        H1 {
            connector,
            scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
            connect_timeout,
            idle_timeout,
            endpoints: Mutex::default(),
            ids: AtomicU64::new(0),
        }
    }

    /// Closes the connection a response came on: its socket is shut down, so its task
    /// ends at once, and it never goes back to the pool.
    pub(crate) fn close_connection_of(&self, response: &Response<super::ResponseBody>) {
        if let Some(local) = response.body().retire_lease() {
            self.connector.close_local(local);
        }
    }

    /// Sends `req` to `endpoint`.
    pub(crate) async fn request(
        &self,
        mut req: Request<BoxBody>,
        endpoint: &Authority,
    ) -> Result<Response<super::ResponseBody>, TransportError> {
        if !req.headers().contains_key(http::header::HOST)
            && let Ok(host) = http::HeaderValue::from_str(endpoint.as_str())
        {
            req.headers_mut().insert(http::header::HOST, host);
        }
        // HTTP/1.1 sends the path and query (origin form); the endpoint is the connection.
        // A client's origin-form request is already that, and goes as it is; an absolute
        // one (an HTTP/2 client's, or absolute-form) is cut to its path, so the upstream
        // reads the target the router matched and not an authority of the client's.
        if req.uri().authority().is_some() {
            let target = req.uri().path_and_query().cloned();
            *req.uri_mut() = Uri::from(target.unwrap_or_else(|| PathAndQuery::from_static("/")));
        }
        let idle = self.idle_of(endpoint);
        loop {
            let (mut sender, id, local, reused) = match checkout(&idle) {
                Some(p) => (p.sender, p.id, p.local, true),
                None => {
                    let (sender, id, local) = self.connect(endpoint, &idle).await?;
                    (sender, id, local, false)
                }
            };
            // A parked connection's last exchange has ended; its task may not have noticed
            // yet. One that closed meanwhile is dropped for the next.
            if std::future::poll_fn(|cx| sender.poll_ready(cx)).await.is_err() {
                match reused {
                    true => continue,
                    false => {
                        return Err(TransportError::Connect("the new connection closed".into()));
                    }
                }
            }
            return match sender.try_send_request(req).await {
                Ok(response) => {
                    let reusable =
                        AtomicBool::new(response.status() != http::StatusCode::SWITCHING_PROTOCOLS);
                    let idle = idle.clone();
                    let lease =
                        Lease { sender: Some(sender), idle, id, local, ended: false, reusable };
                    Ok(response.map(|body| super::ResponseBody::leased(body, lease)))
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: the upstream closed the kept-alive connection just now.
                    Some(back) if reused => {
                        req = back;
                        continue;
                    }
                    Some(_) => Err(TransportError::Connect(e.into_error().into())),
                    None => Err(TransportError::Broken(e.into_error().into())),
                },
            };
        }
    }

    fn idle_of(&self, endpoint: &Authority) -> Arc<Idle> {
        let mut endpoints = lock(&self.endpoints);
        match endpoints.get(endpoint.as_str()) {
            Some(idle) => idle.clone(),
            None => endpoints.entry(endpoint.as_str().into()).or_default().clone(),
        }
    }

    /// A new connection to `endpoint`, driven by a task of its own until the upstream
    /// closes it, it fails, or it idles out on `idle`'s stack.
    async fn connect(
        &self,
        endpoint: &Authority,
        idle: &Arc<Idle>,
    ) -> Result<(http1::SendRequest<BoxBody>, u64, Option<SocketAddr>), TransportError> {
        let mut connector = self.connector.clone();
        let made = async {
            let uri = format!("{}://{endpoint}/", self.scheme).parse::<Uri>()?;
            std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx))
                .await?;
            let io = tower_service::Service::call(&mut connector, uri).await?;
            let local = io.local_addr();
            let (sender, connection) = http1::handshake::<_, BoxBody>(io).await?;
            Ok::<_, BoxError>((sender, connection, local))
        };
        let (sender, connection, local) =
            match tokio::time::timeout(self.connect_timeout, made).await {
                Ok(Ok(made)) => made,
                Ok(Err(e)) => return Err(TransportError::Connect(e)),
                Err(_) => {
                    let msg = format!("no connection within {:?}", self.connect_timeout);
                    return Err(TransportError::Connect(msg.into()));
                }
            };
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (idle, idle_timeout) = (idle.clone(), self.idle_timeout);
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection.with_upgrades());
            let mut wake = Instant::now() + idle_timeout;
            loop {
                tokio::select! {
                    ended = &mut connection => {
                        if let Err(e) = ended {
                            tracing::debug!("upstream connection ended: {e}");
                        }
                        return;
                    }
                    () = tokio::time::sleep_until(wake) => {
                        // Parked for the whole timeout: taken off the stack, so that the
                        // connection ends once its sender is gone. Parked for less: look
                        // again when it would be; in use: a timeout later.
                        let mut conns = lock(&idle.conns);
                        let now = Instant::now();
                        wake = now + idle_timeout;
                        if let Some(at) = conns.iter().position(|p| p.id == id) {
                            match now.checked_duration_since(conns[at].since + idle_timeout) {
                                Some(_) => drop(conns.remove(at)),
                                None => wake = conns[at].since + idle_timeout,
                            }
                        }
                    }
                }
            }
        });
        Ok((sender, id, local))
    }
}

/// The most recently parked connection that is still open.
fn checkout(idle: &Idle) -> Option<Parked> {
    let mut conns = lock(&idle.conns);
    while let Some(parked) = conns.pop() {
        if !parked.sender.is_closed() {
            return Some(parked);
        }
    }
    None
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
