//! `sluice plugin test`: replays requests from a TOML file through one plugin, with its
//! config, on the gateway's own plugin runtime and chain code, but without a listener or
//! an upstream. Prints, per case, what the plugin did (continue or respond), the headers it
//! changed and its log lines, then checks the case's expectations.
//!
//! ```toml
//! [plugin]
//! module = "auth.wasm"                 # relative to this file
//! config = { header = "x-token" }      # and any other [plugins.NAME] setting
//!
//! [[case]]
//! name = "no token"
//! method = "GET"                       # default GET
//! path = "/orders?page=2"
//! headers = { accept = "text/plain" }  # a value may also be a list
//! body = ""
//! response = { status = 200, headers = {}, body = "" }  # the upstream's answer
//! [case.expect]
//! action = "respond"                   # continue | respond | fail
//! status = 401
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Deserialize;

use sluice::message::{Body, Context, RequestMeta, RequestMsg, ResponseMsg};
use sluice::plugin::Chain;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    plugin: toml::Table,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default = "root")]
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    body: String,
    #[serde(default = "loopback")]
    client_ip: IpAddr,
    /// The verified mTLS certificate the plugin sees (`subject`, `issuer`, `sans`,
    /// `fingerprint`); none when absent.
    client_cert: Option<sluice::message::ClientCert>,
    #[serde(default)]
    response: Upstream,
    #[serde(default)]
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Upstream {
    status: u16,
    headers: BTreeMap<String, OneOrMany>,
    body: String,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream { status: 200, headers: BTreeMap::new(), body: String::new() }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    action: Option<Action>,
    /// The status the client gets (the local response's, or the upstream's after the
    /// response phase).
    status: Option<u16>,
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    #[serde(default)]
    request_headers_absent: Vec<String>,
    request_path: Option<String>,
    request_body: Option<String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    #[serde(default)]
    response_headers_absent: Vec<String>,
    response_body_contains: Option<String>,
    /// A line the plugin logged must contain this.
    log_contains: Option<String>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Action {
    Continue,
    Respond,
    Fail,
}

fn get() -> String {
    "GET".into()
}
fn root() -> String {
    "/".into()
}
fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

/// Collects the lines plugins log (target `plugin`), so each case can show its own.
#[derive(Clone, Default)]
pub struct CaptureLogs(Arc<Mutex<Vec<String>>>);

impl CaptureLogs {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CaptureLogs {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "plugin" {
            return;
        }
        struct Fields(String, String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.0 = format!("{value:?}"),
                    "request_id" | "plugin" | "route" => {
                        let _ = write!(self.1, " {}={value:?}", field.name());
                    }
                    _ => {}
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                match field.name() {
                    "message" => self.0 = value.to_owned(),
                    "request_id" | "plugin" | "route" if !value.is_empty() => {
                        let _ = write!(self.1, " {}={value}", field.name());
                    }
                    _ => {}
                }
            }
        }
        let mut fields = Fields(String::new(), String::new());
        event.record(&mut fields);
        let level = event.metadata().level().as_str().to_lowercase();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{level:5} {}{}", fields.0, fields.1));
    }
}

/// Runs every case in `file`, printing a report to `out`. An error is a file or plugin that
/// could not be loaded; failed expectations are counted in the summary.
pub async fn run_cases(
    file: &Path,
    logs: &CaptureLogs,
    out: &mut impl std::io::Write,
) -> anyhow::Result<Summary> {
    use anyhow::Context as _;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let de =
        toml::Deserializer::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let cases: CasesFile = serde_path_to_error::deserialize(de).map_err(|e| {
        anyhow::anyhow!("{}: {}: {}", file.display(), e.path(), e.inner().message())
    })?;
    if cases.cases.is_empty() {
        anyhow::bail!("{}: no [[case]] to run", file.display());
    }
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let (name, config) = gateway_config(cases.plugin)?;
    let source = sluice::ConfigSource::Text {
        text: config,
        name: format!("{} [plugin]", file.display()),
        base_dir: base,
    };
    let config = source.parse(&source.read()?).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_runtime, gateway) = sluice::build(config).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let plugin = gateway.plugin(&name).expect("the config names this plugin").clone();
    let max_body_bytes = sluice::config::DEFAULT_MAX_BODY_BYTES;
    let chain = Chain::new(vec![plugin]);
    logs.take();

    let mut summary = Summary::default();
    for (i, case) in cases.cases.iter().enumerate() {
        let id = format!("case-{}", i + 1);
        let report = run_case(&chain, case, &id, max_body_bytes).await;
        let log_lines = logs.take();
        let mut problems = report.check(&case.expect);
        if let Some(want) = &case.expect.log_contains
            && !log_lines.iter().any(|l| l.contains(want.as_str()))
        {
            problems.push(format!("no log line contains {want:?}"));
        }
        writeln!(out, "case {:?} ({id}): {}", case.name, report.headline)?;
        for line in &report.lines {
            writeln!(out, "  {line}")?;
        }
        for line in &log_lines {
            writeln!(out, "  log: {line}")?;
        }
        if problems.is_empty() {
            summary.passed += 1;
            writeln!(out, "  ok")?;
        } else {
            summary.failed += 1;
            for p in problems {
                writeln!(out, "  FAILED: {p}")?;
            }
        }
    }
    writeln!(out, "{} passed, {} failed", summary.passed, summary.failed)?;
    Ok(summary)
}

/// A one-route gateway config holding the plugin as `[plugins.NAME]`: the cases file's
/// `[plugin]` table is checked by the same code (and with the same messages) as a real
/// config's, and its paths are relative to the cases file as a config's are to it.
fn gateway_config(mut plugin: toml::Table) -> anyhow::Result<(String, String)> {
    let name = match plugin.remove("name") {
        Some(toml::Value::String(n)) => n,
        Some(_) => anyhow::bail!("plugin.name: expected a string"),
        None => {
            let module = plugin.get("module").and_then(|m| m.as_str()).unwrap_or("plugin");
            let stem = Path::new(module).file_stem().map(|s| s.to_string_lossy().into_owned());
            stem.unwrap_or_else(|| "plugin".into())
        }
    };
    let mut plugins = toml::Table::new();
    plugins.insert(name.clone(), toml::Value::Table(plugin));
    let mut route = toml::toml! {
        name = "test"
        prefix = "/"
        upstream = "none"
    };
    route.insert("plugins".into(), toml::Value::Array(vec![toml::Value::String(name.clone())]));
    let mut config = toml::toml! {
        [server]
        listen = "127.0.0.1:0"
        workers = 1
        [upstreams.none]
        endpoints = ["127.0.0.1:9"]
    };
    config.insert("plugins".into(), toml::Value::Table(plugins));
    config.insert("routes".into(), toml::Value::Array(vec![toml::Value::Table(route)]));
    Ok((name, toml::to_string(&config)?))
}

/// What happened to one case.
struct Report {
    headline: String,
    lines: Vec<String>,
    action: Action,
    status: Option<u16>,
    /// What went upstream: path and query, headers, body.
    request: Option<(String, http::HeaderMap, Bytes)>,
    response: Option<(http::response::Parts, Bytes)>,
}

async fn run_case(chain: &Chain, case: &Case, id: &str, max_body_bytes: u64) -> Report {
    let mut lines = Vec::new();
    let request = match build_request(case, id, max_body_bytes) {
        Ok(r) => r,
        Err(e) => return failed(format!("bad case: {e}"), lines),
    };
    let before = request.parts.headers.clone();
    let phase = match chain.run_request(request).await {
        Ok(p) => p,
        Err(e) => return failed(e.to_string(), lines),
    };
    let mut upstream_request = phase.request;
    let request_body = body_bytes(&mut upstream_request.body, max_body_bytes).await;
    let mut sent = None;
    let (action, response) = match phase.local {
        Some(local) => (Action::Respond, local),
        None => {
            let parts = &upstream_request.parts;
            diff_headers("request", &before, &parts.headers, &mut lines);
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            if target != case.path {
                lines.push(format!("request path: {target}"));
            }
            if request_body != case.body.as_bytes() {
                lines.push(format!("request body: {}", preview(&request_body)));
            }
            sent = Some((target, parts.headers.clone(), request_body));
            match build_response(&case.response) {
                Ok(r) => (Action::Continue, r),
                Err(e) => return failed(format!("bad case: response: {e}"), lines),
            }
        }
    };
    let upstream_headers = response.parts.headers.clone();
    let mut response = match chain.run_response(phase.reached, upstream_request, response).await {
        Ok(r) => r,
        Err(e) => return failed(e.to_string(), lines),
    };
    let body = body_bytes(&mut response.body, max_body_bytes).await;
    let status = response.parts.status.as_u16();
    let headline = match action {
        Action::Respond => {
            let mut all: Vec<String> = response
                .parts
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            all.sort();
            if !all.is_empty() {
                lines.push(format!("response headers: {}", all.join(", ")));
            }
            format!("respond {status}")
        }
        _ => {
            diff_headers("response", &upstream_headers, &response.parts.headers, &mut lines);
            format!("continue (client gets {status})")
        }
    };
    if !body.is_empty() {
        lines.push(format!("response body: {}", preview(&body)));
    }
    Report {
        headline,
        lines,
        action,
        status: Some(status),
        request: sent,
        response: Some((response.parts, body)),
    }
}

fn failed(message: String, mut lines: Vec<String>) -> Report {
    lines.push(message);
    Report {
        headline: "fail".into(),
        lines,
        action: Action::Fail,
        status: None,
        request: None,
        response: None,
    }
}

impl Report {
    fn check(&self, expect: &Expect) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(want) = expect.action
            && want != self.action
        {
            problems.push(format!("expected action {want:?}, got {:?}", self.action));
        }
        if let Some(want) = expect.status
            && self.status != Some(want)
        {
            problems.push(format!("expected status {want}, got {:?}", self.status));
        }
        let wants_request = !expect.request_headers.is_empty()
            || !expect.request_headers_absent.is_empty()
            || expect.request_path.is_some()
            || expect.request_body.is_some();
        match &self.request {
            Some((target, headers, body)) => {
                check_headers(
                    "request",
                    headers,
                    &expect.request_headers,
                    &expect.request_headers_absent,
                    &mut problems,
                );
                if let Some(want) = &expect.request_path
                    && target != want
                {
                    problems.push(format!("expected upstream path {want:?}, got {target:?}"));
                }
                if let Some(want) = &expect.request_body
                    && body.as_ref() != want.as_bytes()
                {
                    problems
                        .push(format!("expected upstream body {want:?}, got {}", preview(body)));
                }
            }
            None if wants_request => {
                problems.push("request expectations, but nothing went upstream".into())
            }
            None => {}
        }
        match &self.response {
            Some((parts, body)) => {
                check_headers(
                    "response",
                    &parts.headers,
                    &expect.response_headers,
                    &expect.response_headers_absent,
                    &mut problems,
                );
                if let Some(want) = &expect.response_body_contains
                    && !String::from_utf8_lossy(body).contains(want.as_str())
                {
                    problems.push(format!(
                        "response body does not contain {want:?}: {}",
                        preview(body)
                    ));
                }
            }
            None if !expect.response_headers.is_empty()
                || expect.response_body_contains.is_some() =>
            {
                problems.push("response expectations, but there is no response".into());
            }
            None => {}
        }
        problems
    }
}

fn check_headers(
    which: &str,
    headers: &http::HeaderMap,
    want: &BTreeMap<String, String>,
    absent: &[String],
    problems: &mut Vec<String>,
) {
    for (name, value) in want {
        match headers.get(name.as_str()).map(|v| String::from_utf8_lossy(v.as_bytes())) {
            Some(got) if got == *value => {}
            Some(got) => {
                problems.push(format!("{which} header {name}: expected {value:?}, got {got:?}"))
            }
            None => problems
                .push(format!("{which} header {name}: expected {value:?}, but it is absent")),
        }
    }
    for name in absent {
        if headers.contains_key(name.as_str()) {
            problems.push(format!("{which} header {name}: expected absent, but it is present"));
        }
    }
}

fn diff_headers(
    which: &str,
    before: &http::HeaderMap,
    after: &http::HeaderMap,
    lines: &mut Vec<String>,
) {
    let show = |v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let mut changes = Vec::new();
    for name in after.keys() {
        let now: Vec<String> = after.get_all(name).iter().map(show).collect();
        let was: Vec<String> = before.get_all(name).iter().map(show).collect();
        if now != was {
            changes.push(format!("+ {name}: {}", now.join(", ")));
        }
    }
    for name in before.keys() {
        if !after.contains_key(name) {
            changes.push(format!("- {name}"));
        }
    }
    if changes.is_empty() {
        lines.push(format!("{which} headers: unchanged"));
    } else {
        lines.push(format!("{which} headers: {}", changes.join(", ")));
    }
}

fn preview(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let more =
        if body.len() > MAX { format!(" ... ({} bytes)", body.len()) } else { String::new() };
    format!("{:?}{more}", text.trim_end())
}

async fn body_bytes(body: &mut Body, limit: u64) -> Bytes {
    body.buffer(limit).await.cloned().unwrap_or_default()
}

fn headers_of(map: &BTreeMap<String, OneOrMany>) -> anyhow::Result<http::HeaderMap> {
    let mut headers = http::HeaderMap::new();
    for (name, values) in map {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| anyhow::anyhow!("header name {name:?} is invalid"))?;
        let values = match values {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v.as_slice(),
        };
        for v in values {
            let value = http::HeaderValue::from_str(v)
                .map_err(|_| anyhow::anyhow!("header {name} has an invalid value"))?;
            headers.append(name.clone(), value);
        }
    }
    Ok(headers)
}

fn build_request(case: &Case, id: &str, max_body_bytes: u64) -> anyhow::Result<RequestMsg> {
    let mut builder = http::Request::builder().method(case.method.as_str()).uri(case.path.as_str());
    *builder.headers_mut().expect("a fresh builder") = headers_of(&case.headers)?;
    let (parts, ()) = builder.body(())?.into_parts();
    let meta = RequestMeta {
        id_header: http::HeaderValue::from_str(id)?,
        client_ip: case.client_ip,
        client_header: sluice::message::ip_header(case.client_ip),
        route: Arc::from("test"),
        params: Vec::new(),
        max_body_bytes,
        trace_id: 0,
        calls: None,
        client_cert: case.client_cert.clone().map(Arc::new),
    };
    let body = Body::Full(Bytes::from(case.body.clone()));
    Ok(RequestMsg { parts, body, meta: Arc::new(meta), context: Context::default() })
}

fn build_response(upstream: &Upstream) -> anyhow::Result<ResponseMsg> {
    let mut builder = http::Response::builder().status(upstream.status);
    *builder.headers_mut().expect("a fresh builder") = headers_of(&upstream.headers)?;
    let (mut parts, ()) = builder.body(())?.into_parts();
    sluice::message::set_fixed_length(&mut parts.headers, upstream.body.len());
    Ok(ResponseMsg { parts, body: Body::Full(Bytes::from(upstream.body.clone())) })
}
