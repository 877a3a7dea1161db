"""A small HTTP/1.1 listener for the operator's and the scheduler's ``/metrics`` (and
``/healthz``, and their console at ``/dashboard``): one GET per connection. A request that
is not HTTP gets 400, an unknown path 404, another method 405; a handler never sends a
traceback. The console's live stream keeps its connection until the stream ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from datastore.metrics.registry import CONTENT_TYPE, Exposition

if TYPE_CHECKING:
    from datastore.console.web import Console

log = logging.getLogger("datastore.metrics")

Route = Callable[[], tuple[int, str, str]]  # -> (status, content type, body)
_PHRASES = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}
TEXT = "text/plain; charset=utf-8"


def metrics_route(reg: CollectorRegistry) -> Route:
    exp = Exposition(reg)
    return lambda: (200, CONTENT_TYPE, exp.render())


def respond(routes: dict[str, Route], request_line: bytes) -> tuple[int, str, str]:
    try:
        method, target, version = request_line.decode("ascii").split(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        path = urlsplit(target).path
    except ValueError:
        return 400, TEXT, "400 Bad Request\n"
    route = routes.get(path)
    if route is None:
        return 404, TEXT, "404 page not found\n"
    if method not in ("GET", "HEAD"):
        return 405, TEXT, "Method Not Allowed\n"
    try:
        return route()
    except Exception:  # logged here; the client gets a plain 500
        log.exception("serving %s failed", path)
        return 500, TEXT, "500 Internal Server Error\n"


def _console_request(console: Console | None, request_line: bytes) -> tuple[str, str] | None:
    """(method, target) when the request is the console's."""
    parts = request_line.decode("latin-1").split(" ")
    if console is None or len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    return (parts[0], parts[1]) if console.owns(urlsplit(parts[1]).path) else None


async def serve_http(host: str, port: int, routes: dict[str, Route],
                     console: Console | None = None) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            line = head.split(b"\r\n", 1)[0]
            mine = _console_request(console, line)
            if console is not None and mine is not None:
                await console.serve(*mine, reader, writer)
                return
            status, ctype, body = respond(routes, line)
            data = body.encode()
            writer.write(f"HTTP/1.1 {status} {_PHRASES[status]}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError,
                ValueError):
            pass  # an abandoned or oversized request: just close
        finally:
            writer.close()
    return await asyncio.start_server(handle, host, port)


def split_addr(addr: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT`` for every address) for a ``--metrics-addr`` flag."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag}: {addr!r} is not HOST:PORT")
    return host or "0.0.0.0", int(port)
