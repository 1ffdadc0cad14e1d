//! A plugin's stdout and stderr, turned into gateway log lines.
//!
//! A plugin's panic message goes to stderr just before it traps: first, then a stack (Go's
//! `panic: MESSAGE` and its goroutine dump; Rust's `panicked at FILE:` and the message; a
//! JavaScript exception's message and its `Stack:`). Keeping the first lines of a call's
//! output and its last few lets the trap report say *why* the plugin died, not only where,
//! however long the stack.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// The first lines of a call's output kept for the trap report (the panic message).
const HEAD_LINES: usize = 2;
/// The last lines kept after them.
const TAIL_LINES: usize = 4;
const MAX_LINE: usize = 4096;

#[derive(Clone)]
pub(crate) struct StderrTail {
    plugin: Arc<str>,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    partial: Vec<u8>,
    head: Vec<String>,
    tail: VecDeque<String>,
    /// Lines between the head and the tail that were let go.
    dropped: usize,
}

impl Inner {
    fn keep(&mut self, line: String) {
        if self.head.len() < HEAD_LINES {
            return self.head.push(line);
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
            self.dropped += 1;
        }
        self.tail.push_back(line);
    }
}

impl StderrTail {
    pub fn new(plugin: Arc<str>) -> Self {
        Self { plugin, inner: Arc::default() }
    }

    /// What was written since the previous call: its first lines and its last few, oldest
    /// first, joined with ` | `.
    pub fn take_recent(&self) -> Option<String> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let partial = std::mem::take(&mut inner.partial);
        if !partial.is_empty() {
            inner.keep(String::from_utf8_lossy(&partial).into_owned());
        }
        let mut lines = std::mem::take(&mut inner.head);
        let dropped = std::mem::take(&mut inner.dropped);
        if dropped > 0 {
            lines.push(format!("... ({dropped} lines)"));
        }
        lines.extend(inner.tail.drain(..));
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
                inner.keep(line);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_keeps_the_message_that_comes_first_however_long_the_stack() {
        let tail = StderrTail::new("p".into());
        let mut go = String::from("panic: asked to panic\n\ngoroutine 1 [running]:\n");
        for i in 0..30 {
            go.push_str(&format!("main.f{i}()\n\t/src/main.go:{i}\n"));
        }
        tail.write(go.as_bytes());
        let report = tail.take_recent().unwrap();
        assert!(report.starts_with("panic: asked to panic | goroutine 1 [running]: | ... ("));
        assert!(report.ends_with("main.f29() | \t/src/main.go:29"), "{report}");
        // Each call's report starts afresh.
        tail.write(b"thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom\n");
        assert_eq!(
            tail.take_recent().as_deref(),
            Some("thread '<unnamed>' panicked at src/lib.rs:9:5: | boom")
        );
        assert_eq!(tail.take_recent(), None);
    }
}
