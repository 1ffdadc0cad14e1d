//! `sluice ctl`: the admin API (docs/admin.md) from a terminal. Tables by default,
//! `--json` for scripts.

use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

mod show;
use show::*;

#[derive(Args)]
pub struct Ctl {
    /// The admin listener's URL.
    #[arg(long, env = "SLUICE_ADMIN", default_value = "http://127.0.0.1:9901")]
    admin: String,
    /// A bearer token (admin.token or admin.read_token).
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file (e.g. the admin.token_file the gateway generated).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    /// For an https:// admin URL: the CA bundle that signed its certificate (default: the
    /// system's roots).
    #[arg(long, env = "SLUICE_ADMIN_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// A client certificate (PEM chain) for an admin listener that asks for one.
    #[arg(long, env = "SLUICE_ADMIN_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "SLUICE_ADMIN_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Version, uptime, connections, config version.
    Status,
    /// Routes with their upstreams and plugin chains.
    Routes,
    /// Upstreams and their endpoints: state, health, breaker, in flight.
    Upstreams,
    /// Plugins: module, instances, calls, rollout.
    Plugins,
    /// Applied config versions.
    History,
    /// What changed between two config versions (default: the last change), redacted.
    Diff {
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
    },
    /// Stop sending new requests to an endpoint (in-flight ones finish).
    Drain { upstream: String, endpoint: String },
    /// Set an endpoint's state: up, drain, down, or config (drop the override).
    Endpoint { upstream: String, endpoint: String, state: EndpointArg },
    /// Override an endpoint's weight (1 to 1000), or `config` to drop the override.
    Weight { upstream: String, endpoint: String, weight: String },
    /// Override an endpoint's health (healthy, unhealthy) or go back to its checks (auto).
    Health { upstream: String, endpoint: String, health: HealthArg },
    /// Force an endpoint's circuit breaker open or closed, or back to automatic.
    Breaker { upstream: String, endpoint: String, mode: BreakerArg },
    /// Promote or abort a plugin's rollout now, or set the new version's share.
    Rollout {
        action: RolloutArg,
        plugin: String,
        /// The new version's share, 0 to 100 (with `share`).
        percent: Option<f64>,
    },
    /// Show the log filter, or set it (tracing's EnvFilter syntax, e.g. `info,sluice::proxy=debug`)
    /// until the next restart.
    LogLevel { filter: Option<String> },
    /// The plugins' key-value store: backend, reachability, keys held here.
    Kv,
    /// Delete a plugin's key-value keys that start with PREFIX ("" for all of them).
    KvPurge { plugin: String, prefix: String },
    /// Recent reloads, swaps, rollout verdicts and operators' actions, newest first.
    Events,
    /// Re-read the config file and apply it.
    Reload,
    /// Apply an earlier config version again.
    Rollback { version: u64 },
}

#[derive(Clone, Copy, ValueEnum)]
enum EndpointArg {
    Up,
    Drain,
    Down,
    Config,
}

#[derive(Clone, Copy, ValueEnum)]
enum HealthArg {
    Healthy,
    Unhealthy,
    Auto,
}

#[derive(Clone, Copy, ValueEnum)]
enum RolloutArg {
    Promote,
    Abort,
    Share,
}

#[derive(Clone, Copy, ValueEnum)]
enum BreakerArg {
    Open,
    Close,
    Auto,
}

impl Ctl {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(self.run_async())
    }

    async fn run_async(self) -> anyhow::Result<ExitCode> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let tls = match self.admin.starts_with("https://") {
            false => None,
            true => {
                let settings = sluice::config::UpstreamTls {
                    ca: self.cacert.clone(),
                    server_name: None,
                    client: self.cert.clone().zip(self.key.clone()),
                };
                let loaded =
                    sluice::tls::load_client(&settings, "ctl", false).map_err(|errors| {
                        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                        anyhow!("{}", text.join("; ").replace("ctl.ca", "--cacert"))
                    })?;
                Some(loaded.connector)
            }
        };
        let client = Client { base: self.admin.trim_end_matches('/').to_owned(), token, tls };
        let endpoint_path = |u: &str, e: &str, what: &str| {
            format!("/api/v1/upstreams/{}/endpoints/{}/{what}", encode(u), encode(e))
        };
        let (value, show): (Value, fn(&Value) -> String) = match &self.command {
            CtlCommand::Status => (client.get("/api/v1/server").await?, show_status),
            CtlCommand::Routes => (client.get("/api/v1/routes").await?, show_routes),
            CtlCommand::Upstreams => (client.get("/api/v1/upstreams").await?, show_upstreams),
            CtlCommand::Plugins => (client.get("/api/v1/plugins").await?, show_plugins),
            CtlCommand::History => (client.get("/api/v1/config/history").await?, show_history),
            CtlCommand::Diff { from, to } => {
                let mut query = Vec::new();
                query.extend(from.map(|f| format!("from={f}")));
                query.extend(to.map(|t| format!("to={t}")));
                let path = format!("/api/v1/config/diff?{}", query.join("&"));
                (client.get(&path).await?, show_diff)
            }
            CtlCommand::Drain { upstream, endpoint } => {
                let path = endpoint_path(upstream, endpoint, "state");
                (client.post(&path, json!({ "state": "drain" })).await?, show_endpoint)
            }
            CtlCommand::Endpoint { upstream, endpoint, state } => {
                let state = match state {
                    EndpointArg::Up => "up",
                    EndpointArg::Drain => "drain",
                    EndpointArg::Down => "down",
                    EndpointArg::Config => "config",
                };
                let path = endpoint_path(upstream, endpoint, "state");
                (client.post(&path, json!({ "state": state })).await?, show_endpoint)
            }
            CtlCommand::Weight { upstream, endpoint, weight } => {
                let weight = match weight.as_str() {
                    "config" => Value::Null,
                    w => json!(w.parse::<u32>().map_err(|_| {
                        anyhow!("weight UPSTREAM ENDPOINT WEIGHT: a number 1-1000, or `config`")
                    })?),
                };
                let path = endpoint_path(upstream, endpoint, "weight");
                (client.post(&path, json!({ "weight": weight })).await?, show_endpoint)
            }
            CtlCommand::Health { upstream, endpoint, health } => {
                let health = match health {
                    HealthArg::Healthy => "healthy",
                    HealthArg::Unhealthy => "unhealthy",
                    HealthArg::Auto => "auto",
                };
                let path = endpoint_path(upstream, endpoint, "health");
                (client.post(&path, json!({ "health": health })).await?, show_endpoint)
            }
            CtlCommand::Kv => (client.get("/api/v1/kv").await?, show_kv),
            CtlCommand::KvPurge { plugin, prefix } => {
                let path = format!("/api/v1/plugins/{}/kv/purge", encode(plugin));
                (client.post(&path, json!({ "prefix": prefix })).await?, show_purged)
            }
            CtlCommand::Events => (client.get("/api/v1/events").await?, show_events),
            CtlCommand::Breaker { upstream, endpoint, mode } => {
                let mode = match mode {
                    BreakerArg::Open => "open",
                    BreakerArg::Close => "closed",
                    BreakerArg::Auto => "auto",
                };
                let path = endpoint_path(upstream, endpoint, "breaker");
                (client.post(&path, json!({ "mode": mode })).await?, show_endpoint)
            }
            CtlCommand::Rollout { action, plugin, percent } => {
                let body = match (action, percent) {
                    (RolloutArg::Promote, _) => json!({ "action": "promote" }),
                    (RolloutArg::Abort, _) => json!({ "action": "abort" }),
                    (RolloutArg::Share, Some(p)) => json!({ "action": "share", "percent": p }),
                    (RolloutArg::Share, None) => {
                        return Err(anyhow!(
                            "rollout share PLUGIN PERCENT: give the share, 0 to 100"
                        ));
                    }
                };
                let path = format!("/api/v1/plugins/{}/rollout", encode(plugin));
                (client.post(&path, body).await?, show_plugin)
            }
            CtlCommand::LogLevel { filter: None } => {
                (client.get("/api/v1/log-level").await?, show_filter)
            }
            CtlCommand::LogLevel { filter: Some(f) } => {
                (client.post("/api/v1/log-level", json!({ "filter": f })).await?, show_filter)
            }
            CtlCommand::Reload => (client.post("/api/v1/reload", json!({})).await?, show_applied),
            CtlCommand::Rollback { version } => {
                let body = json!({ "version": version });
                (client.post("/api/v1/config/rollback", body).await?, show_applied)
            }
        };
        match self.json {
            true => println!("{}", serde_json::to_string_pretty(&value)?),
            false => print!("{}", show(&value)),
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Percent-encodes what a path segment cannot hold as is.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// HTTP/1.1 on `stream`, its connection driven in the background.
async fn handshake<S>(
    stream: S,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

struct Client {
    base: String,
    token: Option<String>,
    /// For an https:// admin URL.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Client {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(http::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(http::Method::POST, path, Some(body)).await
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url: http::Uri = format!("{}{path}", self.base)
            .parse()
            .with_context(|| format!("not a URL: {}{path}", self.base))?;
        let authority = url.authority().ok_or_else(|| anyhow!("no host in {}", self.base))?;
        let default_port = match (url.scheme_str(), &self.tls) {
            (Some("http"), _) => 80,
            (Some("https"), Some(_)) => 443,
            _ => return Err(anyhow!("an http:// or https:// admin URL, got {}", self.base)),
        };
        let unreachable = |e: &dyn std::fmt::Display| {
            anyhow!(
                "admin API not reachable at {}: {e}; is `[admin]` configured in the gateway's \
                 config, and is it running?",
                self.base
            )
        };
        let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(default_port));
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .map_err(|_| unreachable(&"timed out connecting"))?
        .map_err(|e| unreachable(&e))?;
        let mut sender = match &self.tls {
            None => handshake(stream).await?,
            Some(tls) => {
                let host = authority.host().trim_start_matches('[').trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .with_context(|| format!("not a server name: {host}"))?;
                let stream = tls
                    .connect(name, stream)
                    .await
                    .with_context(|| format!("TLS with the admin listener at {}", self.base))?;
                handshake(stream).await?
            }
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority.as_str());
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&b)?)
            }
            None => Bytes::new(),
        };
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            sender.send_request(req.body(Full::new(bytes))?),
        )
        .await
        .map_err(|_| anyhow!("the admin API did not answer within 120 s"))??;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&body)
            .with_context(|| format!("{status} from the admin API, not JSON"))?;
        if !status.is_success() {
            let mut msg = format!(
                "{status}: {}",
                value["error"].as_str().unwrap_or("the admin API refused the call")
            );
            for e in value["errors"].as_array().into_iter().flatten() {
                msg.push_str(&format!(
                    "\n  {}: {}",
                    e["path"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                ));
            }
            if status == http::StatusCode::UNAUTHORIZED {
                msg.push_str("\n(pass --token, --token-file or SLUICE_ADMIN_TOKEN)");
            }
            return Err(anyhow!(msg));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(super::encode("127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(super::encode("a b/c"), "a%20b%2Fc");
    }
}
