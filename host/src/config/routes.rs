//! `[[routes]]`: matching, rewriting and splitting, and the route-table analysis that finds
//! unreachable and ambiguous routes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::check::*;
use super::error::Errors;
use super::model::*;
use super::{ConfigError, DEFAULT_MAX_BODY_BYTES, schema};
use crate::router::{self, FieldMatch, Finding, HostPattern, PathPattern, Rule, ValueMatch};

pub fn validate_routes(
    file: &schema::File,
    default_body: Option<u64>,
    errors: &mut Errors,
    warnings: &mut Vec<ConfigError>,
) -> Vec<Route> {
    let default_body = default_body.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    // Names given in the file must be unique; an unnamed route is named after its path,
    // with `#N` (its position, from 1) when that name is taken.
    let mut seen_names = HashSet::new();
    for (i, r) in file.routes.iter().enumerate() {
        if let Some(name) = &r.name
            && !seen_names.insert(name.clone())
        {
            errors.push(format!("routes[{i}].name"), format!("duplicate route name {name:?}"));
        }
    }
    let listener_names: Vec<&str> =
        file.listeners.iter().filter_map(|l| l.name.as_deref()).collect();
    let mut routes = Vec::with_capacity(file.routes.len());
    // Config indices of the routes in `routes`, for the analysis' messages.
    let mut indices = Vec::with_capacity(file.routes.len());
    for (i, r) in file.routes.iter().enumerate() {
        let at = |field: &str| format!("routes[{i}].{field}");
        let before = errors.0.len();
        let rule = validate_rule(r, &listener_names, &at, errors);
        let name = match &r.name {
            Some(name) => name.clone(),
            None => {
                let path = r.path.clone().or_else(|| r.prefix.clone());
                let path = path.unwrap_or_else(|| format!("routes[{i}]"));
                let mut name = path.clone();
                if seen_names.contains(&name) {
                    name = format!("{path}#{}", i + 1);
                }
                seen_names.insert(name.clone());
                name
            }
        };
        let targets = validate_targets(r, file, &at, errors);
        let split_sticky = match (&r.split_sticky, &r.split) {
            (None, _) => None,
            (Some(_), None) => {
                errors.push(at("split_sticky"), "only used with `split`");
                None
            }
            (Some(k), Some(_)) => errors.check(at("split_sticky"), key_source(k)),
        };
        for (j, p) in r.plugins.iter().enumerate() {
            if !file.plugins.contains_key(p) {
                errors.push(format!("routes[{i}].plugins[{j}]"), format!("unknown plugin {p:?}"));
            }
        }
        let rewrite = rule.as_ref().and_then(|rule| validate_rewrite(r, rule, &at, errors));
        let https_redirect = match r.https_redirect {
            None => None,
            Some(p) => match u16::try_from(p) {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    errors.push(at("https_redirect"), format!("a port, 1-65535, got {p}"));
                    None
                }
            },
        };
        let websocket = validate_websocket(r.websocket.as_ref(), &at, errors);
        let compression = validate_compression(r.compression.as_ref(), &at, errors);
        let request_decompression = r
            .request_decompression
            .as_ref()
            .filter(|d| d.enabled.unwrap_or(true))
            .map(|d| d.max_bytes.unwrap_or(DEFAULT_DECOMPRESSED_MAX_BYTES));
        if let Some(max) = request_decompression
            && !(1024..=1 << 30).contains(&max)
        {
            errors.push(
                at("request_decompression.max_bytes"),
                format!("must be between 1024 and 1073741824, got {max}"),
            );
        }
        let grpc_max_message_bytes = r
            .grpc
            .as_ref()
            .and_then(|g| g.max_message_bytes)
            .unwrap_or(DEFAULT_GRPC_MAX_MESSAGE_BYTES);
        if !(1024..=1 << 30).contains(&grpc_max_message_bytes) {
            errors.push(
                at("grpc.max_message_bytes"),
                format!("must be between 1024 and 1073741824, got {grpc_max_message_bytes}"),
            );
        }
        if let Some(rule) = rule.filter(|_| errors.0.len() == before) {
            indices.push(i);
            routes.push(Route {
                name: name.into(),
                rule,
                rewrite,
                targets,
                split_sticky,
                plugins: r.plugins.clone(),
                max_body_bytes: r.max_body_bytes.unwrap_or(default_body),
                require_client_cert: r.require_client_cert.unwrap_or(false),
                https_redirect,
                websocket,
                compression,
                request_decompression,
                grpc_max_message_bytes,
            });
        }
    }
    analyze(&routes, &indices, errors, warnings);
    routes
}

/// A route's `websocket` table; on by default with the default limits.
fn validate_websocket(
    w: Option<&schema::WebSocket>,
    at: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<WebSocketSettings> {
    let Some(w) = w else {
        return Some(WebSocketSettings {
            idle_timeout: DEFAULT_WEBSOCKET_IDLE_TIMEOUT,
            max_lifetime: DEFAULT_WEBSOCKET_MAX_LIFETIME,
            max_frame_bytes: DEFAULT_WEBSOCKET_MAX_FRAME_BYTES,
        });
    };
    let idle = duration(errors, &at("websocket.idle_timeout"), &w.idle_timeout);
    let lifetime = duration(errors, &at("websocket.max_lifetime"), &w.max_lifetime);
    let frame = w.max_frame_bytes.unwrap_or(DEFAULT_WEBSOCKET_MAX_FRAME_BYTES);
    if !(MIN_WEBSOCKET_FRAME_BYTES..=MAX_WEBSOCKET_FRAME_BYTES).contains(&frame) {
        errors.push(
            at("websocket.max_frame_bytes"),
            format!(
                "must be between {MIN_WEBSOCKET_FRAME_BYTES} and {MAX_WEBSOCKET_FRAME_BYTES}, \
                 got {frame}"
            ),
        );
    }
    let settings = WebSocketSettings {
        idle_timeout: idle?.unwrap_or(DEFAULT_WEBSOCKET_IDLE_TIMEOUT),
        max_lifetime: lifetime?.unwrap_or(DEFAULT_WEBSOCKET_MAX_LIFETIME),
        max_frame_bytes: frame,
    };
    w.enabled.unwrap_or(true).then_some(settings)
}

/// A route's `compression` table; off when absent.
fn validate_compression(
    c: Option<&schema::Compression>,
    at: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<Arc<CompressionSettings>> {
    let c = c.filter(|c| c.enabled.unwrap_or(true))?;
    let mut encodings = Vec::new();
    let names =
        c.encodings.clone().unwrap_or_else(|| vec!["zstd".into(), "br".into(), "gzip".into()]);
    if names.is_empty() {
        errors
            .push(at("compression.encodings"), "needs at least one of \"zstd\", \"br\", \"gzip\"");
    }
    for (j, name) in names.iter().enumerate() {
        let e = match name.as_str() {
            "zstd" => Encoding::Zstd,
            "br" => Encoding::Br,
            "gzip" => Encoding::Gzip,
            other => {
                let msg = format!("expected \"zstd\", \"br\" or \"gzip\", got {other:?}");
                errors.push(at(&format!("compression.encodings[{j}]")), msg);
                continue;
            }
        };
        if !encodings.contains(&e) {
            encodings.push(e);
        }
    }
    let min_bytes = c.min_bytes.unwrap_or(DEFAULT_COMPRESSION_MIN_BYTES);
    if min_bytes > 1 << 30 {
        errors.push(
            at("compression.min_bytes"),
            format!("must be at most 1073741824, got {min_bytes}"),
        );
    }
    let types = c
        .content_types
        .clone()
        .unwrap_or_else(|| DEFAULT_COMPRESSION_TYPES.iter().map(|t| (*t).to_owned()).collect());
    let mut content_types = Vec::with_capacity(types.len());
    for (j, t) in types.iter().enumerate() {
        let t = t.trim().to_ascii_lowercase();
        let valid = t.split_once('/').is_some_and(|(a, b)| {
            !a.is_empty() && a != "*" && !b.is_empty() && !t.contains([';', ' ', ','])
        });
        if !valid {
            errors.push(
                at(&format!("compression.content_types[{j}]")),
                format!(
                    "expected a media type such as \"application/json\" or \"text/*\", got {t:?}"
                ),
            );
        }
        content_types.push(t);
    }
    Some(Arc::new(CompressionSettings { encodings, min_bytes, content_types }))
}

pub(super) fn validate_rule(
    r: &schema::Route,
    listener_names: &[&str],
    at: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<Rule> {
    let path = match (&r.path, &r.prefix) {
        (Some(p), None) => errors.check(at("path"), PathPattern::parse(p, false)),
        (None, Some(p)) => errors.check(at("prefix"), PathPattern::parse(p, true)),
        (Some(_), Some(_)) => {
            errors.push(at("path"), "give `path` (exact) or `prefix`, not both");
            None
        }
        (None, None) => {
            errors.push(at("prefix"), "a route needs `prefix = \"/...\"` or `path = \"/...\"`");
            None
        }
    };
    let mut hosts = Vec::new();
    for (j, h) in r.hosts.iter().enumerate() {
        hosts.extend(errors.check(at(&format!("hosts[{j}]")), HostPattern::parse(h)));
    }
    let mut methods = Vec::new();
    for (j, m) in r.methods.iter().enumerate() {
        let parsed = http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("not an HTTP method: {m:?}"));
        methods.extend(errors.check(at(&format!("methods[{j}]")), parsed));
    }
    let mut headers = Vec::new();
    for (j, f) in r.headers.iter().enumerate() {
        let path = at(&format!("headers[{j}]"));
        let name = http::HeaderName::try_from(f.name.as_str())
            .map_err(|_| format!("not a header name: {:?}", f.name));
        let name = errors.check(format!("{path}.name"), name);
        let value = field_value(f, &path, errors);
        if let (Some(name), Some(value)) = (name, value) {
            headers.push(FieldMatch { name, value });
        }
    }
    let mut query = Vec::new();
    for (j, f) in r.query.iter().enumerate() {
        let path = at(&format!("query[{j}]"));
        if let Some(value) = field_value(f, &path, errors) {
            query.push(FieldMatch { name: f.name.clone(), value });
        }
    }
    let mut listeners = Vec::new();
    for (j, l) in r.listeners.iter().enumerate() {
        let known = l == DEFAULT_LISTENER || listener_names.contains(&l.as_str());
        if !known {
            let msg = format!(
                "unknown listener {l:?}: \"default\" (server.listen) or a [[listeners]] name"
            );
            errors.push(at(&format!("listeners[{j}]")), msg);
        } else if !listeners.contains(l) {
            listeners.push(l.clone());
        }
    }
    Some(Rule {
        path: path?,
        priority: r.priority.unwrap_or(0),
        hosts,
        methods,
        headers,
        query,
        listeners,
    })
}

pub(super) fn field_value(
    f: &schema::FieldMatch,
    path: &str,
    errors: &mut Errors,
) -> Option<ValueMatch> {
    match (&f.exact, &f.regex, f.present) {
        (Some(v), None, None) => Some(ValueMatch::Exact(v.clone())),
        (None, Some(r), None) => {
            let re = regex::Regex::new(r).map_err(|e| {
                // The regex crate's message spans lines; its last line says what is wrong.
                let text = e.to_string();
                let why = text.lines().last().unwrap_or_default().trim_start_matches("error: ");
                format!("not a regex ({why}): {r:?}")
            });
            errors.check(format!("{path}.regex"), re).map(ValueMatch::Regex)
        }
        (None, None, Some(true)) => Some(ValueMatch::Present),
        _ => {
            errors.push(path, "give exactly one of `exact`, `regex` or `present = true`");
            None
        }
    }
}

pub(super) fn validate_rewrite(
    r: &schema::Route,
    rule: &Rule,
    at: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<Rewrite> {
    let replacement = match (r.strip_prefix, &r.replace_prefix) {
        (None | Some(false), None) => return None,
        (Some(true), None) => String::new(),
        (None | Some(false), Some(p)) => {
            if !p.starts_with('/')
                || p.parse::<http::uri::PathAndQuery>().is_err()
                || p.contains('?')
            {
                errors.push(at("replace_prefix"), format!("not a path starting with '/': {p:?}"));
                return None;
            }
            p.trim_end_matches('/').to_owned()
        }
        (Some(true), Some(_)) => {
            errors.push(at("replace_prefix"), "give `strip_prefix` or `replace_prefix`, not both");
            return None;
        }
    };
    let field = if r.replace_prefix.is_some() { "replace_prefix" } else { "strip_prefix" };
    if !rule.path.prefix {
        errors.push(at(field), "only a `prefix` route can rewrite its prefix");
        return None;
    }
    match rule.path.literal_prefix() {
        Some(prefix) => Some(Rewrite { prefix, replacement }),
        None => {
            errors.push(at(field), "the prefix has parameters; only a literal prefix is rewritten");
            None
        }
    }
}

pub(super) fn validate_targets(
    r: &schema::Route,
    file: &schema::File,
    at: &impl Fn(&str) -> String,
    errors: &mut Errors,
) -> Vec<(String, u32)> {
    let known = |name: &str, path: String, errors: &mut Errors| {
        let ok = file.upstreams.contains_key(name);
        if !ok {
            errors.push(path, format!("unknown upstream {name:?}"));
        }
        ok
    };
    match (&r.upstream, &r.split) {
        (Some(u), None) => {
            known(u, at("upstream"), errors);
            vec![(u.clone(), 1)]
        }
        (None, Some(split)) => {
            if split.is_empty() {
                errors.push(at("split"), "needs at least one upstream");
            }
            let mut targets = Vec::new();
            for (j, s) in split.iter().enumerate() {
                known(&s.upstream, at(&format!("split[{j}].upstream")), errors);
                targets.push((s.upstream.clone(), s.weight));
            }
            if !split.is_empty() && targets.iter().all(|(_, w)| *w == 0) {
                errors.push(at("split"), "at least one weight must be above 0");
            }
            targets
        }
        (Some(_), Some(_)) => {
            errors.push(at("split"), "give `upstream` or `split`, not both");
            vec![]
        }
        (None, None) => {
            errors.push(at("upstream"), "a route needs an `upstream` (or a `split`)");
            vec![]
        }
    }
}

/// Unreachable routes are errors: a route that can never match is a mistake. Ambiguous
/// pairs are warnings: config order decides, which is well defined but easy to misread.
pub(super) fn analyze(
    routes: &[Route],
    indices: &[usize],
    errors: &mut Errors,
    warnings: &mut Vec<ConfigError>,
) {
    let rules: Vec<Rule> = routes.iter().map(|r| r.rule.clone()).collect();
    let name = |i: usize| format!("routes[{}] ({:?})", indices[i], &*routes[i].name);
    let mut by_route: BTreeMap<usize, String> = BTreeMap::new();
    for f in router::analyze(&rules) {
        match f {
            Finding::Unreachable { shadowed, by } => {
                let (a, b) = (&rules[by], &rules[shadowed]);
                let message = if a.priority == b.priority && b.covers(a) {
                    format!(
                        "duplicate of {}: the same match conditions; set `priority`, \
                             add a condition or remove one",
                        name(by)
                    )
                } else if a.priority == b.priority {
                    format!(
                        "unreachable: {} matches every request it would and ranks first \
                             (more specific or earlier)",
                        name(by)
                    )
                } else {
                    format!(
                        "unreachable: {} matches every request it would and has the higher \
                         priority ({} > {})",
                        name(by),
                        a.priority,
                        b.priority
                    )
                };
                by_route.insert(indices[shadowed], message);
            }
            Finding::Ambiguous { first, second } => warnings.push(ConfigError::new(
                format!("routes[{}]", indices[second]),
                format!(
                    "ambiguous: {} may match the same requests with the same priority and \
                     specificity, and wins only by coming first; set `priority` to decide",
                    name(first)
                ),
            )),
        }
    }
    for (i, message) in by_route {
        errors.push(format!("routes[{i}]"), message);
    }
}
