//! What an operator sees, with the real parts: the `sluice` binary's admin listener
//! scraped by a real Prometheus (Debian `prometheus`), spans decoded by a real OTLP/HTTP
//! receiver (the official protobuf definitions, PyPI `opentelemetry-proto`), and the
//! access log as written to disk, rotated, and refused by a full disk.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use crate::common::backend::{Backend, Mode};
use crate::common::proc::Proc;
use crate::common::services::{dead_port, free_port, python};
use crate::common::*;

fn write_config(dir: &tempfile::TempDir, upstream: SocketAddr, rest: &str) -> std::path::PathBuf {
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config_text(upstream, rest)).unwrap();
    path
}

/// `GET http://addr/path` on the admin listener: status and body.
async fn admin(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = get(addr, path, &[]).await;
    (r.status.as_u16(), r.text())
}

/// The value of the first sample of `series` (a line prefix, labels included) in a
/// Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series))?.rsplit(' ').next()?.parse().ok()
}

/// A real Prometheus scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; ./dev test installs it)");
        Prometheus { child, port, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs an instant PromQL query; the `data.result` array.
    async fn query(&self, promql: &str) -> serde_json::Value {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let r = get(self.addr(), &format!("/api/v1/query?query={q}"), &[]).await;
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("prometheus answered {} ({e}): {}", r.status, r.text()));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].clone()
    }

    /// Polls `promql` (up to 30 s) until `ok` accepts its result, meanwhile running
    /// `between` (to keep traffic flowing for rates).
    async fn until<F, G>(&self, promql: &str, ok: F, mut between: G) -> serde_json::Value
    where
        F: Fn(&serde_json::Value) -> bool,
        G: AsyncFnMut(),
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.query(promql).await;
            if ok(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "{promql} never matched; last: {r}");
            between().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.addr()).is_err()
            || get(self.addr(), "/-/ready", &[]).await.status != 200
        {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first result's value as a number.
fn value(result: &serde_json::Value) -> f64 {
    result[0]["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_requests_plugin_traps_and_an_open_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let failing = Backend::start("failing").await;
    failing.set(Mode::Status(503));
    let slow = Backend::start("slow").await;
    slow.set(Mode::Hang(Duration::from_secs(2)));
    let admin_port = free_port();
    let config = write_config(
        &dir,
        upstream,
        &format!(
            r#"
[admin]
listen = "127.0.0.1:{admin_port}"

[upstreams.slow]
endpoints = ["{slow}"]

[upstreams.flaky]
endpoints = ["{failing}"]
retry = {{ attempts = 1 }}
circuit_breaker = {{ failure_threshold = 3, open_timeout = "60s" }}

[plugins.faults]
module = "{faults}"

[plugins.tag]
module = "header-transform"
config = {{ response_headers = {{ "x-tag" = "1" }} }}

[[routes]]
name = "api"
prefix = "/api"
upstream = "echo"
plugins = ["tag"]

[[routes]]
name = "boom"
prefix = "/boom"
upstream = "echo"
plugins = ["faults"]

[[routes]]
name = "flaky"
prefix = "/flaky"
upstream = "flaky"

[[routes]]
name = "slow"
prefix = "/slow"
upstream = "slow"
"#,
            failing = failing.addr,
            slow = slow.addr,
            faults = plugin("sluice_test_faults"),
        ),
    );
    let mut p = Proc::start(&config);
    p.wait_for("admin listener on http://");
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    assert_eq!(admin(admin_addr, "/live").await, (200, "live\n".into()));
    assert_eq!(admin(admin_addr, "/ready").await, (200, "ready\n".into()));
    assert_eq!(admin(admin_addr, "/nope").await.0, 404);

    for _ in 0..10 {
        assert_eq!(get(p.addr, "/api/x?token=SECRET", &[]).await.status, 200);
    }
    for _ in 0..3 {
        let r = get(p.addr, "/boom", &[("x-fault", "trap")]).await;
        assert_eq!(r.status, 500);
    }
    for _ in 0..5 {
        get(p.addr, "/flaky", &[]).await;
    }
    // An invented method counts as _OTHER; a raw path never becomes a label.
    let client = client();
    let req = http::Request::builder()
        .method("BREW")
        .uri(format!("http://{}/api/pot-42", p.addr))
        .body(Default::default())
        .unwrap();
    send(&client, req).await;

    let (status, text) = admin(admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let ok = r#"http_server_requests_total{error_origin="",http_request_method="GET",http_response_status_code="200",http_route="api"}"#;
    assert_eq!(sample(&text, ok), Some(10.0), "{text}");
    assert!(text.contains(r#"http_request_method="_OTHER""#), "{text}");
    assert!(!text.contains("pot-42") && !text.contains("SECRET"), "raw paths leak: {text}");
    let trap =
        r#"sluice_plugin_calls_total{outcome="trap",phase="request",plugin="faults",status=""}"#;
    assert_eq!(sample(&text, trap), Some(3.0), "{text}");
    let open = format!(
        r#"sluice_upstream_breaker_state{{endpoint="{}",state="open",upstream="flaky"}}"#,
        failing.addr
    );
    assert_eq!(sample(&text, &open), Some(1.0), "{text}");
    for series in [
        "http_server_request_duration_seconds_bucket",
        "http_server_request_body_size_bytes_bucket",
        "http_server_response_body_size_bytes_bucket",
        "http_server_active_requests",
        "sluice_connections_active",
        "sluice_upstream_attempts_total",
        "sluice_upstream_attempt_duration_seconds_bucket",
        "sluice_upstream_endpoint_healthy",
        "sluice_upstream_breaker_transitions_total",
        "sluice_plugin_call_duration_seconds_bucket",
        "sluice_plugin_instances_idle",
        "sluice_module_loads_total",
        "sluice_config_version 1",
        "sluice_build_info{",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }

    // A real Prometheus scrapes it; the operator's questions, as PromQL.
    let prom = Prometheus::start(admin_addr);
    prom.ready().await;
    let gw = p.addr;
    let rate = prom
        .until(
            r#"sum by (http_route) (rate(http_server_requests_total{http_route="api"}[1m]))"#,
            |r| value(r) > 0.0,
            async || {
                for _ in 0..5 {
                    get(gw, "/api/more", &[]).await;
                }
            },
        )
        .await;
    assert_eq!(rate[0]["metric"]["http_route"], "api", "{rate}");
    let traps = prom
        .until(
            r#"sum(sluice_plugin_calls_total{plugin="faults",outcome="trap"})"#,
            |r| value(r) == 3.0,
            async || {},
        )
        .await;
    assert_eq!(value(&traps), 3.0);
    prom.until(
        r#"sluice_upstream_breaker_state{upstream="flaky",state="open"} == 1"#,
        |r| r.as_array().is_some_and(|a| a.len() == 1),
        async || {},
    )
    .await;

    // The Grafana dashboard's queries all run against this Prometheus.
    let board = workspace().join("deploy/grafana/sluice.json");
    let board: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&board).unwrap()).expect("valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&board, &mut exprs);
    assert!(exprs.len() >= 6, "{exprs:?}");
    for expr in exprs {
        let q = expr.replace("$__rate_interval", "1m").replace("$route", ".*");
        prom.query(&q).await;
    }

    // Draining: /ready says 503 while an in-flight request finishes.
    let in_flight = tokio::spawn(async move { get(gw, "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = admin(admin_addr, "/ready").await;
        if status == 503 {
            assert_eq!(body, "draining\n");
            break;
        }
        assert!(Instant::now() < deadline, "/ready never said draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_flight.await.unwrap().status, 200, "the in-flight request finished");
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Lines of `path` once it has at least `n` (waits up to 10 s: the writer is a thread).
fn lines_of(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "{} has {} lines: {text}", path.display(), lines.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

const SECRETS: [(&str, &str); 4] = [
    ("authorization", "Bearer SECRET-BEARER"),
    ("cookie", "session=SECRET-COOKIE"),
    ("x-api-key", "SECRET-APIKEY"),
    ("referer", "https://app.example/page?token=SECRET-REFERER"),
];

fn access_log_config(log: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[access_log]
path = "{}"
{extra}

[plugins.no-admin]
module = "deny"
config = {{ path_prefix = "/api/admin", status = 403, body = "no\n" }}

[upstreams.dead]
endpoints = ["127.0.0.1:1"]
retry = {{ attempts = 1 }}

[[routes]]
name = "api"
prefix = "/api"
upstream = "echo"
plugins = ["no-admin"]

[[routes]]
name = "down"
prefix = "/down"
upstream = "dead"
"#,
        log.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_fields_in_both_formats_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let log = dir.path().join("access.log");
    let config = write_config(&dir, upstream, &access_log_config(&log, r#"format = "json""#));
    let p = Proc::start(&config);
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut with_secrets = SECRETS.to_vec();
    with_secrets.push(("traceparent", trace));
    with_secrets.push(("user-agent", "probe/1.0"));
    let ok = get(p.addr, "/api/items?api_key=SECRET-QUERY", &with_secrets).await;
    assert_eq!(ok.status, 200);
    let client = client();
    let post = http::Request::post(format!("http://{}/api/upload", p.addr))
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    assert_eq!(send(&client, post).await.status, 200);
    assert_eq!(get(p.addr, "/api/admin/x", &SECRETS).await.status, 403);
    assert_eq!(get(p.addr, "/down", &[]).await.status, 502);
    assert_eq!(get(p.addr, "/nowhere", &[]).await.status, 404);

    let lines = lines_of(&log, 5);
    for line in &lines {
        assert!(!line.contains("SECRET"), "a secret in the access log: {line}");
    }
    let json: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let first = &json[0];
    for field in [
        "time",
        "request_id",
        "client",
        "method",
        "path",
        "protocol",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "upstream_ms",
        "route",
        "upstream",
        "endpoint",
        "attempts",
        "answered_by",
        "error_origin",
        "body",
        "trace_id",
        "user_agent",
        "referer",
    ] {
        assert!(first.get(field).is_some(), "no {field} in {first}");
    }
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/api/items");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "api");
    assert_eq!(first["upstream"], "echo");
    assert_eq!(first["endpoint"], upstream.to_string());
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["body"], "complete");
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(first["user_agent"], "probe/1.0");
    assert_eq!(first["referer"], "https://app.example/page");
    assert_eq!(first["request_id"].as_str(), ok.header("x-request-id"));
    assert!(first["bytes_out"].as_u64().unwrap() == ok.body.len() as u64, "{first}");
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let upload = &json[1];
    assert_eq!((upload["method"].as_str(), upload["bytes_in"].as_u64()), (Some("POST"), Some(10)));
    let denied = &json[2];
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["answered_by"], "no-admin");
    assert_eq!(denied["attempts"], 0);
    let down = &json[3];
    assert_eq!(
        (down["status"].as_u64(), down["error_origin"].as_str()),
        (Some(502), Some("upstream"))
    );
    let unrouted = &json[4];
    assert_eq!(unrouted["status"], 404);
    assert!(unrouted["route"].is_null());
    drop(p);

    // Combined format, errors only.
    let log = dir.path().join("combined.log");
    let config = write_config(
        &dir,
        upstream,
        &access_log_config(&log, "format = \"combined\"\nstatuses = [\"4xx\", \"5xx\"]"),
    );
    let p = Proc::start(&config);
    assert_eq!(get(p.addr, "/api/fine", &SECRETS).await.status, 200);
    let ua = [("user-agent", "evil\"agent"), SECRETS[3]];
    assert_eq!(get(p.addr, "/api/admin/x?token=SECRET-QUERY", &ua).await.status, 403);
    assert_eq!(get(p.addr, "/down", &SECRETS).await.status, 502);
    let lines = lines_of(&log, 2);
    assert_eq!(lines.len(), 2, "only 4xx and 5xx are logged: {lines:?}");
    for line in &lines {
        assert!(!line.contains("SECRET"), "a secret in the access log: {line}");
    }
    let re = regex_lite(&lines[0]);
    assert!(re, "not a combined log line: {}", lines[0]);
    assert!(
        lines[0].contains(
            r#""GET /api/admin/x HTTP/1.1" 403 3 "https://app.example/page" "evil\"agent""#
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(" route=api ") && lines[0].contains(" answered_by=no-admin "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(" 502 ") && lines[1].contains(" error_origin=upstream "),
        "{}",
        lines[1]
    );
}

/// `127.0.0.1 - - [02/Dec/2026:21:47:15 +0000] "...` (without a regex crate).
fn regex_lite(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("127.0.0.1 - - [") else { return false };
    let Some((time, rest)) = rest.split_once("] \"") else { return false };
    time.len() == 26 && time.as_bytes()[2] == b'/' && rest.contains(" HTTP/1.1\" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_rotates_by_size_and_keeps_the_configured_files() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let log = dir.path().join("access.log");
    let config =
        write_config(&dir, upstream, &access_log_config(&log, "max_size_kib = 4\nkeep = 2"));
    let p = Proc::start(&config);
    for i in 0..150 {
        get(p.addr, &format!("/api/{i}"), &[]).await;
    }
    let rotated = dir.path().join("access.log.1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.path().join("access.log.2").exists() {
        assert!(Instant::now() < deadline, "never rotated twice");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A rotation is several renames (.1 -> .2, then the file -> .1), and the writer takes
    // lines in blocks every 100 ms: every request has been answered, so once the writer
    // has had a few of its turns, the files stand still.
    std::thread::sleep(Duration::from_millis(500));
    assert!(rotated.exists());
    assert!(!dir.path().join("access.log.3").exists(), "keep = 2");
    let size = std::fs::metadata(&rotated).unwrap().len();
    assert!((4096..4096 + 1024).contains(&size), "rotated at about 4 KiB: {size}");
    let last: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&rotated).unwrap().lines().last().unwrap())
            .unwrap();
    assert!(last["path"].as_str().unwrap().starts_with("/api/"));
}

/// The OTLP receiver: its port, and its spans arriving as JSON lines.
fn otlp_receiver(args: &[&str]) -> (Child, u16, mpsc::Receiver<serde_json::Value>) {
    let script = workspace().join("tests/py/otlp_receiver.py");
    let mut child = Command::new(python())
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with opentelemetry-proto (./dev test installs it)");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let port = first.trim().strip_prefix("listening ").expect("listening PORT").parse().unwrap();
    let (tx, spans) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    (child, port, spans)
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_real_otlp_receiver_as_one_tree_across_the_hop() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let (mut receiver, port, spans) = otlp_receiver(&[]);
    let config = write_config(
        &dir,
        upstream,
        &format!(
            r#"
[tracing]
endpoint = "http://127.0.0.1:{port}/v1/traces"
sample_ratio = 1.0
service_name = "edge"

[plugins.tag]
module = "header-transform"
config = {{ request_headers = {{ "x-tag" = "1" }}, response_headers = {{ "x-tag" = "1" }} }}

[[routes]]
name = "api"
prefix = "/api"
upstream = "echo"
plugins = ["tag"]
"#
        ),
    );
    let p = Proc::start(&config);
    let client_span = "00f067aa0ba902b7";
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = get(p.addr, "/api/orders", &[("traceparent", &format!("00-{trace}-{client_span}-01"))])
        .await;
    assert_eq!(r.status, 200);
    // The upstream continues the same trace, under the gateway's attempt span.
    let sent = r.echoed_header("traceparent").expect("traceparent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace, "01"), "{sent}");
    let attempt_span = parts[2].to_owned();
    assert_ne!(attempt_span, client_span);

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match spans.recv_timeout(left) {
            Ok(s) => got.push(s),
            Err(_) => panic!("spans so far: {got:#?}"),
        }
    }
    let by_kind = |k: &str| got.iter().filter(|s| s["kind"] == k).cloned().collect::<Vec<_>>();
    let server = by_kind("server");
    assert_eq!(server.len(), 1, "{got:#?}");
    let server = &server[0];
    assert_eq!(server["name"], "GET api");
    assert_eq!(server["trace_id"], trace);
    assert_eq!(server["parent_span_id"], client_span);
    assert_eq!(server["service"], "edge");
    assert_eq!(server["path"], "/v1/traces");
    assert_eq!(server["content_type"], "application/x-protobuf");
    let attrs = &server["attributes"];
    assert_eq!(attrs["http.request.method"], "GET");
    assert_eq!(attrs["http.route"], "api");
    assert_eq!(attrs["url.path"], "/api/orders");
    assert_eq!(attrs["http.response.status_code"], 200);
    let server_id = server["span_id"].as_str().unwrap();
    let plugins = by_kind("internal");
    assert_eq!(plugins.len(), 2, "one per phase: {got:#?}");
    for s in &plugins {
        assert_eq!(s["parent_span_id"], server_id);
        assert_eq!(s["trace_id"], trace);
        assert_eq!(s["attributes"]["sluice.plugin.name"], "tag");
        assert_eq!(s["attributes"]["sluice.plugin.outcome"], "continue");
    }
    let mut names: Vec<&str> = plugins.iter().map(|s| s["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["plugin tag request", "plugin tag response"]);
    let attempts = by_kind("client");
    assert_eq!(attempts.len(), 1, "{got:#?}");
    let a = &attempts[0];
    assert_eq!(a["span_id"], attempt_span.as_str());
    assert_eq!(a["parent_span_id"], server_id);
    assert_eq!(a["attributes"]["server.port"], upstream.port());
    assert_eq!(a["attributes"]["http.response.status_code"], 200);
    assert_eq!(a["attributes"]["sluice.upstream"], "echo");
    assert!(a["start"].as_u64() >= server["start"].as_u64());
    assert!(a["end"].as_u64() <= server["end"].as_u64());

    // Without a traceparent the gateway starts a trace, sampled, and passes it on.
    let r = get(p.addr, "/api/new", &[]).await;
    let sent = r.echoed_header("traceparent").expect("traceparent upstream");
    assert!(sent.starts_with("00-") && sent.ends_with("-01"), "{sent}");
    let _ = receiver.kill();
    let _ = receiver.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_and_a_dead_collector_fail_no_request_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let admin_port = free_port();
    let dead = dead_port();
    let collector = dead.port;
    let config = write_config(
        &dir,
        upstream,
        &format!(
            r#"
[admin]
listen = "127.0.0.1:{admin_port}"

[access_log]
path = "/dev/full"

[tracing]
endpoint = "http://127.0.0.1:{collector}/v1/traces"
timeout = "1s"

[[routes]]
name = "api"
prefix = "/"
upstream = "echo"
"#
        ),
    );
    let p = Proc::start(&config);
    let client = client();
    for i in 0..300 {
        let req = http::Request::get(format!("http://{}/x/{i}", p.addr)).body(Default::default());
        assert_eq!(send(&client, req.unwrap()).await.status, 200);
    }
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = admin(admin_addr, "/metrics").await;
        let log_errors = sample(&text, r#"sluice_access_log_dropped_total{reason="error"}"#);
        let failed = sample(&text, r#"sluice_trace_spans_total{result="failed"}"#);
        if log_errors.is_some_and(|n| n > 0.0) && failed.is_some_and(|n| n > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "not counted: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_switched_off_record_nothing_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let admin_port = free_port();
    let config = write_config(
        &dir,
        upstream,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[metrics]\nenabled = false\n\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n"
        ),
    );
    let mut p = Proc::start(&config);
    p.wait_for("admin listener on http://");
    assert_eq!(get(p.addr, "/api/x", &[]).await.status, 200);
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    assert_eq!(
        admin(admin_addr, "/metrics").await,
        (404, "metrics are off: [metrics] enabled = false\n".into())
    );
    assert_eq!(admin(admin_addr, "/ready").await.0, 200, "health answers with metrics off");
}
