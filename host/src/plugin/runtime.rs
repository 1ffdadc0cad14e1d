//! The one wasmtime engine: pooling allocator, epoch deadlines, and the linker every plugin
//! is instantiated against.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use wasmtime::component::Linker;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Store,
    UpdateDeadline,
};

use super::memory::{Limits, MemoryBudget};
use super::module::{CodeSource, Module, ModuleError};
use super::state::{self, PluginState, monotonic_nanos};
use super::ticker::{Ticker, Ticking};
use crate::capability;
use crate::config::{self, PluginKind};
use crate::telemetry::metrics;

/// Core instances one component may create (a Rust plugin uses 2-4, a Go one ~6).
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;

/// A callback this soon after a yield ended is the one the waiting caused, not a tick of
/// running.
const HALF_TICK: u64 = super::ticker::EPOCH_TICK.as_nanos() as u64 / 2;

/// How often a long compile reports that it is still running.
const COMPILE_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// A module's SHA-256 and what it is loaded as.
type ModuleKey = ([u8; 32], PluginKind);

#[derive(Debug, thiserror::Error)]
#[error("cannot start the plugin runtime: {0}")]
pub struct RuntimeError(String);

/// Compiles, caches and instantiates plugins. One per gateway process; shared by every
/// config generation so compiled modules and pool slots survive reloads.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    cache_dir: Option<PathBuf>,
    max_memory_bytes: usize,
    /// All instances' linear memory together.
    pub memory: Arc<MemoryBudget>,
    /// Compiled modules by content hash and kind: a module used by several named plugins
    /// (or unchanged across reloads) is compiled once.
    modules: Mutex<HashMap<ModuleKey, Weak<Module>>>,
    /// The wasmtime cache settings file Extism compiles through (see [`Self::extism_cache_config`]).
    extism_cache: OnceLock<Option<PathBuf>>,
    ticker: Ticker,
    /// The host capabilities' shared state (the key-value store, the plugins' metrics):
    /// per process, so it outlives reloads.
    pub capabilities: capability::Shared,
}

impl Runtime {
    pub fn new(cfg: &config::Runtime) -> Result<Arc<Self>, RuntimeError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(cfg.max_instances)
            .total_core_instances(cfg.max_instances.saturating_mul(8))
            .total_memories(cfg.max_instances.saturating_mul(2))
            .total_tables(cfg.max_instances.saturating_mul(8))
            .total_stacks(cfg.max_instances)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(8)
            .max_tables_per_component(32)
            .max_memory_size(cfg.max_memory_bytes)
            // Reset reused slots by copy-on-write page scans instead of re-zeroing them:
            // this is what makes a fresh instance per request cheap.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(1 << 16)
            .pagemap_scan(Enabled::Auto);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // The pool reserves address space for every slot up front: this is where sizes
        // that cannot fit fail.
        let engine = Engine::new(&wasm).map_err(|e| {
            RuntimeError(format!(
                "runtime.max_instances ({}) x runtime.max_memory_mib ({}): {e:#}; lower one of them",
                cfg.max_instances,
                cfg.max_memory_bytes >> 20
            ))
        })?;

        let mut linker = Linker::new(&engine);
        state::add_to_linker(&mut linker)
            .map_err(|e| RuntimeError(format!("linking the host API: {e:#}")))?;
        let capabilities = capability::Shared::new(cfg).map_err(RuntimeError)?;
        let ticker = Ticker::start(&engine);
        Ok(Arc::new(Self {
            engine,
            linker,
            cache_dir: cfg.cache_dir.clone(),
            max_memory_bytes: cfg.max_memory_bytes,
            memory: MemoryBudget::new(cfg.memory_budget_bytes),
            modules: Mutex::default(),
            extism_cache: OnceLock::new(),
            ticker,
            capabilities,
        }))
    }

    /// Keeps the epoch ticking for as long as the returned guard lives: take it for every
    /// call into a plugin.
    pub(crate) fn ticking(&self) -> Ticking<'_> {
        self.ticker.enter()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }

    /// A wasmtime cache settings file that puts Extism's compiled code in this runtime's
    /// cache folder (`None` without one, or if it cannot be written: Extism then compiles
    /// every time). Without it Extism would use a system-wide cache.
    pub(crate) fn extism_cache_config(&self) -> Option<&Path> {
        let file = self.extism_cache.get_or_init(|| {
            let dir = std::path::absolute(self.cache_dir.as_ref()?).ok()?;
            let file = dir.join("extism-cache.toml");
            let cache = toml::Value::String(dir.join("extism").display().to_string());
            let settings = format!("[cache]\ndirectory = {cache}\n");
            // Other gateways may share the folder and read the file at any moment: it is
            // replaced whole, never seen half-written.
            let written = match std::fs::read_to_string(&file) {
                Ok(existing) if existing == settings => Ok(()),
                _ => std::fs::create_dir_all(&dir).and_then(|()| {
                    static WRITES: AtomicU64 = AtomicU64::new(0);
                    let n = WRITES.fetch_add(1, Ordering::Relaxed);
                    let tmp = dir.join(format!(".extism-cache.toml.{}.{n}", std::process::id()));
                    std::fs::write(&tmp, &settings)?;
                    std::fs::rename(&tmp, &file)
                }),
            };
            match written {
                Ok(()) => Some(file),
                Err(e) => {
                    tracing::warn!(file = %file.display(), "cannot write Extism cache settings: {e}");
                    None
                }
            }
        });
        file.as_deref()
    }

    /// Compiles (or fetches from memory or the disk cache) the module at `path`. Compiling
    /// runs on a blocking thread, never on the request path.
    pub async fn load_module(
        self: &Arc<Self>,
        path: &Path,
        kind: PluginKind,
    ) -> Result<Arc<Module>, ModuleError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| ModuleError::Read { path: path.to_owned(), source })?;
        let key = (super::module::content_hash(&bytes), kind);
        if let Some(module) = self.memoized(&key) {
            metrics().module_loads.with_label_values(&["memory"]).inc();
            return Ok(module);
        }
        let this = self.clone();
        let shown = path.display().to_string();
        let path = path.to_owned();
        let build = tokio::task::spawn_blocking(move || {
            Module::build(&this.linker, this.cache_dir.as_deref(), path, bytes, key.0, kind)
        });
        // A long compile says it is still running (a cache hit ends long before).
        let heartbeat = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut every = tokio::time::interval(COMPILE_HEARTBEAT);
            every.tick().await;
            loop {
                every.tick().await;
                tracing::info!("still compiling {shown} ({:.0?} so far)", started.elapsed());
            }
        });
        let built = build.await;
        heartbeat.abort();
        let module =
            built.map_err(|e| ModuleError::Compile(format!("compile task failed: {e}")))??;
        let source = match module.source {
            CodeSource::Compiled => "compiled",
            CodeSource::DiskCache => "cache",
        };
        metrics().module_loads.with_label_values(&[source]).inc();
        metrics().module_load_seconds.observe(module.load_time.as_secs_f64());
        let module = Arc::new(module);
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        modules.retain(|_, m| m.strong_count() > 0);
        modules.insert(key, Arc::downgrade(&module));
        Ok(module)
    }

    fn memoized(&self, key: &ModuleKey) -> Option<Arc<Module>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner()).get(key)?.upgrade()
    }

    /// A store for one instance of plugin `name`: memory capped, and every hook call bounded
    /// by the deadline in its state (see [`PluginState`]).
    pub(crate) fn new_store(&self, name: Arc<str>) -> Store<PluginState> {
        let limits = Limits::new(self.memory.clone(), self.max_memory_bytes);
        let mut store =
            Store::new(&self.engine, PluginState::new(name, limits, &self.capabilities));
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let budget = &mut ctx.data_mut().budget;
            if std::mem::take(&mut budget.yielded) {
                let resumed_at = budget.resumed_at.load(Ordering::Relaxed);
                if monotonic_nanos().saturating_sub(resumed_at) < HALF_TICK {
                    // Just back from a yield, and the epoch moved on while the call waited:
                    // let it run a tick first. Yielding again here would, under load, let
                    // it progress only from one check to the next per scheduler round.
                    return Ok(UpdateDeadline::Continue(1));
                }
            }
            if budget.ticks_left == 0 || Instant::now() >= budget.wall_deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            budget.ticks_left -= 1;
            budget.yielded = true;
            let resumed_at = budget.resumed_at.clone();
            // tokio's yield, not wasmtime's plain re-wake: it defers the wake-up until the
            // I/O driver has run, so a busy plugin cannot starve other requests' sockets.
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    resumed_at.store(monotonic_nanos(), Ordering::Relaxed);
                }),
            ))
        });
        store
    }
}
