"""An HTTPS upstream for the upstream-TLS tests: answers every GET with 200 and, when the
client sent a certificate, its common name in `x-client-cn`. Prints its port, then serves
until killed.
Usage: https_upstream.py CERT KEY [CLIENT_CA]  (with CLIENT_CA, a client certificate is required)"""

import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        cert = self.connection.getpeercert()
        cn = ""
        if cert:
            cn = dict(x[0] for x in cert["subject"]).get("commonName", "")
        body = b"secure upstream\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-client-cn", cn)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
if len(sys.argv) > 3:
    ctx.load_verify_locations(sys.argv[3])
    ctx.verify_mode = ssl.CERT_REQUIRED
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
