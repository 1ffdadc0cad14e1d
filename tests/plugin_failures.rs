//! A misbehaving plugin fails only its own request, by its fail policy, and the gateway
//! keeps serving.

use crate::common::*;

fn faults_config(policy: &str, timeout: &str) -> String {
    format!(
        r#"
[plugins.faults]
module = "{}"
on_error = "{policy}"
timeout = "{timeout}"

[plugins.tag]
module = "header-transform"
config = {{ response_headers = {{ "x-served-by" = "sluice" }} }}

[[routes]]
prefix = "/"
upstream = "echo"
plugins = ["tag", "faults"]
"#,
        plugin("sluice_test_faults")
    )
}

#[tokio::test]
async fn every_kind_of_plugin_failure_becomes_a_500_for_that_request_only() {
    let gw = gateway(echo().await, &faults_config("fail", "200ms")).await;
    for (header, fault) in [
        ("x-fault", "panic"),
        ("x-fault", "trap"),
        ("x-fault", "loop"),
        ("x-fault", "oom"),
        ("x-fault", "bad-status"),
        ("x-fault-response", "panic"),
    ] {
        let r = get(gw.addr, "/", &[(header, fault)]).await;
        assert_eq!(r.status, 500, "{header}: {fault}");
        assert_eq!(r.text(), "plugin failed\n", "{header}: {fault}");
        assert!(r.header("x-request-id").is_some());
        // The next request, without the fault, is served normally.
        let ok = get(gw.addr, "/", &[]).await;
        assert_eq!(ok.status, 200, "after {header}: {fault}");
        assert_eq!(ok.header("x-served-by"), Some("sluice"));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_failed_instance_is_discarded_not_reused() {
    let gw = gateway(echo().await, &faults_config("fail", "200ms")).await;
    let calls = |r: Reply| r.echoed_header("x-instance-calls").unwrap();
    assert_eq!(calls(get(gw.addr, "/", &[]).await), "1");
    assert_eq!(calls(get(gw.addr, "/", &[]).await), "2");
    assert_eq!(get(gw.addr, "/", &[("x-fault", "panic")]).await.status, 500);
    // A new instance took over: its count starts again.
    assert_eq!(calls(get(gw.addr, "/", &[]).await), "1");
    gw.shutdown().await;
}

#[tokio::test]
async fn fail_open_skips_the_failing_plugin_and_serves_the_request() {
    let gw = gateway(echo().await, &faults_config("continue", "200ms")).await;
    for fault in ["panic", "loop", "bad-status"] {
        let r = get(gw.addr, "/", &[("x-fault", fault)]).await;
        assert_eq!(r.status, 200, "{fault}");
        assert_eq!(r.header("x-served-by"), Some("sluice"), "{fault}");
        assert_eq!(r.echoed()["path"], "/", "{fault}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_runaway_plugin_does_not_hold_up_other_requests() {
    // A single-threaded runtime (tokio::test's default): if the spinning call did not yield,
    // nothing else could run until its 2 s deadline.
    let gw = gateway(echo().await, &faults_config("fail", "2s")).await;
    let looping = tokio::spawn(get(gw.addr, "/", &[("x-fault", "loop")]));
    // While one request spins inside the plugin, others are served promptly: the spinning
    // call yields to the scheduler at every epoch tick.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(get(gw.addr, "/", &[]).await.status, 200);
    }
    let quick = started.elapsed();
    assert_eq!(looping.await.unwrap().status, 500);
    assert!(quick < std::time::Duration::from_secs(1), "healthy requests waited {quick:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_pools_grow_with_concurrent_calls_and_shrink_when_idle() {
    let gw = gateway(
        echo().await,
        &format!(
            "[plugins.faults]\nmodule = \"{}\"\nidle_timeout = \"300ms\"\ntimeout = \"1s\"\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"echo\"\nplugins = [\"faults\"]\n",
            plugin("sluice_test_faults")
        ),
    )
    .await;
    let idle = || gw.gateway.load().plugin("faults").unwrap().idle_instances();
    assert_eq!(idle(), 1, "one warm instance after load");
    // Eight calls that each hold an instance for 30 ms of CPU at once.
    let busy: Vec<_> =
        (0..8).map(|_| tokio::spawn(get(gw.addr, "/", &[("x-fault", "busy")]))).collect();
    for b in busy {
        assert_eq!(b.await.unwrap().status, 200);
    }
    let grown = idle();
    assert!(grown > 1, "concurrent calls should have needed more instances, idle = {grown}");
    // Quiet for longer than idle_timeout: the next check-in trims back to one warm instance.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(get(gw.addr, "/", &[]).await.status, 200);
    assert_eq!(idle(), 1, "idle instances were not trimmed (had {grown})");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_still_fire_after_the_epoch_ticker_has_parked() {
    let gw = gateway(echo().await, &faults_config("fail", "100ms")).await;
    // No plugin call for well over the ticker's park delay (100 ticks of 1 ms).
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let started = std::time::Instant::now();
    let looping = get(gw.addr, "/", &[("x-fault", "loop")]);
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), looping)
        .await
        .expect("the looping call was never interrupted: the ticker did not wake");
    assert_eq!(r.status, 500);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    gw.shutdown().await;
}

/// `timeout` is the plugin's own running time. Calls that wait for the CPU behind other
/// calls are not charged for the wait: twelve concurrent calls of about 20 ms of work each
/// on one thread take far longer than the 100 ms budget in wall time, and all succeed.
#[tokio::test]
async fn waiting_for_the_cpu_does_not_count_against_the_timeout() {
    let gw = gateway(echo().await, &faults_config("fail", "100ms")).await;
    let started = std::time::Instant::now();
    let calls: Vec<_> =
        (0..12).map(|_| tokio::spawn(get(gw.addr, "/", &[("x-fault", "work")]))).collect();
    for c in calls {
        assert_eq!(c.await.unwrap().status, 200);
    }
    let took = started.elapsed();
    println!("12 concurrent calls of fixed work took {took:?}");
    assert!(took > std::time::Duration::from_millis(150), "no contention to prove: {took:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn plugins_cannot_set_headers_the_gateway_owns() {
    // The host, not the plugin, decides framing and hop-by-hop headers: a plugin's
    // set-header, append-header or remove-header of one is refused whatever the plugin's
    // own checks, and nothing reaches the upstream. (`host` is the plugin's to rewrite:
    // routing has already happened.)
    let gw = gateway(echo().await, &faults_config("fail", "200ms")).await;
    for op in ["x-set-header", "x-append-header"] {
        for (spec, result) in [
            ("transfer-encoding=chunked", "Forbidden"),
            ("Content-Length=0", "Forbidden"),
            ("connection=x-secret", "Forbidden"),
            ("Upgrade=websocket", "Forbidden"),
            ("bad name=1", "InvalidName"),
            ("x-fine=yes", "ok"),
        ] {
            let r = get(gw.addr, "/", &[(op, spec)]).await;
            assert_eq!(r.status, 200, "{op} {spec}");
            let h = &r.echoed()["headers"];
            assert!(h["x-set-result"].as_str().unwrap().contains(result), "{op} {spec}: {h}");
            for owned in ["transfer-encoding", "content-length", "connection", "upgrade"] {
                assert!(h.get(owned).is_none(), "{op} {spec}: {h}");
            }
            let fine = h.get("x-fine").and_then(|v| v.as_str());
            assert_eq!(fine, (result == "ok").then_some("yes"), "{op} {spec}: {h}");
        }
    }
    for (name, result) in [
        ("transfer-encoding", "Forbidden"),
        ("content-length", "Forbidden"),
        ("Connection", "Forbidden"),
        ("bad name", "InvalidName"),
        ("x-drop", "ok"),
    ] {
        let r = get(gw.addr, "/", &[("x-remove-header", name), ("x-drop", "1")]).await;
        assert_eq!(r.status, 200, "{name}");
        let h = &r.echoed()["headers"];
        assert!(h["x-set-result"].as_str().unwrap().contains(result), "{name}: {h}");
        assert_eq!(h.get("x-drop").is_none(), name == "x-drop", "{name}: {h}");
    }
    gw.shutdown().await;
}

/// `edit-headers` (world 0.2.2) makes a batch whole or not at all, refusing what the single
/// calls refuse; `headers` reads several in one call; `kv.incr-and-get` counts one key and
/// reads another. A plugin that appends headers without end traps at the map's limit
/// (32,768 fields, where `http` would panic) and fails its request only, as does a batch of
/// more than 128.
#[tokio::test]
async fn header_batches_are_all_or_nothing_and_refuse_what_the_gateway_owns() {
    let gw = gateway(echo().await, &faults_config("fail", "2s")).await;
    for (edits, result, applied) in [
        ("set:x-a=1;append:x-b=2;remove:x-gone", "ok", true),
        (
            "set:x-a=1;set:Transfer-Encoding=chunked;append:x-b=2",
            "index: 1, error: FieldError::Forbidden",
            false,
        ),
        ("remove:connection;set:x-a=1", "index: 0, error: FieldError::Forbidden", false),
        (
            "set:x-a=1;append:x-b=2;remove:bad name",
            "index: 2, error: FieldError::InvalidName",
            false,
        ),
        (
            "set:x-a=1;append:x-b=2;set:content-length=0",
            "index: 2, error: FieldError::Forbidden",
            false,
        ),
    ] {
        let r = get(gw.addr, "/", &[("x-edit-headers", edits), ("x-gone", "here")]).await;
        assert_eq!(r.status, 200, "{edits}");
        let h = &r.echoed()["headers"];
        assert!(h["x-edit-result"].as_str().unwrap().contains(result), "{edits}: {h}");
        let value = |name: &str| h.get(name).and_then(|v| v.as_str());
        assert_eq!(value("x-a"), applied.then_some("1"), "{edits}: {h}");
        assert_eq!(value("x-b"), applied.then_some("2"), "{edits}: {h}");
        assert_eq!(value("x-gone"), (!applied).then_some("here"), "{edits}: {h}");
        for owned in ["transfer-encoding", "content-length", "connection"] {
            assert!(h.get(owned).is_none(), "{edits}: {h}");
        }
    }
    let r = get(
        gw.addr,
        "/",
        &[("x-headers", "x-one,x-missing,X-TWO"), ("x-one", "1"), ("x-two", "2")],
    )
    .await;
    assert_eq!(r.echoed()["headers"]["x-headers-result"], "1|-|2");
    // A batch is bounded (a host call is not interrupted): 129 names trap the plugin.
    let r = get(gw.addr, "/", &[("x-headers", &vec!["x-one"; 129].join(","))]).await;
    assert_eq!(r.status, 500, "{}", r.text());

    let incr_get = |keys: &'static str| async move {
        let r = get(gw.addr, "/", &[("x-kv-incr-get", keys)]).await;
        r.echoed()["headers"]["x-kv-incr-get"].as_str().unwrap().to_owned()
    };
    assert_eq!(incr_get("now,last").await, "1,none");
    assert_eq!(incr_get("last,now").await, "1,1");
    assert_eq!(incr_get("now,last").await, "2,1");
    // Both keys are held to the 1 KiB key limit, and a refused call counts nothing.
    let long: &'static str = "k".repeat(1025).leak();
    let refused: &'static str = format!("now,{long}").leak();
    assert_eq!(incr_get(refused).await, "KvError::TooLarge");
    let refused: &'static str = format!("{long},now").leak();
    assert_eq!(incr_get(refused).await, "KvError::TooLarge");
    assert_eq!(incr_get("now,now").await, "3,3", "the refused calls did not count");

    let r = get(gw.addr, "/", &[("x-append-many", "40000")]).await;
    assert_eq!(r.status, 500, "the plugin traps: {}", r.text());
    assert_eq!(get(gw.addr, "/", &[]).await.status, 200, "and the gateway serves on");
    gw.shutdown().await;
}
