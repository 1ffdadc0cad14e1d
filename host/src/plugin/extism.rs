//! Extism plugins (`kind = "extism"`): core Wasm modules built with an Extism PDK, run by the
//! `extism` crate on the same wasmtime as components (one version in the build).
//!
//! The contract, documented for authors in docs/extism.md:
//! - the module exports `on_request` and/or `on_response`;
//! - each takes the phase's messages as JSON and returns JSON edits (see [`contract`]);
//! - the `[plugins.NAME.config]` table is its Extism config: each top-level key, strings as
//!   they are, other values as JSON text.
//!
//! Extism keeps the config and limits in the compiled plugin, so one is compiled per named
//! plugin (off the request path, through wasmtime's cache), and its instances are pooled
//! like components'. Extism calls are synchronous: each runs on tokio's blocking pool, so a
//! slow plugin holds a blocking thread, never a worker that serves other connections.

mod contract;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_bindings::exports::sluice::plugin::filter::Hooks;

use super::error::{FailureKind, Phase};
use super::hook::{Decision, prebuffer, trap_message};
use super::pool::Pool;
use super::runtime::Runtime;
use crate::capability::log::plugin_log;
use crate::config;
use crate::message::Call;

/// The Extism backend of a named plugin: compiled with its config, and its pooled
/// instances.
pub struct ExtismBackend {
    compiled: Arc<Compiled>,
    pool: Pool<Instance>,
    hooks: Hooks,
    spec: config::Plugin,
    /// How long a call may wait for an instance or a body.
    queue_timeout: Duration,
}

impl ExtismBackend {
    /// Compiles the plugin (on a blocking thread) and instantiates it once.
    pub async fn load(
        runtime: Arc<Runtime>,
        bytes: Arc<[u8]>,
        spec: config::Plugin,
        queue_timeout: Duration,
    ) -> Result<Self, String> {
        let s = spec.clone();
        let compiled = tokio::task::spawn_blocking(move || Compiled::new(&runtime, &bytes, &s))
            .await
            .map_err(|e| format!("compile task failed: {e}"))?;
        let (compiled, first, hooks) = compiled?;
        let pool = Pool::new(first, &spec, queue_timeout);
        Ok(Self { compiled: Arc::new(compiled), pool, hooks, spec, queue_timeout })
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

    /// An Extism call: the instance is made, if the pool has none to reuse, on the
    /// blocking thread that runs the call.
    pub async fn call(
        &self,
        phase: Phase,
        mut call: Box<Call>,
    ) -> (Box<Call>, Result<Decision, FailureKind>) {
        // Extism plugins get the phase's body in their input: read it before leasing.
        prebuffer(phase, &mut call, self.queue_timeout).await;
        let (idle, permit) = match self.pool.lease().await {
            Ok(lease) => lease,
            Err(kind) => return (call, Err(kind)),
        };
        let started = std::time::Instant::now();
        let (instance, result) =
            run(&self.compiled, idle, phase, &mut call, self.spec.timeout).await;
        match instance {
            Some(instance) => self.pool.checkin(instance, permit, started),
            None => drop(permit),
        }
        (call, result)
    }
}

/// A named Extism plugin, compiled with its config.
struct Compiled {
    plugin: extism::CompiledPlugin,
}

/// One Extism instance (boxed: it is large, and moves to and from the blocking pool).
type Instance = Box<extism::Plugin>;

impl Compiled {
    /// Blocking: compiles the module with the plugin's config and limits baked in, and
    /// instantiates it once to learn which hooks it exports. The instance is the pool's first.
    fn new(
        rt: &Runtime,
        bytes: &[u8],
        spec: &config::Plugin,
    ) -> Result<(Self, Instance, Hooks), String> {
        let pages = u32::try_from(rt.max_memory_bytes() / 65536).unwrap_or(u32::MAX);
        let manifest = extism::Manifest::new([extism::Wasm::data(bytes.to_vec())])
            .with_config(config_vars(&spec.config_json).into_iter())
            .with_timeout(spec.timeout)
            .with_memory_max(pages);
        let builder = extism::PluginBuilder::new(manifest)
            .with_wasi(true)
            .with_functions(log_functions(spec.name.clone()));
        let builder = match rt.extism_cache_config() {
            Some(file) => builder.with_cache_config(file),
            None => builder.with_cache_disabled(),
        };
        let plugin = builder.compile().map_err(|e| one_line(&e))?;
        let compiled = Self { plugin };
        let first = compiled.instantiate().map_err(|e| e.to_string())?;
        let mut hooks = Hooks::empty();
        if first.function_exists("on_request") {
            hooks |= Hooks::ON_REQUEST;
        }
        if first.function_exists("on_response") {
            hooks |= Hooks::ON_RESPONSE;
        }
        if hooks == Hooks::empty() {
            return Err("not a Sluice Extism plugin: it exports neither `on_request` nor \
                        `on_response` (see docs/extism.md)"
                .to_owned());
        }
        Ok((compiled, first, hooks))
    }

    /// Blocking (~0.1-0.3 ms): a new instance.
    fn instantiate(&self) -> Result<Instance, FailureKind> {
        extism::Plugin::new_from_compiled(&self.plugin)
            .map(Box::new)
            .map_err(|e| FailureKind::Instantiate(one_line(&e)))
    }
}

/// What a hook call's log lines are tagged with (Extism's host context for the call).
struct CallTags {
    route: Arc<str>,
    request_id: String,
    trace_id: u128,
}

/// Extism's `log_*` host functions, replaced so that a plugin's log lines look like any
/// plugin's: target `plugin`, tagged with the plugin, route and request id (Extism's own
/// tag them with a per-instance UUID).
fn log_functions(plugin: Arc<str>) -> Vec<extism::Function> {
    use tracing::Level;
    let levels = [
        ("log_trace", Level::TRACE),
        ("log_debug", Level::DEBUG),
        ("log_info", Level::INFO),
        ("log_warn", Level::WARN),
        ("log_error", Level::ERROR),
    ];
    levels
        .into_iter()
        .map(|(name, level)| {
            let plugin = extism::UserData::new(plugin.clone());
            extism::Function::new(name, [extism::PTR], [], plugin, move |cp, args, _, plugin| {
                let offset = args[0].i64().unwrap_or_default() as u64;
                let handle = cp.memory_handle(offset).ok_or_else(|| {
                    extism::Error::msg(format!("invalid memory offset for a log message: {offset}"))
                })?;
                let message = cp.memory_str(handle).map(str::to_owned);
                cp.memory_free(handle)?;
                let message = message?;
                let plugin = plugin.get()?;
                let plugin = plugin.lock().unwrap_or_else(|p| p.into_inner());
                match cp.host_context::<CallTags>() {
                    Ok(tags) => {
                        let (route, id) = (&tags.route, &tags.request_id);
                        plugin_log(level, &plugin, route, id, tags.trace_id, &message)
                    }
                    // Outside a hook call (during start-up): no request to tag.
                    Err(_) => plugin_log(level, &plugin, "", "", 0, &message),
                }
                Ok(())
            })
            .with_namespace("extism:host/env")
        })
        .collect()
}

/// The config table as Extism config variables.
fn config_vars(config_json: &str) -> BTreeMap<String, String> {
    let table: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(config_json).unwrap_or_default();
    table
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

/// Runs one hook call on `instance` (or on a new one when `None`), and applies the plugin's
/// output to `call`. The instance comes back only if the call succeeded: after a trap, a
/// timeout or a bad output it may be in any state, and is dropped.
async fn run(
    compiled: &Arc<Compiled>,
    instance: Option<Instance>,
    phase: Phase,
    call: &mut Call,
    timeout: Duration,
) -> (Option<Instance>, Result<Decision, FailureKind>) {
    let input = match contract::input(phase, call).await {
        Ok(input) => input,
        Err(e) => return (instance, Err(e)),
    };
    let name = match phase {
        Phase::Request => "on_request",
        Phase::Response => "on_response",
    };
    let meta = &call.request.meta;
    let tags = CallTags {
        route: meta.route.clone(),
        request_id: meta.id().to_owned(),
        trace_id: meta.trace_id,
    };
    let compiled = compiled.clone();
    let ran = tokio::task::spawn_blocking(move || {
        let mut plugin = match instance {
            Some(plugin) => plugin,
            None => match compiled.instantiate() {
                Ok(plugin) => plugin,
                Err(e) => return (None, Err(e)),
            },
        };
        let output = plugin.call_with_host_context::<&[u8], Vec<u8>, _>(name, &input, tags);
        (Some(plugin), output.map_err(|e| failure(&e, timeout)))
    })
    .await;
    let (instance, output) = match ran {
        Ok(ran) => ran,
        Err(e) => return (None, Err(FailureKind::Trap { message: e.to_string(), stderr: None })),
    };
    let result = output.and_then(|bytes| contract::apply(phase, &bytes, call));
    match result {
        Ok(decision) => (instance, Ok(decision)),
        Err(e) => (None, Err(e)),
    }
}

/// Extism reports a timeout as "timeout", running out of memory as "oom", a trap as
/// wasmtime's error (with its backtrace), and an error the plugin returned as its message.
fn failure(e: &extism::Error, timeout: Duration) -> FailureKind {
    let trap = e.downcast_ref::<wasmtime::Trap>();
    let trace = e.downcast_ref::<wasmtime::WasmBacktrace>();
    let cause = e.root_cause().to_string();
    match (trap, trace) {
        _ if cause == "timeout" => FailureKind::Timeout(timeout),
        _ if cause == "oom" => FailureKind::Trap {
            message: "out of memory (memory.grow refused)".into(),
            stderr: None,
        },
        (None, None) => FailureKind::Errored(one_line(e)),
        _ => FailureKind::Trap { message: trap_message(&cause, trace), stderr: None },
    }
}

fn one_line(e: &extism::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_become_extism_config_strings() {
        let vars = config_vars(r#"{"greeting":"hi","limit":3,"list":["a"],"t":{"k":true}}"#);
        assert_eq!(vars["greeting"], "hi");
        assert_eq!(vars["limit"], "3");
        assert_eq!(vars["list"], r#"["a"]"#);
        assert_eq!(vars["t"], r#"{"k":true}"#);
    }
}
