//! Per-plugin call counts and latency, and each endpoint's recent attempts, for the admin
//! API, read from the metrics registry (the same numbers `/metrics` serves).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::proto::MetricFamily;
use serde_json::{Value, json};

use crate::telemetry::metrics;

/// Per plugin: `{phase: {calls: {outcome: n}, seconds_sum, count}}`.
pub fn plugin_calls() -> HashMap<String, Value> {
    let families = metrics().registry.gather();
    let mut out: HashMap<String, Value> = HashMap::new();
    let label = |m: &prometheus::proto::Metric, name: &str| {
        m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_owned())
    };
    let family =
        |name: &str| -> Option<&MetricFamily> { families.iter().find(|f| f.name() == name) };
    if let Some(f) = family("sluice_plugin_calls_total") {
        for m in f.get_metric() {
            let (Some(plugin), Some(phase), Some(outcome)) =
                (label(m, "plugin"), label(m, "phase"), label(m, "outcome"))
            else {
                continue;
            };
            let status = label(m, "status").filter(|s| !s.is_empty());
            let key = match status {
                Some(s) => format!("{outcome}_{s}"),
                None => outcome,
            };
            let entry = out.entry(plugin).or_insert_with(|| json!({}));
            let calls = &mut entry[&phase]["calls"];
            let n = calls[&key].as_u64().unwrap_or(0) + m.get_counter().get_value() as u64;
            calls[&key] = json!(n);
        }
    }
    if let Some(f) = family("sluice_plugin_call_duration_seconds") {
        for m in f.get_metric() {
            let (Some(plugin), Some(phase)) = (label(m, "plugin"), label(m, "phase")) else {
                continue;
            };
            let h = m.get_histogram();
            let entry = out.entry(plugin).or_insert_with(|| json!({}));
            entry[&phase]["count"] = json!(h.get_sample_count());
            entry[&phase]["seconds_sum"] = json!(h.get_sample_sum());
        }
    }
    out
}

/// Each endpoint's recent attempts, error rate and latency: the differences between
/// samples of the attempt counters and histogram, taken every [`SAMPLE_EVERY`] and kept
/// for [`WINDOW`]. Nothing on the request path changes for it.
pub struct Recent {
    samples: Mutex<VecDeque<Sample>>,
}

pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
pub const WINDOW: Duration = Duration::from_secs(60);

struct Sample {
    at: Instant,
    per: HashMap<(String, String), Totals>,
}

#[derive(Default, Clone)]
struct Totals {
    attempts: u64,
    /// 5xx, connect failures, timeouts and broken connections (not client faults).
    errors: u64,
    seconds: f64,
    timed: u64,
    /// Cumulative histogram buckets: (upper bound, count).
    buckets: Vec<(f64, u64)>,
}

impl Recent {
    pub fn new() -> Self {
        Self { samples: Mutex::new(VecDeque::new()) }
    }

    /// Takes a sample now and drops those older than the window.
    pub fn sample(&self) {
        let now = take(Instant::now());
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.retain(|s| now.at.duration_since(s.at) <= WINDOW);
        samples.push_back(now);
    }

    /// `upstream`'s `endpoint` over the last window, from the oldest sample kept to now:
    /// `null` before the first sample, or when the metrics lack the endpoint label.
    pub fn endpoint(&self, upstream: &str, endpoint: &str) -> Value {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Some(first) = samples.front() else { return Value::Null };
        let m = metrics();
        if !m.settings.enabled || !m.settings.endpoint_label {
            return Value::Null;
        }
        let key = (upstream.to_owned(), endpoint.to_owned());
        let now = take(Instant::now());
        let before = first.per.get(&key).cloned().unwrap_or_default();
        let after = now.per.get(&key).cloned().unwrap_or_default();
        let seconds = now.at.duration_since(first.at).as_secs_f64().max(1.0);
        let attempts = after.attempts.saturating_sub(before.attempts);
        let errors = after.errors.saturating_sub(before.errors);
        let timed = after.timed.saturating_sub(before.timed);
        let mean_ms = (timed > 0).then(|| (after.seconds - before.seconds) / timed as f64 * 1e3);
        json!({
            "window_seconds": seconds.round(),
            "attempts": attempts,
            "per_second": attempts as f64 / seconds,
            "error_rate": if attempts > 0 { errors as f64 / attempts as f64 } else { 0.0 },
            "mean_ms": mean_ms,
            "p99_ms": quantile(&before.buckets, &after.buckets, 0.99).map(|s| s * 1e3),
        })
    }
}

/// The counters and histogram of every endpoint now.
fn take(at: Instant) -> Sample {
    use prometheus::core::Collector;
    let m = metrics();
    let mut per: HashMap<(String, String), Totals> = HashMap::new();
    let label = |m: &prometheus::proto::Metric, name: &str| {
        m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_owned())
    };
    for f in m.attempts.collect() {
        for s in f.get_metric() {
            let (Some(u), Some(e), Some(outcome)) =
                (label(s, "upstream"), label(s, "endpoint"), label(s, "outcome"))
            else {
                continue;
            };
            let n = s.get_counter().get_value() as u64;
            let t = per.entry((u, e)).or_default();
            t.attempts += n;
            if matches!(outcome.as_str(), "5xx" | "connect_failed" | "timeout" | "failed") {
                t.errors += n;
            }
        }
    }
    for f in m.attempt_duration.collect() {
        for s in f.get_metric() {
            let (Some(u), Some(e)) = (label(s, "upstream"), label(s, "endpoint")) else {
                continue;
            };
            let h = s.get_histogram();
            let t = per.entry((u, e)).or_default();
            t.seconds = h.get_sample_sum();
            t.timed = h.get_sample_count();
            t.buckets =
                h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
        }
    }
    Sample { at, per }
}

/// The `q` quantile of the observations between two cumulative histograms, as the upper
/// bound of the bucket it falls in (what `histogram_quantile` would bound it by).
fn quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, u64)> = after
        .iter()
        .map(|&(bound, n)| {
            let was = before.iter().find(|b| b.0 == bound).map_or(0, |b| b.1);
            (bound, n.saturating_sub(was))
        })
        .collect();
    let total = diff.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil() as u64;
    diff.iter().find(|&&(_, n)| n >= rank).map(|&(bound, _)| bound)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_quantile_is_the_bucket_that_holds_its_rank() {
        let before = [(0.01, 10), (0.1, 10), (1.0, 10)];
        // 100 new observations: 98 under 10 ms, 1 under 100 ms, 1 under 1 s.
        let after = [(0.01, 108), (0.1, 109), (1.0, 110)];
        assert_eq!(super::quantile(&before, &after, 0.5), Some(0.01));
        assert_eq!(super::quantile(&before, &after, 0.99), Some(0.1));
        assert_eq!(super::quantile(&before, &after, 1.0), Some(1.0));
        assert_eq!(super::quantile(&after, &after, 0.99), None, "nothing new");
    }
}
