//! `api-key`: admits requests that carry a known API key and tells the upstream whose it is.
//!
//! ```toml
//! [plugins.keys]
//! module = "api-key"
//! [plugins.keys.config]
//! header = "x-api-key"            # default; where the key is read first
//! query = "api_key"               # optional; read if the header is absent
//! consumer_header = "x-consumer"  # default; set to the key's consumer id
//! keys = { "sha256:2bb80d53...c1" = "mobile-app", "sha256:..." = "partner-acme" }
//! ```
//!
//! Keys are configured only as SHA-256 hashes (`printf %s "$KEY" | sha256sum`), so the
//! config and its backups never hold a usable key. A request without a key gets 401, one
//! with an unknown key 403. The key itself is removed before the request goes upstream, and
//! an incoming `consumer_header` is always replaced, so a client cannot claim to be someone.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluice_pdk::{Action, Hooks, LocalResponse, Plugin, Request};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    consumer_header: Option<String>,
    keys: BTreeMap<String, String>,
    /// Keep the key on the request sent upstream.
    #[serde(default)]
    keep_key: bool,
}

pub struct ApiKey {
    header: String,
    query: Option<String>,
    consumer_header: String,
    /// SHA-256 of a key -> consumer id.
    keys: HashMap<[u8; 32], String>,
    keep_key: bool,
}

fn header_name(at: &str, name: &str) -> Result<String, String> {
    match sluice_pdk::is_header_name(name) {
        true => Ok(name.to_ascii_lowercase()),
        false => Err(format!("{at}: {name:?} is not a header name")),
    }
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ApiKey {
    /// The consumer for a presented key.
    fn consumer(&self, key: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.keys.get(&digest).map(String::as_str)
    }
}

/// Splits a query into pairs and takes out `name`; returns its value and the rest.
fn take_query(query: &str, name: &str) -> (Option<String>, String) {
    let mut found = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == name && found.is_none() {
                found = Some(v.to_owned());
                return false;
            }
            true
        })
        .collect();
    (found, rest.join("&"))
}

fn refuse(status: u16, why: &str) -> Action {
    Action::Respond(
        LocalResponse::new(status)
            .header("content-type", "text/plain")
            .header("www-authenticate", "ApiKey")
            .body(format!("{why}\n")),
    )
}

impl Plugin for ApiKey {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if c.keys.is_empty() {
            return Err("config.keys: no keys; map \"sha256:<hex>\" to a consumer id".into());
        }
        let mut keys = HashMap::new();
        for (hash, consumer) in c.keys {
            let Some(digest) = parse_hash(&hash.to_ascii_lowercase()) else {
                return Err(format!(
                    "config.keys.{hash}: expected \"sha256:\" and 64 hex digits (the key's \
                     SHA-256, e.g. from `printf %s \"$KEY\" | sha256sum`); keys are never \
                     written in clear"
                ));
            };
            if consumer.is_empty() || consumer.bytes().any(|b| b < 0x20 || b == 0x7f) {
                return Err(format!("config.keys.{hash}: the consumer id must be printable text"));
            }
            keys.insert(digest, consumer);
        }
        Ok(ApiKey {
            header: header_name("config.header", c.header.as_deref().unwrap_or("x-api-key"))?,
            query: c.query,
            consumer_header: header_name(
                "config.consumer_header",
                c.consumer_header.as_deref().unwrap_or("x-consumer"),
            )?,
            keys,
            keep_key: c.keep_key,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, req: &Request) -> Action {
        let _ = req.remove_header(&self.consumer_header);
        let mut key = req.header(&self.header).filter(|k| !k.is_empty());
        if key.is_some() && !self.keep_key {
            let _ = req.remove_header(&self.header);
        }
        if let (None, Some(name), Some(query)) = (&key, &self.query, req.query()) {
            let (found, rest) = take_query(&query, name);
            if found.is_some() && !self.keep_key {
                let _ = req.set_query(if rest.is_empty() { None } else { Some(&rest) });
            }
            key = found.filter(|k| !k.is_empty());
        }
        let Some(key) = key else {
            sluice_pdk::metrics::counter_add("missing", 1);
            return refuse(401, "missing API key");
        };
        match self.consumer(&key) {
            Some(consumer) => {
                sluice_pdk::metrics::counter_add("accepted", 1);
                let _ = req.set_header(&self.consumer_header, consumer);
                Action::Continue
            }
            None => {
                sluice_pdk::metrics::counter_add("unknown", 1);
                refuse(403, "unknown API key")
            }
        }
    }
}

sluice_pdk::export_plugin!(ApiKey);

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(key: &str) -> String {
        let d = Sha256::digest(key.as_bytes());
        format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    fn plugin(json: &str) -> Result<ApiKey, String> {
        ApiKey::new(sluice_pdk::parse_config(json)?)
    }

    #[test]
    fn keys_are_matched_by_hash_only() {
        let p = plugin(&format!(r#"{{"keys": {{"{}": "mobile"}}}}"#, hash("k-123"))).unwrap();
        assert_eq!(p.consumer("k-123"), Some("mobile"));
        assert_eq!(p.consumer("k-124"), None);
        assert_eq!(p.consumer(&hash("k-123")), None, "the hash itself is not a key");
    }

    #[test]
    fn clear_text_keys_and_bad_names_are_refused() {
        let err = |j: &str| plugin(j).err().unwrap();
        assert!(
            err(r#"{"keys": {"k-123": "mobile"}}"#)
                .starts_with("config.keys.k-123: expected \"sha256:\"")
        );
        assert!(err(r#"{"keys": {}}"#).starts_with("config.keys: no keys"));
        let ok = hash("k");
        assert!(
            err(&format!(r#"{{"keys": {{"{ok}": "a"}}, "header": "x key"}}"#))
                .starts_with("config.header")
        );
        assert!(err(&format!(r#"{{"keys": {{"{ok}": ""}}}}"#)).contains("consumer id"));
        assert!(err(r#"{"header": "x"}"#).starts_with("config: missing field `keys`"));
    }

    #[test]
    fn the_key_is_taken_out_of_the_query() {
        assert_eq!(
            take_query("a=1&api_key=k&b=2", "api_key"),
            (Some("k".into()), "a=1&b=2".into())
        );
        assert_eq!(take_query("api_key=k", "api_key"), (Some("k".into()), String::new()));
        assert_eq!(take_query("a=1", "api_key"), (None, "a=1".into()));
    }
}
