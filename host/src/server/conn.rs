//! Per-connection bookkeeping: how many connections are open (in all and per client
//! address), and when a connection last moved a byte or had a request in flight.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Open connections, in all and by client address.
#[derive(Default, Clone)]
pub struct Limits {
    inner: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connections closed since memory was last handed back.
    closed: AtomicU64,
    /// Whether its connections count in `sluice_connections_active` (the traffic
    /// listeners'; the admin listener's do not).
    metered: bool,
}

/// One admitted connection; its counts go down when dropped.
pub struct Slot {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Limits {
    /// Limits of a traffic listener, whose connections the metrics count.
    pub fn metered() -> Self {
        Self { inner: Arc::new(Counts { metered: true, ..Counts::default() }) }
    }

    /// A slot for a new connection from `ip`, or `None` when either cap is reached.
    pub fn admit(&self, ip: IpAddr, max: usize, max_per_ip: usize) -> Option<Slot> {
        let c = &self.inner;
        c.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()?;
        let mut by_ip = c.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            drop(by_ip);
            c.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *n += 1;
        if c.metered {
            crate::telemetry::metrics().active_connections.inc();
        }
        Some(Slot { counts: self.inner.clone(), ip })
    }

    /// Open connections now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.inner.total.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("ip", &self.ip).finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.counts.metered {
            crate::telemetry::metrics().active_connections.dec();
        }
        let mut by_ip = self.counts.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
        drop(by_ip);
        let open = self.counts.total.fetch_sub(1, Ordering::AcqRel) - 1;
        let closed = self.counts.closed.fetch_add(1, Ordering::Relaxed) + 1;
        // Every so many closes, and when a burst of them has emptied the listener.
        if closed >= TRIM_EVERY || (open == 0 && closed >= TRIM_AT_EMPTY) {
            self.counts.closed.store(0, Ordering::Relaxed);
            give_back_memory();
        }
    }
}

/// After this many connections closed, freed memory is handed back to the system.
const TRIM_EVERY: u64 = 1024;
/// Or after this many, once no connection is left.
const TRIM_AT_EMPTY: u64 = 64;

/// glibc keeps what a burst of connections freed (their buffers are small allocations
/// spread over many pages) until asked to return it; without this, RSS stays at its peak
/// after thousands of connections close.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
            unsafe { libc::malloc_trim(0) };
        });
    }
}

/// Whether a connection moves bytes, and how many of its requests are in flight.
#[derive(Clone)]
pub struct Activity {
    inner: Arc<Stamps>,
}

#[derive(Default)]
struct Stamps {
    /// Reads and writes that moved bytes: a counter, not a clock, so the request path
    /// reads no time; the watchdog compares it between its checks.
    moved: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests whose response body is still being written.
    responding: AtomicUsize,
    /// Requests received: the watchdog sees a new one arrive by this changing.
    requests: AtomicU64,
    /// The connection speaks HTTP/2: there are no request heads to time. Set by its whole
    /// preface in the first bytes read, or by its first request (a preface that came in
    /// pieces). Never by a prefix of it: an HTTP/1 request with the method `PRI` is not
    /// HTTP/2, and must not escape the head timeout.
    h2: AtomicBool,
}

/// What an HTTP/2 client sends first (RFC 9113 section 3.4); hyper-util serves a
/// connection as HTTP/2 only if all of it comes.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request in flight on the connection.
pub struct Busy(Arc<Stamps>);

/// A [`Busy`] that a request hands on (in its extensions) to what outlives its response:
/// a WebSocket tunnel on one HTTP/2 stream keeps its connection from counting as idle.
#[derive(Clone)]
pub struct Hold {
    _busy: Arc<Busy>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

impl Busy {
    /// The request was answered; its response body has yet to be written. Until the
    /// returned guard is dropped (hyper drops the body once it is written, or the
    /// connection ends), the connection is not waiting for a request head.
    pub fn responding(self) -> Responding {
        self.0.responding.fetch_add(1, Ordering::AcqRel);
        Responding(self.0.clone())
    }
}

/// A response body being written; see [`Busy::responding`].
pub struct Responding(Arc<Stamps>);

impl Drop for Responding {
    fn drop(&mut self) {
        self.0.responding.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its [`Responding`] guard while hyper writes it.
    pub struct Answer<B> {
        #[pin]
        body: B,
        responding: Responding,
    }
}

impl<B> Answer<B> {
    pub fn new(body: B, responding: Responding) -> Self {
        Self { body, responding }
    }
}

impl<B: http_body::Body> http_body::Body for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Stamps {
    fn touch(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// Nothing in flight, and nothing moved since `seen` moves.
    fn quiet_since(&self, seen: u64) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.moved.load(Ordering::Relaxed) == seen
    }

    /// Whether the connection has waited for a request head for `limit`, counting one
    /// more `tick` if it is waiting now: nothing in flight, no response body being
    /// written, and no request arrived since `wait` last looked. Never for HTTP/2.
    fn head_overdue(&self, wait: &mut HeadWait, tick: Duration, limit: Duration) -> bool {
        if self.h2.load(Ordering::Relaxed) {
            return false;
        }
        let requests = self.requests.load(Ordering::Acquire);
        let waiting = requests == wait.requests
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.responding.load(Ordering::Acquire) == 0;
        if !waiting {
            *wait = HeadWait { requests, waited: Duration::ZERO };
            return false;
        }
        wait.waited += tick;
        wait.waited >= limit
    }
}

/// How long the watchdog has seen the connection wait for a request head.
#[derive(Default)]
struct HeadWait {
    /// [`Stamps::requests`] when the wait began.
    requests: u64,
    waited: Duration,
}

/// Why [`Activity::idle`] gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// No byte within `header_timeout`.
    Silent,
    /// An HTTP/1 request head not whole within `header_timeout` (slowloris).
    SlowHead,
    /// No request in flight and no byte either way for `idle_timeout`.
    Idle,
}

impl Activity {
    pub fn new() -> Self {
        Self { inner: Arc::default() }
    }

    /// A request arrived and is being served.
    pub fn busy(&self) -> Busy {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.inner.clone())
    }

    /// The connection serves HTTP/2 (hyper handed it an HTTP/2 request).
    pub fn speaks_h2(&self) {
        self.inner.h2.store(true, Ordering::Relaxed);
    }

    pub fn hold(&self) -> Hold {
        Hold { _busy: Arc::new(self.busy()) }
    }

    /// The stream, counting on this activity every time it moves bytes.
    pub fn watch<S>(&self, stream: S) -> Watched<S> {
        Watched { stream, stamps: self.inner.clone(), first: true }
    }

    /// Resolves once the connection is quiet: no byte within `first`, an HTTP/1 request
    /// head not whole within `first` of when the connection began waiting for it (however
    /// its bytes trickle in), or no request in flight and no byte moved for `idle`.
    /// Checked every quarter of the shorter of the two, so it resolves within 1.25 x the
    /// timeout.
    ///
    /// The head check is hyper's header timeout (`server.header_timeout`) kept here
    /// instead of by hyper: hyper's timer is an entry in tokio's timer wheel, registered
    /// and removed again for every request on a kept-alive connection, and with one set
    /// its HTTP/1 dispatcher does more work per request (together ~1,500 instructions a
    /// request, 2.8% of plain proxying; docs/performance.md). A connection waits for a
    /// head from its start, and again from when each response body has been written.
    pub async fn idle(&self, first: Duration, idle: Duration) -> Quiet {
        let s = &self.inner;
        let tick = first.min(idle) / 4;
        let mut head = HeadWait::default();
        while s.quiet_since(0) {
            if head.waited >= first {
                return Quiet::Silent;
            }
            tokio::time::sleep(tick).await;
            head.waited += tick;
        }
        let mut seen = s.moved.load(Ordering::Relaxed);
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(tick).await;
            if s.head_overdue(&mut head, tick, first) {
                return Quiet::SlowHead;
            }
            if s.quiet_since(seen) {
                quiet += tick;
                if quiet >= idle {
                    return Quiet::Idle;
                }
            } else {
                seen = s.moved.load(Ordering::Relaxed);
                quiet = Duration::ZERO;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream that stamps its [`Activity`] whenever bytes move.
    pub struct Watched<S> {
        #[pin]
        stream: S,
        stamps: Arc<Stamps>,
        // Until the first bytes are read: HTTP/2's whole preface among them means HTTP/2.
        first: bool,
    }
}

impl<S: AsyncRead> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.stream.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.stamps.touch();
            if std::mem::take(this.first) && buf.filled()[before..].starts_with(H2_PREFACE) {
                this.stamps.h2.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<S: AsyncWrite> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.stream.poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.stamps.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.stream.poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.stamps.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

/// HTTP/2 streams on one connection, and how many the client reset before their
/// response: the rapid-reset attack (CVE-2023-44487) opens and cancels streams as fast as it
/// can, so that the gateway starts work it never gets to answer. h2 itself refuses streams
/// reset before they are handed to the gateway; this counts the ones reset after.
#[derive(Clone)]
pub struct Resets {
    inner: Arc<ResetCounts>,
}

struct ResetCounts {
    max: u64,
    streams: AtomicU64,
    reset: AtomicU64,
    flooded: tokio::sync::Notify,
}

/// One stream; dropped before [`Stream::answered`], it was reset by the client.
pub struct Stream {
    counts: Option<Arc<ResetCounts>>,
}

impl Resets {
    pub fn new(max: u32) -> Self {
        Self {
            inner: Arc::new(ResetCounts {
                max: u64::from(max),
                streams: AtomicU64::new(0),
                reset: AtomicU64::new(0),
                flooded: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn stream(&self) -> Stream {
        self.inner.streams.fetch_add(1, Ordering::Relaxed);
        Stream { counts: Some(self.inner.clone()) }
    }

    /// Resolves once the client has reset more than `max` streams and more than half of
    /// all its streams.
    pub async fn flooded(&self) {
        self.inner.flooded.notified().await;
    }
}

impl Stream {
    pub fn answered(mut self) {
        self.counts = None;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let Some(c) = self.counts.take() else { return };
        let reset = c.reset.fetch_add(1, Ordering::Relaxed) + 1;
        if reset > c.max && reset * 2 > c.streams.load(Ordering::Relaxed) {
            c.flooded.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_all_and_per_address_and_free_up_on_drop() {
        let limits = Limits::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = limits.admit(a, 3, 2).unwrap();
        let _a2 = limits.admit(a, 3, 2).unwrap();
        assert!(limits.admit(a, 3, 2).is_none(), "per address");
        let _b1 = limits.admit(b, 3, 2).unwrap();
        assert!(limits.admit(b, 3, 2).is_none(), "in all");
        assert_eq!(limits.open(), 3);
        drop(a1);
        assert!(limits.admit(a, 3, 2).is_some());
    }

    use tokio::time::Instant;

    #[tokio::test]
    async fn a_connection_that_resets_most_of_its_streams_is_flooded() {
        let resets = Resets::new(3);
        // Many answered streams: resets past the count alone do not trip it.
        for _ in 0..10 {
            resets.stream().answered();
        }
        for _ in 0..5 {
            drop(resets.stream());
        }
        let flooded = resets.flooded();
        tokio::pin!(flooded);
        assert!(futures_poll(&mut flooded).is_none(), "5 of 15 reset");
        for _ in 0..6 {
            drop(resets.stream());
        }
        assert!(futures_poll(&mut flooded).is_some(), "11 of 21 reset");
    }

    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        match std::pin::Pin::new(f).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    /// Bytes keep coming (a header line every 100 ms) while `watch` runs.
    async fn trickling<F: std::future::Future<Output = Quiet>>(
        activity: &Activity,
        watch: F,
    ) -> Quiet {
        tokio::pin!(watch);
        loop {
            tokio::select! {
                quiet = &mut watch => return quiet,
                () = tokio::time::sleep(Duration::from_millis(100)) => activity.inner.touch(),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_in_is_cut_at_the_header_timeout_on_new_and_kept_connections() {
        let activity = Activity::new();
        activity.inner.touch();
        let started = Instant::now();
        let watch = activity.idle(Duration::from_secs(2), Duration::from_secs(60));
        assert_eq!(trickling(&activity, watch).await, Quiet::SlowHead);
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(2) && took <= Duration::from_millis(2500), "{took:?}");

        // A kept-alive connection: a request served, its body written, then a slow head.
        let activity = Activity::new();
        activity.inner.touch();
        let watch = activity.idle(Duration::from_secs(2), Duration::from_secs(60));
        let served = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let busy = activity.busy();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let responding = busy.responding();
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(responding);
            Instant::now()
        };
        let (quiet, written) = tokio::join!(trickling(&activity, watch), served);
        assert_eq!(quiet, Quiet::SlowHead);
        let took = written.elapsed();
        assert!(took >= Duration::from_secs(2) && took <= Duration::from_millis(2500), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_body_still_being_written_is_not_a_slow_head() {
        let activity = Activity::new();
        activity.inner.touch();
        let responding = activity.busy().responding();
        let started = Instant::now();
        // The body stalls (nothing moves): only the idle timeout ends it.
        let quiet = activity.idle(Duration::from_secs(1), Duration::from_secs(5)).await;
        assert_eq!(quiet, Quiet::Idle);
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(5) && took <= Duration::from_millis(6500), "{took:?}");
        drop(responding);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_request_with_the_method_pri_is_not_http2() {
        let activity = Activity::new();
        let mut stream = activity.watch(std::io::Cursor::new(b"PRI / HTTP/1.1\r\n".to_vec()));
        let mut buf = [0; 64];
        tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await.unwrap();
        let watch = activity.idle(Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(trickling(&activity, watch).await, Quiet::SlowHead);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_has_no_heads_to_time() {
        let activity = Activity::new();
        let mut stream = activity.watch(std::io::Cursor::new(H2_PREFACE.to_vec()));
        let mut buf = [0; 64];
        tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await.unwrap();
        // Past the header timeout with no request: an HTTP/1 connection would be cut at
        // 1 s, this one only once idle.
        let started = Instant::now();
        let quiet = activity.idle(Duration::from_secs(1), Duration::from_secs(5)).await;
        assert_eq!(quiet, Quiet::Idle);
        assert!(started.elapsed() >= Duration::from_secs(5), "{:?}", started.elapsed());

        // A preface read in pieces is not recognised by its bytes; the connection's first
        // HTTP/2 request tells it instead.
        let activity = Activity::new();
        let mut stream = activity.watch(std::io::Cursor::new(H2_PREFACE[..4].to_vec()));
        tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await.unwrap();
        assert!(!activity.inner.h2.load(Ordering::Relaxed));
        activity.speaks_h2();
        let quiet = activity.idle(Duration::from_secs(1), Duration::from_secs(5)).await;
        assert_eq!(quiet, Quiet::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_quiet_after_the_first_byte_timeout() {
        let activity = Activity::new();
        let started = Instant::now();
        let quiet = activity.idle(Duration::from_secs(10), Duration::from_secs(60)).await;
        assert_eq!(quiet, Quiet::Silent);
        assert_eq!(started.elapsed().as_secs(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_the_connection() {
        let activity = Activity::new();
        activity.inner.touch();
        let busy = activity.busy();
        let started = Instant::now();
        let watcher = activity.clone();
        let idle = tokio::spawn(async move {
            watcher.idle(Duration::from_secs(1), Duration::from_secs(5)).await
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished());
        // Answered, but its body stalls: the idle timeout, not the header one, ends it.
        let responding = busy.responding();
        assert_eq!(idle.await.unwrap(), Quiet::Idle);
        let waited = started.elapsed().as_secs();
        assert!((35..=37).contains(&waited), "{waited}");
        drop(responding);
    }
}
