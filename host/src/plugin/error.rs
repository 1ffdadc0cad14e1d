//! Why a plugin call failed. Every failure is about one plugin and one request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sluice_bindings::exports::sluice::plugin::filter::Hooks;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
}

impl Phase {
    /// The phase's name in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::Response => "response",
        }
    }

    /// The hook flag a plugin exports this phase as.
    pub fn hook(self) -> Hooks {
        match self {
            Phase::Request => Hooks::ON_REQUEST,
            Phase::Response => Hooks::ON_RESPONSE,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Request => "on-request",
            Phase::Response => "on-response",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FailureKind {
    /// A trap or panic; `message` has the cause and the plugin's function names, `stderr`
    /// the plugin's last output (where a panic message lands).
    #[error("trapped: {message}{}", stderr.as_deref().map(|s| format!("; plugin stderr: {s}")).unwrap_or_default())]
    Trap { message: String, stderr: Option<String> },
    /// The plugin reported an error of its own (an Extism plugin's error return).
    #[error("returned an error: {0}")]
    Errored(String),
    #[error("did not return within {0:?}")]
    Timeout(Duration),
    #[error("returned an invalid result: {0}")]
    BadReturn(String),
    #[error("no free instance within {0:?}")]
    Overloaded(Duration),
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// The key-value store is unreachable and `kv.on_unavailable = "fail-closed"`: the
    /// request fails with 503 whatever the plugin's `on_error`.
    #[error("{0}")]
    StoreClosed(String),
}

/// A plugin failed one call of one request.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin:?} failed in {phase}: {kind}")]
pub struct PluginError {
    pub plugin: Arc<str>,
    pub phase: Phase,
    #[source]
    pub kind: FailureKind,
}
