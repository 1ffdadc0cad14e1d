//! `deny`: answers matching requests itself, with a configured status, headers and body.
//!
//! ```toml
//! [plugins.no-admin]
//! module = "deny"
//! config = { path_prefix = "/api/users/admin", status = 403, body = "forbidden" }
//! ```
//!
//! A request matches when its path is `path_prefix` or lies below it (segment-wise:
//! `/admin` matches `/admin/x`, not `/administrator`), and, if `methods` is given, its
//! method is listed. With neither, every request matches.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_pdk::{Action, Hooks, LocalResponse, Plugin, Request};

fn default_status() -> u16 {
    403
}

fn default_content_type() -> String {
    "text/plain".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path_prefix: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    body: String,
    #[serde(default = "default_content_type")]
    content_type: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

struct Deny {
    prefix: Option<String>,
    methods: Vec<String>,
    response: LocalResponse,
}

impl Plugin for Deny {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if !(100..=999).contains(&c.status) {
            return Err(format!("config.status: {} is not an HTTP status (100-999)", c.status));
        }
        let prefix = match c.path_prefix {
            Some(p) if !p.starts_with('/') => {
                return Err(format!("config.path_prefix: must start with '/': {p:?}"));
            }
            Some(p) => Some(p.trim_end_matches('/').to_owned()),
            None => None,
        };
        let mut response = LocalResponse::new(c.status).header("content-type", c.content_type);
        for (name, value) in c.headers {
            response = response.header(name, value);
        }
        let methods = c.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
        Ok(Deny { prefix, methods, response: response.body(c.body) })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, req: &Request) -> Action {
        match self.matches(&req.path(), &req.method()) {
            true => Action::Respond(self.response.clone()),
            false => Action::Continue,
        }
    }
}

impl Deny {
    fn matches(&self, path: &str, method: &str) -> bool {
        let path_matches = match &self.prefix {
            None => true,
            Some(prefix) => path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        };
        path_matches && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }
}

sluice_pdk::export_plugin!(Deny);

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(json: &str) -> Result<Deny, String> {
        Deny::new(sluice_pdk::parse_config(json)?)
    }

    #[test]
    fn prefixes_match_whole_segments_and_methods_any_case() {
        let d = deny(r#"{"path_prefix": "/admin/", "methods": ["delete"]}"#).unwrap();
        assert!(d.matches("/admin", "DELETE"));
        assert!(d.matches("/admin/users", "DELETE"));
        assert!(!d.matches("/administrator", "DELETE"));
        assert!(!d.matches("/admin", "GET"));
        assert!(deny("{}").unwrap().matches("/anything", "GET"));
    }

    #[test]
    fn bad_configs_are_refused_with_their_field() {
        assert!(deny(r#"{"status": 42}"#).err().unwrap().starts_with("config.status"));
        assert!(
            deny(r#"{"path_prefix": "admin"}"#).err().unwrap().starts_with("config.path_prefix")
        );
        assert!(deny(r#"{"prefix": "/a"}"#).err().unwrap().contains("unknown field `prefix`"));
    }
}
