//! The authentication plugins (`jwt`, `api-key`, `basic-auth`) compiled from plugins/, run
//! by the real gateway against the echo upstream. Tokens and password hashes come from
//! independent Python libraries (PyJWT, bcrypt), not from the code under test.

use std::collections::HashMap;

use crate::common::services::run_python;
use crate::common::*;

fn route(plugins: &str) -> String {
    format!("[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\nplugins = [{plugins}]\n")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_verifies_every_algorithm_forwards_claims_and_refuses_bad_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_python("mint_jwt.py", &[dir.path().to_str().unwrap()]);
    let tokens: HashMap<String, String> = serde_json::from_str(&out).unwrap();
    let jwks = dir.path().join("jwks.json");
    let gw = gateway(
        echo().await,
        &(format!(
            r#"
[plugins.auth]
module = "jwt"
files = {{ jwks = "{jwks}" }}
[plugins.auth.config]
issuer = "https://issuer.test"
audience = "orders"
leeway = "30s"
required_claims = ["sub"]
token_from = ["header:authorization", "cookie:session", "query:access_token"]
forward_claims = {{ sub = "x-user-id", role = "x-user-role" }}
realm = "orders"
run_on_preflight = false
"#,
            jwks = jwks.display()
        ) + &route("\"auth\"")),
    )
    .await;

    // One valid token per algorithm, each verified and its claims forwarded.
    let algs = [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
        "ES384", "EdDSA",
    ];
    for alg in algs {
        let auth = bearer(&tokens[&format!("valid_{alg}")]);
        let r =
            get(gw.addr, "/orders", &[("authorization", &auth), ("x-user-role", "spoofed")]).await;
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        assert_eq!(r.echoed_header("x-user-id").as_deref(), Some(format!("user-{alg}").as_str()));
        assert_eq!(r.echoed_header("x-user-role").as_deref(), Some("admin"), "{alg}");
    }

    // A valid token without a forwarded claim, or with one that cannot be a header value:
    // the client's own header of that name still never reaches the upstream.
    for name in ["valid_no_role", "valid_bad_role"] {
        let auth = bearer(&tokens[name]);
        let r =
            get(gw.addr, "/orders", &[("authorization", &auth), ("x-user-role", "spoofed")]).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.echoed_header("x-user-id").as_deref(), Some("ada"), "{name}");
        assert_eq!(r.echoed_header("x-user-role"), None, "{name}");
        assert_eq!(r.echoed_header("x-injected"), None, "{name}");
    }

    // With `run_on_preflight = false` a browser's preflight, which carries no token, passes,
    // but not with the client's own claim headers.
    let preflight = http::Request::options(format!("http://{}/orders", gw.addr))
        .header("origin", "https://app.test")
        .header("access-control-request-method", "GET")
        .header("x-user-id", "root")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = send(&client(), preflight).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echoed_header("x-user-id"), None);

    // The same token from a cookie or a query parameter.
    let t = &tokens["valid_ES256"];
    let cookie = format!("theme=dark; session={t}");
    assert_eq!(get(gw.addr, "/", &[("cookie", &cookie)]).await.status, 200);
    assert_eq!(get(gw.addr, &format!("/?access_token={t}"), &[]).await.status, 200);
    // Within the leeway, an expired token still passes.
    let auth = bearer(&tokens["expired_within_leeway"]);
    assert_eq!(get(gw.addr, "/", &[("authorization", &auth)]).await.status, 200);

    // No token: 401 with a bare challenge, and a spoofed claim header never reaches upstream.
    let r = get(gw.addr, "/", &[("x-user-id", "root")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"orders\""));

    for (name, why) in [
        ("expired", "token expired"),
        ("not_yet_valid", "token not valid yet"),
        ("wrong_key", "signature does not verify"),
        ("wrong_issuer", "wrong issuer"),
        ("wrong_audience", "wrong audience"),
        ("no_sub", "missing required claim \"sub\""),
        ("alg_none", "malformed token or unsupported algorithm"),
        ("alg_confusion", "no key for this token"),
    ] {
        let auth = bearer(&tokens[name]);
        let r = get(gw.addr, "/", &[("authorization", &auth)]).await;
        assert_eq!(r.status, 401, "{name} was let through");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"orders\", error=\"invalid_token\"")
                && challenge.contains(why),
            "{name}: {challenge}"
        );
    }
    gw.shutdown().await;
}

/// The HMAC path against PyJWT: 400 random tokens (seeded; valid ones, and ones spoiled in
/// one or two of their claims, key, kid, signature or shape) get the same verdict from the
/// plugin as from PyJWT under the same settings, and an accepted one forwards its `sub`.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_hmac_verdicts_match_pyjwt_on_random_tokens() {
    #[derive(serde::Deserialize)]
    struct Case {
        token: String,
        accept: bool,
        case: String,
    }
    let seed = std::env::var("SLUICE_JWT_SEED").unwrap_or_else(|_| "20261203".into());
    let cases: Vec<Case> =
        serde_json::from_str(&run_python("jwt_differential.py", &[&seed, "400"])).unwrap();
    let gw = gateway(
        echo().await,
        &(r#"
[plugins.auth]
module = "jwt"
[plugins.auth.config]
keys = [
    { kid = "k256", alg = "HS256", secret = "differential-secret-for-hs256-of-32+b" },
    { kid = "k384", alg = "HS384", secret = "differential-secret-for-hs384-that-is-at-least-48-bytes!" },
    { kid = "k512", alg = "HS512", secret = "differential-secret-for-hs512-that-is-at-least-sixty-four-bytes-long!!" },
]
issuer = "https://issuer.test"
audience = "orders"
leeway = "30s"
required_claims = ["sub"]
forward_claims = { sub = "x-user-id" }
"#
        .to_owned()
            + &route("\"auth\"")),
    )
    .await;
    let accepted = cases.iter().filter(|c| c.accept).count();
    assert!((80..=320).contains(&accepted), "{accepted} of 400 valid: the generator drifted");
    let mut wrong = Vec::new();
    for c in &cases {
        let r = get(gw.addr, "/", &[("authorization", &bearer(&c.token))]).await;
        let plugin = match r.status.as_u16() {
            200 => true,
            401 => false,
            other => panic!("{}: status {other}", c.case),
        };
        if plugin != c.accept {
            wrong.push(format!("plugin {plugin}, PyJWT {}: {} ({})", c.accept, c.case, r.text()));
        } else if plugin {
            assert_eq!(r.echoed_header("x-user-id").as_deref(), Some("user-1"), "{}", c.case);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 400 verdicts differ (seed {seed}):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    gw.shutdown().await;
}

fn sha256_hex(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn api_key_maps_hashed_keys_to_consumers_401_without_403_unknown() {
    let gw = gateway(
        echo().await,
        &(format!(
            r#"
[plugins.keys]
module = "api-key"
[plugins.keys.config]
query = "api_key"
consumer_header = "x-consumer"
keys = {{ "sha256:{}" = "mobile-app", "sha256:{}" = "partner-acme" }}
"#,
            sha256_hex("k-mobile-123"),
            sha256_hex("k-acme-456")
        ) + &route("\"keys\"")),
    )
    .await;
    let r = get(gw.addr, "/a", &[("x-api-key", "k-mobile-123"), ("x-consumer", "admin")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-consumer").as_deref(), Some("mobile-app"));
    assert_eq!(r.echoed_header("x-api-key"), None, "the key went upstream");

    let r = get(gw.addr, "/a?x=1&api_key=k-acme-456", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-consumer").as_deref(), Some("partner-acme"));
    assert_eq!(r.echoed()["query"], "x=1", "the key stays out of the upstream query");

    let r = get(gw.addr, "/a", &[("x-consumer", "mobile-app")]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (401, "missing API key\n"));
    let r = get(gw.addr, "/a", &[("x-api-key", "k-guess")]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (403, "unknown API key\n"));
    // The configured hash itself is not a key.
    let hash = format!("sha256:{}", sha256_hex("k-mobile-123"));
    assert_eq!(get(gw.addr, "/a", &[("x-api-key", &hash)]).await.status, 403);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_checks_bcrypt_htpasswd_and_picks_up_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("staff.htpasswd");
    std::fs::write(&htpasswd, run_python("htpasswd.py", &["ada:lovelace", "alan:tur:ing"]))
        .unwrap();
    let config = config_text(
        echo().await,
        &(format!(
            r#"
[plugins.staff]
module = "basic-auth"
timeout = "2s"
files = {{ htpasswd = "{}" }}
config = {{ realm = "staff" }}
"#,
            htpasswd.display()
        ) + &route("\"staff\"")),
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, &config).unwrap();
    let running = sluice::start(sluice::ConfigSource::File(path)).await.unwrap();
    let addr = running.addr;
    let basic = |pair: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    };

    let r = get(addr, "/", &[("authorization", &basic("ada:lovelace")), ("x-user", "root")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echoed_header("x-user").as_deref(), Some("ada"));
    assert_eq!(r.echoed_header("authorization"), None, "the password went upstream");
    // A password with a colon, and the cached second check.
    for _ in 0..2 {
        let r = get(addr, "/", &[("authorization", &basic("alan:tur:ing"))]).await;
        assert_eq!(r.echoed_header("x-user").as_deref(), Some("alan"));
    }
    for bad in [basic("ada:wrong"), basic("eve:lovelace"), "Bearer x".to_owned()] {
        let r = get(addr, "/", &[("authorization", &bad)]).await;
        assert_eq!(r.status, 401, "{bad}");
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"staff\", charset=\"UTF-8\""));
    }
    assert_eq!(get(addr, "/", &[]).await.status, 401);

    // A new user in the htpasswd file is live after a reload, with no restart.
    std::fs::write(&htpasswd, run_python("htpasswd.py", &["grace:hopper"])).unwrap();
    running.reloader.reload("test").await.unwrap();
    assert_eq!(get(addr, "/", &[("authorization", &basic("grace:hopper"))]).await.status, 200);
    assert_eq!(get(addr, "/", &[("authorization", &basic("ada:lovelace"))]).await.status, 401);
    // ...and it is one of the files the watcher follows.
    assert!(running.reloader.watched_files().iter().any(|f| f.ends_with("staff.htpasswd")));
    running.shutdown().await;
}
