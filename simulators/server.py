"""A small threaded HTTPS server that simulators plug request handlers into, runnable in a thread."""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from simulators.tls import TlsMaterial

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One HTTP request as the simulator sees it; ``target`` is the raw request-target, byte for byte."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def raw_query(self) -> str:
        return urlsplit(self.target).query

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(self.raw_query, keep_blank_values=True)

    def query_one(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return default

    def query_all(self, name: str) -> list[str]:
        return [value for key, value in self.query if key == name]

    def header(self, name: str, default: str | None = None) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return default

    def json(self) -> object:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    """What a handler answers: status, headers, and a body (bytes, or anything JSON-serialisable)."""

    status: int = 200
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if self.body is None:
            return b"", headers
        if isinstance(self.body, bytes):
            return self.body, headers
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(self.body, separators=(",", ":")).encode(), headers


Handler = Callable[[Request], Response | None]


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # otherwise every small response waits ~40 ms for a delayed ACK
    server: _Server

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self.command, self.path, dict(self.headers.items()), body)
        with self.server.slowness.taking(request):
            self._answer(request)

    def _answer(self, request: Request) -> None:
        response: Response | None = None
        try:
            for handler in self.server.handlers:
                response = handler(request)
                if response is not None:
                    break
        except Exception:  # a simulator bug must show up as a 500 and in the log, not hang the client
            log.exception("simulator handler failed for %s %s", request.method, request.path)
            response = Response(500, {"error": "simulator error"})
        if response is None:
            response = Response(404, {"status": "Failure", "message": "The requested resource was not found"})
        payload, headers = response.encoded()
        self.send_response(response.status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _dispatch

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


class Slowness:
    """Requests that take time, as a real service's do, and how many of them were being answered at once.

    A request matching the predicate waits ``seconds`` before it is handled (outside every service's lock, so
    requests that arrive together are answered together, as a real service answers them). ``peak`` is the most
    such requests ever in progress at once: 1 means the client sent them one after another.

    With ``together`` above 1, a request is held only until ``together`` were in progress at once (or ``seconds``
    pass): a test learns whether a client sends side by side without depending on how fast the machine is.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.seconds = 0.0
        self.together = 1
        self.predicate: Callable[[Request], bool] = lambda _request: False
        self.in_progress = 0
        self.peak = 0

    def set(self, seconds: float, predicate: Callable[[Request], bool], together: int = 1) -> None:
        with self._lock:
            self.seconds, self.predicate, self.together, self.peak = seconds, predicate, together, 0

    @contextlib.contextmanager
    def taking(self, request: Request) -> Iterator[None]:
        with self._lock:
            counted = self.seconds > 0 and self.predicate(request)
            pause = self.seconds if counted else 0.0
            if counted:
                self.in_progress += 1
                self.peak = max(self.peak, self.in_progress)
                self._lock.notify_all()
                if self.together > 1:
                    self._lock.wait_for(lambda: self.peak >= self.together, timeout=pause)
                    pause = 0.0
        try:
            if pause:
                time.sleep(pause)
            yield
        finally:
            if counted:
                with self._lock:
                    self.in_progress -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    handlers: list[Handler]
    slowness: Slowness


class HttpsServer:
    """Serve ``handlers`` (tried in order; the first non-None answer wins) over TLS on loopback."""

    def __init__(self, handlers: list[Handler], tls: TlsMaterial, host: str = "127.0.0.1", port: int = 0):
        self._server = _Server((host, port), _RequestHandler)
        self._server.handlers = handlers
        self._server.slowness = Slowness()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None

    def slow(self, seconds: float, predicate: Callable[[Request], bool], together: int = 1) -> Slowness:
        """Make requests matching ``predicate`` take ``seconds`` each (0: as fast as possible again), or with
        ``together`` only until that many were in progress at once; the returned :class:`Slowness` counts how many
        were in progress at once."""
        self._server.slowness.set(seconds, predicate, together)
        return self._server.slowness

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    def start(self) -> HttpsServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HttpsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
