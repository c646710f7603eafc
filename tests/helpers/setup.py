"""Shared by the setup tests: a local HTTP server on 127.0.0.1, archive builders, script loading."""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.helpers import REPO  # noqa: F401  (re-exported)

# ------------------------------------------------------------------------------------------ local server


@dataclass
class Route:
    body: bytes = b""
    truncate: int = 0  # how many of the next full-body responses stop after `cut` bytes
    cut: int = 0
    redirect: str | None = None
    errors: list[int] | None = None  # statuses answered before the body is served (e.g. [503], [401])


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, dict(self.headers)))
        route = srv.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        if route.errors:
            self.send_error(route.errors.pop(0))
            return
        if route.redirect:
            self.send_response(302)
            self.send_header("Location", route.redirect)
            self.end_headers()
            return
        body, start = route.body, 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if route.truncate:  # announce the full length, send part of it, drop the connection
            route.truncate -= 1
            payload = payload[: route.cut]
        self.wfile.write(payload)


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 whose request loop stops by itself (request count and deadline)."""
    srv = HTTPServer(("127.0.0.1", 0), _Handler)
    srv.timeout = 0.05
    srv.routes, srv.log = {}, []
    srv.url = lambda path: f"http://127.0.0.1:{srv.server_port}{path}"
    stop = threading.Event()

    def loop():
        deadline = time.monotonic() + 60
        for _ in range(2000):
            if stop.is_set() or time.monotonic() > deadline:
                break
            srv.handle_request()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield srv
    stop.set()
    thread.join(5)
    srv.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused: the 'no network' case)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ade20k.zip"


# ------------------------------------------------------------------------------------------ archives


def zip_bytes(files: dict[str, bytes], compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]
