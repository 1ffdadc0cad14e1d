module sluice.dev/tests/go-stress

go 1.24

require sluice.dev/pdk v0.0.0

replace sluice.dev/pdk => ../../../plugin-sdk/go
