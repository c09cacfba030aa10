#!/usr/bin/env python3
"""Sends raw bytes to ADDR (Python escapes like \\r\\n are decoded), reads until the server
closes or TIMEOUT passes, and prints JSON: the status code of the first response, the bytes
received, and whether the server reset the connection. Optionally sends more bytes after the first response (for upgraded connections), and
stops at their echo unless told to hold the connection (then it says "echoed" on stderr when the
echo is in)."""
import argparse
import json
import socket
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--addr", required=True)
p.add_argument("--send", required=True)
p.add_argument("--then", default="")
p.add_argument("--timeout", type=float, default=3)
p.add_argument("--hold", action="store_true", help="after the echo of --then, read on until the server closes or TIMEOUT passes")
a = p.parse_args()
host, _, port = a.addr.rpartition(":")
s = socket.create_connection((host.strip("[]"), int(port)), timeout=a.timeout)
s.sendall(a.send.encode().decode("unicode_escape").encode("latin-1"))
got = b""
deadline = time.monotonic() + a.timeout
sent_then = False
echoed = False
reset = False
while time.monotonic() < deadline:
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        break
    except ConnectionResetError:
        reset = True
        break
    if not chunk:
        break
    got += chunk
    if a.then and not sent_then and b"\r\n\r\n" in got:
        s.sendall(a.then.encode())
        sent_then = True
    if a.then and sent_then and not echoed and got.endswith(a.then.encode()):
        if not a.hold:
            break
        echoed = True
        print("echoed", file=sys.stderr, flush=True)
status = 0
if got.startswith(b"HTTP/"):
    status = int(got.split(b" ", 2)[1])
print(json.dumps({"status": status, "reset": reset, "received": got.decode("latin-1")}))
