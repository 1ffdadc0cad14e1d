//! An Extism plugin for Sluice, written with the Rust `extism-pdk`: what an existing Extism
//! plugin needs to run in Sluice's chain (`kind = "extism"`). docs/extism.md has the JSON
//! it reads and writes.
//!
//! - `on_request`: refuses a request without the header named by config `require_header`
//!   (401, JSON body); prefixes the path with config `path_prefix`; deletes the JSON body
//!   fields listed in config `redact`; counts the calls this instance served in
//!   `x-extism-calls` (instances are reused); panics on `x-extism-panic` and spins forever
//!   on `x-extism-spin` (a trap and a timeout, for tests).
//! - `on_response`: adds `"gateway": "sluice+extism"` to a JSON object response body and
//!   the upstream's status in `x-extism-upstream-status`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use extism_pdk::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    request: Request,
    response: Option<Response>,
}

#[derive(Deserialize)]
struct Request {
    /// The verified mTLS certificate; absent without one.
    client_cert: Option<ClientCert>,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

#[derive(Deserialize)]
struct ClientCert {
    subject: String,
}

#[derive(Deserialize)]
struct Response {
    status: u16,
    body: Option<String>,
}

/// Sluice's output: every field optional.
#[derive(Serialize, Default)]
struct Output {
    #[serde(skip_serializing_if = "Option::is_none")]
    respond: Option<Respond>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    set_headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
}

#[derive(Serialize)]
struct Respond {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

static CALLS: AtomicU64 = AtomicU64::new(0);

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[plugin_fn]
pub fn on_request(Json(input): Json<Input>) -> FnResult<Json<Output>> {
    let req = input.request;
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    if req.header("x-extism-panic").is_some() {
        panic!("asked to panic by x-extism-panic");
    }
    if req.header("x-extism-spin").is_some() {
        // Never returns: Sluice stops it at the plugin's `timeout`.
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
    let mut out = Output::default();
    out.set_headers.insert("x-extism-calls".into(), calls.to_string());
    if let Some(cert) = &req.client_cert {
        out.set_headers.insert("x-client-subject".into(), cert.subject.clone());
    }
    if let Some(required) = config::get("require_header")?
        && req.header(&required).is_none()
    {
        let body = serde_json::json!({ "error": format!("missing {required}") }).to_string();
        let headers = BTreeMap::from([("content-type".into(), "application/json".into())]);
        out.respond = Some(Respond { status: 401, headers, body });
        return Ok(Json(out));
    }
    if let Some(prefix) = config::get("path_prefix")? {
        let query = req.query.as_ref().map(|q| format!("?{q}")).unwrap_or_default();
        out.path = Some(format!("{prefix}{}{query}", req.path));
    }
    let redact: Vec<String> = match config::get("redact")? {
        Some(list) => serde_json::from_str(&list)?,
        None => Vec::new(),
    };
    let json_body = req.body.as_deref().and_then(|b| serde_json::from_str(b).ok());
    if let Some(serde_json::Value::Object(mut fields)) = json_body {
        let removed = redact.iter().filter(|k| fields.remove(k.as_str()).is_some()).count();
        if removed > 0 {
            out.body = Some(serde_json::Value::Object(fields).to_string());
        }
    }
    info!("{} call(s) on this instance; path {}", calls, req.path);
    Ok(Json(out))
}

#[plugin_fn]
pub fn on_response(Json(input): Json<Input>) -> FnResult<Json<Output>> {
    let Some(resp) = input.response else { return Ok(Json(Output::default())) };
    let mut out = Output::default();
    out.set_headers.insert("x-extism-upstream-status".into(), resp.status.to_string());
    let json_body = resp.body.as_deref().and_then(|b| serde_json::from_str(b).ok());
    if let Some(serde_json::Value::Object(mut fields)) = json_body {
        fields.insert("gateway".into(), "sluice+extism".into());
        out.body = Some(serde_json::Value::Object(fields).to_string());
    }
    Ok(Json(out))
}
