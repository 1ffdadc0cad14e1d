//! Extism plugins (`kind = "extism"`): the Rust extism-pdk example in
//! plugin-sdk/extism/example, built from source, in the real gateway against the echo
//! upstream.

use crate::common::*;
use bytes::Bytes;
use http_body_util::Full;
use sha2::{Digest, Sha256};

fn config_for(module: &str, max_instances: u32, on_error: &str) -> String {
    format!(
        r#"
[plugins.gate]
module = {module:?}
kind = "extism"
max_instances = {max_instances}
on_error = "{on_error}"
config = {{ require_header = "x-api-key", path_prefix = "/v2", redact = ["password", "card"] }}

[[routes]]
prefix = "/"
upstream = "echo"
plugins = ["gate"]
"#,
    )
}

fn config(max_instances: u32, on_error: &str) -> String {
    config_for(&extism_example(), max_instances, on_error)
}

#[tokio::test]
async fn extism_example_maps_both_phases_through_json_on_one_reused_instance() {
    let gw = gateway(echo().await, &config(1, "fail")).await;
    let key = [("x-api-key", "k1")];

    // A local response: status, headers and body from the plugin's `respond`.
    let r = get(gw.addr, "/users", &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), r#"{"error":"missing x-api-key"}"#);

    // The request phase rewrote the path (keeping the query) and set a header; the
    // response phase added a header and a field to the upstream's JSON body.
    let r = get(gw.addr, "/users?id=7", &key).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echoed = r.echoed();
    assert_eq!(echoed["path"], "/v2/users");
    assert_eq!(echoed["query"], "id=7");
    assert_eq!(echoed["headers"]["x-extism-calls"], "2");
    assert_eq!(echoed["gateway"], "sluice+extism");
    assert_eq!(r.header("x-extism-upstream-status"), Some("200"));
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));

    // The request body reaches the plugin as text and its replacement goes upstream.
    let body = r#"{"user":"ada","password":"hunter2","card":"4111"}"#;
    let req = http::Request::post(format!("http://{}/login", gw.addr))
        .header("x-api-key", "k1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = send(&client(), req).await;
    let sent = br#"{"user":"ada"}"#;
    assert_eq!(r.echoed()["body_bytes"], sent.len());
    assert_eq!(r.echoed()["body_sha256"], format!("{:x}", Sha256::digest(sent)));

    // One instance served every call (max_instances = 1): Extism instances are pooled and
    // reused, never built per request.
    for n in 4..=10 {
        let r = get(gw.addr, "/", &key).await;
        assert_eq!(r.echoed_header("x-extism-calls").as_deref(), Some(n.to_string().as_str()));
    }
    assert_eq!(gw.gateway.load().plugin("gate").unwrap().idle_instances(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn extism_plugin_that_panics_fails_only_its_request_and_is_replaced() {
    let gw = gateway(echo().await, &config(1, "fail")).await;
    let key = ("x-api-key", "k1");
    assert_eq!(get(gw.addr, "/", &[key]).await.echoed_header("x-extism-calls").unwrap(), "1");
    let r = get(gw.addr, "/", &[key, ("x-extism-panic", "1")]).await;
    assert_eq!(r.status, 500, "{}", r.text());
    // The trapped instance was dropped: the next request gets a new one (its count restarts).
    let r = get(gw.addr, "/", &[key]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-extism-calls").as_deref(), Some("1"));

    // A call that never returns is stopped at the plugin's timeout (100 ms by default).
    let started = std::time::Instant::now();
    let r = get(gw.addr, "/", &[key, ("x-extism-spin", "1")]).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(get(gw.addr, "/", &[key]).await.status, 200);
    gw.shutdown().await;

    // With on_error = "continue" the request goes on without the plugin.
    let gw = gateway(echo().await, &config(1, "continue")).await;
    let r = get(gw.addr, "/plain", &[key, ("x-extism-panic", "1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echoed()["path"], "/plain");
    gw.shutdown().await;
}

#[tokio::test]
async fn extism_plugin_serves_concurrent_requests_from_a_bounded_pool() {
    let gw = gateway(echo().await, &config(3, "fail")).await;
    let client = client();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (client, addr) = (client.clone(), gw.addr);
        calls.spawn(async move {
            let req = http::Request::get(format!("http://{addr}/c/{i}"))
                .header("x-api-key", "k")
                .body(Full::default())
                .unwrap();
            send(&client, req).await
        });
    }
    let mut counts = Vec::new();
    while let Some(r) = calls.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        counts.push(r.echoed_header("x-extism-calls").unwrap().parse::<u32>().unwrap());
    }
    // At most three instances: their counts add up to the 60 calls.
    let idle = gw.gateway.load().plugin("gate").unwrap().idle_instances();
    assert!((1..=3).contains(&idle), "{idle} idle instances");
    counts.sort();
    assert!(counts.iter().filter(|&&c| c == 1).count() <= 3, "{counts:?}");
    gw.shutdown().await;
}

/// The author's loop works for Extism plugins too: `sluice plugin test` replays the
/// example's cases.toml (one with a client certificate), and the plugin's log line carries
/// the plugin name and request id.
#[test]
fn extism_example_cases_pass_under_sluice_plugin_test() {
    let dir = tempfile::tempdir().unwrap();
    let cases = workspace().join("plugin-sdk/extism/example/cases.toml");
    let text = std::fs::read_to_string(&cases).unwrap();
    let module_line = text.lines().find(|l| l.starts_with("module = ")).unwrap();
    let text = text.replace(module_line, &format!("module = {:?}", extism_example()));
    std::fs::write(dir.path().join("cases.toml"), text).unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["plugin", "test"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains(
            "call(s) on this instance; path /login plugin=sluice_extism_example \
                         route=test request_id=case-2"
        ),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extism_module_written_to_disk_is_swapped_in_and_a_broken_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("gate.wasm");
    let v1 = std::fs::read(extism_example()).unwrap();
    std::fs::write(&module, &v1).unwrap();
    let gw = gateway(echo().await, &config_for(module.to_str().unwrap(), 1, "fail")).await;
    let _watch = sluice::reload::watch(gw.reloader.clone()).unwrap();
    let key = [("x-api-key", "k1")];
    let calls = |r: Reply| r.echoed_header("x-extism-calls").unwrap();
    assert_eq!(calls(get(gw.addr, "/", &key).await), "1");
    let version = gw.reloader.current().version;

    // A broken module is refused; the running instance keeps serving.
    std::fs::write(&module, b"\0asm not really").unwrap();
    tokio::time::sleep(sluice::reload::SETTLE * 5).await;
    assert_eq!(calls(get(gw.addr, "/", &key).await), "2");
    assert_eq!(gw.reloader.current().version, version, "a broken module must not apply");

    // A new build (here: the same code plus a custom section, so other bytes) is swapped in:
    // its fresh instance starts counting from 1.
    let mut v2 = v1.clone();
    v2.extend_from_slice(&[0, 5, 4, b's', b'l', b'c', b'2']);
    std::fs::write(&module, &v2).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = get(gw.addr, "/", &key).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if calls(r) == "1" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new module never took over");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gw.reloader.current().version > version);
    gw.shutdown().await;
}
