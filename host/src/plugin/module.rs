//! A compiled plugin module: compiled once per content hash, cached on disk across restarts,
//! checked to implement the `sluice:plugin` world, and pre-linked (`InstancePre`). An Extism
//! module is only checked here: Extism compiles it per named plugin, with its config.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sluice_bindings::{FILTER_INTERFACE, HANDLER_INTERFACE, WORLD_COMPATIBLE, WORLD_VERSION};
use wasmtime::component::Component;

use wasmtime::Engine;
use wasmtime::component::Linker;

use super::component::ComponentPre;
use super::state::PluginState;
use crate::config::PluginKind;

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("not a valid Wasm component: {0}")]
    Compile(String),
    #[error(
        "a core Wasm module, not a component: build it for the sluice:plugin world with a \
         Sluice SDK, or set `kind = \"extism\"` if it is an Extism plugin"
    )]
    CoreModule,
    #[error(
        "a Wasm component, not a core module: `kind = \"extism\"` expects an Extism plugin \
         (remove `kind` to run a Sluice component)"
    )]
    NotExtism,
    #[error("not a Wasm module")]
    NotWasm,
    #[error(
        "built for sluice:plugin@{found}, but this Sluice implements @{WORLD_VERSION} (and \
         loads @{WORLD_COMPATIBLE}x); rebuild the plugin against this release's wit/ and SDK"
    )]
    WrongVersion { found: String },
    #[error(
        "built for sluice:plugin@{found}, newer than this Sluice's @{WORLD_VERSION}, and it \
         uses what this Sluice lacks: {error}; upgrade Sluice or rebuild the plugin against \
         this release's wit/"
    )]
    Newer { found: String, error: String },
    #[error(
        "not a Sluice plugin: it exports neither `{HANDLER_INTERFACE}` nor \
         `{FILTER_INTERFACE}` (it exports: {exports}); build it against wit/ with a Sluice \
         plugin SDK"
    )]
    NotAPlugin { exports: String },
    #[error("imports something Sluice does not provide: {0}")]
    Link(String),
}

/// Where a module's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSource {
    /// Cranelift, optimising.
    Compiled,
    DiskCache,
    /// The baseline compiler (Winch), in a fraction of Cranelift's time, into slower code
    /// that serves until Cranelift's is ready (`runtime.quick_start`).
    Baseline,
}

impl CodeSource {
    /// The name in metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeSource::Compiled => "compiled",
            CodeSource::DiskCache => "cache",
            CodeSource::Baseline => "baseline",
        }
    }
}

/// One compiled, checked, pre-linked plugin module.
pub struct Module {
    pub path: PathBuf,
    /// Hex SHA-256 of the `.wasm` file.
    pub hash: String,
    pub source: CodeSource,
    /// Compiling, or loading from the cache, took this long.
    pub load_time: Duration,
    /// The `sluice:plugin` version a component was built for (`0.2.0`); `None` for Extism.
    pub world: Option<String>,
    pub(crate) code: Code,
}

pub(crate) enum Code {
    Component(ComponentPre),
    /// The module's bytes, compiled per named plugin (Extism bakes the config in).
    Extism(Arc<[u8]>),
}

impl Module {
    pub fn kind(&self) -> PluginKind {
        match self.code {
            Code::Component(_) => PluginKind::Component,
            Code::Extism(_) => PluginKind::Extism,
        }
    }
}

/// What the binary format's header says a `.wasm` file is.
fn wasm_layer(bytes: &[u8]) -> Option<PluginKind> {
    match bytes.get(..8)? {
        [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(PluginKind::Extism),
        [0, b'a', b's', b'm', _, _, 1, 0] => Some(PluginKind::Component),
        _ => None,
    }
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("path", &self.path).field("hash", &self.hash).finish()
    }
}

pub(crate) fn content_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Module {
    /// Blocking: loads from `cache_dir`, or compiles with `baseline`'s engine if given
    /// (falling back to `linker`'s if it cannot) or `linker`'s; then checks and links.
    pub(crate) fn build(
        linker: &Linker<PluginState>,
        baseline: Option<&Linker<PluginState>>,
        cache_dir: Option<&Path>,
        path: PathBuf,
        bytes: Arc<[u8]>,
        hash: [u8; 32],
        kind: PluginKind,
    ) -> Result<Self, ModuleError> {
        let started = Instant::now();
        let hash = hex(&hash);
        match (kind, wasm_layer(&bytes)) {
            (_, None) => return Err(ModuleError::NotWasm),
            (PluginKind::Component, Some(PluginKind::Extism)) => {
                return Err(ModuleError::CoreModule);
            }
            (PluginKind::Extism, Some(PluginKind::Component)) => {
                return Err(ModuleError::NotExtism);
            }
            (PluginKind::Extism, _) => {
                // Extism compiles per named plugin (see plugin/extism.rs): `source` and
                // `load_time` here only cover reading and checking the bytes.
                let (source, load_time, code) =
                    (CodeSource::Compiled, started.elapsed(), Code::Extism(bytes));
                return Ok(Self { path, hash, source, load_time, world: None, code });
            }
            (PluginKind::Component, _) => {}
        }
        let engine = linker.engine();
        let cached = cache_dir.map(|dir| dir.join(cache_file_name(engine, &hash)));
        let cached_code = || load_cached(engine, cached.as_deref()?);
        let baseline_code = || compile_baseline(baseline?, &path, &bytes);
        let (component, source, linker) = match cached_code() {
            Some(component) => (component, CodeSource::DiskCache, linker),
            None => match baseline_code() {
                Some((component, baseline)) => (component, CodeSource::Baseline, baseline),
                None => {
                    let component = compile_optimised(engine, &path, &bytes)?;
                    if let Some(file) = &cached {
                        store_cached(&component, file);
                    }
                    (component, CodeSource::Compiled, linker)
                }
            },
        };
        let world = check_world(linker.engine(), &component)?;
        let link_error = |e: wasmtime::Error| match newer(&world) {
            true => ModuleError::Newer { found: world.clone(), error: format!("{e:#}") },
            false => ModuleError::Link(format!("{e:#}")),
        };
        // A component built for an earlier 0.2.x imports `sluice:plugin/http@0.2.0` and
        // exports `filter@0.2.0`: the linker and the bindings' export lookup both match
        // those to this host's 0.2.3 by semver, and its types are a subset of ours.
        let pre = linker.instantiate_pre(&component).map_err(link_error)?;
        let pre = ComponentPre::new(pre).map_err(link_error)?;
        let (load_time, code) = (started.elapsed(), Code::Component(pre));
        Ok(Self { path, hash, source, load_time, world: Some(world), code })
    }

    /// The first 12 hex digits of the hash, for logs.
    pub fn short_hash(&self) -> &str {
        &self.hash[..12]
    }
}

/// `bytes` compiled by Cranelift.
fn compile_optimised(engine: &Engine, path: &Path, bytes: &[u8]) -> Result<Component, ModuleError> {
    // Cranelift takes ~1 s per MB on two cores: a JavaScript plugin (~12 MB) compiles for
    // many seconds, once; say so before the silence.
    let mb = bytes.len() as f64 / 1e6;
    tracing::info!(
        "compiling {} ({mb:.1} MB){}; the result is cached for next time",
        path.display(),
        if mb >= 2.0 { ", which can take a while" } else { "" }
    );
    Component::new(engine, bytes).map_err(|e| ModuleError::Compile(format!("{e:#}")))
}

/// `bytes` compiled by the baseline compiler, or `None` (said in the log) if it cannot.
fn compile_baseline<'l>(
    linker: &'l Linker<PluginState>,
    path: &Path,
    bytes: &[u8],
) -> Option<(Component, &'l Linker<PluginState>)> {
    let (shown, mb) = (path.display(), bytes.len() as f64 / 1e6);
    tracing::info!(
        "compiling {shown} ({mb:.1} MB) with the baseline compiler to serve at once; \
         Cranelift's optimised code follows in the background"
    );
    match Component::new(linker.engine(), bytes) {
        Ok(component) => Some((component, linker)),
        Err(e) => {
            tracing::warn!(
                "the baseline compiler cannot compile {shown} ({e:#}); compiling it with \
                 Cranelift before serving instead"
            );
            None
        }
    }
}

/// The file name embeds the engine's compatibility hash (wasmtime version and settings),
/// so an upgrade never loads stale machine code.
fn cache_file_name(engine: &Engine, hash: &str) -> String {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{hash}-{:016x}.cwasm", h.finish())
}

fn load_cached(engine: &Engine, file: &Path) -> Option<Component> {
    if !file.is_file() {
        return None;
    }
    // SAFETY: the cache folder holds only artifacts this process or an earlier Sluice wrote
    // with `Component::serialize` for a compatible engine (the file name says which), and is
    // as trusted as the binary. wasmtime still checks the header and engine compatibility;
    // any failure falls back to compiling.
    match unsafe { Component::deserialize_file(engine, file) } {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(file = %file.display(), "ignoring unusable compiled cache entry: {e:#}");
            None
        }
    }
}

/// Best effort: a cache that cannot be written only costs a compile next time.
fn store_cached(component: &Component, file: &Path) {
    let write = || -> std::io::Result<()> {
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let bytes = component.serialize().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let tmp = dir.join(format!(".{}.tmp{}", std::process::id(), rand_suffix()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        tracing::warn!(file = %file.display(), "cannot write compiled cache entry: {e}");
    }
}

/// Whether a component built for `world` may load here: `0.2.` and a patch number.
fn compatible(world: &str) -> bool {
    world
        .strip_prefix(WORLD_COMPATIBLE)
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `world` (a compatible `0.2.x`) is newer than the version this host implements.
fn newer(world: &str) -> bool {
    let patch = |v: &str| v.rsplit('.').next().and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    patch(world) > patch(WORLD_VERSION)
}

fn rand_suffix() -> u64 {
    let mut h = DefaultHasher::new();
    Instant::now().hash(&mut h);
    std::thread::current().id().hash(&mut h);
    h.finish()
}

/// The world version `component` was built for, if this host loads it; otherwise a clear
/// error for components built against another minor version, or not for Sluice at all,
/// instead of wasmtime's generic "missing export".
fn check_world(engine: &Engine, component: &Component) -> Result<String, ModuleError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_owned()).collect();
    let version = |e: &String| {
        let prefixes = ["sluice:plugin/handler@", "sluice:plugin/filter@"];
        prefixes.iter().find_map(|prefix| e.strip_prefix(prefix)).map(str::to_owned)
    };
    if let Some(found) = exports.iter().find_map(version) {
        return match compatible(&found) {
            true => Ok(found),
            false => Err(ModuleError::WrongVersion { found }),
        };
    }
    let exports = if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") };
    Err(ModuleError::NotAPlugin { exports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_and_later_patches_of_0_2_load_other_versions_do_not() {
        for ok in ["0.2.0", "0.2.1", "0.2.17"] {
            assert!(compatible(ok), "{ok}");
        }
        for refused in ["0.1.0", "0.3.0", "1.2.0", "0.2", "0.2.", "0.2.1-rc1", "0.20.1"] {
            assert!(!compatible(refused), "{refused}");
        }
        assert!(!newer("0.2.0") && !newer(WORLD_VERSION) && newer("0.2.99"));
        assert!(compatible(WORLD_VERSION));
        assert_eq!(FILTER_INTERFACE, format!("sluice:plugin/filter@{WORLD_VERSION}"));
        assert_eq!(HANDLER_INTERFACE, format!("sluice:plugin/handler@{WORLD_VERSION}"));
    }
}
