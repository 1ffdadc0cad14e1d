use std::io::Read;

use http_body_util::BodyExt;

use super::*;
use crate::config::{DEFAULT_COMPRESSION_MIN_BYTES, DEFAULT_COMPRESSION_TYPES};

const ALL: &[Encoding] = &[Encoding::Zstd, Encoding::Br, Encoding::Gzip];

fn pick(accept: &str) -> Option<&'static str> {
    let v = HeaderValue::from_str(accept).unwrap();
    negotiate(std::iter::once(&v), ALL).map(Encoding::name)
}

#[test]
fn the_highest_q_wins_and_ties_go_to_the_route_order() {
    assert_eq!(pick("gzip, deflate, br"), Some("br"));
    assert_eq!(pick("gzip, br, zstd"), Some("zstd"));
    assert_eq!(pick("gzip;q=1.0, br;q=0.5"), Some("gzip"));
    assert_eq!(pick("br;q=0, gzip"), Some("gzip"));
    assert_eq!(pick("*;q=0.1, zstd;q=0"), Some("br"));
    assert_eq!(pick("identity"), None);
    assert_eq!(pick("gzip;q=0"), None);
    assert_eq!(pick(""), None);
    // A malformed q-value drops that item only.
    assert_eq!(pick("br;q=2, gzip;q=0.001"), Some("gzip"));
    assert_eq!(pick("GZIP"), Some("gzip"));
}

fn settings() -> CompressionSettings {
    CompressionSettings {
        encodings: ALL.to_vec(),
        min_bytes: DEFAULT_COMPRESSION_MIN_BYTES,
        content_types: DEFAULT_COMPRESSION_TYPES.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn reply(body: &'static [u8], headers: &[(&str, &str)]) -> Response<BoxBody> {
    let mut r = Response::new(BoxBody::new(
        http_body_util::Full::new(Bytes::from_static(body)).map_err(|n| match n {}),
    ));
    for (k, v) in headers {
        r.headers_mut().append(
            header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    r
}

async fn run(accept: &str, r: Response<BoxBody>) -> (HeaderMap, Vec<u8>) {
    let accept = [HeaderValue::from_str(accept).unwrap()];
    let r = response(&settings(), &Method::GET, &accept, r);
    let (parts, body) = r.into_parts();
    (parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
}

fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap(),
        "br" => brotli::Decompressor::new(data, 4096).read_to_end(&mut out).unwrap(),
        "zstd" => zstd::stream::read::Decoder::new(data).unwrap().read_to_end(&mut out).unwrap(),
        e => panic!("{e}"),
    };
    out
}

static JSON: &[u8] = include_bytes!("../../../../docs/admin-openapi.json");

#[tokio::test]
async fn each_encoding_round_trips_and_the_headers_follow() {
    for encoding in ["gzip", "br", "zstd"] {
        let len = JSON.len().to_string();
        let r = reply(
            JSON,
            &[("content-type", "application/json"), ("content-length", &len), ("etag", "\"v1\"")],
        );
        let (h, body) = run(encoding, r).await;
        assert_eq!(h["content-encoding"], encoding);
        assert!(!h.contains_key("content-length"));
        assert_eq!(h["vary"], "accept-encoding");
        assert_eq!(h["etag"], "W/\"v1\"");
        assert!(body.len() * 3 < JSON.len(), "{encoding}: {} of {}", body.len(), JSON.len());
        assert_eq!(decode(encoding, &body), JSON);
    }
}

#[tokio::test]
async fn what_is_not_compressed_passes_as_it_came() {
    let json = [("content-type", "application/json; charset=utf-8")];
    // The client accepts none.
    let (h, body) = run("identity", reply(JSON, &json)).await;
    assert!(!h.contains_key("content-encoding"));
    assert_eq!(h["vary"], "accept-encoding", "a compressible type varies all the same");
    assert_eq!(body, JSON);
    // Small, by its Content-Length.
    let (h, _) = run("gzip", reply(b"{}", &[json[0], ("content-length", "2")])).await;
    assert!(!h.contains_key("content-encoding"));
    // Already encoded, a range, no-transform, or not a compressible type.
    for extra in [
        ("content-encoding", "gzip"),
        ("content-range", "bytes 0-9/100"),
        ("cache-control", "public, no-transform"),
    ] {
        let (h, _) = run("br", reply(JSON, &[json[0], extra])).await;
        assert_ne!(h.get("content-encoding").map(|v| v.to_str().unwrap()), Some("br"), "{extra:?}");
    }
    let (h, _) = run("br", reply(JSON, &[("content-type", "image/png")])).await;
    assert!(!h.contains_key("content-encoding") && !h.contains_key("vary"));
    // text/* covers text/html.
    let (h, _) = run("br", reply(JSON, &[("content-type", "text/html")])).await;
    assert_eq!(h["content-encoding"], "br");
}
