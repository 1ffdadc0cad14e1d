//! Shared pieces for the end-to-end tests live in `tests/common`.
