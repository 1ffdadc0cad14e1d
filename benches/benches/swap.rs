//! Hot-swap latency: the time from writing a new plugin module to the first response served
//! by it, through the real file watcher, with a cold compiled cache (bytes never seen, so a
//! full compile) and a warm one (bytes seen before: loaded from the disk cache or memory).
//!
//! Run with `./dev bench --bench swap`. The watcher's settle delay (`reload::SETTLE`) is
//! part of every number, as it is for users.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const COLD: usize = 8;
const WARM: usize = 20;

fn module(stem: &str) -> Vec<u8> {
    let exe = std::env::current_exe().unwrap();
    let path = exe.ancestors().nth(3).unwrap().join(format!("wasm32-wasip2/guest/{stem}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run ./dev bench", path.display()))
}

/// The component with a custom section appended: same behaviour, new content hash.
fn with_custom_section(mut wasm: Vec<u8>, payload: &str) -> Vec<u8> {
    let name = b"sluice-bench";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload.as_bytes());
    wasm.push(0); // custom section id
    let mut len = section.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        wasm.push(if len == 0 { byte } else { byte | 0x80 });
        if len == 0 {
            break;
        }
    }
    wasm.extend_from_slice(&section);
    wasm
}

fn install(bytes: &[u8], dest: &Path) {
    let tmp = dest.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, dest).unwrap();
}

async fn stamp(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
) -> String {
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let v =
        resp.headers().get("x-stamp").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let _ = resp.into_body().collect().await;
    v
}

fn summary(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let median = v[v.len() / 2];
    println!(
        "{name:<34} n={:<3} median {median:>9.1?}  min {:>9.1?}  max {:>9.1?}",
        v.len(),
        v[0],
        v[v.len() - 1]
    );
    median
}

fn main() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stamp.wasm");
        let (v1, v2) = (module("sluice_test_stamp_v1"), module("sluice_test_stamp_v2"));
        install(&v1, &file);
        let upstream = sluice::echo::spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[runtime]\ncache_dir = \"{}\"\n\
             [upstreams.echo]\nendpoints = [\"{upstream}\"]\n\
             [plugins.stamp]\nmodule = \"{}\"\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"echo\"\nplugins = [\"stamp\"]\n",
            dir.path().join("cache").display(),
            file.display()
        );
        let source =
            sluice::ConfigSource::Text { text, name: "bench".into(), base_dir: PathBuf::from(".") };
        let gw = sluice::start(source).await.unwrap();
        let _watch = sluice::reload::watch(gw.reloader.clone()).unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        let url = format!("http://{}/", gw.addr);

        let swap = async |bytes: &[u8], want: &str| {
            let started = Instant::now();
            install(bytes, &file);
            while stamp(&client, &url).await != want {
                assert!(started.elapsed() < Duration::from_secs(30), "swap never served");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            started.elapsed()
        };
        let mut cold = Vec::new();
        for i in 0..COLD {
            let (base, want) = if i % 2 == 0 { (&v2, "v2") } else { (&v1, "v1") };
            cold.push(swap(&with_custom_section(base.clone(), &format!("cold-{i}")), want).await);
        }
        let mut warm = Vec::new();
        for i in 0..WARM {
            let (bytes, want) = if i % 2 == 0 { (&v2, "v2") } else { (&v1, "v1") };
            warm.push(swap(bytes, want).await);
        }
        println!(
            "hot swap: file write -> first response from the new version ({}ms settle included)",
            sluice::reload::SETTLE.as_millis()
        );
        let c = summary("cold cache (compile)", cold);
        let w = summary("warm cache (disk or memory)", warm);
        println!("cold / warm = {:.2}x", c.as_secs_f64() / w.as_secs_f64());
        gw.shutdown().await;
    });
}
