"""Sends numbered records to a Forward server in one protocol mode, the way real clients do.

usage: fluent_send.py MODE HOST PORT TAG START COUNT
MODE: message (fluent-logger, EventTime), message_int (fluent-logger, integer time),
      async (fluent-logger asyncsender), forward, packed, compressed (hand-packed with the
      `msgpack` module, each batch with a `chunk` option whose `ack` is awaited).
"""
import gzip
import socket
import struct
import sys
import time
import uuid

import msgpack
from fluent import asyncsender, sender

mode, host, port, tag, start, count = sys.argv[1:7]
port, start, count = int(port), int(start), int(count)


def record(i):
    return {"id": i, "mode": mode, "msg": 'hello \u00fcn\u00efc\u00f8d\u00e9 "quoted"\n%d' % i}


def event_time():
    t = time.time()
    return msgpack.ExtType(0, struct.pack(">II", int(t), int((t % 1) * 1e9)))


if mode in ("message", "message_int", "async"):
    cls = asyncsender.FluentSender if mode == "async" else sender.FluentSender
    # host "unix:///path" makes fluent-logger use a unix socket
    s = cls(tag, host=host, port=port, nanosecond_precision=(mode != "message_int"))
    for i in range(start, start + count):
        if not s.emit(None, record(i)):
            raise SystemExit("emit failed: %r" % (s.last_error,))
    s.close()
    print("sent", count)
    raise SystemExit(0)

if host.startswith("unix://"):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(30)
    conn.connect(host[len("unix://"):])
else:
    conn = socket.create_connection((host, port), timeout=30)
unpacker = msgpack.Unpacker(raw=False)
acked = 0
for batch_start in range(start, start + count, 100):
    ids = range(batch_start, min(batch_start + 100, start + count))
    entries = [[event_time(), record(i)] for i in ids]
    chunk = uuid.uuid4().hex
    if mode == "forward":
        frame = [tag, entries, {"chunk": chunk}]
    else:
        packed = b"".join(msgpack.packb(e) for e in entries)
        opts = {"chunk": chunk, "size": len(entries)}
        if mode == "compressed":
            packed = gzip.compress(packed)
            opts["compressed"] = "gzip"
        frame = [tag, packed, opts]
    conn.sendall(msgpack.packb(frame, use_bin_type=True))
    while True:
        data = conn.recv(4096)
        if not data:
            raise SystemExit("connection closed before ack")
        unpacker.feed(data)
        reply = next(iter(unpacker), None)
        if reply is not None:
            break
    if reply != {"ack": chunk}:
        raise SystemExit("bad ack %r" % (reply,))
    acked += len(entries)
conn.close()
print("acked", acked)
