//! `runtime.quick_start`: a large plugin found in no cache is compiled by the baseline
//! compiler (Winch) so the gateway serves within seconds; Cranelift's optimised code is
//! compiled in the background, swapped in by a reload with no failed request, and cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::proc::Proc;
use crate::common::*;

/// A config file in `dir` with an empty compiled cache there, `runtime` keys added and an
/// echo upstream.
async fn write_config(dir: &tempfile::TempDir, rest: &str, runtime: &str) -> std::path::PathBuf {
    let config = crate::cli::write_config(dir, echo().await, rest);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("[runtime]", &format!("[runtime]\n{runtime}"), 1))
        .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_plugin_serves_on_baseline_code_until_its_optimised_code_is_swapped_in() {
    // A Go plugin (~4.7 MB) takes Cranelift seconds, Winch a fraction of that.
    let module =
        crate::sdks::build("plugin-sdk/go/examples/header-transform", "go-header-transform");
    let dir = tempfile::tempdir().unwrap();
    let rest = format!(
        r#"
[plugins.ht]
module = "{module}"
config = {{ request_headers = {{ "x-lang" = "go" }} }}

[[routes]]
prefix = "/"
upstream = "echo"
plugins = ["ht"]
"#
    );
    let config = write_config(&dir, &rest, "quick_start_min_kib = 1024").await;

    let mut p = Proc::start(&config);
    p.wait_for("with the baseline compiler to serve at once");
    let summary = p.wait_for("plugin \"ht\"");
    assert!(summary.contains("compiled by the baseline compiler"), "{summary}");

    // Clients keep sending from now until after the swap; every request must succeed
    // with the plugin's header, on baseline code, during the swap, and after it.
    let (addr, stop, served) =
        (p.addr, Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, served) = (stop.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = get(addr, &format!("/c{c}/{n}"), &[]).await;
                assert_eq!(r.status, 200, "client {c} request {n}: {}", r.text());
                assert_eq!(
                    r.echoed_header("x-lang").as_deref(),
                    Some("go"),
                    "client {c} request {n}"
                );
                served.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let waited = Instant::now();
    let ready = tokio::task::block_in_place(|| {
        p.wait_for_within("optimised code for", Duration::from_secs(180))
    });
    assert!(
        ready.contains("go-header-transform.wasm") && ready.contains("swapping it in"),
        "{ready}"
    );
    let swapped = tokio::task::block_in_place(|| {
        p.wait_for("config version 2 applied (optimised plugin code ready)")
    });
    assert!(swapped.contains("1 plugins reloaded"), "{swapped}");
    let before = served.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let after = served.load(Ordering::Relaxed) - before;
    assert!(
        before >= 20 && after >= 20,
        "{before} requests before the swap ({:.1?} of baseline code), {after} after",
        waited.elapsed()
    );
    let log = p.log(Duration::from_millis(100));
    assert!(!log.contains("failed"), "{log}");
    drop(p);

    // The optimised code went to the cache: a restart uses it and never the baseline compiler.
    let mut p = Proc::start(&config);
    let summary = p.wait_for("plugin \"ht\"");
    assert!(summary.contains("loaded from cache"), "{summary}");
    assert_eq!(get(p.addr, "/x", &[]).await.echoed_header("x-lang").as_deref(), Some("go"));
    assert!(!p.log(Duration::from_millis(200)).contains("baseline compiler"));
}

#[tokio::test(flavor = "multi_thread")]
async fn quick_start_off_compiles_with_cranelift_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let rest = "[plugins.ht]\nmodule = \"header-transform\"\n\
                [[routes]]\nprefix = \"/\"\nupstream = \"echo\"\nplugins = [\"ht\"]\n";
    let config = write_config(&dir, rest, "quick_start = false\nquick_start_min_kib = 0").await;
    let mut p = Proc::start(&config);
    let summary = p.wait_for("plugin \"ht\"");
    assert!(summary.contains(") compiled in "), "{summary}");
    assert_eq!(get(p.addr, "/x", &[]).await.status, 200);
    assert!(!p.log(Duration::from_millis(200)).contains("baseline compiler"));
}

/// A request for the faults plugin, `x-fault: fault` if given.
fn request(fault: Option<&str>) -> sluice::message::RequestMsg {
    let mut req = http::Request::get("/faults");
    if let Some(fault) = fault {
        req = req.header("x-fault", fault);
    }
    let (parts, ()) = req.body(()).unwrap().into_parts();
    let meta = Arc::new(sluice::message::RequestMeta {
        id_header: http::HeaderValue::from_static("quick-start"),
        client_ip: "127.0.0.1".parse().unwrap(),
        client_header: http::HeaderValue::from_static("127.0.0.1"),
        route: Arc::from("/"),
        params: Vec::new(),
        max_body_bytes: 1 << 20,
        trace_id: 0,
        calls: None,
        client_cert: None,
    });
    sluice::message::RequestMsg {
        parts,
        body: sluice::message::Body::empty(),
        meta,
        context: Default::default(),
    }
}

/// Baseline code is held to the same limits as Cranelift's: an endless loop is stopped by
/// the epoch deadline, and a panic, a trap and a memory blow-up fail only their call. (The
/// runtime is driven directly, with no reload to swap Cranelift's code in, so every call
/// here runs Winch's code.)
#[tokio::test(flavor = "multi_thread")]
async fn baseline_code_is_stopped_and_contained_like_optimised_code() {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[runtime]\ncache = false\nmax_instances = 8\nquick_start_min_kib = 0\n\
         [plugins.faults]\nmodule = \"{}\"\ntimeout = \"200ms\"\n",
        plugin("sluice_test_faults")
    );
    let config = sluice::config::parse(&text, "test.toml", std::path::Path::new(".")).unwrap();
    let runtime = sluice::Runtime::serving(&config.runtime).unwrap();
    let spec = config.plugins["faults"].clone();
    let module = runtime.load_module(&spec.module, spec.kind).await.unwrap();
    assert_eq!(module.source, sluice::plugin::CodeSource::Baseline);
    let faults =
        sluice::plugin::NamedPlugin::load(runtime, module, spec, Duration::from_secs(5), None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));

    for (fault, want) in [
        ("loop", "did not return within 200ms"),
        ("panic", "trapped"),
        ("trap", "trapped"),
        ("oom", "trapped"),
    ] {
        let started = Instant::now();
        let (_, result) = faults.on_request(request(Some(fault))).await;
        let error = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(want), "{fault}: {error:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{fault} took {:?}", started.elapsed());
        // The next call gets a new instance and succeeds.
        let (_, ok) = faults.on_request(request(None)).await;
        assert!(ok.is_ok(), "after {fault}: {:?}", ok.err().map(|e| e.to_string()));
    }
}

/// A rollout compares its two versions' p99 latencies: neither version may start on the
/// slower baseline code (it would be rolled back for Winch, not for itself), while a plain
/// plugin in the same config does.
#[tokio::test]
async fn a_rollouts_versions_are_never_baseline_code() {
    let rest = format!(
        r#"
[plugins.stamp]
module = "{v1}"
[plugins.stamp.rollout]
module = "{v2}"
percent = 50
[plugins.tag]
module = "header-transform"
[[routes]]
prefix = "/"
upstream = "echo"
plugins = ["stamp", "tag"]
"#,
        v1 = crate::reload::stamp_module("v1").display(),
        v2 = crate::reload::stamp_module("v2").display(),
    );
    let text = config_text(echo().await, &rest).replacen(
        "[runtime]",
        "[runtime]\ncache = false\nquick_start_min_kib = 0",
        1,
    );
    let gw = sluice::start(source(text)).await.unwrap_or_else(|e| panic!("{e}"));
    let serving = gw.gateway.load();
    use sluice::plugin::CodeSource::{Baseline, Compiled};
    // `tag` started on baseline code, unless its optimised code was already swapped in.
    let tiered = gw.reloader.history().iter().any(|a| a.cause == "optimised plugin code ready");
    assert!(tiered || serving.plugin("tag").unwrap().module.source == Baseline);
    let stamp = serving.plugin("stamp").unwrap();
    assert_eq!(stamp.module.source, Compiled);
    assert_eq!(stamp.rollout().unwrap().candidate_module.source, Compiled);
    assert_eq!(get(gw.addr, "/", &[]).await.status, 200);
    gw.shutdown().await;
}
