"""A tiny line-echo TCP server: the example stack's stand-in for a database."""

import argparse
import socketserver


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    with socketserver.ThreadingTCPServer(("127.0.0.1", args.port), Echo) as srv:
        print(f"db: listening on 127.0.0.1:{args.port}", flush=True)
        srv.serve_forever()


if __name__ == "__main__":
    main()
