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

[[routes]]
prefix = "/upload"
upstream = "echo"
request_decompression = { max_bytes = 1048576 }
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

/// POSTs `body` with `Content-Encoding: coding`: (status, the echo's JSON when 200).
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    coding: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-encoding", coding)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let r = send(&client(), req).await;
    let json = serde_json::from_slice(&r.body).unwrap_or_default();
    (r.status.as_u16(), json)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_are_decoded_within_their_limit() {
    use std::io::Write;
    let gw = gateway(echo().await, &config()).await;
    let text = b"a request body that compresses well. ".repeat(10_000);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&text).unwrap();
    let gzip = gzip.finish().unwrap();
    let mut br = Vec::new();
    brotli::CompressorWriter::new(&mut br, 4096, 5, 22).write_all(&text).unwrap();
    let zstd = zstd::encode_all(&text[..], 3).unwrap();
    for (coding, body) in [("gzip", gzip.clone()), ("br", br), ("zstd", zstd)] {
        let (status, echoed) = post(gw.addr, "/upload", coding, body).await;
        assert_eq!(status, 200, "{coding}");
        assert_eq!(echoed["body_bytes"], text.len(), "{coding}: the upstream got it decoded");
        assert_eq!(echoed["body_sha256"], sha256_hex(&text));
        assert!(echoed["headers"].get("content-encoding").is_none(), "{echoed}");
    }
    // A bomb: 64 MiB of zeros in about 64 KB, over the route's 1 MiB: 413, the client's.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![0u8; 64 << 20]).unwrap();
    let bomb = bomb.finish().unwrap();
    assert_eq!(post(gw.addr, "/upload", "gzip", bomb).await.0, 413);
    assert_eq!(post(gw.addr, "/upload", "gzip", b"not gzip".to_vec()).await.0, 400);
    // Codings it does not decode, and routes without decompression, pass the bytes as sent.
    let (status, echoed) = post(gw.addr, "/upload", "deflate", b"raw".to_vec()).await;
    assert_eq!((status, echoed["headers"]["content-encoding"].as_str()), (200, Some("deflate")));
    let (_, echoed) = post(gw.addr, "/plain", "gzip", gzip.clone()).await;
    assert_eq!(echoed["body_bytes"], gzip.len());
    gw.shutdown().await;
}
