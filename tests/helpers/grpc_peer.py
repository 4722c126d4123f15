"""A real gRPC peer (grpcio, the C core) for the HTTP/2 and gRPC proxy tests:
one script, two roles, every message raw bytes (no protobuf: grpcio's generic
API with no (de)serializers).

  python3 grpc_peer.py server --listen 127.0.0.1:0 --name NAME
                              [--tls-cert F --tls-key F] [--workers N]
      Serves `ringmesh.test.Echo` (h2c unless given a certificate; N handler
      threads, 256: at most N calls run at once), prints exactly one line
      `LISTENING <port>` once serving, serves until killed (SIGTERM/SIGINT
      stop it at once).

  python3 grpc_peer.py client --target HOST:PORT [--authority A]
                              [--timeout S (10; 0: no deadline)] [--header K=V]...
                              [--tls-ca F [--tls-server-name N]]
                              SCENARIO [ARGS]
      Runs one scenario and prints ONE JSON line:
      {"ok": bool, "code": "OK"|"UNAVAILABLE"|..., "details": str, ...};
      exit 0 whether or not the RPC failed, non-zero only for a bug here.
      No transparent retries, no http_proxy: what the client sees is what
      the peer (or the proxy in between) did.

Scenarios and their fields (metadata as dicts, a repeated key's values
joined by ", "; message bodies are a repeating 251-byte pattern):
  unary [--size N] [--echo V]   Unary of "hello" (or N pattern bytes) with
                                metadata x-echo: V. reply_len, reply_prefix
                                (first 64 bytes, lossy), intact,
                                initial_metadata, trailing_metadata.
  server-stream COUNT SIZE      messages, bytes, intact (every message).
  client-stream COUNT SIZE      reply ("COUNT:COUNT*SIZE").
  bidi COUNT SIZE               lockstep: message i+1 goes out once the echo
                                of i is back. messages, all_equal.
  big SIZE                      Unary of SIZE bytes: request_len, reply_len,
                                intact (the echo is byte-exact).
  deadline MS SLEEP_MS          Sleep with an MS deadline: code
                                DEADLINE_EXCEEDED, elapsed_ms.
  cancel SLEEP_MS AFTER_MS      Sleep as a future, cancelled after AFTER_MS:
                                code CANCELLED, cancelled, server_cancelled
                                (Stats on the same channel counted it
                                within 2 s; null if Stats failed).
  fail CODE MESSAGE             Fail: code and details as asked.
  flaky KEY N                   one Flaky call: reply ("ok:<n>") or null.
  stats                         stats (the Stats JSON).
  many N                        N concurrent Unary calls on one channel:
                                ok_count, codes {name: n}, served_by
                                {x-served-by: n}.

Methods of `ringmesh.test.Echo` (every reply carries the trailing metadata
`x-served-by: NAME`):
  Unary         replies `NAME:` + request; request metadata `x-echo` comes
                back as initial metadata `x-echo` and trailing `x-echo-trailer`;
                trailing `x-authority` is the request's :authority and
                `x-deadline-ms` what was left of its grpc-timeout (absent
                without one).
  ServerStream  "count:size" -> count messages of size bytes.
  ClientStream  -> "messages:total_bytes" of what was received.
  Bidi          echoes each message as it arrives, prefixed `NAME:`.
  Sleep         "ms" -> sleeps, checking for cancellation every 10 ms, "slept".
  Fail          "code:message" -> that status (trailers-only on the wire).
  Flaky         "key:n" -> the first n calls per key UNAVAILABLE, then
                "ok:<call number>".
  Stats         JSON counters: {"calls": {method: n}, "cancelled_sleeps": n
                (Sleeps that saw their call end early: client cancel,
                RST_STREAM or deadline), "expired_sleeps": n (of those, the
                ones past their grpc-timeout deadline), "flaky": {key: n}}.
"""

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "ringmesh.test.Echo"
MAX_MESSAGE = 64 * 1024 * 1024
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


def path(method):
    return f"/{SERVICE}/{method}"


def status_code(number):
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


PRIME = 251
BASE = bytes(i * 7 % PRIME for i in range(PRIME)) * 2


def pattern(size, seed=0):
    """`size` bytes of a repeating pattern (period 251, so no power-of-two
    misalignment hides), shifted by `seed` (messages of a stream differ)."""
    start = seed % PRIME
    block = BASE[start:start + PRIME]
    return (block * (size // PRIME + 1))[:size]


# ---------------------------------------------------------------- server


def authority_of(context):
    """The request's :authority (grpcio's public API does not give it: the
    call details behind the context do; None if that ever changes)."""
    try:
        host = context._rpc_event.call_details.host
        return host.decode() if isinstance(host, bytes) else str(host)
    except AttributeError:
        return None


class Echo:
    def __init__(self, name):
        self.name = name.encode()
        self.lock = threading.Lock()
        self.calls = {}
        self.cancelled_sleeps = 0
        self.expired_sleeps = 0
        self.flaky = {}

    def count(self, method, context):
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
        context.set_trailing_metadata((("x-served-by", self.name.decode()),))

    def unary(self, request, context):
        self.count("Unary", context)
        echo = [v for k, v in context.invocation_metadata() if k == "x-echo"]
        trailing = [("x-served-by", self.name.decode())]
        if echo:
            context.send_initial_metadata((("x-echo", echo[-1]),))
            trailing.append(("x-echo-trailer", echo[-1]))
        authority = authority_of(context)
        if authority is not None:
            trailing.append(("x-authority", authority))
        remaining = context.time_remaining()
        if remaining is not None and remaining < 10**8:
            trailing.append(("x-deadline-ms", str(round(remaining * 1000))))
        context.set_trailing_metadata(tuple(trailing))
        return self.name + b":" + request

    def server_stream(self, request, context):
        self.count("ServerStream", context)
        count, size = (int(x) for x in request.decode().split(":"))
        for i in range(count):
            if not context.is_active():
                return
            yield pattern(size, i)

    def client_stream(self, request_iterator, context):
        self.count("ClientStream", context)
        messages = total = 0
        for message in request_iterator:
            messages += 1
            total += len(message)
        return f"{messages}:{total}".encode()

    def bidi(self, request_iterator, context):
        self.count("Bidi", context)
        for message in request_iterator:
            yield self.name + b":" + message

    def sleep(self, request, context):
        self.count("Sleep", context)
        end = time.monotonic() + int(request.decode()) / 1000
        while time.monotonic() < end:
            if not context.is_active():
                remaining = context.time_remaining()
                with self.lock:
                    self.cancelled_sleeps += 1
                    # The client's own deadline (its RST_STREAM) may reach
                    # us a little before the server-side deadline, which
                    # started when the request arrived.
                    if remaining is not None and remaining <= 0.25:
                        self.expired_sleeps += 1
                return b""
            time.sleep(0.01)
        return b"slept"

    def fail(self, request, context):
        self.count("Fail", context)
        code, _, message = request.decode().partition(":")
        context.abort(status_code(int(code)), message)

    def flaky_call(self, request, context):
        self.count("Flaky", context)
        key, _, n = request.decode().rpartition(":")
        with self.lock:
            call = self.flaky[key] = self.flaky.get(key, 0) + 1
        if call <= int(n):
            context.abort(grpc.StatusCode.UNAVAILABLE, f"flaky {key}: call {call} of {n} fails")
        return f"ok:{call}".encode()

    def stats(self, request, context):
        self.count("Stats", context)
        with self.lock:
            body = {
                "calls": dict(self.calls),
                "cancelled_sleeps": self.cancelled_sleeps,
                "expired_sleeps": self.expired_sleeps,
                "flaky": dict(self.flaky),
            }
        return json.dumps(body).encode()

    def handler(self):
        u, ss = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        cs, bd = grpc.stream_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": u(self.unary),
            "ServerStream": ss(self.server_stream),
            "ClientStream": cs(self.client_stream),
            "Bidi": bd(self.bidi),
            "Sleep": u(self.sleep),
            "Fail": u(self.fail),
            "Flaky": u(self.flaky_call),
            "Stats": u(self.stats),
        })


def limits(args):
    """Server options that make a proxy's upstream handling visible: a
    stream limit (SETTINGS_MAX_CONCURRENT_STREAMS) and a connection age
    after which the server sends GOAWAY (calls in flight get a grace)."""
    out = []
    if args.max_streams:
        out.append(("grpc.max_concurrent_streams", args.max_streams))
    if args.max_age_ms:
        out.append(("grpc.max_connection_age_ms", args.max_age_ms))
        out.append(("grpc.max_connection_age_grace_ms", 5000))
    return out


def serve(args):
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        # Without so_reuseport a port-0 bind can never share a port with
        # another test's server.
        options=MESSAGE_OPTIONS + [("grpc.so_reuseport", 0)] + limits(args),
    )
    server.add_generic_rpc_handlers((Echo(args.name).handler(),))
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            sys.exit("--tls-cert and --tls-key go together")
        with open(args.tls_key, "rb") as k, open(args.tls_cert, "rb") as c:
            credentials = grpc.ssl_server_credentials(((k.read(), c.read()),))
        port = server.add_secure_port(args.listen, credentials)
    else:
        port = server.add_insecure_port(args.listen)
    if not port:
        sys.exit(f"cannot listen on {args.listen}")
    server.start()

    def stop(*_):
        server.stop(None)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"LISTENING {port}", flush=True)
    server.wait_for_termination()


# ---------------------------------------------------------------- client


def text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def metadata(pairs):
    """Metadata as a dict (a repeated key keeps its values joined by ", ")."""
    out = {}
    for key, value in pairs or ():
        value = text(value)
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def outcome(call_or_error):
    """`ok`, `code`, `details` of a finished call or an RpcError."""
    code = call_or_error.code()
    return {
        "ok": code == grpc.StatusCode.OK,
        "code": code.name,
        "details": call_or_error.details() or "",
    }


def with_metadata(call_or_error, result):
    try:
        result["initial_metadata"] = metadata(call_or_error.initial_metadata())
        result["trailing_metadata"] = metadata(call_or_error.trailing_metadata())
    except Exception:  # noqa: BLE001: a cancelled future may have neither
        pass
    return result


class Client:
    def __init__(self, args):
        options = MESSAGE_OPTIONS + [
            # The proxy's behaviour is what is measured: no transparent
            # retries, no http_proxy from the environment.
            ("grpc.enable_retries", 0),
            ("grpc.enable_http_proxy", 0),
        ]
        if args.authority:
            options.append(("grpc.default_authority", args.authority))
        if args.tls_ca:
            if args.tls_server_name:
                options.append(("grpc.ssl_target_name_override", args.tls_server_name))
            with open(args.tls_ca, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            self.channel = grpc.secure_channel(args.target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(args.target, options=options)
        self.timeout = args.timeout or None  # 0: no deadline
        self.metadata = []
        for pair in args.header:
            key, sep, value = pair.partition("=")
            if not sep:
                raise SystemExit(f"--header wants K=V, got {pair!r}")
            self.metadata.append((key.lower(), value))

    def unary(self, method, request, extra=(), timeout=None):
        """(reply, call); raises grpc.RpcError (also a Call)."""
        stub = self.channel.unary_unary(path(method))
        return stub.with_call(
            request,
            timeout=self.timeout if timeout is None else timeout,
            metadata=self.metadata + list(extra),
        )

    def unary_outcome(self, method, request, extra=(), timeout=None):
        """(reply or None, result dict with ok/code/details/metadata)."""
        try:
            reply, call = self.unary(method, request, extra, timeout)
            return reply, with_metadata(call, outcome(call))
        except grpc.RpcError as e:
            return None, with_metadata(e, outcome(e))


def scenario_unary(c, a):
    request = pattern(a.size) if a.size is not None else b"hello"
    extra = [("x-echo", a.echo)] if a.echo is not None else []
    reply, result = c.unary_outcome("Unary", request, extra)
    if reply is not None:
        result["reply_len"] = len(reply)
        result["reply_prefix"] = reply[:64].decode("utf-8", "replace")
        result["intact"] = reply.endswith(request)
    return result


def scenario_big(c, a):
    request = pattern(a.size)
    reply, result = c.unary_outcome("Unary", request)
    result["request_len"] = len(request)
    result["reply_len"] = len(reply) if reply is not None else None
    result["intact"] = reply is not None and reply.endswith(request) and reply[
        : len(reply) - len(request)
    ].endswith(b":")
    return result


def scenario_server_stream(c, a):
    stub = c.channel.unary_stream(path("ServerStream"))
    call = stub(f"{a.count}:{a.size}".encode(), timeout=c.timeout, metadata=c.metadata)
    messages = total = 0
    sizes_ok = True
    try:
        for i, message in enumerate(call):
            messages += 1
            total += len(message)
            sizes_ok = sizes_ok and message == pattern(a.size, i)
        result = outcome(call)
    except grpc.RpcError as e:
        result = outcome(e)
    result.update(messages=messages, bytes=total, intact=sizes_ok and messages == a.count)
    return with_metadata(call, result)


def scenario_client_stream(c, a):
    stub = c.channel.stream_unary(path("ClientStream"))
    requests = (pattern(a.size, i) for i in range(a.count))
    try:
        reply, call = stub.with_call(requests, timeout=c.timeout, metadata=c.metadata)
        result = with_metadata(call, outcome(call))
        result["reply"] = reply.decode("utf-8", "replace")
    except grpc.RpcError as e:
        result = with_metadata(e, outcome(e))
        result["reply"] = None
    return result


def scenario_bidi(c, a):
    """Lockstep: message i+1 is sent only after the echo of message i came
    back, so a peer (or proxy) that waits for the whole request stream
    before answering ends in DEADLINE_EXCEEDED, not in success."""
    outbox = queue.Queue()
    done = object()

    def requests():
        while True:
            item = outbox.get()
            if item is done:
                return
            yield item

    sent = [pattern(a.size, i) for i in range(a.count)]
    outbox.put(sent[0] if sent else done)
    stub = c.channel.stream_stream(path("Bidi"))
    call = stub(requests(), timeout=c.timeout, metadata=c.metadata)
    echoed = 0
    equal = True
    try:
        for i, reply in enumerate(call):
            echoed += 1
            equal = equal and i < len(sent) and reply.endswith(sent[i]) and reply[
                : len(reply) - len(sent[i])
            ].endswith(b":")
            outbox.put(sent[i + 1] if i + 1 < len(sent) else done)
        result = outcome(call)
    except grpc.RpcError as e:
        result = outcome(e)
    finally:
        outbox.put(done)
    result.update(messages=echoed, all_equal=equal and echoed == len(sent))
    return with_metadata(call, result)


def scenario_deadline(c, a):
    start = time.monotonic()
    _, result = c.unary_outcome("Sleep", str(a.sleep_ms).encode(), timeout=a.ms / 1000)
    result["elapsed_ms"] = round((time.monotonic() - start) * 1000)
    return result


def cancelled_sleeps(c):
    try:
        reply, _ = c.unary("Stats", b"", timeout=5)
        return json.loads(reply)["cancelled_sleeps"]
    except grpc.RpcError:
        return None


def scenario_cancel(c, a):
    """Cancels a Sleep after AFTER_MS; `server_cancelled` says whether the
    server's Stats (asked on the same channel) counted one more cancelled
    Sleep within 2 s (null when Stats itself failed)."""
    before = cancelled_sleeps(c)
    stub = c.channel.unary_unary(path("Sleep"))
    future = stub.future(str(a.sleep_ms).encode(), timeout=c.timeout, metadata=c.metadata)
    time.sleep(a.after_ms / 1000)
    cancelled = future.cancel()
    try:
        future.result()
        result = outcome(future)
    except grpc.FutureCancelledError:
        result = {"ok": False, "code": "CANCELLED", "details": "cancelled by the client"}
    except grpc.RpcError as e:
        result = outcome(e)
    result["cancelled"] = cancelled
    server_cancelled = None
    if before is not None:
        deadline = time.monotonic() + 2
        while True:
            now = cancelled_sleeps(c)
            server_cancelled = now is not None and now > before
            if server_cancelled or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    result["server_cancelled"] = server_cancelled
    return result


def scenario_fail(c, a):
    _, result = c.unary_outcome("Fail", f"{a.code}:{a.message}".encode())
    return result


def scenario_flaky(c, a):
    reply, result = c.unary_outcome("Flaky", f"{a.key}:{a.n}".encode())
    result["reply"] = reply.decode() if reply is not None else None
    return result


def scenario_stats(c, a):
    reply, result = c.unary_outcome("Stats", b"")
    result["stats"] = json.loads(reply) if reply is not None else None
    return result


def scenario_many(c, a):
    stub = c.channel.unary_unary(path("Unary"))
    calls = [stub.future(f"call {i}".encode(), timeout=c.timeout, metadata=c.metadata)
             for i in range(a.n)]
    codes, served_by = {}, {}
    ok_count = 0
    for i, call in enumerate(calls):
        try:
            reply = call.result()
            good = reply.endswith(f":call {i}".encode())
            code = "OK" if good else "WRONG_REPLY"
            ok_count += good
            who = metadata(call.trailing_metadata()).get("x-served-by", "")
            served_by[who] = served_by.get(who, 0) + 1
        except grpc.RpcError as e:
            code = e.code().name
        codes[code] = codes.get(code, 0) + 1
    return {
        "ok": ok_count == a.n,
        "code": "OK" if ok_count == a.n else next(k for k in codes if k != "OK"),
        "details": "",
        "ok_count": ok_count,
        "codes": codes,
        "served_by": served_by,
    }


def client_parser(sub):
    p = sub.add_parser("client", help="run one scenario, print one JSON line")
    p.add_argument("--target", required=True, help="HOST:PORT")
    p.add_argument("--authority", help=":authority (grpc.default_authority)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="per-RPC deadline, seconds (0: none)")
    p.add_argument("--header", action="append", default=[], metavar="K=V",
                   help="request metadata on every call (repeatable)")
    p.add_argument("--tls-ca", help="TLS with this CA bundle (plaintext h2c without)")
    p.add_argument("--tls-server-name", help="name to verify (grpc.ssl_target_name_override)")
    s = p.add_subparsers(dest="scenario", required=True)
    x = s.add_parser("unary")
    x.add_argument("--size", type=int)
    x.add_argument("--echo")
    x.set_defaults(run=scenario_unary)
    for name, run in (("server-stream", scenario_server_stream),
                      ("client-stream", scenario_client_stream),
                      ("bidi", scenario_bidi)):
        x = s.add_parser(name)
        x.add_argument("count", type=int)
        x.add_argument("size", type=int)
        x.set_defaults(run=run)
    x = s.add_parser("big")
    x.add_argument("size", type=int)
    x.set_defaults(run=scenario_big)
    x = s.add_parser("deadline")
    x.add_argument("ms", type=int)
    x.add_argument("sleep_ms", type=int)
    x.set_defaults(run=scenario_deadline)
    x = s.add_parser("cancel")
    x.add_argument("sleep_ms", type=int)
    x.add_argument("after_ms", type=int)
    x.set_defaults(run=scenario_cancel)
    x = s.add_parser("fail")
    x.add_argument("code", type=int)
    x.add_argument("message")
    x.set_defaults(run=scenario_fail)
    x = s.add_parser("flaky")
    x.add_argument("key")
    x.add_argument("n", type=int)
    x.set_defaults(run=scenario_flaky)
    x = s.add_parser("stats")
    x.set_defaults(run=scenario_stats)
    x = s.add_parser("many")
    x.add_argument("n", type=int)
    x.set_defaults(run=scenario_many)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("server", help="serve ringmesh.test.Echo")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--name", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--workers", type=int, default=256, help="handler threads")
    p.add_argument("--max-streams", type=int, default=0,
                   help="SETTINGS_MAX_CONCURRENT_STREAMS (0: grpcio's default)")
    p.add_argument("--max-age-ms", type=int, default=0,
                   help="send GOAWAY this long after a connection opens (0: never)")
    client_parser(sub)
    args = parser.parse_args()
    if args.role == "server":
        serve(args)
        return
    client = Client(args)
    try:
        result = args.run(client, args)
    finally:
        client.channel.close()
    result["scenario"] = args.scenario
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
