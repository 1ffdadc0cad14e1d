//! `[plugins.NAME]`: modules (by path or shipped name), their config and files, limits, and
//! rollouts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::check::*;
use super::error::Errors;
use super::model::*;
use super::*;

pub(super) fn validate_plugin(
    name: &str,
    p: &schema::Plugin,
    runtime: &Runtime,
    base: &Path,
    errors: &mut Errors,
) -> Option<Plugin> {
    let at = |field: &str| format!("plugins.{name}.{field}");
    let module = errors.check(at("module"), resolve_module(&p.module, &runtime.plugin_dirs, base));
    let kind = one_of(
        errors,
        &at("kind"),
        &p.kind,
        &[("component", PluginKind::Component), ("extism", PluginKind::Extism)],
    );
    let instances = one_of(
        errors,
        &at("instances"),
        &p.instances,
        &[("reuse", InstanceModel::Reuse), ("fresh", InstanceModel::Fresh)],
    );
    let on_error = one_of(
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

/// Reads `plugins.NAME.files` into `config.files` (plugins have no file system access);
/// returns the paths, to watch.
pub(super) fn read_plugin_files(
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

pub(super) fn validate_rollout(
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
pub(super) fn resolve_module(
    module: &str,
    dirs: &[PathBuf],
    base: &Path,
) -> Result<PathBuf, String> {
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
pub(super) fn shipped_plugins(dirs: &[PathBuf]) -> Vec<String> {
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
