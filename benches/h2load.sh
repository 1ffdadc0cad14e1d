#!/usr/bin/env bash
# HTTP/2 benchmark: h2load (Debian nghttp2-client) against nginx and Sluice, each speaking
# h2c (prior knowledge) to clients and HTTP/1.1 to the same nginx backend, in the same run.
# Each proxy runs alone on PROXY_CPU with one worker; h2load and the backend share LOAD_CPU.
# Rounds interleave the two, and Sluice is reported as a ratio to nginx in the same round.
#
#   benches/h2load.sh                          # 3 rounds x 10 s, 50 connections x 10 streams
#   ROUNDS=1 DURATION=5 CONNS=20 STREAMS=32 benches/h2load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
STREAMS=${STREAMS:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

# shellcheck source=benches/common.sh
. benches/common.sh
need_tools "nginx nghttp2-client" nginx h2load taskset python3
build_sluice
BACKEND=$(free_port)
NGINX=$(free_port)
SLUICE_PORT=$(free_port)
BODY=$(printf 'x%.0s' $(seq 1 99))

nginx_conf nginx "
    upstream backend {
        server 127.0.0.1:$BACKEND;
        keepalive 512;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX http2;
        keepalive_requests 1000000;
        http2_max_concurrent_streams 128;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
nginx_conf backend "
    server {
        listen 127.0.0.1:$BACKEND;
        keepalive_requests 1000000;
        location / { return 200 \"$BODY\\n\"; }
    }"
cat >"$work/sluice.toml" <<CONF
[server]
listen = "127.0.0.1:$SLUICE_PORT"
workers = 1

[upstreams.backend]
endpoints = ["127.0.0.1:$BACKEND"]

[[routes]]
prefix = "/"
upstream = "backend"
CONF
taskset -c "$LOAD_CPU" nginx -c "$work/backend.conf" -p "$work" & pids+=($!)
taskset -c "$PROXY_CPU" nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
RUST_LOG=warn taskset -c "$PROXY_CPU" "$SLUICE" run --no-watch --config "$work/sluice.toml" &
pids+=($!)
sleep 2

results=$work/results.tsv
for round in $(seq 1 "$ROUNDS"); do
    for name in nginx sluice; do
        port=$NGINX
        [ "$name" = sluice ] && port=$SLUICE_PORT
        out=$(taskset -c "$LOAD_CPU" h2load -c "$CONNS" -m "$STREAMS" -D "$DURATION" \
            --warm-up-time=1 "http://127.0.0.1:$port/")
        printf '%s\t%s\t%s\n' "$round" "$name" "$(tr '\n' '|' <<<"$out")" >>"$results"
        echo "round $round $name done" >&2
    done
done

python3 - "$results" "$CONNS" "$STREAMS" <<'PY'
import re, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
data = {}
for rnd, name, out in rows:
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    failed = int(re.search(r"(\d+) failed", out).group(1))
    # "time for request:  min  max  mean  sd  +/- sd"
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}[mean.group(2)]
    data[(rnd, name)] = (rps, float(mean.group(1)) * scale, failed)
rounds = sorted({k[0] for k in data})
print(f"| proxy | req/s (median of rounds) | vs nginx, same round (median) | mean ms per request | failed |")
print("|---|---|---|---|---|")
for name in ["nginx", "sluice"]:
    vals = [data[(r, name)] for r in rounds]
    ratio = statistics.median(data[(r, name)][0] / data[(r, "nginx")][0] for r in rounds)
    print(f"| {name} | {statistics.median(v[0] for v in vals):,.0f} | {ratio:.2f}x | "
          f"{statistics.median(v[1] for v in vals):.2f} | {sum(v[2] for v in vals)} |")
print(f"\nh2c, {sys.argv[2]} connections x {sys.argv[3]} streams, {len(rounds)} round(s)")
PY
