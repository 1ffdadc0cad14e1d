//! gRPC through the gateway with a real gRPC server and client (PyPI grpcio, driven by
//! tests/py/grpc_peer.py): every call kind behind the jwt plugin, gRPC-Web, the gateway's own
//! failures as gRPC statuses, the client's deadline, the message size limit, and an
//! upstream killed mid-stream.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::common::proc::Proc;
use crate::common::services::{dead_port, free_port, python, run_python};
use crate::common::*;

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

/// The grpcio server of tests/py/grpc_peer.py; killed on drop.
struct GrpcServer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let mut child = Command::new(python())
            .arg(workspace().join("tests/py/grpc_peer.py"))
            .arg("server")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python grpc_peer.py server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("listening ").expect("listening PORT").parse().unwrap();
        GrpcServer { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peer(args: &[&str]) -> serde_json::Value {
    let out = run_python("grpc_peer.py", args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A gRPC call by curl over h2c with a hand-made message: the response's header block
/// (a trailers-only answer carries grpc-status there).
fn curl_call(addr: SocketAddr, path: &str, headers: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("message");
    std::fs::write(&message, [0, 0, 0, 0, 1, b'x']).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null", "--max-time", "10"]);
    cmd.args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg("--data-binary").arg(format!("@{}", message.display()));
    let out = cmd.arg(format!("http://{addr}{path}")).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_of_every_kind_behind_jwt_with_the_gateways_failures_as_statuses() {
    let server = GrpcServer::start();
    let admin_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let dead = dead_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"10s\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [access_log]\nformat = \"json\"\npath = \"{log}\"\n\
         [runtime]\nplugin_dir = \"{plugins}\"\n\
         [plugins.auth]\nmodule = \"jwt\"\n\
         config = {{ keys = [{{ alg = \"HS256\", secret = \"{SECRET}\" }}] }}\n\
         [upstreams.grpc]\nendpoints = [\"{grpc}\"]\nprotocol = \"h2\"\n\
         [upstreams.dead]\nendpoints = [\"127.0.0.1:{dead}\"]\nprotocol = \"h2\"\n\
         [[routes]]\nname = \"echo\"\nprefix = \"/sluice.test.Echo/\"\nupstream = \"grpc\"\nplugins = [\"auth\"]\n\
         grpc = {{ max_message_bytes = 65536 }}\n\
         [[routes]]\nname = \"slow\"\nprefix = \"/sluice.test.Echo/Slow\"\nupstream = \"grpc\"\n\
         [[routes]]\nprefix = \"/sluice.test.Echo/Forever\"\nupstream = \"grpc\"\n\
         [[routes]]\nname = \"dead\"\nprefix = \"/dead.Service/\"\nupstream = \"dead\"\n",
        plugins = plugin_dir().display(),
        log = log.display(),
        grpc = server.addr,
        dead = dead.port,
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let p = Proc::start(&path);
    let addr = p.addr.to_string();
    let token = run_python("mint_hs.py", &[SECRET, "k", r#"{"sub":"ada"}"#]);
    let token = token.trim();

    // The four call kinds, with metadata and trailers both ways, over h2c to the gateway
    // and h2c from it; no token: the jwt plugin's 401 as UNAUTHENTICATED.
    let calls = peer(&["calls", &addr, token]);
    assert_eq!(calls["unary"]["reply"], "hello", "{calls}");
    assert_eq!(calls["unary"]["code"], "OK");
    assert_eq!(calls["unary"]["trailers"]["x-served-by"], "grpc-peer");
    assert_eq!(calls["unary"]["trailers"]["x-saw-authorization"], format!("Bearer {token}"));
    assert_eq!(calls["server_streaming"], serde_json::json!(["0", "1", "2", "3", "4"]));
    assert_eq!(calls["client_streaming"], "3 60");
    assert_eq!(calls["bidi"], serde_json::json!(["ONE", "TWO", "THREE"]));
    assert_eq!(calls["bidi_many"], 1000);
    assert_eq!(calls["no_token"]["code"], "UNAUTHENTICATED");
    assert_eq!(calls["no_token"]["details"], "401 Unauthorized (plugin auth)");

    // gRPC-Web over HTTP/1.1, binary and text, translated to gRPC for the same upstream
    // (behind the same plugin): trailers come back as the last message.
    let web = peer(&["web", &addr, token]);
    let binary = &web["binary"];
    assert_eq!(binary["content_type"], "application/grpc-web+proto", "{web}");
    assert_eq!(binary["messages"], serde_json::json!(["hello"]));
    assert_eq!(binary["trailers"]["grpc-status"], "0");
    assert_eq!(binary["trailers"]["x-served-by"], "grpc-peer");
    let text = &web["text"];
    assert_eq!(text["content_type"], "application/grpc-web-text+proto", "{web}");
    assert_eq!(text["messages"], serde_json::json!(["0", "1", "2"]));
    assert_eq!(text["trailers"]["grpc-status"], "0");
    let refused = &web["no_token"];
    assert_eq!((refused["status"].as_u64(), &refused["grpc_status"]), (Some(200), &"16".into()));
    assert_eq!(refused["content_type"], "application/grpc-web+proto");

    // The gateway's own failures, as statuses: no route, an upstream that is down.
    let none = peer(&["call", &addr, "/other.Service/Method", "5", "1"]);
    assert_eq!((&none["code"], &none["details"]), (&"UNIMPLEMENTED".into(), &"no route".into()));
    let dead = peer(&["call", &addr, "/dead.Service/Method", "5", "1"]);
    assert_eq!(dead["code"], "UNAVAILABLE", "{dead}");

    // Messages up to the route's limit pass; one past it is refused before it is all read.
    let fits = peer(&["call", &addr, "Unary", "5", "65536", token]);
    assert_eq!((&fits["code"], &fits["bytes"]), (&"OK".into(), &65536.into()), "{fits}");
    let big = peer(&["call", &addr, "Unary", "5", "100000", token]);
    assert_eq!(big["code"], "RESOURCE_EXHAUSTED", "{big}");
    assert_eq!(big["details"], "message larger than the route allows");
    // While a client keeps sending 4 MB messages, another's calls are served.
    let flood = std::thread::spawn({
        let (addr, token) = (addr.clone(), token.to_owned());
        move || {
            let call = || peer(&["call", &addr, "Unary", "5", "4000000", &token])["code"].clone();
            (0..4).map(|_| call()).collect::<Vec<_>>()
        }
    });
    for _ in 0..4 {
        assert_eq!(peer(&["call", &addr, "Unary", "5", "1000", token])["code"], "OK");
    }
    assert!(flood.join().unwrap().iter().all(|c| c == "RESOURCE_EXHAUSTED"));

    // The client's deadline: the gateway answers DEADLINE_EXCEEDED itself when it passes
    // (curl sets grpc-timeout and waits far longer), and the upstream is not blamed.
    let started = std::time::Instant::now();
    let late = curl_call(p.addr, "/sluice.test.Echo/Slow", &["grpc-timeout: 300m"]);
    assert!(late.contains("grpc-status: 4\r\n"), "{late}");
    assert!(late.contains("grpc-message: deadline exceeded"), "{late}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let metrics = get(admin, "/metrics", &[]).await.text();
    assert!(
        metrics.lines().any(|l| l.starts_with("sluice_upstream_attempts_total{")
            && l.contains("outcome=\"client_fault\"")
            && l.contains("upstream=\"grpc\"")),
        "{metrics}"
    );
    assert!(!metrics.contains("outcome=\"timeout\""), "{metrics}");

    // Each call counted by the status it ended with, from trailers (OK after a stream),
    // a trailers-only head (the plugin's and the gateway's refusals) or gRPC-Web's
    // trailer message; and the status in the access log.
    let calls_with = |route: &str, code: &str| -> u64 {
        let series =
            format!("sluice_grpc_calls_total{{grpc_code=\"{code}\",http_route=\"{route}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&series));
        line.map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
    };
    assert!(calls_with("echo", "OK") >= 5, "{metrics}");
    assert!(calls_with("echo", "UNAUTHENTICATED") >= 1, "{metrics}");
    assert!(calls_with("echo", "RESOURCE_EXHAUSTED") >= 1, "{metrics}");
    assert_eq!(calls_with("slow", "DEADLINE_EXCEEDED"), 1, "{metrics}");
    assert_eq!(calls_with("dead", "UNAVAILABLE"), 1, "{metrics}");
    assert!(calls_with("", "UNIMPLEMENTED") >= 1, "{metrics}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (lines, late) = loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if let Some(late) = lines.iter().find(|l| l["route"] == "slow").cloned() {
            break (lines, late);
        }
        assert!(std::time::Instant::now() < deadline, "no line for the slow call: {lines:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!((&late["status"], &late["grpc_status"]), (&200.into(), &4.into()), "{late}");
    assert!(lines.iter().any(|l| l["route"] == "echo" && l["grpc_status"] == 0));

    // An upstream killed mid-stream: the client's stream fails, and does not hang.
    let mut reader = Command::new(python())
        .arg(workspace().join("tests/py/grpc_peer.py"))
        .args(["stream", &addr])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(reader.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "streaming");
    drop(server);
    line.clear();
    out.read_line(&mut line).unwrap();
    let ended: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(ended["got"].as_u64().unwrap() >= 3, "{ended}");
    assert_ne!(ended["code"], "OK", "{ended}");
    reader.wait().unwrap();
}
