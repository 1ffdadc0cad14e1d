//! The Wasm plugin runtime: compiling and caching modules, pooling instances, and running a
//! route's chain of hook calls. What plugins can call lives in `crate::capability`.
//!
//! ```text
//! Runtime (one engine, pooling allocator, epoch ticker, linker, compiled-module cache)
//!   └─ Module (compiled once per content hash, world version checked, InstancePre)
//!        └─ NamedPlugin (a module + its config from [plugins.NAME])
//!             └─ Backend: a component, an Extism plugin, or a rollout of two versions
//!                  (each with its pool of instances)
//! Chain (a route's ordered plugins; runs the phases)
//! ```

mod backend;
mod chain;
mod component;
mod error;
mod extism;
mod hook;
mod memory;
mod module;
mod named;
mod pool;
mod rollout;
mod runtime;
mod series;
mod state;
mod stderr;
mod ticker;

pub use backend::{LoadError, Single};
pub use chain::{Chain, Link, RequestPhase};
pub use error::{FailureKind, Phase, PluginError};
pub use hook::Decision;
pub use memory::MemoryBudget;
pub use module::{CodeSource, Module, ModuleError};
pub use named::NamedPlugin;
pub use rollout::{Rollout, State as RolloutState};
pub use runtime::{Runtime, RuntimeError};
