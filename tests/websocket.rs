//! WebSocket proxying from the outside: the real binary between a real WebSocket server and
//! real clients (PyPI `websockets`, tests/py/websocket_peer.py).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::proc::Proc;
use crate::common::services::{free_port, python, run_python};
use crate::common::*;

const KEY: &str = "k-socket-1";

fn peer() -> Command {
    let mut c = Command::new(python());
    c.arg(workspace().join("tests/py/websocket_peer.py"));
    c
}

/// The WebSocket upstream, killed on drop.
struct Upstream(Child, u16);

impl Upstream {
    fn start() -> Upstream {
        let mut child = peer().arg("serve").stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().expect("the upstream's port");
        Upstream(child, port)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one client mode to the end; its stdout.
fn client(args: &[&str]) -> String {
    let out = peer().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A client mode that talks while it runs: its stdin and its lines.
fn start_client(args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = peer().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn line(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim().to_owned()
}

fn sha256_hex(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Routes: `/ws` behind api-key with least-connections balancing; `/idle` closing sockets
/// after 1 s of silence; `/plain` with WebSockets switched off.
fn write_config(dir: &Path, upstream: u16, admin: u16) -> std::path::PathBuf {
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
shutdown_timeout = "2s"
[admin]
listen = "127.0.0.1:{admin}"
[runtime]
plugin_dir = "{plugins}"
[upstreams.sockets]
endpoints = ["127.0.0.1:{upstream}"]
strategy = "least_connections"
[plugins.keys]
module = "api-key"
[plugins.keys.config]
keys = {{ "sha256:{hash}" = "socket-app" }}
consumer_header = "x-consumer"
[[routes]]
name = "idle"
prefix = "/idle"
replace_prefix = "/ws/echo"
upstream = "sockets"
websocket = {{ idle_timeout = "1s" }}
[[routes]]
name = "plain"
prefix = "/plain"
upstream = "sockets"
websocket = {{ enabled = false }}
[[routes]]
name = "ws"
prefix = "/ws"
upstream = "sockets"
plugins = ["keys"]
websocket = {{ max_frame_bytes = 65536 }}
"#,
        plugins = plugin_dir().display(),
        hash = sha256_hex(KEY),
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series))?.rsplit(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_echo_behind_auth_many_at_once_within_their_limits() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let p = Proc::start(&write_config(dir.path(), upstream.1, admin_port));
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let base = format!("ws://{}", p.addr);

    // Echo through the gateway; the plugin ran on the upgrade request.
    let echoed: serde_json::Value =
        serde_json::from_str(&client(&["echo", &format!("{base}/ws/headers"), KEY])).unwrap();
    assert_eq!(echoed["text"], "hello");
    assert_eq!(echoed["binary_ok"], true, "102400 bytes, binary");
    let seen = &echoed["headers"];
    assert_eq!(seen["x-consumer"], "socket-app", "the api-key plugin's header");
    assert!(seen.get("x-api-key").is_none(), "the key stays at the gateway");
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");

    // Refused before the upgrade: no key, a wrong key.
    assert_eq!(client(&["status", &format!("{base}/ws/echo")]), "401");
    // WebSockets off on the route: the upstream sees a plain GET and says so.
    assert_eq!(client(&["status", &format!("{base}/plain/ws/echo")]), "426");

    // An upstream that closes: its close code reaches the client.
    assert!(client(&["closed", &format!("{base}/ws/close"), KEY]).starts_with("4000 "));

    // Silence past the route's idle_timeout: closed by the gateway with 1001.
    let idle = client(&["closed", &format!("{base}/idle"), KEY]);
    let (code, took) = idle.split_once(' ').unwrap();
    assert_eq!(code, "1001", "{idle}");
    let took: f64 = took.parse().unwrap();
    assert!((0.9..3.0).contains(&took), "closed after {took} s");

    // A frame over max_frame_bytes closes that socket (1009); another one carries on.
    let too_big = client(&["too_big", &format!("{base}/ws/echo"), KEY, "70000"]);
    assert_eq!(too_big, "1009 other-ok");
    assert_eq!(client(&["too_big", &format!("{base}/ws/echo"), KEY, "65536"]), "message other-ok");

    // 200 at once. They count as open sockets and as load on the endpoint.
    let (mut many, mut out) = start_client(&["many", &format!("{base}/ws/echo"), KEY, "200"]);
    assert_eq!(line(&mut out), "open 200");
    let metrics = get(admin, "/metrics", &[]).await.text();
    assert_eq!(metric(&metrics, "sluice_websockets_active{http_route=\"ws\"}"), Some(200.0));
    let in_flight = metric(&metrics, "sluice_upstream_endpoint_in_flight{");
    assert_eq!(in_flight, Some(200.0), "least-connections sees the sockets");
    many.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(line(&mut out), "echoed 200");
    assert_eq!(line(&mut out), "closed");
    assert!(many.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = get(admin, "/metrics", &[]).await.text();
        let open = metric(&metrics, "sluice_websockets_active{http_route=\"ws\"}");
        let in_flight = metric(&metrics, "sluice_upstream_endpoint_in_flight{");
        if open == Some(0.0) && in_flight == Some(0.0) {
            let closes = metric(
                &metrics,
                "sluice_websocket_closes_total{http_route=\"ws\",reason=\"frame_too_large\"}",
            );
            assert_eq!(closes, Some(1.0));
            break;
        }
        assert!(Instant::now() < deadline, "still open: {open:?}, in flight: {in_flight:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// RFC 8441: `websocket_h2.py`, PyPI `h2` with frames written by hand, opens sockets as
/// extended CONNECT streams; `h2` runs it to the end and reads its JSON line.
fn h2(args: &[&str]) -> serde_json::Value {
    let out = run_python("websocket_h2.py", args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_over_http2_share_a_connection_behind_auth_within_their_limits() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let config = write_config(dir.path(), upstream.1, admin_port);
    // A connection quiet for 1 s is closed, unless a socket on it is open.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("shutdown_timeout", "idle_timeout = \"1s\"\nshutdown_timeout"),
    )
    .unwrap();
    let p = Proc::start(&config);
    let addr = p.addr.to_string();

    assert_eq!(h2(&["settings", &addr])["enable_connect_protocol"], 1);
    // Five sockets on one connection, behind the api-key plugin, messages interleaved.
    let echo = h2(&["echo", &addr, "/ws/headers", KEY, "5"]);
    assert_eq!(echo["statuses"], serde_json::json!([200, 200, 200, 200, 200]), "{echo}");
    assert_eq!(echo["echoed"], 15, "{echo}");
    assert_eq!(echo["close_codes"], serde_json::json!([1000, 1000, 1000, 1000, 1000]));
    // The upstream got the HTTP/1.1 handshake, with a key the gateway made and checked.
    let seen = &echo["headers"];
    assert_eq!(seen["upgrade"], "websocket", "{seen}");
    assert_eq!(seen["sec-websocket-version"], "13");
    assert_eq!(seen["sec-websocket-key"].as_str().map(str::len), Some(24), "{seen}");
    assert_eq!(seen["x-consumer"], "socket-app", "the plugin ran on the CONNECT");
    assert!(seen.get("x-api-key").is_none());

    // Refused before any tunnel: no key (the plugin), WebSockets off on the route.
    assert_eq!(h2(&["status", &addr, "/ws/echo"])["status"], 401);
    assert_eq!(h2(&["status", &addr, "/plain/ws/echo", KEY])["status"], 400);
    // A socket outlives the connection's idle timeout; the route's own idle timeout
    // still closes a quiet one (1001).
    let quiet = h2(&["quiet", &addr, "/ws/echo", KEY, "2.5"]);
    assert_eq!(quiet["echo"], "still there?", "{quiet}");
    let idle = h2(&["quiet", &addr, "/idle", KEY, "2.5"]);
    assert_eq!(idle["close_code"], 1001, "{idle}");
    // A frame over max_frame_bytes closes its socket (1009), not its connection.
    let big = h2(&["too_big", &addr, "/ws/echo", KEY, "1000000"]);
    assert_eq!((&big["close_code"], &big["other"]), (&1009.into(), &"unaffected".into()), "{big}");

    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = get(admin, "/metrics", &[]).await.text();
        let open = metric(&metrics, "sluice_websockets_active{http_route=\"ws\"}");
        if open == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "still open: {open:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn open_websockets_get_the_shutdown_timeout_then_1001() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(&write_config(dir.path(), upstream.1, free_port()));
    let (mut held, mut out) = start_client(&["hold", &format!("ws://{}/ws/echo", p.addr), KEY]);
    assert_eq!(line(&mut out), "open");
    assert_eq!(line(&mut out), "echo");
    let stopped = Instant::now();
    p.signal(libc::SIGTERM);
    // The socket keeps working through the drain (shutdown_timeout = 2s), then is closed.
    let mut echoes = 0;
    let last = loop {
        let l = line(&mut out);
        if l != "echo" {
            break l;
        }
        echoes += 1;
    };
    let drained = stopped.elapsed();
    assert_eq!(last, "closed 1001");
    assert!(echoes >= 8, "{echoes} echoes during the drain");
    assert!(drained >= Duration::from_millis(1800), "closed after {drained:?}");
    assert!(held.wait().unwrap().success());
    let status = p.child.wait().unwrap();
    assert!(status.success(), "{status}");
    p.wait_for("closing 1 WebSocket connection(s) still open");
}
