//! A gateway built from one validated config: the router, each route's plugin chain and
//! upstream, and the upstream client. Requests read it through an `ArcSwap` snapshot (see
//! `server`), which is the seam for live reloads.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::plugin::{Chain, CodeSource, LoadError, Module, NamedPlugin, Runtime};
use crate::router::Router;
use crate::upstream::{self, Client, Upstream};

/// A route, resolved.
pub struct Route {
    pub name: Arc<str>,
    pub prefix: String,
    pub chain: Chain,
    pub upstream: Arc<Upstream>,
    pub max_body_bytes: u64,
}

pub struct Gateway {
    pub config: Config,
    pub client: Client,
    router: Router<Arc<Route>>,
    plugins: BTreeMap<String, Arc<NamedPlugin>>,
}

impl Gateway {
    /// Compiles every plugin module (each distinct file once), runs every plugin's `init`
    /// with its config, and wires routes. Reports every failure, each under its TOML path.
    pub async fn build(config: Config, runtime: &Arc<Runtime>) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut modules: HashMap<PathBuf, Option<Arc<Module>>> = HashMap::new();
        for (name, spec) in &config.plugins {
            if modules.contains_key(&spec.module) {
                continue;
            }
            let loaded = runtime.load_module(&spec.module).await.map_err(|e| {
                let msg = format!("{}: {e}", spec.module.display());
                errors.push(ConfigError::new(format!("plugins.{name}.module"), msg));
            });
            modules.insert(spec.module.clone(), loaded.ok());
        }
        let queue_timeout = config.server.request_timeout;
        let mut plugins = BTreeMap::new();
        for (name, spec) in &config.plugins {
            let Some(Some(module)) = modules.get(&spec.module) else {
                continue;
            };
            let loaded =
                NamedPlugin::load(runtime.clone(), module.clone(), spec.clone(), queue_timeout)
                    .await;
            match loaded {
                Ok(p) => {
                    plugins.insert(name.clone(), Arc::new(p));
                }
                Err(e @ LoadError::ConfigRejected(_)) => {
                    errors.push(ConfigError::new(format!("plugins.{name}.config"), e.to_string()))
                }
                Err(e @ LoadError::Failed(_)) => {
                    errors.push(ConfigError::new(format!("plugins.{name}.module"), e.to_string()))
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors { source_name: config.source_name.clone(), errors });
        }

        let upstreams: HashMap<&str, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                (name.as_str(), Arc::new(Upstream::new(name.clone(), u.endpoints.clone())))
            })
            .collect();
        let routes = config.routes.iter().map(|r| {
            let chain = Chain::new(r.plugins.iter().map(|p| plugins[p].clone()).collect());
            let route = Route {
                name: r.name.clone(),
                prefix: r.path.clone(),
                chain,
                upstream: upstreams[r.upstream.as_str()].clone(),
                max_body_bytes: r.max_body_bytes,
            };
            (r.path.clone(), Arc::new(route))
        });
        let router = Router::new(routes);
        let client = upstream::client(config.server.connect_timeout);
        Ok(Self { config, client, router, plugins })
    }

    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.router.find(path)
    }

    pub fn plugin(&self, name: &str) -> Option<&Arc<NamedPlugin>> {
        self.plugins.get(name)
    }

    /// The start-up summary: plugins with their modules and compile times, then routes.
    pub fn log_summary(&self) {
        for (name, p) in &self.plugins {
            let m = &p.module;
            let how = match m.source {
                CodeSource::Compiled => "compiled",
                CodeSource::DiskCache => "loaded from cache",
            };
            tracing::info!(
                "plugin {name:?}: {} (sha256 {}) {how} in {:.1?}, instances={:?}, timeout={:?}, on_error={:?}",
                m.path.display(),
                m.short_hash(),
                m.load_time,
                p.spec.instances,
                p.spec.timeout,
                p.spec.on_error,
            );
        }
        for route in self.config.routes.iter() {
            let up = &self.config.upstreams[&route.upstream];
            let endpoints: Vec<_> = up.endpoints.iter().map(|e| e.as_str()).collect();
            let chain =
                if route.plugins.is_empty() { "-".to_owned() } else { route.plugins.join(" -> ") };
            tracing::info!(
                "route {:?}: {}* -> upstream {:?} [{}], plugins: {chain}",
                &*route.name,
                route.path,
                route.upstream,
                endpoints.join(", "),
            );
        }
    }
}
