//! What a plugin instance's `Store` carries: WASI, limits, and the messages of the call in
//! progress.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::stderr::StderrTail;
use crate::message::{RequestMsg, ResponseMsg};

/// The data of one plugin instance's store.
pub struct PluginState {
    pub(super) plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    /// When the current hook call must have returned; checked on every epoch tick.
    pub(super) deadline: Instant,
    pub(super) stderr: StderrTail,
    /// The messages of the hook call in progress; `None` between calls and during `init`.
    pub(super) call: Option<Call>,
}

/// The messages a hook call works on. They are moved into the store for the call and moved
/// back out afterwards, trap or not, so a failing plugin never loses the request.
pub(super) struct Call {
    pub request: RequestMsg,
    pub response: Option<ResponseMsg>,
}

impl PluginState {
    pub(super) fn new(plugin: Arc<str>, limits: StoreLimits) -> Self {
        let stderr = StderrTail::new(plugin.clone());
        let wasi = WasiCtx::builder().stderr(stderr.clone()).stdout(stderr.clone()).build();
        Self {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limits,
            deadline: Instant::now(),
            stderr,
            call: None,
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
