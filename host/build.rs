//! Puts the git commit the binary is built from into `SLUICE_GIT_COMMIT`, for
//! `sluice --version` ("unknown" outside a git checkout).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_owned())
}

fn main() {
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
