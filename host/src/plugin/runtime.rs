//! The one wasmtime engine: pooling allocator, epoch deadlines, and the linker every plugin
//! is instantiated against.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use wasmtime::component::Linker;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Store,
    Strategy, UpdateDeadline,
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

/// Optimised code, and the baseline module it replaces.
type Optimised = (Arc<Module>, Weak<Module>);

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
    /// Components at least this large, in no cache, start on baseline code
    /// (`runtime.quick_start`); `None` when off, and outside `sluice run`.
    quick_start_min_bytes: Option<usize>,
    /// The baseline compiler's engine and linker, made on first use (`None` inside if
    /// Winch cannot run here).
    baseline: OnceLock<Option<(Engine, Linker<PluginState>)>>,
    /// Modules being optimised in the background.
    optimising: Mutex<HashSet<ModuleKey>>,
    /// Optimised code for modules serving baseline code, held until no gateway uses the
    /// baseline module (the weak reference) any more.
    optimised: Mutex<HashMap<ModuleKey, Optimised>>,
    /// Woken when optimised code is ready to swap in.
    tiered_up: tokio::sync::Notify,
    /// The host capabilities' shared state (the key-value store, the plugins' metrics):
    /// per process, so it outlives reloads.
    pub capabilities: capability::Shared,
}

impl Runtime {
    /// A runtime for `sluice run`: large modules start on baseline code if `cfg` says so.
    pub fn serving(cfg: &config::Runtime) -> Result<Arc<Self>, RuntimeError> {
        Self::build(cfg, cfg.quick_start_min_bytes)
    }

    /// A runtime that compiles everything with Cranelift before using it (`sluice check`,
    /// where nothing serves long enough to tier up).
    pub fn new(cfg: &config::Runtime) -> Result<Arc<Self>, RuntimeError> {
        Self::build(cfg, None)
    }

    fn build(
        cfg: &config::Runtime,
        quick_start_min_bytes: Option<usize>,
    ) -> Result<Arc<Self>, RuntimeError> {
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
            quick_start_min_bytes,
            baseline: OnceLock::new(),
            optimising: Mutex::default(),
            optimised: Mutex::default(),
            tiered_up: tokio::sync::Notify::new(),
            capabilities,
        }))
    }

    /// The baseline compiler (Winch): made on first use, so a gateway whose plugins are all
    /// small or cached never pays for a second engine.
    fn baseline(&self) -> Option<&Linker<PluginState>> {
        let made = self.baseline.get_or_init(|| {
            let mut wasm = Config::new();
            // Instances of baseline code are few and short-lived: allocated on demand, not
            // from a second pool reserving address space for every slot.
            wasm.strategy(Strategy::Winch)
                .wasm_component_model(true)
                .epoch_interruption(true)
                .parallel_compilation(true);
            let engine = Engine::new(&wasm).map_err(|e| format!("{e:#}"));
            let linker = engine.and_then(|engine| {
                let mut linker = Linker::new(&engine);
                state::add_to_linker(&mut linker).map_err(|e| format!("linking: {e:#}"))?;
                Ok((engine, linker))
            });
            match linker {
                Ok((engine, linker)) => {
                    self.ticker.also(&engine);
                    Some((engine, linker))
                }
                Err(e) => {
                    tracing::warn!(
                        "the baseline compiler (Winch) cannot run here ({e}); large plugins \
                         compile with Cranelift before serving"
                    );
                    None
                }
            }
        });
        made.as_ref().map(|(_, linker)| linker)
    }

    /// Waits until optimised code is ready for a module serving baseline code; then the
    /// running config is applied again to swap it in (see `reload::tier_up`).
    pub async fn tiered_up(&self) {
        self.tiered_up.notified().await
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
    /// runs on a blocking thread, never on the request path. A large component in no cache
    /// gets baseline code now and optimised code later (`runtime.quick_start`).
    pub async fn load_module(
        self: &Arc<Self>,
        path: &Path,
        kind: PluginKind,
    ) -> Result<Arc<Module>, ModuleError> {
        self.load(path, kind, true).await
    }

    /// Like [`Self::load_module`], but never baseline code: for a module whose speed is
    /// judged (a rollout compares its versions' p99 latencies), so it is not rolled back
    /// for running Winch's slower code, nor restarted when Cranelift's arrives.
    pub async fn load_module_optimised(
        self: &Arc<Self>,
        path: &Path,
        kind: PluginKind,
    ) -> Result<Arc<Module>, ModuleError> {
        self.load(path, kind, false).await
    }

    async fn load(
        self: &Arc<Self>,
        path: &Path,
        kind: PluginKind,
        quick_start: bool,
    ) -> Result<Arc<Module>, ModuleError> {
        let bytes: Arc<[u8]> = tokio::fs::read(path)
            .await
            .map_err(|source| ModuleError::Read { path: path.to_owned(), source })?
            .into();
        let key = (super::module::content_hash(&bytes), kind);
        let known = self.optimised(&key).or_else(|| self.memoized(&key));
        if let Some(module) = known.filter(|m| quick_start || m.source != CodeSource::Baseline) {
            metrics().module_loads.with_label_values(&["memory"]).inc();
            return Ok(module);
        }
        let quick = quick_start
            && kind == PluginKind::Component
            && self.quick_start_min_bytes.is_some_and(|min| bytes.len() >= min);
        let (this, shown) = (self.clone(), path.display().to_string());
        let (path, code) = (path.to_owned(), bytes.clone());
        let build = tokio::task::spawn_blocking(move || {
            let baseline = if quick { this.baseline() } else { None };
            let cache = this.cache_dir.as_deref();
            Module::build(&this.linker, baseline, cache, path, code, key.0, kind)
        });
        let built = heartbeat(build, move |so_far| {
            tracing::info!("still compiling {shown} ({so_far:.0?} so far)")
        })
        .await;
        let module =
            built.map_err(|e| ModuleError::Compile(format!("compile task failed: {e}")))??;
        metrics().module_loads.with_label_values(&[module.source.as_str()]).inc();
        metrics().module_load_seconds.observe(module.load_time.as_secs_f64());
        let module = Arc::new(module);
        self.remember(key, &module);
        if module.source == CodeSource::Baseline {
            self.optimise(key, bytes, &module);
        }
        Ok(module)
    }

    fn remember(&self, key: ModuleKey, module: &Arc<Module>) {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        modules.retain(|_, m| m.strong_count() > 0);
        modules.insert(key, Arc::downgrade(module));
    }

    /// Compiles `baseline`'s module with Cranelift in the background (once at a time), then
    /// wakes [`Self::tiered_up`]. The result lands in the disk cache as any compile does.
    fn optimise(self: &Arc<Self>, key: ModuleKey, bytes: Arc<[u8]>, baseline: &Arc<Module>) {
        if !self.optimising.lock().unwrap_or_else(|p| p.into_inner()).insert(key) {
            return;
        }
        let (this, used, path) = (self.clone(), Arc::downgrade(baseline), baseline.path.clone());
        tokio::spawn(async move {
            let shown = path.display().to_string();
            let runtime = this.clone();
            let build = tokio::task::spawn_blocking(move || {
                let cache = runtime.cache_dir.as_deref();
                Module::build(&runtime.linker, None, cache, path, bytes, key.0, key.1)
            });
            let beat = shown.clone();
            let built = heartbeat(build, move |so_far| {
                tracing::info!(
                    "still optimising {beat} ({so_far:.0?} so far); it serves its baseline \
                     code meanwhile"
                )
            })
            .await;
            this.optimising.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            match built {
                Ok(Ok(module)) if used.strong_count() > 0 => {
                    tracing::info!(
                        "optimised code for {shown} ready (compiled in {:.1?}); swapping it in",
                        module.load_time
                    );
                    metrics().module_loads.with_label_values(&[module.source.as_str()]).inc();
                    metrics().module_load_seconds.observe(module.load_time.as_secs_f64());
                    let mut optimised = this.optimised.lock().unwrap_or_else(|p| p.into_inner());
                    optimised.insert(key, (Arc::new(module), used));
                    drop(optimised);
                    this.tiered_up.notify_one();
                }
                Ok(Ok(_)) => tracing::debug!("optimised {shown}, which no plugin uses any more"),
                Ok(Err(e)) => {
                    tracing::warn!("optimising {shown} failed; it keeps its baseline code: {e}")
                }
                Err(e) => tracing::warn!(
                    "optimising {shown} failed; it keeps its baseline code: compile task: {e}"
                ),
            }
        });
    }

    /// Optimised code for a module some gateway runs as baseline code.
    fn optimised(&self, key: &ModuleKey) -> Option<Arc<Module>> {
        let mut optimised = self.optimised.lock().unwrap_or_else(|p| p.into_inner());
        // Once no gateway runs the baseline module, later loads find the optimised one
        // among the remembered modules (or in the disk cache).
        optimised.retain(|_, (_, baseline)| baseline.strong_count() > 0);
        let module = optimised.get(key)?.0.clone();
        drop(optimised);
        self.remember(*key, &module);
        Some(module)
    }

    fn memoized(&self, key: &ModuleKey) -> Option<Arc<Module>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner()).get(key)?.upgrade()
    }

    /// A store in `engine` (the module's: Cranelift's or the baseline compiler's) for one
    /// instance of plugin `name`: memory capped, and every hook call bounded by the deadline
    /// in its state (see [`PluginState`]).
    pub(crate) fn new_store(&self, engine: &Engine, name: Arc<str>) -> Store<PluginState> {
        let limits = Limits::new(self.memory.clone(), self.max_memory_bytes);
        let mut store = Store::new(engine, PluginState::new(name, limits, &self.capabilities));
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

/// Awaits `task`, calling `still` every [`COMPILE_HEARTBEAT`] with the time so far, so a long
/// compile says it is running (a cache hit ends long before the first).
async fn heartbeat<T>(
    task: tokio::task::JoinHandle<T>,
    still: impl Fn(std::time::Duration) + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let beat = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut every = tokio::time::interval(COMPILE_HEARTBEAT);
        every.tick().await;
        loop {
            every.tick().await;
            still(started.elapsed());
        }
    });
    let done = task.await;
    beat.abort();
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(extra: &str) -> Arc<Runtime> {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[runtime]\ncache = false\nmax_instances = 4\n{extra}"
        );
        let config = config::parse(&text, "test.toml", Path::new(".")).unwrap();
        Runtime::serving(&config.runtime).unwrap()
    }

    /// A component using tail calls, which Winch does not compile: the load falls back to
    /// Cranelift, which compiles it and then finds it is no Sluice plugin. Without the
    /// fallback the error would be Winch's.
    #[tokio::test]
    async fn a_module_the_baseline_compiler_refuses_is_compiled_by_cranelift() {
        let wasm =
            wat::parse_str("(component (core module (func $f (export \"f\") (return_call $f))))")
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tail.wasm");
        std::fs::write(&file, &wasm).unwrap();
        let quick = runtime("quick_start_min_kib = 0");
        let winch = quick.baseline().expect("Winch runs on this machine").engine();
        assert!(wasmtime::component::Component::new(winch, &wasm).is_err(), "Winch refuses it");
        match quick.load_module(&file, PluginKind::Component).await {
            Err(ModuleError::NotAPlugin { .. }) => {}
            other => panic!("expected Cranelift's module to be refused as no plugin: {other:?}"),
        }
    }
}
