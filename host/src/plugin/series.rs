//! A plugin's call metrics: every call of every backend kind passes through
//! [`super::NamedPlugin::run`], which records it here.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounter};
use sluice_bindings::exports::sluice::plugin::filter::Hooks;

use super::error::{FailureKind, Phase};
use super::hook::Decision;
use crate::telemetry::metrics;

/// A plugin's series for its common outcome, looked up once when the plugin loads: a call
/// that continues records without hashing label values.
pub struct PluginSeries {
    plugin: Arc<str>,
    /// Per phase (request, response) the plugin takes part in: the `continue` counter and
    /// the duration histogram.
    phases: [Option<(IntCounter, Histogram)>; 2],
}

impl PluginSeries {
    pub fn new(plugin: Arc<str>, hooks: Hooks) -> Self {
        let m = metrics();
        let phase = |p: Phase| {
            let name = p.label();
            (m.settings.enabled && hooks.contains(p.hook())).then(|| {
                (
                    m.plugin_calls.with_label_values(&[&plugin, name, "continue", ""]),
                    m.plugin_duration.with_label_values(&[&plugin, name]),
                )
            })
        };
        Self { phases: [phase(Phase::Request), phase(Phase::Response)], plugin }
    }

    /// One hook call: how it ended, and how long it took. `skipped`: it failed, and the
    /// plugin's `on_error = "continue"` let the request go on.
    pub fn call(&self, phase: Phase, result: &Result<Decision, FailureKind>, took: Duration) {
        let Some((continued, duration)) = &self.phases[phase as usize] else {
            return; // Never called (no hook for this phase), or metrics are off.
        };
        duration.observe(took.as_secs_f64());
        let (outcome, status) = match outcome(result) {
            ("continue", _) => return continued.inc(),
            other => other,
        };
        let status = status.as_ref().map_or("", |s| s.as_str());
        metrics()
            .plugin_calls
            .with_label_values(&[&*self.plugin, phase.label(), outcome, status])
            .inc();
    }

    pub fn fail_open(&self, phase: Phase) {
        if self.phases[phase as usize].is_none() {
            return;
        }
        metrics().plugin_fail_open.with_label_values(&[&*self.plugin, phase.label()]).inc();
    }
}

/// How a call ended, as a label, with a local reply's status.
pub fn outcome(result: &Result<Decision, FailureKind>) -> (&'static str, Option<http::StatusCode>) {
    match result {
        Ok(Decision::Continue) => ("continue", None),
        Ok(Decision::Respond(local)) => ("local_reply", Some(local.parts.status)),
        Err(kind) => (failure_label(kind), None),
    }
}

fn failure_label(kind: &FailureKind) -> &'static str {
    match kind {
        FailureKind::Trap { .. } => "trap",
        FailureKind::Timeout(_) => "timeout",
        FailureKind::Overloaded(_) => "overloaded",
        FailureKind::StoreClosed(_) => "store_closed",
        FailureKind::Errored(_) | FailureKind::BadReturn(_) | FailureKind::Instantiate(_) => {
            "error"
        }
    }
}
