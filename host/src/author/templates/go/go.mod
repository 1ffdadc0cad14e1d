module {{name}}

go 1.24

require sluice.dev/pdk v0.0.0

// The Go plugin SDK, copied here by `sluice plugin new` so it always matches the world
// this Sluice implements. Nothing is downloaded.
replace sluice.dev/pdk => ./sdk/go
