#!/usr/bin/env python3
"""Opens one keep-alive connection to ADDR, sends each PATH on it in turn (HTTP/1.1, or HTTP/2
with prior knowledge under --h2), and prints a line per response: "<status> <body bytes>".
Then leaves the connection idle and prints what the server does within --wait seconds (with
--no-ping-ack, leaving the server's PINGs unanswered from then on):
"goaway" for an HTTP/2 GOAWAY, then "eof" when it closes, or "open" if it does not. Raw bytes
and frames, so that no client library closes or pings on its own."""
import argparse
import socket
import struct
import time

p = argparse.ArgumentParser()
p.add_argument("--addr", required=True)
p.add_argument("--h2", action="store_true")
p.add_argument("--wait", type=float, default=10)
p.add_argument("--no-ping-ack", action="store_true")
p.add_argument("paths", nargs="*")
a = p.parse_args()
host, _, port = a.addr.rpartition(":")
s = socket.create_connection((host, int(port)), timeout=30)
buf = b""
ack_pings = True


def recv():
    global buf
    chunk = s.recv(65536)
    if not chunk:
        raise EOFError
    buf += chunk


def h1(path):
    global buf
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {a.addr}\r\n\r\n".encode())
    while b"\r\n\r\n" not in buf:
        recv()
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")[1]
    fields = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    if "content-length" in fields:
        n = int(fields["content-length"])
        while len(buf) < n:
            recv()
        body, buf = buf[:n], buf[n:]
    else:  # chunked
        body = b""
        while True:
            while b"\r\n" not in buf:
                recv()
            size, _, rest = buf.partition(b"\r\n")
            n = int(size.split(b";")[0], 16)
            while len(rest) < n + 2:
                recv()
                size, _, rest = buf.partition(b"\r\n")
            body += rest[:n]
            buf = rest[n + 2 :]
            if n == 0:
                break
    print(status, len(body), flush=True)


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    def enc(b):
        assert len(b) < 127
        return bytes([len(b)]) + b
    return b"\x00" + enc(name.encode()) + enc(value.encode())


def frames():
    """Yields (kind, flags, stream, payload), answering SETTINGS and PING."""
    global buf
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            recv()
        n = int.from_bytes(buf[:3], "big")
        kind, flags = buf[3], buf[4]
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload, buf = buf[9 : 9 + n], buf[9 + n :]
        if kind == 0x4 and not flags & 0x1:
            s.sendall(frame(0x4, 0x1, 0))
        if kind == 0x6 and not flags & 0x1 and ack_pings:
            s.sendall(frame(0x6, 0x1, 0, payload))
        yield kind, flags, stream, payload


def h2(path, stream):
    block = b"".join(
        literal(n, v)
        for n, v in [(":method", "GET"), (":scheme", "http"), (":authority", a.addr), (":path", path)]
    )
    s.sendall(frame(0x1, 0x5, stream, block))  # HEADERS, END_STREAM | END_HEADERS
    status, size = -1, 0
    for kind, flags, sid, payload in frames():
        if sid != stream:
            continue
        if kind == 0x1:
            codes = {0x88: 200, 0x89: 204, 0x8C: 400, 0x8D: 404, 0x8E: 500}
            status = codes.get(payload[0], -1) if payload else -1
        elif kind == 0x0:
            size += len(payload)
        if flags & 0x1:  # END_STREAM
            break
    print(status, size, flush=True)


try:
    if a.h2:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0))
        for i, path in enumerate(a.paths):
            h2(path, 1 + 2 * i)
    else:
        for path in a.paths:
            h1(path)
except EOFError:
    print("closed early", flush=True)
    raise SystemExit(1)

s.settimeout(a.wait)
ack_pings = not a.no_ping_ack
started = time.monotonic()
try:
    if a.h2:
        goaway = False
        for kind, _, _, _ in frames():
            if kind == 0x7 and not goaway:
                goaway = True
                print("goaway", flush=True)
    else:
        recv()
        print("unexpected bytes", buf[:80], flush=True)
except EOFError:
    print("eof", flush=True)
except socket.timeout:
    print("open", flush=True)
