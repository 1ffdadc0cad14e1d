//! A named plugin from the config: a module, its config, and the backend that serves its
//! hook calls.

use std::sync::Arc;
use std::time::Duration;

use sluice_bindings::exports::sluice::plugin::filter::Hooks;

use super::backend::{Backend, LoadError, Single};
use super::error::{Phase, PluginError};
use super::hook::Decision;
use super::module::Module;
use super::rollout::Rollout;
use super::runtime::Runtime;
use super::series::PluginSeries;
use crate::config;
use crate::message::{Call, CallRecord, RequestMsg};

pub struct NamedPlugin {
    pub spec: config::Plugin,
    pub module: Arc<Module>,
    backend: Backend,
    hooks: Hooks,
    series: PluginSeries,
}

impl NamedPlugin {
    /// Loads the plugin: a bad config is reported now, at load, never at request time.
    /// With a rollout, `candidate` is the new version's module, loaded the same way.
    pub async fn load(
        runtime: Arc<Runtime>,
        module: Arc<Module>,
        spec: config::Plugin,
        queue_timeout: Duration,
        candidate: Option<Arc<Module>>,
    ) -> Result<Self, LoadError> {
        let stable = Single::load(runtime.clone(), &module, spec.clone(), queue_timeout).await?;
        let backend = match (&spec.rollout, candidate) {
            (Some(r), Some(new)) => {
                let cspec =
                    config::Plugin { module: r.module.clone(), rollout: None, ..spec.clone() };
                let next = Single::load(runtime, &new, cspec, queue_timeout).await?;
                Backend::Rollout(Box::new(Rollout::new(r.clone(), stable, next, new)))
            }
            _ => Backend::Single(stable),
        };
        let hooks = backend.hooks();
        let series = PluginSeries::new(spec.name.clone(), hooks);
        Ok(Self { spec, module, backend, hooks, series })
    }

    pub fn has_request_hook(&self) -> bool {
        self.hooks.contains(Hooks::ON_REQUEST)
    }

    pub fn has_response_hook(&self) -> bool {
        self.hooks.contains(Hooks::ON_RESPONSE)
    }

    /// The rollout of a new version, if one is configured.
    pub fn rollout(&self) -> Option<&Rollout<Single>> {
        match &self.backend {
            Backend::Rollout(r) => Some(r),
            Backend::Single(_) => None,
        }
    }

    /// Runs the request phase. The request is handed back whatever happens.
    pub async fn on_request(&self, req: RequestMsg) -> (RequestMsg, Result<Decision, PluginError>) {
        let call = Box::new(Call { request: req, response: None });
        let (call, result) = self.run(Phase::Request, call).await;
        (call.request, result)
    }

    /// Runs one phase on the messages in `call`, which is handed back whatever happens.
    /// The messages stay in one box for a whole chain: every layer (futures, the store,
    /// the way back) moves a pointer, not the messages.
    pub async fn run(
        &self,
        phase: Phase,
        call: Box<Call>,
    ) -> (Box<Call>, Result<Decision, PluginError>) {
        let started = std::time::Instant::now();
        let (call, result) = self.backend.call(&self.spec.name, phase, call).await;
        let took = started.elapsed();
        self.series.call(phase, &result, took);
        if let Some(calls) = &call.request.meta.calls {
            let (outcome, status) = super::series::outcome(&result);
            let plugin = self.spec.name.clone();
            let record =
                CallRecord { plugin, phase: phase.label(), outcome, status, started, took };
            calls.lock().unwrap_or_else(|p| p.into_inner()).push(record);
        }
        let fail = |kind| PluginError { plugin: self.spec.name.clone(), phase, kind };
        (call, result.map_err(fail))
    }

    /// Idle instances right now (for tests and metrics).
    pub fn idle_instances(&self) -> usize {
        self.backend.idle_instances()
    }

    /// Instances running a call right now (for metrics).
    pub fn busy_instances(&self) -> usize {
        self.backend.busy_instances()
    }

    /// A failed call was skipped (`on_error = "continue"`).
    pub fn failed_open(&self, phase: Phase) {
        self.series.fail_open(phase);
    }
}
