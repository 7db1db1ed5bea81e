"""`multiembed dashboard --serve`: the page on a loopback port, for a browser on the same machine.

Only the page itself is served (at `/` and `/index.html`), never the folder it was written to, and the
server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import errno
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from schemas.config import ConfigError

HOST = "127.0.0.1"


def make_server(page: Path, port: int) -> ThreadingHTTPServer:
    """A server for the HTML file `page` on `HOST:port` (0: any free port); call `serve_forever` to run it."""
    body = page.read_bytes()

    class PageHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(404, "only the dashboard is served here: /")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    try:
        return ThreadingHTTPServer((HOST, port), PageHandler)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        raise ConfigError(f"port {port} on {HOST} is in use (another dashboard?): choose another with --port N, "
                          "or --port 0 for any free one") from None


def serve(page: Path, port: int) -> None:
    """Serve `page` until interrupted (Ctrl-C)."""
    with make_server(page, port) as server:
        print(f"serving the dashboard on http://{HOST}:{server.server_port}/ (Ctrl-C stops)", flush=True)
        server.serve_forever()
