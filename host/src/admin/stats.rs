//! Per-plugin call counts and latency for the admin API, read from the metrics registry
//! (the same numbers `/metrics` serves).

use std::collections::HashMap;

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
