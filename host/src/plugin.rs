//! The Wasm plugin runtime: compiling and caching modules, pooling instances, running a
//! route's chain of hook calls, and the host API plugins call.
//!
//! ```text
//! Runtime (one engine, pooling allocator, epoch ticker, compiled-module cache)
//!   └─ Module (compiled once per content hash, world version checked, InstancePre)
//!        └─ NamedPlugin (a module + its config from [plugins.NAME]; pool of instances)
//!             └─ Chain (a route's ordered plugins; runs the phases)
//! ```

mod chain;
mod error;
mod extism;
mod host_api;
mod memory;
mod module;
mod named;
mod pool;
mod rollout;
mod runtime;
mod state;
mod stderr;
mod ticker;

pub use chain::{Chain, RequestPhase};
pub use error::{FailureKind, Phase, PluginError};
pub use memory::MemoryBudget;
pub use module::{CodeSource, Module, ModuleError};
pub use named::{Decision, LoadError, NamedPlugin};
pub use rollout::{Rollout, State as RolloutState};
pub use runtime::{Runtime, RuntimeError};
