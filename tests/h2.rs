//! HTTP/2 from the outside: curl and h2load as clients, the settings the gateway announces,
//! and hostile clients (rapid reset, CONTINUATION flood) written frame by frame
//! (tests/py/h2_attack.py) while another client is served.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::proc::Proc;
use crate::common::services::{free_port, run_python};
use crate::common::*;

fn write_config(
    dir: &std::path::Path,
    upstream: SocketAddr,
    admin: u16,
    http2: &str,
) -> std::path::PathBuf {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.http2]\n{http2}\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [upstreams.echo]\nendpoints = [\"{upstream}\"]\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n"
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `curl` with `flags`: (HTTP version, status).
fn curl(addr: SocketAddr, flags: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "--max-time", "10"])
        .args(flags)
        .arg(format!("http://{addr}/"))
        .output()
        .expect("curl");
    let text = String::from_utf8(out.stdout).unwrap();
    let (v, s) = text.split_once(' ').unwrap();
    (v.to_owned(), s.to_owned())
}

/// A series' value from the admin listener on `admin_port`.
async fn metric(admin_port: u16, series: &str) -> f64 {
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let metrics = get(admin, "/metrics", &[]).await.text();
    let line = metrics.lines().find(|l| l.starts_with(series));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("{metrics}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_clients_are_served_with_the_configured_limits() {
    let dir = tempfile::tempdir().unwrap();
    let http2 = "max_concurrent_streams = 32\nmax_header_list_bytes = 8192\n\
                 stream_window_bytes = 262144\nconnection_window_bytes = 1048576\n";
    let p = Proc::start(&write_config(dir.path(), echo().await, free_port(), http2));
    assert_eq!(curl(p.addr, &["--http2-prior-knowledge"]), ("2".into(), "200".into()));
    // h2c by Upgrade is not offered: curl stays on HTTP/1.1.
    assert_eq!(curl(p.addr, &["--http2"]), ("1.1".into(), "200".into()));

    let announced: serde_json::Value =
        serde_json::from_str(&run_python("h2_attack.py", &["settings", &p.addr.to_string()]))
            .unwrap();
    assert_eq!(announced["max_concurrent_streams"], 32);
    assert_eq!(announced["max_header_list_size"], 8192);
    assert_eq!(announced["initial_window_size"], 262144);
    assert_eq!(announced["connection_window"], 1048576);

    // Load: 4 connections, each with as many streams in flight as the gateway allows.
    let out = Command::new("h2load")
        .args(["-n", "4000", "-c", "4", "-m", "32", &format!("http://{}/", p.addr)])
        .output()
        .expect("h2load (Debian nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4000 succeeded, 0 failed"), "{text}");
    assert!(text.contains("status codes: 4000 2xx"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_and_continuation_floods_close_the_attacker_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let config = write_config(
        dir.path(),
        echo().await,
        admin_port,
        "max_client_resets = 20\nmax_header_list_bytes = 16384\n",
    );
    let mut p = Proc::start(&config);
    let addr = p.addr.to_string();

    // Another client, asking all along; every answer must come, and quickly.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let others = tokio::spawn({
        let (stop, gw) = (stop.clone(), p.addr);
        async move {
            let mut slowest = Duration::ZERO;
            let mut served = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                assert_eq!(get(gw, "/", &[]).await.status, 200);
                slowest = slowest.max(started.elapsed());
                served += 1;
            }
            (served, slowest)
        }
    });
    let flood = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&run_python("h2_attack.py", args)).unwrap()
    };

    // HEADERS and RST_STREAM back to back: h2 refuses them before the gateway sees them.
    let rapid = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || flood(&["rapid_reset", &addr, "100000"])
    });
    // Each stream reset 20 ms in, while its request is upstream: the gateway counts them.
    let slow = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || flood(&["slow_reset", &addr, "1000", "/delay/2000"])
    });
    // One header block that never ends.
    let continuation = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || flood(&["continuation", &addr, "20000"])
    });
    let (rapid, slow, continuation) =
        (rapid.await.unwrap(), slow.await.unwrap(), continuation.await.unwrap());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, slowest) = others.await.unwrap();

    assert_eq!(rapid["closed"], true, "{rapid}");
    assert!(rapid["streams"].as_u64().unwrap() < 100_000, "{rapid}");
    assert_eq!(slow["closed"], true, "{slow}");
    let reset = slow["streams"].as_u64().unwrap();
    assert!((20..=60).contains(&reset), "closed after {reset} reset streams: {slow}");
    assert_eq!(continuation["closed"], true, "{continuation}");
    assert!(continuation["frames"].as_u64().unwrap() < 20_000, "{continuation}");
    assert!(served > 20, "{served} requests served meanwhile");
    assert!(slowest < Duration::from_secs(2), "the slowest took {slowest:?}");

    let floods = metric(admin_port, "sluice_http2_floods_total ").await;
    assert!(floods >= 2.0, "{floods}");
    p.wait_for("closed an HTTP/2 connection: it reset more streams than it let finish");
}

/// A gateway whose upstream is another gateway spoken to over h2c: the inner one allows 4
/// streams per connection, so 16 requests at once need 4 connections, not one queue.
#[tokio::test(flavor = "multi_thread")]
async fn h2_upstreams_get_more_connections_at_the_peers_stream_limit() {
    let dir = tempfile::tempdir().unwrap();
    let inner_admin = free_port();
    let inner_dir = dir.path().join("inner");
    std::fs::create_dir(&inner_dir).unwrap();
    let inner = Proc::start(&write_config(
        &inner_dir,
        echo().await,
        inner_admin,
        "max_concurrent_streams = 4",
    ));
    let outer_text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.inner]\nendpoints = [\"{}\"]\nprotocol = \"h2\"\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"inner\"\n",
        inner.addr
    );
    let outer_config = dir.path().join("outer.toml");
    std::fs::write(&outer_config, outer_text).unwrap();
    let outer = Proc::start(&outer_config);

    // The client's Host reaches the inner gateway as :authority, and from there the echo
    // upstream; TE: trailers (gRPC's) survives the hop.
    let reply = get(outer.addr, "/", &[("host", "api.example"), ("te", "trailers")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.echoed_header("host").as_deref(), Some("api.example"));
    assert_eq!(reply.echoed_header("te").as_deref(), Some("trailers"));

    let started = Instant::now();
    let calls: Vec<_> = (0..16)
        .map(|_| tokio::spawn(async move { get(outer.addr, "/delay/500", &[]).await }))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().status, 200);
    }
    // One connection queueing at 4 streams would take 4 rounds: 2 s.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "16 requests took {took:?}");

    let open = metric(inner_admin, "sluice_connections_active ").await;
    // 16 at 4 a connection, plus the first request's (at most 4 streams' worth spare).
    assert!((4.0..=5.0).contains(&open), "{open} connections to the inner gateway");
}
