//! Gateway configuration: TOML text in, a validated [`Config`] out.
//!
//! Loading has two steps. The serde schema (`schema`, `deny_unknown_fields`) catches shape
//! errors; validation then resolves names, parses durations and finds plugin modules,
//! collecting every problem rather than stopping at the first. Each error names its TOML
//! path (`routes[1].plugins[0]: unknown plugin "jwt"`) and, for shape errors, the line.
//! Checks that need the plugin runtime (compiling a module, its `init`) happen when the
//! gateway is built from the config, and are reported the same way.

mod error;
mod model;
mod schema;
mod traffic;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use error::Errors;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use traffic::key_source;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_millis(100);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_MAX_INSTANCES: u32 = 512;
pub const DEFAULT_MAX_MEMORY_MIB: u32 = 64;
pub const DEFAULT_MEMORY_BUDGET_MIB: u32 = 1024;
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
    let file = deserialize(text).map_err(|e| fail(vec![e]))?;
    let mut errors = Errors::default();
    let config = validate(file, source_name, base_dir, &mut errors);
    match config {
        Some(config) if errors.0.is_empty() => Ok(config),
        _ => Err(fail(errors.0)),
    }
}

fn deserialize(text: &str) -> Result<schema::File, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error("", &e, text))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        toml_error(if path == "." { "" } else { &path }, e.inner(), text)
    })
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
    let server = validate_server(&file.server, errors);
    let mut runtime = validate_runtime(&file.runtime, base, errors);
    runtime.kv = validate_kv(&file.kv, errors).unwrap_or_default();
    let inherited = traffic::Inherited {
        connect_timeout: server.as_ref().map_or(DEFAULT_CONNECT_TIMEOUT, |s| s.0.connect_timeout),
        request_timeout: server.as_ref().map_or(DEFAULT_REQUEST_TIMEOUT, |s| s.0.request_timeout),
    };
    let upstreams = file
        .upstreams
        .iter()
        .filter_map(|(name, u)| {
            Some((name.clone(), traffic::validate_upstream(name, u, &inherited, errors)?))
        })
        .collect::<BTreeMap<_, _>>();
    let plugins = file
        .plugins
        .iter()
        .filter_map(|(name, p)| {
            Some((name.clone(), validate_plugin(name, p, &runtime, base, errors)?))
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
        traffic::validate_routes(&file, server.as_ref().map(|s| s.1), errors, &mut warnings);
    unused(&file, &mut warnings);
    Some(Config {
        warnings,
        source_name: source_name.to_owned(),
        server: server?.0,
        runtime,
        upstreams,
        plugins,
        routes,
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

/// The server section, plus the default body limit that routes inherit.
fn validate_server(s: &schema::Server, errors: &mut Errors) -> Option<(Server, u64)> {
    let listen = errors.check(
        "server.listen",
        s.listen.parse().map_err(|_| format!("not an address:port: {:?}", s.listen)),
    );
    if let Some(w) = s.workers
        && !(1..=MAX_WORKERS).contains(&w)
    {
        let msg = format!("must be between 1 and {MAX_WORKERS} (leave it out for one per core)");
        errors.push("server.workers", msg);
    }
    let connect = duration(errors, "server.connect_timeout", &s.connect_timeout);
    let request = duration(errors, "server.request_timeout", &s.request_timeout);
    let shutdown = duration(errors, "server.shutdown_timeout", &s.shutdown_timeout);
    let body = duration(errors, "server.body_timeout", &s.body_timeout);
    let header = duration(errors, "server.header_timeout", &s.header_timeout);
    let idle = duration(errors, "server.idle_timeout", &s.idle_timeout);
    let escaped_slashes = traffic::one_of(
        errors,
        "server.escaped_slashes",
        &s.escaped_slashes,
        &[("reject", EscapedSlashes::Reject), ("keep", EscapedSlashes::Keep)],
    );
    let underscores = traffic::one_of(
        errors,
        "server.headers_with_underscores",
        &s.headers_with_underscores,
        &[
            ("drop", Underscores::Drop),
            ("reject", Underscores::Reject),
            ("allow", Underscores::Allow),
        ],
    );
    let mut trusted_proxies = Vec::new();
    for (i, text) in s.trusted_proxies.iter().flatten().enumerate() {
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("not an address or CIDR range: {text:?}"));
        trusted_proxies.extend(errors.check(format!("server.trusted_proxies[{i}]"), net));
    }
    let max_connections = count(
        errors,
        "server.max_connections",
        s.max_connections,
        DEFAULT_MAX_CONNECTIONS,
        1_000_000,
    );
    let per_ip =
        s.max_connections_per_ip.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP.min(max_connections));
    if !(1..=max_connections).contains(&per_ip) {
        let msg = format!(
            "must be between 1 and server.max_connections ({max_connections}), got {per_ip}"
        );
        errors.push("server.max_connections_per_ip", msg);
    }
    let max_body = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    let server = Server {
        listen: listen?,
        workers: s.workers,
        connect_timeout: connect?.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        request_timeout: request?.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
        shutdown_timeout: shutdown?.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        paths: PathPolicy {
            merge_slashes: s.merge_slashes.unwrap_or(true),
            escaped_slashes: escaped_slashes?,
        },
        underscores: underscores?,
        trusted_proxies,
        body_timeout: body?.unwrap_or(DEFAULT_BODY_TIMEOUT),
        header_timeout: header?.unwrap_or(DEFAULT_HEADER_TIMEOUT),
        idle_timeout: idle?.unwrap_or(DEFAULT_CONNECTION_IDLE_TIMEOUT),
        max_connections: max_connections as usize,
        max_connections_per_ip: per_ip.clamp(1, max_connections) as usize,
    };
    Some((server, max_body))
}

/// A count between 1 and `max`; `default` when absent.
fn count(errors: &mut Errors, path: &str, v: Option<u64>, default: u64, max: u64) -> u64 {
    let n = v.unwrap_or(default);
    if !(1..=max).contains(&n) {
        errors.push(path, format!("must be between 1 and {max}, got {n}"));
    }
    n.clamp(1, max)
}

fn validate_runtime(r: &schema::Runtime, base: &Path, errors: &mut Errors) -> Runtime {
    let plugin_dirs = match &r.plugin_dir {
        Some(dir) => vec![base.join(dir)],
        None => default_plugin_dirs(),
    };
    let cache_dir = match (r.cache, &r.cache_dir) {
        (Some(false), _) => None,
        (_, Some(dir)) => Some(base.join(dir)),
        (_, None) => default_cache_dir(),
    };
    let max_instances = r.max_instances.unwrap_or(DEFAULT_MAX_INSTANCES);
    if !(1..=MAX_INSTANCES).contains(&max_instances) {
        errors.push("runtime.max_instances", format!("must be between 1 and {MAX_INSTANCES}"));
    }
    let max_memory_mib = r.max_memory_mib.unwrap_or(DEFAULT_MAX_MEMORY_MIB);
    if !(1..=4096).contains(&max_memory_mib) {
        errors.push("runtime.max_memory_mib", "must be between 1 and 4096");
    }
    let budget_mib = r.memory_budget_mib.unwrap_or(DEFAULT_MEMORY_BUDGET_MIB.max(max_memory_mib));
    if !(max_memory_mib..=1 << 20).contains(&budget_mib) {
        errors.push(
            "runtime.memory_budget_mib",
            format!("must be between runtime.max_memory_mib ({max_memory_mib}) and 1048576"),
        );
    }
    Runtime {
        plugin_dirs,
        cache_dir,
        max_instances,
        max_memory_bytes: max_memory_mib as usize * 1024 * 1024,
        memory_budget_bytes: budget_mib as usize * 1024 * 1024,
        kv: KvSettings::default(),
    }
}

fn validate_kv(k: &schema::Kv, errors: &mut Errors) -> Option<KvSettings> {
    let redis =
        traffic::one_of(errors, "kv.backend", &k.backend, &[("local", false), ("redis", true)]);
    let on_unavailable = traffic::one_of(
        errors,
        "kv.on_unavailable",
        &k.on_unavailable,
        &[
            ("fallback-local", OnUnavailable::FallbackLocal),
            ("fail-open", OnUnavailable::FailOpen),
            ("fail-closed", OnUnavailable::FailClosed),
        ],
    );
    let timeout = duration(errors, "kv.timeout", &k.timeout);
    let recheck = duration(errors, "kv.recheck", &k.recheck);
    if redis == Some(false) {
        for (key, set) in [
            ("url", k.url.is_some()),
            ("timeout", k.timeout.is_some()),
            ("recheck", k.recheck.is_some()),
            ("prefix", k.prefix.is_some()),
            ("on_unavailable", k.on_unavailable.is_some()),
        ] {
            if set {
                errors.push(format!("kv.{key}"), "only applies with backend = \"redis\"");
            }
        }
    }
    let backend = match redis? {
        false => KvBackend::Local,
        true => {
            let url = match &k.url {
                None => {
                    errors.push(
                        "kv.url",
                        "required with backend = \"redis\", e.g. \"redis://127.0.0.1:6379\"",
                    );
                    None
                }
                Some(url)
                    if !(url.starts_with("redis://")
                        || url.starts_with("redis+unix://")
                        || url.starts_with("unix://")) =>
                {
                    errors.push("kv.url", format!("expected a redis:// URL, got {url:?}"));
                    None
                }
                Some(url) => Some(url.clone()),
            };
            let prefix = k.prefix.clone().unwrap_or_else(|| "sluice".to_owned());
            if prefix.is_empty() || prefix.contains(char::is_whitespace) {
                errors.push("kv.prefix", "must be non-empty, without spaces");
            }
            KvBackend::Redis(RedisSettings {
                url: url?,
                timeout: timeout?.unwrap_or(DEFAULT_KV_TIMEOUT),
                recheck: recheck?.unwrap_or(DEFAULT_KV_RECHECK),
                prefix,
            })
        }
    };
    Some(KvSettings { backend, on_unavailable: on_unavailable? })
}

/// `$SLUICE_PLUGIN_DIR`, then next to the binary: `plugins/` for an installed layout, and
/// the cargo layout (`target/release/sluice` -> `target/wasm32-wasip2/release/`).
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("SLUICE_PLUGIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.to_owned())) {
        dirs.push(exe_dir.join("plugins"));
        if let Some(target) = exe_dir.parent() {
            dirs.push(target.join("wasm32-wasip2/release"));
        }
    }
    let mut seen = HashSet::new();
    dirs.retain(|d| seen.insert(d.canonicalize().unwrap_or_else(|_| d.clone())));
    dirs
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sluice"))
}

fn validate_plugin(
    name: &str,
    p: &schema::Plugin,
    runtime: &Runtime,
    base: &Path,
    errors: &mut Errors,
) -> Option<Plugin> {
    let at = |field: &str| format!("plugins.{name}.{field}");
    let module = errors.check(at("module"), resolve_module(&p.module, &runtime.plugin_dirs, base));
    let kind = traffic::one_of(
        errors,
        &at("kind"),
        &p.kind,
        &[("component", PluginKind::Component), ("extism", PluginKind::Extism)],
    );
    let instances = traffic::one_of(
        errors,
        &at("instances"),
        &p.instances,
        &[("reuse", InstanceModel::Reuse), ("fresh", InstanceModel::Fresh)],
    );
    let on_error = traffic::one_of(
        errors,
        &at("on_error"),
        &p.on_error,
        &[("fail", FailPolicy::Fail), ("continue", FailPolicy::Continue)],
    );
    let timeout = duration(errors, &at("timeout"), &p.timeout);
    let idle_timeout = duration(errors, &at("idle_timeout"), &p.idle_timeout);
    let max_instances =
        p.max_instances.unwrap_or(DEFAULT_PLUGIN_MAX_INSTANCES.min(runtime.max_instances));
    if !(1..=runtime.max_instances).contains(&max_instances) {
        let msg =
            format!("must be between 1 and runtime.max_instances ({})", runtime.max_instances);
        errors.push(at("max_instances"), msg);
    }
    let rollout = match &p.rollout {
        None => Some(None),
        Some(r) => validate_rollout(name, r, runtime, base, errors).map(Some),
    };
    let mut config = serde_json::to_value(p.config.clone().unwrap_or_default())
        .expect("a TOML table is valid JSON");
    let files = read_plugin_files(name, p, base, &mut config, errors);
    let config_json = config.to_string();
    Some(Plugin {
        name: Arc::from(name),
        module: module?,
        kind: kind?,
        config_json,
        files: files?,
        instances: instances?,
        on_error: on_error?,
        timeout: timeout?.unwrap_or(DEFAULT_PLUGIN_TIMEOUT),
        max_instances,
        idle_timeout: idle_timeout?.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        rollout: rollout?,
    })
}

/// Files read into a plugin's config are at most this large.
pub const MAX_PLUGIN_FILE_BYTES: u64 = 1024 * 1024;

/// Reads `plugins.NAME.files` into `config.files` (plugins have no file system access);
/// returns the paths, to watch.
fn read_plugin_files(
    name: &str,
    p: &schema::Plugin,
    base: &Path,
    config: &mut serde_json::Value,
    errors: &mut Errors,
) -> Option<Vec<PathBuf>> {
    let Some(files) = &p.files else { return Some(Vec::new()) };
    if config.get("files").is_some() {
        errors.push(
            format!("plugins.{name}.config.files"),
            format!("is reserved for the contents of plugins.{name}.files"),
        );
        return None;
    }
    let mut paths = Vec::new();
    let mut contents = serde_json::Map::new();
    let mut ok = true;
    for (key, file) in files {
        let path = base.join(file);
        let read = std::fs::metadata(&path)
            .and_then(|m| match m.len() > MAX_PLUGIN_FILE_BYTES {
                true => Err(std::io::Error::other(format!(
                    "{} bytes, over the {MAX_PLUGIN_FILE_BYTES}-byte limit",
                    m.len()
                ))),
                false => std::fs::read_to_string(&path),
            })
            .map_err(|e| format!("cannot read {}: {e}", path.display()));
        match errors.check(format!("plugins.{name}.files.{key}"), read) {
            Some(text) => {
                contents.insert(key.clone(), serde_json::Value::String(text));
            }
            None => ok = false,
        }
        paths.push(path);
    }
    config["files"] = serde_json::Value::Object(contents);
    ok.then_some(paths)
}

pub const DEFAULT_ROLLOUT_MAX_ERROR_RATE: f64 = 0.01;
pub const DEFAULT_ROLLOUT_MAX_P99_INCREASE: Duration = Duration::from_millis(5);
pub const DEFAULT_ROLLOUT_MIN_REQUESTS: u64 = 100;
pub const DEFAULT_ROLLOUT_PROMOTE_AFTER: u64 = 1000;

fn validate_rollout(
    name: &str,
    r: &schema::Rollout,
    runtime: &Runtime,
    base: &Path,
    errors: &mut Errors,
) -> Option<Rollout> {
    let at = |field: &str| format!("plugins.{name}.rollout.{field}");
    let module = errors.check(at("module"), resolve_module(&r.module, &runtime.plugin_dirs, base));
    if !(0.0..=100.0).contains(&r.percent) {
        errors.push(at("percent"), format!("must be between 0 and 100, got {}", r.percent));
    }
    let max_error_rate = r.max_error_rate.unwrap_or(DEFAULT_ROLLOUT_MAX_ERROR_RATE);
    if !(0.0..=1.0).contains(&max_error_rate) {
        errors.push(at("max_error_rate"), format!("must be between 0 and 1, got {max_error_rate}"));
    }
    let sticky = match r.sticky.as_deref() {
        None => Some(None),
        Some(key) => errors.check(at("sticky"), key_source(key)).map(Some),
    };
    let p99 = duration(errors, &at("max_p99_increase"), &r.max_p99_increase);
    let min_requests = r.min_requests.unwrap_or(DEFAULT_ROLLOUT_MIN_REQUESTS);
    let promote_after = r.promote_after.unwrap_or(DEFAULT_ROLLOUT_PROMOTE_AFTER);
    if promote_after < min_requests {
        errors.push(at("promote_after"), format!("must be at least min_requests ({min_requests})"));
    }
    Some(Rollout {
        module: module?,
        percent: r.percent,
        sticky: sticky?,
        max_error_rate,
        max_p99_increase: p99?.unwrap_or(DEFAULT_ROLLOUT_MAX_P99_INCREASE),
        min_requests,
        promote_after,
    })
}

/// A module is a file path (it has a `/` or ends in `.wasm`) or the name of a shipped
/// plugin, looked up in the plugin folders.
fn resolve_module(module: &str, dirs: &[PathBuf], base: &Path) -> Result<PathBuf, String> {
    if module.contains('/') || module.ends_with(".wasm") {
        let path = base.join(module);
        return match path.is_file() {
            true => Ok(path),
            false => Err(format!("no such file: {}", path.display())),
        };
    }
    // Cargo names a crate's output with underscores, and the shipped crates are
    // `sluice-plugin-NAME`.
    let snake = module.replace('-', "_");
    let file_names =
        [format!("{module}.wasm"), format!("{snake}.wasm"), format!("sluice_plugin_{snake}.wasm")];
    for dir in dirs {
        for f in &file_names {
            let path = dir.join(f);
            if path.is_file() {
                return Ok(path.canonicalize().unwrap_or(path));
            }
        }
    }
    let shipped = shipped_plugins(dirs);
    let nearest = shipped
        .iter()
        .map(|name| (strsim::damerau_levenshtein(module, name), name))
        .filter(|(d, _)| *d <= 2)
        .min();
    let mut msg = format!("no shipped plugin {module:?}");
    if let Some((_, name)) = nearest {
        msg.push_str(&format!("; did you mean {name:?}?"));
    }
    match shipped.is_empty() {
        true => msg.push_str(
            "; no shipped plugins were found next to the sluice binary or in \
             $SLUICE_PLUGIN_DIR (give a path to a .wasm file)",
        ),
        false => msg.push_str(&format!(" (shipped: {})", shipped.join(", "))),
    }
    Err(msg)
}

/// The names of the shipped plugins found in `dirs` (`sluice_plugin_NAME.wasm`).
fn shipped_plugins(dirs: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| {
            let file = e.ok()?.file_name().into_string().ok()?;
            let stem = file.strip_prefix("sluice_plugin_")?.strip_suffix(".wasm")?;
            Some(stem.replace('_', "-"))
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Parses an optional humane duration (`"250ms"`, `"2s"`, `"1m 30s"`); `Some(None)` when
/// absent, `None` (with an error recorded) when malformed.
fn duration(errors: &mut Errors, path: &str, v: &Option<String>) -> Option<Option<Duration>> {
    let Some(text) = v else { return Some(None) };
    let parsed = humantime::parse_duration(text)
        .map_err(|e| format!("not a duration ({e}): {text:?}; write e.g. \"250ms\" or \"2s\""))
        .and_then(|d| match d {
            d if d.is_zero() => Err("must be greater than zero".to_owned()),
            d if d > MAX_DURATION => Err(format!("must be at most 24h, got {text:?}")),
            d => Ok(d),
        });
    errors.check(path, parsed).map(Some)
}

#[cfg(test)]
mod tests;
