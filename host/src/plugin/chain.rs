//! A route's plugin chain, and the phase contract (drawn in docs/phases.md):
//!
//! 1. Request phases run in the order the route lists its plugins.
//! 2. A plugin that responds locally ends the request phase: later plugins and the upstream
//!    are skipped.
//! 3. Response phases run in reverse order, for the plugins whose request phase was reached
//!    (all of them when the upstream answered; those before the responder otherwise).
//! 4. A failed call follows the plugin's fail policy: `fail` ends the request with a 500,
//!    `continue` logs and skips that plugin for this phase.

use std::future::Future;
use std::sync::Arc;

use super::error::{FailureKind, Phase, PluginError};
use super::hook::Decision;
use super::named::NamedPlugin;
use crate::config::FailPolicy;
use crate::message::{Call, RequestMsg, ResponseMsg};

/// One plugin of a chain, as the chain sees it: a [`NamedPlugin`], or a fake in tests.
pub trait Link: Send + Sync {
    fn name(&self) -> &Arc<str>;
    fn on_error(&self) -> FailPolicy;
    fn has_hook(&self, phase: Phase) -> bool;
    /// A failed call in `phase` was skipped under `on_error = "continue"` (for metrics).
    fn failed_open(&self, _phase: Phase) {}
    /// Runs `phase` on `call`, which is handed back whatever happens.
    fn run(
        &self,
        phase: Phase,
        call: Box<Call>,
    ) -> impl Future<Output = (Box<Call>, Result<Decision, PluginError>)> + Send;
}

impl Link for NamedPlugin {
    fn name(&self) -> &Arc<str> {
        &self.spec.name
    }

    fn on_error(&self) -> FailPolicy {
        self.spec.on_error
    }

    fn has_hook(&self, phase: Phase) -> bool {
        match phase {
            Phase::Request => self.has_request_hook(),
            Phase::Response => self.has_response_hook(),
        }
    }

    fn failed_open(&self, phase: Phase) {
        NamedPlugin::failed_open(self, phase);
    }

    fn run(
        &self,
        phase: Phase,
        call: Box<Call>,
    ) -> impl Future<Output = (Box<Call>, Result<Decision, PluginError>)> + Send {
        NamedPlugin::run(self, phase, call)
    }
}

/// The outcome of a chain's request phases.
pub struct RequestPhase {
    pub request: RequestMsg,
    /// A plugin's local response, if one answered.
    pub local: Option<ResponseMsg>,
    /// How many plugins' response phases are due: the prefix of the chain that was reached.
    pub reached: usize,
}

pub struct Chain<P = NamedPlugin> {
    plugins: Arc<[Arc<P>]>,
    /// Whether any plugin takes part in the response phase; fixed at load, so decided once.
    response_hooks: bool,
}

impl<P> Clone for Chain<P> {
    fn clone(&self) -> Self {
        Self { plugins: self.plugins.clone(), response_hooks: self.response_hooks }
    }
}

impl<P> Default for Chain<P> {
    fn default() -> Self {
        Self { plugins: Arc::new([]), response_hooks: false }
    }
}

impl<P: Link> Chain<P> {
    pub fn new(plugins: Vec<Arc<P>>) -> Self {
        let response_hooks = plugins.iter().any(|p| p.has_hook(Phase::Response));
        Self { plugins: plugins.into(), response_hooks }
    }

    /// The name of the plugin at `index` in the chain.
    pub fn plugin_name(&self, index: usize) -> Option<Arc<str>> {
        self.plugins.get(index).map(|p| p.name().clone())
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Whether any plugin takes part in the response phase (so the request head must be
    /// kept while the upstream answers).
    pub fn has_response_hooks(&self) -> bool {
        self.response_hooks
    }

    pub async fn run_request(&self, request: RequestMsg) -> Result<RequestPhase, PluginError> {
        let mut call = Box::new(Call { request, response: None });
        for (i, plugin) in self.plugins.iter().enumerate() {
            if !plugin.has_hook(Phase::Request) {
                continue;
            }
            let result;
            (call, result) = plugin.run(Phase::Request, call).await;
            match result {
                Ok(Decision::Continue) => {}
                Ok(Decision::Respond(local)) => {
                    let request = call.request;
                    return Ok(RequestPhase { request, local: Some(local), reached: i });
                }
                Err(e) => fail_or_skip(&**plugin, e, &call.request)?,
            }
        }
        Ok(RequestPhase { request: call.request, local: None, reached: self.plugins.len() })
    }

    pub async fn run_response(
        &self,
        reached: usize,
        request: RequestMsg,
        response: ResponseMsg,
    ) -> Result<ResponseMsg, PluginError> {
        let mut call = Box::new(Call { request, response: Some(response) });
        for plugin in self.plugins[..reached].iter().rev() {
            if !plugin.has_hook(Phase::Response) {
                continue;
            }
            let result;
            (call, result) = plugin.run(Phase::Response, call).await;
            if let Err(e) = result {
                fail_or_skip(&**plugin, e, &call.request)?;
            }
        }
        Ok(call.response.expect("the response phase keeps its response"))
    }
}

fn fail_or_skip(plugin: &impl Link, e: PluginError, req: &RequestMsg) -> Result<(), PluginError> {
    match plugin.on_error() {
        _ if matches!(e.kind, FailureKind::StoreClosed(_)) => Err(e),
        FailPolicy::Fail => Err(e),
        FailPolicy::Continue => {
            plugin.failed_open(e.phase);
            tracing::warn!(
                route = %req.meta.route,
                request_id = %req.meta.id(),
                "{e}; skipped (on_error = \"continue\")"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
