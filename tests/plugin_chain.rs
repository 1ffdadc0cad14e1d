//! `config/api-gateway.toml`, the shipped example of a full plugin chain
//! (cors -> jwt -> rate-limit -> transform), run as written against the echo upstream.

use crate::common::services::run_python;
use crate::common::*;

const SECRET: &str = "change-me-this-is-only-a-demo-secret-of-32+-bytes";
const ORIGIN: &str = "https://app.example.com";

fn token(sub: &str) -> String {
    let claims = format!(r#"{{"sub": "{sub}", "plan": "pro", "iss": "https://auth.example.com"}}"#);
    format!("Bearer {}", run_python("mint_hs.py", &[SECRET, "demo", &claims]).trim())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_chain_jwt_rate_limit_cors_transform_works_end_to_end() {
    let example = workspace().join("config/api-gateway.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let upstream = echo().await;
    let text = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9000", &upstream.to_string())
        + &format!("\n[runtime]\nplugin_dir = \"{}\"\n", plugin_dir().display());
    let gw = sluice::start(sluice::ConfigSource::Text {
        text,
        name: "api-gateway.toml".into(),
        base_dir: workspace().join("config"),
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let client = client();
    let request = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut b =
            http::Request::builder().method(method).uri(format!("http://{}{path}", gw.addr));
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap()
    };

    // A browser's preflight is answered by cors, first in the chain.
    let pre = [
        ("origin", ORIGIN),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "authorization"),
    ];
    let r = send(&client, request("OPTIONS", "/v1/orders", &pre)).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("access-control-allow-headers"), Some("authorization"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    let evil = [("origin", "https://evil.test"), ("access-control-request-method", "GET")];
    let r = send(&client, request("OPTIONS", "/v1/orders", &evil)).await;
    assert_eq!((r.status.as_u16(), r.header("access-control-allow-origin")), (204, None));

    // No token: jwt answers 401 before the limiter and the upstream; cors's headers let the
    // browser see it.
    let r = send(&client, request("GET", "/v1/orders", &[("origin", ORIGIN)])).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));

    // With a token: every plugin leaves its mark.
    let ada = token("ada");
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = send(
            &client,
            request("GET", "/v1/orders?page=2", &[("authorization", &ada), ("origin", ORIGIN)]),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("x-ratelimit-remaining, x-upstream-ms")
        );
        let ms: u64 = r.header("x-upstream-ms").expect("latency header").parse().unwrap();
        assert!(ms < 5_000);
        let body = r.echoed();
        assert_eq!(body["upstream_path"], "/api/orders", "path rewritten, field renamed: {body}");
        assert!(body.get("headers").is_none(), "headers field removed: {body}");
        assert_eq!(body["query"], "page=2");
        remaining.push(r.header("x-ratelimit-remaining").unwrap().to_owned());
    }
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    let r =
        send(&client, request("GET", "/v1/orders", &[("authorization", &ada), ("origin", ORIGIN)]))
            .await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    // The browser can read the 429 (cors runs first, so its headers are on every answer)...
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    // ...and preflights, which carry no token and so no user key, are never limited.
    for _ in 0..10 {
        let r = send(&client, request("OPTIONS", "/v1/orders", &pre)).await;
        assert_eq!(r.status, 204);
    }
    // The limit is per user (the `sub` claim jwt forwarded as x-user-id).
    let grace = token("grace");
    let r = send(&client, request("GET", "/v1/orders", &[("authorization", &grace)])).await;
    assert_eq!(r.status, 200);
    gw.shutdown().await;
}
