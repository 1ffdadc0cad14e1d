//! Hostile clients against the real gateway: every trick here once walked past a plugin,
//! blamed an upstream for the client's fault, or held what other clients needed. Each test
//! uses raw sockets where a well-behaved client library would refuse to send the request,
//! and an upstream that records exactly what reached it.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::common::recorder::{Recorder, raw, raw_from, status_of};
use crate::common::services::run_python;
use crate::common::*;

const JWT_SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

fn get_raw(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Every spelling of `/api/users/admin/x` that some server reads as that path.
const PATH_TRICKS: &[&str] = &[
    "/api/users/admin/x",
    "/api/users/%61dmin/x",
    "/api/users/%61%64%6d%69%6e/x",
    "/api/users/./admin/x",
    "/api/users/x/../admin/x",
    "/api/users//admin/x",
    "//api/users/admin/x",
    "/%2e/api/users/admin/x",
    "/api/users/%2e/admin/x",
    "/api/users/x/%2e%2e/admin/x",
    "/api/users/x/.%2E/admin/x",
    "/api/x/..%2fusers/admin/x",
    "/api/users%2fadmin/x",
    "/api/users/admin%2fx",
    "/api/users%5cadmin/x",
    "/api/users\\admin/x",
    "/../api/users/admin/x",
];

#[tokio::test]
async fn path_tricks_never_reach_the_upstream_past_a_deny_prefix() {
    let (rec, up) = Recorder::start().await;
    let gw = gateway(
        up,
        r#"
[plugins.no-admin]
module = "deny"
config = { path_prefix = "/api/users/admin", status = 403, body = "forbidden" }

[[routes]]
prefix = "/api/users"
upstream = "echo"
plugins = ["no-admin"]

[[routes]]
prefix = "/"
upstream = "echo"
"#,
    )
    .await;
    for trick in PATH_TRICKS {
        let reply = raw(gw.addr, &get_raw(trick, "gw.test"), false).await;
        let status = status_of(&reply);
        assert!(status == 403 || status == 400, "{trick}: {status}\n{reply}");
    }
    assert!(rec.seen().is_empty(), "the upstream saw {:?}", rec.seen());
    // The path every plugin and the upstream agree on is the normalised one.
    let reply = raw(gw.addr, &get_raw("/api/users/./7/../8//profile", "gw.test"), false).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert_eq!(rec.seen()[0].target, "/api/users/8/profile");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn path_tricks_cannot_move_a_request_off_a_jwt_route() {
    let (rec, up) = Recorder::start().await;
    let gw = gateway(
        up,
        &format!(
            r#"
[plugins.auth]
module = "jwt"
config = {{ keys = [{{ alg = "HS256", secret = "{JWT_SECRET}" }}], forward_claims = {{ sub = "x-user-id" }} }}

[[routes]]
prefix = "/private"
upstream = "echo"
plugins = ["auth"]

[[routes]]
prefix = "/"
upstream = "echo"
"#
        ),
    )
    .await;
    for trick in [
        "/private/x",
        "/%70rivate/x",
        "/%70%72%69%76%61%74%65/x",
        "/./private/x",
        "//private/x",
        "/x/../private/x",
        "/x/%2e%2e/private/x",
        "/public/..%2fprivate/x",
        "/private%2fx",
    ] {
        let reply = raw(gw.addr, &get_raw(trick, "gw.test"), false).await;
        let status = status_of(&reply);
        assert!(status == 401 || status == 400, "{trick}: {status}\n{reply}");
    }
    assert!(rec.seen().is_empty(), "the upstream saw {:?}", rec.seen());

    // With a token, the claim the plugin set cannot be stripped by the client's
    // `Connection` header, nor spoofed with an underscore twin.
    let token = run_python("mint_hs.py", &[JWT_SECRET, "k", r#"{"sub":"ada"}"#]);
    let req = format!(
        "GET /private/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {}\r\n\
         Connection: close, x-user-id\r\nx_user_id: root\r\n\r\n",
        token.trim()
    );
    let reply = raw(gw.addr, req.as_bytes(), false).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = &rec.seen()[0];
    assert_eq!(seen.headers["x-user-id"], "ada");
    assert!(seen.headers.get("x_user_id").is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn host_tricks_cannot_move_a_request_off_a_host_route() {
    let (rec, up) = Recorder::start().await;
    let gw = gateway(
        up,
        r#"
[plugins.closed]
module = "deny"
config = { path_prefix = "/", status = 403, body = "closed" }

[[routes]]
name = "api"
hosts = ["api.example.com"]
prefix = "/"
upstream = "echo"
plugins = ["closed"]

[[routes]]
name = "other"
prefix = "/"
upstream = "echo"
"#,
    )
    .await;
    for host in ["api.example.com", "api.example.com.", "API.Example.COM", "api.example.com.:80"] {
        let reply = raw(gw.addr, &get_raw("/x", host), false).await;
        assert_eq!(status_of(&reply), 403, "{host}: {reply}");
    }
    let refused: [&[u8]; 4] = [
        // Two Host headers: which one would the upstream believe?
        b"GET /x HTTP/1.1\r\nHost: other.test\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        // An absolute target that disagrees with Host.
        b"GET http://other.test/x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        b"GET http://api.example.com/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: api..example.com\r\nConnection: close\r\n\r\n",
    ];
    for req in refused {
        let reply = raw(gw.addr, req, false).await;
        assert_eq!(status_of(&reply), 400, "{}: {reply}", String::from_utf8_lossy(req));
    }
    assert!(rec.seen().is_empty(), "the upstream saw {:?}", rec.seen());
    // A Host that agrees in another spelling goes on, normalised.
    let req = b"GET http://API.example.com/x HTTP/1.1\r\nHost: api.example.com.\r\n\r\n";
    assert_eq!(status_of(&raw(gw.addr, req, false).await), 403);
    let reply = raw(gw.addr, &get_raw("/x", "Other.Test."), false).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert_eq!(rec.seen()[0].headers["host"], "other.test");
    // An absolute target reaches the upstream in origin form: it reads the path the router
    // matched and the Host it checked, never an authority of the client's in the target.
    let req =
        b"GET http://Other.Test/x?q=1 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&raw(gw.addr, req, false).await), 200);
    let seen = &rec.seen()[1];
    assert_eq!(seen.target, "/x?q=1");
    assert_eq!(seen.headers["host"], "other.test");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_lower_case_method_cannot_slip_past_a_method_rule() {
    let (rec, up) = Recorder::start().await;
    let gw = gateway(
        up,
        r#"
[plugins.no-delete]
module = "deny"
config = { path_prefix = "/", status = 405, body = "no" }

[[routes]]
name = "deletes"
prefix = "/"
methods = ["DELETE"]
upstream = "echo"
plugins = ["no-delete"]

[[routes]]
name = "rest"
prefix = "/"
upstream = "echo"
"#,
    )
    .await;
    let reply = raw(gw.addr, b"DELETE /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false);
    assert_eq!(status_of(&reply.await), 405);
    for m in ["delete", "Delete"] {
        let req = format!("{m} /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(status_of(&raw(gw.addr, req.as_bytes(), false).await), 400, "{m}");
    }
    assert!(rec.seen().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_cannot_claim_to_be_someone_else() {
    let (rec, up) = Recorder::start().await;
    let gw = gateway(up, "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n").await;
    let req =
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
        X-Real-IP: 6.6.6.6\r\nX-Forwarded-Prefix: /admin\r\nX-Forwarded-Host: evil\r\n\
        Connection: close\r\n\r\n";
    assert_eq!(status_of(&raw(gw.addr, req, false).await), 200);
    let h = &rec.seen()[0].headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "a");
    for gone in ["forwarded", "x-real-ip", "x-forwarded-prefix"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream");
    }
    // `Connection` may not name what the gateway itself sets.
    let req = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-for\r\n\r\n";
    assert_eq!(status_of(&raw(gw.addr, req, false).await), 400);
    gw.shutdown().await;
}

#[tokio::test]
async fn trusted_proxies_are_believed_and_no_one_else() {
    let (rec, up) = Recorder::start().await;
    let text = config_text(up, "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n")
        .replace("[server]\n", "[server]\ntrusted_proxies = [\"127.0.0.2/32\"]\n");
    let gw = sluice::start(source(text)).await.unwrap();
    let req = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6, 9.9.9.9\r\nConnection: close\r\n\r\n";
    let from = |ip: &str| ip.parse::<IpAddr>().unwrap();
    let wait = Duration::from_secs(10);
    assert_eq!(status_of(&raw_from(from("127.0.0.2"), gw.addr, req, false, wait).await), 200);
    assert_eq!(status_of(&raw_from(from("127.0.0.3"), gw.addr, req, false, wait).await), 200);
    let seen = rec.seen();
    assert_eq!(seen[0].headers["x-forwarded-for"], "6.6.6.6, 9.9.9.9, 127.0.0.2");
    assert_eq!(seen[1].headers["x-forwarded-for"], "127.0.0.3");
    gw.shutdown().await;
}

/// A route with a breaker that opens after 3 failures and passive checks that eject after 3.
fn fragile_upstream(rest: &str) -> String {
    format!(
        r#"
circuit_breaker = {{ failure_threshold = 3, open_timeout = "60s" }}
passive_health = {{ consecutive_failures = 3, base_ejection = "60s" }}
retry = {{ attempts = 2 }}
{rest}"#
    )
}

#[tokio::test]
async fn broken_client_bodies_are_the_clients_fault_and_never_reach_the_upstream_whole() {
    let (rec, up) = Recorder::start().await;
    for reads_body in [false, true] {
        let plugins = if reads_body { "plugins = [\"faults\"]" } else { "" };
        let gw = gateway(
            up,
            &fragile_upstream(&format!(
                "[plugins.faults]\nmodule = \"{faults}\"\n\n[[routes]]\nprefix = \"/\"\n\
                 upstream = \"echo\"\n{plugins}\n",
                faults = plugin("sluice_test_faults")
            )),
        )
        .await;
        let head =
            "POST /upload HTTP/1.1\r\nHost: a\r\nx-read-body: 1\r\nContent-Type: text/plain\r\n";
        // A malformed chunk size: 400, ten times over; the breaker and the passive checks
        // never hear of it.
        let bad_chunk = format!("{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n");
        for _ in 0..10 {
            let reply = raw(gw.addr, bad_chunk.as_bytes(), false).await;
            assert_eq!(status_of(&reply), 400, "plugin reads body: {reads_body}\n{reply}");
        }
        // A body cut short, both framings: the client half-closes part way.
        let short_chunked = format!("{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        let short_length = format!("{head}Content-Length: 100\r\n\r\nonly ten b");
        for req in [short_chunked, short_length] {
            let started = Instant::now();
            let reply = raw(gw.addr, req.as_bytes(), true).await;
            let status = status_of(&reply);
            assert!(status == 400 || status == 0, "{reads_body}: {status}\n{reply}");
            assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        }
        assert!(rec.whole().iter().all(|s| s.method != "POST"), "{:?}", rec.whole());
        // Other clients are served: no breaker opened, no endpoint ejected.
        for _ in 0..10 {
            let reply = raw(gw.addr, &get_raw("/ok", "a"), false).await;
            assert_eq!(status_of(&reply), 200, "{reply}");
        }
        gw.shutdown().await;
        rec.clear();
    }
}

#[tokio::test]
async fn a_client_that_goes_quiet_mid_body_gets_408_and_the_upstream_no_request() {
    let (rec, up) = Recorder::start().await;
    let text =
        config_text(up, &fragile_upstream("[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n"))
            .replace("[server]\n", "[server]\nbody_timeout = \"500ms\"\n");
    let gw = sluice::start(source(text)).await.unwrap();
    let req = b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nten bytes!";
    for _ in 0..4 {
        let started = Instant::now();
        let reply = raw(gw.addr, req, false).await;
        assert_eq!(status_of(&reply), 408, "{reply}");
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    }
    assert!(rec.whole().is_empty(), "{:?}", rec.whole());
    assert_eq!(status_of(&raw(gw.addr, &get_raw("/ok", "a"), false).await), 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_bodies_do_not_hold_the_plugin_instances_others_need() {
    let (_rec, up) = Recorder::start().await;
    let gw = gateway(
        up,
        &format!(
            r#"
[plugins.faults]
module = "{}"
max_instances = 2

[[routes]]
prefix = "/"
upstream = "echo"
plugins = ["faults"]
"#,
            plugin("sluice_test_faults")
        ),
    )
    .await;
    // One whole body teaches the gateway that this plugin reads bodies.
    let whole = b"POST /x HTTP/1.1\r\nHost: a\r\nx-read-body: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    assert_eq!(status_of(&raw(gw.addr, whole, false).await), 200);
    // Eight clients trickle a body in, a byte every 200 ms, for as long as the test runs.
    let addr = gw.addr;
    let tricklers: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let head =
                    "POST /x HTTP/1.1\r\nHost: a\r\nx-read-body: 1\r\nContent-Length: 1000\r\n\r\n";
                s.write_all(head.as_bytes()).await.unwrap();
                for _ in 0..100 {
                    if s.write_all(b"x").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Everyone else still gets an instance at once (the pool holds two).
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(status_of(&raw(gw.addr, whole, false).await), 200);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }
    for t in tricklers {
        t.abort();
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_one_address_cannot_take_every_connection() {
    let (_rec, up) = Recorder::start().await;
    let text = config_text(up, "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n").replace(
        "[server]\n",
        "[server]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\nmax_connections_per_ip = 20\n",
    );
    let gw = sluice::start(source(text)).await.unwrap();
    let attacker: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let connect = |from: SocketAddr| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(from).unwrap();
        socket.connect(gw.addr).await.unwrap()
    };
    // 40 silent connections from one address, some sending only the HTTP/2 preface.
    let mut silent = Vec::new();
    for i in 0..40 {
        let mut s = connect(attacker).await;
        if i % 2 == 0 {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        }
        silent.push(s);
    }
    // Another client is served meanwhile.
    assert_eq!(get(gw.addr, "/ok", &[]).await.status, 200);
    // Every silent connection is closed: past the cap at once, the rest at the timeout.
    let started = Instant::now();
    for mut s in silent {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a silent connection stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // An idle keep-alive connection is closed too (by header_timeout or idle_timeout).
    let mut s = connect("127.0.0.1:0".parse().unwrap()).await;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut buf = vec![0; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let closed = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_trickled_in_is_cut_at_the_header_timeout() {
    let (rec, up) = Recorder::start().await;
    // Bytes keep coming, so only the header timeout (not the idle one) can end these.
    let text = config_text(up, "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n")
        .replace("[server]\n", "[server]\nheader_timeout = \"1s\"\nidle_timeout = \"30s\"\n");
    let gw = sluice::start(source(text)).await.unwrap();
    // Slowloris: a header line every 100 ms, on a new connection and on a kept-alive one
    // after a first request was answered (the timer starts again for every head). The
    // third opens with an HTTP/1 request whose method is `PRI`, like HTTP/2's preface: it
    // must not pass for HTTP/2, whose connections have no heads to time.
    let trickle = |first: Option<&'static [u8]>| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let mut buf = vec![0; 4096];
        if let Some(first) = first {
            s.write_all(first).await.unwrap();
            let n = s.read(&mut buf).await.unwrap();
            let reply = String::from_utf8_lossy(&buf[..n]);
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        }
        let started = Instant::now();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n").await.unwrap();
        let mut i = 0;
        loop {
            tokio::select! {
                read = s.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => panic!("answered: {}", String::from_utf8_lossy(&buf[..n])),
                },
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    i += 1;
                    if s.write_all(format!("x-{i}: y\r\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
            assert!(started.elapsed() < Duration::from_secs(4), "still open after 4 s");
        }
        started.elapsed()
    };
    let (fresh, kept, pri) = tokio::join!(
        trickle(None),
        trickle(Some(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")),
        trickle(Some(b"PRI /ok HTTP/1.1\r\nHost: a\r\n\r\n")),
    );
    // Within 1.25 x the timeout (the watchdog checks every quarter of it), plus slack.
    for took in [fresh, kept, pri] {
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
    }
    // The trickled heads never became requests; the first one on the kept-alive connection did.
    let seen: Vec<String> = rec.seen().into_iter().map(|r| r.target).collect();
    assert!(seen.iter().all(|t| t != "/slow"), "{seen:?}");
    assert!(seen.iter().any(|t| t == "/ok"), "{seen:?}");
    // Meanwhile and afterwards, others are served.
    assert_eq!(get(gw.addr, "/ok", &[]).await.status, 200);
    gw.shutdown().await;
}

/// The header timeout times request heads only: a response body that takes longer than it
/// to arrive, and an HTTP/2 connection left open between requests, are not cut by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_cuts_neither_a_slow_response_nor_an_idle_http2_connection() {
    // An upstream whose body for /slow comes in two parts, 2.5 s apart.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello";
                    let _ = s.write_all(head).await;
                    if buf[..n].starts_with(b"GET /slow") {
                        tokio::time::sleep(Duration::from_millis(2500)).await;
                    }
                    let _ = s.write_all(b"world").await;
                }
            });
        }
    });
    let text = config_text(up, "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n")
        .replace("[server]\n", "[server]\nheader_timeout = \"1s\"\nidle_timeout = \"10s\"\n");
    let gw = sluice::start(source(text)).await.unwrap();
    let reply = raw(gw.addr, &get_raw("/slow", "a"), false).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(reply.ends_with("helloworld"), "{reply}");

    // HTTP/2 (prior knowledge): requests 2.5 s apart on one connection, nothing between.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::get(format!("http://{}/h2", gw.addr))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.expect("the connection is still open");
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        assert_eq!(&body[..], b"helloworld");
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    driver.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_together_cannot_hold_more_memory_than_the_budget() {
    let (_rec, up) = Recorder::start().await;
    let text = config_text(
        up,
        &format!(
            "[plugins.faults]\nmodule = \"{}\"\n\n[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n\
             plugins = [\"faults\"]\n",
            plugin("sluice_test_faults")
        ),
    )
    .replace(
        "max_instances = 64\n",
        "max_instances = 64\nmax_memory_mib = 32\nmemory_budget_mib = 48\n",
    );
    let gw = sluice::start(source(text)).await.unwrap();
    let runtime = gw.reloader.runtime().clone();
    let addr = gw.addr;
    // Eight requests at once, each allocating until it is stopped.
    let hogs: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(addr, "/", &[("x-fault", "oom")]).await.status }))
        .collect();
    let mut peak = 0;
    while !hogs.iter().all(|h| h.is_finished()) {
        peak = peak.max(runtime.memory.used());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for h in hogs {
        assert_eq!(h.await.unwrap(), 500);
    }
    assert!(peak <= 48 << 20, "peak {peak}");
    // Memory comes back, and the plugin serves again.
    assert_eq!(get(addr, "/", &[]).await.status, 200);
    assert!(runtime.memory.used() <= 8 << 20, "{}", runtime.memory.used());
    gw.shutdown().await;
}

/// An upstream that answers every request with `response` as written, then keeps the
/// connection open (silent) until the test ends.
async fn raw_upstream(response: &'static [u8]) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                if crate::common::read_head(&mut s).await.is_none() {
                    return;
                }
                let _ = s.write_all(response).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_response_framed_two_ways_is_refused() {
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let gw = gateway(up, "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n").await;
    // Twice: the connection that carried it is not used again.
    for _ in 0..2 {
        let reply = raw(gw.addr, &get_raw("/x", "a"), false).await;
        assert_eq!(status_of(&reply), 502, "{reply}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stalled_upstream_body_is_cut_when_the_connection_goes_quiet() {
    let up = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
    let text = config_text(up, "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n")
        .replace("[server]\n", "[server]\nidle_timeout = \"1s\"\n");
    let gw = sluice::start(source(text)).await.unwrap();
    let started = Instant::now();
    let reply = raw(gw.addr, &get_raw("/x", "a"), false).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(reply.ends_with("hello"), "{reply}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
    gw.shutdown().await;
}

#[test]
fn ten_thousand_routes_check_in_well_under_a_second_of_route_analysis() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\nendpoints = [\"127.0.0.1:9\"]\n",
    );
    for i in 0..10_000 {
        text += &format!("[[routes]]\nprefix = \"/r{i}\"\nupstream = \"u\"\n");
    }
    let config = dir.path().join("routes.toml");
    std::fs::write(&config, text).unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Once 129 s for 5,000; now milliseconds (benches: route_table). The bound leaves room
    // for a loaded CI machine.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
