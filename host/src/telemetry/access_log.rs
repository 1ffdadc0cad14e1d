//! The access log: one line per request, formatted on the request's task and written by a
//! thread of its own, so a slow disk never slows a request. Lines wait in a bounded queue;
//! when it is full (the writer fell behind) a line is dropped and counted in
//! `sluice_access_log_dropped_total{reason="full"}`, and a line the sink refuses (a full
//! disk) in `{reason="error"}` (a failed flush counts once for the block it held). Requests never
//! wait for the log.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};

use crate::config::{AccessLogFormat, AccessLogSettings, LogSink, RotateEvery};
use crate::telemetry::metrics;
use crate::throttle::{Throttle, Verdict, suppressed_note};

pub struct AccessLog {
    pub settings: AccessLogSettings,
    lines: SyncSender<String>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("settings", &self.settings).finish()
    }
}

impl AccessLog {
    /// Opens the sink (a file is created if missing) and starts the writer thread, which
    /// ends once this is dropped and the queue is drained.
    pub fn start(settings: AccessLogSettings) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match &settings.sink {
            LogSink::Stdout => Box::new(std::io::stdout()),
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
                Box::new(rolling_file::BasicRollingFileAppender::new(path, condition, *keep)?)
            }
        };
        let (lines, queue) = std::sync::mpsc::sync_channel(settings.buffer_lines);
        std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_lines(queue, sink))?;
        Ok(Self { settings, lines })
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

    /// Queues one line (without its newline). Never blocks.
    pub fn write(&self, line: String) {
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => dropped("full"),
            Err(TrySendError::Disconnected(_)) => dropped("error"),
        }
    }
}

fn dropped(reason: &str) {
    metrics().access_log_dropped.with_label_values(&[reason]).inc();
}

fn write_lines(queue: Receiver<String>, mut sink: Box<dyn Write + Send>) {
    let throttle = Throttle::default();
    let failed = |e: std::io::Error| {
        dropped("error");
        if let Verdict::Write { suppressed } = throttle.check("access-log") {
            tracing::warn!("access log: cannot write: {e}{}", suppressed_note(suppressed));
        }
    };
    loop {
        // Flushed whenever the queue runs empty: lines reach the file within a moment, and
        // a busy gateway writes in large blocks.
        let mut line = match queue.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => {
                if let Err(e) = sink.flush() {
                    failed(e);
                }
                match queue.recv() {
                    Ok(line) => line,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        line.push('\n');
        if let Err(e) = sink.write_all(line.as_bytes()) {
            failed(e);
        }
    }
    let _ = sink.flush();
}
