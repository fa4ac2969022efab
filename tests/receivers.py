"""Real HTTP servers on 127.0.0.1 that receive callbacks and misbehave on purpose."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

Behaviour = Callable[["Handler", "Received"], None]


@dataclasses.dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes


class Handler(BaseHTTPRequestHandler):
    """Reads the request, records it, then lets the server's behaviour answer."""

    protocol_version = "HTTP/1.1"  # keep-alive, like a real receiver
    server: Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
        self.server.record(received)
        self.server.behaviour(self, received)

    def reply(self, status: int, body: bytes = b"ok", headers: dict[str, str] | None = None) -> None:
        """A complete response."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


class Server(ThreadingHTTPServer):
    """Counts what it received; `stopping` releases handlers that hang."""

    daemon_threads = True
    request_queue_size = 64  # listen backlog: the default 5 drops SYNs when many runner threads connect at once

    def __init__(self, behaviour: Behaviour, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.behaviour = behaviour
        self.received: list[Received] = []
        self.stopping = threading.Event()
        self.sent_bytes = 0
        self.write_failed = False
        self._lock = threading.Lock()

    def record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def webhook_ids(self) -> list[str]:
        with self._lock:
            return [r.headers.get("webhook-id", "") for r in self.received]


@contextmanager
def receiver(behaviour: Behaviour | None = None, port: int = 0) -> Iterator[Server]:
    """A running server for the duration of the block."""
    server = Server(behaviour or answer(200), port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- behaviours --------------------------------------------------------------------------------


def answer(status: int, body: bytes = b"ok", headers: dict[str, str] | None = None) -> Behaviour:
    """Always the same response."""
    return lambda handler, _received: handler.reply(status, body, headers)


def sequence(*behaviours: Behaviour) -> Behaviour:
    """The first request gets the first behaviour, and so on; the last repeats."""
    count = iter(range(1_000_000))

    def respond(handler: Handler, received: Received) -> None:
        behaviours[min(next(count), len(behaviours) - 1)](handler, received)

    return respond


def verified(secret: str) -> Behaviour:
    """200 only when the reference implementation verifies the signature; 400 otherwise."""
    hook = Webhook(secret)

    def respond(handler: Handler, received: Received) -> None:
        try:
            hook.verify(received.body, received.headers)
        except Exception as error:
            handler.reply(400, f"not verified: {error}".encode())
            return
        handler.reply(200)

    return respond


def hang(seconds: float = 30.0) -> Behaviour:
    """Accept the request, then say nothing until the test ends (or `seconds` pass)."""

    def respond(handler: Handler, _received: Received) -> None:
        handler.server.stopping.wait(seconds)

    return respond


def huge(size: int = 10 * 1024 * 1024) -> Behaviour:
    """200 with a body of `size` bytes; records how much could be written before the client hung up."""

    def respond(handler: Handler, _received: Received) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        chunk = b"x" * 65536
        try:
            while handler.server.sent_bytes < size:
                handler.wfile.write(chunk)
                handler.server.sent_bytes += len(chunk)
        except OSError:
            handler.server.write_failed = True
        handler.close_connection = True

    return respond


def trickle(interval: float = 0.05) -> Behaviour:
    """200 headers at once, then one body byte per interval, never finishing before the test ends."""

    def respond(handler: Handler, _received: Received) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(1_000_000))
        handler.end_headers()
        deadline = time.monotonic() + 30
        try:
            while not handler.server.stopping.is_set() and time.monotonic() < deadline:
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(interval)
        except OSError:
            handler.server.write_failed = True
        handler.close_connection = True

    return respond
