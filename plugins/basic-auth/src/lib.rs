//! `basic-auth`: HTTP Basic authentication against htpasswd-style bcrypt hashes.
//!
//! ```toml
//! [plugins.staff]
//! module = "basic-auth"
//! files = { htpasswd = "staff.htpasswd" }   # lines `user:$2y$10$...` (htpasswd -B)
//! [plugins.staff.config]
//! realm = "staff"
//! users = { "ci-bot" = "$2b$10$..." }       # optional, besides or instead of the file
//! user_header = "x-user"                    # default; set to the authenticated user
//! ```
//!
//! A missing or wrong password gets 401 with `WWW-Authenticate: Basic realm="..."`.
//! bcrypt is slow on purpose (cost 10 is tens of milliseconds): a verified user and
//! password is remembered in the instance, as a SHA-256 of both with a per-instance salt, for
//! `cache_ttl` (default 60 s), so a client pays the bcrypt cost once, not per request. Give
//! the plugin a `timeout` that fits your cost factor on a cold instance.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluice_pdk::{Action, Hooks, LocalResponse, Plugin, Request};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    #[serde(default)]
    htpasswd: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    files: Option<Files>,
    #[serde(default)]
    users: BTreeMap<String, String>,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    user_header: Option<String>,
    #[serde(default)]
    cache_ttl: Option<String>,
}

pub struct BasicAuth {
    users: HashMap<String, String>,
    challenge: String,
    user_header: String,
    cache_ttl_ms: u64,
    /// Salted digests of recently verified `user:password` pairs, with when they expire.
    verified: RefCell<HashMap<[u8; 32], u64>>,
    salt: [u8; 16],
}

const MAX_CACHED: usize = 10_000;

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2x$", "$2y$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60
}

/// Reads htpasswd lines (`user:hash`; blank lines and `#` comments skipped).
fn parse_htpasswd(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("files.htpasswd line {}: expected user:hash", n + 1));
        };
        if !is_bcrypt(hash) {
            return Err(format!(
                "files.htpasswd line {} (user {user:?}): only bcrypt hashes are accepted \
                 (htpasswd -B); MD5, SHA-1 and crypt hashes are too weak",
                n + 1
            ));
        }
        out.push((user.to_owned(), hash.to_owned()));
    }
    Ok(out)
}

impl BasicAuth {
    /// Checks an `Authorization` header value; the user on success.
    fn check(&self, authorization: &str, now_ms: u64) -> Option<String> {
        let (scheme, b64) = authorization.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
        let pair = String::from_utf8(decoded).ok()?;
        let (user, password) = pair.split_once(':')?;
        let hash = self.users.get(user)?;
        let digest: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(self.salt);
            h.update(pair.as_bytes());
            h.finalize().into()
        };
        if self.verified.borrow().get(&digest).is_some_and(|until| now_ms < *until) {
            return Some(user.to_owned());
        }
        if !bcrypt::verify(password, hash).unwrap_or(false) {
            return None;
        }
        if self.cache_ttl_ms > 0 {
            let mut cache = self.verified.borrow_mut();
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, until| now_ms < *until);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(digest, now_ms + self.cache_ttl_ms);
        }
        Some(user.to_owned())
    }
}

impl Plugin for BasicAuth {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        let mut users = HashMap::new();
        if let Some(text) = c.files.and_then(|f| f.htpasswd) {
            users.extend(parse_htpasswd(&text)?);
        }
        for (user, hash) in c.users {
            if !is_bcrypt(&hash) {
                return Err(format!("config.users.{user}: not a bcrypt hash (htpasswd -B)"));
            }
            users.insert(user, hash);
        }
        if users.is_empty() {
            return Err("config: no users; give `users` or an `htpasswd` file".into());
        }
        let realm = c.realm.unwrap_or_else(|| "sluice".to_owned());
        if realm.contains(['"', '\\', '\r', '\n']) {
            return Err("config.realm: may not contain quotes, backslashes or line breaks".into());
        }
        let user_header = c.user_header.unwrap_or_else(|| "x-user".to_owned()).to_ascii_lowercase();
        if !sluice_pdk::is_header_name(&user_header) {
            return Err(format!("config.user_header: {user_header:?} is not a header name"));
        }
        let cache_ttl_ms = match c.cache_ttl {
            None => 60_000,
            Some(t) => humantime::parse_duration(&t)
                .map_err(|e| {
                    format!("config.cache_ttl: {e}: {t:?} (e.g. \"60s\", \"0s\" to disable)")
                })?
                .as_millis() as u64,
        };
        // Random per instance (std's hasher keys come from the host's WASI random source),
        // so cached digests say nothing outside it.
        let random = || std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8);
        let mut salt = [0u8; 16];
        salt[..8].copy_from_slice(&random().to_le_bytes());
        salt[8..].copy_from_slice(&random().to_le_bytes());
        Ok(BasicAuth {
            users,
            challenge: format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
            user_header,
            cache_ttl_ms,
            verified: RefCell::default(),
            salt,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, req: &Request) -> Action {
        let _ = req.remove_header(&self.user_header);
        let user =
            req.header("authorization").and_then(|a| self.check(&a, sluice_pdk::clock::now_ms()));
        match user {
            Some(user) => {
                sluice_pdk::metrics::counter_add("accepted", 1);
                let _ = req.remove_header("authorization");
                let _ = req.set_header(&self.user_header, &user);
                Action::Continue
            }
            None => {
                sluice_pdk::metrics::counter_add("rejected", 1);
                Action::Respond(
                    LocalResponse::new(401)
                        .header("content-type", "text/plain")
                        .header("www-authenticate", self.challenge.clone())
                        .body("authentication required\n"),
                )
            }
        }
    }
}

sluice_pdk::export_plugin!(BasicAuth);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(users: &[(&str, &str)], ttl: &str) -> BasicAuth {
        let users: BTreeMap<String, String> =
            users.iter().map(|(u, p)| (u.to_string(), bcrypt::hash(p, 4).unwrap())).collect();
        BasicAuth::new(Config {
            files: None,
            users,
            realm: Some("staff".into()),
            user_header: None,
            cache_ttl: Some(ttl.into()),
        })
        .unwrap()
    }

    fn basic(pair: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    #[test]
    fn right_passwords_pass_and_wrong_ones_do_not() {
        let p = plugin(&[("ada", "lovelace"), ("alan", "turing")], "60s");
        assert_eq!(p.check(&basic("ada:lovelace"), 0).as_deref(), Some("ada"));
        assert_eq!(p.check(&basic("ada:turing"), 0), None);
        assert_eq!(p.check(&basic("grace:hopper"), 0), None);
        assert_eq!(p.check("Bearer abc", 0), None);
        assert_eq!(p.check("Basic !!!", 0), None);
        assert_eq!(p.check(&basic("no-colon"), 0), None);
        // Passwords may contain colons: only the first one separates.
        let p = plugin(&[("u", "a:b")], "0s");
        assert_eq!(p.check(&basic("u:a:b"), 0).as_deref(), Some("u"));
    }

    #[test]
    fn verified_pairs_are_cached_until_the_ttl() {
        let p = plugin(&[("ada", "lovelace")], "60s");
        assert!(p.check(&basic("ada:lovelace"), 1_000).is_some());
        assert_eq!(p.verified.borrow().len(), 1);
        // A wrong password is never cached, and does not match the cached digest.
        assert!(p.check(&basic("ada:wrong"), 1_000).is_none());
        assert_eq!(p.verified.borrow().len(), 1);
        assert!(p.check(&basic("ada:lovelace"), 60_999).is_some());
        let p = plugin(&[("ada", "lovelace")], "0s");
        assert!(p.check(&basic("ada:lovelace"), 0).is_some());
        assert!(p.verified.borrow().is_empty());
    }

    #[test]
    fn htpasswd_files_must_hold_bcrypt() {
        let bc = bcrypt::hash("pw", 4).unwrap();
        let ok = parse_htpasswd(&format!("# staff\n\nada:{bc}\n")).unwrap();
        assert_eq!(ok, vec![("ada".to_owned(), bc)]);
        let md5 = parse_htpasswd("ada:$apr1$abc$def").unwrap_err();
        assert!(md5.starts_with("files.htpasswd line 1 (user \"ada\"): only bcrypt"), "{md5}");
        assert!(parse_htpasswd("garbage").unwrap_err().contains("expected user:hash"));
    }
}
