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
//! connection (what hyper-util's retry of canceled requests did).
//!
//! A connection has no task of its own: the task using it drives it ([`Link`]), as Pingora
//! does. The request's task writes the request and reads the response head; the response
//! body, polled by the client's connection task, reads the rest. A request thus wakes one
//! task, not two, and its answer comes back without a hop between tasks (five task polls a
//! request became two: docs/performance.md). A parked connection is driven by nobody; it
//! is looked at when taken, and one parked for `idle_timeout` is closed by its endpoint's
//! sweeper, a task that runs only while connections are parked.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
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
}

/// One endpoint's idle connections.
struct Idle {
    stack: Mutex<Stack>,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Stack {
    /// Oldest first: a connection is pushed when parked and popped from the top.
    parked: Vec<Parked>,
    /// A sweeper task is running for this stack.
    sweeping: bool,
    /// The sweeper's waker, once it has run: parked connections wake it.
    sweeper: Option<Waker>,
}

/// An idle connection, ready for its next request.
struct Parked {
    link: Link,
    local: Option<SocketAddr>,
    since: Instant,
}

/// The future that reads and writes one connection (hyper's, with upgrades). It is boxed:
/// hyper's type for it cannot be named, and the pool moves connections by pointer.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One connection: the handle requests go in by, and its driver, polled by the task that
/// uses the connection.
struct Link {
    sender: http1::SendRequest<BoxBody>,
    /// `None` once the connection has ended (or, upgraded, went to a task of its own).
    driver: Option<Driver>,
    /// What the driver is polled with: a waker of the connection's own, passing wakes on
    /// to the task that drove it last.
    gate: Arc<Gate>,
    waker: Waker,
}

/// A connection's waker. Everything hyper registers while the connection is driven (its
/// socket, its request channel, a response body's channel) names this, not a task, so
/// that a connection parked by one task and taken by another wakes only the one using it.
/// While that task takes what the driving delivered, hyper would wake the connection's side
/// to say there is room again; the task drives it anyway when it next looks, so those wakes
/// are held back.
#[derive(Default)]
struct Gate {
    task: atomic_waker::AtomicWaker,
    quiet: AtomicBool,
}

impl Gate {
    /// Runs `f`, which takes what the driving delivered (or hands the connection a
    /// request), with the connection's wakes held back.
    fn quietly<R>(&self, f: impl FnOnce() -> R) -> R {
        self.quiet.store(true, Ordering::Relaxed);
        let r = f();
        self.quiet.store(false, Ordering::Relaxed);
        r
    }
}

impl std::task::Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.quiet.load(Ordering::Relaxed) {
            self.task.wake();
        }
    }
}

impl Link {
    fn new(sender: http1::SendRequest<BoxBody>, driver: Driver) -> Self {
        let gate = Arc::new(Gate::default());
        let waker = Waker::from(gate.clone());
        Link { sender, driver: Some(driver), gate, waker }
    }

    /// Drives the connection's reads and writes for the task of `cx`; false once it has
    /// ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = &mut self.driver else { return false };
        self.gate.task.register(cx.waker());
        match driver.as_mut().poll(&mut Context::from_waker(&self.waker)) {
            Poll::Pending => true,
            Poll::Ready(ended) => {
                if let Err(e) = ended {
                    tracing::debug!("upstream connection ended: {e}");
                }
                self.driver = None;
                false
            }
        }
    }

    /// Ready for a request: the last drive left hyper asking for one.
    fn ready(&mut self) -> bool {
        let cx = &mut Context::from_waker(Waker::noop());
        matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

/// A connection lent to one exchange: the response body drives it, and it goes back to
/// its endpoint's stack when dropped (with that body) if the body ended and nothing
/// closed it.
pub(crate) struct Lease {
    link: Option<Link>,
    idle: Arc<Idle>,
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

    /// Polls the response body over this connection: `poll` looks at the body with the
    /// context it is given. Whatever the last drive read is taken first (a short
    /// response came whole with its head); if nothing is there, the connection is driven
    /// for the task of `cx`, and the body looked at again. The body is looked at without
    /// a waker while the connection is driven here, since only the driving fills it.
    pub(crate) fn poll_body<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let Some(link) = &mut self.link else { return poll(cx) };
        let unwatched = &mut Context::from_waker(Waker::noop());
        match link.gate.quietly(|| poll(unwatched)) {
            Poll::Pending if link.drive(cx) => link.gate.quietly(|| poll(unwatched)),
            Poll::Pending => poll(cx),
            ready => ready,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(link) = self.link.take() else { return };
        if self.ended && self.reusable.load(Ordering::Relaxed) && link.driver.is_some() {
            // Parked, the connection wakes nobody: this task may be gone when it stirs.
            drop(link.gate.task.take());
            park(&self.idle, Parked { link, local: self.local, since: Instant::now() });
        }
    }
}

/// Puts a connection on its endpoint's stack, and starts the stack's sweeper if none
/// runs. Outside a runtime (at shutdown) the connection is closed instead.
fn park(idle: &Arc<Idle>, parked: Parked) {
    let mut stack = lock(&idle.stack);
    if !stack.sweeping {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        stack.sweeping = true;
        runtime.spawn(sweep(Arc::downgrade(idle)));
    }
    // The task that used it may be gone when the connection next stirs: the sweeper is
    // woken instead (or nobody, before the sweeper's first run, which drives it anyway).
    match &stack.sweeper {
        Some(sweeper) => parked.link.gate.task.register(sweeper),
        None => drop(parked.link.gate.task.take()),
    }
    stack.parked.push(parked);
}

/// Watches a stack's parked connections: one the upstream closes (or writes to out of
/// turn) wakes this task, which drives them all and drops those that ended, as a
/// connection's own task would have; one parked for `idle_timeout` is closed. It ends when
/// no connection is left (or the pool is gone).
async fn sweep(idle: Weak<Idle>) {
    let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    std::future::poll_fn(|cx| {
        let Some(idle) = idle.upgrade() else { return Poll::Ready(()) };
        let timeout = idle.idle_timeout;
        let mut stack = lock(&idle.stack);
        loop {
            let now = Instant::now();
            let stack = &mut *stack;
            stack.parked.retain_mut(|p| p.since + timeout > now && p.link.drive(cx));
            let Some(oldest) = stack.parked.first() else {
                stack.sweeping = false;
                stack.sweeper = None;
                return Poll::Ready(());
            };
            timer.as_mut().reset(oldest.since + timeout);
            if timer.as_mut().poll(cx).is_pending() {
                if !stack.sweeper.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    stack.sweeper = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
        }
    })
    .await;
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
        }
    }

    /// Closes the connection a response came on: its socket is shut down, so it ends at
    /// its next drive, and it never goes back to the pool.
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
            let (mut link, local, reused) = match checkout(&idle) {
                Some(p) => (p.link, p.local, true),
                None => {
                    let (link, local) = self.connect(endpoint).await?;
                    (link, local, false)
                }
            };
            // A parked connection was left asking for its next request (or is driven
            // once to ask). One the upstream closed while parked shows that at its first
            // drive, and hands the request back unsent.
            if reused && !link.ready() {
                let unwatched = &mut Context::from_waker(Waker::noop());
                if !link.drive(unwatched) || !link.ready() {
                    continue;
                }
            }
            let sent = link.gate.quietly(|| link.sender.try_send_request(req));
            let mut sent = std::pin::pin!(sent);
            // The request goes out, and the response head comes in, as this task drives
            // the connection. The answer is looked for without a waker: only the driving
            // delivers it.
            let answer = std::future::poll_fn(|cx| {
                let open = link.drive(cx);
                let unwatched = &mut Context::from_waker(Waker::noop());
                match link.gate.quietly(|| sent.as_mut().poll(unwatched)) {
                    Poll::Pending if open => Poll::Pending,
                    Poll::Pending => Poll::Ready(None),
                    Poll::Ready(answer) => Poll::Ready(Some(answer)),
                }
            })
            .await;
            return match answer {
                Some(Ok(response)) => {
                    let upgraded = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let link = match upgraded {
                        // The connection becomes the tunnel's: hyper hands its socket to
                        // the upgrade when its driver ends, which a task of its own sees to.
                        true => {
                            tokio::spawn(std::future::poll_fn(move |cx| match link.drive(cx) {
                                true => Poll::Pending,
                                false => Poll::Ready(()),
                            }));
                            None
                        }
                        false => Some(link),
                    };
                    let reusable = AtomicBool::new(!upgraded);
                    let lease = Lease { link, idle, local, ended: false, reusable };
                    Ok(response.map(|body| super::ResponseBody::leased(body, lease)))
                }
                Some(Err(mut e)) => match e.take_message() {
                    // Never sent: the upstream closed the kept-alive connection just now.
                    Some(back) if reused => {
                        req = back;
                        continue;
                    }
                    Some(_) => Err(TransportError::Connect(e.into_error().into())),
                    None => Err(TransportError::Broken(e.into_error().into())),
                },
                None => {
                    Err(TransportError::Broken("the connection ended without an answer".into()))
                }
            };
        }
    }

    fn idle_of(&self, endpoint: &Authority) -> Arc<Idle> {
        let mut endpoints = lock(&self.endpoints);
        match endpoints.get(endpoint.as_str()) {
            Some(idle) => idle.clone(),
            None => {
                let idle =
                    Arc::new(Idle { stack: Mutex::default(), idle_timeout: self.idle_timeout });
                endpoints.insert(endpoint.as_str().into(), idle.clone());
                idle
            }
        }
    }

    /// A new connection to `endpoint`.
    async fn connect(
        &self,
        endpoint: &Authority,
    ) -> Result<(Link, Option<SocketAddr>), TransportError> {
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
        match tokio::time::timeout(self.connect_timeout, made).await {
            Ok(Ok((sender, connection, local))) => {
                Ok((Link::new(sender, Box::pin(connection.with_upgrades())), local))
            }
            Ok(Err(e)) => Err(TransportError::Connect(e)),
            Err(_) => {
                let msg = format!("no connection within {:?}", self.connect_timeout);
                Err(TransportError::Connect(msg.into()))
            }
        }
    }
}

/// The most recently parked connection.
fn checkout(idle: &Idle) -> Option<Parked> {
    lock(&idle.stack).parked.pop()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
