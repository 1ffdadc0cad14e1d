module sluice.dev/examples/header-transform

go 1.24

require sluice.dev/pdk v0.0.0

replace sluice.dev/pdk => ../..
