//! The SDK sources and WIT built into the binary, for `sluice plugin new` and `build`.
//!
//! Every file is listed by hand; a test checks the lists against the folders, so a file
//! added to an SDK cannot be left out of the projects `new` makes.

/// A file: its path inside the SDK folder, and its contents.
pub type File = (&'static str, &'static str);

macro_rules! files {
    ($base:literal: $($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../", $base, "/", $path)))),*]
    };
}

/// `wit/`: the `sluice:plugin` world.
pub const WIT: &[File] = files!("wit":
    "clock.wit", "filter.wit", "handler.wit", "http.wit", "kv.wit", "log.wit", "request.wit",
    "response.wit", "world.wit"
);

/// `plugin-sdk/go`, without its examples and its generator script.
pub const GO: &[File] = files!("plugin-sdk/go":
    "go.mod",
    "host.go",
    "internal/bindings/exports/export_sluice_plugin_handler/handler.go",
    "internal/bindings/exports/wit_exports/wit_exports.go",
    "internal/bindings/imports/sluice_plugin_clock/empty.s",
    "internal/bindings/imports/sluice_plugin_clock/wit_bindings.go",
    "internal/bindings/imports/sluice_plugin_handler/empty.s",
    "internal/bindings/imports/sluice_plugin_handler/wit_bindings.go",
    "internal/bindings/imports/sluice_plugin_http/empty.s",
    "internal/bindings/imports/sluice_plugin_http/wit_bindings.go",
    "internal/bindings/imports/sluice_plugin_kv/empty.s",
    "internal/bindings/imports/sluice_plugin_kv/wit_bindings.go",
    "internal/bindings/imports/sluice_plugin_log/empty.s",
    "internal/bindings/imports/sluice_plugin_log/wit_bindings.go",
    "internal/bindings/imports/sluice_plugin_metrics/empty.s",
    "internal/bindings/imports/sluice_plugin_metrics/wit_bindings.go",
    "internal/bindings/imports/sluice_plugin_request/empty.s",
    "internal/bindings/imports/sluice_plugin_request/wit_bindings.go",
    "internal/bindings/imports/sluice_plugin_response/empty.s",
    "internal/bindings/imports/sluice_plugin_response/wit_bindings.go",
    "internal/wit/LICENSE",
    "internal/wit/async/async.go",
    "internal/wit/async/empty.s",
    "internal/wit/runtime/empty.s",
    "internal/wit/runtime/runtime.go",
    "internal/wit/types/future.go",
    "internal/wit/types/option.go",
    "internal/wit/types/result.go",
    "internal/wit/types/stream.go",
    "internal/wit/types/tuple.go",
    "internal/wit/types/unit.go",
    "sluice.go",
);

/// `plugin-sdk/js`: the build script and the type declarations.
pub const JS: &[File] = files!("plugin-sdk/js": "build.mjs", "sluice.d.ts");

/// `plugin-sdk/rust`: the crate's source (its Cargo.toml is a template: the repository's
/// uses workspace dependencies).
pub const RUST: &[File] = files!("plugin-sdk/rust": "src/lib.rs");

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn listed(files: &[super::File]) -> Vec<String> {
        let mut v: Vec<String> = files.iter().map(|(p, _)| p.to_string()).collect();
        v.sort();
        v
    }

    fn walk(base: &Path, dir: &Path, skip: &[&str], out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            if path.is_dir() {
                walk(base, &path, skip, out);
            } else {
                out.push(rel);
            }
        }
    }

    fn on_disk(folder: &str, skip: &[&str]) -> Vec<String> {
        let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(folder);
        let mut out = Vec::new();
        walk(&base, &base, skip, &mut out);
        out.sort();
        out
    }

    #[test]
    fn the_built_in_sdks_list_every_file_of_their_folders() {
        assert_eq!(listed(super::WIT), on_disk("wit", &[]));
        assert_eq!(listed(super::GO), on_disk("plugin-sdk/go", &["examples", "regen.sh"]));
    }
}
