"""A tiny HTTP server for tests: /healthz -> 200 (or $HEALTH_STATUS), / -> $GREETING.

argv: PORT [--children N]   --children forks N sleeping children (process-group tests).
"""

import http.server
import os
import subprocess
import sys


class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            status_file = os.environ.get("HEALTH_FILE")
            code = 200
            if status_file and os.path.exists(status_file):
                with open(status_file) as f:
                    code = int(f.read().strip() or 200)
            body = b"ok"
        else:
            code, body = 200, os.environ.get("GREETING", "hello").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


port = int(sys.argv[1])
if "--children" in sys.argv:
    n = int(sys.argv[sys.argv.index("--children") + 1])
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"]) for _ in range(n)]
print(f"listening on {port} pid {os.getpid()}", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
