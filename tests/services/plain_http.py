"""A plain HTTP/1.1 service, not written with freedom (Python's http.server), for the tests of the
standalone consumer proxy: the kind of endpoint `freedom proxy` delivers to in any language."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Mapping
from typing import Any, Self


class PlainService:
    """Serves every POST on 127.0.0.1 (a free port, `self.port`) with :meth:`on_post`, one thread per
    connection, inside a `with` block. At its end `release` is set, so that a handler holding a
    request (a delivery kept in flight by the test) lets go before the server closes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                service.on_post(self, self.rfile.read(int(self.headers.get("content-length") or 0)))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def on_post(self, request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        raise NotImplementedError

    @staticmethod
    def answer(
        request: http.server.BaseHTTPRequestHandler,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("content-length", str(len(body)))
        request.end_headers()
        if body:
            request.wfile.write(body)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
