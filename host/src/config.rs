//! Gateway configuration: TOML text in, a validated [`Config`] out.
//!
//! Loading has two steps. The serde schema (`schema`, `deny_unknown_fields`) catches shape
//! errors; validation then resolves names, parses durations and finds plugin modules,
//! collecting every problem rather than stopping at the first. Each error names its TOML
//! path (`routes[1].plugins[0]: unknown plugin "jwt"`) and, for shape errors, the line.
//! Checks that need the plugin runtime (compiling a module, its `init`) happen when the
//! gateway is built from the config, and are reported the same way.

mod check;
mod error;
mod listeners;
mod model;
mod observe;
mod plugins;
mod routes;
mod runtime;
mod schema;
mod server;
mod upstreams;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

pub use check::key_source;
use error::Errors;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use observe::DEFAULT_ADMIN_LISTEN;
pub use runtime::default_plugin_dirs;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_millis(100);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_MAX_INSTANCES: u32 = 512;
pub const DEFAULT_MAX_MEMORY_MIB: u32 = 64;
pub const DEFAULT_MEMORY_BUDGET_MIB: u32 = 1024;
/// Components this large take Cranelift seconds to compile on a small machine (~1.5 s per
/// MB on two cores): they start on baseline code instead (`runtime.quick_start`).
pub const DEFAULT_QUICK_START_MIN_KIB: u32 = 2048;
/// Instances a plugin may have at once unless it says otherwise (and at most
/// `runtime.max_instances`).
pub const DEFAULT_PLUGIN_MAX_INSTANCES: u32 = 64;
/// A key-value operation against Redis, connecting included.
pub const DEFAULT_KV_TIMEOUT: Duration = Duration::from_millis(50);
pub const DEFAULT_KV_RECHECK: Duration = Duration::from_secs(1);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u64 = 512;
/// The longest any configured duration may be: long enough for any timeout, short enough
/// that adding it to a clock can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
pub const MAX_WORKERS: usize = 1024;
pub const MAX_INSTANCES: u32 = 10_000;

/// Reads and validates the config file at `path`. Relative paths inside it are resolved
/// against the file's folder.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        source_name: name.clone(),
        errors: vec![ConfigError::new("", format!("cannot read config: {e}"))],
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &name, &base)
}

/// Validates config `text`; `source_name` is used in messages and `base_dir` anchors
/// relative paths.
pub fn parse(text: &str, source_name: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors { source_name: source_name.to_owned(), errors };
    let file = deserialize(text).map_err(fail)?;
    let mut errors = Errors::default();
    let config = validate(file, source_name, base_dir, &mut errors);
    match config {
        Some(config) if errors.0.is_empty() => Ok(config),
        _ => Err(fail(errors.0)),
    }
}

/// At most this many shape errors are reported from one file.
const MAX_SHAPE_ERRORS: usize = 50;

/// The file's shape, or every shape error in it (unknown keys, wrong types, missing keys),
/// each with its path and line. After an error, what it is about is taken out of the
/// document and the rest is read again, so one run reports them all.
fn deserialize(text: &str) -> Result<schema::File, Vec<ConfigError>> {
    let mut doc = toml::de::DeTable::parse(text).map_err(|e| vec![toml_error("", &e, text)])?;
    let mut errors = Vec::new();
    while errors.len() < MAX_SHAPE_ERRORS {
        let de = toml::Deserializer::from(doc.clone());
        let e = match serde_path_to_error::deserialize(de) {
            Ok(file) if errors.is_empty() => return Ok(file),
            Ok(_) => break,
            Err(e) => e,
        };
        let path = e.path().to_string();
        errors.push(toml_error(if path == "." { "" } else { &path }, e.inner(), text));
        let path: Vec<_> = e.path().iter().collect();
        if !remove(doc.get_mut(), &path) {
            break;
        }
    }
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    Err(errors)
}

/// Takes the key at `path` out of the document; `false` if it cannot (the path ends in an
/// array element, whose removal would shift the paths of the next ones, or is not there).
fn remove(table: &mut toml::de::DeTable<'_>, path: &[&serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    match path {
        [Segment::Map { key }] => table.remove(key.as_str()).is_some(),
        [Segment::Map { key }, rest @ ..] => {
            table.get_mut(key.as_str()).is_some_and(|v| remove_in(v.get_mut(), rest))
        }
        _ => false,
    }
}

fn remove_in(value: &mut toml::de::DeValue<'_>, path: &[&serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    use toml::de::DeValue;
    match (value, path) {
        (DeValue::Table(t), _) => remove(t, path),
        (DeValue::Array(a), [Segment::Seq { index }, rest @ ..]) if !rest.is_empty() => {
            a.get_mut(*index).is_some_and(|v| remove_in(v.get_mut(), rest))
        }
        _ => false,
    }
}

fn toml_error(path: &str, e: &toml::de::Error, text: &str) -> ConfigError {
    let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    ConfigError { path: path.to_owned(), line, message: e.message().trim().to_owned() }
}

fn validate(
    file: schema::File,
    source_name: &str,
    base: &Path,
    errors: &mut Errors,
) -> Option<Config> {
    let server = server::validate_server(&file.server, errors);
    let mut runtime = runtime::validate_runtime(&file.runtime, base, errors);
    runtime.kv = runtime::validate_kv(&file.kv, errors).unwrap_or_default();
    let inherited = upstreams::Inherited {
        connect_timeout: server.as_ref().map_or(DEFAULT_CONNECT_TIMEOUT, |s| s.0.connect_timeout),
        request_timeout: server.as_ref().map_or(DEFAULT_REQUEST_TIMEOUT, |s| s.0.request_timeout),
        base,
    };
    let upstreams = file
        .upstreams
        .iter()
        .filter_map(|(name, u)| {
            Some((name.clone(), upstreams::validate_upstream(name, u, &inherited, errors)?))
        })
        .collect::<BTreeMap<_, _>>();
    let plugins = file
        .plugins
        .iter()
        .filter_map(|(name, p)| {
            Some((name.clone(), plugins::validate_plugin(name, p, &runtime, base, errors)?))
        })
        .collect::<BTreeMap<_, _>>();
    // A plugin's `body()` copies the body into its own memory, beside everything else it
    // holds there.
    let body_cap = runtime.max_memory_bytes as u64 / 2;
    let bodies = std::iter::once(("server.max_body_bytes".to_owned(), file.server.max_body_bytes))
        .chain(
            file.routes
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("routes[{i}].max_body_bytes"), r.max_body_bytes)),
        );
    for (at, bytes) in bodies {
        if let Some(b) = bytes.filter(|&b| b > body_cap) {
            errors.push(
                at,
                format!(
                    "{b} bytes cannot fit in a plugin's memory: at most {body_cap} (half of \
                     runtime.max_memory_mib)"
                ),
            );
        }
    }
    let mut warnings = Vec::new();
    let routes =
        routes::validate_routes(&file, server.as_ref().map(|s| s.1), errors, &mut warnings);
    let listeners = listeners::validate_listeners(
        &file.listeners,
        server.as_ref().map(|s| s.0.listen),
        base,
        errors,
    );
    unused(&file, &mut warnings);
    // An absent section is off; a present one that fails its checks fails the config.
    let admin = match &file.admin {
        Some(a) => Some(observe::validate_admin(a, base, errors)?),
        None => None,
    };
    let metrics = observe::validate_metrics(&file.metrics, errors);
    let access_log = match &file.access_log {
        Some(a) => Some(observe::validate_access_log(a, errors)?),
        None => None,
    };
    let tracing = match &file.tracing {
        Some(t) => Some(observe::validate_tracing(t, errors)?),
        None => None,
    };
    Some(Config {
        tracing,
        admin,
        metrics,
        access_log,
        warnings,
        source_name: source_name.to_owned(),
        server: server?.0,
        runtime,
        upstreams,
        plugins,
        routes,
        listeners,
    })
}

/// Plugins and upstreams that no route uses: probably a typo or a leftover.
fn unused(file: &schema::File, warnings: &mut Vec<ConfigError>) {
    let used_plugins: HashSet<&str> =
        file.routes.iter().flat_map(|r| r.plugins.iter().map(String::as_str)).collect();
    let used_upstreams: HashSet<&str> = file
        .routes
        .iter()
        .flat_map(|r| {
            let split = r.split.iter().flatten().map(|s| s.upstream.as_str());
            r.upstream.as_deref().into_iter().chain(split)
        })
        .collect();
    for name in file.plugins.keys().filter(|n| !used_plugins.contains(n.as_str())) {
        warnings.push(ConfigError::new(format!("plugins.{name}"), "no route uses this plugin"));
    }
    for name in file.upstreams.keys().filter(|n| !used_upstreams.contains(n.as_str())) {
        let msg = "no route uses this upstream";
        warnings.push(ConfigError::new(format!("upstreams.{name}"), msg));
    }
}

/// Files read into a plugin's config are at most this large.
pub const MAX_PLUGIN_FILE_BYTES: u64 = 1024 * 1024;

pub const DEFAULT_ROLLOUT_MAX_ERROR_RATE: f64 = 0.01;
pub const DEFAULT_ROLLOUT_MAX_P99_INCREASE: Duration = Duration::from_millis(5);
pub const DEFAULT_ROLLOUT_MIN_REQUESTS: u64 = 100;
pub const DEFAULT_ROLLOUT_PROMOTE_AFTER: u64 = 1000;

#[cfg(test)]
mod tests;
