//! A plugin's stdout and stderr, turned into gateway log lines.
//!
//! A Rust plugin's panic message goes to stderr just before it traps. Keeping the last few
//! lines lets the trap report say *why* the plugin died, not only where.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

const KEEP_LINES: usize = 8;
const MAX_LINE: usize = 4096;

#[derive(Clone)]
pub(crate) struct StderrTail {
    plugin: Arc<str>,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    partial: Vec<u8>,
    recent: VecDeque<String>,
}

impl StderrTail {
    pub fn new(plugin: Arc<str>) -> Self {
        Self { plugin, inner: Arc::default() }
    }

    /// The last lines written since the previous call, oldest first, joined with ` | `.
    pub fn take_recent(&self) -> Option<String> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let partial = std::mem::take(&mut inner.partial);
        if !partial.is_empty() {
            inner.recent.push_back(String::from_utf8_lossy(&partial).into_owned());
        }
        let lines: Vec<String> = inner.recent.drain(..).collect();
        (!lines.is_empty()).then(|| lines.join(" | "))
    }

    fn write(&self, buf: &[u8]) {
        use crate::throttle::{Throttle, Verdict, suppressed_note};
        // A plugin failing on every request writes the same lines every time.
        static STDERR_LINES: std::sync::LazyLock<Throttle> =
            std::sync::LazyLock::new(Throttle::default);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for byte in buf {
            if *byte == b'\n' {
                let line = String::from_utf8_lossy(&inner.partial).into_owned();
                inner.partial.clear();
                // Blank lines and Rust's "run with RUST_BACKTRACE" hint carry nothing.
                if line.trim().is_empty() || line.starts_with("note: run with `RUST_BACKTRACE") {
                    continue;
                }
                if let Verdict::Write { suppressed } = STDERR_LINES.check((&*self.plugin, &line)) {
                    let note = suppressed_note(suppressed);
                    tracing::info!(target: "plugin", plugin = %self.plugin, "stderr: {line}{note}");
                }
                if inner.recent.len() == KEEP_LINES {
                    inner.recent.pop_front();
                }
                inner.recent.push_back(line);
            } else if inner.partial.len() < MAX_LINE {
                inner.partial.push(*byte);
            }
        }
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
