#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a measure that does not move with
# the machine's load, for comparing Sluice with nginx and one change with another.
#
#   benches/instructions.sh              # nginx and Sluice, both plainly proxying
#   N=4000 benches/instructions.sh       # more requests per run (default 2000)
#   TOP=25 benches/instructions.sh       # also list Sluice's 25 costliest functions
#
# Each proxy runs under `valgrind --tool=callgrind` twice, serving N and then 2N keep-alive
# requests (one connection, sequential) from the same nginx backend as benches/load.sh;
# (instructions(2N) - instructions(N)) / N is the cost of one request, start-up and
# shutdown cancelled out. The client and the backend run outside valgrind.
#
# Plain proxying only: under valgrind, Sluice hangs loading plugin modules (wasmtime's
# machine code and signal handling), so plugin costs are measured by the criterion
# micro-benchmarks and benches/load.sh instead.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-2000}
TOP=${TOP:-0}
# shellcheck source=benches/common.sh
. benches/common.sh
need_tools "nginx valgrind" nginx valgrind callgrind_annotate python3
build_sluice
BACKEND=$(free_port)
BODY=$(printf 'x%.0s' $(seq 1 99))
cat >"$work/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend.err;
events { worker_connections 1024; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$BACKEND;
        keepalive_requests 1000000;
        location / { return 200 "$BODY\n"; }
    }
}
CONF
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
    sluice)
        cat >"$work/sluice-$port.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
workers = 1

# Valgrind cannot map the pooling allocator's address space reservation for more.
[runtime]
max_instances = 1

[upstreams.backend]
endpoints = ["127.0.0.1:$BACKEND"]

[[routes]]
prefix = "/"
upstream = "backend"
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
    python3 - "$port" "$n" <<'PY'
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
headers = {"accept": "*/*", "user-agent": "instructions.sh"}
deadline = time.time() + 120
while True:  # valgrind starts slowly
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/", headers=headers)
        r = c.getresponse(); r.read()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("the proxy never answered")
        time.sleep(0.2)
assert r.status == 200, f"warm-up answered {r.status}"
for _ in range(n - 1):
    c.request("GET", "/", headers=headers)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
    kill -TERM "$pid"
    wait "$pid" || true
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

printf '| proxy | instructions per request | vs nginx |\n|---|---|---|\n'
declare -A PER
for name in nginx sluice; do
    one=$(instructions "$name" "$N")
    two=$(instructions "$name" $((2 * N)))
    PER[$name]=$(((two - one) / N))
    printf '| %s | %s | %s |\n' "$name" "${PER[$name]}" \
        "$(python3 -c "print(f'{${PER[$name]} / ${PER[nginx]}:.2f}x')")"
done
if [ "$TOP" -gt 0 ]; then
    echo
    echo "Sluice (plain), costliest functions by own instructions over $((2 * N)) requests:"
    callgrind_annotate --threshold=100 "$work/sluice.$((2 * N)).callgrind" 2>/dev/null |
        sed -n '/^Ir/,$p' | head -$((TOP + 3))
fi
