//! The component backend: a module's pre-linked component and the pool of its instances.
//! A call takes an instance (a fresh one if none is idle), arms its deadline, runs the
//! hook, and classifies a failure. An instance that traps, times out or returns something
//! invalid is dropped, never reused; its pool slot is recycled by wasmtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_bindings::exports::sluice::plugin::filter::{self, Action, Hooks};
use sluice_bindings::exports::sluice::plugin::handler;
use wasmtime::component::{InstancePre, Resource};
use wasmtime::{Store, Trap};

use super::error::{FailureKind, Phase};
use super::hook::{Decision, local_response, prebuffer, trap_message};
use super::pool::{Permit, Pool};
use super::runtime::Runtime;
use super::state::PluginState;
use crate::capability::kv::StoreClosed;
use crate::config;
use crate::message::Call;

/// A component, pre-linked, with its hooks found: the export of whichever world it was built
/// for.
#[derive(Clone)]
pub struct ComponentPre {
    pre: InstancePre<PluginState>,
    exports: Exports,
}

#[derive(Clone)]
enum Exports {
    /// World `plugin`: hooks given the messages as borrowed resource handles.
    Filter(filter::GuestIndices),
    /// World `handler-plugin`: hooks without handles (the messages are the call's).
    Handler(handler::GuestIndices),
}

impl ComponentPre {
    /// Finds the hooks `pre`'s component exports (`filter` or `handler`, matched by semver).
    pub fn new(pre: InstancePre<PluginState>) -> wasmtime::Result<Self> {
        let exports = match handler::GuestIndices::new(&pre) {
            Ok(handler) => Exports::Handler(handler),
            Err(_) => Exports::Filter(filter::GuestIndices::new(&pre)?),
        };
        Ok(Self { pre, exports })
    }
}

/// A component instance with its own store.
pub struct Instance {
    store: Store<PluginState>,
    hooks: Guest,
}

/// An instance's hooks, ready to call.
enum Guest {
    Filter(filter::Guest),
    Handler(handler::Guest),
}

pub struct ComponentBackend {
    pre: ComponentPre,
    pool: Pool<Instance>,
    hooks: Hooks,
    runtime: Arc<Runtime>,
    spec: config::Plugin,
    /// How long a call may wait for an instance, and the wall-clock bound of a call.
    queue_timeout: Duration,
    /// Whether this plugin has read the request (0) or response (1) body in that phase. From
    /// then on the host reads that body whole before it takes an instance.
    reads_body: [AtomicBool; 2],
}

/// Why a new instance could not be made ready.
pub enum InitError {
    /// `init` refused the plugin's config.
    Rejected(String),
    Failed(FailureKind),
}

impl ComponentBackend {
    /// Instantiates the plugin once and runs `init` with its config, so a bad config is
    /// reported now, at load; the instance is the pool's first.
    pub async fn load(
        runtime: Arc<Runtime>,
        pre: ComponentPre,
        spec: config::Plugin,
        queue_timeout: Duration,
    ) -> Result<Self, InitError> {
        let (first, hooks) = instantiate(&runtime, &pre, &spec).await?;
        let pool = Pool::new(first, &spec, queue_timeout);
        Ok(Self { pre, pool, hooks, runtime, spec, queue_timeout, reads_body: Default::default() })
    }

    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    pub fn idle_instances(&self) -> usize {
        self.pool.idle()
    }

    pub fn busy_instances(&self) -> usize {
        self.pool.busy()
    }

    pub async fn call(
        &self,
        phase: Phase,
        mut call: Box<Call>,
    ) -> (Box<Call>, Result<Decision, FailureKind>) {
        let reads_body = &self.reads_body[phase as usize];
        if reads_body.load(Ordering::Relaxed) {
            prebuffer(phase, &mut call, self.queue_timeout).await;
        }
        let (mut instance, permit) = match self.checkout().await {
            Ok(lease) => lease,
            Err(kind) => return (call, Err(kind)),
        };
        let _ticking = self.runtime.ticking();
        let store = &mut instance.store;
        store.data_mut().http.call = Some(call);
        let started = arm_deadline(store, self.spec.timeout, self.queue_timeout);
        let outcome = match (&instance.hooks, phase) {
            (Guest::Handler(hooks), Phase::Request) => {
                hooks.call_on_request(&mut *store).await.map(|action| Some(filter_action(action)))
            }
            (Guest::Handler(hooks), Phase::Response) => {
                hooks.call_on_response(&mut *store).await.map(|()| None)
            }
            (Guest::Filter(hooks), Phase::Request) => {
                let req = Resource::new_borrow(0);
                hooks.call_on_request(&mut *store, req).await.map(Some)
            }
            (Guest::Filter(hooks), Phase::Response) => {
                let (req, resp) = (Resource::new_borrow(0), Resource::new_borrow(0));
                hooks.call_on_response(&mut *store, req, resp).await.map(|()| None)
            }
        };
        let http = &mut store.data_mut().http;
        let call = http.call.take().expect("the call is put back by no one else");
        if std::mem::take(&mut http.read_body) {
            reads_body.store(true, Ordering::Relaxed);
        }
        let result = match outcome {
            Ok(None) => Ok(Decision::Continue),
            Ok(Some(Action::Continue)) => Ok(Decision::Continue),
            Ok(Some(Action::Respond(local))) => local_response(local),
            Err(e) => Err(classify(&e, store, self.spec.timeout)),
        };
        match &result {
            Ok(_) => self.pool.checkin(instance, permit, started),
            // The instance may be in any state now: drop it, never reuse it.
            Err(_) => drop((instance, permit)),
        }
        (call, result)
    }

    async fn checkout(&self) -> Result<(Instance, Permit), FailureKind> {
        let (idle, permit) = self.pool.lease().await?;
        if let Some(instance) = idle {
            return Ok((instance, permit));
        }
        match instantiate(&self.runtime, &self.pre, &self.spec).await {
            Ok((instance, _)) => Ok((instance, permit)),
            Err(InitError::Failed(kind)) => Err(kind),
            // The same config was accepted at load; refusing it now is a plugin bug.
            Err(InitError::Rejected(msg)) => Err(FailureKind::BadReturn(format!(
                "init rejected the config it accepted at load: {msg}"
            ))),
        }
    }
}

/// A new instance, `init`ialised with the plugin's config.
async fn instantiate(
    runtime: &Runtime,
    pre: &ComponentPre,
    spec: &config::Plugin,
) -> Result<(Instance, Hooks), InitError> {
    let _ticking = runtime.ticking();
    let mut store = runtime.new_store(pre.pre.engine(), spec.name.clone());
    // `init` may parse keys or compile patterns: give it ten hook budgets.
    let budget = spec.timeout * 10;
    arm_deadline(&mut store, budget, budget * 10);
    let made = async {
        let instance = pre.pre.instantiate_async(&mut store).await?;
        Ok::<_, wasmtime::Error>(match &pre.exports {
            Exports::Filter(indices) => Guest::Filter(indices.load(&mut store, &instance)?),
            Exports::Handler(indices) => Guest::Handler(indices.load(&mut store, &instance)?),
        })
    };
    let hooks = match made.await {
        Ok(hooks) => hooks,
        Err(e) => {
            let mut why = format!("{e:#}");
            if why.contains("concurrent limit") {
                // Every plugin's instances share the pool's slots.
                why.push_str(" (runtime.max_instances)");
            }
            return Err(InitError::Failed(FailureKind::Instantiate(why)));
        }
    };
    let init = match &hooks {
        Guest::Filter(guest) => guest.call_init(&mut store, &spec.config_json).await,
        Guest::Handler(guest) => {
            let init = guest.call_init(&mut store, &spec.config_json).await;
            init.map(|r| r.map(filter_hooks))
        }
    };
    match init {
        Ok(Ok(phases)) => Ok((Instance { store, hooks }, phases)),
        Ok(Err(msg)) => Err(InitError::Rejected(msg)),
        Err(e) => Err(InitError::Failed(classify(&e, &mut store, budget))),
    }
}

/// A `handler`'s phases as the host keeps them (the two worlds' flags mean the same).
fn filter_hooks(hooks: handler::Hooks) -> Hooks {
    let mut phases = Hooks::empty();
    if hooks.contains(handler::Hooks::ON_REQUEST) {
        phases |= Hooks::ON_REQUEST;
    }
    if hooks.contains(handler::Hooks::ON_RESPONSE) {
        phases |= Hooks::ON_RESPONSE;
    }
    phases
}

/// A `handler`'s decision as the host reads it (the two worlds' actions mean the same).
fn filter_action(action: handler::Action) -> Action {
    match action {
        handler::Action::Continue => Action::Continue,
        handler::Action::Respond(r) => Action::Respond(filter::LocalResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }),
    }
}

/// `budget` of running time, and at most `wall_limit` in all (waiting included), from now;
/// returns now (one clock read a call: the pool keeps it as the instance's last use).
fn arm_deadline(store: &mut Store<PluginState>, budget: Duration, wall_limit: Duration) -> Instant {
    let now = Instant::now();
    store.data_mut().budget.arm(budget, wall_limit.max(budget), now);
    store.set_epoch_deadline(1);
    now
}

/// Names what went wrong, on one line: the root cause, the plugin's own function names
/// from the backtrace (where the module kept its name section), and the plugin's last
/// stderr lines (a Rust panic message lands there).
fn classify(e: &wasmtime::Error, store: &mut Store<PluginState>, budget: Duration) -> FailureKind {
    let stderr = store.data().stderr.take_recent();
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return FailureKind::Timeout(budget);
    }
    if let Some(closed) = e.downcast_ref::<StoreClosed>() {
        return FailureKind::StoreClosed(closed.to_string());
    }
    let cause = e.chain().last().map_or_else(|| e.to_string(), |c| c.to_string());
    FailureKind::Trap { message: trap_message(&cause, e.downcast_ref()), stderr }
}
