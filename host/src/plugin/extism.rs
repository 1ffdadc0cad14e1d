//! Extism plugins (`kind = "extism"`): core Wasm modules built with an Extism PDK, run by the
//! `extism` crate on the same wasmtime as components (one version in the build).
//!
//! The contract, documented for authors in docs/extism.md:
//! - the module exports `on_request` and/or `on_response`;
//! - each takes the phase's messages as JSON ([`Input`]) and returns JSON edits ([`Output`]),
//!   or nothing at all to let the message go on unchanged;
//! - the `[plugins.NAME.config]` table is its Extism config: each top-level key, strings as
//!   they are, other values as JSON text.
//!
//! Extism keeps the config and limits in the compiled plugin, so one is compiled per named
//! plugin (off the request path, through wasmtime's cache), and its instances are pooled by
//! [`super::NamedPlugin`] like components'. Extism calls are synchronous: each runs on tokio's
//! blocking pool, so a slow plugin holds a blocking thread, never a worker that serves other
//! connections.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use sluice_bindings::exports::sluice::plugin::filter::{Hooks, LocalResponse};

use super::error::{FailureKind, Phase};
use super::host_api::{
    plugin_log, remove as remove_header, replace_path_and_query, set as set_header,
};
use super::named::{Decision, local_response, trap_message};
use super::runtime::Runtime;
use super::state::Call;
use crate::config;
use crate::message::{self, Body, BodyError};

/// A named Extism plugin, compiled with its config.
pub(super) struct Compiled {
    plugin: extism::CompiledPlugin,
}

/// One Extism instance (boxed: it is large, and moves to and from the blocking pool).
pub(super) type Instance = Box<extism::Plugin>;

impl Compiled {
    /// Blocking: compiles the module with the plugin's config and limits baked in, and
    /// instantiates it once to learn which hooks it exports. The instance is the pool's first.
    pub fn new(
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
    pub fn instantiate(&self) -> Result<Instance, FailureKind> {
        extism::Plugin::new_from_compiled(&self.plugin)
            .map(Box::new)
            .map_err(|e| FailureKind::Instantiate(one_line(&e)))
    }
}

/// What a hook call's log lines are tagged with (Extism's host context for the call).
struct CallTags {
    route: Arc<str>,
    request_id: String,
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
                    Ok(tags) => plugin_log(level, &plugin, &tags.route, &tags.request_id, &message),
                    // Outside a hook call (during start-up): no request to tag.
                    Err(_) => plugin_log(level, &plugin, "", "", &message),
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
pub(super) async fn call(
    compiled: &Arc<Compiled>,
    instance: Option<Instance>,
    phase: Phase,
    call: &mut Call,
    timeout: Duration,
) -> (Option<Instance>, Result<Decision, FailureKind>) {
    let input = match input(phase, call).await {
        Ok(input) => input,
        Err(e) => return (instance, Err(e)),
    };
    let name = match phase {
        Phase::Request => "on_request",
        Phase::Response => "on_response",
    };
    let meta = &call.request.meta;
    let tags = CallTags { route: meta.route.clone(), request_id: meta.id().to_owned() };
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
    let result = output.and_then(|bytes| apply(phase, &bytes, call));
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

/// What a hook gets: the phase, the request, and in `on_response` the response.
#[derive(Serialize)]
struct Input<'a> {
    phase: &'static str,
    request: RequestIn<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<ResponseIn<'a>>,
}

#[derive(Serialize)]
struct RequestIn<'a> {
    id: &'a str,
    route: &'a str,
    client_ip: String,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    params: BTreeMap<&'a str, &'a str>,
    headers: Vec<(&'a str, Cow<'a, str>)>,
    /// Only in the request phase: by the response phase the body has gone upstream.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    body: Option<BodyIn<'a>>,
}

#[derive(Serialize)]
struct ResponseIn<'a> {
    status: u16,
    headers: Vec<(&'a str, Cow<'a, str>)>,
    #[serde(flatten)]
    body: BodyIn<'a>,
}

/// `body` as text when it is UTF-8, else `body_base64`; both null when there is none to
/// give (`body_error` says why).
#[derive(Serialize)]
struct BodyIn<'a> {
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_error: Option<String>,
}

/// The plugin's edits. Every field is optional; no output at all, `{}` or `null` leave the
/// message as it was.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Output {
    /// Request phase: answer the client now; later plugins and the upstream are skipped.
    respond: Option<Respond>,
    /// Headers to set on the phase's message (request or response), replacing any values.
    #[serde(default)]
    set_headers: BTreeMap<String, String>,
    #[serde(default)]
    remove_headers: Vec<String>,
    /// Request phase: the new path, with its query if any (`/v2/users?id=1`).
    path: Option<String>,
    /// Request phase: the new method.
    method: Option<String>,
    /// Response phase: the new status.
    status: Option<u16>,
    /// The new body of the phase's message, as text or as base64.
    body: Option<String>,
    body_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Respond {
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    body_base64: Option<String>,
}

async fn input(phase: Phase, call: &mut Call) -> Result<Vec<u8>, FailureKind> {
    let limit = call.request.meta.max_body_bytes;
    let request_body = match phase {
        Phase::Request => Some(buffer(&mut call.request.body, limit).await),
        Phase::Response => None,
    };
    let response_body = match (&mut call.response, phase) {
        (Some(resp), Phase::Response) => Some(buffer(&mut resp.body, limit).await),
        _ => None,
    };
    let req = &call.request;
    let request = RequestIn {
        id: req.meta.id(),
        route: &req.meta.route,
        client_ip: req.meta.client_ip_text().to_owned(),
        method: req.parts.method.as_str(),
        path: req.parts.uri.path(),
        query: req.parts.uri.query(),
        params: req.meta.params.iter().map(|(k, v)| (&**k, v.as_str())).collect(),
        headers: headers_in(&req.parts.headers),
        body: request_body.as_ref().map(body_in),
    };
    let response = match (&call.response, &response_body) {
        (Some(resp), Some(body)) => Some(ResponseIn {
            status: resp.parts.status.as_u16(),
            headers: headers_in(&resp.parts.headers),
            body: body_in(body),
        }),
        _ => None,
    };
    let phase = match phase {
        Phase::Request => "request",
        Phase::Response => "response",
    };
    serde_json::to_vec(&Input { phase, request, response }).map_err(|e| FailureKind::Trap {
        message: format!("encoding the input: {e}"),
        stderr: None,
    })
}

/// The body, buffered up to the route's limit; a larger body is left streaming, untouched, a
/// failed one is never sent on, and the plugin is told why it got none.
async fn buffer(body: &mut Body, limit: u64) -> Result<bytes::Bytes, String> {
    match body.buffer(limit).await {
        Ok(bytes) => Ok(bytes.clone()),
        Err(BodyError::TooLarge(limit)) => Err(format!("larger than max_body_bytes ({limit})")),
        Err(BodyError::ReadFailed(why)) => Err(format!("cannot be read: {why}")),
        Err(e @ BodyError::TimedOut(_)) => Err(format!("cannot be read: {e}")),
    }
}

fn body_in(body: &Result<bytes::Bytes, String>) -> BodyIn<'_> {
    match body {
        Ok(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => BodyIn { body: Some(text), body_base64: None, body_error: None },
            Err(_) => {
                BodyIn { body: None, body_base64: Some(BASE64.encode(bytes)), body_error: None }
            }
        },
        Err(why) => BodyIn { body: None, body_base64: None, body_error: Some(why.clone()) },
    }
}

fn headers_in(headers: &http::HeaderMap) -> Vec<(&str, Cow<'_, str>)> {
    headers.iter().map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes()))).collect()
}

/// Applies the plugin's output to the phase's message, refusing what the phase or HTTP
/// would not allow (as a failed call: nothing is half-applied to the client's response).
fn apply(phase: Phase, output: &[u8], call: &mut Call) -> Result<Decision, FailureKind> {
    let bad = |what: String| FailureKind::BadReturn(what);
    let trimmed = output.trim_ascii();
    let out: Output = match trimmed {
        b"" | b"null" => Output::default(),
        json => serde_json::from_slice(json)
            .map_err(|e| bad(format!("output is not the JSON Sluice expects: {e}")))?,
    };
    let body = body_out(out.body, out.body_base64, "")?;
    match phase {
        Phase::Request => {
            if out.status.is_some() {
                return Err(bad("`status` is for on_response; use `respond` in on_request".into()));
            }
            if let Some(respond) = out.respond {
                let body = body_out(respond.body, respond.body_base64, "respond.")?;
                let local = LocalResponse {
                    status: respond.status,
                    headers: respond.headers.into_iter().collect(),
                    body: body.unwrap_or_default(),
                };
                return local_response(local);
            }
            let req = &mut call.request;
            edit_headers(&mut req.parts.headers, &out.set_headers, &out.remove_headers)?;
            if let Some(path) = out.path {
                let refused = || bad(format!("`path` {path:?} is not an absolute path"));
                if !path.starts_with('/') {
                    return Err(refused());
                }
                replace_path_and_query(&mut req.parts.uri, path.clone()).map_err(|_| refused())?;
            }
            if let Some(method) = out.method {
                req.parts.method = http::Method::from_bytes(method.as_bytes())
                    .map_err(|_| bad(format!("`method` {method:?} is not a method")))?;
            }
            if let Some(body) = body {
                message::set_fixed_length(&mut req.parts.headers, body.len());
                req.body = Body::Full(body.into());
            }
        }
        Phase::Response => {
            for (field, set) in [
                ("respond", out.respond.is_some()),
                ("path", out.path.is_some()),
                ("method", out.method.is_some()),
            ] {
                if set {
                    return Err(bad(format!("`{field}` is for on_request")));
                }
            }
            let resp = call.response.as_mut().expect("the response phase has a response");
            edit_headers(&mut resp.parts.headers, &out.set_headers, &out.remove_headers)?;
            if let Some(status) = out.status {
                resp.parts.status = http::StatusCode::from_u16(status)
                    .map_err(|_| bad(format!("`status` {status} is not 100-999")))?;
            }
            if let Some(body) = body {
                message::set_fixed_length(&mut resp.parts.headers, body.len());
                resp.body = Body::Full(body.into());
            }
        }
    }
    Ok(Decision::Continue)
}

fn body_out(
    text: Option<String>,
    base64: Option<String>,
    at: &str,
) -> Result<Option<Vec<u8>>, FailureKind> {
    match (text, base64) {
        (Some(_), Some(_)) => {
            Err(FailureKind::BadReturn(format!("set `{at}body` or `{at}body_base64`, not both")))
        }
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(b64)) => BASE64
            .decode(b64.as_bytes())
            .map(Some)
            .map_err(|e| FailureKind::BadReturn(format!("`{at}body_base64` is not base64: {e}"))),
        (None, None) => Ok(None),
    }
}

fn edit_headers(
    headers: &mut http::HeaderMap,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Result<(), FailureKind> {
    for name in remove {
        remove_header(headers, name)
            .map_err(|_| FailureKind::BadReturn(format!("cannot remove header {name:?}")))?;
    }
    for (name, value) in set {
        set_header(headers, name, value, false)
            .map_err(|_| FailureKind::BadReturn(format!("cannot set header {name:?}")))?;
    }
    Ok(())
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

    #[test]
    fn bodies_are_text_or_base64_never_both() {
        assert!(body_out(Some("a".into()), Some("YQ==".into()), "").is_err());
        assert_eq!(body_out(None, Some("YQ==".into()), "").unwrap(), Some(b"a".to_vec()));
        assert!(body_out(None, Some("%%%".into()), "respond.").is_err());
        let binary = Ok(bytes::Bytes::from_static(&[0xff, 0x00]));
        let b = body_in(&binary);
        assert_eq!((b.body, b.body_base64.as_deref()), (None, Some("/wA=")));
    }

    fn call(path: &str) -> Call {
        let (parts, ()) = http::Request::get(path).body(()).unwrap().into_parts();
        let meta = crate::message::RequestMeta {
            id_header: http::HeaderValue::from_static("t"),
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            client_header: http::HeaderValue::from_static("127.0.0.1"),
            route: Arc::from("r"),
            params: Vec::new(),
            max_body_bytes: 1024,
        };
        let request = crate::message::RequestMsg {
            parts,
            body: Body::empty(),
            meta: Arc::new(meta),
            context: Default::default(),
        };
        Call { request, response: None }
    }

    #[test]
    fn a_refused_edit_fails_the_call_and_leaves_the_request_as_it_was() {
        let mut c = call("/orig?q=1");
        let out = br#"{"path":"/new?x=2","set_headers":{"x-a":"1"}}"#;
        assert!(matches!(apply(Phase::Request, out, &mut c), Ok(Decision::Continue)));
        assert_eq!(c.request.parts.uri, "/new?x=2");
        assert_eq!(c.request.parts.headers["x-a"], "1");
        for bad in [r#"{"path":"relative"}"#, r#"{"path":"/a b"}"#, r#"{"status":200}"#] {
            let mut c = call("/orig?q=1");
            assert!(apply(Phase::Request, bad.as_bytes(), &mut c).is_err(), "{bad}");
            assert_eq!(c.request.parts.uri, "/orig?q=1", "{bad}");
        }
    }

    #[test]
    fn unknown_output_fields_are_refused() {
        let err = serde_json::from_slice::<Output>(br#"{"set_header":{"a":"b"}}"#).err().unwrap();
        assert!(err.to_string().contains("unknown field `set_header`"), "{err}");
    }
}
