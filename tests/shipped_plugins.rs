//! Plugins in plugins/ run through the real host here (and in auth.rs, rate_limit.rs, ...).
//! `every_shipped_plugin_is_tested` fails when a plugin is added without an e2e test named
//! after it (`async fn NAME_...` in tests/*.rs) or without native unit tests.

use crate::common::*;
use bytes::Bytes;
use http_body_util::Full;

fn route(plugins: &str) -> String {
    format!("[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\nplugins = [{plugins}]\n")
}

#[tokio::test]
async fn header_transform_removes_sets_and_adds_in_both_directions() {
    let gw = gateway(
        echo().await,
        &(r#"
[plugins.t]
module = "header-transform"
[plugins.t.config.request]
remove = ["x-internal"]
set = { "x-env" = "prod" }
add = { "x-multi" = "added" }
[plugins.t.config.response]
remove = ["content-type"]
set = { "cache-control" = "no-store" }
add = { "x-multi" = "one" }
"#
        .to_owned()
            + &route("\"t\"")),
    )
    .await;
    let r =
        get(gw.addr, "/", &[("x-internal", "secret"), ("x-env", "dev"), ("x-multi", "sent")]).await;
    let h = &r.echoed()["headers"];
    assert!(h.get("x-internal").is_none(), "{h}");
    assert_eq!(h["x-env"], "prod");
    assert_eq!(h["x-multi"], "sent, added");
    assert_eq!(r.header("content-type"), None);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-multi"), Some("one"));
    gw.shutdown().await;
}

#[tokio::test]
async fn header_transform_skips_the_phases_it_has_no_edits_for() {
    let gw = gateway(
        echo().await,
        &(r#"
[plugins.req-only]
module = "header-transform"
config = { request_headers = { "x-a" = "1" } }
[plugins.resp-only]
module = "header-transform"
config = { response_headers = { "x-b" = "2" } }
"#
        .to_owned()
            + &route("\"req-only\", \"resp-only\"")),
    )
    .await;
    let snapshot = gw.gateway.load();
    let req_only = snapshot.plugin("req-only").unwrap();
    let resp_only = snapshot.plugin("resp-only").unwrap();
    assert!(req_only.has_request_hook() && !req_only.has_response_hook());
    assert!(!resp_only.has_request_hook() && resp_only.has_response_hook());
    let r = get(gw.addr, "/", &[]).await;
    assert_eq!(r.echoed_header("x-a").as_deref(), Some("1"));
    assert_eq!(r.header("x-b"), Some("2"));
    drop(snapshot);
    gw.shutdown().await;
}

#[tokio::test]
async fn deny_matches_on_path_prefix_and_method() {
    let gw = gateway(
        echo().await,
        &(r#"
[plugins.no-writes]
module = "deny"
config = { path_prefix = "/ro", methods = ["post", "DELETE"], status = 405, body = "read only", headers = { "allow" = "GET" } }
"#
        .to_owned()
            + &route("\"no-writes\"")),
    )
    .await;
    let post = |path: &str| {
        http::Request::post(format!("http://{}{path}", gw.addr))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = send(&client(), post("/ro/doc")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (405, "read only"));
    assert_eq!(r.header("allow"), Some("GET"));
    assert_eq!(get(gw.addr, "/ro/doc", &[]).await.status, 200);
    assert_eq!(send(&client(), post("/rw/doc")).await.status, 200);
    assert_eq!(send(&client(), post("/ro")).await.status, 405);
    gw.shutdown().await;
}

#[test]
fn every_shipped_plugin_is_tested() {
    // Every test file of the e2e binary, read from disk.
    let mut source = String::new();
    for entry in std::fs::read_dir(workspace().join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            source += &std::fs::read_to_string(&path).unwrap();
        }
    }
    let mut untested = Vec::new();
    for entry in std::fs::read_dir(workspace().join("plugins")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
        if !source.contains(&format!("async fn {name}_")) {
            untested.push(format!("{name} (no `async fn {name}_...` test in tests/*.rs)"));
        }
        // And native unit tests in the plugin's own crate.
        let has_unit_tests = std::fs::read_dir(dir.join("src")).unwrap().any(|f| {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap_or_default();
            text.contains("#[test]") || text.contains("mod tests;")
        });
        if !has_unit_tests {
            untested.push(format!("{name} (no #[test] in plugins/*/src)"));
        }
    }
    assert!(untested.is_empty(), "plugins without tests: {untested:?}");
}

#[test]
fn every_guest_package_is_built_for_the_tests() {
    let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    for dir in ["plugins", "tests/plugins"] {
        for entry in std::fs::read_dir(workspace().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_dir() {
                continue; // e.g. source shared by several fixture crates
            }
            if path.join("go.mod").is_file() || path.join("package.json").is_file() {
                continue; // a Go or JS fixture, built by tests/sdks.rs
            }
            let cargo = std::fs::read_to_string(path.join("Cargo.toml")).unwrap();
            let name =
                cargo.lines().find_map(|l| l.strip_prefix("name = ")).unwrap().trim_matches('"');
            // Built for the tests as a guest: every member not on the host side is.
            assert!(!NOT_GUESTS.contains(&name), "{name} would not be built as a guest");
            let member = path.strip_prefix(workspace()).unwrap().display().to_string();
            assert!(
                manifest.contains(&format!("\"{member}\"")),
                "{member} is not a workspace member"
            );
        }
    }
}

/// The sluice-pdk example from plugin-sdk/rust/examples/hello, with its own config file.
#[tokio::test]
async fn sdk_example_hello_greets_and_stamps_responses() {
    let upstream = echo().await;
    let example = workspace().join("plugin-sdk/rust/examples/hello/sluice.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9000", &upstream.to_string())
        .replace(
            "[server]",
            &format!("[runtime]\nplugin_dir = \"{}\"\n\n[server]", plugin_dir().display()),
        );
    let base_dir = example.parent().unwrap().to_owned();
    let source = sluice::ConfigSource::Text { text, name: "hello.toml".into(), base_dir };
    let gw = sluice::start(source).await.unwrap();
    let r = get(gw.addr, "/hello", &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello, plugin author!\n"));
    // The responder's own response phase does not run on its local response (docs/phases.md).
    assert_eq!(r.header("x-hello"), None);
    let r = get(gw.addr, "/elsewhere", &[]).await;
    assert_eq!(r.echoed()["path"], "/elsewhere");
    assert_eq!(r.header("x-hello"), Some("plugin author"));
    gw.shutdown().await;
}

#[tokio::test]
async fn transform_rewrites_path_query_headers_status_and_json_bodies() {
    let gw = gateway(
        echo().await,
        &(r#"
[plugins.t]
module = "transform"
[plugins.t.config.request]
path = { regex = "^/old/(.*)$", replace = "/new/$1" }
query = { add = { source = "gw ${route}" }, remove = ["debug"] }
headers = { rename = { "x-token" = "x-auth-token" }, remove = ["x-debug"], set = { "x-client" = "${client_ip}" } }
json = { set = { "/meta/by" = "${request_id}" }, remove = ["/password"], rename = { "/user_name" = "/username" } }
[plugins.t.config.response]
status = { "200" = 203 }
headers = { set = { "x-upstream-ms" = "${latency}" } }
json = { remove = ["/headers/x-client"], rename = { "/body_sha256" = "/received_sha256" } }
"#
        .to_owned()
            + "[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"echo\"\nplugins = [\"t\"]\n"),
    )
    .await;
    let body = r#"{"user_name": "ada", "password": "s3cret"}"#;
    let req = http::Request::post(format!("http://{}/old/a?debug=1&page=2", gw.addr))
        .header("content-type", "application/json")
        .header("x-token", "abc")
        .header("x-debug", "1")
        .header("x-request-id", "req-9")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, 203, "status mapped");
    assert!(r.header("x-upstream-ms").unwrap().parse::<u64>().is_ok());
    let echoed = r.echoed();
    assert_eq!(echoed["path"], "/new/a");
    assert_eq!(echoed["query"], "page=2&source=gw%20r");
    let headers = &echoed["headers"];
    assert_eq!(headers["x-auth-token"], "abc");
    assert!(headers.get("x-token").is_none() && headers.get("x-debug").is_none());
    assert!(headers.get("x-client").is_none(), "removed from the response JSON");
    // The upstream received the edited JSON (compact, keys in order).
    let sent = r#"{"meta":{"by":"req-9"},"username":"ada"}"#;
    assert_eq!(echoed["received_sha256"], sha256_hex(sent.as_bytes()));
    assert_eq!(echoed["body_bytes"], sent.len());

    // Not JSON: the body passes untouched.
    let req = http::Request::post(format!("http://{}/x", gw.addr))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from("password=kept")))
        .unwrap();
    let echoed = send(&client(), req).await.echoed();
    assert_eq!(echoed["received_sha256"], sha256_hex(b"password=kept"));
    gw.shutdown().await;
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}
