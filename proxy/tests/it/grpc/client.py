"""A real gRPC client (grpcio, raw bytes) for the sidecar's integration tests.

usage: client.py TARGET AUTHORITY CALL ARG [TIMEOUT_S]
Calls skiff.test.Echo/<CALL> once and prints one JSON object: the status code name,
details, responses (decoded; only their sizes, in "sizes", past 100 bytes), initial and
trailing metadata. ARG "BIG:<n>" sends n bytes. CALL "Chat" with ARG n plays ping-pong: each
message is sent only after the answer to the previous one arrived, so a proxy that held
request bytes back would stall it.
"""

import json
import queue
import sys

import grpc


def main():
    target, authority, call, arg = sys.argv[1:5]
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 8.0
    options = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    if authority != "-":
        options.append(("grpc.default_authority", authority))
    request = arg.encode()
    if arg.startswith("BIG:"):
        request = b"a" * int(arg[4:])
    out = {"code": "OK", "details": "", "responses": [], "initial": {}, "trailing": {}}
    with grpc.insecure_channel(target, options=options) as channel:
        method = "/skiff.test.Echo/" + call
        metadata = (("x-client", "py-client"),)
        try:
            if call == "Chat":
                received = queue.Queue()

                def pings():
                    for i in range(int(arg)):
                        yield ("ping-%d" % i).encode()
                        received.get(timeout=timeout)

                stream = channel.stream_stream(method)(pings(), metadata=metadata, timeout=timeout)
                for msg in stream:
                    out["responses"].append(msg.decode())
                    received.put(msg)
                rpc = stream
            elif call == "Count":
                stream = channel.unary_stream(method)(arg.encode(), metadata=metadata, timeout=timeout)
                for msg in stream:
                    out["responses"].append(msg.decode())
                rpc = stream
            else:
                resp, rpc = channel.unary_unary(method).with_call(
                    request, metadata=metadata, timeout=timeout
                )
                out["responses"].append(resp.decode())
            out["initial"] = dict(rpc.initial_metadata() or ())
            out["trailing"] = dict(rpc.trailing_metadata() or ())
        except grpc.RpcError as e:
            out["code"] = e.code().name
            out["details"] = e.details() or ""
            out["trailing"] = dict(e.trailing_metadata() or ())
    out["sizes"] = [len(r) for r in out["responses"]]
    out["responses"] = [r if len(r) <= 100 else "..." for r in out["responses"]]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
