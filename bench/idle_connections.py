"""Idle proxied connections for the RSS-per-connection figure.

  idle_connections.py backend PORT     accept and hold every connection
  idle_connections.py client PORT N    open N connections, print "open N", hold them
"""
import socket
import sys
import time

mode, port = sys.argv[1], int(sys.argv[2])
if mode == "backend":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    held = []
    while True:
        c, _ = s.accept()
        held.append(c)
else:
    n = int(sys.argv[3])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    print("open", len(held), flush=True)
    time.sleep(3600)
