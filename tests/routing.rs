//! The router end to end: hosts, methods, headers, query, priorities, path parameters
//! handed to a plugin, and prefix rewriting, through the real gateway.

use crate::common::*;

fn config() -> String {
    r#"
[plugins.params]
module = "header-transform"
config = { request_headers = { "x-user-id" = "${param.id}", "x-file" = "${param.path}", "x-route" = "${route}" } }

[[routes]]
name = "user"
path = "/users/{id}"
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "files"
path = "/files/{*path}"
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "admin-host"
prefix = "/"
hosts = ["admin.example.com"]
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "tenant-wildcard"
prefix = "/"
hosts = ["*.tenants.example.com"]
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "writes"
prefix = "/items"
methods = ["POST", "PUT"]
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "canary"
prefix = "/items"
headers = [{ name = "x-canary", regex = "^(1|true)$" }]
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "v2-query"
prefix = "/items"
query = [{ name = "version", exact = "2" }]
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "items"
prefix = "/items"
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "debug-everything"
prefix = "/"
priority = 100
headers = [{ name = "x-debug-route", present = true }]
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "api-v1"
prefix = "/api/v1"
strip_prefix = true
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "legacy"
prefix = "/legacy/"
replace_prefix = "/v2"
upstream = "echo"
plugins = ["params"]

[[routes]]
name = "fallback"
prefix = "/"
upstream = "echo"
plugins = ["params"]
"#
    .to_owned()
}

/// Every route runs the `params` plugin, which stamps the route's name (`x-route`) and its
/// parameters on the request; the echo upstream reports them back.
async fn route_of(gw: &Running, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::builder().method(method).uri(format!("http://{}{path}", gw.addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(Default::default()).unwrap()).await
}

#[tokio::test]
async fn requests_reach_the_route_their_host_method_headers_and_query_select() {
    // `%2F` stays encoded in the path (`escaped_slashes = "keep"`; the default refuses it),
    // so it is part of one segment, and the parameter holds it decoded.
    let text = config_text(echo().await, &config())
        .replace("[server]\n", "[server]\nescaped_slashes = \"keep\"\n");
    let gw = sluice::start(source(text)).await.unwrap_or_else(|e| panic!("{e}"));

    // Route parameters reach the plugin, percent-decoded.
    let r = route_of(&gw, "GET", "/users/42%2Fx", &[]).await;
    assert_eq!(r.echoed_header("x-user-id").as_deref(), Some("42/x"));
    assert_eq!(r.echoed_header("x-route").as_deref(), Some("user"));
    let r = route_of(&gw, "GET", "/files/docs/a%20b.txt", &[]).await;
    assert_eq!(r.echoed_header("x-file").as_deref(), Some("docs/a b.txt"));
    assert_eq!(r.echoed_header("x-user-id").as_deref(), Some(""));
    assert_eq!(r.echoed_header("x-route").as_deref(), Some("files"));

    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "/anything", &[("host", "admin.example.com")], "admin-host"),
        ("GET", "/anything", &[("host", "ADMIN.example.com:8080")], "admin-host"),
        ("GET", "/anything", &[("host", "acme.tenants.example.com")], "tenant-wildcard"),
        ("GET", "/anything", &[("host", "tenants.example.com")], "fallback"),
        ("POST", "/items/1", &[], "writes"),
        ("GET", "/items/1", &[], "items"),
        ("GET", "/items", &[("x-canary", "true")], "canary"),
        ("GET", "/items", &[("x-canary", "nope")], "items"),
        ("GET", "/items?a=b&version=2", &[], "v2-query"),
        ("GET", "/items?version=3", &[], "items"),
        ("GET", "/users/7", &[("x-debug-route", "")], "debug-everything"),
        ("GET", "/nowhere", &[], "fallback"),
    ];
    for (method, path, headers, want) in cases {
        let r = route_of(&gw, method, path, headers).await;
        assert_eq!(r.status, 200, "{method} {path}");
        assert_eq!(
            r.echoed_header("x-route").as_deref(),
            Some(*want),
            "{method} {path} {headers:?}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn prefixes_are_stripped_or_replaced_before_forwarding() {
    let gw = gateway(echo().await, &config()).await;
    let r = route_of(&gw, "GET", "/api/v1/users/7?full=1", &[]).await;
    assert_eq!(r.echoed()["path"], "/users/7");
    assert_eq!(r.echoed()["query"], "full=1");
    assert_eq!(r.echoed_header("x-forwarded-prefix").as_deref(), Some("/api/v1"));
    let r = route_of(&gw, "GET", "/api/v1", &[]).await;
    assert_eq!(r.echoed()["path"], "/");
    let r = route_of(&gw, "GET", "/legacy/orders", &[]).await;
    assert_eq!(r.echoed()["path"], "/v2/orders");
    gw.shutdown().await;
}
