"""WebSockets over HTTP/2 (RFC 8441) as a client: PyPI `h2` speaks HTTP/2 (h2c, prior
knowledge) and opens each socket with an extended CONNECT; the WebSocket frames on each
stream are written and read here (RFC 6455 5.2; client frames masked). For tests/websocket.rs.

    websocket_h2.py settings ADDR                    SETTINGS_ENABLE_CONNECT_PROTOCOL, as JSON
    websocket_h2.py echo ADDR PATH KEY N             N sockets on one connection, each echoed
    websocket_h2.py status ADDR PATH [KEY]           the :status a CONNECT is answered with
    websocket_h2.py quiet ADDR PATH KEY SECS         a socket silent for SECS, then one echo
    websocket_h2.py too_big ADDR PATH KEY SIZE       a SIZE-byte frame on one socket while
                                                     another socket on the connection echoes

Every mode prints one JSON line. On /ws/headers the upstream first sends the handshake's
headers as it received them.
"""

import json
import os
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events

TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


def frame(opcode, payload, fin=True):
    """A masked client frame."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def parse(buf):
    """Whole unmasked server frames at the front of `buf`: ([(opcode, payload)], rest)."""
    frames = []
    while len(buf) >= 2:
        n, at = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, at = struct.unpack(">H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, at = struct.unpack(">Q", buf[2:10])[0], 10
        if len(buf) < at + n:
            break
        frames.append((buf[0] & 0x0F, bytes(buf[at:at + n])))
        buf = buf[at + n:]
    return frames, buf


class Client:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.authority = addr
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.flush()
        self.status, self.data, self.ended, self.closed = {}, {}, set(), False
        self.settings = None
        while self.settings is None:
            self.pump()

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def pump(self):
        """Reads once from the connection and handles what arrived."""
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            raise ConnectionError("the gateway closed the connection")
        for event in self.conn.receive_data(chunk):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings = {int(k): v.new_value for k, v in event.changed_settings.items()}
            elif isinstance(event, h2.events.ResponseReceived):
                self.status[event.stream_id] = int(dict(event.headers)[":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
        self.flush()

    def connect(self, path, key=None):
        """Opens a socket; its stream id once answered, and the status."""
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                   (":path", path), (":authority", self.authority), ("sec-websocket-version", "13")]
        if key:
            headers.append(("x-api-key", key))
        self.conn.send_headers(sid, headers)
        self.flush()
        while sid not in self.status and sid not in self.ended:
            self.pump()
        return sid, self.status.get(sid)

    def send(self, sid, opcode, payload):
        self.conn.send_data(sid, frame(opcode, payload))
        self.flush()


def take(client, sid):
    """The next whole frame on `sid` (consumed), or None when the stream ended first."""
    while True:
        buf = client.data.get(sid, b"")
        frames, rest = parse(buf)
        if frames:
            opcode, payload = frames[0]
            n = len(payload)
            head = 2 + (2 if 126 <= n < 65536 else 8 if n >= 65536 else 0)
            client.data[sid] = buf[head + n:]
            return opcode, payload
        if sid in client.ended or client.closed:
            return None
        client.pump()


def close_code(f):
    if f is None:
        return "none"
    opcode, payload = f
    return struct.unpack(">H", payload[:2])[0] if opcode == CLOSE and len(payload) >= 2 else "none"


def echo(addr, path, key, n):
    c = Client(addr)
    sockets = [c.connect(path, key) for _ in range(n)]
    out = {"statuses": [s for _, s in sockets], "headers": None, "echoed": 0}
    for sid, status in sockets:
        if status != 200:
            continue
        if path.startswith("/ws/headers"):
            opcode, payload = take(c, sid)
            out["headers"] = json.loads(payload)
    # Interleaved on the one connection: each socket gets its own messages back.
    for round_ in range(3):
        for i, (sid, _) in enumerate(sockets):
            c.send(sid, TEXT, f"hello {i} {round_}".encode())
            c.send(sid, BINARY, bytes([i % 256, round_]) * 100)
        for i, (sid, _) in enumerate(sockets):
            text, binary = take(c, sid), take(c, sid)
            if text == (TEXT, f"hello {i} {round_}".encode()) and \
                    binary == (BINARY, bytes([i % 256, round_]) * 100):
                out["echoed"] += 1
    codes = []
    for sid, _ in sockets:
        c.send(sid, CLOSE, struct.pack(">H", 1000) + b"done")
        codes.append(close_code(take(c, sid)))
    out["close_codes"] = codes
    print(json.dumps(out))


def status(addr, path, key=None):
    c = Client(addr)
    _, s = c.connect(path, key)
    print(json.dumps({"status": s}))


def quiet(addr, path, key, secs):
    """Sends nothing for `secs` while reading (a close from the gateway ends the wait),
    then one message."""
    c = Client(addr)
    sid, s = c.connect(path, key)
    end = time.monotonic() + secs
    c.sock.settimeout(0.1)
    while time.monotonic() < end and sid not in c.ended and not parse(c.data.get(sid, b""))[0]:
        try:
            c.pump()
        except socket.timeout:
            pass
    c.sock.settimeout(10)
    if not parse(c.data.get(sid, b""))[0] and sid not in c.ended:
        c.send(sid, TEXT, b"still there?")
    got = take(c, sid)
    print(json.dumps({"status": s, "echo": got[1].decode() if got and got[0] == TEXT else None,
                      "close_code": close_code(got) if got and got[0] == CLOSE else None}))


def too_big(addr, path, key, size):
    c = Client(addr)
    big, _ = c.connect(path, key)
    other, _ = c.connect(path, key)
    # A frame header declaring `size` bytes, and the first KiB of it.
    head = bytes([0x80 | BINARY, 0x80 | 127]) + struct.pack(">Q", size) + os.urandom(4)
    c.conn.send_data(big, head + b"x" * 1024)
    c.flush()
    code = close_code(take(c, big))
    c.send(other, TEXT, b"unaffected")
    got = take(c, other)
    print(json.dumps({"close_code": code, "other": got[1].decode() if got else None}))


def main():
    mode, addr = sys.argv[1], sys.argv[2]
    if mode == "settings":
        c = Client(addr)
        print(json.dumps({"enable_connect_protocol": c.settings.get(0x8, 0)}))
    elif mode == "echo":
        echo(addr, sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif mode == "status":
        status(addr, sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    elif mode == "quiet":
        quiet(addr, sys.argv[3], sys.argv[4], float(sys.argv[5]))
    elif mode == "too_big":
        too_big(addr, sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
