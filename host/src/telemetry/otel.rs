//! OpenTelemetry traces (`[tracing]`): each sampled request becomes a server span with a
//! child per plugin call and per upstream attempt, built when the request is over from
//! what its context recorded (as Envoy builds its spans at the stream's end), and exported
//! over OTLP/HTTP (protobuf) by `opentelemetry-otlp`.
//!
//! Export never costs a request anything: finished spans go into a bounded queue, a task
//! sends them in batches, and when the collector is slow or dead the queue fills and
//! further spans are dropped and counted (`sluice_trace_spans_total{result="dropped"}`),
//! never waited for.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::{mpsc, oneshot};

use crate::config::TracingSettings;
use crate::telemetry::metrics;

/// Spans per export request.
const MAX_BATCH: usize = 512;
/// The longest a finished span waits for its batch.
const BATCH_DELAY: Duration = Duration::from_secs(1);

static TRACER: OnceLock<Tracer> = OnceLock::new();

pub struct Tracer {
    pub settings: TracingSettings,
    spans: mpsc::Sender<SpanData>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    pub scope: InstrumentationScope,
}

/// Starts the exporter from the first config (within the tokio runtime). Later calls keep
/// the first; returns whether `settings` are the ones in force.
pub fn init(settings: &TracingSettings) -> Result<bool, String> {
    if let Some(t) = TRACER.get() {
        return Ok(t.settings == *settings);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.to_string())
        .with_timeout(settings.timeout)
        .build()
        .map_err(|e| format!("tracing: cannot make the OTLP exporter: {e}"))?;
    let resource = Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    exporter.set_resource(&resource);
    let (spans, queue) = mpsc::channel(settings.max_queue_spans);
    let (flush, flushes) = mpsc::channel(1);
    tokio::spawn(export_loop(exporter, queue, flushes));
    let scope =
        InstrumentationScope::builder("sluice").with_version(env!("CARGO_PKG_VERSION")).build();
    let _ = TRACER.set(Tracer { settings: settings.clone(), spans, flush, scope });
    tracing::info!(
        "tracing: exporting spans to {} (OTLP/HTTP), sampling {}% of new traces",
        settings.endpoint,
        settings.sample_ratio * 100.0
    );
    Ok(true)
}

/// The tracer, if `[tracing]` is configured.
pub fn tracer() -> Option<&'static Tracer> {
    TRACER.get()
}

impl Tracer {
    /// Whether a request is recorded: a client's decision when it sent one and
    /// `parent_based` is on, otherwise the ratio, by the trace id (as OpenTelemetry's
    /// `TraceIdRatioBased` does, so every hop of one trace decides alike).
    pub fn sample(&self, trace_id: u128, parent_sampled: Option<bool>) -> bool {
        match parent_sampled {
            Some(sampled) if self.settings.parent_based => sampled,
            _ => {
                let ratio = self.settings.sample_ratio;
                ratio >= 1.0 || ((trace_id as u64 >> 1) as f64) < ratio * (1u64 << 63) as f64
            }
        }
    }

    /// Queues a finished span. Never waits: a full queue drops it (counted).
    pub fn record(&self, span: SpanData) {
        let result = match self.spans.try_send(span) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "dropped",
            Err(mpsc::error::TrySendError::Closed(_)) => "dropped",
        };
        metrics().trace_spans.with_label_values(&[result]).inc();
    }
}

/// Exports what is queued, waiting at most `within` (on shutdown).
pub async fn flush(within: Duration) {
    let Some(t) = TRACER.get() else { return };
    let (done, finished) = oneshot::channel();
    if t.flush.send(done).await.is_ok() {
        let _ = tokio::time::timeout(within, finished).await;
    }
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut queue: mpsc::Receiver<SpanData>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut tick = tokio::time::interval(BATCH_DELAY);
    loop {
        // `batch` is below MAX_BATCH here: it is exported as soon as it fills.
        let room = MAX_BATCH - batch.len();
        tokio::select! {
            n = queue.recv_many(&mut batch, room) => {
                if n == 0 {
                    break; // Every sender is gone.
                }
                if batch.len() >= MAX_BATCH {
                    export(&exporter, &mut batch).await;
                }
            }
            _ = tick.tick() => export(&exporter, &mut batch).await,
            Some(done) = flushes.recv() => {
                while let Ok(span) = queue.try_recv() {
                    batch.push(span);
                    if batch.len() >= MAX_BATCH {
                        export(&exporter, &mut batch).await;
                    }
                }
                export(&exporter, &mut batch).await;
                let _ = done.send(());
            }
        }
    }
    export(&exporter, &mut batch).await;
}

async fn export(exporter: &opentelemetry_otlp::SpanExporter, batch: &mut Vec<SpanData>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let result = match exporter.export(std::mem::take(batch)).await {
        Ok(()) => "exported",
        Err(e) => {
            use crate::throttle::{Throttle, Verdict, suppressed_note};
            static THROTTLE: std::sync::LazyLock<Throttle> =
                std::sync::LazyLock::new(Throttle::default);
            if let Verdict::Write { suppressed } = THROTTLE.check("otlp") {
                tracing::warn!(
                    "tracing: export of {n} spans failed: {e}{}",
                    suppressed_note(suppressed)
                );
            }
            "failed"
        }
    };
    metrics().trace_spans.with_label_values(&[result]).inc_by(n);
}
