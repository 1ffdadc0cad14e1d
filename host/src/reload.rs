//! Live reconfiguration: a new config (from the file, SIGHUP, a changed plugin module, or a
//! programmatic call) is read, validated and built whole, off the request path, then swapped
//! in atomically. Requests in flight finish on the gateway they started with; the old one is
//! freed when the last of them ends. A config that fails any step is refused and the running
//! one keeps serving.

mod watch;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::events;
use crate::gateway::{self, Gateway};
use crate::plugin::Runtime;
use crate::server::Shared;
use crate::telemetry::metrics;

pub use watch::{MAX_SETTLE, SETTLE, Watcher, watch};

/// Applied configs remembered for rollback.
const HISTORY: usize = 16;

/// Where a gateway's config comes from, so it can be read again.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file; reloads re-read it, and it is watched for changes.
    File(PathBuf),
    /// Text held in memory (the demo, tests); reloads re-apply it, picking up changed
    /// plugin modules. Relative paths in it are resolved against `base_dir`.
    Text { text: String, name: String, base_dir: PathBuf },
}

impl ConfigSource {
    fn name(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Text { name, .. } => name.clone(),
        }
    }

    fn base_dir(&self) -> PathBuf {
        match self {
            ConfigSource::File(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ConfigSource::Text { base_dir, .. } => base_dir.clone(),
        }
    }

    /// The current text of the config.
    pub fn read(&self) -> Result<String, ConfigErrors> {
        match self {
            ConfigSource::File(p) => std::fs::read_to_string(p).map_err(|e| ConfigErrors {
                source_name: self.name(),
                errors: vec![ConfigError::new("", format!("cannot read config: {e}"))],
            }),
            ConfigSource::Text { text, .. } => Ok(text.clone()),
        }
    }

    pub fn parse(&self, text: &str) -> Result<Config, ConfigErrors> {
        config::parse(text, &self.name(), &self.base_dir())
    }
}

/// One applied config.
#[derive(Debug, Clone)]
pub struct Applied {
    /// 1 for the config the gateway started with, then counting up.
    pub version: u64,
    pub at: SystemTime,
    /// The first 12 hex digits of the SHA-256 of the config text.
    pub sha256: String,
    /// What caused it: `start`, `SIGHUP`, `file changed: ...`, `rollback to 3`, ...
    pub cause: String,
    text: Arc<str>,
}

impl Applied {
    /// The config text as applied (secrets included: redact before showing it).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// What a reload did.
#[derive(Debug)]
pub enum Outcome {
    /// A new gateway is serving.
    Applied(Applied),
    /// Nothing differed from the running config (same text, same module bytes).
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
    #[error("no earlier config to roll back to")]
    NothingToRollBack,
    #[error("version {0} is not in the config history (the last 16 are kept)")]
    NoSuchVersion(u64),
}

/// Applies new configs to a running gateway. Reloads are serialized: one at a time.
pub struct Reloader {
    source: Mutex<ConfigSource>,
    runtime: Arc<Runtime>,
    shared: Shared,
    /// Serializes reloads; the history is only changed under it.
    applying: tokio::sync::Mutex<()>,
    history: Mutex<VecDeque<Applied>>,
}

impl Reloader {
    /// Wraps a gateway that was built from `text` of `source`.
    pub fn new(source: ConfigSource, text: &str, runtime: Arc<Runtime>, shared: Shared) -> Self {
        let first = applied(1, "start", text);
        metrics().config_version.set(1);
        events::record(
            events::Kind::Reload,
            format!("config version 1 serving (start): sha256 {}", first.sha256),
        );
        Self {
            source: Mutex::new(source),
            runtime,
            shared,
            applying: tokio::sync::Mutex::new(()),
            history: Mutex::new(VecDeque::from([first])),
        }
    }

    /// The plugin runtime, with the plugins' key-value store and metrics.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Re-reads the config source and applies it.
    pub async fn reload(&self, cause: &str) -> Result<Outcome, ReloadError> {
        let source = lock(&self.source).clone();
        let text = match source.read() {
            Ok(text) => text,
            Err(e) => return Err(self.refused(cause, e)),
        };
        self.apply(&text, cause).await
    }

    /// Validates and builds `text` as the whole new config, then swaps it in. For a
    /// [`ConfigSource::Text`] source, `text` becomes the source's text.
    pub async fn apply(&self, text: &str, cause: &str) -> Result<Outcome, ReloadError> {
        let _one_at_a_time = self.applying.lock().await;
        let started = Instant::now();
        let source = lock(&self.source).clone();
        let config = source.parse(text).map_err(|e| self.refused(cause, e))?;
        for w in &config.warnings {
            tracing::warn!("reload ({cause}): {}: {w}", config.source_name);
        }
        let previous = self.shared.load_full();
        if let Some(e) = listeners_moved(&previous.config, &config) {
            let errors = ConfigErrors { source_name: config.source_name.clone(), errors: vec![e] };
            return Err(self.refused(cause, errors));
        }
        warn_restart_only(&previous.config, &config);
        let (gateway, report) = Gateway::rebuild(config, &self.runtime, Some(&previous))
            .await
            .map_err(|e| self.refused(cause, e))?;
        let current_text = self.current().text;
        if report.loaded.is_empty() && report.tls_changed.is_empty() && *current_text == *text {
            tracing::debug!("reload ({cause}): nothing changed");
            return Ok(Outcome::Unchanged);
        }
        gateway.activate();
        self.shared.store(Arc::new(gateway));
        if let ConfigSource::Text { text: t, .. } = &mut *lock(&self.source) {
            *t = text.to_owned();
        }
        let m = metrics();
        for swap in &report.swaps {
            m.swaps.with_label_values(&[&swap.plugin]).inc();
            let line = format!(
                "plugin {:?} swapped: {} -> {}",
                swap.plugin,
                swap.old.short_hash(),
                gateway::describe(&swap.new),
            );
            tracing::info!("{line}");
            events::record(events::Kind::Swap, line);
        }
        let mut history = lock(&self.history);
        let version = history.back().map_or(1, |a| a.version + 1);
        let entry = applied(version, cause, text);
        m.reloads.with_label_values(&["applied"]).inc();
        m.config_version.set(version as i64);
        let tls = match report.tls_changed.as_slice() {
            [] => String::new(),
            names => format!(", certificates of listener(s) {names:?} reloaded"),
        };
        let line = format!(
            "config version {version} applied ({cause}): sha256 {}, {} plugins reloaded, {} kept{tls}, in {:.1?}",
            entry.sha256,
            report.loaded.len(),
            report.kept.len(),
            started.elapsed(),
        );
        tracing::info!("{line}");
        events::record(events::Kind::Reload, line);
        let serving = self.shared.load();
        for name in &report.tls_changed {
            if let Some(t) = serving.tls(name) {
                crate::tls::log_certs(name, t);
            }
        }
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(entry.clone());
        Ok(Outcome::Applied(entry))
    }

    /// Re-applies the config that was serving before the current one.
    pub async fn rollback(&self) -> Result<Outcome, ReloadError> {
        let (version, text) = {
            let history = lock(&self.history);
            let previous = history.iter().rev().nth(1).ok_or(ReloadError::NothingToRollBack)?;
            (previous.version, previous.text.clone())
        };
        self.apply(&text, &format!("rollback to version {version}")).await
    }

    /// Re-applies the config of `version`, as a new version.
    pub async fn rollback_to(&self, version: u64) -> Result<Outcome, ReloadError> {
        let text = lock(&self.history)
            .iter()
            .find(|a| a.version == version)
            .map(|a| a.text.clone())
            .ok_or(ReloadError::NoSuchVersion(version))?;
        self.apply(&text, &format!("rollback to version {version}")).await
    }

    /// Applied configs, oldest first (at most the last 16).
    pub fn history(&self) -> Vec<Applied> {
        lock(&self.history).iter().cloned().collect()
    }

    /// The config serving now.
    pub fn current(&self) -> Applied {
        lock(&self.history).back().cloned().expect("the start config is always in the history")
    }

    /// The files whose change should trigger a reload: the config file and every module.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            self.shared.load().watched_paths().map(Path::to_path_buf).collect();
        if let ConfigSource::File(p) = &*lock(&self.source) {
            files.push(p.clone());
        }
        files
    }

    fn refused(&self, cause: &str, e: ConfigErrors) -> ReloadError {
        let serving = self.current();
        // One line, so log pipelines keep the reasons with the event.
        let errors: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
        metrics().reloads.with_label_values(&["refused"]).inc();
        let line = format!(
            "reload refused ({cause}); still serving config version {}: {}",
            serving.version,
            errors.join("; ")
        );
        tracing::error!("{line}");
        events::record(events::Kind::ReloadRefused, line);
        ReloadError::Invalid(e)
    }
}

/// Swaps in optimised code as background compiles finish (`runtime.quick_start`): the
/// running config is applied again and picks the optimised modules up like changed ones,
/// with no failed requests. Ends when the gateway stops.
pub async fn tier_up(reloader: std::sync::Weak<Reloader>, stopped: impl Future<Output = ()>) {
    let Some(runtime) = reloader.upgrade().map(|r| r.runtime.clone()) else { return };
    let mut stopped = std::pin::pin!(stopped);
    loop {
        tokio::select! {
            () = runtime.tiered_up() => {}
            () = &mut stopped => return,
        }
        let Some(reloader) = reloader.upgrade() else { return };
        let text = reloader.current().text;
        // `apply` logs what it swapped, or why it could not.
        let _ = reloader.apply(&text, "optimised plugin code ready").await;
    }
}

fn applied(version: u64, cause: &str, text: &str) -> Applied {
    let sha = Sha256::digest(text.as_bytes());
    let sha256 = sha.iter().take(6).map(|b| format!("{b:02x}")).collect();
    Applied { version, at: SystemTime::now(), sha256, cause: cause.to_owned(), text: text.into() }
}

/// Settings that only take effect on restart: say so instead of silently ignoring them.
/// The listeners are bound at start: a reload may change their certificates and client
/// CA, not which there are, where they listen, or whether they speak TLS (a listener left
/// without certificates could not finish a handshake).
fn listeners_moved(old: &Config, new: &Config) -> Option<ConfigError> {
    let shape = |c: &Config| -> Vec<(std::sync::Arc<str>, std::net::SocketAddr, bool)> {
        c.listeners.iter().map(|l| (l.name.clone(), l.listen, l.tls.is_some())).collect()
    };
    (shape(old) != shape(new)).then(|| {
        ConfigError::new(
            "listeners",
            "adding, removing or moving a listener, or turning its TLS on or off, takes a \
             restart (certificates, keys and client_ca reload)",
        )
    })
}

fn warn_restart_only(old: &Config, new: &Config) {
    if old.server.listen != new.server.listen {
        tracing::warn!("server.listen changed; it takes effect on restart");
    }
    if old.server.workers != new.server.workers {
        tracing::warn!("server.workers changed; it takes effect on restart");
    }
    if old.admin != new.admin {
        tracing::warn!("admin changed; it takes effect on restart");
    }
    if old.tracing != new.tracing {
        tracing::warn!("tracing changed; it takes effect on restart");
    }
    if old.metrics != new.metrics {
        tracing::warn!("metrics changed; buckets and labels take effect on restart");
    }
    let (a, b) = (&old.runtime, &new.runtime);
    if a.kv != b.kv {
        tracing::warn!("kv changed; it takes effect on restart (the running store is kept)");
    }
    if a.max_instances != b.max_instances
        || a.max_memory_bytes != b.max_memory_bytes
        || a.memory_budget_bytes != b.memory_budget_bytes
    {
        tracing::warn!(
            "runtime.max_instances / max_memory_mib / memory_budget_mib changed; they take \
             effect on restart"
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
