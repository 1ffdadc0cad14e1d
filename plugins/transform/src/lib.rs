//! `transform`: rewrites requests and responses: headers, path, query, status codes and
//! JSON bodies, with template variables.
//!
//! ```toml
//! [plugins.shape]
//! module = "transform"
//! [plugins.shape.config.request]
//! headers = { set = { "x-request-id" = "${request_id}" }, remove = ["x-debug"], rename = { "x-token" = "x-auth-token" } }
//! path = { regex = "^/v1/(.*)$", replace = "/api/$1" }     # or { strip_prefix = "/v1", add_prefix = "/api" }
//! query = { add = { source = "gateway" }, remove = ["debug"] }
//! json = { set = { "/meta/client" = "${client_ip}" }, remove = ["/password"], rename = { "/user_name" = "/username" } }
//! [plugins.shape.config.response]
//! headers = { set = { "x-upstream-ms" = "${latency}" } }
//! status = { "500" = 502, "404" = 410 }
//! json = { remove = ["/internal"] }
//! ```
//!
//! Variables in header values, query values and JSON string values: `${request_id}`,
//! `${client_ip}`, `${route}`, and in the response phase `${latency}`: the milliseconds from
//! this plugin's request phase to its response phase (the upstream call, plus the plugins
//! listed after this one). JSON edits use JSON Pointers; they apply only to bodies whose
//! `content-type` says JSON and that are within `max_body_bytes` (default 1 MiB); anything
//! else passes through untouched.

mod json;

use std::collections::BTreeMap;

use json::JsonEdit;
use serde::Deserialize;
use serde_json::Value;
use sluice_pdk::{Action, Hooks, Latency, Plugin, Request, Response, Template};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeadersConfig {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathConfig {
    #[serde(default)]
    strip_prefix: Option<String>,
    #[serde(default)]
    add_prefix: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    replace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct QueryConfig {
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JsonConfig {
    #[serde(default)]
    set: BTreeMap<String, Value>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RequestConfig {
    #[serde(default)]
    headers: HeadersConfig,
    #[serde(default)]
    path: Option<PathConfig>,
    #[serde(default)]
    query: QueryConfig,
    #[serde(default)]
    json: JsonConfig,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResponseConfig {
    #[serde(default)]
    headers: HeadersConfig,
    #[serde(default)]
    status: BTreeMap<String, u16>,
    #[serde(default)]
    json: JsonConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    request: RequestConfig,
    #[serde(default)]
    response: ResponseConfig,
    #[serde(default)]
    max_body_bytes: Option<usize>,
}

/// Which variables a value may use: `${latency}` only in the response phase.
fn latency(in_response: bool) -> Latency {
    if in_response { Latency::Known } else { Latency::OnlyInResponse }
}

fn template(at: &str, value: &str, in_response: bool) -> Result<Template, String> {
    Template::parse(value, latency(in_response)).map_err(|e| format!("{at}: {e}"))
}

/// What a JSON `set` writes: a JSON value, or a string with variables, parsed at init.
#[derive(Debug, Clone)]
enum SetValue {
    Plain(Value),
    Template(Template),
}

enum HeaderEdit {
    Remove(String),
    Rename(String, String),
    Set(String, Template),
    Add(String, Template),
}

fn header_edits(at: &str, c: HeadersConfig, latency_ok: bool) -> Result<Vec<HeaderEdit>, String> {
    let name = |kind: &str, n: &str| match sluice_pdk::is_header_name(n) {
        true => Ok(n.to_ascii_lowercase()),
        false => Err(format!("{at}.headers.{kind}: {n:?} is not a header name")),
    };
    let mut out = Vec::new();
    for n in c.remove {
        out.push(HeaderEdit::Remove(name("remove", &n)?));
    }
    for (from, to) in c.rename {
        out.push(HeaderEdit::Rename(name("rename", &from)?, name("rename", &to)?));
    }
    for (kind, map) in [("set", c.set), ("add", c.add)] {
        for (n, v) in map {
            let t = template(&format!("{at}.headers.{kind}.{n}"), &v, latency_ok)?;
            let n = name(kind, &n)?;
            out.push(if kind == "set" { HeaderEdit::Set(n, t) } else { HeaderEdit::Add(n, t) });
        }
    }
    Ok(out)
}

/// A JSON value whose strings may hold variables.
fn json_edits(
    at: &str,
    c: JsonConfig,
    latency_ok: bool,
) -> Result<Vec<JsonEdit<SetValue>>, String> {
    let mut out = Vec::new();
    for p in &c.remove {
        out.push(JsonEdit::Remove(json::pointer(&format!("{at}.json.remove"), p)?));
    }
    for (from, to) in &c.rename {
        let at = format!("{at}.json.rename");
        out.push(JsonEdit::Rename(json::pointer(&at, from)?, json::pointer(&at, to)?));
    }
    for (p, v) in c.set {
        let at = format!("{at}.json.set.{p}");
        let value = match v {
            Value::String(s) if s.contains("${") => {
                SetValue::Template(template(&at, &s, latency_ok)?)
            }
            v => SetValue::Plain(v),
        };
        out.push(JsonEdit::Set(json::pointer(&at, &p)?, value));
    }
    Ok(out)
}

enum PathRewrite {
    Prefix { strip: Option<String>, add: Option<String> },
    Regex(regex::Regex, String),
}

impl PathRewrite {
    fn apply(&self, path: &str) -> Option<String> {
        match self {
            PathRewrite::Prefix { strip, add } => {
                let rest = match strip {
                    Some(p) => {
                        let rest = path.strip_prefix(p.as_str())?;
                        if !(rest.is_empty() || rest.starts_with('/')) {
                            return None;
                        }
                        rest
                    }
                    None => path,
                };
                let joined = format!("{}{rest}", add.as_deref().unwrap_or(""));
                Some(if joined.is_empty() { "/".to_owned() } else { joined })
            }
            PathRewrite::Regex(re, replace) => {
                re.is_match(path).then(|| re.replace(path, replace.as_str()).into_owned())
            }
        }
    }
}

pub struct Transform {
    req_headers: Vec<HeaderEdit>,
    path: Option<PathRewrite>,
    query_add: Vec<(String, Template)>,
    query_remove: Vec<String>,
    req_json: Vec<JsonEdit<SetValue>>,
    resp_headers: Vec<HeaderEdit>,
    status: BTreeMap<u16, u16>,
    resp_json: Vec<JsonEdit<SetValue>>,
    max_body: usize,
    needs_latency: bool,
}

impl Transform {
    fn rewrite_query(&self, req: &Request, query: Option<&str>) -> Option<String> {
        let mut pairs: Vec<String> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let k = p.split_once('=').map_or(*p, |(k, _)| k);
                !self.query_remove.iter().any(|r| r == k)
                    && !self.query_add.iter().any(|(a, _)| a == k)
            })
            .map(str::to_owned)
            .collect();
        for (k, v) in &self.query_add {
            pairs.push(format!("{}={}", encode(k), encode(&v.render(req, None))));
        }
        (!pairs.is_empty()).then(|| pairs.join("&"))
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters, for a query component.
fn encode(s: &str) -> String {
    const COMPONENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

fn is_json(content_type: Option<String>) -> bool {
    content_type.is_some_and(|c| {
        let c = c.to_ascii_lowercase();
        c.starts_with("application/json") || c.contains("+json")
    })
}

macro_rules! edit_headers {
    ($msg:expr, $req:expr, $edits:expr, $latency:expr) => {
        for edit in $edits {
            let _ = match edit {
                HeaderEdit::Remove(n) => $msg.remove_header(n),
                HeaderEdit::Rename(from, to) => {
                    let values = $msg.header_all(from);
                    if values.is_empty() {
                        Ok(())
                    } else {
                        let _ = $msg.remove_header(from);
                        let _ = $msg.remove_header(to);
                        values.iter().try_for_each(|v| $msg.append_header(to, v))
                    }
                }
                HeaderEdit::Set(n, t) => $msg.set_header(n, &t.render($req, $latency)),
                HeaderEdit::Add(n, t) => $msg.append_header(n, &t.render($req, $latency)),
            };
        }
    };
}

/// Edits a JSON body in place; a body that is not JSON, or too large, is left alone.
fn edit_json(
    body: Result<Vec<u8>, sluice_pdk::BodyError>,
    edits: &[JsonEdit<SetValue>],
    max: usize,
    render: &dyn Fn(&SetValue) -> Value,
) -> Option<Vec<u8>> {
    let body = body.ok()?;
    if body.len() > max {
        return None;
    }
    let mut value: Value = serde_json::from_slice(&body).ok()?;
    json::apply(&mut value, edits, render);
    serde_json::to_vec(&value).ok()
}

fn render_json(v: &SetValue, req: &Request, latency: Option<u64>) -> Value {
    match v {
        SetValue::Template(t) => Value::String(t.render(req, latency).into_owned()),
        SetValue::Plain(v) => v.clone(),
    }
}

impl Plugin for Transform {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        let path = match c.request.path {
            None => None,
            Some(PathConfig {
                regex: Some(re),
                replace: Some(to),
                strip_prefix: None,
                add_prefix: None,
            }) => {
                let re = regex::Regex::new(&re)
                    .map_err(|e| format!("config.request.path.regex: {e}"))?;
                Some(PathRewrite::Regex(re, to))
            }
            Some(PathConfig { regex: None, replace: None, strip_prefix, add_prefix })
                if strip_prefix.is_some() || add_prefix.is_some() =>
            {
                for (k, v) in [("strip_prefix", &strip_prefix), ("add_prefix", &add_prefix)] {
                    if v.as_ref().is_some_and(|p| !p.starts_with('/')) {
                        return Err(format!("config.request.path.{k}: must start with '/'"));
                    }
                }
                let strip = strip_prefix.map(|p| p.trim_end_matches('/').to_owned());
                let add = add_prefix.map(|p| p.trim_end_matches('/').to_owned());
                Some(PathRewrite::Prefix { strip, add })
            }
            Some(_) => {
                return Err("config.request.path: give `regex` with `replace`, or `strip_prefix` and/or `add_prefix`".into());
            }
        };
        let mut status = BTreeMap::new();
        for (from, to) in c.response.status {
            let code = from.parse::<u16>().ok().filter(|c| (100..=999).contains(c));
            let Some(code) = code else {
                return Err(format!("config.response.status.{from}: not a status code"));
            };
            if !(100..=999).contains(&to) {
                return Err(format!("config.response.status.{from}: {to} is not a status code"));
            }
            status.insert(code, to);
        }
        let query_add = c
            .request
            .query
            .add
            .into_iter()
            .map(|(k, v)| {
                Ok((k.clone(), template(&format!("config.request.query.add.{k}"), &v, false)?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let resp_headers = header_edits("config.response", c.response.headers, true)?;
        let resp_json = json_edits("config.response", c.response.json, true)?;
        let needs_latency = resp_headers.iter().any(
            |e| matches!(e, HeaderEdit::Set(_, t) | HeaderEdit::Add(_, t) if t.uses_latency()),
        ) || resp_json
            .iter()
            .any(|e| matches!(e, JsonEdit::Set(_, SetValue::Template(t)) if t.uses_latency()));
        Ok(Transform {
            req_headers: header_edits("config.request", c.request.headers, false)?,
            path,
            query_add,
            query_remove: c.request.query.remove,
            req_json: json_edits("config.request", c.request.json, false)?,
            resp_headers,
            status,
            resp_json,
            max_body: c.max_body_bytes.unwrap_or(1 << 20),
            needs_latency,
        })
    }

    fn hooks(&self) -> Hooks {
        let mut h = Hooks::empty();
        let request = !self.req_headers.is_empty()
            || self.path.is_some()
            || !self.query_add.is_empty()
            || !self.query_remove.is_empty()
            || !self.req_json.is_empty()
            || self.needs_latency;
        let response =
            !self.resp_headers.is_empty() || !self.status.is_empty() || !self.resp_json.is_empty();
        h.set(Hooks::ON_REQUEST, request);
        h.set(Hooks::ON_RESPONSE, response);
        h
    }

    fn on_request(&self, req: &Request) -> Action {
        edit_headers!(req, req, &self.req_headers, None);
        if let Some(rewrite) = &self.path
            && let Some(path) = rewrite.apply(&req.path())
            && req.set_path(&path).is_err()
        {
            sluice_pdk::warn!("rewritten path {path:?} refused by the host");
        }
        if !self.query_add.is_empty() || !self.query_remove.is_empty() {
            let query = self.rewrite_query(req, req.query().as_deref());
            let _ = req.set_query(query.as_deref());
        }
        if !self.req_json.is_empty() && is_json(req.header("content-type")) {
            let render = |v: &SetValue| render_json(v, req, None);
            if let Some(body) = edit_json(req.body(), &self.req_json, self.max_body, &render) {
                req.set_body(&body);
            }
        }
        if self.needs_latency {
            let _ = req.set_context("t0", &sluice_pdk::clock::monotonic_ns().to_string());
        }
        Action::Continue
    }

    fn on_response(&self, req: &Request, resp: &Response) {
        let latency = req
            .context("t0")
            .and_then(|t| t.parse::<u64>().ok())
            .map(|t0| sluice_pdk::clock::monotonic_ns().saturating_sub(t0) / 1_000_000);
        if let Some(to) = self.status.get(&resp.status()) {
            let _ = resp.set_status(*to);
        }
        edit_headers!(resp, req, &self.resp_headers, latency);
        if !self.resp_json.is_empty() && is_json(resp.header("content-type")) {
            let render = |v: &SetValue| render_json(v, req, latency);
            if let Some(body) = edit_json(resp.body(), &self.resp_json, self.max_body, &render) {
                resp.set_body(&body);
            }
        }
    }
}

sluice_pdk::export_plugin!(Transform);

#[cfg(test)]
mod tests {
    use super::*;

    fn t(json: &str) -> Result<Transform, String> {
        Transform::new(sluice_pdk::parse_config(json)?)
    }

    #[test]
    fn paths_are_rewritten_by_prefix_or_regex() {
        let p = PathRewrite::Prefix { strip: Some("/v1".into()), add: Some("/api".into()) };
        assert_eq!(p.apply("/v1/users").as_deref(), Some("/api/users"));
        assert_eq!(p.apply("/v1").as_deref(), Some("/api"));
        assert_eq!(p.apply("/v10/x"), None);
        let p = PathRewrite::Prefix { strip: Some("/v1".into()), add: None };
        assert_eq!(p.apply("/v1").as_deref(), Some("/"));
        let p = PathRewrite::Regex(regex::Regex::new("^/old/(.*)$").unwrap(), "/new/$1".into());
        assert_eq!(p.apply("/old/a/b").as_deref(), Some("/new/a/b"));
        assert_eq!(p.apply("/other"), None);
    }

    #[test]
    fn config_errors_name_their_field() {
        let err = |j: &str| t(j).err().unwrap();
        assert!(err(r#"{"request": {"path": {"regex": "("}}}"#).starts_with("config.request.path"));
        assert!(
            err(r#"{"request": {"path": {"regex": "(", "replace": "/"}}}"#)
                .starts_with("config.request.path.regex")
        );
        assert!(
            err(r#"{"request": {"headers": {"set": {"x": "${latency}"}}}}"#)
                .contains("only known in the response")
        );
        assert!(
            err(r#"{"response": {"status": {"abc": 200}}}"#)
                .starts_with("config.response.status.abc")
        );
        assert!(
            err(r#"{"response": {"json": {"remove": ["x"]}}}"#)
                .starts_with("config.response.json.remove")
        );
        assert!(
            err(r#"{"response": {"headers": {"set": {"x": "${nope}"}}}}"#)
                .contains("unknown variable ${nope}")
        );
        assert!(
            t(r#"{"response": {"headers": {"set": {"x-ms": "${latency}"}}}}"#)
                .unwrap()
                .needs_latency
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn only_json_content_types_are_edited() {
        assert!(is_json(Some("application/json; charset=utf-8".into())));
        assert!(is_json(Some("application/problem+json".into())));
        assert!(!is_json(Some("text/plain".into())));
        assert!(!is_json(None));
        let edits = [JsonEdit::Remove(json::pointer("t", "/a").unwrap())];
        assert_eq!(
            edit_json(Ok(b"{\"a\":1,\"b\":2}".to_vec()), &edits, 100, &|_| Value::Null).unwrap(),
            b"{\"b\":2}"
        );
        assert_eq!(edit_json(Ok(b"not json".to_vec()), &edits, 100, &|_| Value::Null), None);
        assert_eq!(
            edit_json(Ok(b"{\"a\":1}".to_vec()), &edits, 3, &|_| Value::Null),
            None,
            "over the limit"
        );
    }
}
