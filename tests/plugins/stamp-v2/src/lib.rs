//! Test plugin `x-stamp: v2`; the code is shared with its sibling.

const VERSION: &str = "v2";

include!("../../stamp.rs");
