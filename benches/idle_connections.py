"""Memory per idle keep-alive connection, and how much comes back once they close.

    python3 benches/idle_connections.py N [SLUICE_BINARY]

Starts `sluice echo` and `sluice run` on loopback ports 9611/9612, opens N connections that
each make one request and then stay open, and prints the gateway's RSS before, with the
connections open, and two seconds after they closed. Needs `ulimit -n` above N + 100.
"""
import socket, subprocess, time, sys, os
B=sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "target", "release", "sluice")
cfg="""[server]
listen = "127.0.0.1:9611"
workers = 1
idle_timeout = "10m"
max_connections_per_ip = 10000
[upstreams.echo]
endpoints = ["127.0.0.1:9612"]
[[routes]]
prefix = "/"
upstream = "echo"
"""
open("/tmp/idle.toml","w").write(cfg)
echo=subprocess.Popen([B,"echo","--listen","127.0.0.1:9612"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
gw=subprocess.Popen([B,"run","--no-watch","--config","/tmp/idle.toml"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
time.sleep(1.5)
def rss(p): 
    for l in open(f"/proc/{p}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
base=rss(gw.pid)
N=int(sys.argv[1])
socks=[]
for i in range(N):
    s=socket.create_connection(("127.0.0.1",9611)); s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"); socks.append(s)
for s in socks:
    d=b""
    while b"\r\n\r\n" not in d: d+=s.recv(65536)
time.sleep(1)
full=rss(gw.pid)
for s in socks: s.close()
time.sleep(2)
after=rss(gw.pid)
print(f"baseline {base} kB, {N} idle keep-alive connections {full} kB ({(full-base)/N:.1f} kB each), after closing {after} kB")
gw.terminate(); echo.terminate()
