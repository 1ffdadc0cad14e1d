//! `sluice check` on every file in tests/config-ui: each `invalid/X.toml` must fail with
//! exactly the errors in `invalid/X.stderr`, each `valid/X.toml` must pass.
//!
//! Absolute paths are written as `$DIR` (this folder), `$PLUGINS` (the compiled plugins)
//! and `$TARGET` (cargo's target folder).
//! Run with `BLESS=1` to rewrite the `.stderr` files from the current output.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;

fn ui_dir() -> PathBuf {
    workspace().join("tests/config-ui")
}

fn check(config: &Path) -> Output {
    std::process::Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(config)
        .env("SLUICE_PLUGIN_DIR", plugin_dir())
        .env("RUST_LOG", "error")
        .output()
        .expect("run sluice check")
}

fn normalize(text: &str) -> String {
    let plugins = plugin_dir().canonicalize().unwrap();
    text.replace(&ui_dir().display().to_string(), "$DIR")
        .replace(&plugins.display().to_string(), "$PLUGINS")
        .replace(&plugin_dir().display().to_string(), "$PLUGINS")
        .replace(&target_dir().display().to_string(), "$TARGET")
}

fn files(sub: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(ui_dir().join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {sub}/");
    files
}

#[test]
fn invalid_configs_fail_with_the_expected_errors() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for case in files("invalid") {
        let out = check(&case);
        let got = normalize(&String::from_utf8_lossy(&out.stderr));
        let expected_file = case.with_extension("stderr");
        if bless {
            std::fs::write(&expected_file, &got).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if out.status.code() != Some(1) {
            failures.push(format!("{}: exit {:?}, expected 1", case.display(), out.status.code()));
        }
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                case.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn valid_configs_and_the_shipped_examples_pass() {
    let shipped = [
        "config/demo.toml",
        "config/api-gateway.toml",
        "plugin-sdk/rust/examples/hello/sluice.toml",
    ];
    for case in files("valid").into_iter().chain(shipped.iter().map(|f| workspace().join(f))) {
        let out = check(&case);
        assert!(
            out.status.success(),
            "{}: {}",
            case.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("config ok: "));
    }
}

#[test]
fn unused_plugins_and_upstreams_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unused.toml");
    std::fs::write(
        &config,
        r#"
[server]
listen = "127.0.0.1:8080"

[upstreams.live]
endpoints = ["127.0.0.1:9001"]

[upstreams.old]
endpoints = ["127.0.0.1:9002"]

[plugins.tag]
module = "header-transform"

[plugins.spare]
module = "header-transform"

[[routes]]
prefix = "/"
upstream = "live"
plugins = ["tag"]
"#,
    )
    .unwrap();
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(
        warnings,
        [
            "warning: plugins.spare: no route uses this plugin",
            "warning: upstreams.old: no route uses this upstream"
        ],
        "{stderr}"
    );
}
