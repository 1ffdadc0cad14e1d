#!/usr/bin/env bash
# Load benchmark: Sluice and nginx as reverse proxies in front of the same nginx backend,
# on loopback, in the same run. Each proxy runs alone on PROXY_CPU; wrk and the backend share
# LOAD_CPU. Rounds interleave the targets so machine noise hits them alike; every Sluice
# number is reported as a ratio to nginx's plain proxying in the same round.
#
#   benches/load.sh                      # 3 rounds x c50,c200 x 10 s per target
#   ROUNDS=1 DURATION=5s benches/load.sh # quicker
#   COMPARE=/tmp/sluice-before benches/load.sh   # A/B: adds "compare" (plain, that binary)
#   OBSERVE=1 benches/load.sh            # adds plain proxying with metrics off, with an
#                                        # access log, and with the log and 1% tracing
#   TLS=1 benches/load.sh                # adds HTTPS (TLS 1.3, keep-alive, one P-256
#                                        # certificate) on nginx and on Sluice
#   COMPRESS=1 benches/load.sh           # adds a 16 KB JSON body, plain and gzip-compressed
#                                        # (level 5) by nginx and by Sluice
#   WORKERS=2 PROXY_CPU=0,1 LOAD_CPU=0,1 benches/load.sh
#                                        # multi-core: Sluice `workers = 2`, nginx
#                                        # `worker_processes 2` (proxy and backend), wrk
#                                        # with 2 threads; here, all on the same 2 cores
#
# Workloads: nginx (plain), sluice (plain), sluice + one header-transform plugin, and
# sluice + the chain jwt -> rate-limit (limit never reached) -> cors -> transform. Every
# target gets the same request: a valid HS256 bearer token and an allowed Origin.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-"50 200"}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
WORKERS=${WORKERS:-1}
export NGINX_WORKERS=$WORKERS

# shellcheck source=benches/common.sh
. benches/common.sh
need_tools "nginx wrk curl" nginx wrk taskset python3 curl
build_sluice
BACKEND=$(free_port)
NGINX=$(free_port)
NGINX_TLS=$(free_port)
if [ -n "${TLS:-}" ]; then
    # One certificate for both proxies: P-256, self-signed (wrk does not verify).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$work/tls.key" -out "$work/tls.pem" 2>/dev/null
    NGINX_TLS_SERVER="
    server {
        listen 127.0.0.1:$NGINX_TLS ssl;
        ssl_certificate $work/tls.pem;
        ssl_certificate_key $work/tls.key;
        ssl_protocols TLSv1.3;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
fi

BODY=$(printf 'x%.0s' $(seq 1 99))  # 99 bytes + newline = 100
# 16 KB of JSON for COMPRESS: an array of small records, as APIs answer.
python3 -c 'import json; print(json.dumps([{"id": i, "name": f"item {i}", "tags": ["alpha", "beta"], "price": i * 1.25} for i in range(240)]))' >"$work/big.json"
chmod a+rx "$work" && chmod a+r "$work/big.json"  # nginx's workers may run as nobody
NGINX_GZ=$(free_port)
if [ -n "${COMPRESS:-}" ]; then
    NGINX_GZ_SERVER="
    server {
        listen 127.0.0.1:$NGINX_GZ;
        keepalive_requests 1000000;
        gzip on;
        gzip_comp_level 5;
        gzip_types application/json;
        gzip_min_length 1024;
        gzip_proxied any;
        gzip_vary on;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
fi
nginx_conf backend "
    server {
        listen 127.0.0.1:$BACKEND;
        keepalive_requests 1000000;
        location / { return 200 \"$BODY\\n\"; }
        location = /big { default_type application/json; alias $work/big.json; }
    }"
nginx_conf proxy "
    upstream backend {
        server 127.0.0.1:$BACKEND;
        keepalive 512;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }${NGINX_TLS_SERVER:-}${NGINX_GZ_SERVER:-}"
taskset -c "$LOAD_CPU" nginx -c "$work/backend.conf" -p "$work" & pids+=($!)
taskset -c "$PROXY_CPU" nginx -c "$work/proxy.conf" -p "$work" & pids+=($!)

# sluice_config NAME PLUGINS-TOML ROUTE-PLUGINS [MORE-ROUTE-TOML]
sluice_config() {
    local port
    port=$(free_port)
    cat >"$work/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
workers = $WORKERS

[admin]
listen = "127.0.0.1:0"

[upstreams.backend]
endpoints = ["127.0.0.1:$BACKEND"]
$2
[[routes]]
prefix = "/"
upstream = "backend"
plugins = [$3]
${4:-}
CONF
    echo "$port"
}
TRANSFORM='[plugins.t1]
module = "header-transform"
config = { request = { set = { "x-env" = "bench" } } }
'
declare -A PORT SCHEME URLPATH
PORT[nginx]=$NGINX
PORT[sluice]=$(sluice_config plain "" "")
PORT[sluice+transform]=$(sluice_config transform "$TRANSFORM" '"t1"')
PORT[sluice+chain4]=$(sluice_config chain "$CHAIN_PLUGINS" "$CHAIN_ROUTE")
declare -A PID
PID[nginx]=$(sleep 0.5; cat "$work/proxy.pid")
declare -A FILE=([sluice]=plain [sluice+transform]=transform [sluice+chain4]=chain [compare]=compare)
declare -A BIN=([sluice]=$SLUICE [sluice+transform]=$SLUICE [sluice+chain4]=$SLUICE)
TARGETS=(nginx sluice sluice+transform sluice+chain4)
if [ -n "${OBSERVE:-}" ]; then
    # The cost of observing: metrics off; metrics and a JSON access log to a file; and
    # those with 1% of requests traced, exported to an OTLP port nobody listens on.
    PORT[nometrics]=$(sluice_config nometrics "$OBSERVE_OFF" "")
    PORT[log]=$(sluice_config log "$(access_log log)" "")
    PORT[log+trace1]=$(sluice_config log+trace1 "$(access_log log+trace1)
$TRACE1" "")
    for name in nometrics log log+trace1; do
        FILE[$name]=$name
        BIN[$name]=$SLUICE
        TARGETS+=("$name")
    done
fi
if [ -n "${TLS:-}" ]; then
    TLS_PORT=$(free_port)
    sluice_config tls "[[listeners]]
name = \"https\"
listen = \"127.0.0.1:$TLS_PORT\"
tls = { certs = [{ cert = \"$work/tls.pem\", key = \"$work/tls.key\" }], min_version = \"1.3\" }
" "" >/dev/null
    PORT[nginx-tls]=$NGINX_TLS
    PORT[sluice-tls]=$TLS_PORT
    SCHEME[nginx-tls]=https
    SCHEME[sluice-tls]=https
    FILE[sluice-tls]=tls
    BIN[sluice-tls]=$SLUICE
    TARGETS+=(nginx-tls sluice-tls)
fi
if [ -n "${COMPRESS:-}" ]; then
    PORT[sluice-gzip]=$(sluice_config gzip "" "" 'compression = { encodings = ["gzip"] }')
    PORT[nginx-big]=$NGINX
    PORT[sluice-big]=${PORT[sluice]}
    PORT[nginx-gzip]=$NGINX_GZ
    for name in nginx-big sluice-big nginx-gzip sluice-gzip; do URLPATH[$name]=/big; done
    FILE[sluice-gzip]=gzip
    BIN[sluice-gzip]=$SLUICE
    TARGETS+=(nginx-big nginx-gzip sluice-big sluice-gzip)
fi
if [ -n "${COMPARE:-}" ]; then
    PORT[compare]=$(sluice_config compare "" "")
    BIN[compare]=$COMPARE
    TARGETS+=(compare)
fi
for name in "${TARGETS[@]:1}"; do
    case $name in nginx-* | sluice-big) continue ;; esac
    RUST_LOG=warn taskset -c "$PROXY_CPU" "${BIN[$name]}" run --no-watch --config "$work/${FILE[$name]}.toml" &
    pids+=($!)
    PID[$name]=$!
done
sleep 2
# Every target must answer the benchmark's request with a 200 (the chain lets it through).
for name in "${TARGETS[@]}"; do
    code=$(curl -sk -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" \
        -H "origin: $ORIGIN" "${SCHEME[$name]:-http}://127.0.0.1:${PORT[$name]}${URLPATH[$name]:-/}")
    if [ "$code" != 200 ]; then
        echo "$name answered $code to the benchmark request, not 200" >&2
        exit 1
    fi
done
# nginx's worker is the child of the master whose pid file we read.
PID[nginx]=$(pgrep -P "${PID[nginx]}" | head -1)
PID[nginx-tls]=${PID[nginx]}
PID[nginx-big]=${PID[nginx]}
PID[nginx-gzip]=${PID[nginx]}
PID[sluice-big]=${PID[sluice]}

rss_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

results=$work/results.tsv
for round in $(seq 1 "$ROUNDS"); do
    for c in $CONNS; do
        for name in "${TARGETS[@]}"; do
            out=$(taskset -c "$LOAD_CPU" wrk -t"$WORKERS" -c"$c" -d"$DURATION" --latency \
                -H "authorization: Bearer $TOKEN" -H "origin: $ORIGIN" -H "accept-encoding: gzip" \
                "${SCHEME[$name]:-http}://127.0.0.1:${PORT[$name]}${URLPATH[$name]:-/}")
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$name" "$(rss_kb "${PID[$name]}")" \
                "$(tr '\n' '|' <<<"$out")" >>"$results"
            echo "round $round c$c $name done" >&2
        done
    done
done

# Idle memory: 10 routes, each with a chain of four plugins (40 named plugins).
idle_port=$(free_port)
{
    printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\n[upstreams.backend]\nendpoints = ["127.0.0.1:%s"]\n' "$idle_port" "$BACKEND"
    for r in $(seq 1 10); do
        printf '[plugins.t%s]\nmodule = "header-transform"\nconfig = { request = { set = { "x-r" = "%s" } } }\n' "$r" "$r"
        printf '[plugins.u%s]\nmodule = "header-transform"\nconfig = { response = { set = { "x-r" = "%s" } } }\n' "$r" "$r"
        printf '[plugins.d%s]\nmodule = "deny"\nconfig = { path_prefix = "/admin%s" }\n' "$r" "$r"
        printf '[plugins.e%s]\nmodule = "deny"\nconfig = { path_prefix = "/internal%s" }\n' "$r" "$r"
        printf '[[routes]]\nprefix = "/r%s"\nupstream = "backend"\nplugins = ["d%s", "t%s", "u%s", "e%s"]\n' "$r" "$r" "$r" "$r" "$r"
    done
} >"$work/idle.toml"
RUST_LOG=warn "$SLUICE" run --no-watch --config "$work/idle.toml" & pids+=($!)
idle_pid=$!
sleep 2
idle_rss=$(awk '/^VmRSS/ {print $2}' "/proc/$idle_pid/status")
# Private (anonymous) memory apart from file-backed pages: the binary's code and the
# compiled plugins mapped from the cache, shared and reclaimable (docs/performance.md).
idle_anon=$(awk '/^RssAnon/ {print $2}' "/proc/$idle_pid/status")

python3 - "$results" "$idle_rss" "$idle_anon" <<'PY'
import sys, re, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
idle_kb, anon_kb = int(sys.argv[2]), int(sys.argv[3])
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
data = {}
for rnd, c, name, rss, out in rows:
    lines = out.split("|")
    rps = float(next(l.split()[1] for l in lines if l.startswith("Requests/sec")))
    lat = {l.split()[0]: ms(l.split()[1]) for l in lines if re.match(r"\s+(50|99)%", l)}
    errors = sum(int(n) for l in lines if "Non-2xx" in l or "Socket errors" in l for n in re.findall(r"\d+", l.split(":")[1]))
    data[(rnd, c, name)] = (rps, lat["50%"], lat["99%"], int(rss), errors)
names = ["nginx", "sluice", "sluice+transform", "sluice+chain4"]
names += [n for n in ["nometrics", "log", "log+trace1", "nginx-tls", "sluice-tls", "nginx-big", "nginx-gzip", "sluice-big", "sluice-gzip", "compare"] if any(k[2] == n for k in data)]
print("| conns | proxy | req/s (median of rounds) | vs nginx, same round (median) | p50 ms | p99 ms | p99 vs nginx | peak RSS MB | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for c in sorted({k[1] for k in data}, key=int):
    rounds = sorted({k[0] for k in data if k[1] == c})
    for n in names:
        vals = [data[(r, c, n)] for r in rounds]
        ratios = [data[(r, c, n)][0] / data[(r, c, "nginx")][0] for r in rounds]
        p99r = [data[(r, c, n)][2] / data[(r, c, "nginx")][2] for r in rounds]
        med = lambda i: statistics.median(v[i] for v in vals)
        print(f"| {c} | {n} | {med(0):,.0f} | {statistics.median(ratios):.2f}x | {med(1):.2f} | {med(2):.2f} | {statistics.median(p99r):.2f}x | {max(v[3] for v in vals)/1024:.1f} | {sum(v[4] for v in vals)} |")
if any(k[2] == "sluice-tls" for k in data):
    print()
    for c in sorted({k[1] for k in data}, key=int):
        rounds = sorted({k[0] for k in data if k[1] == c})
        r = [data[(x, c, "sluice-tls")][0] / data[(x, c, "nginx-tls")][0] for x in rounds]
        p = [data[(x, c, "sluice-tls")][2] / data[(x, c, "nginx-tls")][2] for x in rounds]
        print(f"HTTPS c{c}: Sluice {statistics.median(r):.2f}x nginx's HTTPS req/s (same round, median), p99 {statistics.median(p):.2f}x")
if any(k[2] == "sluice-gzip" for k in data):
    print()
    for c in sorted({k[1] for k in data}, key=int):
        rounds = sorted({k[0] for k in data if k[1] == c})
        ratio = lambda a, b: statistics.median(data[(x, c, a)][0] / data[(x, c, b)][0] for x in rounds)
        print(f"16 KB JSON, gzip level 5, c{c}: nginx keeps {ratio('nginx-gzip', 'nginx-big'):.2f}x of its uncompressed req/s, "
              f"Sluice {ratio('sluice-gzip', 'sluice-big'):.2f}x; Sluice gzip {ratio('sluice-gzip', 'nginx-gzip'):.2f}x nginx gzip")
print(f"\nidle RSS, 10 routes x 4 plugins (40 plugin instances): {idle_kb/1024:.1f} MB "
      f"({anon_kb/1024:.1f} MB private, {(idle_kb-anon_kb)/1024:.1f} MB file-backed)")
PY
link_order_report "$SLUICE"
