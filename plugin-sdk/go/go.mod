module sluice.dev/pdk

go 1.24
