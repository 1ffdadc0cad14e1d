//! The plugin author's loop: `sluice plugin new` scaffolds a project in Rust, Go or
//! JavaScript, `sluice plugin build` builds it into a component, and `sluice plugin test`
//! replays requests from a file through one plugin, without a proxy.
//!
//! The SDKs and the WIT are built into the binary, and `new` copies them into the project,
//! so a project always builds against the world the `sluice` that made it implements, and
//! nothing is fetched from the network but the language's own packages.

mod build;
mod replay;
mod scaffold;
mod sdk;

pub use build::build;
pub use replay::{CaptureLogs, run_cases};
pub use scaffold::new_project;

/// A plugin language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Go,
    Js,
}

impl Lang {
    pub fn title(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Go => "Go",
            Lang::Js => "JavaScript",
        }
    }

    /// The language of the project in `dir`, from the file that defines it.
    pub fn detect(dir: &std::path::Path) -> Option<Lang> {
        [("Cargo.toml", Lang::Rust), ("go.mod", Lang::Go), ("package.json", Lang::Js)]
            .into_iter()
            .find(|(file, _)| dir.join(file).is_file())
            .map(|(_, lang)| lang)
    }
}
