//! Puts the git commit the binary is built from into `SLUICE_GIT_COMMIT`, for
//! `sluice --version` ("unknown" outside a git checkout), and on x86-64 Linux packs the
//! binary's relative relocations and lays its functions out in `link-order.txt`'s order.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_owned())
}

fn main() {
    if linked_by_rust_lld() {
        pack_relative_relocations();
        order_functions();
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SLUICE_GIT_COMMIT={commit}");
    // Run again when HEAD moves (a checkout, or a commit on the current branch); nothing
    // else in the package changes the answer.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            // A branch whose ref was packed lives in packed-refs.
            let loose = format!("{dir}/{branch}");
            match std::path::Path::new(&loose).exists() {
                true => println!("cargo:rerun-if-changed={loose}"),
                false => println!("cargo:rerun-if-changed={dir}/packed-refs"),
            }
        }
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
}

/// x86-64 Linux with glibc, linked by the toolchain's own linker (rust-lld, the default
/// there since Rust 1.90) unless the build names another: the flags below are lld's.
fn linked_by_rust_lld() -> bool {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && std::env::var_os("RUSTC_LINKER").is_none()
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("linker")
}

/// The `sluice` binary is position-independent, so the loader relocates every pointer in
/// its read-only data at start. As `Elf64_Rela` entries (24 bytes each) that table was 1.9
/// MB, all of it read at every start and resident afterwards: a tenth of the idle
/// gateway's memory. Packed as RELR (a bitmap of relocated words) it is a few kilobytes.
/// The address-space layout stays randomised. glibc reads RELR from 2.36 (Debian 12) on.
fn pack_relative_relocations() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}

/// The kernel maps a binary's code in runs around each page first run, so start-up code
/// spread over the 29 MB of `.text` kept ~10.5 MB of it resident in an idle gateway. The
/// linker puts the functions `link-order.txt` names (those requests run, then those
/// start-up runs; written by `benches/link-order.sh`) first, in that order: the same code
/// on fewer pages. Names the binary lacks (a dependency upgraded since the list was made)
/// are skipped without a warning; their functions stay where they would have been.
fn order_functions() {
    let list = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("link-order.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    if list.exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", list.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
