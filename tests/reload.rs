//! Hot swap of plugin modules and live config reloads, through the real file watcher.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use sluice::reload::{Outcome, ReloadError};

/// How long a module change may take to show in responses (debounce + compile or cache
/// load + init), with room for a loaded CI machine.
pub const SWAP_BOUND: Duration = Duration::from_secs(3);

pub fn stamp_module(version: &str) -> PathBuf {
    PathBuf::from(plugin(&format!("sluice_test_stamp_{version}")))
}

/// Replaces `dest` with `version`'s module: atomically (write aside, rename into place, as
/// build tools do) or in place (truncate, then write, as `cp` does).
pub fn install(version: &str, dest: &Path, atomic: bool) {
    let bytes = std::fs::read(stamp_module(version)).unwrap();
    if atomic {
        let tmp = dest.with_extension("wasm.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(tmp, dest).unwrap();
    } else {
        std::fs::write(dest, bytes).unwrap();
    }
}

/// Polls until a response carries `x-stamp: version`; returns how long that took.
pub async fn wait_for_stamp(addr: std::net::SocketAddr, version: &str) -> Duration {
    let started = Instant::now();
    loop {
        let r = get(addr, "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if r.header("x-stamp") == Some(version) {
            return started.elapsed();
        }
        let stamp = r.header("x-stamp").map(str::to_owned);
        assert!(
            started.elapsed() < SWAP_BOUND,
            "{version} not serving after {SWAP_BOUND:?}; still {stamp:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn stamp_config(module: &Path, label: &str) -> String {
    format!(
        r#"
[plugins.stamp]
module = "{}"
config = {{ label = "{label}" }}

[plugins.counter]
module = "{}"

[[routes]]
prefix = "/"
upstream = "echo"
plugins = ["counter", "stamp"]
"#,
        module.display(),
        plugin("sluice_test_faults"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_written_to_disk_is_swapped_in_and_a_broken_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("stamp.wasm");
    install("v1", &module, true);
    let gw = gateway(echo().await, &stamp_config(&module, "a")).await;
    let _watch = sluice::reload::watch(gw.reloader.clone()).unwrap();
    assert_eq!(get(gw.addr, "/", &[]).await.header("x-stamp"), Some("v1"));

    install("v2", &module, true);
    wait_for_stamp(gw.addr, "v2").await;
    install("v1", &module, false);
    wait_for_stamp(gw.addr, "v1").await;
    let version = gw.reloader.current().version;

    // A broken module is refused; the old version keeps serving, the routes stay up.
    std::fs::write(&module, b"\0asm not really").unwrap();
    tokio::time::sleep(sluice::reload::SETTLE * 5).await;
    for _ in 0..10 {
        assert_eq!(get(gw.addr, "/", &[]).await.header("x-stamp"), Some("v1"));
    }
    assert_eq!(gw.reloader.current().version, version, "a broken module must not apply");

    // Fixing the file brings the next version in.
    install("v2", &module, true);
    wait_for_stamp(gw.addr, "v2").await;
    gw.shutdown().await;
}

/// Writes `file` every 20 ms (faster than the watcher's settle time) until dropped.
struct Churn(std::sync::Arc<std::sync::atomic::AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Churn {
    fn start(write: impl Fn(u64) + Send + 'static) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for n in 0.. {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                write(n);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Churn(stop, Some(thread))
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.1.take().map(std::thread::JoinHandle::join);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_folder_or_a_file_that_never_settles_does_not_hold_a_reload_off() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("stamp.wasm");
    install("v1", &module, true);
    let gw = gateway(echo().await, &stamp_config(&module, "a")).await;
    let _watch = sluice::reload::watch(gw.reloader.clone()).unwrap();

    // A log written next to the module all the time: not a file the config names.
    let log = dir.path().join("gateway.log");
    let _log = Churn::start(move |n| std::fs::write(&log, format!("line {n}\n")).unwrap());
    install("v2", &module, true);
    wait_for_stamp(gw.addr, "v2").await;

    // The module itself rewritten all the time: applied after at most MAX_SETTLE.
    let target = module.clone();
    let _module = Churn::start(move |_| install("v1", &target, true));
    wait_for_stamp(gw.addr, "v1").await;
    drop(_module);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_applies_whole_or_not_at_all_and_keeps_what_did_not_change() {
    let upstream = echo().await;
    let module = stamp_module("v1");
    let gw = gateway(upstream, &stamp_config(&module, "a")).await;
    let calls = |r: &Reply| r.echoed_header("x-instance-calls").unwrap();
    assert_eq!(calls(&get(gw.addr, "/", &[]).await), "1");
    assert_eq!(calls(&get(gw.addr, "/", &[]).await), "2");

    // Only `stamp`'s config changes: `counter` keeps its warm instance (its count goes on).
    let outcome =
        gw.reloader.apply(&config_text(upstream, &stamp_config(&module, "b")), "test").await;
    assert!(matches!(outcome, Ok(Outcome::Applied(ref a)) if a.version == 2), "{outcome:?}");
    let r = get(gw.addr, "/", &[]).await;
    assert_eq!(r.header("x-stamp-label"), Some("b"));
    assert_eq!(calls(&r), "3");

    // An invalid config is refused with TOML paths, and nothing of it applies.
    let broken =
        config_text(upstream, &stamp_config(&module, "c")).replace("\"counter\", ", "\"jwt\", ");
    let err = gw.reloader.apply(&broken, "test").await.unwrap_err();
    let ReloadError::Invalid(errors) = err else { panic!("{err}") };
    assert_eq!(errors.errors[0].to_string(), "routes[0].plugins[0]: unknown plugin \"jwt\"");
    let r = get(gw.addr, "/", &[]).await;
    assert_eq!(r.header("x-stamp-label"), Some("b"));
    assert_eq!(gw.reloader.current().version, 2);

    // Applying the same text again changes nothing.
    let same = config_text(upstream, &stamp_config(&module, "b"));
    assert!(matches!(gw.reloader.apply(&same, "test").await, Ok(Outcome::Unchanged)));

    // Rollback re-applies the previous config.
    let back = gw.reloader.rollback().await.unwrap();
    assert!(
        matches!(back, Outcome::Applied(ref a) if a.version == 3 && a.cause == "rollback to version 1")
    );
    assert_eq!(get(gw.addr, "/", &[]).await.header("x-stamp-label"), Some("a"));
    let history: Vec<u64> = gw.reloader.history().iter().map(|a| a.version).collect();
    assert_eq!(history, [1, 2, 3]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_finish_on_the_version_they_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("stamp.wasm");
    install("v1", &module, true);
    let gw = gateway(echo().await, &stamp_config(&module, "a")).await;
    let _watch = sluice::reload::watch(gw.reloader.clone()).unwrap();
    let addr = gw.addr;
    let slow = tokio::spawn(async move { get(addr, "/delay/1000", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    install("v2", &module, true);
    wait_for_stamp(gw.addr, "v2").await;
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-stamp"), Some("v1"), "the in-flight request changed version");
    gw.shutdown().await;
}
