//! The `rate-limit` plugin through the real gateway: exact counts under concurrency across
//! worker threads, keys, tiers and bypass, two gateway processes sharing a real Redis, and
//! what each `kv.on_unavailable` policy does while Redis is unreachable.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::proc::Proc;
use crate::common::services::Redis;
use crate::common::*;

fn limited(config: &str) -> String {
    format!(
        "[plugins.limit]\nmodule = \"rate-limit\"\n[plugins.limit.config]\n{config}\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"echo\"\nplugins = [\"limit\"]\n"
    )
}

/// Sends `n` requests at once, each on its own connection; returns the replies.
async fn burst(
    addr: SocketAddr,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<Reply> {
    let tasks: Vec<_> =
        (0..n).map(|_| tokio::spawn(async move { get(addr, "/", headers).await })).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(replies: &[Reply], status: u16) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_is_exact_across_worker_threads_with_headers_and_429() {
    for algorithm in ["token-bucket", "sliding-window"] {
        let gw = gateway(
            echo().await,
            &limited(&format!("algorithm = \"{algorithm}\"\nlimit = 20\nwindow = \"1h\"")),
        )
        .await;
        let replies = burst(gw.addr, 60, &[]).await;
        assert_eq!((count(&replies, 200), count(&replies, 429)), (20, 40), "{algorithm}");
        // Each allowed request saw its own place in the allowance.
        let remaining: BTreeSet<u64> = replies
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.header("x-ratelimit-remaining").unwrap().parse().unwrap())
            .collect();
        assert_eq!(remaining, (0..20).collect(), "{algorithm}");
        for r in replies.iter().filter(|r| r.status == 429) {
            assert_eq!(r.header("x-ratelimit-limit"), Some("20"));
            assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            // A sliding window can send a client into the next window: once this one's 20
            // weigh at most 19 there, a window / limit (180 s) after it starts. Early in an
            // hour that is up to 3600 + 180 s away.
            assert!((1..=3600 + 3600 / 20).contains(&retry), "retry-after {retry}");
            let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
            assert!((1..=3600).contains(&reset), "reset {reset}");
        }
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_keys_tiers_and_bypass() {
    let gw = gateway(
        echo().await,
        &limited(
            "algorithm = \"token-bucket\"\nkey = \"header:x-api-key\"\n\
             tiers = [{ limit = 3, window = \"1500ms\" }, { limit = 5, window = \"1h\" }]\n\
             bypass = [\"internal\"]",
        ),
    )
    .await;
    let a = burst(gw.addr, 4, &[("x-api-key", "a")]).await;
    assert_eq!(count(&a, 200), 3);
    let refused = a.iter().find(|r| r.status == 429).unwrap();
    // The first tier refused: a token comes back in 500 ms.
    assert_eq!(
        (refused.header("x-ratelimit-limit"), refused.header("retry-after")),
        (Some("3"), Some("1"))
    );
    // Another key has its own allowance; the listed key has none at all.
    assert_eq!(count(&burst(gw.addr, 3, &[("x-api-key", "b")]).await, 200), 3);
    let internal = burst(gw.addr, 10, &[("x-api-key", "internal")]).await;
    assert_eq!(count(&internal, 200), 10);
    assert!(internal.iter().all(|r| r.header("x-ratelimit-limit").is_none()));

    // After the short tier refills, the long one (5 an hour) is what stops key a.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let a = burst(gw.addr, 3, &[("x-api-key", "a")]).await;
    assert_eq!(count(&a, 200), 2, "3 + 2 = the hourly 5");
    let refused = a.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(refused.header("x-ratelimit-limit"), Some("5"));
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((700..=720).contains(&retry), "one token of 5/h is 720 s away, got {retry}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_its_key_is_limited_per_client_ip_or_skipped() {
    // Behind a trusted proxy (127.0.0.1), each X-Forwarded-For is another client.
    let up = echo().await;
    let start = |config: &str| {
        let text = config_text(up, &limited(config))
            .replace("[server]\n", "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n");
        sluice::start(source(text))
    };
    let gw = start("key = \"header:x-api-key\"\nlimit = 2\nwindow = \"1m\"").await.unwrap();
    const ONE: &[(&str, &str)] = &[("x-forwarded-for", "10.0.0.1")];
    const TWO: &[(&str, &str)] = &[("x-forwarded-for", "10.0.0.2")];
    // Without the header, client one gets its own two requests...
    for _ in 0..2 {
        assert_eq!(get(gw.addr, "/", ONE).await.status, 200);
    }
    assert_eq!(get(gw.addr, "/", ONE).await.status, 429);
    // ...which are not client two's: no shared bucket for everyone without a key.
    assert_eq!(get(gw.addr, "/", TWO).await.status, 200);
    // Nor can a key name the fallback bucket of another client.
    let posing = [("x-forwarded-for", "10.0.0.2"), ("x-api-key", "!ip:10.0.0.1")];
    assert_eq!(get(gw.addr, "/", &posing).await.status, 200);
    gw.shutdown().await;

    let gw =
        start("key = \"header:x-api-key\"\nlimit = 1\nwindow = \"1m\"\nmissing_key = \"skip\"")
            .await
            .unwrap();
    let keyless = burst(gw.addr, 5, &[]).await;
    assert_eq!(count(&keyless, 200), 5, "not limited at all");
    assert!(keyless.iter().all(|r| r.header("x-ratelimit-limit").is_none()));
    assert_eq!(count(&burst(gw.addr, 2, &[("x-api-key", "k")]).await, 200), 1);
    gw.shutdown().await;
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_is_shared_by_two_gateway_processes_through_redis() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo().await;
    let config = config_text(
        upstream,
        &(format!("[kv]\nbackend = \"redis\"\nurl = \"{}\"\n", redis.url())
            + &limited("limit = 10\nwindow = \"1h\"\nkey = \"header:x-user\"")),
    );
    let path = write(&dir, "sluice.toml", &config);
    let (one, two) = (Proc::start(&path), Proc::start(&path));
    let mut allowed = [0, 0];
    for i in 0..30 {
        let addr = if i % 2 == 0 { one.addr } else { two.addr };
        if get(addr, "/", &[("x-user", "ada")]).await.status == 200 {
            allowed[i % 2] += 1;
        }
    }
    assert_eq!(allowed[0] + allowed[1], 10, "per process: {allowed:?}");
    assert!(allowed[0] > 0 && allowed[1] > 0, "both processes served: {allowed:?}");
    // Another user still has a fresh allowance on either process.
    assert_eq!(get(two.addr, "/", &[("x-user", "grace")]).await.status, 200);
    // One round trip to Redis a request: the sliding window's count and the last window's
    // read are one script (`incr-and-get`), not an `incr` and a `get`.
    let sent = redis
        .client_commands(async {
            for _ in 0..5 {
                assert_eq!(get(one.addr, "/", &[("x-user", "hopper")]).await.status, 200);
            }
        })
        .await;
    assert_eq!(sent.len(), 5, "one command a request: {sent:#?}");
    assert!(sent.iter().all(|c| c.contains("\"EVALSHA\"")), "{sent:#?}");
}

/// A TCP server that accepts connections and never answers.
async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_redis_outage_follows_the_policy_and_never_hangs() {
    let dead = services::dead_port();
    let refused = format!("redis://127.0.0.1:{}/", dead.port);
    let silent = format!("redis://{}/", black_hole().await);
    let upstream = echo().await;
    for (url, policy, expect) in [
        (&refused, "fallback-local", [200, 200, 429, 429, 429]),
        (&silent, "fallback-local", [200, 200, 429, 429, 429]),
        (&refused, "fail-open", [200; 5]),
        (&silent, "fail-open", [200; 5]),
        (&refused, "fail-closed", [503; 5]),
        (&silent, "fail-closed", [503; 5]),
    ] {
        let gw = gateway(
            upstream,
            &(format!("[kv]\nbackend = \"redis\"\nurl = \"{url}\"\ntimeout = \"100ms\"\non_unavailable = \"{policy}\"\n")
                + &limited("limit = 2\nwindow = \"1h\"")),
        )
        .await;
        let started = Instant::now();
        let mut got = [0; 5];
        for s in &mut got {
            *s = get(gw.addr, "/", &[]).await.status.as_u16();
        }
        assert_eq!(got, expect, "{policy} with {url}");
        // One timeout at most, then the store is skipped until `recheck`: nothing waits on a
        // server that does not answer. (A bound against hanging, not a benchmark.)
        assert!(started.elapsed() < Duration::from_secs(3), "{policy}: {:?}", started.elapsed());
        gw.shutdown().await;
    }
}

use crate::common::services;
