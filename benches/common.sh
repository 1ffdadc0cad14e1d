# Shared by benches/load.sh and benches/instructions.sh (sourced, from the repository root):
#   need_tools "debian packages" tool...   installs the packages if a tool is missing
#   build_sluice                           ./dev build; sets SLUICE to the binary (or, with
#                                          SLUICE_BIN=PATH, uses that one: an older build
#                                          to compare with, in the same run; the
#                                          shipped plugins then come from this
#                                          checkout's build)
#   work, pids, cleanup                    a scratch folder and the processes to stop
#   free_port                              prints an unused loopback port
#   nginx_conf NAME HTTP-BLOCK             a one-worker, foreground nginx config in $work
#   CHAIN_PLUGINS, CHAIN_ROUTE             the 4-plugin chain: [plugins.*] tables, route list
#   TOKEN, ORIGIN                          what every request carries for that chain
#   OBSERVE_OFF, access_log NAME, TRACE1   config tables: metrics off; a JSON access log
#                                          to $work/NAME.log; 1% of requests traced
#   link_order_report BIN                  how many of host/link-order.txt's functions BIN
#                                          has (a stale list costs idle memory)

need_tools() {
    local packages=$1 tool
    shift
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null; then
            echo "installing $packages (Debian packages)" >&2
            # shellcheck disable=SC2086
            apt-get install -y $packages >/dev/null
            return
        fi
    done
}

link_order_report() {
    python3 - "$1" host/link-order.txt <<'PY'
import subprocess, sys
have = set(subprocess.run(["nm", "--defined-only", sys.argv[1]], capture_output=True,
                          text=True, check=True).stdout.split())
listed = [l.strip() for l in open(sys.argv[2]) if l.strip()]
found = sum(1 for s in listed if s in have)
print(f"link order: {found} of the {len(listed)} functions in {sys.argv[2]} are in {sys.argv[1]} "
      f"({100 * found / len(listed):.0f}%; regenerate it with benches/link-order.sh when low)")
PY
}

build_sluice() {
    local target
    target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    if [[ -n ${SLUICE_BIN:-} ]]; then
        SLUICE=$SLUICE_BIN
        # A copied binary has no shipped plugins next to it: use this checkout's build.
        export SLUICE_PLUGIN_DIR=${SLUICE_PLUGIN_DIR:-$target/wasm32-wasip2/guest}
        return
    fi
    ./dev build >/dev/null 2>&1
    SLUICE=$target/release/sluice
}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# nginx_conf NAME HTTP-BLOCK: a foreground nginx config in $work/NAME.conf, with
# $NGINX_WORKERS worker processes (1 unless set).
nginx_conf() {
    cat >"$work/$1.conf" <<CONF
worker_processes ${NGINX_WORKERS:-1};
daemon off;
pid $work/$1.pid;
error_log $work/$1.err;
events { worker_connections 4096; }
http {
    access_log off;
$2
}
CONF
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The chain of the performance issue: jwt -> rate-limit (limit never reached) -> cors ->
# transform, with the settings of the micro-benchmarks (benches/benches/plugin_call.rs).
# Every target gets the same request: TOKEN as a bearer token, and an allowed origin.
CHAIN_PLUGINS='[plugins.jwt]
module = "jwt"
config = { keys = [{ alg = "HS256", secret = "bench-secret-of-at-least-thirty-two-bytes" }], forward_claims = { sub = "x-user-id" } }
[plugins.limit]
module = "rate-limit"
config = { limit = 1000000000000, window = "1h", key = "header:x-user-id" }
[plugins.cors]
module = "cors"
config = { allow_origins = ["https://app.example.com"] }
[plugins.shape]
module = "transform"
config = { request = { headers = { set = { "x-request-id" = "${request_id}" } } }, response = { headers = { remove = ["server"] } } }
'
CHAIN_ROUTE='"jwt", "limit", "cors", "shape"'
# sub "ada", exp 2100-01-01, HS256 with the secret above.
TOKEN=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZGEiLCJleHAiOjQxMDI0NDQ4MDB9.dVQ2bwQWYtL_mtTRnwqaZ9yzRefPigE8YP99zP0w7Jw
ORIGIN=https://app.example.com

# The cost of observing a request (the observability issue's targets).
OBSERVE_OFF='[metrics]
enabled = false
'
access_log() {
    printf '[access_log]\nformat = "json"\npath = "%s"\n' "$work/$1.log"
}
# Exported to a port where nothing listens: the batch exporter's failures are counted,
# never waited for by a request.
TRACE1="[tracing]
endpoint = \"http://127.0.0.1:$(free_port)/v1/traces\"
sample_ratio = 0.01
"
