//! A gateway built from one validated config: the router, each route's plugin chain and
//! upstream, and the upstream client. Requests read it through an `ArcSwap` snapshot (see
//! `server`); a reload builds the next gateway from the previous one (see `reload`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::config::{PluginKind, Rewrite};
use crate::plugin::{Chain, CodeSource, LoadError, Module, NamedPlugin, Runtime};
use crate::router::{Found, RequestView, Router};
use crate::telemetry::access_log::AccessLog;
use crate::upstream::{Targets, Upstream};

/// A route, resolved.
pub struct Route {
    pub name: Arc<str>,
    pub chain: Chain,
    /// Its upstream, or those it splits traffic between.
    pub targets: Targets,
    pub rewrite: Option<Rewrite>,
    pub max_body_bytes: u64,
    pub require_client_cert: bool,
    pub https_redirect: Option<u16>,
    pub websocket: Option<crate::config::WebSocketSettings>,
    pub compression: Option<Arc<crate::config::CompressionSettings>>,
    pub request_decompression: Option<u64>,
    pub grpc_max_message_bytes: u64,
}

pub struct Gateway {
    pub config: Config,
    router: Router<Arc<Route>>,
    plugins: BTreeMap<String, Arc<NamedPlugin>>,
    upstreams: HashMap<String, Arc<Upstream>>,
    /// Where each request's line goes (`[access_log]`).
    pub access_log: Option<Arc<AccessLog>>,
    /// Each TLS listener's certificates and settings, by listener name.
    tls: HashMap<Arc<str>, Arc<crate::tls::ListenerTls>>,
}

/// A plugin whose module changed between two gateways.
pub struct Swap {
    pub plugin: String,
    pub old: Arc<Module>,
    pub new: Arc<Module>,
}

/// What building a gateway from a previous one kept and changed.
#[derive(Default)]
pub struct BuildReport {
    /// Plugins now running a different module than before.
    pub swaps: Vec<Swap>,
    /// Plugins instantiated anew (new, changed config, or swapped module).
    pub loaded: Vec<String>,
    /// Plugins carried over with their warm instances.
    pub kept: Vec<String>,
    /// TLS listeners whose certificate, key or CA files changed.
    pub tls_changed: Vec<Arc<str>>,
}

impl Gateway {
    /// Compiles every plugin module (each distinct file once), runs every plugin's `init`
    /// with its config, and wires routes. Reports every failure, each under its TOML path.
    pub async fn build(config: Config, runtime: &Arc<Runtime>) -> Result<Self, ConfigErrors> {
        Ok(Self::rebuild(config, runtime, None).await?.0)
    }

    /// Like [`Gateway::build`], but carries over from `previous` what did not change: plugins
    /// with the same module bytes and settings keep their warm instance pools, upstreams with
    /// the same endpoints keep their state, and the client keeps its connection pools.
    pub async fn rebuild(
        config: Config,
        runtime: &Arc<Runtime>,
        previous: Option<&Gateway>,
    ) -> Result<(Self, BuildReport), ConfigErrors> {
        let mut errors = Vec::new();
        let mut report = BuildReport::default();
        let mut modules: HashMap<(&Path, PluginKind), Option<Arc<Module>>> = HashMap::new();
        let wanted = config.plugins.iter().flat_map(|(name, spec)| {
            let rollout = spec
                .rollout
                .as_ref()
                .map(|r| (format!("plugins.{name}.rollout.module"), &r.module, spec.kind));
            let module = (format!("plugins.{name}.module"), &spec.module, spec.kind);
            [Some(module), rollout].into_iter().flatten()
        });
        // Every module of a plugin in a rollout is judged on its latency: no baseline code.
        let judged: Vec<&Path> = config
            .plugins
            .values()
            .filter_map(|spec| {
                Some([spec.module.as_path(), spec.rollout.as_ref()?.module.as_path()])
            })
            .flatten()
            .collect();
        for (at, path, kind) in wanted {
            if modules.contains_key(&(path.as_path(), kind)) {
                continue;
            }
            let loaded = match judged.contains(&path.as_path()) {
                true => runtime.load_module_optimised(path, kind).await,
                false => runtime.load_module(path, kind).await,
            };
            let loaded = loaded.map_err(|e| {
                errors.push(ConfigError::new(at, format!("{}: {e}", path.display())));
            });
            modules.insert((path, kind), loaded.ok());
        }
        let queue_timeout = config.server.request_timeout;
        let mut plugins = BTreeMap::new();
        for (name, spec) in &config.plugins {
            let Some(Some(module)) = modules.get(&(spec.module.as_path(), spec.kind)) else {
                continue;
            };
            let candidate = match &spec.rollout {
                Some(r) => match modules.get(&(r.module.as_path(), spec.kind)) {
                    Some(Some(m)) => Some(m.clone()),
                    _ => continue,
                },
                None => None,
            };
            let before = previous.and_then(|g| g.plugins.get(name));
            if let Some(before) = before {
                let same_candidate = match (before.rollout(), &candidate) {
                    (Some(r), Some(c)) => Arc::ptr_eq(&r.candidate_module, c),
                    (None, None) => true,
                    _ => false,
                };
                if Arc::ptr_eq(&before.module, module) && before.spec == *spec && same_candidate {
                    plugins.insert(name.clone(), before.clone());
                    report.kept.push(name.clone());
                    continue;
                }
            }
            let loaded = NamedPlugin::load(
                runtime.clone(),
                module.clone(),
                spec.clone(),
                queue_timeout,
                candidate,
            )
            .await;
            match loaded {
                Ok(p) => {
                    plugins.insert(name.clone(), Arc::new(p));
                    report.loaded.push(name.clone());
                    if let Some(before) = before.filter(|b| !Arc::ptr_eq(&b.module, module)) {
                        let (old, new) = (before.module.clone(), module.clone());
                        report.swaps.push(Swap { plugin: name.clone(), old, new });
                    }
                }
                Err(e @ LoadError::ConfigRejected(_)) => {
                    errors.push(ConfigError::new(format!("plugins.{name}.config"), e.to_string()))
                }
                Err(e @ LoadError::Failed(_)) => {
                    errors.push(ConfigError::new(format!("plugins.{name}.module"), e.to_string()))
                }
            }
        }
        // The same settings keep the running log (its file and writer); new ones open it.
        let kept_log = previous
            .and_then(|g| g.access_log.clone())
            .filter(|log| Some(&log.settings) == config.access_log.as_ref());
        let access_log = match (&config.access_log, kept_log) {
            (_, Some(kept)) => Some(kept),
            (None, None) => None,
            (Some(settings), None) => AccessLog::start(settings.clone())
                .map_err(|e| errors.push(ConfigError::new("access_log.path", format!("{e}"))))
                .ok()
                .map(Arc::new),
        };
        let mut tls = HashMap::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(settings) = &l.tls else { continue };
            match crate::tls::load(settings, &format!("listeners[{i}].tls")) {
                Ok(loaded) => {
                    let before = previous.and_then(|g| g.tls.get(&l.name));
                    if before.is_none_or(|b| b.digest != loaded.digest) {
                        report.tls_changed.push(l.name.clone());
                    }
                    tls.insert(l.name.clone(), Arc::new(loaded));
                }
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors { source_name: config.source_name.clone(), errors });
        }

        let mut upstream_tls = HashMap::new();
        for (name, u) in &config.upstreams {
            let Some(t) = &u.tls else { continue };
            let h2 = matches!(u.protocol, crate::config::UpstreamProtocol::H2 { .. });
            match crate::tls::load_client(t, &format!("upstreams.{name}.tls"), h2) {
                Ok(client) => {
                    upstream_tls.insert(name.as_str(), Arc::new(client));
                }
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors { source_name: config.source_name.clone(), errors });
        }
        let upstreams: HashMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                let tls = upstream_tls.get(name.as_str()).cloned();
                let digest = tls.as_ref().map(|t| t.digest);
                let kept = previous
                    .and_then(|g| g.upstreams.get(name))
                    .filter(|before| before.built_from(u, digest));
                let upstream = match kept {
                    Some(before) => before.clone(),
                    None => {
                        let new = Upstream::new(name, u.clone(), tls);
                        if let Some(before) = previous.and_then(|g| g.upstreams.get(name)) {
                            new.inherit_overrides(before);
                        }
                        Arc::new(new)
                    }
                };
                (name.clone(), upstream)
            })
            .collect();
        let routes = config.routes.iter().map(|r| {
            let chain = Chain::new(r.plugins.iter().map(|p| plugins[p].clone()).collect());
            let route = Route {
                name: r.name.clone(),
                chain,
                targets: Targets::new(
                    r.targets.iter().map(|(u, w)| (upstreams[u].clone(), *w)).collect(),
                    r.split_sticky.clone(),
                ),
                rewrite: r.rewrite.clone(),
                max_body_bytes: r.max_body_bytes,
                require_client_cert: r.require_client_cert,
                https_redirect: r.https_redirect,
                websocket: r.websocket,
                compression: r.compression.clone(),
                request_decompression: r.request_decompression,
                grpc_max_message_bytes: r.grpc_max_message_bytes,
            };
            (r.rule.clone(), Arc::new(route))
        });
        let router = Router::new(routes);
        Ok((Self { config, router, plugins, upstreams, access_log, tls }, report))
    }

    /// Starts what runs in the background (health checks). Called once the gateway is
    /// about to serve, so `sluice check` probes nothing.
    pub fn activate(&self) {
        for u in self.upstreams.values() {
            u.start_checks();
        }
    }

    pub fn route(&self, req: &RequestView<'_>) -> Option<Found<'_, Arc<Route>>> {
        self.router.find(req)
    }

    /// Upstreams by name, with their endpoints' health, load and breaker state.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    pub fn plugin(&self, name: &str) -> Option<&Arc<NamedPlugin>> {
        self.plugins.get(name)
    }

    /// Every plugin, by name.
    pub fn plugins(&self) -> impl Iterator<Item = (&String, &Arc<NamedPlugin>)> {
        self.plugins.iter()
    }

    /// Every upstream, by name.
    pub fn upstreams(&self) -> impl Iterator<Item = (&String, &Arc<Upstream>)> {
        self.upstreams.iter()
    }

    /// Every file the gateway reads at build (plugin modules and files, certificates, keys,
    /// CA bundles), for the file watcher.
    pub fn watched_paths(&self) -> impl Iterator<Item = &std::path::Path> {
        let plugins = self.config.plugins.values().flat_map(|p| {
            std::iter::once(p.module.as_path()).chain(p.files.iter().map(PathBuf::as_path))
        });
        let tls = self.config.listeners.iter().filter_map(|l| l.tls.as_ref()).flat_map(|t| {
            let pairs = t.certs.iter().flat_map(|c| [c.cert.as_path(), c.key.as_path()]);
            pairs.chain(t.client_ca.as_deref())
        });
        let upstream_tls =
            self.config.upstreams.values().filter_map(|u| u.tls.as_ref()).flat_map(|t| {
                let client = t.client.iter().flat_map(|(c, k)| [c.as_path(), k.as_path()]);
                t.ca.as_deref().into_iter().chain(client)
            });
        plugins.chain(tls).chain(upstream_tls)
    }

    /// A TLS listener's loaded settings.
    pub fn tls(&self, listener: &str) -> Option<&Arc<crate::tls::ListenerTls>> {
        self.tls.get(listener)
    }

    /// Every TLS listener's loaded settings.
    pub fn tls_listeners(
        &self,
    ) -> impl Iterator<Item = (&Arc<str>, &Arc<crate::tls::ListenerTls>)> {
        self.tls.iter()
    }

    /// The start-up summary: plugins with their modules and compile times, then routes.
    pub fn log_summary(&self) {
        for (name, p) in &self.plugins {
            tracing::info!(
                "plugin {name:?}: {}, instances={:?}, timeout={:?}, on_error={:?}",
                describe(&p.module),
                p.spec.instances,
                p.spec.timeout,
                p.spec.on_error,
            );
            if let Some(r) = p.rollout() {
                tracing::info!(
                    "plugin {name:?}: rolling out {} to {}% of traffic (sticky: {:?})",
                    describe(&r.candidate_module),
                    r.spec.percent,
                    r.spec.sticky,
                );
            }
        }
        for (name, up) in &self.config.upstreams {
            let endpoints: Vec<_> = up.endpoints.iter().map(|e| e.address.as_str()).collect();
            tracing::info!(
                "upstream {name:?}: [{}], {:?}, {} attempt(s){}{}{}",
                endpoints.join(", "),
                up.strategy,
                up.retry.attempts,
                if up.health_check.is_some() { ", active checks" } else { "" },
                if up.passive_health.is_some() { ", passive checks" } else { "" },
                if up.circuit_breaker.is_some() { ", circuit breaker" } else { "" },
            );
        }
        for route in self.config.routes.iter() {
            let chain =
                if route.plugins.is_empty() { "-".to_owned() } else { route.plugins.join(" -> ") };
            let targets: Vec<String> = match route.targets.as_slice() {
                [(u, _)] => vec![format!("{u:?}")],
                split => split.iter().map(|(u, w)| format!("{u:?} ({w})")).collect(),
            };
            tracing::info!(
                "route {:?}: {} -> upstream {}, plugins: {chain}",
                &*route.name,
                route.rule.path,
                targets.join(" / "),
            );
        }
        for (name, t) in &self.tls {
            crate::tls::log_certs(name, t);
        }
        for w in &self.config.warnings {
            tracing::warn!("{}: {w}", self.config.source_name);
        }
    }
}

/// `path (sha256 abcdef012345) compiled in 70ms` / `... loaded from cache in 0.4ms`.
pub fn describe(m: &Module) -> String {
    if m.kind() == PluginKind::Extism {
        return format!("{} (sha256 {}, Extism)", m.path.display(), m.short_hash());
    }
    let how = match m.source {
        CodeSource::Compiled => "compiled",
        CodeSource::DiskCache => "loaded from cache",
        CodeSource::Baseline => "compiled by the baseline compiler (optimising in the background)",
    };
    let world = match m.world.as_deref() {
        Some(w) if w != sluice_bindings::WORLD_VERSION => format!(", built for sluice:plugin@{w}"),
        _ => String::new(),
    };
    let (path, hash) = (m.path.display(), m.short_hash());
    format!("{path} (sha256 {hash}{world}) {how} in {:.1?}", m.load_time)
}
