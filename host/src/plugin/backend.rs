//! What serves a configured plugin's hook calls: one version (a component or an Extism
//! plugin), or a rollout of two. Each offers "which hooks do you have" and "call this
//! phase"; the chain neither knows nor cares which it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_bindings::exports::sluice::plugin::filter::Hooks;

use super::component::{ComponentBackend, InitError};
use super::error::{FailureKind, Phase};
use super::extism::ExtismBackend;
use super::hook::Decision;
use super::module::{Code, Module};
use super::rollout::{Rollout, Which};
use super::runtime::Runtime;
use crate::config;
use crate::message::Call;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Failed(String),
    #[error("plugin rejected its config: {0}")]
    ConfigRejected(String),
}

/// One version of a plugin.
pub enum Single {
    Component(ComponentBackend),
    Extism(ExtismBackend),
}

impl Single {
    /// Loads `module` with the plugin's config: instantiated once and `init`ed, so a bad
    /// config is reported now, at load, and never at request time.
    pub async fn load(
        runtime: Arc<Runtime>,
        module: &Module,
        spec: config::Plugin,
        queue_timeout: Duration,
    ) -> Result<Self, LoadError> {
        match &module.code {
            Code::Component(pre) => {
                ComponentBackend::load(runtime, pre.clone(), spec, queue_timeout)
                    .await
                    .map(Single::Component)
                    .map_err(|e| match e {
                        InitError::Rejected(msg) => LoadError::ConfigRejected(msg),
                        InitError::Failed(kind) => LoadError::Failed(kind.to_string()),
                    })
            }
            Code::Extism(bytes) => ExtismBackend::load(runtime, bytes.clone(), spec, queue_timeout)
                .await
                .map(Single::Extism)
                .map_err(LoadError::Failed),
        }
    }

    pub fn hooks(&self) -> Hooks {
        match self {
            Single::Component(c) => c.hooks(),
            Single::Extism(e) => e.hooks(),
        }
    }

    pub fn idle_instances(&self) -> usize {
        match self {
            Single::Component(c) => c.idle_instances(),
            Single::Extism(e) => e.idle_instances(),
        }
    }

    pub fn busy_instances(&self) -> usize {
        match self {
            Single::Component(c) => c.busy_instances(),
            Single::Extism(e) => e.busy_instances(),
        }
    }

    pub async fn call(
        &self,
        phase: Phase,
        call: Box<Call>,
    ) -> (Box<Call>, Result<Decision, FailureKind>) {
        if !self.hooks().contains(phase.hook()) {
            // A version being rolled out may take part in a phase this one does not.
            return (call, Ok(Decision::Continue));
        }
        match self {
            Single::Component(c) => c.call(phase, call).await,
            Single::Extism(e) => e.call(phase, call).await,
        }
    }
}

// The common case stays inline: a backend is built once per load, never moved per request.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Single(Single),
    /// A new module version serving part of the traffic (`[plugins.NAME.rollout]`).
    Rollout(Box<Rollout<Single>>),
}

impl Backend {
    /// The phases this plugin takes part in, counting a version being rolled out.
    pub fn hooks(&self) -> Hooks {
        match self {
            Backend::Single(s) => s.hooks(),
            Backend::Rollout(r) => r.stable.hooks() | r.candidate.hooks(),
        }
    }

    /// Runs one phase on the version that serves this request, recording the outcome when
    /// a rollout is running. `call` is handed back whatever happens.
    pub async fn call(
        &self,
        plugin: &str,
        phase: Phase,
        call: Box<Call>,
    ) -> (Box<Call>, Result<Decision, FailureKind>) {
        let rollout = match self {
            Backend::Single(s) => return s.call(phase, call).await,
            Backend::Rollout(r) => r,
        };
        let which = rollout.pick(&call.request);
        let started = Instant::now();
        let (call, result) = match which {
            Which::Stable => rollout.stable.call(phase, call).await,
            Which::Candidate => rollout.candidate.call(phase, call).await,
        };
        rollout.record(plugin, which, started.elapsed(), result.is_err());
        (call, result)
    }

    /// Idle instances of the serving version right now (for tests and metrics).
    pub fn idle_instances(&self) -> usize {
        match self {
            Backend::Single(s) => s.idle_instances(),
            Backend::Rollout(r) => r.stable.idle_instances(),
        }
    }

    /// Instances of every version running a call right now.
    pub fn busy_instances(&self) -> usize {
        match self {
            Backend::Single(s) => s.busy_instances(),
            Backend::Rollout(r) => r.stable.busy_instances() + r.candidate.busy_instances(),
        }
    }
}
