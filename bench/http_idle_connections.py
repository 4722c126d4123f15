"""Idle HTTP keep-alive client connections, for the RSS-per-connection figure.

  http_idle_connections.py PORT N   open N connections, send one GET on each and
                                    read its response, print "open N", then hold
                                    them idle (keep-alive) for an hour
"""
import socket
import sys
import time

port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("closed before a response")
        head += chunk
    held.append(s)
print("open", len(held), flush=True)
time.sleep(3600)
