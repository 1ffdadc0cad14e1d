//! Who may use the admin API: bearer tokens, each named (`admin.token` is `admin`,
//! `admin.read_token` is `read`, `[admin.tokens.NAME]` is NAME) and each either reading and
//! acting or only reading. The audit log names the token that acted. Without any token
//! configured (a loopback listener), the API is open to whoever can reach the loopback
//! address; with one, every `/api/` call needs one.
//!
//! Tokens are compared by their SHA-256 digests in constant time, never logged, and a
//! client that keeps sending wrong ones is throttled: after [`MAX_FAILURES`] failures within
//! [`FAILURE_WINDOW`] it gets 429 until the window has passed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::{Admin, TokenSource};

/// One accepted token: its holder's name, its role and its digest.
struct Key {
    name: String,
    role: Role,
    digest: [u8; 32],
}

/// Who a call's token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    /// The token's name; `None` when no tokens are configured (open on loopback).
    pub name: Option<String>,
}

pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Admin,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// Why a call was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or a wrong one: 401.
    Unauthenticated,
    /// A read-only token trying to act: 403.
    Forbidden,
    /// Too many wrong tokens from this address: 429, and how long to wait.
    Throttled(Duration),
}

#[derive(Default)]
pub struct Auth {
    keys: Vec<Key>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Auth {
    /// The tokens of `[admin]`, read (or generated) now.
    pub fn load(admin: &Admin) -> std::io::Result<Self> {
        let mut keys = Vec::with_capacity(admin.tokens.len());
        for t in &admin.tokens {
            let digest: [u8; 32] = Sha256::digest(resolve(&t.source)?.as_bytes()).into();
            if keys.iter().any(|k: &Key| constant_time_eq(&k.digest, &digest)) {
                let msg = format!("admin.tokens.{}: the same token as another name", t.name);
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg));
            }
            let role = if t.may_act { Role::Admin } else { Role::Read };
            keys.push(Key { name: t.name.clone(), role, digest });
        }
        Ok(Self { keys, ..Self::default() })
    }

    /// Whether any token is configured (else the API is open on loopback).
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The role the `Authorization` header grants, if it grants `needed`.
    pub fn check(
        &self,
        peer: IpAddr,
        authorization: Option<&http::HeaderValue>,
        needed: Role,
    ) -> Result<Grant, Refusal> {
        if !self.required() {
            return Ok(Grant { role: Role::Admin, name: None });
        }
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
        if let Some((count, since)) = failures.get(&peer)
            && *count >= MAX_FAILURES
        {
            return Err(Refusal::Throttled(
                FAILURE_WINDOW.saturating_sub(now.duration_since(*since)),
            ));
        }
        let given = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| -> [u8; 32] { Sha256::digest(t.trim().as_bytes()).into() });
        // Every key is compared, so the time taken says nothing about which one matched.
        let mut found = None;
        if let Some(given) = &given {
            for k in &self.keys {
                if constant_time_eq(&k.digest, given) {
                    found = Some(k);
                }
            }
        }
        let Some(key) = found else {
            let entry = failures.entry(peer).or_insert((0, now));
            entry.0 += 1;
            return Err(Refusal::Unauthenticated);
        };
        if key.role < needed {
            return Err(Refusal::Forbidden);
        }
        Ok(Grant { role: key.role, name: Some(key.name.clone()) })
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token itself: inline, or from its file. A missing file is created (mode 0600) with
/// a generated token, and its path logged (never the token).
fn resolve(source: &TokenSource) -> std::io::Result<String> {
    match source {
        TokenSource::Inline(t) => Ok(t.clone()),
        TokenSource::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => {
                let token = text.trim().to_owned();
                if token.len() < 16 {
                    let msg =
                        format!("{}: the token must be at least 16 characters", path.display());
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg));
                }
                Ok(token)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate(path),
            Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        },
    }
}

fn generate(path: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token: String = {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    file.write_all(format!("{token}\n").as_bytes())?;
    tracing::warn!("admin: generated a token into {} (mode 0600)", path.display());
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let token = |name: &str, may_act, t: &str| crate::config::AdminToken {
            name: name.into(),
            may_act,
            source: TokenSource::Inline(t.into()),
        };
        let admin = Admin {
            tls: None,
            listen: "127.0.0.1:0".parse().unwrap(),
            tokens: vec![
                token("admin", true, "admin-token-0123456789"),
                token("read", false, "read-token-0123456789"),
                token("alice", true, "alice-token-0123456789"),
            ],
        };
        Auth::load(&admin).unwrap()
    }

    fn bearer(t: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
    }

    #[test]
    fn roles_tokens_and_throttling() {
        let a = auth();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let grant = |role, name: &str| Ok(Grant { role, name: Some(name.into()) });
        assert_eq!(
            a.check(ip, Some(&bearer("admin-token-0123456789")), Role::Admin),
            grant(Role::Admin, "admin")
        );
        assert_eq!(
            a.check(ip, Some(&bearer("alice-token-0123456789")), Role::Read),
            grant(Role::Admin, "alice")
        );
        assert_eq!(
            a.check(ip, Some(&bearer("read-token-0123456789")), Role::Read),
            grant(Role::Read, "read")
        );
        assert_eq!(
            a.check(ip, Some(&bearer("read-token-0123456789")), Role::Admin),
            Err(Refusal::Forbidden)
        );
        assert_eq!(a.check(ip, None, Role::Read), Err(Refusal::Unauthenticated));
        for _ in 1..MAX_FAILURES {
            assert_eq!(
                a.check(ip, Some(&bearer("nope")), Role::Read),
                Err(Refusal::Unauthenticated)
            );
        }
        // Even the right token waits once an address has failed too often.
        assert!(matches!(
            a.check(ip, Some(&bearer("admin-token-0123456789")), Role::Admin),
            Err(Refusal::Throttled(_))
        ));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            a.check(other, Some(&bearer("admin-token-0123456789")), Role::Admin),
            grant(Role::Admin, "admin")
        );
    }

    #[test]
    fn a_missing_token_file_is_generated_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let token = resolve(&TokenSource::File(path.clone())).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(resolve(&TokenSource::File(path)).unwrap(), token, "read back, not regenerated");
    }
}
