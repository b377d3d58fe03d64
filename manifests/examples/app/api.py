"""A tiny HTTP API for the example stack: /healthz checks that the db answers."""

import http.server
import json
import os
import socket


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            try:
                with socket.create_connection(("127.0.0.1", int(os.environ["DB_PORT"])), timeout=1):
                    code, body = 200, {"ok": True}
            except OSError as exc:
                code, body = 503, {"ok": False, "error": str(exc)}
        else:
            code, body = 200, {"message": os.environ.get("GREETING", "hello")}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"api: {self.command} {self.path}", flush=True)


def main() -> None:
    port = int(os.environ["PORT"])
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"api: listening on 127.0.0.1:{port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
