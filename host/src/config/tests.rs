use super::plugins::resolve_module;
use super::*;

fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigErrors> {
    parse(text, "test.toml", dir)
}

fn messages(e: ConfigErrors) -> Vec<String> {
    e.errors.iter().map(ToString::to_string).collect()
}

#[test]
fn a_full_config_validates_into_the_model() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.wasm"), b"").unwrap();
    let c = parse_in(
        dir.path(),
        r#"
        [server]
        listen = "127.0.0.1:8080"
        request_timeout = "5s"
        [upstreams.users]
        endpoints = ["127.0.0.1:9001", "localhost:9002"]
        [plugins.tag]
        module = "p.wasm"
        config = { response_headers = { "x-served-by" = "sluice" } }
        instances = "fresh"
        timeout = "20ms"
        [[routes]]
        prefix = "/api/users"
        upstream = "users"
        plugins = ["tag"]
        "#,
    )
    .expect("valid");
    assert_eq!(c.server.request_timeout, Duration::from_secs(5));
    assert_eq!(c.upstreams["users"].endpoints.len(), 2);
    let tag = &c.plugins["tag"];
    assert_eq!(tag.module, dir.path().join("p.wasm"));
    assert_eq!(tag.config_json, r#"{"response_headers":{"x-served-by":"sluice"}}"#);
    assert_eq!(tag.instances, InstanceModel::Fresh);
    assert_eq!(tag.timeout, Duration::from_millis(20));
    assert_eq!(&*c.routes[0].name, "/api/users");
    assert_eq!(c.routes[0].max_body_bytes, DEFAULT_MAX_BODY_BYTES);
}

#[test]
fn every_validation_error_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let e = parse_in(
        dir.path(),
        r#"
        [server]
        listen = "nowhere"
        connect_timeout = "soon"
        [upstreams.users]
        endpoints = ["127.0.0.1"]
        [plugins.tag]
        module = "missing.wasm"
        instances = "pooled"
        [[routes]]
        prefix = "/a"
        upstream = "users"
        [[routes]]
        prefix = "b"
        upstream = "nope"
        plugins = ["tag", "jwt"]
        [[routes]]
        prefix = "/a/"
        upstream = "users"
        "#,
    )
    .expect_err("invalid");
    let m = messages(e);
    let expect = [
        "server.listen: not an address:port",
        "server.connect_timeout: not a duration",
        "upstreams.users.endpoints[0]: not a host:port endpoint",
        "plugins.tag.module: no such file",
        "plugins.tag.instances: expected \"reuse\" or \"fresh\"",
        "routes[1].prefix: must start with '/'",
        "routes[1].upstream: unknown upstream \"nope\"",
        "routes[1].plugins[1]: unknown plugin \"jwt\"",
        "routes[2]: duplicate of routes[0] (\"/a\")",
    ];
    for want in expect {
        assert!(m.iter().any(|got| got.starts_with(want)), "missing {want:?} in {m:#?}");
    }
    assert_eq!(m.len(), expect.len(), "{m:#?}");
}

#[test]
fn shape_errors_name_the_path_and_line() {
    let e = parse_in(
        Path::new("."),
        "[server]\nlisten = \"127.0.0.1:1\"\n\n[[routes]]\nprefix = \"/\"\nupstream = \"u\"\nplugin = []\n",
    )
    .expect_err("unknown field");
    let m = messages(e);
    assert_eq!(m.len(), 1);
    assert!(m[0].starts_with("routes[0].plugin (line 7): unknown field `plugin`"), "{m:?}");
}

#[test]
fn shipped_plugins_are_found_by_name_in_the_plugin_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("header_transform.wasm"), b"").unwrap();
    let dirs = vec![dir.path().to_owned()];
    let found = resolve_module("header-transform", &dirs, Path::new("/elsewhere")).unwrap();
    assert_eq!(found, dir.path().join("header_transform.wasm"));
    let err = resolve_module("jwt", &dirs, Path::new("/elsewhere")).unwrap_err();
    assert!(err.starts_with("no shipped plugin \"jwt\""), "{err}");
}

#[test]
fn upstream_defaults_inherit_from_the_server_and_ties_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(
        dir.path(),
        r#"
        [server]
        listen = "127.0.0.1:8080"
        connect_timeout = "1s"
        request_timeout = "7s"
        [upstreams.u]
        endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 4, state = "drain" }]
        [[routes]]
        name = "a"
        path = "/x"
        headers = [{ name = "a", present = true }]
        upstream = "u"
        [[routes]]
        name = "b"
        path = "/x"
        headers = [{ name = "b", present = true }]
        upstream = "u"
        "#,
    )
    .unwrap();
    let u = &c.upstreams["u"];
    assert_eq!((u.connect_timeout, u.timeout), (Duration::from_secs(1), Duration::from_secs(7)));
    assert_eq!(u.strategy, Strategy::RoundRobin);
    assert_eq!((u.endpoints[1].weight, u.endpoints[1].state), (4, EndpointState::Drain));
    assert_eq!(u.retry.attempts, upstreams::DEFAULT_ATTEMPTS);
    assert!(u.passive_health.is_some() && u.health_check.is_none() && u.circuit_breaker.is_none());
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("routes[1]: ambiguous: routes[0] (\"a\")"), "{warnings:?}");
}
