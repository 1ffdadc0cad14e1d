"""A real WebSocket server and client (PyPI `websockets`) for tests/websocket.rs.

    websocket_peer.py serve                 an upstream: prints its port, serves until killed
    websocket_peer.py echo URL KEY          one socket: headers seen upstream, text and binary echo
    websocket_peer.py status URL            the HTTP status of a refused handshake
    websocket_peer.py closed URL KEY        the close code a socket ends with, waiting quietly
    websocket_peer.py many URL KEY N        N sockets open at once; waits for a line on stdin
    websocket_peer.py hold URL KEY          echoes every 100 ms, one line each, until closed
    websocket_peer.py too_big URL KEY SIZE  a SIZE-byte frame on one socket while another echoes

The upstream: /ws/close closes at once with 4000; /ws/headers first sends the handshake's
headers as JSON; every other path echoes.
"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def upstream():
    async def handler(ws):
        path = ws.request.path
        if path.startswith("/ws/close"):
            await ws.close(4000, "bye")
            return
        if path.startswith("/ws/headers"):
            headers = {k.lower(): v for k, v in ws.request.headers.raw_items()}
            await ws.send(json.dumps(headers))
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", 0, max_size=None, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


def dial(url, key=None, compression="deflate"):
    headers = {"x-api-key": key} if key else {}
    return connect(url, additional_headers=headers, max_size=None, ping_interval=None,
                   open_timeout=10, close_timeout=2, compression=compression)


def code_of(e):
    return e.rcvd.code if e.rcvd else "none"


async def echo(url, key):
    async with dial(url, key) as ws:
        headers = json.loads(await ws.recv())
        await ws.send("hello")
        text = await ws.recv()
        blob = bytes(range(256)) * 400
        await ws.send(blob)
        binary_ok = await ws.recv() == blob
    print(json.dumps({"headers": headers, "text": text, "binary_ok": binary_ok}))


async def status(url):
    try:
        async with dial(url):
            print(101)
    except InvalidStatus as e:
        print(e.response.status_code)


async def closed(url, key):
    started = time.monotonic()
    async with dial(url, key) as ws:
        try:
            await ws.recv()
            print("message")
        except ConnectionClosed as e:
            print(code_of(e), round(time.monotonic() - started, 1))


async def many(url, key, n):
    sockets = await asyncio.gather(*(dial(url, key) for _ in range(n)))

    async def round_trip(i, ws):
        await ws.send(f"m{i}")
        return await ws.recv() == f"m{i}"

    ok = await asyncio.gather(*(round_trip(i, ws) for i, ws in enumerate(sockets)))
    print("open", sum(ok), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    ok = await asyncio.gather(*(round_trip(i, ws) for i, ws in enumerate(sockets)))
    print("echoed", sum(ok), flush=True)
    await asyncio.gather(*(ws.close() for ws in sockets))
    print("closed", flush=True)


async def hold(url, key):
    async with dial(url, key) as ws:
        print("open", flush=True)
        try:
            while True:
                await ws.send("ping")
                assert await ws.recv() == "ping"
                print("echo", flush=True)
                await asyncio.sleep(0.1)
        except ConnectionClosed as e:
            print("closed", code_of(e), flush=True)


async def too_big(url, key, size):
    # Uncompressed, so that the frame on the wire is SIZE bytes.
    async with dial(url, key, compression=None) as big, dial(url, key) as other:
        await big.send(b"x" * size)
        try:
            await big.recv()
            code = "message"
        except ConnectionClosed as e:
            code = code_of(e)
        await other.send("still here")
        print(code, "other-ok" if await other.recv() == "still here" else "other-failed")


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "serve":
        run = upstream()
    elif mode == "echo":
        run = echo(*args)
    elif mode == "status":
        run = status(*args)
    elif mode == "closed":
        run = closed(*args)
    elif mode == "many":
        run = many(args[0], args[1], int(args[2]))
    elif mode == "hold":
        run = hold(*args)
    elif mode == "too_big":
        run = too_big(args[0], args[1], int(args[2]))
    else:
        sys.exit(f"unknown mode {mode}")
    asyncio.run(run)


if __name__ == "__main__":
    main()
