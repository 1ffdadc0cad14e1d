//! Puts the git commit the binary is built from into `SLUICE_GIT_COMMIT`, for
//! `sluice --version` ("unknown" outside a git checkout), and packs the binary's relative
//! relocations on x86-64 Linux.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_owned())
}

fn main() {
    pack_relative_relocations();
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

/// The `sluice` binary is position-independent, so the loader relocates every pointer in
/// its read-only data at start. As `Elf64_Rela` entries (24 bytes each) that table was 1.9
/// MB, all of it read at every start and resident afterwards: a tenth of the idle
/// gateway's memory. Packed as RELR (a bitmap of relocated words) it is a few kilobytes.
/// The address-space layout stays randomised. Only where the linker and C library are
/// known to support it: x86-64 Linux with glibc links with rust-lld, which packs RELR, and
/// glibc reads it from 2.36 (Debian 12) on. Elsewhere the binary links as before.
fn pack_relative_relocations() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
