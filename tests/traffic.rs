//! Traffic management against real upstreams that fail on demand: shares per endpoint,
//! active and passive health, the circuit breaker, retries and timeouts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::backend::{Backend, Mode};
use crate::common::*;

async fn backends(names: &[&'static str]) -> Vec<Backend> {
    let mut out = Vec::new();
    for n in names {
        out.push(Backend::start(n).await);
    }
    out
}

/// `n` GETs of `path`; how many each endpoint answered, and any other statuses.
async fn tally(
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let client = client();
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let mut req = http::Request::get(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = send(&client, req.body(Default::default()).unwrap()).await;
        *counts.entry(outcome(&r)).or_insert(0) += 1;
    }
    counts
}

/// The endpoint that answered, or the status when it was not a 200.
fn outcome(r: &Reply) -> String {
    match r.status {
        http::StatusCode::OK => r.header("x-endpoint").unwrap_or("?").to_owned(),
        s => format!("status {}", s.as_u16()),
    }
}

fn endpoints(bs: &[Backend]) -> String {
    bs.iter().map(|b| format!("\"{}\"", b.addr)).collect::<Vec<_>>().join(", ")
}

#[tokio::test]
async fn shares_per_endpoint_follow_weights_hashes_and_splits() {
    let b = backends(&["a", "b", "c"]).await;
    let gw = gateway(
        echo().await,
        &format!(
            r#"
[upstreams.weighted]
strategy = "weighted_round_robin"
endpoints = ["{a}", {{ address = "{b}", weight = 2 }}, {{ address = "{c}", weight = 3 }}]

[upstreams.hashed]
strategy = "consistent_hash"
hash_key = "header:x-user"
endpoints = [{all}]

[upstreams.blue]
endpoints = ["{a}"]
[upstreams.green]
endpoints = ["{b}"]

[[routes]]
prefix = "/weighted"
upstream = "weighted"

[[routes]]
prefix = "/hashed"
upstream = "hashed"

[[routes]]
prefix = "/split"
split = [{{ upstream = "blue", weight = 90 }}, {{ upstream = "green", weight = 10 }}]

[[routes]]
prefix = "/sticky"
split = [{{ upstream = "blue", weight = 50 }}, {{ upstream = "green", weight = 50 }}]
split_sticky = "cookie:session"
"#,
            a = b[0].addr,
            b = b[1].addr,
            c = b[2].addr,
            all = endpoints(&b)
        ),
    )
    .await;

    let shares = tally(gw.addr, "/weighted", 600, &[]).await;
    println!("weighted_round_robin 1:2:3 over 600 requests: {shares:?}");
    assert_eq!(shares, BTreeMap::from([("a".into(), 100), ("b".into(), 200), ("c".into(), 300)]));

    // One user always lands on one endpoint; users spread over all three.
    let mut seen = BTreeMap::new();
    for user in 0..60 {
        let user = format!("user-{user}");
        let shares = tally(gw.addr, "/hashed", 5, &[("x-user", &user)]).await;
        assert_eq!(shares.len(), 1, "{user} moved: {shares:?}");
        *seen.entry(shares.into_keys().next().unwrap()).or_insert(0) += 1;
    }
    println!("consistent_hash, 60 users: {seen:?}");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n >= 8), "{seen:?}");

    let shares = tally(gw.addr, "/split", 1000, &[]).await;
    println!("split 90/10 over 1000 requests: {shares:?}");
    let green = shares.get("b").copied().unwrap_or(0);
    assert!((60..=140).contains(&green), "10% ± 4 points expected: {shares:?}");

    let mut sticky = BTreeMap::new();
    for s in 0..40 {
        let cookie = format!("theme=dark; session=s{s}");
        let shares = tally(gw.addr, "/sticky", 4, &[("cookie", &cookie)]).await;
        assert_eq!(shares.len(), 1, "session s{s} moved: {shares:?}");
        *sticky.entry(shares.into_keys().next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(sticky.len(), 2, "{sticky:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn active_checks_take_a_failing_endpoint_out_and_bring_it_back() {
    let b = backends(&["a", "b"]).await;
    let gw = gateway(
        echo().await,
        &format!(
            r#"
[upstreams.checked]
endpoints = [{all}]
health_check = {{ path = "/health", interval = "100ms", timeout = "1s", unhealthy_threshold = 2, healthy_threshold = 2 }}
passive_health = {{ enabled = false }}
retry = {{ attempts = 1 }}

[[routes]]
prefix = "/"
upstream = "checked"
"#,
            all = endpoints(&b)
        ),
    )
    .await;
    assert_eq!(tally(gw.addr, "/", 10, &[]).await.len(), 2);

    // Two failed checks at 100ms intervals take it out, two passed ones bring it back: a few
    // hundred ms on a quiet machine. The limits are generous because the machine running
    // the tests may be busy (a check that times out would also count as failed; a 503 fails
    // at once, so the generous check timeout does not slow this down).
    b[1].set(Mode::Status(503));
    let out = wait_until(Duration::from_secs(10), async || {
        tally(gw.addr, "/", 20, &[]).await == BTreeMap::from([("a".into(), 20)])
    })
    .await;
    println!("failing endpoint left rotation after {out:?}");

    b[1].set(Mode::Ok);
    let back = wait_until(Duration::from_secs(10), async || {
        tally(gw.addr, "/", 10, &[]).await.contains_key("b")
    })
    .await;
    println!("recovered endpoint back in rotation after {back:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_circuit_breaker_opens_fails_fast_half_opens_and_closes() {
    let b = backends(&["only"]).await;
    let gw = gateway(
        echo().await,
        &format!(
            r#"
[upstreams.fragile]
endpoints = ["{addr}"]
passive_health = {{ enabled = false }}
retry = {{ attempts = 1 }}

[upstreams.fragile.circuit_breaker]
failure_threshold = 3
success_threshold = 2
open_timeout = "400ms"
half_open_requests = 1
failures = ["5xx", "connect"]

[[routes]]
prefix = "/"
upstream = "fragile"
"#,
            addr = b[0].addr
        ),
    )
    .await;
    b[0].set(Mode::Status(500));
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/", &[]).await.status, 500);
    }
    // Open: fail fast with 503 and Retry-After, without calling the upstream.
    let hits = b[0].hits();
    let r = get(gw.addr, "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.text(), "upstream circuit open\n");
    assert_eq!(b[0].hits(), hits, "an open circuit must not call the upstream");

    // Half-open after open_timeout: a failed trial opens it again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(get(gw.addr, "/", &[]).await.status, 500);
    assert_eq!(b[0].hits(), hits + 1);
    assert_eq!(get(gw.addr, "/", &[]).await.status, 503);

    // The upstream recovers: two successful trials close the circuit.
    b[0].set(Mode::Ok);
    tokio::time::sleep(Duration::from_millis(450)).await;
    for _ in 0..2 {
        assert_eq!(get(gw.addr, "/", &[]).await.status, 200);
    }
    assert_eq!(tally(gw.addr, "/", 20, &[]).await, BTreeMap::from([("only".into(), 20)]));
    gw.shutdown().await;
}

#[tokio::test]
async fn killing_one_of_three_endpoints_under_load_is_invisible_to_clients() {
    let mut b = backends(&["a", "b", "c"]).await;
    let gw = gateway(
        echo().await,
        &format!(
            r#"
[upstreams.trio]
endpoints = [{all}]
passive_health = {{ consecutive_failures = 2, base_ejection = "500ms", max_ejection = "1s" }}
retry = {{ attempts = 3 }}

[[routes]]
prefix = "/"
upstream = "trio"
"#,
            all = endpoints(&b)
        ),
    )
    .await;
    let addr = gw.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let stop = stop.clone();
        clients.spawn(async move {
            let client = client();
            let mut tally: BTreeMap<String, usize> = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = http::Request::get(format!("http://{addr}/"));
                let r = send(&client, req.body(Default::default()).unwrap()).await;
                *tally.entry(outcome(&r)).or_insert(0) += 1;
            }
            tally
        });
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    b[1].kill().await;
    let killed_at = b[1].hits();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b[1].revive().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    for t in clients.join_all().await {
        for (k, v) in t {
            *total.entry(k).or_insert(0) += v;
        }
    }
    println!("16 clients, b killed for 1.5s then revived: {total:?}");
    let errors: usize = total.iter().filter(|(k, _)| k.starts_with("status")).map(|(_, v)| v).sum();
    assert_eq!(errors, 0, "clients saw errors: {total:?}");
    assert!(total["a"] > 100 && total["c"] > 100, "{total:?}");
    assert!(b[1].hits() > killed_at, "the revived endpoint is back in rotation: {total:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_endpoint_times_out_with_504_and_retries_go_elsewhere() {
    let b = backends(&["slow", "fast", "bad"]).await;
    b[0].set(Mode::Hang(Duration::from_secs(3)));
    b[2].set(Mode::Status(502));
    let gw = gateway(
        echo().await,
        &format!(
            r#"
[upstreams.slow]
endpoints = ["{slow}"]
timeout = "200ms"
retry = {{ attempts = 1 }}

[upstreams.capped]
endpoints = ["{slow}"]
timeout = "200ms"
total_timeout = "300ms"
retry = {{ attempts = 5, backoff = "1ms", max_backoff = "2ms" }}

[upstreams.pair]
endpoints = ["{slow}", "{fast}"]
timeout = "200ms"
passive_health = {{ enabled = false }}
retry = {{ attempts = 2, backoff = "1ms", max_backoff = "2ms" }}

[upstreams.flaky]
strategy = "round_robin"
endpoints = ["{bad}", "{fast}"]
passive_health = {{ enabled = false }}

[[routes]]
prefix = "/slow"
upstream = "slow"

[[routes]]
prefix = "/capped"
upstream = "capped"

[[routes]]
prefix = "/pair"
upstream = "pair"

[[routes]]
prefix = "/flaky"
upstream = "flaky"
"#,
            slow = b[0].addr,
            fast = b[1].addr,
            bad = b[2].addr,
        ),
    )
    .await;
    let started = Instant::now();
    let r = get(gw.addr, "/slow", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "upstream timed out\n");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // total_timeout bounds all attempts together: five 200ms attempts stop at 300ms.
    let started = Instant::now();
    assert_eq!(get(gw.addr, "/capped", &[]).await.status, 504);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(700), "{took:?}");

    // A GET that times out on one endpoint is retried on the other.
    assert_eq!(tally(gw.addr, "/pair", 6, &[]).await, BTreeMap::from([("fast".into(), 6)]));

    // A 502 is retried for GET, never for POST (not idempotent).
    assert_eq!(tally(gw.addr, "/flaky", 6, &[]).await, BTreeMap::from([("fast".into(), 6)]));
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = http::Request::post(format!("http://{}/flaky", gw.addr)).body("x".into());
        statuses.push(send(&client, req.unwrap()).await.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 502, 502]);
    gw.shutdown().await;
}

#[tokio::test]
async fn refused_connections_are_retried_for_any_method_and_no_endpoint_means_503() {
    let mut b = backends(&["dead", "alive"]).await;
    b[0].kill().await;
    let gw = gateway(
        echo().await,
        &format!(
            r#"
[upstreams.half]
endpoints = ["{dead}", "{alive}"]
passive_health = {{ enabled = false }}

[upstreams.none]
endpoints = [{{ address = "{alive}", state = "drain" }}, {{ address = "{dead}", state = "down" }}]

[[routes]]
prefix = "/half"
upstream = "half"

[[routes]]
prefix = "/none"
upstream = "none"
"#,
            dead = b[0].addr,
            alive = b[1].addr,
        ),
    )
    .await;
    let client = client();
    for _ in 0..6 {
        let req = http::Request::post(format!("http://{}/half", gw.addr)).body("payload".into());
        let r = send(&client, req.unwrap()).await;
        assert_eq!((r.status.as_u16(), r.header("x-endpoint")), (200, Some("alive")));
    }
    let r = get(gw.addr, "/none", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no healthy upstream\n");
    assert_eq!(b[1].hits(), 6, "a drained endpoint takes no new requests");
    gw.shutdown().await;
}

/// Polls `check` until it holds; returns how long that took. Panics after `limit`.
async fn wait_until(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within {limit:?}");
}
