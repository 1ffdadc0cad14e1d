//! Per-connection bookkeeping: how many connections are open (in all and per client
//! address), and when a connection last moved a byte or had a request in flight.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

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
    /// The HTTP/1 request head hyper is waiting for, if it is waiting (see [`HeadTimer`]).
    head: Mutex<Option<HeadWait>>,
    /// Numbers the head timers, so that one only ever sees its own wait.
    heads: AtomicU64,
}

/// A request head being waited for: by when it must be complete, and the connection's
/// task to wake once that has passed.
struct HeadWait {
    timer: u64,
    deadline: Instant,
    waker: Waker,
    expired: bool,
}

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

impl Stamps {
    fn touch(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// Nothing in flight, and nothing moved since `seen` moves.
    fn quiet_since(&self, seen: u64) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.moved.load(Ordering::Relaxed) == seen
    }

    fn head(&self) -> std::sync::MutexGuard<'_, Option<HeadWait>> {
        self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the connection if the head it waits for is overdue at `now`.
    fn check_head(&self, now: Instant) {
        if let Some(wait) = self.head().as_mut().filter(|w| !w.expired && now >= w.deadline) {
            wait.expired = true;
            wait.waker.wake_by_ref();
        }
    }
}

impl Activity {
    pub fn new() -> Self {
        Self { inner: Arc::default() }
    }

    pub fn busy(&self) -> Busy {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.inner.clone())
    }

    pub fn hold(&self) -> Hold {
        Hold { _busy: Arc::new(self.busy()) }
    }

    /// The stream, counting on this activity every time it moves bytes.
    pub fn watch<S>(&self, stream: S) -> Watched<S> {
        Watched { stream, stamps: self.inner.clone() }
    }

    /// Resolves once the connection is quiet: no byte within `first`, or later no request
    /// in flight and no byte moved for `idle`. Checked every quarter of the shorter of
    /// the two, so it resolves within 1.25 x the timeout.
    ///
    /// Each check also fires an overdue [`HeadTimer`], which hyper then reports as a header
    /// timeout.
    pub async fn idle(&self, first: Duration, idle: Duration) {
        let s = &self.inner;
        let tick = first.min(idle) / 4;
        let mut waited = Duration::ZERO;
        while s.quiet_since(0) {
            if waited >= first {
                return;
            }
            tokio::time::sleep(tick).await;
            s.check_head(Instant::now());
            waited += tick;
        }
        let mut seen = s.moved.load(Ordering::Relaxed);
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(tick).await;
            s.check_head(Instant::now());
            if s.quiet_since(seen) {
                quiet += tick;
                if quiet >= idle {
                    return;
                }
            } else {
                seen = s.moved.load(Ordering::Relaxed);
                quiet = Duration::ZERO;
            }
        }
    }
}

/// hyper's HTTP/1 header timeout (`server.header_timeout`: a request head must be whole
/// within it, however its bytes trickle in) kept by the connection's watchdog
/// ([`Activity::idle`]) instead of a timer of tokio's per request.
///
/// hyper starts the header timer each time it begins reading a request head and drops it
/// once the head is parsed. With tokio's timer that is an entry registered in the timer
/// wheel and removed again for every request on a kept-alive connection (~1,500
/// instructions a request, 2.8% of plain proxying, docs/performance.md). Here the timer
/// is a deadline and a waker left with the connection, and the watchdog, which wakes
/// every quarter of the shorter of `header_timeout` and `idle_timeout` anyway, fires it
/// once it has passed: a head is cut within 1.25 x `header_timeout` instead of exactly
/// at it, as the idle checks are.
#[derive(Clone)]
pub struct HeadTimer {
    stamps: Arc<Stamps>,
}

impl Activity {
    /// The header timer for hyper's HTTP/1 connection; it only fires while
    /// [`Activity::idle`] runs.
    pub fn head_timer(&self) -> HeadTimer {
        HeadTimer { stamps: self.inner.clone() }
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let timer = self.stamps.heads.fetch_add(1, Ordering::Relaxed);
        Box::pin(HeadSleep { stamps: self.stamps.clone(), timer, deadline })
    }
}

/// One wait for a request head; see [`HeadTimer`].
struct HeadSleep {
    stamps: Arc<Stamps>,
    timer: u64,
    deadline: Instant,
}

impl hyper::rt::Sleep for HeadSleep {}

impl std::future::Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut head = self.stamps.head();
        match head.as_mut() {
            Some(wait) if wait.timer == self.timer => {
                if wait.expired {
                    return Poll::Ready(());
                }
                wait.waker.clone_from(cx.waker());
            }
            _ => {
                *head = Some(HeadWait {
                    timer: self.timer,
                    deadline: self.deadline,
                    waker: cx.waker().clone(),
                    expired: false,
                })
            }
        }
        Poll::Pending
    }
}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        let mut head = self.stamps.head();
        if head.as_ref().is_some_and(|w| w.timer == self.timer) {
            *head = None;
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream that stamps its [`Activity`] whenever bytes move.
    pub struct Watched<S> {
        #[pin]
        stream: S,
        stamps: Arc<Stamps>,
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

    #[test]
    fn a_head_timer_fires_once_past_its_deadline_and_a_dropped_one_leaves_nothing() {
        use hyper::rt::Timer;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let activity = Activity::new();
        let timer = activity.head_timer();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut sleep = timer.sleep_until(deadline);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        activity.inner.check_head(deadline - Duration::from_millis(1));
        assert_eq!(woken.0.load(Ordering::Relaxed), 0, "before its deadline");
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        activity.inner.check_head(deadline);
        activity.inner.check_head(deadline + Duration::from_secs(1));
        assert_eq!(woken.0.load(Ordering::Relaxed), 1, "woken once");
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
        // The next head's wait starts afresh; dropping the old one does not end it.
        let mut next = timer.sleep(Duration::from_secs(5));
        drop(sleep);
        assert!(next.as_mut().poll(&mut cx).is_pending());
        activity.inner.check_head(deadline);
        assert!(next.as_mut().poll(&mut cx).is_pending(), "its own deadline is later");
        drop(next);
        assert!(activity.inner.head().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_quiet_after_the_first_byte_timeout() {
        let activity = Activity::new();
        let started = Instant::now();
        activity.idle(Duration::from_secs(10), Duration::from_secs(60)).await;
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
            watcher.idle(Duration::from_secs(1), Duration::from_secs(5)).await;
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished());
        drop(busy);
        idle.await.unwrap();
        let waited = started.elapsed().as_secs();
        assert!((35..=40).contains(&waited), "{waited}");
    }
}
