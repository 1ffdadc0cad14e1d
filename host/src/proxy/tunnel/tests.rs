use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::*;

fn settings(idle: u64, lifetime: u64, max_frame: u64) -> WebSocketSettings {
    WebSocketSettings {
        idle_timeout: Duration::from_secs(idle),
        max_lifetime: Duration::from_secs(lifetime),
        max_frame_bytes: max_frame,
    }
}

/// A tunnel between two in-memory pipes: (client end, upstream end, the tunnel's result).
fn tunnel(s: WebSocketSettings) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<End>) {
    let (client, gateway_client) = duplex(64 * 1024);
    let (gateway_upstream, upstream) = duplex(64 * 1024);
    let run = tokio::spawn(run(gateway_client, gateway_upstream, s));
    (client, upstream, run)
}

async fn read_all(mut s: DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn bytes_pass_both_ways_and_a_close_from_both_ends_it() {
    let (mut client, mut upstream, run) = tunnel(settings(60, 3600, 1024));
    client.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']).await.unwrap();
    let mut got = [0u8; 8];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[6..], b"hi");
    upstream.write_all(&[0x81, 0x02, b'y', b'o']).await.unwrap();
    let mut got = [0u8; 4];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[2..], b"yo");
    client.shutdown().await.unwrap();
    upstream.shutdown().await.unwrap();
    assert_eq!(run.await.unwrap(), End::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_idle_tunnel_is_closed_with_1001() {
    let (client, _upstream, run) = tunnel(settings(10, 3600, 1024));
    let started = tokio::time::Instant::now();
    assert_eq!(run.await.unwrap(), End::IdleTimeout);
    assert!((10..=13).contains(&started.elapsed().as_secs()));
    let sent = read_all(client).await;
    assert_eq!(&sent[..4], &[0x88, 14, 0x03, 0xe9]);
}

#[tokio::test(start_paused = true)]
async fn traffic_keeps_it_open_until_its_lifetime() {
    let (mut client, mut upstream, run) = tunnel(settings(10, 30, 1024));
    let started = tokio::time::Instant::now();
    let chatter = tokio::spawn(async move {
        let mut buf = [0u8; 6];
        loop {
            if client.write_all(&[0x89, 0x80, 0, 0, 0, 0]).await.is_err() {
                return;
            }
            if upstream.read_exact(&mut buf).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    assert_eq!(run.await.unwrap(), End::MaxLifetime);
    assert!((30..=31).contains(&started.elapsed().as_secs()), "then a lingering close");
    chatter.abort();
}

#[tokio::test]
async fn a_frame_over_the_limit_never_reaches_the_upstream() {
    let (mut client, upstream, run) = tunnel(settings(60, 3600, 100));
    // One small frame, then one declaring 1000 bytes.
    let mut bytes = vec![0x82, 0x80 | 3, 0, 0, 0, 0, 1, 2, 3];
    bytes.extend_from_slice(&[0x82, 0x80 | 126, 0x03, 0xe8, 0, 0, 0, 0]);
    bytes.extend(std::iter::repeat_n(9u8, 1000));
    client.write_all(&bytes).await.unwrap();
    assert_eq!(run.await.unwrap(), End::FrameTooLarge);
    assert_eq!(read_all(upstream).await, &bytes[..9], "the small frame only");
    let mut close = [0u8; 4];
    client.read_exact(&mut close).await.unwrap();
    assert_eq!(close, [0x88, 17, 0x03, 0xf1], "1009");
}

#[tokio::test]
async fn no_close_frame_lands_inside_an_upstream_frame() {
    let (mut client, mut upstream, run) = tunnel(settings(60, 3600, 100));
    // The upstream is part way through a 200-byte frame when the client oversteps.
    let mut partial = vec![0x82, 126, 0, 200];
    partial.extend(std::iter::repeat_n(5u8, 50));
    upstream.write_all(&partial).await.unwrap();
    let mut got = vec![0u8; partial.len()];
    client.read_exact(&mut got).await.unwrap();
    client.write_all(&[0x82, 0x80 | 126, 0x10, 0x00, 0, 0, 0, 0]).await.unwrap();
    assert_eq!(run.await.unwrap(), End::FrameTooLarge);
    assert!(read_all(client).await.is_empty(), "closed without a frame");
}

#[test]
fn the_accept_value_is_rfc_6455s_and_keys_are_fresh() {
    // RFC 6455 section 1.3's example.
    let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(accept_for(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let (a, b) = (new_key().unwrap(), new_key().unwrap());
    assert_ne!(a, b);
    assert_eq!(a.len(), 24, "16 bytes in base64: {a:?}");
}

#[test]
fn websocket_requests_are_told_apart_by_version() {
    let request = |method: &str, version, protocol: Option<&'static str>, upgrade: bool| {
        let mut b = http::Request::builder().method(method).uri("/ws").version(version);
        if upgrade {
            b = b.header("connection", "Upgrade").header("upgrade", "websocket");
        }
        if let Some(p) = protocol {
            b = b.extension(hyper::ext::Protocol::from_static(p));
        }
        b.body(()).unwrap().into_parts().0
    };
    use http::Version as V;
    assert_eq!(wants_websocket(&request("GET", V::HTTP_11, None, true)), Wants::Http1);
    assert_eq!(wants_websocket(&request("GET", V::HTTP_11, None, false)), Wants::No);
    let h2 = request("CONNECT", V::HTTP_2, Some("websocket"), false);
    assert_eq!(wants_websocket(&h2), Wants::Http2);
    // Another extended CONNECT, a plain CONNECT, and HTTP/1.1 headers over h2 are not.
    assert_eq!(
        wants_websocket(&request("CONNECT", V::HTTP_2, Some("webtransport"), false)),
        Wants::No
    );
    assert_eq!(wants_websocket(&request("CONNECT", V::HTTP_2, None, false)), Wants::No);
    assert_eq!(wants_websocket(&request("GET", V::HTTP_2, None, true)), Wants::No);
    let mut parts = h2;
    h2_as_get(&mut parts);
    assert_eq!(parts.method, http::Method::GET);
    assert!(parts.extensions.get::<hyper::ext::Protocol>().is_none());
}
