#!/usr/bin/env bash
# The order of the gateway's functions in its binary (host/link-order.txt, which host/build.rs
# hands the linker as `--symbol-ordering-file`): first the functions a request runs, then
# those start-up runs, each group together at the start of `.text`. The kernel maps a
# binary's code around every page it faults in, so start-up code spread over the 29 MB of
# `.text` kept ~10.5 MB of it resident in an idle gateway; packed, the same code takes a
# few MB (docs/performance.md, "Idle memory: the functions start-up runs, packed").
#
#   benches/link-order.sh          # profile the built gateway, rewrite host/link-order.txt
#   benches/link-order.sh check    # how many listed functions the built binary has
#
# The list names symbols, whose hashes change when a dependency's version or features do:
# names the binary lacks are skipped by the linker (their functions go back to where they
# were), so a stale list costs memory, never correctness. Regenerate it after upgrading
# crates; `check` (and benches/load.sh) say how much of it still matches.
#
# How: the release binary runs under `valgrind --tool=callgrind --demangle=no` with two
# configs (the idle benchmark's plugins, and the load benchmark's four-plugin chain with the
# admin listener), from the same nginx backend as benches/load.sh. Each is dumped once when
# it listens (start-up) and once after requests (plain, through plugins, a metrics scrape).
# Plugins are compiled into a cache first, in a run that is not profiled: under valgrind
# wasmtime sees other CPU features, and compiling would otherwise count as start-up.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh
ORDER=host/link-order.txt
CACHE=${CACHE:-$HOME/.cache/sluice-bench/valgrind-cache}

if [ "${1:-}" = check ]; then
    build_sluice
    link_order_report "$SLUICE"
    exit
fi

need_tools "nginx valgrind curl" nginx valgrind callgrind_control python3 curl
build_sluice
BACKEND=$(free_port)
nginx_conf backend "
    server {
        listen 127.0.0.1:$BACKEND;
        location / { return 200 \"ok\\n\"; }
    }"
nginx -c "$work/backend.conf" -p "$work" & pids+=($!)

config() { # NAME PORT ADMIN_PORT -> writes $work/NAME.toml
    local name=$1 port=$2 admin=$3
    {
        # Valgrind cannot map the pooling allocator's address space reservation for more.
        printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\n' "$port"
        printf '[runtime]\nmax_instances = 4\ncache_dir = "%s"\nquick_start = false\n' "$CACHE"
        printf '[upstreams.backend]\nendpoints = ["127.0.0.1:%s"]\n' "$BACKEND"
        case $name in
        idle) # benches/load.sh's idle config, one route of its ten
            printf '[plugins.t]\nmodule = "header-transform"\nconfig = { request = { set = { "x-r" = "1" } } }\n'
            printf '[plugins.u]\nmodule = "header-transform"\nconfig = { response = { set = { "x-r" = "1" } } }\n'
            printf '[plugins.d]\nmodule = "deny"\nconfig = { path_prefix = "/admin" }\n'
            printf '[plugins.e]\nmodule = "deny"\nconfig = { path_prefix = "/internal" }\n'
            printf '[[routes]]\nprefix = "/chain"\nupstream = "backend"\nplugins = ["d", "t", "u", "e"]\n'
            ;;
        chain)
            printf '[admin]\nlisten = "127.0.0.1:%s"\n%s\n' "$admin" "$CHAIN_PLUGINS"
            printf '[[routes]]\nprefix = "/chain"\nupstream = "backend"\nplugins = [%s]\n' "$CHAIN_ROUTE"
            ;;
        esac
        printf '[[routes]]\nprefix = "/"\nupstream = "backend"\n'
    } >"$work/$name.toml"
}

# profile NAME: the start-up dump ($work/NAME.cg.1) and the requests' dump ($work/NAME.cg.2)
profile() {
    local name=$1 port admin pid
    port=$(free_port)
    admin=$(free_port)
    config "$name" "$port" "$admin"
    for run in warm profile; do
        local tool=(valgrind --tool=none)
        [ $run = profile ] && tool=(valgrind --tool=callgrind --demangle=no "--callgrind-out-file=$work/$name.cg")
        echo "$name: $run run (under valgrind: slow)" >&2
        RUST_LOG=warn "${tool[@]}" "$SLUICE" run --no-watch --config "$work/$name.toml" \
            2>"$work/$name.$run.log" &
        pid=$!
        python3 - "$port" "$admin" "$pid" "$run" "$TOKEN" "$ORIGIN" "$name" <<'PY'
import http.client, os, socket, subprocess, sys, time
port, admin, pid, run = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
name = sys.argv[7]
deadline = time.time() + 900
while True:  # listening: a connection only, so that no request's code counts as start-up
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        break
    except OSError:
        os.kill(pid, 0)
        if time.time() > deadline:
            sys.exit("the gateway never listened")
        time.sleep(0.5)
if run == "warm":
    sys.exit()
time.sleep(3)  # what an idle gateway does after start: tickers, the first health round
dump = lambda: subprocess.run(["callgrind_control", "--dump", str(pid)], check=True,
                              capture_output=True)
dump()
headers = {"authorization": "Bearer " + sys.argv[5], "origin": sys.argv[6]}
for path in ["/", "/chain/x", "/chain/admin"]:
    for _ in range(3):  # a fresh connection each, then one kept alive
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", path, headers=headers)
        c.getresponse().read()
    for _ in range(20):
        c.request("GET", path, headers=headers)
        c.getresponse().read()
if name == "chain":  # the config with the admin listener
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
    c.request("GET", "/metrics")
    r = c.getresponse()
    r.read()
    assert r.status == 200, f"/metrics answered {r.status}"
dump()
PY
        kill -TERM "$pid"
        wait "$pid" || true
    done
}

profile idle
profile chain
python3 - "$SLUICE" "$ORDER" "$work"/idle.cg.1 "$work"/chain.cg.1 -- "$work"/idle.cg.2 "$work"/chain.cg.2 <<'PY'
import collections, os, re, subprocess, sys

binary, order = sys.argv[1], sys.argv[2]
binary_name = os.path.basename(binary)
split = sys.argv.index("--")
startup_files, request_files = sys.argv[3:split], sys.argv[split + 1:]

def costs(path):
    """Own instructions of each function of the sluice binary in one callgrind dump."""
    names, objects, own = {}, {}, collections.Counter()
    obj = fn = None
    after_call = False  # the line after `calls=` is the call's inclusive cost: not own
    for line in open(path, errors="replace"):
        m = re.match(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?", line)
        if m:
            table = objects if m.group(2) == "ob" else names
            if m.group(4):
                table[m.group(3)] = m.group(4).rstrip()
            if not m.group(1):
                if m.group(2) == "ob":
                    obj = objects[m.group(3)]
                else:
                    fn = names[m.group(3)].removesuffix("'2")
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        m = re.match(r"([+-]?\d+|\*)\s+(\d+)", line)
        if m:
            if not after_call and fn and obj and os.path.basename(obj) == binary_name:
                own[fn] += int(m.group(2))
            after_call = False
    return own

defined = set(subprocess.run(["nm", "--defined-only", binary], capture_output=True,
                             text=True, check=True).stdout.split())
request, startup = collections.Counter(), collections.Counter()
for path in request_files:
    request.update(costs(path))
for path in startup_files:
    startup.update(costs(path))
# Requests first, hottest first; then the rest of start-up, by name (stable diffs).
first = [f for f, _ in request.most_common() if f in defined]
rest = sorted(f for f in startup if f in defined and f not in request)
with open(order, "w") as out:
    out.write("\n".join(first + rest) + "\n")
print(f"{order}: {len(first)} functions requests ran, then {len(rest)} more of start-up's")
PY
