#!/usr/bin/env bash
# Regenerates internal/bindings from ../../wit with wit-bindgen's Go generator, and vendors
# the small runtime package those bindings need into internal/wit (it cannot be downloaded
# here: the generated code imports go.bytecodealliance.org/pkg, which the Rust registry
# crate wit-bindgen-go carries as source). Run after any change to wit/; the output is
# committed, so building a Go plugin needs only Go.
#
#   cargo install wit-bindgen-cli --version 0.63.0 --locked --debug   # once, ~2 min
#   plugin-sdk/go/regen.sh
set -euo pipefail
cd "$(dirname "$0")"
VERSION=0.63.0
WIT_BINDGEN=${WIT_BINDGEN:-wit-bindgen}
"$WIT_BINDGEN" --version | grep -q " $VERSION" || {
    echo "need wit-bindgen $VERSION (cargo install wit-bindgen-cli --version $VERSION --locked)" >&2
    exit 1
}
crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "wit-bindgen-go-$VERSION" | head -1)
[[ -n $crate ]] || { echo "wit-bindgen-go-$VERSION sources not in the cargo registry (cargo install fetches them)" >&2; exit 1; }

# export_sluice_plugin_handler is hand-written glue (the generator only names it): kept.
# The SDK builds for world handler-plugin: hooks without resource handles (since 0.2.3).
rm -rf internal/bindings/imports internal/bindings/exports/wit_exports internal/wit
"$WIT_BINDGEN" go ../../wit --world handler-plugin --pkg-name sluice.dev/pdk/internal/bindings \
    --out-dir internal/bindings --quiet
mkdir -p internal/wit
cp -r "$crate/src/pkg/wit/runtime" "$crate/src/pkg/wit/types" "$crate/src/pkg/wit/async" internal/wit/
cp "$crate/src/pkg/LICENSE" internal/wit/LICENSE
find internal -name '*.go' -exec sed -i 's#"go.bytecodealliance.org/pkg/wit/#"sluice.dev/pdk/internal/wit/#' {} +
gofmt -w internal
echo "regenerated internal/bindings for wit/ (wit-bindgen $VERSION)"
