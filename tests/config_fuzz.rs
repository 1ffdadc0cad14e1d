//! Arbitrary configs into `sluice check`'s parser and validator: every one is either
//! refused with errors or accepted with values the request path can use; none panics.
//! Bounded: a fixed number of cases, each parsed in microseconds.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

/// Values a hostile or careless operator might write anywhere.
fn value() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("0".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-1".to_owned()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:?}") } else { "nan".to_owned() }),
    ];
    let duration =
        (any::<u64>(), prop::sample::select(vec!["ns", "ms", "s", "m", "h", "days", "years"]))
            .prop_map(|(n, unit)| format!("\"{n}{unit}\""));
    let text = prop_oneof![
        Just("\"\"".to_owned()),
        Just("\"127.0.0.1:0\"".to_owned()),
        Just("\"127.0.0.1:9\"".to_owned()),
        Just("\"[::1]:65535\"".to_owned()),
        Just("\"header-transform\"".to_owned()),
        Just("\"/\"".to_owned()),
        Just("\"/a/{id}\"".to_owned()),
        Just("\"10.0.0.0/8\"".to_owned()),
        "[a-z/{}*:.]{0,12}".prop_map(|s| format!("{s:?}")),
    ];
    let plausible =
        prop::sample::select(vec!["\"5s\"", "\"250ms\"", "1", "8", "100", "true", "false"])
            .prop_map(str::to_owned);
    let scalar = prop_oneof![
        6 => plausible,
        1 => number,
        1 => duration,
        1 => text.clone(),
    ];
    prop_oneof![
        4 => scalar.clone(),
        1 => prop::collection::vec(scalar, 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => text.prop_map(|t| format!("{{ address = {t}, weight = 0 }}")),
    ]
}

/// Each key with values that are valid for it; the fuzzer mixes in hostile ones.
type Keys = &'static [(&'static str, &'static [&'static str])];

const DURATION: &[&str] = &["\"5s\"", "\"250ms\"", "\"24h\""];
const COUNT: &[&str] = &["1", "8", "100"];

const SERVER_KEYS: Keys = &[
    ("listen", &["\"127.0.0.1:0\""]),
    ("workers", COUNT),
    ("connect_timeout", DURATION),
    ("request_timeout", DURATION),
    ("shutdown_timeout", DURATION),
    ("max_body_bytes", &["1024", "0"]),
    ("merge_slashes", &["true", "false"]),
    ("escaped_slashes", &["\"reject\"", "\"keep\""]),
    ("headers_with_underscores", &["\"drop\"", "\"reject\"", "\"allow\""]),
    ("trusted_proxies", &["[\"10.0.0.0/8\", \"::1\"]", "[]"]),
    ("body_timeout", DURATION),
    ("header_timeout", DURATION),
    ("idle_timeout", DURATION),
    ("max_connections", COUNT),
    ("max_connections_per_ip", &["1"]),
];
const RUNTIME_KEYS: Keys = &[
    ("max_instances", COUNT),
    ("max_memory_mib", &["64", "128"]),
    ("memory_budget_mib", &["4096"]),
    ("cache", &["false"]),
];
const UPSTREAM_KEYS: Keys = &[
    ("strategy", &["\"round_robin\"", "\"p2c\"", "\"least_connections\""]),
    ("connect_timeout", DURATION),
    ("timeout", DURATION),
    ("total_timeout", DURATION),
    ("idle_timeout", DURATION),
    ("slow_start", DURATION),
    ("health_check", &["{ path = \"/h\", interval = \"1s\" }"]),
    ("passive_health", &["{ consecutive_failures = 3 }"]),
    ("circuit_breaker", &["{ failure_threshold = 5 }"]),
    ("retry", &["{ attempts = 3, backoff = \"10ms\" }"]),
];
const PLUGIN_KEYS: Keys = &[
    ("instances", &["\"reuse\"", "\"fresh\""]),
    ("on_error", &["\"fail\"", "\"continue\""]),
    ("timeout", DURATION),
    ("max_instances", &["1"]),
    ("idle_timeout", DURATION),
];
const ROUTE_KEYS: Keys = &[
    ("name", &["\"r\""]),
    ("priority", &["0", "-5", "10"]),
    ("hosts", &["[\"a.test\", \"*.b.test\"]"]),
    ("methods", &["[\"GET\"]"]),
    ("strip_prefix", &["true"]),
    ("plugins", &["[\"p\"]"]),
    ("max_body_bytes", &["4096"]),
];

fn section(keys: Keys) -> impl Strategy<Value = String> {
    let pair = prop::sample::select(keys).prop_flat_map(|(key, valid)| {
        let good = prop::sample::select(valid).prop_map(str::to_owned);
        (Just(key), prop_oneof![3 => good, 1 => value()])
    });
    prop::collection::vec(pair, 0..4).prop_map(|pairs| {
        let mut seen = std::collections::HashSet::new();
        pairs
            .into_iter()
            .filter(|(k, _)| seen.insert(*k))
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    })
}

/// A whole config around the given sections' extra lines; with none, a valid one.
fn document(server: &str, runtime: &str, upstream: &str, plugin: &str, route: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[runtime]\n{runtime}\n\
         [upstreams.u]\nendpoints = [\"127.0.0.1:9\"]\n{}\n\
         [plugins.p]\nmodule = \"header-transform\"\n{plugin}\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"u\"\n{}",
        server.replace("listen = ", "# listen = "),
        upstream.replace("endpoints = ", "# endpoints = "),
        route.replace("prefix = ", "# prefix = ").replace("upstream = ", "# upstream = "),
    )
}

fn config() -> impl Strategy<Value = String> {
    (
        section(SERVER_KEYS),
        section(RUNTIME_KEYS),
        section(UPSTREAM_KEYS),
        section(PLUGIN_KEYS),
        section(ROUTE_KEYS),
    )
        .prop_map(|(server, runtime, upstream, plugin, route)| {
            document(&server, &runtime, &upstream, &plugin, &route)
        })
}

#[test]
fn arbitrary_configs_are_refused_or_usable_never_a_panic() {
    let mut runner = TestRunner::new(RunnerConfig { cases: 4000, ..RunnerConfig::default() });
    let plugins = crate::common::plugin_dir();
    let with_plugins = |text: &str| {
        text.replace(
            "[runtime]\n",
            &format!("[runtime]\nplugin_dir = {:?}\n", plugins.display().to_string()),
        )
    };
    // The skeleton every case builds on is valid.
    let skeleton = with_plugins(&document("", "", "", "", ""));
    if let Err(e) = sluice::config::parse(&skeleton, "skeleton.toml", Path::new(".")) {
        panic!("the skeleton is refused: {e}\n{skeleton}");
    }
    let (accepted, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&config(), |text| {
            let text = with_plugins(&text);
            let parsed = catch_unwind(AssertUnwindSafe(|| {
                sluice::config::parse(&text, "fuzz.toml", Path::new("."))
            }));
            let parsed =
                parsed.map_err(|_| TestCaseError::fail(format!("panicked on:\n{text}")))?;
            match parsed {
                Err(errors) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(!errors.errors.is_empty());
                }
                Ok(config) => {
                    accepted.set(accepted.get() + 1);
                    let s = &config.server;
                    for d in [
                        s.connect_timeout,
                        s.request_timeout,
                        s.shutdown_timeout,
                        s.body_timeout,
                        s.idle_timeout,
                    ] {
                        prop_assert!(
                            d > Duration::ZERO && d <= sluice::config::MAX_DURATION,
                            "{d:?} in\n{text}"
                        );
                    }
                    prop_assert!(
                        s.workers.is_none_or(|w| (1..=sluice::config::MAX_WORKERS).contains(&w))
                    );
                    for u in config.upstreams.values() {
                        prop_assert!(u.endpoints.iter().all(|e| e.address.port_u16() != Some(0)));
                        let built = catch_unwind(AssertUnwindSafe(|| {
                            sluice::upstream::Upstream::new("u", u.clone(), None)
                        }));
                        prop_assert!(built.is_ok(), "Upstream::new panicked on\n{text}");
                    }
                    let rules: Vec<_> =
                        config.routes.iter().map(|r| (r.rule.clone(), ())).collect();
                    let router =
                        catch_unwind(AssertUnwindSafe(|| sluice::router::Router::new(rules)));
                    prop_assert!(router.is_ok(), "Router::new panicked on\n{text}");
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The generator reaches both sides.
    let (accepted, refused) = (accepted.get(), refused.get());
    assert!(accepted > 100 && refused > 100, "accepted {accepted}, refused {refused}");
}
