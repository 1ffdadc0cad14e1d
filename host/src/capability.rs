//! What plugins can call: one room per WIT interface of the `sluice:plugin` world, in the
//! way of Spin's factors. Each file owns its WIT `Host` impl, its per-instance state, its
//! linking, and (where it has one) the load-time check of its config:
//!
//! | file | WIT interface | per-instance state | shared, per process |
//! |---|---|---|---|
//! | `http.rs` | `http` | the hook call's messages | - |
//! | `log.rs` | `log` | - (tags from the call) | - |
//! | `clock.rs` | `clock` | - | - |
//! | `kv.rs`, `kv/` | `kv` | the plugin's namespace | the local or Redis store |
//! | `metrics.rs` | `metrics` | counters in use | the registry |
//!
//! `plugin::state` composes them into an instance's store data and links each one. A new
//! capability is a new file here, a field there and a line in its `add_to_linker`.

pub mod clock;
pub mod http;
pub mod kv;
pub mod log;
pub mod metrics;

use std::sync::Arc;

use crate::config;

/// A host call's own outcome: `Err` traps the plugin.
type HostResult<T> = wasmtime::Result<T>;

/// The process-wide side of the capabilities: checked and built once from the config,
/// shared by every instance, kept across reloads.
pub struct Shared {
    pub kv: Arc<kv::Store>,
    pub metrics: Arc<metrics::PluginMetrics>,
}

impl Shared {
    /// Checks each capability's config and builds its shared part; the error names the key.
    pub fn new(cfg: &config::Runtime) -> Result<Self, String> {
        let kv = kv::Store::new(&cfg.kv).map_err(|e| format!("kv.url: {e}"))?;
        Ok(Self { kv: Arc::new(kv), metrics: Arc::default() })
    }
}
