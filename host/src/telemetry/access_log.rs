//! The access log: one line per request, formatted on the request's task and written by a
//! thread of its own, so a slow disk never slows a request.
//!
//! Lines are appended to a shared buffer (an uncontended lock and a copy: no allocation,
//! no wake-up per line); the writer thread swaps it for an empty one every
//! [`FLUSH_EVERY`], or sooner once [`WAKE_AT`] bytes wait, and writes the block. When
//! `buffer_lines` lines (or [`MAX_PENDING_BYTES`]) already wait (the writer fell behind), a
//! line is dropped and counted in `sluice_access_log_dropped_total{reason="full"}`; a line
//! the sink refuses (a full disk) counts in `{reason="error"}`. Requests never wait for the
//! log.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::config::{AccessLogFormat, AccessLogSettings, LogSink, RotateEvery};
use crate::telemetry::metrics;
use crate::throttle::{Throttle, Verdict, suppressed_note};

/// The longest a line waits before the writer takes it.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Waiting bytes that wake the writer before [`FLUSH_EVERY`].
const WAKE_AT: usize = 64 * 1024;
/// The most bytes that wait for the writer, whatever `buffer_lines` says: clients choose
/// how long their paths and user agents are, so lines are counted in bytes too.
const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;
/// The largest block written at once (smaller with a small `max_size_kib`, so a file
/// rotates close to its limit: the rotation is checked before each write).
const MAX_CHUNK: usize = 16 * 1024;

pub struct AccessLog {
    pub settings: AccessLogSettings,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    text: Vec<u8>,
    lines: usize,
    closed: bool,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("settings", &self.settings).finish()
    }
}

impl AccessLog {
    /// Opens the sink (a file is created if missing) and starts the writer thread, which
    /// writes what is left and ends once this is dropped.
    pub fn start(settings: AccessLogSettings) -> std::io::Result<Self> {
        let (sink, chunk): (Box<dyn Write + Send>, usize) = match &settings.sink {
            LogSink::Stdout => (Box::new(std::io::stdout()), MAX_CHUNK),
            LogSink::File { path, max_bytes, every, keep } => {
                let mut condition = rolling_file::RollingConditionBasic::new();
                match every {
                    Some(RotateEvery::Hour) => condition = condition.hourly(),
                    Some(RotateEvery::Day) => condition = condition.daily(),
                    None => {}
                }
                if let Some(max) = max_bytes {
                    condition = condition.max_size(*max);
                }
                let chunk = max_bytes.map_or(MAX_CHUNK, |m| (m as usize / 8).clamp(1, MAX_CHUNK));
                let file = rolling_file::BasicRollingFileAppender::new(path, condition, *keep)?;
                (Box::new(file), chunk)
            }
        };
        let shared = Arc::new(Shared::default());
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_blocks(&writer, sink, chunk))?;
        Ok(Self { settings, shared })
    }

    /// Whether a request that ended with `status` is logged: it passes the status filter
    /// and the sample.
    pub fn wants(&self, status: u16) -> bool {
        let s = &self.settings;
        (s.statuses.is_empty() || s.statuses.iter().any(|&(lo, hi)| (lo..=hi).contains(&status)))
            && (s.sample >= 1.0 || fastrand::f64() < s.sample)
    }

    pub fn format(&self) -> AccessLogFormat {
        self.settings.format
    }

    /// Queues the line `format` writes (without its newline) into a reused buffer of this
    /// thread. Never blocks on the sink.
    pub fn write(&self, format: impl FnOnce(&mut String)) {
        thread_local! {
            static LINE: RefCell<String> = RefCell::new(String::with_capacity(1024));
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            format(line);
            line.push('\n');
            let mut pending = self.shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.lines >= self.settings.buffer_lines
                || pending.text.len() + line.len() > MAX_PENDING_BYTES
            {
                drop(pending);
                return dropped("full");
            }
            pending.text.extend_from_slice(line.as_bytes());
            pending.lines += 1;
            if pending.text.len() >= WAKE_AT {
                self.shared.wake.notify_one();
            }
        });
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.shared.wake.notify_one();
    }
}

fn dropped(reason: &str) {
    metrics().access_log_dropped.with_label_values(&[reason]).inc();
}

/// The writer thread: takes the waiting lines as one block, writes it in chunks that end
/// at line ends, and flushes.
fn write_blocks(shared: &Shared, mut sink: Box<dyn Write + Send>, chunk: usize) {
    let throttle = Throttle::default();
    let failed = |e: std::io::Error, lines: usize| {
        metrics().access_log_dropped.with_label_values(&["error"]).inc_by(lines as u64);
        if let Verdict::Write { suppressed } = throttle.check("access-log") {
            tracing::warn!("access log: cannot write: {e}{}", suppressed_note(suppressed));
        }
    };
    let mut block = Vec::new();
    loop {
        let closed = {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.text.is_empty() && !pending.closed {
                pending = shared
                    .wake
                    .wait_timeout(pending, FLUSH_EVERY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            std::mem::swap(&mut pending.text, &mut block);
            pending.lines = 0;
            pending.closed
        };
        let lines = |text: &[u8]| text.iter().filter(|&&b| b == b'\n').count();
        let mut lost = None;
        let mut rest = &block[..];
        while !rest.is_empty() {
            // Up to `chunk` bytes, ending after a newline (a longer line goes whole).
            let end = match rest[..chunk.min(rest.len())].iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1),
            };
            if let Err(e) = sink.write_all(&rest[..end]) {
                let (n, _) = lost.get_or_insert((0, e));
                *n += lines(&rest[..end]);
            }
            rest = &rest[end..];
        }
        if !block.is_empty()
            && let Err(e) = sink.flush()
        {
            // What the sink still held is lost: count the block once.
            lost = Some((lines(&block), e));
        }
        if let Some((n, e)) = lost {
            failed(e, n);
        }
        block.clear();
        if closed {
            break;
        }
    }
}
