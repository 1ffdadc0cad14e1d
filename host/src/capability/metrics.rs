//! Metrics plugins record (WIT `metrics`): a counter family and a histogram family in a
//! Prometheus registry, labelled with the plugin's name and the metric's name, ready for
//! the gateway's metrics endpoint to export.
//!
//! A plugin chooses its metric names, so they are checked (letters, digits and `_`, at most
//! 64 characters) and capped at 100 per plugin: a plugin cannot grow the registry without
//! bound by naming a metric after each request.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use std::sync::Arc;

use prometheus::{Counter, CounterVec, HistogramOpts, HistogramVec, Opts, Registry};
use sluice_bindings::sluice::plugin::metrics as wit_metrics;
use wasmtime::component::{HasSelf, Linker};

use super::HostResult;

const MAX_NAMES_PER_PLUGIN: usize = 100;
const MAX_NAME_LEN: usize = 64;

pub struct PluginMetrics {
    pub registry: Registry,
    counters: CounterVec,
    histograms: HistogramVec,
    /// Names each plugin has used, and whether it was already warned about.
    names: Mutex<HashMap<String, (HashSet<String>, bool)>>,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        let counters = CounterVec::new(
            Opts::new("sluice_plugin_counter_total", "Counters recorded by plugins"),
            &["plugin", "name"],
        )
        .expect("a valid metric definition");
        let histograms = HistogramVec::new(
            HistogramOpts::new("sluice_plugin_observation", "Values observed by plugins"),
            &["plugin", "name"],
        )
        .expect("a valid metric definition");
        let registry = Registry::new();
        registry.register(Box::new(counters.clone())).expect("registered once");
        registry.register(Box::new(histograms.clone())).expect("registered once");
        Self { registry, counters, histograms, names: Mutex::default() }
    }
}

impl PluginMetrics {
    pub fn counter_add(&self, plugin: &str, name: &str, value: u64) {
        if let Some(counter) = self.counter_handle(plugin, name) {
            counter.inc_by(value as f64);
        }
    }

    /// The plugin's counter `name`, if the name is admitted: a handle callers may keep, so
    /// a plugin's instance looks each name up once rather than on every `counter-add`.
    pub fn counter_handle(&self, plugin: &str, name: &str) -> Option<Counter> {
        self.admit(plugin, name).then(|| self.counters.with_label_values(&[plugin, name]))
    }

    pub fn observe(&self, plugin: &str, name: &str, value: f64) {
        if value.is_finite() && self.admit(plugin, name) {
            self.histograms.with_label_values(&[plugin, name]).observe(value);
        }
    }

    /// The counter's value, for tests and the admin API.
    pub fn counter(&self, plugin: &str, name: &str) -> Option<f64> {
        let known = self.names.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(plugin)?
            .0
            .contains(name)
            .then(|| self.counters.with_label_values(&[plugin, name]).get())
    }

    fn admit(&self, plugin: &str, name: &str) -> bool {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let mut all = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(plugin) {
            all.insert(plugin.to_owned(), Default::default());
        }
        let (names, warned) = all.get_mut(plugin).expect("inserted above");
        if valid && names.contains(name) {
            return true;
        }
        if valid && names.len() < MAX_NAMES_PER_PLUGIN {
            names.insert(name.to_owned());
            return true;
        }
        if !std::mem::replace(warned, true) {
            tracing::warn!(
                plugin,
                "metric {name:?} dropped: names are letters, digits and _ (at most \
                 {MAX_NAME_LEN}), at most {MAX_NAMES_PER_PLUGIN} per plugin; further drops \
                 are not logged"
            );
        }
        false
    }
}

/// An instance's metrics: the shared registry, and the counters it has used.
pub struct MetricsCtx {
    plugin: Arc<str>,
    metrics: Arc<PluginMetrics>,
    /// The counters this instance has used, by name (admitted names only, so at most the
    /// per-plugin cap of [`PluginMetrics`]).
    counters: Vec<(Box<str>, Counter)>,
}

impl MetricsCtx {
    pub fn new(plugin: Arc<str>, metrics: Arc<PluginMetrics>) -> Self {
        Self { plugin, metrics, counters: Vec::new() }
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut MetricsCtx,
) -> wasmtime::Result<()> {
    wit_metrics::add_to_linker::<T, HasSelf<MetricsCtx>>(linker, get)
}

impl wit_metrics::Host for MetricsCtx {
    fn counter_add(&mut self, name: String, value: u64) -> HostResult<()> {
        // A plugin counts the same few names on every request: look each up once.
        if let Some((_, counter)) = self.counters.iter().find(|(n, _)| **n == *name) {
            counter.inc_by(value as f64);
        } else if let Some(counter) = self.metrics.counter_handle(&self.plugin, &name) {
            counter.inc_by(value as f64);
            self.counters.push((name.into(), counter));
        }
        Ok(())
    }

    fn observe(&mut self, name: String, value: f64) -> HostResult<()> {
        self.metrics.observe(&self.plugin, &name, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_plugin_and_refuses_bad_or_too_many_names() {
        let m = PluginMetrics::default();
        m.counter_add("auth", "rejected", 2);
        m.counter_add("auth", "rejected", 3);
        m.counter_add("other", "rejected", 1);
        m.observe("auth", "key_lookup_seconds", 0.25);
        assert_eq!(m.counter("auth", "rejected"), Some(5.0));
        assert_eq!(m.counter("other", "rejected"), Some(1.0));
        m.counter_add("auth", "bad name!", 1);
        assert_eq!(m.counter("auth", "bad name!"), None);
        for i in 0..200 {
            m.counter_add("greedy", &format!("n{i}"), 1);
        }
        assert_eq!(m.counter("greedy", "n99"), Some(1.0));
        assert_eq!(m.counter("greedy", "n100"), None);
        let text = prometheus::TextEncoder::new().encode_to_string(&m.registry.gather()).unwrap();
        assert!(
            text.contains(r#"sluice_plugin_counter_total{name="rejected",plugin="auth"} 5"#),
            "{text}"
        );
        assert!(text.contains("sluice_plugin_observation_count"), "{text}");
    }
}
