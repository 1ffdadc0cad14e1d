//! `jwt`: verifies JSON Web Tokens and forwards chosen claims to the upstream as headers.
//!
//! ```toml
//! [plugins.auth]
//! module = "jwt"
//! files = { jwks = "keys/jwks.json" }          # optional: a JWKS document
//! [plugins.auth.config]
//! keys = [{ kid = "hs", alg = "HS256", secret = "..." },
//!         { alg = "RS256", pem = "-----BEGIN PUBLIC KEY-----\n..." }]
//! issuer = "https://auth.example.com"          # or a list
//! audience = "orders-api"                      # or a list
//! leeway = "30s"                               # for exp and nbf
//! required_claims = ["sub"]
//! token_from = ["header:authorization", "cookie:session", "query:access_token"]
//! forward_claims = { sub = "x-user-id", role = "x-user-role" }
//! run_on_preflight = false                     # let CORS preflights through (default true)
//! ```
//!
//! A request without a token, or with one that does not verify, gets 401 with
//! `WWW-Authenticate: Bearer realm="..."` (plus `error="invalid_token"` and a description
//! for a bad token, RFC 6750). Headers named in `forward_claims` are always removed from the
//! incoming request first, so a client cannot set them itself.

mod verify;

use serde::Deserialize;
use serde_json::Value;
use sluice_pdk::config::OneOrMany;
use sluice_pdk::{Action, Hooks, LocalResponse, Plugin, Request};
use verify::{Checks, Failure, Key, KeyConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    #[serde(default)]
    jwks: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    keys: Vec<KeyConfig>,
    /// The contents of `plugins.NAME.files`, filled in by the gateway.
    #[serde(default)]
    files: Option<Files>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    issuer: Option<OneOrMany>,
    #[serde(default)]
    audience: Option<OneOrMany>,
    #[serde(default)]
    leeway: Option<String>,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default)]
    token_from: Option<OneOrMany>,
    #[serde(default)]
    forward_claims: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    realm: Option<String>,
    /// Check CORS preflights too (`OPTIONS` with `Access-Control-Request-Method`, which
    /// browsers send without credentials). Set `false` when a `cors` plugin after this one
    /// should answer them.
    #[serde(default = "yes")]
    run_on_preflight: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, PartialEq)]
enum Source {
    /// `Authorization: Bearer <token>` (or another header holding the bare token).
    Header(String),
    Cookie(String),
    Query(String),
}

pub struct Jwt {
    keys: Vec<Key>,
    checks: Checks,
    sources: Vec<Source>,
    forward: Vec<(String, String)>,
    realm: String,
    run_on_preflight: bool,
}

impl Jwt {
    fn token(&self, req: &Request) -> Option<String> {
        self.sources
            .iter()
            .find_map(|s| match s {
                Source::Header(name) => {
                    let v = req.header(name)?;
                    let v = v.trim();
                    match name.as_str() {
                        "authorization" => {
                            let (scheme, token) = v.split_once(' ')?;
                            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
                        }
                        _ => Some(v.to_owned()),
                    }
                }
                Source::Cookie(name) => req.header_all("cookie").iter().find_map(|line| {
                    line.split(';').find_map(|kv| {
                        let (k, v) = kv.trim().split_once('=')?;
                        (k == name).then(|| v.trim_matches('"').to_owned())
                    })
                }),
                Source::Query(name) => {
                    Some(sluice_pdk::query_param(&req.query()?, name)?.to_owned())
                }
            })
            .filter(|t| !t.is_empty())
    }

    fn refuse(&self, failure: Failure) -> Action {
        let challenge = match &failure {
            Failure::Missing => format!("Bearer realm=\"{}\"", self.realm),
            Failure::Invalid(why) => format!(
                "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{why}\"",
                self.realm
            ),
        };
        let body = match failure {
            Failure::Missing => "missing bearer token\n".to_owned(),
            Failure::Invalid(why) => format!("invalid token: {why}\n"),
        };
        Action::Respond(
            LocalResponse::new(401)
                .header("content-type", "text/plain")
                .header("www-authenticate", challenge)
                .body(body),
        )
    }
}

/// A claim as a header value: strings as they are, anything else as JSON.
fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Plugin for Jwt {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, k) in c.keys.into_iter().enumerate() {
            keys.push(Key::from_config(&format!("config.keys[{i}]"), k)?);
        }
        if let Some(text) = c.files.and_then(|f| f.jwks) {
            keys.extend(verify::jwks_keys(&text).map_err(|e| format!("files.jwks: {e}"))?);
        }
        if keys.is_empty() {
            return Err("config.keys: no key; give `keys` or a `jwks` file".to_owned());
        }
        let algorithms = match c.algorithms {
            None => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, a)| {
                        verify::parse_alg(a).map_err(|e| format!("config.algorithms[{i}]: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let leeway_s = match c.leeway {
            None => 0,
            Some(l) => humantime::parse_duration(&l)
                .map_err(|e| format!("config.leeway: {e}: {l:?}"))?
                .as_secs(),
        };
        let sources = c
            .token_from
            .map(OneOrMany::into_vec)
            .unwrap_or_else(|| vec!["header:authorization".to_owned()])
            .iter()
            .enumerate()
            .map(|(i, s)| match s.split_once(':') {
                Some(("header", n)) if !n.is_empty() => Ok(Source::Header(n.to_ascii_lowercase())),
                Some(("cookie", n)) if !n.is_empty() => Ok(Source::Cookie(n.to_owned())),
                Some(("query", n)) if !n.is_empty() => Ok(Source::Query(n.to_owned())),
                _ => Err(format!(
                    "config.token_from[{i}]: expected \"header:NAME\", \"cookie:NAME\" or \"query:NAME\", got {s:?}"
                )),
            })
            .collect::<Result<_, _>>()?;
        for (claim, header) in &c.forward_claims {
            if !sluice_pdk::is_header_name(header) {
                return Err(format!(
                    "config.forward_claims.{claim}: {header:?} is not a header name"
                ));
            }
        }
        Ok(Jwt {
            checks: Checks::new(
                &keys,
                algorithms,
                &c.issuer.map(OneOrMany::into_vec).unwrap_or_default(),
                &c.audience.map(OneOrMany::into_vec).unwrap_or_default(),
                leeway_s,
                c.required_claims,
            ),
            sources,
            forward: c.forward_claims.into_iter().collect(),
            realm: c.realm.unwrap_or_else(|| "sluice".to_owned()),
            run_on_preflight: c.run_on_preflight,
            keys,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, req: &Request) -> Action {
        // A client's own claim headers never reach the upstream: each is removed here, or
        // replaced by `set_header` below (a host call fewer per claim on the common path).
        // A refused request goes nowhere.
        let remove_claim_headers = || {
            for (_, header) in &self.forward {
                let _ = req.remove_header(header);
            }
        };
        if !self.run_on_preflight
            && req.method() == "OPTIONS"
            && req.header("access-control-request-method").is_some()
        {
            remove_claim_headers();
            return Action::Continue;
        }
        let Some(token) = self.token(req) else {
            sluice_pdk::metrics::counter_add("missing", 1);
            return self.refuse(Failure::Missing);
        };
        match verify::verify(&token, &self.keys, &self.checks) {
            Ok(claims) => {
                sluice_pdk::metrics::counter_add("verified", 1);
                for (claim, header) in &self.forward {
                    let set = claims.get(claim).is_some_and(|v| {
                        let ok = req.set_header(header, &claim_text(v)).is_ok();
                        if !ok {
                            sluice_pdk::debug!("claim {claim:?} cannot be a header value");
                        }
                        ok
                    });
                    if !set {
                        let _ = req.remove_header(header);
                    }
                }
                Action::Continue
            }
            Err(failure) => {
                sluice_pdk::metrics::counter_add("rejected", 1);
                self.refuse(failure)
            }
        }
    }
}

sluice_pdk::export_plugin!(Jwt);

#[cfg(test)]
mod tests;
