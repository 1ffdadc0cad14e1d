//! The end-to-end harness: plugins built from source, a real echo upstream, and the real
//! gateway, all on 127.0.0.1 port 0.
#![allow(dead_code)] // each test binary uses its own subset

pub mod backend;
pub mod proc;
pub mod recorder;
pub mod services;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use sluice::Running;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_owned()
}

/// `target/` of this build: the test binary is `target/release/deps/NAME-HASH`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors().nth(3).expect("target/PROFILE/deps/EXE").to_owned()
}

/// The real `sluice` binary of this build.
pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// The folder of compiled plugins, after building every plugin in the workspace from source
/// (once per test binary; a no-op when they are up to date).
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = target_dir();
        let status = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args(["build", "--profile", "guest", "--quiet", "--target", "wasm32-wasip2"])
            .arg("--workspace")
            .args(NOT_GUESTS.iter().flat_map(|p| ["--exclude", p]))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo to build the plugins");
        assert!(status.success(), "building the plugins failed");
        target.join("wasm32-wasip2/guest")
    })
}

/// The workspace members that are not guests (as in ./dev): the host side and the Extism
/// example, a core module. Every other member is a plugin, test plugin or example.
pub const NOT_GUESTS: &[&str] =
    &["sluice", "sluice-bindings", "sluice-benches", "sluice-extism-example"];

/// The Extism example (plugin-sdk/extism/example), built from source for
/// wasm32-unknown-unknown (a core module, as Extism PDKs build them).
pub fn extism_example() -> String {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let target = target_dir();
        let status = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args(["build", "--profile", "guest", "--quiet", "--target", "wasm32-unknown-unknown"])
            .args(["-p", "sluice-extism-example", "--target-dir"])
            .arg(&target)
            .status()
            .expect("run cargo to build the Extism example");
        assert!(status.success(), "building the Extism example failed");
        target.join("wasm32-unknown-unknown/guest/sluice_extism_example.wasm")
    });
    path.display().to_string()
}

pub fn plugin(file_stem: &str) -> String {
    let path = plugin_dir().join(format!("{file_stem}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path.display().to_string()
}

/// Shows the gateway's logs in test output when `RUST_LOG` is set (e.g.
/// `RUST_LOG=sluice=debug cargo test ...`).
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Starts the echo upstream on a free port.
pub async fn echo() -> SocketAddr {
    logs();
    sluice::echo::spawn("127.0.0.1:0".parse().unwrap()).await.expect("echo upstream")
}

/// A config with the common sections filled in: listen on port 0, the compiled plugins'
/// folder, and an `echo` upstream at `upstream`. `rest` adds plugins and routes.
pub fn config_text(upstream: SocketAddr, rest: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
request_timeout = "5s"
shutdown_timeout = "5s"

[runtime]
plugin_dir = "{dir}"
max_instances = 64

[upstreams.echo]
endpoints = ["{upstream}"]
{rest}
"#,
        dir = plugin_dir().display()
    )
}

/// In-memory config text, as the gateway's source.
pub fn source(text: String) -> sluice::ConfigSource {
    sluice::ConfigSource::Text { text, name: "test.toml".into(), base_dir: PathBuf::from(".") }
}

/// Starts the gateway in-process from `config_text(upstream, rest)`.
pub async fn gateway(upstream: SocketAddr, rest: &str) -> Running {
    sluice::start(source(config_text(upstream, rest))).await.unwrap_or_else(|e| panic!("{e}"))
}

pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The echo upstream's JSON description of the request it received.
    pub fn echoed(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo reply ({e}): {}", self.text()))
    }

    pub fn echoed_header(&self, name: &str) -> Option<String> {
        self.echoed()["headers"][name].as_str().map(str::to_owned)
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(client: &HttpClient, req: http::Request<Full<Bytes>>) -> Reply {
    let resp = client.request(req).await.expect("the gateway answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// `GET addr/path` with extra headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(Full::default()).unwrap()).await
}

/// Reads a request head from a raw upstream socket: up to and including its blank line
/// (and whatever came with it); `None` if the peer closed or failed first.
pub async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}
