//! Sluice: a programmable HTTP proxy and API gateway whose behaviour is extended by
//! WebAssembly component plugins.
//!
//! The request path, module by module:
//!
//! ```text
//! server (listener, graceful shutdown)
//!   -> router (path prefix -> route)
//!   -> plugin::Chain request phases (Wasm components, in route order)
//!   -> upstream (endpoint choice, pooled keep-alive client)
//!   -> plugin::Chain response phases (reverse order)
//!   -> client
//! ```
//!
//! `config` turns TOML into a validated model, `gateway` builds routes, chains and
//! upstreams from it, and `proxy` runs one request through them.

pub mod admin;
pub mod capability;
pub mod config;
pub mod echo;
pub mod events;
pub mod gateway;
pub mod message;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod upstream;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use config::Config;
pub use gateway::Gateway;
pub use plugin::Runtime;
pub use reload::{ConfigSource, Reloader};
pub use server::Running;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] plugin::RuntimeError),
    #[error(transparent)]
    Config(#[from] config::ConfigErrors),
    #[error("server.listen: cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("tracing.endpoint: {0}")]
    Tracing(String),
    #[error("admin.listen: cannot listen on {addr}")]
    AdminListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin tokens: {0}")]
    AdminToken(std::io::Error),
}

/// Builds the gateway for `config`, reporting every problem, without serving anything.
/// This is what `sluice check` runs.
pub async fn build(config: Config) -> Result<(Arc<Runtime>, Gateway), StartError> {
    build_with(config, Runtime::new).await
}

async fn build_with(
    config: Config,
    runtime: impl FnOnce(&config::Runtime) -> Result<Arc<Runtime>, plugin::RuntimeError>,
) -> Result<(Arc<Runtime>, Gateway), StartError> {
    // The admin listener's certificates are read when it starts; checked here too.
    if let Some(tls) = config.admin.as_ref().and_then(|a| a.tls.as_ref()) {
        tls::load(tls, "admin.tls").map_err(|errors| {
            StartError::Config(config::ConfigErrors {
                source_name: config.source_name.clone(),
                errors,
            })
        })?;
    }
    let runtime = runtime(&config.runtime)?;
    let gateway = Gateway::build(config, &runtime).await?;
    Ok((runtime, gateway))
}

/// Reads `source`, builds the gateway, binds `server.listen` and serves in a background
/// task. The returned [`Running`] has the [`Reloader`] for live changes.
pub async fn start(source: ConfigSource) -> Result<Running, StartError> {
    let text = source.read()?;
    let config = source.parse(&text)?;
    telemetry::init_metrics(&config.metrics);
    if let Some(t) = &config.tracing {
        telemetry::otel::init(t).map_err(StartError::Tracing)?;
    }
    // The admin listener comes up first: `/live` answers, and `/ready` says 503, while the
    // plugins compile.
    let admin = match &config.admin {
        Some(a) => Some(admin::AdminHandle::start(a).await.map_err(|e| match e {
            admin::StartFailure::Token(e) => StartError::AdminToken(e),
            admin::StartFailure::Listen(source) => {
                StartError::AdminListen { addr: a.listen, source }
            }
            admin::StartFailure::Tls(errors) => StartError::Config(config::ConfigErrors {
                source_name: config.source_name.clone(),
                errors,
            }),
        })?),
        None => None,
    };
    let addr = config.server.listen;
    let shutdown_timeout = config.server.shutdown_timeout;
    if let Some(files) = server::raise_fd_limit() {
        // Each client connection takes a descriptor (and upstream connections, pooled, some).
        let max = config.server.max_connections as u64;
        if max + 64 > files {
            tracing::warn!(
                "server.max_connections ({max}) is above what the open-file limit ({files}) \
                 allows: raise `ulimit -n` or lower server.max_connections"
            );
        }
    }
    let extra = config.listeners.clone();
    let (runtime, gateway) = build_with(config, Runtime::serving).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(|source| StartError::Listen { addr, source })?;
    // Every listener is bound before any serves, so a taken port fails the start whole.
    let mut more = Vec::with_capacity(extra.len());
    for l in &extra {
        let bound = tokio::net::TcpListener::bind(l.listen)
            .await
            .map_err(|source| StartError::Listen { addr: l.listen, source })?;
        let at =
            bound.local_addr().map_err(|source| StartError::Listen { addr: l.listen, source })?;
        more.push((l.clone(), bound, at));
    }
    gateway.activate();
    let shared: server::Shared = Arc::new(ArcSwap::from_pointee(gateway));
    let reloader = Arc::new(Reloader::new(source, &text, runtime.clone(), shared.clone()));
    if let Some(admin) = &admin {
        admin.state.serving(shared.clone(), runtime, reloader.clone());
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|&s| s).await;
        }
    };
    tokio::spawn(reload::tier_up(Arc::downgrade(&reloader), until_stopped()));
    let mut listeners = vec![(Arc::<str>::from(crate::config::DEFAULT_LISTENER), local)];
    let mut tasks = vec![tokio::spawn(server::serve(
        listener,
        listeners[0].0.clone(),
        Arc::new(server::PlainTcp),
        shared.clone(),
        until_stopped(),
        shutdown_timeout,
    ))];
    for (l, bound, at) in more {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        tracing::info!("listener {:?} on {scheme}://{at}", l.name);
        listeners.push((l.name.clone(), at));
        let (stop, name) = (until_stopped(), l.name.clone());
        tasks.push(match l.tls {
            Some(_) => {
                let tls = tls::Terminator { listener: name.clone(), gateway: shared.clone() };
                tokio::spawn(server::serve(
                    bound,
                    name,
                    Arc::new(tls),
                    shared.clone(),
                    stop,
                    shutdown_timeout,
                ))
            }
            None => tokio::spawn(server::serve(
                bound,
                name,
                Arc::new(server::PlainTcp),
                shared.clone(),
                stop,
                shutdown_timeout,
            )),
        });
    }
    let task = tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok(Running::new(local, listeners, shared, reloader, admin, stop, task))
}
