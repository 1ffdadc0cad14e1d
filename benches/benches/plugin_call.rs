//! Micro-benchmarks of the plugin runtime: one hook call with a reused instance, with a
//! fresh instance per call, through an Extism plugin, and a chain of four plugins; each shipped plugin's request phase
//! and the jwt -> rate-limit -> cors -> transform chain; router lookups; and validating a
//! large config.
//!
//! Run with `./dev bench` (it builds the plugins first). Every iteration includes a
//! `block_on` of a current-thread runtime, the same for each case, so compare cases by
//! their ratios.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::config::{self, FailPolicy, InstanceModel, PluginKind};
use sluice::message::{Body, RequestMeta, RequestMsg};
use sluice::plugin::{Chain, NamedPlugin, Runtime};
use sluice::router::{PathPattern, RequestView, Router, Rule};

fn plugin_path(stem: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap();
    let path = match stem {
        // The Extism example is a core module, built for wasm32-unknown-unknown.
        "sluice_extism_example" => target.join(format!("wasm32-unknown-unknown/guest/{stem}.wasm")),
        _ => target.join(format!("wasm32-wasip2/guest/{stem}.wasm")),
    };
    assert!(path.is_file(), "{} missing: run ./dev bench", path.display());
    path
}

fn runtime_config() -> config::Runtime {
    config::Runtime {
        plugin_dirs: vec![],
        // SLUICE_BENCH_CACHE: compile through a disk cache, so a second run (say, under
        // valgrind, where compiling is slow) only loads the compiled modules.
        cache_dir: std::env::var_os("SLUICE_BENCH_CACHE").map(PathBuf::from),
        // SLUICE_BENCH_INSTANCES: a smaller pool reserves less address space (valgrind
        // cannot reserve what 64 instances' memories need).
        max_instances: std::env::var("SLUICE_BENCH_INSTANCES").map_or(64, |n| n.parse().unwrap()),
        max_memory_bytes: 64 << 20,
        memory_budget_bytes: 1 << 30,
        quick_start_min_bytes: None,
        kv: Default::default(),
    }
}

fn spec(name: &str, stem: &str, config_json: &str, instances: InstanceModel) -> config::Plugin {
    config::Plugin {
        name: Arc::from(name),
        module: plugin_path(stem),
        kind: PluginKind::Component,
        config_json: config_json.to_owned(),
        files: Vec::new(),
        instances,
        on_error: FailPolicy::Fail,
        timeout: Duration::from_secs(1),
        max_instances: 64,
        idle_timeout: Duration::from_secs(60),
        rollout: None,
    }
}

/// A typical request: six headers.
fn request() -> RequestMsg {
    let (mut parts, ()) = http::Request::get("/api/users/7?page=2").body(()).unwrap().into_parts();
    // The headers in a map with room to spare, as hyper hands them to the gateway on a
    // kept-alive connection: it parses each request into the header map of the connection's
    // previous message, which keeps its capacity. A map built to size would grow on the
    // plugin's first insert (~1,200 instructions of `HeaderMap::try_grow`, the map's cost,
    // not the call's, and one the proxy does not pay: docs/performance.md).
    let headers = &mut parts.headers;
    headers.reserve(16);
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("authorization", "Bearer abc.def.ghi"),
        ("x-request-id", "bench"),
        ("cookie", "session=1"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    let meta = Arc::new(RequestMeta {
        id_header: http::HeaderValue::from_static("bench"),
        client_ip: "127.0.0.1".parse().unwrap(),
        client_header: http::HeaderValue::from_static("127.0.0.1"),
        route: Arc::from("/api/users"),
        params: Vec::new(),
        max_body_bytes: 1 << 20,
        trace_id: 0,
        calls: None,
        client_cert: None,
    });
    RequestMsg { parts, body: Body::empty(), meta, context: Default::default() }
}

const SET_HEADER: &str = r#"{"request":{"set":{"x-env":"bench"}}}"#;
const DENY_ADMIN: &str = r#"{"path_prefix":"/admin"}"#;

fn plugin_calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let runtime = Runtime::new(&runtime_config()).unwrap();
    let load = |name: &str, stem: &str, cfg: &str, model| {
        rt.block_on(async {
            let mut s = spec(name, stem, cfg, model);
            if stem == "sluice_extism_example" {
                s.kind = PluginKind::Extism;
            }
            let module = runtime.load_module(&s.module, s.kind).await.unwrap();
            Arc::new(
                NamedPlugin::load(runtime.clone(), module, s, Duration::from_secs(5), None)
                    .await
                    .unwrap(),
            )
        })
    };
    let reused = load("t", "sluice_plugin_header_transform", SET_HEADER, InstanceModel::Reuse);
    // The same plugin on the baseline compiler's code, as a large module serves until
    // Cranelift's code is swapped in (`runtime.quick_start`; no cache, so it is compiled).
    let quick = {
        let cfg =
            config::Runtime { quick_start_min_bytes: Some(0), cache_dir: None, ..runtime_config() };
        let quick = Runtime::serving(&cfg).unwrap();
        let s = spec("q", "sluice_plugin_header_transform", SET_HEADER, InstanceModel::Reuse);
        rt.block_on(async {
            let module = quick.load_module(&s.module, s.kind).await.unwrap();
            assert_eq!(module.source, sluice::plugin::CodeSource::Baseline);
            NamedPlugin::load(quick.clone(), module, s, Duration::from_secs(5), None).await.unwrap()
        })
    };
    // The same kind of work as an Extism plugin: JSON in, a header set, JSON out.
    let extism = load("x", "sluice_extism_example", "{}", InstanceModel::Reuse);
    let fresh = load("t", "sluice_plugin_header_transform", SET_HEADER, InstanceModel::Fresh);
    let chain = Chain::new(vec![
        load("deny", "sluice_plugin_deny", DENY_ADMIN, InstanceModel::Reuse),
        reused.clone(),
        load("t2", "sluice_plugin_header_transform", SET_HEADER, InstanceModel::Reuse),
        load("deny2", "sluice_plugin_deny", DENY_ADMIN, InstanceModel::Reuse),
    ]);

    let mut g = c.benchmark_group("hook_call");
    g.bench_function("reused_instance", |b| {
        b.iter(|| rt.block_on(reused.on_request(request())).1.unwrap())
    });
    g.bench_function("reused_instance_baseline_code", |b| {
        b.iter(|| rt.block_on(quick.on_request(request())).1.unwrap())
    });
    g.bench_function("extism_reused_instance", |b| {
        b.iter(|| rt.block_on(extism.on_request(request())).1.unwrap())
    });
    g.bench_function("fresh_instance", |b| {
        b.iter(|| rt.block_on(fresh.on_request(request())).1.unwrap())
    });
    g.bench_function("chain_of_4_request_phase", |b| {
        b.iter(|| rt.block_on(chain.run_request(request())).unwrap())
    });
    g.bench_function("no_plugin_baseline", |b| b.iter(|| rt.block_on(async { request() })));
    g.finish();
}

/// A request each shipped plugin lets through: a valid HS256 token (expires in 2100), an API
/// key, Basic credentials (bcrypt cost 8; verified once, then served from the plugin's
/// cache, which is what a returning client costs) and a CORS origin.
fn authorized_request() -> RequestMsg {
    const BEARER: &str = "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZGEiLCJleHAiOjQxMDI0NDQ4MDB9.dVQ2bwQWYtL_mtTRnwqaZ9yzRefPigE8YP99zP0w7Jw";
    let mut req = request();
    let h = &mut req.parts.headers;
    h.insert("authorization", http::HeaderValue::from_static(BEARER));
    h.insert("x-api-key", http::HeaderValue::from_static("bench-key"));
    h.insert("x-basic", http::HeaderValue::from_static("Basic YWRhOmxvdmVsYWNl"));
    h.insert("origin", http::HeaderValue::from_static("https://app.example.com"));
    req
}

/// Each shipped plugin's request phase on a request it lets through, and the
/// jwt -> rate-limit -> cors -> transform chain of config/api-gateway.toml.
fn shipped_plugins(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let runtime = Runtime::new(&runtime_config()).unwrap();
    let load = |name: &str, stem: &str, cfg: &str| {
        rt.block_on(async {
            let s = spec(name, stem, cfg, InstanceModel::Reuse);
            let module = runtime.load_module(&s.module, s.kind).await.unwrap();
            Arc::new(
                NamedPlugin::load(runtime.clone(), module, s, Duration::from_secs(5), None)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}")),
            )
        })
    };
    let plugins = [
        (
            "jwt",
            load(
                "jwt",
                "sluice_plugin_jwt",
                r#"{"keys":[{"alg":"HS256","secret":"bench-secret-of-at-least-thirty-two-bytes"}],"forward_claims":{"sub":"x-user-id"}}"#,
            ),
        ),
        (
            "api_key",
            load(
                "api-key",
                "sluice_plugin_api_key",
                r#"{"keys":{"sha256:b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7":"bench"},"keep_key":true}"#,
            ),
        ),
        (
            "basic_auth",
            load(
                "basic-auth",
                "sluice_plugin_basic_auth",
                r#"{"users":{"ada":"$2b$08$Y8S1QNPgXHgFNp/7fl3gW.PfbiM2fUyclSFlvcZToTaPQ2kxnvxe."}}"#,
            ),
        ),
        (
            "rate_limit_sliding_window",
            load(
                "rl-sw",
                "sluice_plugin_rate_limit",
                r#"{"limit":1000000000000,"window":"1h","key":"header:x-user-id"}"#,
            ),
        ),
        (
            "rate_limit_token_bucket",
            load(
                "rl-tb",
                "sluice_plugin_rate_limit",
                r#"{"algorithm":"token-bucket","limit":1000000000000,"window":"1h"}"#,
            ),
        ),
        (
            "cors",
            load("cors", "sluice_plugin_cors", r#"{"allow_origins":["https://app.example.com"]}"#),
        ),
        (
            "transform",
            load(
                "transform",
                "sluice_plugin_transform",
                r#"{"request":{"path":{"strip_prefix":"/api","add_prefix":"/v2"},"headers":{"set":{"x-request-id":"${request_id}"}},"query":{"remove":["page"]}}}"#,
            ),
        ),
    ];
    // basic-auth's Authorization comes from x-basic here, so jwt's token can stay put.
    let basic_request = || {
        let mut r = authorized_request();
        let basic = r.parts.headers.remove("x-basic").unwrap();
        r.parts.headers.insert("authorization", basic);
        r
    };
    let mut g = c.benchmark_group("shipped_plugin_request_phase");
    for (name, plugin) in &plugins {
        let make = if *name == "basic_auth" {
            &basic_request as &dyn Fn() -> RequestMsg
        } else {
            &authorized_request
        };
        // Refuse to measure a plugin that answers instead of letting the request through.
        let (_, decision) = rt.block_on(plugin.on_request(make()));
        assert!(
            matches!(decision, Ok(sluice::plugin::Decision::Continue)),
            "{name} did not let the request through"
        );
        g.bench_function(*name, |b| b.iter(|| rt.block_on(plugin.on_request(make())).1.unwrap()));
    }
    let chain = Chain::new(vec![
        plugins[0].1.clone(),
        plugins[3].1.clone(),
        plugins[5].1.clone(),
        plugins[6].1.clone(),
    ]);
    g.bench_function("chain_jwt_rate_limit_cors_transform", |b| {
        b.iter(|| rt.block_on(chain.run_request(authorized_request())).unwrap())
    });
    g.bench_function("no_plugin_baseline", |b| {
        b.iter(|| rt.block_on(async { authorized_request() }))
    });
    g.finish();
}

/// Route tables of `n` routes: half prefixes (`/svc{i}/api/v{k}`), half parameter patterns
/// (`/svc{i}/users/{id}`), and a root fallback; lookups that hit a prefix, a parameter
/// route, and the fallback (the most candidates to rule out).
fn router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    let get = http::Method::GET;
    let headers = http::HeaderMap::new();
    for n in [100, 1000] {
        let mut rules = vec![(Rule::path(PathPattern::parse("/", true).unwrap()), 0)];
        for i in 0..n / 2 {
            let prefix = PathPattern::parse(&format!("/svc{i}/api/v{}", i % 3), true).unwrap();
            let param = PathPattern::parse(&format!("/svc{i}/users/{{id}}"), false).unwrap();
            rules.push((Rule::path(prefix), 2 * i + 1));
            rules.push((Rule::path(param), 2 * i + 2));
        }
        let r = Router::new(rules);
        for (what, path) in [
            ("prefix", format!("/svc{}/api/v{}/items/42", n / 4, (n / 4) % 3)),
            ("param", format!("/svc{}/users/42", n / 4)),
            ("fallback", format!("/svc{}/other/42", n / 4)),
        ] {
            let probe = RequestView {
                method: &get,
                path: &path,
                host: None,
                headers: &headers,
                query: None,
                listener: "default",
            };
            assert!(r.find(&probe).is_some());
            g.bench_function(format!("{what}_match_{n}_routes"), |b| {
                b.iter(|| *r.find(std::hint::black_box(&probe)).unwrap().value)
            });
        }
    }
    g.finish();
}

/// Building a route table and checking it, on the shape that was once quadratic: `n`
/// prefix routes `/r{i}` plus a root fallback.
fn route_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_table");
    g.sample_size(10);
    for n in [1_000, 10_000] {
        let mut rules = vec![Rule::path(PathPattern::parse("/", true).unwrap())];
        rules.extend(
            (0..n).map(|i| Rule::path(PathPattern::parse(&format!("/r{i}"), true).unwrap())),
        );
        g.bench_function(format!("analyze_{n}_prefix_routes"), |b| {
            b.iter(|| sluice::router::analyze(std::hint::black_box(&rules)))
        });
        g.bench_function(format!("build_{n}_prefix_routes"), |b| {
            b.iter(|| Router::new(rules.iter().cloned().enumerate().map(|(i, r)| (r, i))))
        });
    }
    g.finish();
}

/// A large config: `routes` routes (half parameter paths, half prefixes, some with host,
/// method and header conditions), 50 upstreams and 100 named plugins, as text.
fn large_config(routes: usize) -> String {
    let dir = plugin_path("sluice_plugin_header_transform").parent().unwrap().to_owned();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[runtime]\nplugin_dir = {:?}\n",
        dir.display().to_string()
    );
    for u in 0..50 {
        text += &format!("[upstreams.u{u}]\nendpoints = [\"10.0.{u}.1:80\", \"10.0.{u}.2:80\"]\n");
    }
    for p in 0..100 {
        text += &format!(
            "[plugins.p{p}]\nmodule = \"header-transform\"\nconfig = {{ request = {{ set = {{ \"x-p\" = \"{p}\" }} }} }}\n"
        );
    }
    for r in 0..routes {
        let (u, p, q) = (r % 50, r % 100, (r + 1) % 100);
        let rule = match r % 4 {
            0 => format!("path = \"/svc{r}/users/{{id}}\""),
            1 => format!("prefix = \"/svc{r}/api\"\nmethods = [\"GET\", \"POST\"]"),
            2 => format!("prefix = \"/svc{r}\"\nhosts = [\"api{r}.example.com\"]"),
            _ => format!(
                "prefix = \"/svc{r}/v2\"\nheaders = [{{ name = \"x-tenant\", exact = \"t{r}\" }}]"
            ),
        };
        text += &format!(
            "[[routes]]\nname = \"r{r}\"\n{rule}\nupstream = \"u{u}\"\nplugins = [\"p{p}\", \"p{q}\"]\n"
        );
    }
    text
}

/// `sluice check`'s first half on a large config: parsing and validating the TOML (the
/// plugin modules are resolved, not compiled; compiling is per module and cached).
fn config_validation(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_validation");
    for routes in [100, 1000] {
        let text = large_config(routes);
        let base = std::path::Path::new(".");
        config::parse(&text, "bench.toml", base).unwrap_or_else(|e| panic!("{e}"));
        g.bench_function(format!("{routes}_routes_100_plugins_50_upstreams"), |b| {
            b.iter(|| config::parse(std::hint::black_box(&text), "bench.toml", base).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = plugin_calls, shipped_plugins, router, route_table, config_validation
}
criterion_main!(benches);
