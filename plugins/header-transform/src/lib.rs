//! `header-transform`: adds, sets and removes request and response headers.
//!
//! ```toml
//! [plugins.tag]
//! module = "header-transform"
//! config = { response_headers = { "x-served-by" = "sluice" } }   # shorthand for response.set
//!
//! [plugins.scrub.config.request]
//! remove = ["x-internal-token"]
//! set = { "x-env" = "prod" }
//! add = { "via" = "sluice" }
//! ```
//!
//! Per direction, edits apply in the order remove, set, add. A direction with no edits is
//! never called.
//!
//! Values may use variables: `${param.NAME}` (a route parameter, e.g. `{id}` in
//! `path = "/users/{id}"`; empty if absent), `${route}`, `${request_id}`, `${client_ip}`.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_pdk::{Hooks, Latency, Plugin, Request, Response, Template};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EditsConfig {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: EditsConfig,
    #[serde(default)]
    response: EditsConfig,
    /// Shorthand for `request.set`.
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    /// Shorthand for `response.set`.
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
}

enum Edit {
    Remove(String),
    Set(String, Template),
    Add(String, Template),
}

struct HeaderTransform {
    request: Vec<Edit>,
    response: Vec<Edit>,
}

fn edits(
    at: &str,
    mut cfg: EditsConfig,
    shorthand: BTreeMap<String, String>,
) -> Result<Vec<Edit>, String> {
    cfg.set.extend(shorthand);
    let mut out = Vec::new();
    for name in cfg.remove {
        check_name(at, "remove", &name)?;
        out.push(Edit::Remove(name));
    }
    for (kind, map) in [("set", cfg.set), ("add", cfg.add)] {
        for (name, value) in map {
            check_name(at, kind, &name)?;
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!("config.{at}.{kind}.{name}: value has CR, LF or NUL"));
            }
            let value = Template::parse(&value, Latency::Unknown)
                .map_err(|e| format!("config.{at}.{kind}.{name}: {e}"))?;
            out.push(match kind {
                "set" => Edit::Set(name, value),
                _ => Edit::Add(name, value),
            });
        }
    }
    Ok(out)
}

fn check_name(at: &str, kind: &str, name: &str) -> Result<(), String> {
    const HOST_OWNED: [&str; 9] = [
        "connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "host",
    ];
    if !sluice_pdk::is_header_name(name) {
        return Err(format!("config.{at}.{kind}: {name:?} is not a valid header name"));
    }
    if HOST_OWNED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("config.{at}.{kind}: {name:?} is managed by the gateway"));
    }
    Ok(())
}

macro_rules! apply {
    ($msg:expr, $req:expr, $edits:expr) => {
        for edit in $edits {
            let result = match edit {
                Edit::Remove(n) => $msg.remove_header(n),
                Edit::Set(n, v) => $msg.set_header(n, &v.render($req, None)),
                Edit::Add(n, v) => $msg.append_header(n, &v.render($req, None)),
            };
            if let Err(e) = result {
                sluice_pdk::warn!("header edit refused by the host: {e:?}");
            }
        }
    };
}

impl Plugin for HeaderTransform {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        Ok(HeaderTransform {
            request: edits("request", c.request, c.request_headers)?,
            response: edits("response", c.response, c.response_headers)?,
        })
    }

    fn hooks(&self) -> Hooks {
        let mut hooks = Hooks::empty();
        hooks.set(Hooks::ON_REQUEST, !self.request.is_empty());
        hooks.set(Hooks::ON_RESPONSE, !self.response.is_empty());
        hooks
    }

    fn on_request(&self, req: &Request) -> sluice_pdk::Action {
        apply!(req, req, &self.request);
        sluice_pdk::Action::Continue
    }

    fn on_response(&self, req: &Request, resp: &Response) {
        apply!(resp, req, &self.response);
    }
}

sluice_pdk::export_plugin!(HeaderTransform);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_into_text_and_variables() {
        let parse = |v: &str| Template::parse(v, Latency::Unknown);
        let t = parse("id=${param.id}; via ${route}/${request_id} from ${client_ip}").unwrap();
        assert_eq!(
            format!("{t:?}"),
            "Template([Text(\"id=\"), Param(\"id\"), Text(\"; via \"), Route, Text(\"/\"), \
             RequestId, Text(\" from \"), ClientIp])"
        );
        assert!(parse("${nope}").err().unwrap().contains("unknown variable ${nope}"));
        assert!(parse("${latency}").err().unwrap().contains("unknown variable ${latency}"));
        assert!(parse("${param.}").is_err());
        assert!(parse("${route").err().unwrap().contains("unclosed"));
    }

    #[test]
    fn edits_refuse_bad_and_gateway_owned_headers() {
        let cfg = |json: &str| -> EditsConfig { serde_json::from_str(json).unwrap() };
        let e = |json: &str| edits("request", cfg(json), BTreeMap::new()).err().unwrap();
        assert_eq!(
            e(r#"{"remove": ["bad name"]}"#),
            "config.request.remove: \"bad name\" is not a valid header name"
        );
        assert_eq!(
            e(r#"{"set": {"Host": "x"}}"#),
            "config.request.set: \"Host\" is managed by the gateway"
        );
        assert!(e(r#"{"add": {"x-a": "a\nb"}}"#).contains("CR, LF or NUL"));
        let ok = edits(
            "response",
            cfg(r#"{"remove": ["a"], "set": {"b": "1"}, "add": {"c": "2"}}"#),
            BTreeMap::new(),
        )
        .unwrap();
        assert!(matches!(ok.as_slice(), [Edit::Remove(_), Edit::Set(..), Edit::Add(..)]));
    }
}
