//! The running config as the admin API shows it: every secret replaced by `"<redacted>"`.
//!
//! Envoy's `/config_dump` shows secrets; this shows none. A value is redacted whole when
//! its key names a secret (`secret`, `password`, `token`, `key`, `htpasswd`, `credential`,
//! `private`, `authorization`, `cookie`, in any case and anywhere in the key), which also
//! covers plugins' own configs (a JWT key set, API keys, htpasswd lines); and any string
//! holding a URL with a password (`redis://user:pass@host`) loses the password.

use serde_json::{Value, json};

const REDACTED: &str = "<redacted>";
const SECRET_WORDS: [&str; 9] = [
    "secret",
    "password",
    "token",
    "key",
    "htpasswd",
    "credential",
    "private",
    "authorization",
    "cookie",
];

/// The config `text` as JSON, redacted. Text that does not parse (it did when applied)
/// gives `null`.
pub fn redact_config(text: &str) -> Value {
    match text.parse::<toml::Table>() {
        Ok(table) => redact(to_json(toml::Value::Table(table))),
        Err(_) => Value::Null,
    }
}

/// The config `text` as TOML again, redacted (for diffs an operator reads).
pub fn redacted_toml(text: &str) -> String {
    let json = redact_config(text);
    match toml::Value::try_from(&json) {
        Ok(toml::Value::Table(t)) => toml::to_string_pretty(&t).unwrap_or_default(),
        _ => String::new(),
    }
}

/// A unified diff between two configs, both redacted: a changed secret shows as unchanged
/// `<redacted>` lines, never as its value.
pub fn diff(from: &str, to: &str, from_name: &str, to_name: &str) -> String {
    let (a, b) = (redacted_toml(from), redacted_toml(to));
    similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(from_name, to_name)
        .to_string()
}

fn to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => json!(s),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => json!(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
    }
}

fn redact(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let v = match SECRET_WORDS.iter().any(|w| lower.contains(w)) {
                        true => json!(REDACTED),
                        false => redact(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(redact).collect()),
        Value::String(s) => Value::String(url_password(&s)),
        other => other,
    }
}

/// `scheme://user:password@host...` -> `scheme://user:<redacted>@host...`.
fn url_password(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else { return s.to_owned() };
    let rest = &s[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return s.to_owned() };
    let Some(colon) = rest[..at].find(':') else { return s.to_owned() };
    format!("{}{}{REDACTED}{}", &s[..scheme_end + 3], &rest[..colon + 1], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_secret_is_redacted() {
        let text = r#"
[admin]
listen = "127.0.0.1:9901"
token = "admin-token-0123456789"
[kv]
backend = "redis"
url = "redis://app:hunter2@10.0.0.5:6379/0"
[plugins.auth]
module = "jwt"
config = { keys = [{ alg = "HS256", secret = "s3cret" }], forward_claims = { sub = "x-user" } }
[plugins.basic]
module = "basic-auth"
config = { htpasswd = ["ada:$2b$..."], realm = "api" }
[plugins.tag]
module = "header-transform"
config = { request = { set = { Authorization = "Bearer abc", "x-env" = "prod" } } }
"#;
        let v = redact_config(text);
        let out = v.to_string();
        for secret in ["admin-token", "hunter2", "s3cret", "$2b$", "Bearer abc"] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        assert_eq!(v["kv"]["url"], "redis://app:<redacted>@10.0.0.5:6379/0");
        assert_eq!(v["plugins"]["tag"]["config"]["request"]["set"]["x-env"], "prod");
        assert_eq!(v["plugins"]["basic"]["config"]["realm"], "api");
        assert_eq!(v["admin"]["listen"], "127.0.0.1:9901");

        let changed = text.replace("s3cret", "other-secret").replace("\"prod\"", "\"staging\"");
        let d = diff(text, &changed, "version 1", "version 2");
        assert!(d.contains("--- version 1\n+++ version 2"), "{d}");
        assert!(d.contains("prod") && d.contains("staging"), "{d}");
        assert!(
            !d.contains("s3cret") && !d.contains("other-secret") && !d.contains("hunter2"),
            "{d}"
        );
    }
}
