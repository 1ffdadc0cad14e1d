"""One kept-alive HTTPS connection, for the certificate-rotation test: a request, then
(after a line on stdin) another on the same connection. Prints "STATUS CN" per request,
CN being the server certificate's common name as this connection saw it.
Usage: tls_keepalive.py HOST:PORT SNI CA.pem"""

import http.client
import socket
import ssl
import sys

addr, name, ca = sys.argv[1:4]
ip, port = addr.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)
tls = ctx.wrap_socket(socket.create_connection((ip, int(port)), timeout=10), server_hostname=name)
conn = http.client.HTTPConnection(name, int(port))
conn.sock = tls


def once():
    conn.request("GET", "/", headers={"Host": name})
    r = conn.getresponse()
    r.read()
    cn = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
    print(r.status, cn, flush=True)


once()
sys.stdin.readline()
once()
