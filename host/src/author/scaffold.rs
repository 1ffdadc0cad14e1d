//! `sluice plugin new`: a buildable plugin project with a test and a README.

use std::path::{Path, PathBuf};

use super::{Lang, sdk};

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "{0:?} is not a usable plugin name: use lower-case letters, digits and '-', \
         starting with a letter (it names the module, the package and the .wasm file)"
    )]
    BadName(String),
    #[error("{} already exists; choose another name or remove it", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Creates `parent/name` with a plugin in `lang` that builds and passes its own cases.
/// Returns the project folder and the files written (relative to it).
pub fn new_project(
    lang: Lang,
    name: &str,
    parent: &Path,
) -> Result<(PathBuf, Vec<String>), ScaffoldError> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let mut files: Vec<(String, String)> = Vec::new();
    let mut add = |path: String, text: &str| files.push((path, text.to_owned()));
    let own: &[(&str, &str)] = match lang {
        Lang::Rust => &[
            ("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("templates/rust/lib.rs")),
            ("rust-toolchain.toml", include_str!("templates/rust/rust-toolchain.toml")),
        ],
        Lang::Go => &[
            ("go.mod", include_str!("templates/go/go.mod")),
            ("main.go", include_str!("templates/go/main.go")),
        ],
        Lang::Js => &[
            ("package.json", include_str!("templates/js/package.json")),
            ("plugin.js", include_str!("templates/js/plugin.js")),
        ],
    };
    // Templates get the plugin's name; the SDK files and the WIT are copied as they are.
    for (path, text) in own {
        add(path.to_string(), &fill(text, lang, name));
    }
    add("cases.toml".into(), &fill(include_str!("templates/common/cases.toml"), lang, name));
    add("sluice.toml".into(), &fill(include_str!("templates/common/sluice.toml"), lang, name));
    add(".gitignore".into(), gitignore(lang));
    for (path, text) in sdk::WIT {
        add(format!("wit/{path}"), text);
    }
    match lang {
        Lang::Rust => {
            add("sdk/rust/Cargo.toml".into(), include_str!("templates/rust/sdk.Cargo.toml"));
            for (path, text) in sdk::RUST {
                add(format!("sdk/rust/{path}"), text);
            }
        }
        Lang::Go => {
            for (path, text) in sdk::GO {
                add(format!("sdk/go/{path}"), text);
            }
        }
        // The build script finds the WIT next to itself, in wit/.
        Lang::Js => {
            for (path, text) in sdk::JS {
                add(path.to_string(), text);
            }
        }
    }
    let listing = files_listing(lang, name);
    let readme = fill(include_str!("templates/common/README.md"), lang, name)
        .replace("{{prerequisites}}", prerequisites(lang))
        .replace("{{files}}", &listing);
    files.push(("README.md".into(), readme));

    for (path, text) in &files {
        let target = dir.join(path);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(target.parent().expect("a file in the project"))?;
            std::fs::write(&target, text)
        };
        write().map_err(|source| ScaffoldError::Write { path: target.clone(), source })?;
    }
    let mut written: Vec<String> = files.into_iter().map(|(p, _)| p).collect();
    written.sort();
    Ok((dir, written))
}

fn fill(text: &str, lang: Lang, name: &str) -> String {
    text.replace("{{name}}", name)
        .replace("{{lang}}", &format!("{lang:?}").to_lowercase())
        .replace("{{lang_title}}", lang.title())
        .replace("{{world_version}}", sluice_bindings::WORLD_VERSION)
}

fn gitignore(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "/target\n*.wasm\n",
        Lang::Go => "*.wasm\n",
        Lang::Js => "/node_modules\n*.wasm\n",
    }
}

fn prerequisites(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => {
            "Needs Rust with the `wasm32-wasip2` target \
             (`rustup target add wasm32-wasip2`)."
        }
        Lang::Go => {
            "Needs mainline Go 1.24 or newer (not TinyGo). Nothing is downloaded: the SDK is \
             in `sdk/go`, and `sluice plugin build` turns Go's wasip1 module into a component \
             itself."
        }
        Lang::Js => {
            "Needs Node.js 18 or newer; `sluice plugin build` runs `npm install` the first \
             time (it fetches `@bytecodealliance/componentize-js`). The component embeds a \
             JavaScript engine (about 12 MB); Sluice compiles it once in the background and \
             caches it."
        }
    }
}

fn files_listing(lang: Lang, name: &str) -> String {
    let own = match lang {
        Lang::Rust => "- `src/lib.rs`: the plugin; `sdk/rust/`: the Rust SDK (sluice-pdk).",
        Lang::Go => "- `main.go`: the plugin; `sdk/go/`: the Go SDK (package sluice).",
        Lang::Js => {
            "- `plugin.js`: the plugin; `sluice.d.ts`: the API's types; `build.mjs`: the \
             build script (componentize-js)."
        }
    };
    format!("{own}\n- `{name}.wasm`: the built plugin (after `sluice plugin build`).")
}
