//! A named plugin from the config: a module, its config, and the pool of instances that
//! serve its hook calls (see [`Pool`]). An instance that traps, times out or returns
//! something invalid is dropped, never reused; its pool slot is recycled by wasmtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_bindings::exports::sluice::plugin::filter::{Action, Hooks, LocalResponse};
use sluice_bindings::{Plugin as World, PluginPre};
use wasmtime::component::Resource;
use wasmtime::{Store, Trap, WasmBacktrace};

use super::error::{FailureKind, Phase, PluginError};
use super::extism;
use super::module::{Code, Module};
use super::pool::{Permit, Pool};
use super::rollout::{Rollout, Which};
use super::runtime::Runtime;
use super::state::{Call, PluginState};
use crate::config;
use crate::message::{self, Body, RequestMsg, ResponseMsg};

/// A component instance with its own store.
struct Instance {
    store: Store<PluginState>,
    world: World,
}

/// How this plugin's instances are made, and the pool they live in.
enum Backend {
    /// From the module's pre-linked component.
    Component { pre: PluginPre<PluginState>, pool: Pool<Instance> },
    /// From the Extism plugin compiled with this plugin's config.
    Extism { compiled: Arc<extism::Compiled>, pool: Pool<extism::Instance> },
}

/// What the request phase decided.
pub enum Decision {
    Continue,
    Respond(ResponseMsg),
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Failed(String),
    #[error("plugin rejected its config: {0}")]
    ConfigRejected(String),
}

pub struct NamedPlugin {
    pub spec: config::Plugin,
    pub module: Arc<Module>,
    backend: Backend,
    hooks: Hooks,
    runtime: Arc<Runtime>,
    /// How long a call may wait for an instance, and the wall-clock bound of a call.
    queue_timeout: Duration,
    /// A new module version serving part of the traffic (`[plugins.NAME.rollout]`).
    pub rollout: Option<Box<Rollout>>,
    /// Whether this plugin has read the request (0) or response (1) body in that phase. From
    /// then on the host reads that body whole before it takes an instance, so a client
    /// trickling its body in holds a connection, never an instance other requests need.
    reads_body: [AtomicBool; 2],
}

impl NamedPlugin {
    /// Instantiates the plugin once and runs `init` with its config, so a bad config is
    /// reported now, at load, and never at request time. With a rollout, `candidate` is the
    /// new version's module, loaded the same way.
    pub async fn load(
        runtime: Arc<Runtime>,
        module: Arc<Module>,
        spec: config::Plugin,
        queue_timeout: Duration,
        candidate: Option<Arc<Module>>,
    ) -> Result<Self, LoadError> {
        let rollout = match (&spec.rollout, candidate) {
            (Some(r), Some(module)) => {
                let cspec =
                    config::Plugin { module: r.module.clone(), rollout: None, ..spec.clone() };
                let new = Self::load_one(runtime.clone(), module, cspec, queue_timeout).await?;
                Some(Box::new(Rollout::new(r.clone(), new)))
            }
            _ => None,
        };
        let mut plugin = Self::load_one(runtime, module, spec, queue_timeout).await?;
        plugin.rollout = rollout;
        Ok(plugin)
    }

    async fn load_one(
        runtime: Arc<Runtime>,
        module: Arc<Module>,
        spec: config::Plugin,
        queue_timeout: Duration,
    ) -> Result<Self, LoadError> {
        let (backend, hooks) = match &module.code {
            Code::Component(pre) => {
                let (first, hooks) =
                    instantiate(&runtime, pre, &spec).await.map_err(|e| match e {
                        InitError::Rejected(msg) => LoadError::ConfigRejected(msg),
                        InitError::Failed(kind) => LoadError::Failed(kind.to_string()),
                    })?;
                let pool = Pool::new(first, &spec, queue_timeout);
                (Backend::Component { pre: pre.clone(), pool }, hooks)
            }
            Code::Extism(bytes) => {
                let (rt, bytes, s) = (runtime.clone(), bytes.clone(), spec.clone());
                let compiled =
                    tokio::task::spawn_blocking(move || extism::Compiled::new(&rt, &bytes, &s))
                        .await
                        .map_err(|e| LoadError::Failed(format!("compile task failed: {e}")))?;
                let (compiled, first, hooks) = compiled.map_err(LoadError::Failed)?;
                let pool = Pool::new(first, &spec, queue_timeout);
                (Backend::Extism { compiled: Arc::new(compiled), pool }, hooks)
            }
        };
        Ok(Self {
            spec,
            module,
            backend,
            hooks,
            runtime,
            queue_timeout,
            rollout: None,
            reads_body: Default::default(),
        })
    }

    /// The phases this plugin takes part in, counting a version being rolled out.
    fn all_hooks(&self) -> Hooks {
        match &self.rollout {
            Some(r) => self.hooks | r.candidate.hooks,
            None => self.hooks,
        }
    }

    pub fn has_request_hook(&self) -> bool {
        self.all_hooks().contains(Hooks::ON_REQUEST)
    }

    pub fn has_response_hook(&self) -> bool {
        self.all_hooks().contains(Hooks::ON_RESPONSE)
    }

    /// Runs the request phase. The request is handed back whatever happens.
    pub async fn on_request(&self, req: RequestMsg) -> (RequestMsg, Result<Decision, PluginError>) {
        let call = Box::new(Call { request: req, response: None });
        let (call, result) = self.run(Phase::Request, call).await;
        (call.request, result)
    }

    /// Runs one phase on the messages in `call`, which is handed back whatever happens, on
    /// the version that serves this request (recording the outcome when a rollout is
    /// running). The messages stay in one box for a whole chain: every layer (futures, the
    /// store, the way back) moves a pointer, not the messages.
    pub(super) async fn run(
        &self,
        phase: Phase,
        call: Box<Call>,
    ) -> (Box<Call>, Result<Decision, PluginError>) {
        let Some(rollout) = &self.rollout else { return self.call(phase, call).await };
        let which = rollout.pick(&call.request);
        let started = Instant::now();
        let (call, result) = match which {
            Which::Stable => self.call(phase, call).await,
            Which::Candidate => rollout.candidate.call(phase, call).await,
        };
        rollout.record(&self.spec.name, which, started.elapsed(), result.is_err());
        (call, result)
    }

    async fn call(
        &self,
        phase: Phase,
        mut call: Box<Call>,
    ) -> (Box<Call>, Result<Decision, PluginError>) {
        let hook = match phase {
            Phase::Request => Hooks::ON_REQUEST,
            Phase::Response => Hooks::ON_RESPONSE,
        };
        if !self.hooks.contains(hook) {
            // A version being rolled out may take part in a phase this one does not.
            return (call, Ok(Decision::Continue));
        }
        let result = match &self.backend {
            Backend::Component { pre, pool } => {
                let (c, result) = self.call_component(pre, pool, phase, call).await;
                call = c;
                result
            }
            Backend::Extism { compiled, pool } => {
                self.call_extism(compiled, pool, phase, &mut call).await
            }
        };
        let fail = |kind| PluginError { plugin: self.spec.name.clone(), phase, kind };
        (call, result.map_err(fail))
    }

    async fn call_component(
        &self,
        pre: &PluginPre<PluginState>,
        pool: &Pool<Instance>,
        phase: Phase,
        call: Box<Call>,
    ) -> (Box<Call>, Result<Decision, FailureKind>) {
        let mut call = call;
        let reads_body = &self.reads_body[phase as usize];
        if reads_body.load(Ordering::Relaxed) {
            self.prebuffer(phase, &mut call).await;
        }
        let (mut instance, permit) = match self.checkout(pre, pool).await {
            Ok(lease) => lease,
            Err(kind) => return (call, Err(kind)),
        };
        let _ticking = self.runtime.ticking();
        let store = &mut instance.store;
        store.data_mut().call = Some(call);
        arm_deadline(store, self.spec.timeout, self.queue_timeout);
        let filter = instance.world.sluice_plugin_filter();
        let outcome = match phase {
            Phase::Request => {
                let req = Resource::new_borrow(0);
                filter.call_on_request(&mut *store, req).await.map(Some)
            }
            Phase::Response => {
                let (req, resp) = (Resource::new_borrow(0), Resource::new_borrow(0));
                filter.call_on_response(&mut *store, req, resp).await.map(|()| None)
            }
        };
        let call = store.data_mut().call.take().expect("the call is put back by no one else");
        if std::mem::take(&mut store.data_mut().read_body) {
            reads_body.store(true, Ordering::Relaxed);
        }
        let result = match outcome {
            Ok(None) => Ok(Decision::Continue),
            Ok(Some(Action::Continue)) => Ok(Decision::Continue),
            Ok(Some(Action::Respond(local))) => local_response(local),
            Err(e) => Err(classify(&e, store, self.spec.timeout)),
        };
        match &result {
            Ok(_) => pool.checkin(instance, permit),
            // The instance may be in any state now: drop it, never reuse it.
            Err(_) => drop((instance, permit)),
        }
        (call, result)
    }

    /// Reads the phase's body whole (up to the route's limit, within the request timeout)
    /// before an instance is taken. A failure stays in the body, for the plugin to see
    /// when it asks.
    async fn prebuffer(&self, phase: Phase, call: &mut Call) {
        let limit = call.request.meta.max_body_bytes;
        let body = match phase {
            Phase::Request => &mut call.request.body,
            Phase::Response => match &mut call.response {
                Some(r) => &mut r.body,
                None => return,
            },
        };
        if body.is_buffered() {
            return;
        }
        let read = tokio::time::timeout(self.queue_timeout, body.buffer(limit)).await;
        if read.is_err() {
            *body = Body::Broken(message::BodyError::TimedOut(self.queue_timeout));
        }
    }

    /// An Extism call: the instance is made, if the pool has none to reuse, on the blocking
    /// thread that runs the call.
    async fn call_extism(
        &self,
        compiled: &Arc<extism::Compiled>,
        pool: &Pool<extism::Instance>,
        phase: Phase,
        call: &mut Call,
    ) -> Result<Decision, FailureKind> {
        // Extism plugins get the phase's body in their input: read it before leasing.
        self.prebuffer(phase, call).await;
        let (idle, permit) = pool.lease().await?;
        let (instance, result) = extism::call(compiled, idle, phase, call, self.spec.timeout).await;
        match instance {
            Some(instance) => pool.checkin(instance, permit),
            None => drop(permit),
        }
        result
    }

    async fn checkout(
        &self,
        pre: &PluginPre<PluginState>,
        pool: &Pool<Instance>,
    ) -> Result<(Instance, Permit), FailureKind> {
        let (idle, permit) = pool.lease().await?;
        if let Some(instance) = idle {
            return Ok((instance, permit));
        }
        match instantiate(&self.runtime, pre, &self.spec).await {
            Ok((instance, _)) => Ok((instance, permit)),
            Err(InitError::Failed(kind)) => Err(kind),
            // The same config was accepted at load; refusing it now is a plugin bug.
            Err(InitError::Rejected(msg)) => Err(FailureKind::BadReturn(format!(
                "init rejected the config it accepted at load: {msg}"
            ))),
        }
    }

    /// Idle instances right now (for tests and metrics).
    pub fn idle_instances(&self) -> usize {
        match &self.backend {
            Backend::Component { pool, .. } => pool.idle(),
            Backend::Extism { pool, .. } => pool.idle(),
        }
    }
}

enum InitError {
    Rejected(String),
    Failed(FailureKind),
}

/// A new instance, `init`ialised with the plugin's config.
async fn instantiate(
    runtime: &Runtime,
    pre: &PluginPre<PluginState>,
    spec: &config::Plugin,
) -> Result<(Instance, Hooks), InitError> {
    let _ticking = runtime.ticking();
    let mut store = runtime.new_store(spec.name.clone());
    // `init` may parse keys or compile patterns: give it ten hook budgets.
    let budget = spec.timeout * 10;
    arm_deadline(&mut store, budget, budget * 10);
    let world = match pre.instantiate_async(&mut store).await {
        Ok(world) => world,
        Err(e) => {
            let mut why = format!("{e:#}");
            if why.contains("concurrent limit") {
                // Every plugin's instances share the pool's slots.
                why.push_str(" (runtime.max_instances)");
            }
            return Err(InitError::Failed(FailureKind::Instantiate(why)));
        }
    };
    let init = world.sluice_plugin_filter().call_init(&mut store, &spec.config_json).await;
    match init {
        Ok(Ok(hooks)) => Ok((Instance { store, world }, hooks)),
        Ok(Err(msg)) => Err(InitError::Rejected(msg)),
        Err(e) => Err(InitError::Failed(classify(&e, &mut store, budget))),
    }
}

/// `budget` of running time, and at most `wall_limit` in all (waiting included).
fn arm_deadline(store: &mut Store<PluginState>, budget: Duration, wall_limit: Duration) {
    store.data_mut().budget.arm(budget, wall_limit.max(budget));
    store.set_epoch_deadline(1);
}

/// Names what went wrong, on one line: the root cause, the plugin's own function names
/// from the backtrace (where the module kept its name section), and the plugin's last
/// stderr lines (a Rust panic message lands there).
fn classify(e: &wasmtime::Error, store: &mut Store<PluginState>, budget: Duration) -> FailureKind {
    let stderr = store.data().stderr.take_recent();
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return FailureKind::Timeout(budget);
    }
    if let Some(closed) = e.downcast_ref::<crate::kv::StoreClosed>() {
        return FailureKind::StoreClosed(closed.to_string());
    }
    let cause = e.chain().last().map_or_else(|| e.to_string(), |c| c.to_string());
    FailureKind::Trap { message: trap_message(&cause, e.downcast_ref()), stderr }
}

/// `cause at plugin::frame <- plugin::caller`, on one line.
pub(super) fn trap_message(cause: &str, trace: Option<&WasmBacktrace>) -> String {
    let mut message = cause.replace('\n', " ");
    let names = trace.map(plugin_frames).unwrap_or_default();
    if !names.is_empty() {
        const SHOWN: usize = 4;
        message.push_str(" at ");
        message.push_str(&names[..names.len().min(SHOWN)].join(" <- "));
        if names.len() > SHOWN {
            message.push_str(&format!(" <- ... ({} more)", names.len() - SHOWN));
        }
    }
    message
}

/// The backtrace's function names, demangled, innermost first, without the language
/// runtime's own frames (panic and abort machinery), which say nothing about the plugin.
fn plugin_frames(trace: &WasmBacktrace) -> Vec<String> {
    const RUNTIME: [&str; 8] =
        ["std::", "core::", "alloc::", "__rustc", "__rust_", "abort", "rust_", "runtime."];
    let names: Vec<String> = trace
        .frames()
        .iter()
        .filter_map(|f| f.func_name())
        .map(|n| format!("{:#}", rustc_demangle::demangle(n)))
        .collect();
    let own: Vec<String> =
        names.iter().filter(|n| !RUNTIME.iter().any(|r| n.starts_with(r))).cloned().collect();
    if own.is_empty() { names } else { own }
}

/// Turns a plugin's local reply into a response, refusing what HTTP would not allow.
pub(super) fn local_response(local: LocalResponse) -> Result<Decision, FailureKind> {
    let bad = |what: String| FailureKind::BadReturn(what);
    let status = http::StatusCode::from_u16(local.status)
        .map_err(|_| bad(format!("local response status {} is not 100-999", local.status)))?;
    let mut builder = http::Response::builder().status(status);
    let headers = builder.headers_mut().expect("a fresh builder has headers");
    for (name, value) in local.headers {
        let n = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(format!("local response header name {name:?} is invalid")))?;
        let v = http::HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| bad(format!("local response header {name:?} has an invalid value")))?;
        if !message::is_host_owned_header(&n) {
            headers.append(n, v);
        }
    }
    message::set_fixed_length(headers, local.body.len());
    let (parts, ()) = builder.body(()).expect("status and headers were checked").into_parts();
    Ok(Decision::Respond(ResponseMsg { parts, body: Body::Full(local.body.into()) }))
}
