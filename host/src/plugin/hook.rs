//! What every kind of plugin backend shares about a hook call: what a decision is, how a
//! local response and a trap message are made, and reading a body before an instance is
//! taken.

use std::time::Duration;

use sluice_bindings::exports::sluice::plugin::filter::LocalResponse;
use wasmtime::WasmBacktrace;

use super::error::{FailureKind, Phase};
use crate::message::{self, Body, Call, ResponseMsg};

/// What the request phase decided.
pub enum Decision {
    Continue,
    Respond(ResponseMsg),
}

/// Turns a plugin's local reply into a response, refusing what HTTP would not allow.
pub fn local_response(local: LocalResponse) -> Result<Decision, FailureKind> {
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

/// `cause at plugin::frame <- plugin::caller`, on one line.
pub fn trap_message(cause: &str, trace: Option<&WasmBacktrace>) -> String {
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

/// Reads the phase's body whole (up to the route's limit, within `wait`) before an
/// instance is taken, so a client trickling its body in holds a connection, never an
/// instance other requests need. A failure stays in the body, for the plugin to see when
/// it asks.
pub async fn prebuffer(phase: Phase, call: &mut Call, wait: Duration) {
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
    if tokio::time::timeout(wait, body.buffer(limit)).await.is_err() {
        *body = Body::Broken(message::BodyError::TimedOut(wait));
    }
}
