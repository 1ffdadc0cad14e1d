//! What a plugin instance's `Store` carries: WASI, limits, and the messages of the call in
//! progress.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::memory::Limits;
use super::stderr::StderrTail;
use crate::kv::Store;
use crate::message::{RequestMsg, ResponseMsg};
use crate::plugin_metrics::PluginMetrics;

/// The data of one plugin instance's store.
pub struct PluginState {
    pub(super) plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: Limits,
    /// The current call's budget (see [`Budget`]); checked on every epoch tick.
    pub(super) budget: Budget,
    pub(super) stderr: StderrTail,
    /// The messages of the hook call in progress; `None` between calls and during `init`.
    pub(super) call: Option<Box<Call>>,
    /// Set when the call in progress read its message's body.
    pub(super) read_body: bool,
    pub(super) kv: Arc<Store>,
    pub(super) metrics: Arc<PluginMetrics>,
    /// The counters this instance has used, by name (admitted names only, so at most the
    /// per-plugin cap of [`PluginMetrics`]).
    pub(super) counters: Vec<(Box<str>, prometheus::Counter)>,
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
        let ticks = timeout.as_nanos().div_ceil(super::ticker::EPOCH_TICK.as_nanos()) as u64;
        Budget {
            ticks_left: ticks.max(1),
            wall_deadline: Instant::now() + wall_limit,
            yielded: false,
            resumed_at: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts a call's budget afresh, keeping the shared resume stamp.
    pub fn arm(&mut self, timeout: std::time::Duration, wall_limit: std::time::Duration) {
        let resumed_at = self.resumed_at.clone();
        *self = Budget { resumed_at, ..Budget::new(timeout, wall_limit) };
    }
}

/// The messages a hook call works on. They are moved into the store for the call and moved
/// back out afterwards, trap or not, so a failing plugin never loses the request.
pub(super) struct Call {
    pub request: RequestMsg,
    pub response: Option<ResponseMsg>,
}

impl PluginState {
    pub(super) fn new(
        plugin: Arc<str>,
        limits: Limits,
        kv: Arc<Store>,
        metrics: Arc<PluginMetrics>,
    ) -> Self {
        let stderr = StderrTail::new(plugin.clone());
        let wasi = WasiCtx::builder().stderr(stderr.clone()).stdout(stderr.clone()).build();
        Self {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limits,
            budget: Budget::new(std::time::Duration::ZERO, std::time::Duration::ZERO),
            stderr,
            call: None,
            read_body: false,
            kv,
            metrics,
            counters: Vec::new(),
        }
    }

    /// The request of the call in progress. Host functions are only reachable from a hook
    /// call, so `None` means a broken invariant: trap rather than guess.
    pub(super) fn request(&mut self) -> wasmtime::Result<&mut RequestMsg> {
        match &mut self.call {
            Some(call) => Ok(&mut call.request),
            None => Err(wasmtime::format_err!("no request outside a hook call")),
        }
    }

    pub(super) fn response(&mut self) -> wasmtime::Result<&mut ResponseMsg> {
        match self.call.as_mut().and_then(|c| c.response.as_mut()) {
            Some(response) => Ok(response),
            None => Err(wasmtime::format_err!("no response outside the response phase")),
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
