//! `[runtime]` and `[kv]`: the plugin runtime's limits, folders, and the key-value store.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::check::*;
use super::error::Errors;
use super::model::*;
use super::*;

pub(super) fn validate_runtime(r: &schema::Runtime, base: &Path, errors: &mut Errors) -> Runtime {
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
    let quick_start_min_kib = r.quick_start_min_kib.unwrap_or(DEFAULT_QUICK_START_MIN_KIB);
    if quick_start_min_kib > 1 << 20 {
        errors.push("runtime.quick_start_min_kib", "must be between 0 and 1048576 (1 GiB)");
    }
    let quick_start_min_bytes =
        r.quick_start.unwrap_or(true).then_some(quick_start_min_kib as usize * 1024);
    Runtime {
        plugin_dirs,
        quick_start_min_bytes,
        cache_dir,
        max_instances,
        max_memory_bytes: max_memory_mib as usize * 1024 * 1024,
        memory_budget_bytes: budget_mib as usize * 1024 * 1024,
        kv: KvSettings::default(),
    }
}

pub(super) fn validate_kv(k: &schema::Kv, errors: &mut Errors) -> Option<KvSettings> {
    let redis = one_of(errors, "kv.backend", &k.backend, &[("local", false), ("redis", true)]);
    let on_unavailable = one_of(
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
/// the source checkout's layout (`target/release/sluice` -> `target/wasm32-wasip2/guest/`,
/// where ./dev builds the shipped plugins).
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("SLUICE_PLUGIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.to_owned())) {
        dirs.push(exe_dir.join("plugins"));
        if let Some(target) = exe_dir.parent() {
            dirs.push(target.join("wasm32-wasip2/guest"));
        }
    }
    let mut seen = HashSet::new();
    dirs.retain(|d| seen.insert(d.canonicalize().unwrap_or_else(|_| d.clone())));
    dirs
}

pub(super) fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sluice"))
}
