//! The real `sluice` binary: start-up summary, failure logs, the compiled cache across
//! restarts, and graceful shutdown on SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::proc::Proc;
use crate::common::*;

pub(crate) fn write_config(
    dir: &tempfile::TempDir,
    upstream: SocketAddr,
    rest: &str,
) -> std::path::PathBuf {
    let text = config_text(upstream, rest).replace(
        "[runtime]",
        &format!("[runtime]\ncache_dir = \"{}\"", dir.path().join("cache").display()),
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_summary_failure_logs_and_the_compiled_cache() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let config = write_config(
        &dir,
        upstream,
        &format!(
            r#"
[plugins.faults]
module = "{}"

[[routes]]
name = "api"
prefix = "/api"
upstream = "echo"
plugins = ["faults"]
"#,
            plugin("sluice_test_faults")
        ),
    );
    let mut p = Proc::start(&config);
    let summary = p.wait_for("plugin \"faults\"");
    assert!(
        summary.contains("sluice_test_faults.wasm") && summary.contains(" compiled in "),
        "{summary}"
    );
    let up = p.wait_for("upstream \"echo\"");
    assert!(up.contains(&upstream.to_string()) && up.contains("RoundRobin"), "{up}");
    let route = p.wait_for("route \"api\"");
    assert!(route.contains("/api*") && route.contains("plugins: faults"), "{route}");

    let r = get(p.addr, "/api/x", &[("x-fault", "panic"), ("x-request-id", "req-77")]).await;
    assert_eq!(r.status, 500);
    let log = p.wait_for("failed in on-request");
    for want in ["route=api", "request_id=req-77", "plugin \"faults\"", "fault injected: panic"] {
        assert!(log.contains(want), "{want:?} missing in: {log}");
    }
    drop(p);

    // A restart loads the machine code from the cache instead of compiling again.
    let mut p = Proc::start(&config);
    let summary = p.wait_for("plugin \"faults\"");
    assert!(summary.contains("loaded from cache"), "{summary}");
    assert_eq!(get(p.addr, "/api/x", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(&dir, echo().await, "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n");
    let mut p = Proc::start(&config);
    let addr = p.addr;
    let slow = tokio::spawn(async move { get(addr, "/delay/1500", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal(libc::SIGTERM);
    p.wait_for("shutting down");
    // New connections are refused once the listener is closed...
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still accepting after SIGTERM");
    // ...while the request already in flight completes normally.
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed()["path"], "/delay/1500");
    let status = p.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    p.wait_for("stopped");
}

fn tag_config(label: &str) -> String {
    format!(
        "[plugins.tag]\nmodule = \"header-transform\"\nconfig = {{ response_headers = {{ \"x-label\" = \"{label}\" }} }}\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"echo\"\nplugins = [\"tag\"]\n"
    )
}

/// Rewrites the config file the way editors do: a new file renamed into place.
fn rewrite(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

async fn wait_for_label(addr: SocketAddr, label: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(addr, "/", &[]).await.header("x-label") != Some(label) {
        assert!(std::time::Instant::now() < deadline, "label {label} never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_running_binary_reloads_on_file_changes_and_keeps_serving_a_broken_edit() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let config = write_config(&dir, upstream, &tag_config("one"));
    let mut p = Proc::start(&config);
    assert_eq!(get(p.addr, "/", &[]).await.header("x-label"), Some("one"));

    let text = std::fs::read_to_string(&config).unwrap();
    rewrite(&config, &text.replace("\"one\"", "\"two\""));
    wait_for_label(p.addr, "two").await;
    p.wait_for("config version 2 applied (file changed:");

    // A broken edit is refused with its TOML path; the running config keeps serving.
    rewrite(&config, &text.replace("plugins = [\"tag\"]", "plugins = [\"tag\", \"jwt\"]"));
    let refused = p.wait_for("reload refused");
    assert!(refused.contains("routes[0].plugins[1]: unknown plugin \"jwt\""), "{refused}");
    assert!(refused.contains("still serving config version 2"), "{refused}");
    assert_eq!(get(p.addr, "/", &[]).await.header("x-label"), Some("two"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, echo().await, &tag_config("one"));
    let mut p = Proc::start_with(&config, &["--no-watch"]);
    let text = std::fs::read_to_string(&config).unwrap();
    rewrite(&config, &text.replace("\"one\"", "\"two\""));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Not watching: nothing changed yet.
    assert_eq!(get(p.addr, "/", &[]).await.header("x-label"), Some("one"));
    p.signal(libc::SIGHUP);
    wait_for_label(p.addr, "two").await;
    p.wait_for("config version 2 applied (SIGHUP)");
}

#[tokio::test]
async fn a_busy_port_is_named_once_and_piped_logs_have_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let config =
        write_config(&dir, echo().await, "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n")
            .to_owned();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let want = format!("server.listen: cannot listen on 127.0.0.1:{port}: Address already in use");
    assert_eq!(stderr.matches(&want).count(), 1, "{stderr}");
    assert_eq!(stderr.matches("Address already in use").count(), 1, "{stderr}");
    // stderr is a pipe here, not a terminal: no colour codes.
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    drop(busy);
}

#[test]
fn version_names_the_commit_and_the_plugin_world_and_completions_print() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(sluice_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let version = run(&["--version"]);
    let world = format!("plugin world sluice:plugin@{}", sluice_bindings::WORLD_VERSION);
    assert!(version.starts_with("sluice 0."), "{version}");
    assert!(version.contains(&world), "{version}");
    // This test runs from a git checkout: the commit is a hash, not "unknown".
    let commit = version.split("commit ").nth(1).and_then(|r| r.split(',').next()).unwrap();
    assert!(commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()), "{version}");

    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("_sluice()") && bash.contains("complete -F _sluice"), "{bash}");
    for sub in ["run", "check", "plugin", "completions"] {
        assert!(bash.contains(sub), "{sub} missing");
    }
    assert!(run(&["completions", "zsh"]).starts_with("#compdef sluice"));
    assert!(run(&["completions", "fish"]).contains("complete -c sluice"));
}

/// Every SDK builds for world `handler-plugin`, but components of world `plugin` (hooks given
/// resource handles) keep loading, and their header methods are registered separately, to
/// read names and values in place. tests/plugins/filter-world makes each of those calls on
/// the request and the response: single and batched reads, set, append, remove, a batch of
/// edits, and a batch the host must refuse whole (it names `content-length`).
#[tokio::test]
async fn a_plugin_world_components_header_methods_all_work() {
    let rest = format!(
        "[plugins.f]\nmodule = \"{}\"\n\n[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\nplugins = [\"f\"]\n",
        plugin("sluice_test_filter_world")
    );
    let gw = gateway(echo().await, &rest).await;
    let sent = [("x-a", "alpha"), ("x-b", "beta"), ("x-drop", "1"), ("x-drop2", "2")];
    for _ in 0..3 {
        let r = get(gw.addr, "/x", &sent).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.echoed_header("x-filter-failed"), None, "a header call failed");
        assert_eq!(r.echoed_header("x-filter-one").as_deref(), Some("alpha"));
        assert_eq!(r.echoed_header("x-filter-batch").as_deref(), Some("alpha|beta|-"));
        assert_eq!(r.echoed_header("x-filter-refused").as_deref(), Some("refused"));
        assert_eq!(r.echoed_header("x-never"), None, "a refused batch made an edit");
        assert_eq!(r.echoed_header("x-filter-set").as_deref(), Some("1, 2"));
        assert_eq!(r.echoed_header("x-drop"), None);
        assert_eq!(r.echoed_header("x-drop2"), None);
        assert_eq!(r.header("x-filter-out"), Some("ok"));
        assert_eq!(r.header("x-filter-type"), r.header("content-type"));
        assert!(r.header("x-filter-type").is_some_and(|t| !t.is_empty()));
    }
    gw.shutdown().await;
}

/// Adding to the world is a patch bump within 0.2: a plugin built for 0.2.0 (against a
/// frozen copy of that WIT, tests/plugins/world-0.2.0) loads and runs next to current ones,
/// and the gateway says which world it was built for. The two are of different worlds on one
/// route: `old` exports `filter` (hooks given resource handles), header-transform, built
/// with the Rust SDK, exports `handler` (world `handler-plugin`, hooks without handles).
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_built_for_an_earlier_0_2_world_still_loads_and_runs() {
    assert_ne!(sluice_bindings::WORLD_VERSION, "0.2.0", "this test needs a newer world");
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let config = write_config(
        &dir,
        upstream,
        &format!(
            r#"
[plugins.old]
module = "{}"

[plugins.stamp]
module = "header-transform"
config = {{ request_headers = {{ "x-new" = "${{route}}" }}, response_headers = {{ "x-new-out" = "${{route}}" }} }}

[[routes]]
name = "both"
prefix = "/"
upstream = "echo"
plugins = ["old", "stamp"]
"#,
            plugin("sluice_test_world_0_2_0")
        ),
    );
    let mut p = Proc::start(&config);
    let line = p.wait_for("plugin \"old\"");
    assert!(line.contains("built for sluice:plugin@0.2.0"), "{line}");
    let line = p.wait_for("plugin \"stamp\"");
    assert!(!line.contains("built for"), "current plugins need no note: {line}");
    for _ in 0..3 {
        let r = get(p.addr, "/x", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-world"), Some("0.2.0"));
        assert_eq!(r.echoed_header("x-world-0-2-0").as_deref(), Some("both 127.0.0.1"));
        assert_eq!(r.echoed_header("x-new").as_deref(), Some("both"));
        assert_eq!(r.header("x-new-out"), Some("both"));
    }
}
