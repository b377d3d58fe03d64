"""A tiny HTTP daemon for the benchmarks: stdlib sockets only, a few MB of RSS.

    python3 -S benchmarks/tinyhttp.py PORT [TAG]

Answers every request on 127.0.0.1:PORT with `200 ok <pid>` so a prober can tell a
restarted process from the one it killed. TAG is ignored; it only marks the command line
so a benchmark can find (and clean up) exactly the processes of its own run. Runs with
`-S` (no site import) to start fast; imports nothing beyond socket and os.
"""

import os
import socket
import sys


def serve(port: int) -> None:
    """Serve forever on 127.0.0.1:port (also called in-process by the ZenML driver)."""
    body = f"ok {os.getpid()}\n".encode()
    reply = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        try:
            conn.settimeout(2.0)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.sendall(reply)
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
