//! See `benches/benches/` and `benches/load.sh`.
