//! `cors`: Cross-Origin Resource Sharing, preflights answered at the gateway.
//!
//! ```toml
//! [plugins.cors]
//! module = "cors"
//! [plugins.cors.config]
//! allow_origins = ["https://app.example.com", "https://*.example.com"]   # or ["*"]
//! allow_methods = ["GET", "POST", "DELETE"]      # default GET, HEAD, POST
//! allow_headers = ["content-type", "authorization"]
//! expose_headers = ["x-ratelimit-remaining"]
//! allow_credentials = true
//! max_age = "10m"
//! ```
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) never reaches the
//! upstream: it gets 204, with the CORS headers only if the origin, the method and every
//! requested header are allowed. Other requests go upstream and their responses get
//! `Access-Control-Allow-Origin` (and credentials / exposed headers) for an allowed origin,
//! nothing for a disallowed one. `Vary: Origin` is always added, so caches keep the answers
//! for different origins apart. With credentials, `*` is answered with the request's origin,
//! as browsers require.

use serde::Deserialize;
use sluice_pdk::{Action, Hooks, LocalResponse, Plugin, Request, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    allow_origins: Vec<String>,
    #[serde(default)]
    allow_methods: Option<Vec<String>>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default)]
    max_age: Option<String>,
}

#[derive(Debug, PartialEq)]
enum Origin {
    Any,
    Exact(String),
    /// `scheme://*.domain[:port]`: the prefix before `*` and the suffix after it.
    Wildcard(String, String),
}

impl Origin {
    fn parse(at: &str, s: &str) -> Result<Origin, String> {
        if s == "*" {
            return Ok(Origin::Any);
        }
        let lower = s.to_ascii_lowercase().trim_end_matches('/').to_owned();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(format!("{at}: {s:?} is not an origin (scheme://host[:port]) or \"*\""));
        }
        match lower.split_once('*') {
            None => Ok(Origin::Exact(lower)),
            Some((pre, post))
                if pre.ends_with("://") && post.starts_with('.') && !post.contains('*') =>
            {
                Ok(Origin::Wildcard(pre.to_owned(), post.to_owned()))
            }
            Some(_) => Err(format!(
                "{at}: {s:?}: a wildcard may only stand for subdomains, as in \"https://*.example.com\""
            )),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            Origin::Any => true,
            Origin::Exact(o) => o == origin,
            Origin::Wildcard(pre, post) => origin
                .strip_prefix(pre.as_str())
                .and_then(|rest| rest.strip_suffix(post.as_str()))
                .is_some_and(|sub| {
                    !sub.is_empty()
                        && sub.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                        && !sub.starts_with('.')
                        && !sub.ends_with('.')
                }),
        }
    }
}

pub struct Cors {
    origins: Vec<Origin>,
    methods: Vec<String>,
    /// Lower-case; `*` allows whatever the preflight asks for.
    headers: Vec<String>,
    expose: String,
    credentials: bool,
    max_age: Option<u64>,
}

impl Cors {
    fn allowed(&self, origin: &str) -> bool {
        // Browsers send origins in lower case: copied to lower it only when it is not (this
        // runs on every response).
        let origin = match origin.bytes().any(|b| b.is_ascii_uppercase()) {
            true => std::borrow::Cow::Owned(origin.to_ascii_lowercase()),
            false => std::borrow::Cow::Borrowed(origin),
        };
        self.origins.iter().any(|o| o.matches(&origin))
    }

    /// The `Access-Control-Allow-Origin` value for an allowed `origin`.
    fn allow_origin_value<'a>(&self, origin: &'a str) -> &'a str {
        match self.origins.contains(&Origin::Any) && !self.credentials {
            true => "*",
            false => origin,
        }
    }

    /// The answer to a preflight: the headers to send (empty when refused).
    fn preflight(
        &self,
        origin: &str,
        method: &str,
        requested: &str,
    ) -> Vec<(&'static str, String)> {
        let requested: Vec<String> = requested
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let method_ok = self.methods.iter().any(|m| m == method);
        let headers_ok = self.headers.iter().any(|h| h == "*")
            || requested.iter().all(|h| self.headers.contains(h));
        if !self.allowed(origin) || !method_ok || !headers_ok {
            return Vec::new();
        }
        let mut out = vec![
            ("access-control-allow-origin", self.allow_origin_value(origin).to_owned()),
            ("access-control-allow-methods", self.methods.join(", ")),
        ];
        if !requested.is_empty() {
            // Echo what was asked for: it is all allowed, and `*` is not honoured by browsers
            // on credentialed requests.
            out.push(("access-control-allow-headers", requested.join(", ")));
        }
        if self.credentials {
            out.push(("access-control-allow-credentials", "true".to_owned()));
        }
        if let Some(age) = self.max_age {
            out.push(("access-control-max-age", age.to_string()));
        }
        out
    }
}

impl Plugin for Cors {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if c.allow_origins.is_empty() {
            return Err("config.allow_origins: empty; list origins, or \"*\" for any".into());
        }
        let origins = c
            .allow_origins
            .iter()
            .enumerate()
            .map(|(i, o)| Origin::parse(&format!("config.allow_origins[{i}]"), o))
            .collect::<Result<_, _>>()?;
        let methods: Vec<String> = c
            .allow_methods
            .unwrap_or_else(|| vec!["GET".into(), "HEAD".into(), "POST".into()])
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        for (i, h) in c.allow_headers.iter().chain(&c.expose_headers).enumerate() {
            if h != "*" && !sluice_pdk::is_header_name(h) {
                return Err(format!("config: header {i} ({h:?}) is not a header name"));
            }
        }
        let max_age = match c.max_age {
            None => None,
            Some(t) => Some(
                humantime::parse_duration(&t)
                    .map_err(|e| format!("config.max_age: {e}: {t:?}"))?
                    .as_secs(),
            ),
        };
        Ok(Cors {
            origins,
            methods,
            headers: c.allow_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            expose: c.expose_headers.join(", "),
            credentials: c.allow_credentials,
            max_age,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::all()
    }

    fn on_request(&self, req: &Request) -> Action {
        if req.method() != "OPTIONS" {
            return Action::Continue;
        }
        let mut asked = req
            .headers(&["origin", "access-control-request-method", "access-control-request-headers"])
            .into_iter();
        let (Some(Some(origin)), Some(Some(method)), Some(requested)) =
            (asked.next(), asked.next(), asked.next())
        else {
            return Action::Continue; // a plain OPTIONS request, for the upstream
        };
        let requested = requested.unwrap_or_default();
        let headers = self.preflight(&origin, &method, &requested);
        sluice_pdk::metrics::counter_add(
            if headers.is_empty() { "preflight_refused" } else { "preflight_allowed" },
            1,
        );
        let mut resp = LocalResponse::new(204).header(
            "vary",
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        );
        for (n, v) in headers {
            resp = resp.header(n, v);
        }
        Action::Respond(resp)
    }

    fn on_response(&self, req: &Request, resp: &Response) {
        if resp.header("access-control-allow-methods").is_some() && req.method() == "OPTIONS" {
            return; // our own preflight answer
        }
        // Two or three single calls: measured, a batch (`edit-headers`) of two edits cost
        // more than the call it saved (docs/performance.md).
        let _ = resp.append_header("vary", "Origin");
        let Some(origin) = req.header("origin") else { return };
        if !self.allowed(&origin) {
            return;
        }
        let _ = resp.set_header("access-control-allow-origin", self.allow_origin_value(&origin));
        if self.credentials {
            let _ = resp.set_header("access-control-allow-credentials", "true");
        }
        if !self.expose.is_empty() {
            let _ = resp.set_header("access-control-expose-headers", &self.expose);
        }
    }
}

sluice_pdk::export_plugin!(Cors);

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(json: &str) -> Cors {
        Cors::new(sluice_pdk::parse_config(json).unwrap()).unwrap()
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        let c = cors(r#"{"allow_origins": ["https://app.example.com", "https://*.example.org"]}"#);
        assert!(c.allowed("https://app.example.com"));
        assert!(c.allowed("HTTPS://APP.EXAMPLE.COM"));
        assert!(!c.allowed("http://app.example.com"));
        assert!(!c.allowed("https://app.example.com.evil.net"));
        assert!(c.allowed("https://a.b.example.org"));
        assert!(!c.allowed("https://example.org"));
        assert!(!c.allowed("https://evil-example.org"));
        assert!(!c.allowed("https://x.example.org:8443"), "a port is not a subdomain");
        assert!(!c.allowed("null"));
    }

    #[test]
    fn preflights_need_origin_method_and_every_header_allowed() {
        let c = cors(
            r#"{"allow_origins": ["https://app.test"], "allow_methods": ["GET", "put"],
                "allow_headers": ["Content-Type", "x-trace"], "allow_credentials": true, "max_age": "10m"}"#,
        );
        let ok = c.preflight("https://app.test", "PUT", "content-type, X-Trace");
        assert_eq!(
            ok,
            vec![
                ("access-control-allow-origin", "https://app.test".to_owned()),
                ("access-control-allow-methods", "GET, PUT".to_owned()),
                ("access-control-allow-headers", "content-type, x-trace".to_owned()),
                ("access-control-allow-credentials", "true".to_owned()),
                ("access-control-max-age", "600".to_owned()),
            ]
        );
        assert!(c.preflight("https://other.test", "PUT", "").is_empty());
        assert!(c.preflight("https://app.test", "DELETE", "").is_empty());
        assert!(c.preflight("https://app.test", "PUT", "x-secret").is_empty());
    }

    #[test]
    fn any_origin_is_star_without_credentials_and_echoed_with_them() {
        assert_eq!(cors(r#"{"allow_origins": ["*"]}"#).allow_origin_value("https://a.test"), "*");
        let creds = cors(r#"{"allow_origins": ["*"], "allow_credentials": true}"#);
        assert_eq!(creds.allow_origin_value("https://a.test"), "https://a.test");
    }

    #[test]
    fn bad_origins_are_refused() {
        let err = |j: &str| Cors::new(sluice_pdk::parse_config(j).unwrap()).err().unwrap();
        assert!(err(r#"{"allow_origins": ["app.test"]}"#).starts_with("config.allow_origins[0]"));
        assert!(err(r#"{"allow_origins": ["https://app.*.test"]}"#).contains("subdomains"));
        assert!(err(r#"{"allow_origins": []}"#).starts_with("config.allow_origins: empty"));
    }
}
