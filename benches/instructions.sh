#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a measure that does not move with
# the machine's load, for comparing Sluice with nginx and one change with another.
#
#   benches/instructions.sh              # nginx and Sluice, both plainly proxying
#   N=4000 benches/instructions.sh       # more requests per run (default 2000)
#   TOP=25 benches/instructions.sh       # also list the costliest functions of each Sluice run
#   PROXIES="sluice+chain4" benches/instructions.sh   # only some of the proxies
#   PROXIES="sluice sluice+chain1 sluice+chain2 sluice+chain3 sluice+chain4" \
#       benches/instructions.sh          # the chain's plugins one by one (chainK: the first K)
#   KEEP=/tmp/cg benches/instructions.sh # keep the callgrind files for callgrind_annotate
#   PROXIES="sluice+transform sluice+go" benches/instructions.sh
#                                        # one header-setting plugin of the Rust SDK (the
#                                        # shipped one) and of the Go SDK (its example)
#   PROXIES="sluice sluice-metrics sluice+log sluice+log+trace1" benches/instructions.sh
#                                        # the cost of observing: metrics off; a JSON
#                                        # access log to a file; the log and 1% tracing
#
# Each proxy runs under `valgrind --tool=callgrind` twice, serving N and then 2N keep-alive
# requests (one connection, sequential) from the same nginx backend as benches/load.sh;
# (instructions(2N) - instructions(N)) / N is the cost of one request, start-up and
# shutdown cancelled out. The client and the backend run outside valgrind.
#
# Proxies: nginx; Sluice plain; Sluice with one header-transform plugin; Sluice with the
# chain jwt -> rate-limit -> cors -> transform of benches/load.sh (the same request, with a
# valid token and an allowed Origin). Counting starts after the first request has been
# answered (`callgrind_control --zero`), so start-up, plugin compilation and the first
# instances are left out. Plugins are compiled into a cache_dir kept under ~/.cache (under
# valgrind wasmtime sees other CPU features, so the first run ever compiles them; that is
# slow but not counted), and the pooling allocator is kept small: valgrind cannot reserve the
# address space of a large pool.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-2000}
TOP=${TOP:-0}
PROXIES=${PROXIES:-"sluice sluice+transform sluice+chain4"}
# Compiled plugins, kept between runs: compiling under valgrind takes minutes.
CACHE=${CACHE:-$HOME/.cache/sluice-bench/valgrind-cache}
# KEEP=DIR keeps the callgrind output files there (for callgrind_annotate).
KEEP=${KEEP:-}
for name in $PROXIES; do
    case $name in
    sluice | sluice+transform | sluice+go | sluice+chain[1-4] | sluice-metrics | sluice+log | sluice+log+trace1) ;;
    *)
        echo "PROXIES: unknown proxy $name (sluice, sluice+transform, sluice+go," \
            "sluice+chain1..4, sluice-metrics, sluice+log, sluice+log+trace1)" >&2
        exit 1
        ;;
    esac
done
# shellcheck source=benches/common.sh
. benches/common.sh
need_tools "nginx valgrind curl" nginx valgrind callgrind_annotate python3 curl
build_sluice
BACKEND=$(free_port)
BODY=$(printf 'x%.0s' $(seq 1 99))
nginx_conf backend "
    server {
        listen 127.0.0.1:$BACKEND;
        keepalive_requests 1000000;
        location / { return 200 \"$BODY\\n\"; }
    }"
nginx -c "$work/backend.conf" -p "$work" & pids+=($!)

proxy_config() { # NAME PORT -> the command line that runs that proxy on PORT
    local name=$1 port=$2
    case $name in
    nginx)
        cat >"$work/nginx-$port.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx-$port.pid;
error_log $work/nginx-$port.err;
events { worker_connections 1024; }
http {
    access_log off;
    upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
        echo "nginx -c $work/nginx-$port.conf -p $work"
        ;;
    sluice*)
        local plugins="" route=""
        case $name in
        sluice+transform)
            plugins='[plugins.t1]
module = "header-transform"
config = { request = { set = { "x-env" = "bench" } } }'
            route='"t1"'
            ;;
        sluice+go)
            # The Go SDK's header-transform example, built once per run (Go comes from
            # `./dev sdk-env`, as `./dev test` sets it up). The JavaScript SDK's is left
            # out: its 12 MB component takes ~35 s to compile natively, and many times
            # that under valgrind.
            local module="$work/go-header-transform.wasm"
            if [ ! -f "$module" ]; then
                eval "$(./dev sdk-env 2>/dev/null)"
                "$SLUICE" plugin build plugin-sdk/go/examples/header-transform -o "$module" >&2
            fi
            plugins="[plugins.t1]
module = \"$module\"
config = { request_headers = { \"x-env\" = \"bench\" } }"
            route='"t1"'
            ;;
        sluice+chain[1-4])
            # The first K plugins of the chain: successive runs give each plugin's cost.
            local k=${name#sluice+chain}
            plugins=$CHAIN_PLUGINS
            route=$(tr ',' '\n' <<<"$CHAIN_ROUTE" | head -"$k" | paste -sd,)
            ;;
        sluice-metrics) plugins=$OBSERVE_OFF ;;
        sluice+log) plugins=$(access_log "$name-$port") ;;
        sluice+log+trace1) plugins="$(access_log "$name-$port")
$TRACE1" ;;
        esac
        cat >"$work/sluice-$port.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
workers = 1

# Valgrind cannot map the pooling allocator's address space reservation for more.
# Large modules (the Go SDK's) are compiled before listening, not tiered up during the
# count.
[runtime]
max_instances = 4
cache_dir = "$CACHE"
quick_start = false

[admin]
listen = "127.0.0.1:0"

[upstreams.backend]
endpoints = ["127.0.0.1:$BACKEND"]

$plugins

[[routes]]
prefix = "/"
upstream = "backend"
plugins = [$route]
CONF
        echo "$SLUICE run --no-watch --config $work/sluice-$port.toml"
        ;;
    esac
}

# instructions NAME REQUESTS -> total instructions callgrind counted for that run
instructions() {
    local name=$1 n=$2 port out
    port=$(free_port)
    out="$work/$name.$n.callgrind"
    # shellcheck disable=SC2046
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        $(proxy_config "$name" "$port") 2>"$work/$name.$n.valgrind" &
    local pid=$!
    if ! python3 - "$port" "$n" "$TOKEN" "$ORIGIN" "$pid" "$work/$name.$n.valgrind" <<'PY'
import http.client, os, subprocess, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
headers = {"accept": "*/*", "user-agent": "instructions.sh",
           "authorization": "Bearer " + sys.argv[3], "origin": sys.argv[4]}
deadline = time.time() + 900
while True:  # valgrind starts slowly
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/", headers=headers)
        r = c.getresponse(); r.read()
        break
    except OSError:
        try:
            os.kill(int(sys.argv[5]), 0)
        except ProcessLookupError:  # it exited: say why rather than wait out the deadline
            sys.exit("the proxy exited before answering:\n" + open(sys.argv[6]).read()[-2000:])
        if time.time() > deadline:
            sys.exit("the proxy never answered")
        time.sleep(0.2)
assert r.status == 200, f"warm-up answered {r.status}"
subprocess.run(["callgrind_control", "--zero", sys.argv[5]], check=True, capture_output=True)
for _ in range(n - 1):
    c.request("GET", "/", headers=headers)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
    then
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" || true
        return 1
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$out" "$KEEP/"; fi
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

printf '| proxy | instructions per request | vs nginx |\n|---|---|---|\n'
declare -A PER
for name in nginx $PROXIES; do
    one=$(instructions "$name" "$N")
    two=$(instructions "$name" $((2 * N)))
    PER[$name]=$(((two - one) / N))
    printf '| %s | %s | %s |\n' "$name" "${PER[$name]}" \
        "$(python3 -c "print(f'{${PER[$name]} / ${PER[nginx]}:.2f}x')")"
done
if [ "$TOP" -gt 0 ]; then
    for name in $PROXIES; do
        echo
        echo "$name, costliest functions by own instructions over $((2 * N)) requests:"
        callgrind_annotate --threshold=100 "$work/$name.$((2 * N)).callgrind" 2>/dev/null |
            sed -n '/^Ir/,$p' | head -$((TOP + 3)) || true
    done
fi
