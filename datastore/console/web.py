"""Serving the console: the page, its static files, a JSON snapshot and a live stream.

Routes (anything else under ``/dashboard`` is 404; a method other than GET or HEAD is 405;
any query string is 400, as no route takes one):

- ``/dashboard``: the page of this process's view (member, operator or scheduler);
- ``/dashboard/static/NAME``: the page's scripts, styles and the vendored chart library;
- ``/dashboard/api/snapshot``: the current view as JSON;
- ``/dashboard/api/events``: the same, as server-sent events, one per period.

One producer builds and encodes the view once per period, and only while somebody
watches; every stream writes those same bytes, so a stream costs a write per period and
nothing else. At most ``max_streams`` streams are open at once (more get 503); a stream
ends when its client goes away, when its client stops reading (a write that cannot drain
in time), or after ``MAX_STREAM_S`` (EventSource reconnects by itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("datastore.console")

PREFIX = "/dashboard"
VIEWS = ("member", "operator", "scheduler")
MAX_STREAMS = 8
MAX_STREAM_S = 600.0
DRAIN_TIMEOUT_S = 5.0
SNAPSHOT_TIMEOUT_S = 5.0
MAX_TARGET = 2048
TEXT = "text/plain; charset=utf-8"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".txt": TEXT, ".md": TEXT}
PHRASES = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error", 503: "Service Unavailable"}
# The page loads only its own files and talks only to its own origin.
SECURITY = (b"X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n"
            b"Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n"
            b"Content-Security-Policy: default-src 'self'; img-src 'self' data:; "
            b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'\r\n")

Snapshot = Callable[[], Awaitable[dict[str, Any]]]


def _static_files() -> dict[str, bytes]:
    root = resources.files("datastore.console") / "static"
    return {f.name: f.read_bytes() for f in root.iterdir()
            if f.is_file() and f.name.endswith(tuple(TYPES)) and f.name != "page.html"}


def _page(view: str) -> bytes:
    html = (resources.files("datastore.console") / "static" / "page.html").read_text()
    return html.replace("{{view}}", view).encode()


@dataclass
class Response:
    status: int
    ctype: str
    body: bytes
    allow: bool = False  # add "Allow: GET, HEAD" (a 405)


def _text(status: int, message: str, allow: bool = False) -> Response:
    return Response(status, TEXT, f"{status} {PHRASES[status]}: {message}\n".encode(), allow)


class Broadcaster:
    """The latest encoded view, rebuilt every ``period`` seconds while anyone waits on it."""

    def __init__(self, produce: Callable[[], Awaitable[bytes]], period: float) -> None:
        self.produce = produce
        self.period = period
        self.latest: bytes | None = None
        self.subscribers = 0
        self._fresh = asyncio.Event()  # set (and replaced) when ``latest`` changes
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> None:
        self.subscribers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unsubscribe(self) -> None:
        self.subscribers -= 1

    async def next(self, seen: bytes | None) -> bytes:
        """The latest data once it differs from ``seen`` (an object identity, not a compare)."""
        while self.latest is None or self.latest is seen:
            await self._fresh.wait()
        return self.latest

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.subscribers > 0:
            started = loop.time()
            try:
                self.latest = await asyncio.wait_for(self.produce(), SNAPSHOT_TIMEOUT_S)
            except Exception as e:  # the page shows it; the member goes on
                log.warning("console view failed", exc_info=True)
                reason = json.dumps(str(e) or type(e).__name__).encode()
                self.latest = b"event: failure\ndata: " + reason + b"\n\n"
            fresh, self._fresh = self._fresh, asyncio.Event()
            fresh.set()
            # the period between two views, not a synchronisation
            await asyncio.sleep(max(0.0, self.period - (loop.time() - started)))
        self.latest = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class Console:
    """The ``/dashboard`` routes of one process: ``snapshot`` builds its view as a dict."""

    def __init__(self, view: str, snapshot: Snapshot, period: float = 1.0,
                 max_streams: int = MAX_STREAMS,
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        assert view in VIEWS, view
        self.view = view
        self.snapshot = snapshot
        self.on_close = on_close
        self.max_streams = max_streams
        self.streams = 0
        self.page = _page(view)
        self.files = _static_files()
        self.events = Broadcaster(self._event, period)

    @staticmethod
    def owns(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    async def _view(self) -> dict[str, Any]:
        view = await self.snapshot()
        return {"kind": self.view, "time": time.time(), "console_streams": self.streams, **view}

    async def _event(self) -> bytes:
        return b"data: " + json.dumps(await self._view(), separators=(",", ":")).encode() + b"\n\n"

    def route(self, method: str, target: str) -> Response | str:
        """A whole response, or ``"snapshot"`` or ``"events"`` for those two routes."""
        if method not in ("GET", "HEAD"):
            return _text(405, "the console is read-only (GET and HEAD)", allow=True)
        if len(target) > MAX_TARGET or not target.startswith("/"):
            return _text(400, "malformed request target")
        try:
            url = urlsplit(target)
        except ValueError:
            return _text(400, "malformed request target")
        if url.query or target.endswith("?"):
            return _text(400, "the console takes no query parameters")
        path = url.path
        if path in (PREFIX, PREFIX + "/"):
            return Response(200, TYPES[".html"], self.page)
        if path in (PREFIX + "/api/events", PREFIX + "/api/snapshot"):
            return path.rsplit("/", 1)[1]
        if path.startswith(PREFIX + "/static/"):
            name = path[len(PREFIX + "/static/"):]
            data = self.files.get(name)
            if data is not None:
                return Response(200, TYPES["." + name.rsplit(".", 1)[-1]], data)
        return _text(404, "no such console page")

    async def serve(self, method: str, target: str, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        """Answer one request on ``writer`` (the connection closes afterwards)."""
        try:
            r = self.route(method, target)
            if r == "events":
                if method == "GET":
                    await self._stream(reader, writer)
                    return
                r = Response(200, "text/event-stream", b"")
            elif r == "snapshot":
                r = await self._snapshot_response()
        except Exception:  # never a traceback to the client
            log.exception("console request failed", extra={"target": target[:200]})
            r = _text(500, "see the server's log")
        assert isinstance(r, Response)
        extra = b"Allow: GET, HEAD\r\n" if r.allow else b""
        writer.write(_head(r.status, r.ctype, extra, len(r.body))
                     + (r.body if method != "HEAD" else b""))
        await writer.drain()

    async def _snapshot_response(self) -> Response:
        try:
            view = await asyncio.wait_for(self._view(), SNAPSHOT_TIMEOUT_S)
        except TimeoutError:
            return _text(503, "the view took too long")
        return Response(200, "application/json", json.dumps(view).encode())

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.streams >= self.max_streams:
            r = _text(503, f"too many console streams (at most {self.max_streams})")
            writer.write(_head(503, r.ctype, b"Retry-After: 5\r\n", len(r.body)) + r.body)
            await writer.drain()
            return
        self.streams += 1
        self.events.subscribe()
        loop = asyncio.get_running_loop()
        gone = asyncio.ensure_future(_until_eof(reader))
        nxt: asyncio.Future[bytes] | None = None
        try:
            writer.write(_head(200, "text/event-stream", b"X-Accel-Buffering: no\r\n", None)
                         + b"retry: 2000\n\n")
            deadline = loop.time() + MAX_STREAM_S
            seen: bytes | None = None
            while loop.time() < deadline:
                nxt = asyncio.ensure_future(self.events.next(seen))
                await asyncio.wait({nxt, gone}, timeout=deadline - loop.time(),
                                   return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    break  # the client went away (or the stream is old enough)
                seen = nxt.result()
                writer.write(seen)
                await asyncio.wait_for(writer.drain(), DRAIN_TIMEOUT_S)
        finally:
            if nxt is not None:
                nxt.cancel()
            gone.cancel()
            self.streams -= 1
            self.events.unsubscribe()

    async def close(self) -> None:
        await self.events.close()
        if self.on_close is not None:
            await self.on_close()


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """Returns when the client closes its side (an SSE client sends nothing after the request)."""
    with contextlib.suppress(Exception):
        while await reader.read(4096):
            pass


def _head(status: int, ctype: str, extra: bytes, length: int | None) -> bytes:
    out = f"HTTP/1.1 {status} {PHRASES[status]}\r\nContent-Type: {ctype}\r\n".encode()
    out += SECURITY + extra
    if length is not None:
        out += f"Content-Length: {length}\r\n".encode()
    return out + b"Connection: close\r\n\r\n"
