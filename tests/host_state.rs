//! The host's key-value store and plugin metrics, through real plugins: one namespace per
//! named plugin, increments shared by every instance and worker thread, state kept across
//! reloads; and per-request context from a plugin's request phase to its response phase.

use crate::common::*;

fn config(extra_route: &str) -> String {
    format!(
        r#"
[plugins.counter-a]
module = "{faults}"
[plugins.counter-b]
module = "{faults}"

[[routes]]
prefix = "/a"
upstream = "echo"
plugins = ["counter-a"]

[[routes]]
prefix = "/b"
upstream = "echo"
plugins = ["counter-b"]
{extra_route}
"#,
        faults = plugin("sluice_test_faults")
    )
}

async fn count(addr: std::net::SocketAddr, path: &str) -> i64 {
    let r = get(addr, path, &[("x-kv-incr", "hits")]).await;
    assert_eq!(r.status, 200);
    r.echoed_header("x-kv-count").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_shared_by_instances_and_threads_and_private_to_each_plugin() {
    let upstream = echo().await;
    let gw = sluice::start(source(config_text(upstream, &config(""))))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // 64 concurrent increments, spread over instances and both worker threads: every
    // count from 1 to 64 is handed out exactly once.
    let calls: Vec<_> = (0..64).map(|_| tokio::spawn(count(gw.addr, "/a"))).collect();
    let mut counts = Vec::new();
    for c in calls {
        counts.push(c.await.unwrap());
    }
    counts.sort();
    assert_eq!(counts, (1..=64).collect::<Vec<_>>());
    let instances = gw.gateway.load().plugin("counter-a").unwrap().idle_instances();
    println!("64 concurrent increments over {instances} instances");

    // The same key in another named plugin is another key.
    assert_eq!(count(gw.addr, "/b").await, 1);

    // A reload keeps the store.
    let text = config_text(upstream, &config("[[routes]]\nprefix = \"/c\"\nupstream = \"echo\"\n"));
    gw.reloader.apply(&text, "test").await.unwrap();
    assert_eq!(count(gw.addr, "/a").await, 65);

    let metrics = &gw.reloader.runtime().capabilities.metrics;
    assert_eq!(metrics.counter("counter-a", "kv_increments"), Some(65.0));
    assert_eq!(metrics.counter("counter-b", "kv_increments"), Some(1.0));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_plugin_keeps_request_context_from_its_request_phase_to_its_response_phase() {
    let gw = gateway(echo().await, &config("")).await;
    let r = get(gw.addr, "/a", &[("x-context-set", "decided in on-request")]).await;
    assert_eq!(r.header("x-context"), Some("decided in on-request"));
    assert_eq!(r.echoed_header("x-context"), None, "context is never sent upstream");
    let r = get(gw.addr, "/a", &[]).await;
    assert_eq!(r.header("x-context"), None, "context lives for one request");
    gw.shutdown().await;
}
