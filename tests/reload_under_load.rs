//! The hot-swap proof: continuous load while modules are swapped and the config reloaded,
//! with zero failed requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::common::*;
use crate::reload::{SWAP_BOUND, install, stamp_config, wait_for_stamp};

const CLIENTS: usize = 32;
const SWAPS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_through_50_swaps_20_reloads_a_broken_module_and_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("stamp.wasm");
    install("v1", &module, true);
    let upstream = echo().await;
    let gw = gateway(upstream, &stamp_config(&module, "gen-0")).await;
    let _watch = sluice::reload::watch(gw.reloader.clone()).unwrap();

    // The load: CLIENTS loops over one pooled keep-alive client, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let http = client();
    let url: http::Uri = format!("http://{}/", gw.addr).parse().unwrap();
    let load: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, served, failures, http, url) =
                (stop.clone(), served.clone(), failures.clone(), http.clone(), url.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req =
                        http::Request::get(url.clone()).body(Full::<Bytes>::default()).unwrap();
                    let outcome = match http.request(req).await {
                        Ok(resp) if resp.status() == 200 => {
                            resp.into_body().collect().await.map(|_| ()).map_err(|e| e.to_string())
                        }
                        Ok(resp) => Err(format!("status {}", resp.status())),
                        Err(e) => Err(e.to_string()),
                    };
                    match outcome {
                        Ok(()) => served.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            0
                        }
                    };
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut visible = Vec::with_capacity(SWAPS);
    let mut reloads = 0;
    for i in 0..SWAPS {
        let version = if i % 2 == 0 { "v2" } else { "v1" };
        install(version, &module, i % 4 < 2);
        visible.push(wait_for_stamp(gw.addr, version).await);

        if i % 5 == 1 || i % 5 == 3 {
            let label = format!("gen-{i}");
            let text = config_text(upstream, &stamp_config(&module, &label));
            gw.reloader.apply(&text, "load test").await.expect("a valid config applies");
            assert_eq!(get(gw.addr, "/", &[]).await.header("x-stamp-label"), Some(label.as_str()));
            reloads += 1;
        }
        if i == 20 {
            std::fs::write(&module, b"\0asm\x0d\x00\x01\x00 truncated garbage").unwrap();
            tokio::time::sleep(sluice::reload::SETTLE * 5).await;
            assert_eq!(get(gw.addr, "/", &[]).await.header("x-stamp"), Some(version));
        }
        if i == 30 {
            let refused = gw.reloader.apply("[server]\nlisten = \"nowhere\"\n", "load test").await;
            assert!(refused.is_err());
            assert_eq!(get(gw.addr, "/", &[]).await.status, 200);
        }
        // About 30 s in all: each version serves a while under load.
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let served = served.load(Ordering::Relaxed);
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let slowest = visible.iter().max().unwrap();
    eprintln!(
        "{served} requests in {elapsed:.1?} ({:.0}/s) through {SWAPS} swaps and {reloads} reloads; \
         swaps visible after {:?} median, {slowest:?} at most",
        served as f64 / elapsed.as_secs_f64(),
        {
            let mut v = visible.clone();
            v.sort();
            v[v.len() / 2]
        },
    );
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(reloads, 20);
    assert!(*slowest < SWAP_BOUND);
    assert!(served > 10_000, "the load was too light to prove anything: {served} requests");
    gw.shutdown().await;
}
