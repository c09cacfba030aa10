#!/usr/bin/env python3
"""A DNS server for tests, on UDP ADDR:PORT. Before each answer it reads MODE_FILE, one word:
an IPv4 address (the A record of every name asked for; no AAAA record), NXDOMAIN (no such
name), NODATA (the name exists, with no address) or SERVFAIL (the server failed). It serves
until killed."""
import argparse
import socket
import struct

p = argparse.ArgumentParser()
p.add_argument("--addr", required=True)
p.add_argument("--port", type=int, default=53)
p.add_argument("--mode-file", required=True)
a = p.parse_args()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((a.addr, a.port))
print("ready", flush=True)
while True:
    query, peer = s.recvfrom(512)
    if len(query) < 12:
        continue
    ident, flags = struct.unpack("!HH", query[:4])
    # The question: labels up to the empty one, then type and class.
    end = 12
    while end < len(query) and query[end] != 0:
        end += 1 + query[end]
    question = query[12 : end + 5]
    qtype = struct.unpack("!H", query[end + 1 : end + 3])[0]
    with open(a.mode_file) as f:
        mode = f.read().strip()
    rcode, answers = 0, b""
    if mode == "NXDOMAIN":
        rcode = 3
    elif mode == "SERVFAIL":
        rcode = 2
    elif mode != "NODATA" and qtype == 1:
        ip = socket.inet_aton(mode)
        # The name by pointer to the question's, A, IN, TTL 0, the address.
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + ip
    count = 1 if answers else 0
    # QR, the query's opcode and RD, RA.
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode
    header = struct.pack("!HHHHHH", ident, reply_flags, 1, count, 0, 0)
    s.sendto(header + question + answers, peer)
