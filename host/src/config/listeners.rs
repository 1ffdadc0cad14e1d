//! `[[listeners]]`: listeners beside `server.listen`, plain or TLS.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use super::error::Errors;
use super::model::*;
use super::schema;

pub(super) fn validate_listeners(
    given: &[schema::Listener],
    server_listen: Option<std::net::SocketAddr>,
    base: &Path,
    errors: &mut Errors,
) -> Vec<Listener> {
    let mut names = HashSet::from([DEFAULT_LISTENER.to_owned()]);
    let mut addresses: HashSet<std::net::SocketAddr> = server_listen.into_iter().collect();
    let mut out = Vec::new();
    for (i, l) in given.iter().enumerate() {
        let at = |field: &str| format!("listeners[{i}].{field}");
        let name = match l.name.as_deref() {
            None => {
                errors.push(at("name"), "a listener needs a name (routes select it by name)");
                None
            }
            Some(n) if !valid_name(n) => {
                errors.push(at("name"), format!("{n:?}: use 1-64 letters, digits, '-' or '_'"));
                None
            }
            Some(n) if !names.insert(n.to_owned()) => {
                let msg = match n {
                    DEFAULT_LISTENER => "\"default\" is the name of server.listen".to_owned(),
                    _ => format!("duplicate listener name {n:?}"),
                };
                errors.push(at("name"), msg);
                None
            }
            Some(n) => Some(n),
        };
        let listen = match l.listen.as_deref() {
            None => {
                errors.push(at("listen"), "a listener needs `listen = \"address:port\"`");
                None
            }
            Some(text) => match text.parse::<std::net::SocketAddr>() {
                Err(_) => {
                    errors.push(at("listen"), format!("not an address:port: {text:?}"));
                    None
                }
                Ok(a) if a.port() != 0 && !addresses.insert(a) => {
                    errors.push(at("listen"), format!("{a} is already taken by another listener"));
                    None
                }
                Ok(a) => Some(a),
            },
        };
        let tls = match &l.tls {
            None => Some(None),
            Some(t) => validate_tls(t, &at("tls"), base, errors).map(Some),
        };
        if let (Some(name), Some(listen), Some(tls)) = (name, listen, tls) {
            out.push(Listener { name: Arc::from(name), listen, tls });
        }
    }
    out
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn validate_tls(
    t: &schema::Tls,
    at: &str,
    base: &Path,
    errors: &mut Errors,
) -> Option<TlsSettings> {
    let before = errors.0.len();
    if t.certs.is_empty() {
        errors.push(
            format!("{at}.certs"),
            "give at least one certificate: certs = [{ cert = \"site.pem\", key = \"site.key\" }]",
        );
    }
    let mut certs = Vec::new();
    for (j, c) in t.certs.iter().enumerate() {
        for (field, value) in [("cert", &c.cert), ("key", &c.key)] {
            if value.is_empty() {
                errors.push(format!("{at}.certs[{j}].{field}"), "must not be empty");
            }
        }
        certs.push(CertFiles { cert: base.join(&c.cert), key: base.join(&c.key) });
    }
    let tls13_only = match t.min_version.as_deref() {
        None | Some("1.2") => false,
        Some("1.3") => true,
        Some(other) => {
            let msg =
                format!("expected \"1.2\" or \"1.3\", got {other:?} (older versions are unsafe)");
            errors.push(format!("{at}.min_version"), msg);
            false
        }
    };
    let client_ca = t.client_ca.as_ref().map(|p| base.join(p));
    let client_auth = match (t.client_auth.as_deref(), &client_ca) {
        (None, None) => ClientAuth::None,
        (None | Some("required"), Some(_)) => ClientAuth::Required,
        (Some("optional"), Some(_)) => ClientAuth::Optional,
        (Some("required" | "optional"), None) => {
            errors.push(
                format!("{at}.client_ca"),
                "client_auth needs client_ca: the CA bundle that signs client certificates",
            );
            ClientAuth::None
        }
        (Some(other), _) => {
            let msg = format!("expected \"required\" or \"optional\", got {other:?}");
            errors.push(format!("{at}.client_auth"), msg);
            ClientAuth::None
        }
    };
    (errors.0.len() == before).then_some(TlsSettings { certs, tls13_only, client_ca, client_auth })
}
