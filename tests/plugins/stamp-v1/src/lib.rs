//! Test plugin `x-stamp: v1`; the code is shared with its sibling.

const VERSION: &str = "v1";

include!("../../stamp.rs");
