//! Response compression from the outside: curl (which decodes gzip, br and zstd) against
//! the gateway in front of the echo upstream, with plugins in the chain.

use std::process::Command;

use crate::common::*;

fn config() -> String {
    r#"
[plugins.etag]
module = "header-transform"
config = { response_headers = { "etag" = "\"v7\"" } }

[plugins.text]
module = "header-transform"
config = { response_headers = { "content-type" = "text/plain" } }

[[routes]]
prefix = "/json"
upstream = "echo"
plugins = ["etag"]
compression = { min_bytes = 100 }

[[routes]]
prefix = "/bytes"
upstream = "echo"
plugins = ["text"]
compression = { encodings = ["gzip", "br"] }

[[routes]]
prefix = "/plain"
upstream = "echo"
"#
    .to_owned()
}

/// curl with `args` against `url`: (response headers lower-cased, body as curl decoded it,
/// bytes on the wire).
fn curl(url: &str, args: &[&str]) -> (String, Vec<u8>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "%{size_download}", "-D"])
        .arg(&headers)
        .args(["-o"])
        .arg(dir.path().join("body"))
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {args:?} {url}");
    let size = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    let body = std::fs::read(dir.path().join("body")).unwrap_or_default();
    (std::fs::read_to_string(headers).unwrap().to_ascii_lowercase(), body, size)
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_compressed_by_accept_encoding_after_the_plugins() {
    let gw = gateway(echo().await, &config()).await;
    let base = format!("http://{}", gw.addr);

    for encoding in ["gzip", "br", "zstd"] {
        let (h, body, wire) = curl(
            &format!("{base}/json/x"),
            &["--compressed", "-H", &format!("accept-encoding: {encoding}")],
        );
        assert!(h.contains(&format!("content-encoding: {encoding}\r\n")), "{h}");
        assert!(h.contains("vary: accept-encoding\r\n"), "{h}");
        assert!(h.contains("etag: w/\"v7\"\r\n"), "the plugin's ETag, made weak: {h}");
        assert!(!h.contains("content-length"), "{h}");
        let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(echoed["headers"].get("accept-encoding").is_none(), "asked upstream: {echoed}");
        assert!(wire < body.len() as u64, "{encoding}: {wire} on the wire for {}", body.len());
    }
    // A client that prefers one by q-value gets it; one that accepts none gets identity,
    // with Vary all the same.
    let (h, _, _) = curl(&format!("{base}/json/x"), &["-H", "accept-encoding: zstd;q=0.5, gzip"]);
    assert!(h.contains("content-encoding: gzip\r\n"), "{h}");
    let (h, body, _) = curl(&format!("{base}/json/x"), &[]);
    assert!(!h.contains("content-encoding"), "{h}");
    assert!(h.contains("vary: accept-encoding\r\n") && h.contains("etag: \"v7\"\r\n"), "{h}");
    assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
    // HEAD: the same headers as an uncompressed GET, no encoding.
    let (h, _, _) = curl(&format!("{base}/json/x"), &["-I", "-H", "accept-encoding: gzip"]);
    assert!(!h.contains("content-encoding"), "{h}");

    // A 4 MiB body streamed by the upstream, compressed as it streams.
    let (h, body, wire) = curl(
        &format!("{base}/bytes/4194304"),
        &["--compressed", "-H", "accept-encoding: br, gzip"],
    );
    assert!(h.contains("content-encoding: gzip\r\n"), "the route's order: {h}");
    assert_eq!(body.len(), 4 << 20);
    assert!(body.chunks(26).all(|c| c == &b"abcdefghijklmnopqrstuvwxyz"[..c.len()]));
    assert!(wire < 100_000, "{wire} bytes on the wire");

    // A route without compression passes Accept-Encoding and the body untouched.
    let (h, body, _) = curl(&format!("{base}/plain/x"), &["-H", "accept-encoding: gzip"]);
    assert!(!h.contains("content-encoding") && !h.contains("vary"), "{h}");
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["headers"]["accept-encoding"], "gzip");
    gw.shutdown().await;
}
