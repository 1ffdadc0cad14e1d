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

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_pdk::{Hooks, Plugin, Request, Response};

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
    Set(String, String),
    Add(String, String),
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
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("config.{at}.{kind}: {name:?} is not a valid header name"));
    }
    if HOST_OWNED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("config.{at}.{kind}: {name:?} is managed by the gateway"));
    }
    Ok(())
}

macro_rules! apply {
    ($msg:expr, $edits:expr) => {
        for edit in $edits {
            let result = match edit {
                Edit::Remove(n) => $msg.remove_header(n),
                Edit::Set(n, v) => $msg.set_header(n, v),
                Edit::Add(n, v) => $msg.append_header(n, v),
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
        apply!(req, &self.request);
        sluice_pdk::Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &Response) {
        apply!(resp, &self.response);
    }
}

sluice_pdk::export_plugin!(HeaderTransform);
