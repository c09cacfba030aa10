#!/usr/bin/env python3
"""Opens one HTTP/2 (prior knowledge) request stream to ADDR with a POST to PATH, sends DATA
without ending the stream, and waits up to TIMEOUT for the response's HEADERS, the stream still
open. Prints the response's :status (0 when none came). Raw frames and HPACK literals, so that no
client library decides when to send. With --no-authority the request has no :authority (nor
Host)."""
import argparse
import socket
import struct
import time

p = argparse.ArgumentParser()
p.add_argument("--addr", required=True)
p.add_argument("--path", default="/whoami")
p.add_argument("--timeout", type=float, default=3)
p.add_argument("--no-authority", action="store_true")
a = p.parse_args()
host, _, port = a.addr.rpartition(":")


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    # Literal header field without indexing, new name, no Huffman coding.
    def s(b):
        assert len(b) < 127
        return bytes([len(b)]) + b
    return b"\x00" + s(name.encode()) + s(value.encode())


block = b"".join(
    literal(n, v)
    for n, v in [(":method", "POST"), (":scheme", "http"), (":authority", a.addr), (":path", a.path)]
    if not (a.no_authority and n == ":authority")
)
s = socket.create_connection((host, int(port)), timeout=a.timeout)
s.sendall(
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    + frame(0x4, 0, 0)  # SETTINGS
    + frame(0x1, 0x4, 1, block)  # HEADERS, END_HEADERS, stream open
    + frame(0x0, 0, 1, b"first message")  # DATA, stream still open
)
status = 0
buf = b""
deadline = time.monotonic() + a.timeout
while time.monotonic() < deadline and status == 0:
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        break
    if not chunk:
        break
    buf += chunk
    while len(buf) >= 9:
        length = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + length:
            break
        kind, flags = buf[3], buf[4]
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload = buf[9 : 9 + length]
        buf = buf[9 + length :]
        if kind == 0x4 and not flags & 0x1:
            s.sendall(frame(0x4, 0x1, 0))  # SETTINGS ACK
        if kind == 0x1 and stream == 1:
            # The static table's :status entries (indexed), else a literal :status.
            codes = {0x88: 200, 0x89: 204, 0x8A: 206, 0x8B: 304, 0x8C: 400, 0x8D: 404, 0x8E: 500}
            status = codes.get(payload[0], -1) if payload else -1
print(status)
