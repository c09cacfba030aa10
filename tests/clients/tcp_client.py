#!/usr/bin/env python3
"""A real TCP client for meshd's end-to-end tests.

Modes:
  echo     open CONNS connections to ADDR, send BYTES of seeded pseudo-random data on each while
           reading the echo back, and compare SHA-256 of what was sent and what came back.
  connect  wait until WAIT_FILE exists, then open one connection and exchange a ping.

Prints one JSON object on stdout. Exit code 0 when every connection was intact.
"""
import argparse
import hashlib
import json
import os
import random
import socket
import sys
import threading
import time

CHUNK = 64 * 1024


def parse_addr(s):
    host, _, port = s.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, host, int(port)


def peer_str(sock):
    p = sock.getpeername()
    return f"[{p[0]}]:{p[1]}" if sock.family == socket.AF_INET6 else f"{p[0]}:{p[1]}"


def echo_one(addr, nbytes, seed, hold, result):
    family, host, port = parse_addr(addr)
    sent_hash, recv_hash = hashlib.sha256(), hashlib.sha256()
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect((host, port))
        result["peer"] = peer_str(s)

        def sender():
            rng = random.Random(seed)
            left = nbytes
            while left > 0:
                chunk = rng.randbytes(min(CHUNK, left))
                sent_hash.update(chunk)
                s.sendall(chunk)
                left -= len(chunk)

        t = threading.Thread(target=sender)
        t.start()
        got = 0
        while got < nbytes:
            data = s.recv(CHUNK)
            if not data:
                break
            recv_hash.update(data)
            got += len(data)
        t.join()
        if hold:
            time.sleep(hold)
        s.shutdown(socket.SHUT_WR)
        tail = s.recv(1)
        s.close()
        result.update(
            received=got,
            intact=got == nbytes and sent_hash.digest() == recv_hash.digest() and tail == b"",
        )
    except OSError as e:
        result.update(intact=False, error=str(e), errno=e.errno)


def cmd_echo(a):
    results = [{} for _ in range(a.conns)]
    threads = [
        threading.Thread(target=echo_one, args=(a.addr, a.bytes, i + 1, a.hold, results[i]))
        for i in range(a.conns)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = all(r.get("intact") for r in results)
    print(json.dumps({"ok": ok, "connections": results}))
    return 0 if ok else 1


def cmd_connect(a):
    deadline = time.monotonic() + a.wait_timeout
    while not os.path.exists(a.wait_file):
        if time.monotonic() > deadline:
            print(json.dumps({"ok": False, "error": "wait file never appeared"}))
            return 1
        time.sleep(0.02)
    family, host, port = parse_addr(a.addr)
    start = time.monotonic()
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(a.timeout)
        s.connect((host, port))
        s.sendall(b"ping")
        reply = s.recv(4)
        peer = peer_str(s)
        s.close()
        out = {"ok": reply == b"ping", "peer": peer, "reply": reply.decode(errors="replace")}
    except OSError as e:
        out = {"ok": False, "error": str(e), "errno": e.errno}
    out["elapsed_ms"] = round((time.monotonic() - start) * 1000, 1)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--addr", required=True)
    e.add_argument("--bytes", type=int, default=1024)
    e.add_argument("--conns", type=int, default=1)
    e.add_argument("--hold", type=float, default=0)
    c = sub.add_parser("connect")
    c.add_argument("--addr", required=True)
    c.add_argument("--wait-file", required=True)
    c.add_argument("--wait-timeout", type=float, default=60)
    c.add_argument("--timeout", type=float, default=5)
    a = p.parse_args()
    sys.exit(cmd_echo(a) if a.mode == "echo" else cmd_connect(a))


if __name__ == "__main__":
    main()
