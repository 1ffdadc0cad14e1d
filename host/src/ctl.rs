//! `sluice ctl`: the admin API (docs/admin.md) from a terminal. Tables by default,
//! `--json` for scripts.

use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

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
        let client = Client { base: self.admin.trim_end_matches('/').to_owned(), token };
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

struct Client {
    base: String,
    token: Option<String>,
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
        if url.scheme_str() != Some("http") {
            return Err(anyhow!("only http:// admin URLs are supported, got {}", self.base));
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            anyhow!(
                "admin API not reachable at {}: {e}; is `[admin]` configured in the gateway's \
                 config, and is it running?",
                self.base
            )
        };
        let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .map_err(|_| unreachable(&"timed out connecting"))?
        .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
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

/// A table: a header row and rows, columns padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            match i == last {
                true => out.push_str(cell),
                false => out.push_str(&format!("{cell:<w$}  ")),
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row, &mut out);
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn show_status(v: &Value) -> String {
    format!(
        "sluice {} (commit {}, {})\nuptime        {:.0}s\nlisten        {}\nworkers       {}\n\
         connections   {}\nin flight     {}\nconfig        version {}\nkv            {}\n",
        text(&v["version"]),
        text(&v["commit"]),
        text(&v["plugin_world"]),
        v["uptime_seconds"].as_f64().unwrap_or(0.0),
        text(&v["listen"]),
        text(&v["workers"]),
        text(&v["connections"]),
        text(&v["active_requests"]),
        text(&v["config_version"]),
        text(&v["kv_backend"]),
    )
}

fn list(v: &Value, key: &str) -> String {
    v[key].as_array().map_or(String::new(), |a| a.iter().map(text).collect::<Vec<_>>().join(", "))
}

fn show_routes(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let upstreams = r["upstreams"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| text(&u["upstream"]))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                text(&r["name"]),
                text(&r["path"]),
                list(r, "hosts"),
                list(r, "methods"),
                upstreams,
                r["plugins"]
                    .as_array()
                    .map_or(String::new(), |p| p.iter().map(text).collect::<Vec<_>>().join(" -> ")),
            ]
        })
        .collect();
    table(&["ROUTE", "PATH", "HOSTS", "METHODS", "UPSTREAM", "PLUGINS"], rows)
}

fn endpoint_row(upstream: &str, e: &Value) -> Vec<String> {
    let state = match e["override"].as_str() {
        Some(o) => format!("{o} (override)"),
        None => text(&e["state"]),
    };
    let breaker = match &e["breaker"] {
        Value::Null => "-".into(),
        b => match b["mode"].as_str() {
            Some("auto") | None => text(&b["state"]),
            Some(mode) => format!("{} ({mode})", text(&b["state"])),
        },
    };
    vec![
        upstream.to_owned(),
        text(&e["address"]),
        state,
        if e["healthy"].as_bool() == Some(true) { "yes" } else { "no" }.into(),
        breaker,
        text(&e["in_flight"]),
        text(&e["weight"]),
    ]
}

const ENDPOINT_HEADER: [&str; 7] =
    ["UPSTREAM", "ENDPOINT", "STATE", "HEALTHY", "BREAKER", "IN FLIGHT", "WEIGHT"];

fn show_upstreams(v: &Value) -> String {
    let mut rows = Vec::new();
    for u in v.as_array().into_iter().flatten() {
        for e in u["endpoints"].as_array().into_iter().flatten() {
            rows.push(endpoint_row(&text(&u["name"]), e));
        }
    }
    table(&ENDPOINT_HEADER, rows)
}

fn show_endpoint(v: &Value) -> String {
    table(&ENDPOINT_HEADER[1..], vec![endpoint_row("", v)[1..].to_vec()])
}

fn show_plugin(v: &Value) -> String {
    show_plugins(&Value::Array(vec![v.clone()]))
}

fn show_plugins(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let mut calls = 0u64;
            let mut failed = 0u64;
            let mut seconds = 0.0;
            let mut count = 0u64;
            for phase in p["calls"].as_object().into_iter().flat_map(|o| o.values()) {
                for (outcome, n) in phase["calls"].as_object().into_iter().flatten() {
                    let n = n.as_u64().unwrap_or(0);
                    calls += n;
                    if matches!(outcome.as_str(), "trap" | "timeout" | "error" | "overloaded") {
                        failed += n;
                    }
                }
                seconds += phase["seconds_sum"].as_f64().unwrap_or(0.0);
                count += phase["count"].as_u64().unwrap_or(0);
            }
            let mean = match count {
                0 => "-".into(),
                n => format!("{:.1}us", seconds / n as f64 * 1e6),
            };
            let rollout = match &p["rollout"] {
                Value::Null => "-".into(),
                r => format!("{} {}%", text(&r["state"]), text(&r["percent"])),
            };
            vec![
                text(&p["name"]),
                text(&p["sha256"]).chars().take(12).collect(),
                format!("{}/{}", text(&p["instances"]["busy"]), text(&p["instances"]["idle"])),
                calls.to_string(),
                failed.to_string(),
                mean,
                rollout,
            ]
        })
        .collect();
    table(&["PLUGIN", "SHA256", "BUSY/IDLE", "CALLS", "FAILED", "MEAN", "ROLLOUT"], rows)
}

fn show_history(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![text(&a["version"]), text(&a["applied_at"]), text(&a["sha256"]), text(&a["cause"])]
        })
        .collect();
    table(&["VERSION", "APPLIED", "SHA256", "CAUSE"], rows)
}

fn show_diff(v: &Value) -> String {
    match v["diff"].as_str() {
        Some("") | None => {
            format!("versions {} and {} are the same\n", text(&v["from"]), text(&v["to"]))
        }
        Some(d) => d.to_owned(),
    }
}

fn show_filter(v: &Value) -> String {
    format!("log filter: {}\n", text(&v["filter"]))
}

fn show_applied(v: &Value) -> String {
    match v["result"].as_str() {
        Some("unchanged") => "unchanged: the config and modules are as they were\n".into(),
        _ => format!(
            "applied config version {} (sha256 {}): {}\n",
            text(&v["version"]),
            text(&v["sha256"]),
            text(&v["cause"])
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_segments_are_encoded() {
        let t = table(&["A", "BB"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
        assert_eq!(encode("127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
