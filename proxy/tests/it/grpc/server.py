"""A real gRPC server (grpcio, generic handlers, raw bytes) for the sidecar's integration tests.

Prints "PORT <n>" once listening on 127.0.0.1 and exits when its stdin closes, so it never
outlives the test that started it.

Service skiff.test.Echo:
  Echo      unary: "echo:<request>"; initial metadata x-served-by, trailers x-trailer and
            x-client-echo (the caller's x-client metadata)
  Count     server streaming: the request is a count N, answers msg-0 .. msg-(N-1); with
            "N!" it then aborts with ABORTED (the status comes in trailers, after messages)
  Missing   unary: aborts with NOT_FOUND and "no such thing: <request>"
  Chat      bidirectional streaming: answers each message "pong:<message>" as it arrives
  Slow      unary: sleeps the request's seconds; prints "CANCELLED" if the call is cancelled
"""

import sys
import threading
import time
from concurrent import futures

import grpc

NAME = sys.argv[1] if len(sys.argv) > 1 else "echo"


def echo(request, context):
    context.send_initial_metadata((("x-served-by", NAME),))
    client = dict(context.invocation_metadata()).get("x-client", "")
    context.set_trailing_metadata((("x-trailer", "done"), ("x-client-echo", client)))
    return b"echo:" + request


def count(request, context):
    text = request.decode()
    n = int(text.rstrip("!"))
    for i in range(n):
        yield ("msg-%d" % i).encode()
    if text.endswith("!"):
        context.abort(grpc.StatusCode.ABORTED, "stopped after %d" % n)


def missing(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())


def chat(requests, context):
    for msg in requests:
        yield b"pong:" + msg


def slow(request, context):
    deadline = time.monotonic() + float(request.decode())
    while time.monotonic() < deadline:
        if not context.is_active():
            print("CANCELLED", flush=True)
            return b""
        time.sleep(0.01)
    return b"slept"


HANDLERS = {
    "Echo": grpc.unary_unary_rpc_method_handler(echo),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Missing": grpc.unary_unary_rpc_method_handler(missing),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
}


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("skiff.test.Echo", HANDLERS),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("PORT %d" % port, flush=True)
    done = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    server.stop(0)


if __name__ == "__main__":
    main()
