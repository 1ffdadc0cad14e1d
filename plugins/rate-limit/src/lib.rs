//! `rate-limit`: limits requests per client, API key, user, route or any combination, with
//! a sliding window or a token bucket, in one or more tiers.
//!
//! ```toml
//! [plugins.limit]
//! module = "rate-limit"
//! [plugins.limit.config]
//! algorithm = "sliding-window"            # or "token-bucket"
//! key = ["header:x-api-key", "route"]     # default ["client-ip"]
//! tiers = [{ limit = 10, window = "1s" }, { limit = 1000, window = "1h" }]
//! bypass = ["internal-batch-key|orders"]  # composed keys that are never limited
//! missing_key = "client-ip"               # or "skip": a request without its header or query
//! ```
//!
//! Counts live in the gateway's key-value store, so a limit holds across worker threads,
//! and with `[kv] backend = "redis"` across gateway processes. Allowed responses carry
//! `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds) for the
//! tier closest to its limit; a refused request gets 429 with `Retry-After`. If the store
//! is unavailable (`kv.on_unavailable = "fail-open"`), requests pass unlimited and the
//! `store_unavailable` counter goes up.

pub mod limiter;

use std::time::Duration;

use limiter::{Algorithm, Charge, Store, Tier, Verdict};
use serde::Deserialize;
use sluice_pdk::config::OneOrMany;
use sluice_pdk::kv::KvError;
use sluice_pdk::{Action, HeaderEdit, Hooks, LocalResponse, Plugin, Request, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    key: Option<OneOrMany>,
    #[serde(default)]
    tiers: Vec<TierConfig>,
    /// Shorthand for a single tier.
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    bypass: Vec<String>,
    #[serde(default = "yes")]
    headers: bool,
    /// What a request whose key lacks a header or query part is counted under.
    #[serde(default)]
    missing_key: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierConfig {
    limit: u64,
    window: String,
}

/// One part of the key a request is counted under.
#[derive(Debug, PartialEq)]
pub enum KeyPart {
    ClientIp,
    Route,
    Header(String),
    Query(String),
}

impl KeyPart {
    fn parse(at: &str, s: &str) -> Result<Self, String> {
        Ok(match s.split_once(':') {
            None if s == "client-ip" => KeyPart::ClientIp,
            None if s == "route" => KeyPart::Route,
            Some(("header", name)) if !name.is_empty() => {
                KeyPart::Header(name.to_ascii_lowercase())
            }
            Some(("query", name)) if !name.is_empty() => KeyPart::Query(name.to_owned()),
            _ => {
                return Err(format!(
                    "{at}: unknown key part {s:?}; expected \"client-ip\", \"route\", \
                     \"header:NAME\" (also a JWT claim the jwt plugin forwards as a header) \
                     or \"query:NAME\""
                ));
            }
        })
    }
}

/// What a request is counted under when a header or query part of its key is missing.
#[derive(Debug, PartialEq)]
pub enum Missing {
    /// Its client IP, alone: such requests never share one bucket (where a few clients
    /// would exhaust it for everyone), and leaving the header out gains a client nothing.
    ClientIp,
    /// Not limited (say, when another plugin already refused requests without it).
    Skip,
}

pub struct RateLimit {
    algorithm: Algorithm,
    key: Vec<KeyPart>,
    missing: Missing,
    /// Each tier with the prefix of its store keys (limit and window, so a changed tier
    /// starts fresh instead of reading counts kept for another).
    tiers: Vec<(Tier, String)>,
    bypass: Vec<String>,
    headers: bool,
}

impl RateLimit {
    /// The key parts joined with `|`, or `None` when a header or query part is missing
    /// (absent or empty).
    fn key_of(&self, req: &Request) -> Option<String> {
        let mut out = String::new();
        for (i, part) in self.key.iter().enumerate() {
            if i > 0 {
                out.push('|');
            }
            let value = match part {
                KeyPart::ClientIp => req.client_ip(),
                KeyPart::Route => req.route(),
                KeyPart::Header(name) => req.header(name).unwrap_or_default(),
                KeyPart::Query(name) => req
                    .query()
                    .as_deref()
                    .and_then(|q| sluice_pdk::query_param(q, name))
                    .unwrap_or_default()
                    .to_owned(),
            };
            if value.is_empty() && matches!(part, KeyPart::Header(_) | KeyPart::Query(_)) {
                return None;
            }
            out.push_str(&value);
        }
        Some(out)
    }
}

/// The gateway's store.
struct Kv;

impl Store for Kv {
    type Error = KvError;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        sluice_pdk::kv::get(key)
    }
    fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, KvError> {
        sluice_pdk::kv::incr(key, delta, ttl_ms)
    }
    fn incr_and_get(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: u64,
        other: &str,
    ) -> Result<(i64, Option<Vec<u8>>), KvError> {
        sluice_pdk::kv::incr_and_get(key, delta, ttl_ms, other)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, KvError> {
        sluice_pdk::kv::compare_and_swap(key, expected, value, ttl_ms)
    }
}

fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

fn rate_headers(v: &Verdict) -> [(&'static str, u64); 3] {
    [
        ("x-ratelimit-limit", v.limit),
        ("x-ratelimit-remaining", v.remaining),
        ("x-ratelimit-reset", seconds(v.reset_ms)),
    ]
}

impl Plugin for RateLimit {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        let algorithm = match c.algorithm.as_deref() {
            None | Some("sliding-window") => Algorithm::SlidingWindow,
            Some("token-bucket") => Algorithm::TokenBucket,
            Some(other) => {
                return Err(format!(
                    "config.algorithm: expected \"sliding-window\" or \"token-bucket\", got {other:?}"
                ));
            }
        };
        let parts = match c.key {
            None => vec!["client-ip".to_owned()],
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) if v.is_empty() => return Err("config.key: is empty".into()),
            Some(OneOrMany::Many(v)) => v,
        };
        let key = parts
            .iter()
            .enumerate()
            .map(|(i, p)| KeyPart::parse(&format!("config.key[{i}]"), p))
            .collect::<Result<_, _>>()?;
        let mut tiers = c.tiers;
        match (c.limit, c.window) {
            (Some(limit), Some(window)) => tiers.insert(0, TierConfig { limit, window }),
            (None, None) => {}
            _ => return Err("config: `limit` and `window` go together".into()),
        }
        if tiers.is_empty() {
            return Err("config: no limit; set `limit` and `window`, or `tiers`".into());
        }
        let tiers = tiers
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let at = format!("config.tiers[{i}]");
                if t.limit == 0 {
                    return Err(format!("{at}.limit: must be at least 1"));
                }
                let window = humantime::parse_duration(&t.window)
                    .map_err(|e| format!("{at}.window: {e}: {:?}", t.window))?;
                if window < Duration::from_millis(1) {
                    return Err(format!("{at}.window: must be at least 1ms"));
                }
                let prefix = format!("{}/{}", t.limit, window.as_millis());
                Ok((Tier { limit: t.limit, window }, prefix))
            })
            .collect::<Result<_, _>>()?;
        let missing = match c.missing_key.as_deref() {
            None | Some("client-ip") => Missing::ClientIp,
            Some("skip") => Missing::Skip,
            Some(other) => {
                return Err(format!(
                    "config.missing_key: expected \"client-ip\" or \"skip\", got {other:?}"
                ));
            }
        };
        Ok(RateLimit { algorithm, key, missing, tiers, bypass: c.bypass, headers: c.headers })
    }

    fn hooks(&self) -> Hooks {
        match self.headers {
            true => Hooks::all(),
            false => Hooks::ON_REQUEST,
        }
    }

    fn on_request(&self, req: &Request) -> Action {
        // The store key after the tier's prefix: `:KEY` for a composed key, `!ip:IP` for the
        // client-IP fallback, so no header value can name a fallback bucket.
        let suffix = match (self.key_of(req), &self.missing) {
            (Some(key), _) if self.bypass.contains(&key) => {
                sluice_pdk::metrics::counter_add("bypassed", 1);
                return Action::Continue;
            }
            (Some(key), _) => [":", &key].concat(),
            (None, Missing::Skip) => {
                sluice_pdk::metrics::counter_add("missing_key", 1);
                return Action::Continue;
            }
            (None, Missing::ClientIp) => {
                sluice_pdk::metrics::counter_add("missing_key", 1);
                format!("!ip:{}", req.client_ip())
            }
        };
        let now = sluice_pdk::clock::now_ms();
        let mut charges: Vec<Charge> = Vec::with_capacity(self.tiers.len());
        let mut tightest: Option<Verdict> = None;
        for (tier, prefix) in &self.tiers {
            let verdict = match limiter::hit(
                &Kv,
                self.algorithm,
                tier,
                &[prefix.as_str(), &suffix].concat(),
                now,
            ) {
                Ok((verdict, charge)) => {
                    charges.push(charge);
                    verdict
                }
                Err(e) => {
                    // Fail open: without counts there is nothing to limit by.
                    sluice_pdk::metrics::counter_add("store_unavailable", 1);
                    sluice_pdk::debug!("store error, request not limited: {e:?}");
                    return Action::Continue;
                }
            };
            if !verdict.allowed {
                for charge in &charges {
                    let _ = limiter::refund(&Kv, charge, now);
                }
                sluice_pdk::metrics::counter_add("limited", 1);
                let mut resp = LocalResponse::new(429)
                    .header("content-type", "text/plain")
                    .header("retry-after", seconds(verdict.retry_after_ms).max(1).to_string())
                    .body("rate limit exceeded\n");
                if self.headers {
                    for (n, v) in rate_headers(&verdict) {
                        resp = resp.header(n, v.to_string());
                    }
                }
                return Action::Respond(resp);
            }
            if tightest.is_none_or(|t| verdict.remaining < t.remaining) {
                tightest = Some(verdict);
            }
        }
        sluice_pdk::metrics::counter_add("allowed", 1);
        if let (true, Some(v)) = (self.headers, tightest) {
            // Three numbers, written without `format!` (every allowed request does this).
            let mut saved = String::with_capacity(62);
            for (i, n) in [v.limit, v.remaining, v.reset_ms].into_iter().enumerate() {
                if i > 0 {
                    saved.push(' ');
                }
                saved.push_str(itoa::Buffer::new().format(n));
            }
            let _ = req.set_context("rl", &saved);
        }
        Action::Continue
    }

    fn on_response(&self, req: &Request, resp: &Response) {
        let Some(saved) = req.context("rl") else { return };
        let mut it = saved.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
        let (Some(limit), Some(remaining), Some(reset_ms)) = (it.next(), it.next(), it.next())
        else {
            return;
        };
        let v = Verdict { allowed: true, limit, remaining, reset_ms, retry_after_ms: 0 };
        // The three headers in one call.
        let mut texts = [itoa::Buffer::new(), itoa::Buffer::new(), itoa::Buffer::new()];
        let [(n0, v0), (n1, v1), (n2, v2)] = rate_headers(&v);
        let [t0, t1, t2] = &mut texts;
        let _ = resp.edit_headers(&[
            HeaderEdit::Set((n0, t0.format(v0))),
            HeaderEdit::Set((n1, t1.format(v1))),
            HeaderEdit::Set((n2, t2.format(v2))),
        ]);
    }
}

sluice_pdk::export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<RateLimit, String> {
        RateLimit::new(sluice_pdk::parse_config(json)?)
    }

    #[test]
    fn config_is_checked_with_paths() {
        let err = |j: &str| config(j).err().unwrap();
        assert_eq!(err(r#"{}"#), "config: no limit; set `limit` and `window`, or `tiers`");
        assert!(err(r#"{"limit": 5}"#).contains("go together"));
        assert!(err(r#"{"limit": 0, "window": "1s"}"#).starts_with("config.tiers[0].limit"));
        assert!(
            err(r#"{"tiers": [{"limit": 1, "window": "soon"}]}"#)
                .starts_with("config.tiers[0].window")
        );
        assert!(
            err(r#"{"limit": 1, "window": "1s", "key": ["ip"]}"#)
                .starts_with("config.key[0]: unknown key part")
        );
        assert!(
            err(r#"{"limit": 1, "window": "1s", "algorithm": "leaky"}"#)
                .starts_with("config.algorithm")
        );
        assert!(
            err(r#"{"limit": 1, "window": "1s", "burst": 3}"#).contains("unknown field `burst`")
        );
        assert!(
            err(r#"{"limit": 1, "window": "1s", "missing_key": "share"}"#)
                .starts_with("config.missing_key: expected")
        );
        let missing = |j: &str| config(j).unwrap().missing;
        assert_eq!(missing(r#"{"limit": 1, "window": "1s"}"#), Missing::ClientIp);
        assert_eq!(
            missing(r#"{"limit": 1, "window": "1s", "missing_key": "skip"}"#),
            Missing::Skip
        );
    }

    #[test]
    fn tiers_and_keys_are_read() {
        let rl = config(
            r#"{"limit": 5, "window": "1s", "tiers": [{"limit": 100, "window": "1m"}],
                "key": ["header:X-Api-Key", "route", "query:tenant"], "algorithm": "token-bucket"}"#,
        )
        .unwrap();
        assert_eq!(rl.algorithm, Algorithm::TokenBucket);
        let prefixes: Vec<&str> = rl.tiers.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(prefixes, ["5/1000", "100/60000"]);
        assert_eq!(
            rl.key,
            [KeyPart::Header("x-api-key".into()), KeyPart::Route, KeyPart::Query("tenant".into())]
        );
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        use sluice_pdk::query_param;
        assert_eq!(query_param("a=1&tenant=acme&b", "tenant"), Some("acme"));
        assert_eq!(query_param("a=1&b", "b"), Some(""));
        assert_eq!(query_param("a=1", "tenant"), None);
    }
}
