module sluice.dev/examples/auth-check

go 1.24

require sluice.dev/pdk v0.0.0

replace sluice.dev/pdk => ../..
