"""A real gRPC server and client (PyPI grpcio) for tests/grpc.rs, without generated code:
messages are raw bytes, so no .proto is needed.

  grpc_peer.py server [PORT]     serves sluice.test.Echo on 127.0.0.1:PORT (default: any),
                                 prints "listening PORT"
  grpc_peer.py calls ADDR TOKEN  every call kind through ADDR, printed as one JSON object
  grpc_peer.py call ADDR METHOD TIMEOUT SIZE [TOKEN]
                                 one unary call sending SIZE bytes: {"code": ..., "details": ...};
                                 METHOD is a name in sluice.test.Echo or a whole /pkg.Svc/Method
  grpc_peer.py stream ADDR       reads Forever until the stream fails: {"got": N, "code": ...}
  grpc_peer.py web ADDR TOKEN    gRPC-Web calls over HTTP/1.1 (as a browser's client library
                                 makes them, written out by hand), printed as one JSON object

The service (each method's path is /sluice.test.Echo/NAME):
  Unary   returns the request, with trailing metadata x-served-by: grpc-peer and the
          authorization header it saw (or "none") as x-saw-authorization
  Count   server streaming: the request is a number N; answers "0" .. "N-1"
  Sum     client streaming: answers the number of messages and bytes received
  Chat    bidirectional: answers each message upper-cased, as it arrives
  Slow    answers after 3 s
  Big     answers with as many bytes as the request's number says
  Forever server streaming: a message every 100 ms until cancelled
"""

import base64
import http.client
import json
import struct
import sys
import time
from concurrent import futures

import grpc

SERVICE = "sluice.test.Echo"


def ident(b):
    return b


def unary(request, context):
    meta = dict(context.invocation_metadata())
    context.set_trailing_metadata(
        (("x-served-by", "grpc-peer"), ("x-saw-authorization", meta.get("authorization", "none")))
    )
    return request


def count(request, context):
    for i in range(int(request)):
        yield str(i).encode()


def total(requests, context):
    n, size = 0, 0
    for r in requests:
        n += 1
        size += len(r)
    return f"{n} {size}".encode()


def chat(requests, context):
    for r in requests:
        yield r.upper()


def slow(request, context):
    time.sleep(3)
    return request


def big(request, context):
    return b"x" * int(request)


def forever(request, context):
    i = 0
    while context.is_active():
        yield str(i).encode()
        i += 1
        time.sleep(0.1)


def serve(port):
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "Count": grpc.unary_stream_rpc_method_handler(count, ident, ident),
        "Sum": grpc.stream_unary_rpc_method_handler(total, ident, ident),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, ident, ident),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
        "Big": grpc.unary_unary_rpc_method_handler(big, ident, ident),
        "Forever": grpc.unary_stream_rpc_method_handler(forever, ident, ident),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.max_send_message_length", 64 << 20),
                 ("grpc.max_receive_message_length", 64 << 20)],
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


def channel(addr):
    return grpc.insecure_channel(
        addr, options=[("grpc.max_receive_message_length", 64 << 20),
                       ("grpc.enable_retries", 0)]
    )


def method(ch, kind, name):
    make = getattr(ch, kind)
    path = name if name.startswith("/") else f"/{SERVICE}/{name}"
    return make(path, request_serializer=ident, response_deserializer=ident)


def failure(e):
    return {"code": e.code().name, "details": e.details()}


def calls(addr, token):
    ch = channel(addr)
    auth = (("authorization", f"Bearer {token}"),)
    out = {}
    reply, call = method(ch, "unary_unary", "Unary").with_call(b"hello", metadata=auth, timeout=10)
    out["unary"] = {
        "reply": reply.decode(),
        "trailers": dict(call.trailing_metadata()),
        "code": call.code().name,
    }
    stream = method(ch, "unary_stream", "Count")(b"5", metadata=auth, timeout=10)
    out["server_streaming"] = [m.decode() for m in stream]
    sent = iter([b"a" * 10, b"b" * 20, b"c" * 30])
    out["client_streaming"] = method(ch, "stream_unary", "Sum")(sent, metadata=auth, timeout=10).decode()
    words = iter([b"one", b"two", b"three"])
    out["bidi"] = [m.decode() for m in method(ch, "stream_stream", "Chat")(words, metadata=auth, timeout=10)]
    # 1,000 messages each way on one bidirectional call.
    many = iter([b"m%d" % i for i in range(1000)])
    out["bidi_many"] = sum(1 for _ in method(ch, "stream_stream", "Chat")(many, metadata=auth, timeout=20))
    try:
        method(ch, "unary_unary", "Unary")(b"hello", timeout=10)
        out["no_token"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["no_token"] = failure(e)
    return out


def call(addr, name, timeout, payload, token):
    ch = channel(addr)
    meta = (("authorization", f"Bearer {token}"),) if token else ()
    started = time.monotonic()
    try:
        reply = method(ch, "unary_unary", name)(payload, timeout=timeout, metadata=meta)
        result = {"code": "OK", "bytes": len(reply)}
    except grpc.RpcError as e:
        result = failure(e)
    result["took"] = time.monotonic() - started
    return result


def read_forever(addr):
    got = 0
    try:
        for _ in method(channel(addr), "unary_stream", "Forever")(b"", timeout=20):
            got += 1
            if got == 3:
                print("streaming", flush=True)
        return {"got": got, "code": "OK"}
    except grpc.RpcError as e:
        return {"got": got, **failure(e)}


def web_call(addr, path, payload, text, token):
    host, port = addr.rsplit(":", 1)
    body = b"\x00" + struct.pack(">I", len(payload)) + payload
    kind = "application/grpc-web-text" if text else "application/grpc-web+proto"
    headers = {"content-type": kind, "x-grpc-web": "1", "accept": kind}
    if token:
        headers["authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", path, base64.b64encode(body) if text else body, headers)
    resp = conn.getresponse()
    raw = resp.read()
    if text:
        raw = base64.b64decode(raw)
    messages, trailers = [], {}
    while raw:
        flag, length = raw[0], struct.unpack(">I", raw[1:5])[0]
        chunk, raw = raw[5:5 + length], raw[5 + length:]
        if flag & 0x80:
            for line in chunk.decode().split("\r\n"):
                if line:
                    k, v = line.split(":", 1)
                    trailers[k.strip()] = v.strip()
        else:
            messages.append(chunk.decode())
    return {
        "status": resp.status,
        "content_type": resp.getheader("content-type"),
        "grpc_status": resp.getheader("grpc-status"),
        "messages": messages,
        "trailers": trailers,
    }


def web(addr, token):
    return {
        "binary": web_call(addr, f"/{SERVICE}/Unary", b"hello", False, token),
        "text": web_call(addr, f"/{SERVICE}/Count", b"3", True, token),
        "no_token": web_call(addr, f"/{SERVICE}/Unary", b"hello", False, None),
    }


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        serve(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    elif mode == "calls":
        print(json.dumps(calls(sys.argv[2], sys.argv[3])))
    elif mode == "call":
        token = sys.argv[6] if len(sys.argv) > 6 else None
        payload = b"x" * int(sys.argv[5])
        print(json.dumps(call(sys.argv[2], sys.argv[3], float(sys.argv[4]), payload, token)))
    elif mode == "web":
        print(json.dumps(web(sys.argv[2], sys.argv[3])))
    elif mode == "stream":
        print(json.dumps(read_forever(sys.argv[2])), flush=True)
