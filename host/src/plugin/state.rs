//! What a plugin instance's `Store` carries: WASI, limits, its call budget, and the
//! per-instance state of each host capability (see `crate::capability`), linked here.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::memory::Limits;
use super::stderr::StderrTail;
use crate::capability::{self, http::HttpCtx, kv::KvCtx, log::LogView, metrics::MetricsCtx};

/// The data of one plugin instance's store.
pub struct PluginState {
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: Limits,
    /// The current call's budget (see [`Budget`]); checked on every epoch tick.
    pub(super) budget: Budget,
    pub(super) stderr: StderrTail,
    /// WIT `http`: the messages of the hook call in progress.
    pub(super) http: HttpCtx,
    kv: KvCtx,
    metrics: MetricsCtx,
}

/// Links WASI and every host capability, each to its part of [`PluginState`].
pub(super) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    capability::http::add_to_linker(linker, |s| &mut s.http)?;
    capability::log::add_to_linker(linker, |s| LogView::new(&s.plugin, s.http.call.as_deref()))?;
    capability::clock::add_to_linker(linker)?;
    capability::kv::add_to_linker(linker, |s| &mut s.kv)?;
    capability::metrics::add_to_linker(linker, |s| &mut s.metrics)?;
    Ok(())
}

/// How long a call may take. `timeout` counts the plugin's own running time, in epoch ticks
/// while its code runs, not time spent waiting: for the CPU while other requests run (a
/// yield), or for the host to read a body. A wall-clock limit bounds the waiting.
#[derive(Debug)]
pub(super) struct Budget {
    /// Ticks of running left.
    pub ticks_left: u64,
    /// The call fails once this passes, whatever it was doing.
    pub wall_deadline: Instant,
    /// Set when the last tick yielded.
    pub yielded: bool,
    /// When the last yield ended (nanoseconds on [`monotonic_nanos`]), written by the
    /// yield's future.
    pub resumed_at: Arc<AtomicU64>,
}

/// Nanoseconds since the first call, for timestamps shared through atomics.
pub(super) fn monotonic_nanos() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Budget {
    pub fn new(timeout: std::time::Duration, wall_limit: std::time::Duration) -> Self {
        let mut budget = Budget {
            ticks_left: 0,
            wall_deadline: Instant::now(),
            yielded: false,
            resumed_at: Arc::new(AtomicU64::new(0)),
        };
        budget.arm(timeout, wall_limit, Instant::now());
        budget
    }

    /// Starts a call's budget afresh at `now`, keeping the shared resume stamp (no
    /// allocation: this runs before every hook call).
    pub fn arm(
        &mut self,
        timeout: std::time::Duration,
        wall_limit: std::time::Duration,
        now: Instant,
    ) {
        let ticks = timeout.as_nanos().div_ceil(super::ticker::EPOCH_TICK.as_nanos()) as u64;
        self.ticks_left = ticks.max(1);
        self.wall_deadline = now + wall_limit;
        self.yielded = false;
    }
}

impl PluginState {
    pub(super) fn new(plugin: Arc<str>, limits: Limits, shared: &capability::Shared) -> Self {
        let stderr = StderrTail::new(plugin.clone());
        let wasi = WasiCtx::builder().stderr(stderr.clone()).stdout(stderr.clone()).build();
        Self {
            http: HttpCtx::new(plugin.clone()),
            kv: KvCtx::new(plugin.clone(), shared.kv.clone()),
            metrics: MetricsCtx::new(plugin.clone(), shared.metrics.clone()),
            plugin,
            wasi,
            table: ResourceTable::new(),
            limits,
            budget: Budget::new(std::time::Duration::ZERO, std::time::Duration::ZERO),
            stderr,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
