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
    let runtime = Runtime::new(&config.runtime)?;
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
    let (runtime, gateway) = build(config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(|source| StartError::Listen { addr, source })?;
    gateway.activate();
    let shared: server::Shared = Arc::new(ArcSwap::from_pointee(gateway));
    let reloader = Arc::new(Reloader::new(source, &text, runtime.clone(), shared.clone()));
    if let Some(admin) = &admin {
        admin.state.serving(shared.clone(), runtime, reloader.clone());
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(
        listener,
        Arc::new(server::PlainTcp),
        shared.clone(),
        async move {
            let _ = stopped.await;
        },
        shutdown_timeout,
    ));
    Ok(Running::new(local, shared, reloader, admin, stop, task))
}
