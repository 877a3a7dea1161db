"""The JSON gateway: etcd's grpc-gateway over a small asyncio HTTP/1.1 server.

Every ``POST /v3/...`` is decoded with protobuf's JSON mapping (proto field names, 64-bit
integers as strings, bytes as base64, unknown fields ignored, as etcd's ``JSONPb{OrigName:
true}`` marshaler does), sent to the member's own gRPC services over a local channel (as
etcd's gateway does, so behaviour is that of the gRPC API), and the answer encoded back.
Errors are grpc-gateway's body ``{"error", "message", "code"}`` with the HTTP status of its
``HTTPStatusFromCode`` (grpc-gateway v1, the one etcd 3.4/3.5 ship). Streaming responses
(``/v3/watch``, ``/v3/lease/keepalive``, snapshot, election observe) are chunked, one
``{"result": ...}`` JSON object and a newline per chunk; a streaming request body is a
sequence of JSON objects. The ``Authorization`` header becomes the ``token`` metadata.

Any other path is handed to a fallback (the member's /health, /version, /metrics, ...),
and ``/dashboard...`` to the console (:mod:`datastore.console.web`), which may stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import grpc
from google.protobuf import json_format
from google.protobuf import message as pbmessage

from datastore.gateway.routes import Route, lookup

if TYPE_CHECKING:
    from datastore.console.web import Console

log = logging.getLogger("datastore.gateway")

# grpc-gateway v1's HTTPStatusFromCode (etcd 3.4/3.5 vendor v1.x: FailedPrecondition is 412)
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 408, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500,
}
PHRASES = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
           412: "Precondition Failed", 413: "Request Entity Too Large",
           429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable", 504: "Gateway Timeout"}
CORS = (b"Access-Control-Allow-Headers: accept, content-type, authorization\r\n"
        b"Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE\r\n"
        b"Access-Control-Allow-Origin: *\r\n")
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
HEADER_LIMIT = 64 * 1024
IDLE_TIMEOUT_S = 120.0  # an idle keep-alive connection is closed after this

CERT_REFRESH_S = 2.0


class Reloadable(Protocol):
    """A server SSLContext replaced in place when its files change (tlsutil.ReloadingSSLContext)."""

    ctx: ssl.SSLContext

    def refresh(self) -> None: ...

    def refused(self, writer: asyncio.StreamWriter) -> bool: ...


# (method, target) -> (status, content type, body): the member's non-gateway endpoints
Fallback = Callable[[str, str], Awaitable[tuple[int, str, str]]]


class BadRequest(Exception):
    """The HTTP framing itself is broken: answer 400 and close."""


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlparse(self.target).path

    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return conn == "keep-alive"
        return conn != "close"


async def read_request(reader: asyncio.StreamReader, max_body: int) -> Request | None:
    """One request, or None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise BadRequest("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("malformed request line")
    req = Request(parts[0], parts[1], parts[2])
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest("malformed header line")
        req.headers[name.strip().lower()] = value.strip()
    if "chunked" in req.headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BadRequest("malformed chunk size") from None
            if size < 0 or len(body) + size > max_body:
                raise BadRequest("request body too large")
            if size == 0:
                await reader.readuntil(b"\r\n")  # trailers are not supported: the empty line
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        req.body = bytes(body)
    else:
        try:
            length = int(req.headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest("malformed Content-Length") from None
        if length < 0 or length > max_body:
            raise BadRequest("request body too large")
        req.body = await reader.readexactly(length) if length else b""
    return req


def head(status: int, ctype: str | None, extra: bytes = b"", length: int | None = None,
         close: bool = False) -> bytes:
    out = f"HTTP/1.1 {status} {PHRASES.get(status, 'Unknown')}\r\n".encode() + CORS
    if ctype:
        out += f"Content-Type: {ctype}\r\n".encode()
    if ctype == TEXT:
        out += b"X-Content-Type-Options: nosniff\r\n"
    out += extra
    out += (f"Content-Length: {length}\r\n".encode() if length is not None
            else b"Transfer-Encoding: chunked\r\n")
    if close:
        out += b"Connection: close\r\n"
    return out + b"\r\n"


def to_json(msg: pbmessage.Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(code: grpc.StatusCode, message: str) -> bytes:
    return dumps({"error": message, "message": message, "code": code.value[0]})


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def go_base64_error(src: bytes) -> int | None:
    """Where Go's base64.StdEncoding (etcd's gateway decodes bytes fields with it) finds
    ``src`` corrupt, or None. It skips CR/LF and demands padding, quantum by quantum.
    Protobuf's Python parser would instead drop stray characters silently (a typo would
    name another key)."""
    si, n = 0, len(src)
    while si < n:
        j = 0
        while j < 4:
            if si == n:
                return None if j == 0 else si - j
            c = src[si]
            si += 1
            if c in _B64_ALPHABET:
                j += 1
                continue
            if c in b"\r\n":
                continue
            if c != ord("="):
                return si - 1
            if j in (0, 1):
                return si - 1
            if j == 2:  # a second "=" must follow
                while si < n and src[si] in b"\r\n":
                    si += 1
                if si == n:
                    return n
                if src[si] != ord("="):
                    return si - 1
                si += 1
            while si < n and src[si] in b"\r\n":
                si += 1
            return si if si < n else None
    return None


def _strict_bytes(value: Any) -> None:
    if not isinstance(value, str):
        return  # the parser reports the wrong type itself
    at = go_base64_error(value.encode("utf-8", errors="replace"))
    if at is not None:
        raise ValueError(f"illegal base64 data at input byte {at}")


def _check_bytes(desc: Any, obj: Any, depth: int = 0) -> None:
    if not isinstance(obj, dict) or depth > 64:
        return
    fields = {**{f.json_name: f for f in desc.fields}, **{f.name: f for f in desc.fields}}
    for k, v in obj.items():
        f = fields.get(k)
        if f is None or v is None:
            continue
        items = v if f.is_repeated and isinstance(v, list) else [v]
        for item in items:
            if f.type == f.TYPE_BYTES:
                _strict_bytes(item)
            elif f.message_type is not None and not f.message_type.GetOptions().map_entry:
                _check_bytes(f.message_type, item, depth + 1)


def parse_one(route: Route, text: str) -> pbmessage.Message:
    """One JSON object into the route's request message; ValueError with the reason."""
    msg = route.request()
    if not text.strip():
        return msg  # an empty body is an empty request, as in grpc-gateway (io.EOF ignored)
    try:
        _check_bytes(msg.DESCRIPTOR, json.loads(text))
        json_format.Parse(text, msg, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as e:
        raise ValueError(str(e) or type(e).__name__) from None
    return msg


def parse_many(route: Route, text: str) -> list[pbmessage.Message]:
    """A streaming request body: consecutive JSON values; decoding stops at the first bad one
    (grpc-gateway logs it and closes the send side; what came before is still sent)."""
    out: list[pbmessage.Message] = []
    dec = json.JSONDecoder()
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        try:
            value, pos = dec.raw_decode(text, pos)
            out.append(parse_one(route, json.dumps(value)))
        except (ValueError, RecursionError) as e:
            log.debug("gateway: stopped decoding a streaming request body", extra={"error": str(e)})
            return out


class Gateway:
    """Serves the JSON gateway (plus a fallback) on any number of listeners."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None,
                 fallback: Fallback | None = None, max_body: int = 8 * 1024 * 1024,
                 options: list[tuple[str, Any]] | None = None, console: Console | None = None) -> None:
        opts = [("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.max_send_message_length", 2**31 - 1), *(options or [])]
        self.channel = (grpc.aio.secure_channel(target, credentials, options=opts)
                        if credentials is not None else
                        grpc.aio.insecure_channel(target, options=opts))
        self.fallback = fallback
        self.console = console
        self.max_body = max_body
        self.servers: list[asyncio.Server] = []
        self._conns: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def listen(self, url: str, tls: Reloadable | None = None) -> None:
        """Serve on ``url``; an https URL needs ``tls`` (TLS at accept, as the metrics URL)."""
        p = urlparse(url)
        if p.scheme not in ("http", "https") or not p.hostname or not p.port:
            raise ValueError(f"{url!r} is not http(s)://HOST:PORT")
        if p.scheme == "https" and tls is None:
            raise ValueError(f"{url}: https needs --cert-file and --key-file (or --auto-tls)")
        tls = tls if p.scheme == "https" else None
        srv = await asyncio.start_server(lambda r, w: self._connection(r, w, tls),
                                         p.hostname, p.port, limit=HEADER_LIMIT,
                                         ssl=tls.ctx if tls is not None else None)
        self.servers.append(srv)
        if tls is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._refresh(srv, tls)))

    @staticmethod
    async def _refresh(srv: asyncio.Server, tls: Reloadable) -> None:
        """Pick up a rotated certificate even when no request comes."""
        while srv.is_serving():
            await asyncio.sleep(CERT_REFRESH_S)  # a polling period, not a synchronisation
            tls.refresh()

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for t in self._tasks:
            t.cancel()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self.console is not None:
            await self.console.close()
        await self.channel.close()

    # ---- connections ------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          tls: Reloadable | None) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            if tls is not None:
                tls.refresh()  # for the next connection: this one's handshake is done
                if tls.refused(writer):  # --client-crl-file lists its certificate
                    return
            while True:
                try:
                    req = await asyncio.wait_for(read_request(reader, self.max_body),
                                                 IDLE_TIMEOUT_S)
                except BadRequest as e:
                    body = f"400 Bad Request: {e}\n".encode()
                    writer.write(head(400, TEXT, length=len(body), close=True) + body)
                    await writer.drain()
                    return
                if req is None:
                    return
                if not await self._serve(req, reader, writer):
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError, OSError, ssl.SSLError):
            pass  # an abandoned or broken connection: just close it
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _serve(self, req: Request, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        keep = req.keep_alive()
        if self.console is not None and self.console.owns(req.path):
            await self.console.serve(req.method, req.target, reader, writer)
            return False  # the console answers one request per connection
        is_gw, route = lookup(req.path)
        if not is_gw:
            return await self._fallback(req, writer, keep)
        if req.method == "OPTIONS":  # CORS preflight, as etcd answers it
            writer.write(head(200, None, length=0, close=not keep))
        elif route is None:
            self._text(writer, 404, "Not Found\n", keep)
        elif req.method != "POST":
            self._text(writer, 405, "Method Not Allowed\n", keep)
        elif route.kind == "unary":
            await self._unary(route, req, writer, keep)
        else:
            await self._stream(route, req, reader, writer)
            return False
        await writer.drain()
        return keep

    def _text(self, writer: asyncio.StreamWriter, status: int, text: str, keep: bool) -> None:
        data = text.encode()
        writer.write(head(status, TEXT, length=len(data), close=not keep) + data)

    def _json(self, writer: asyncio.StreamWriter, status: int, data: bytes, keep: bool,
              extra: bytes = b"") -> None:
        writer.write(head(status, JSON, extra, length=len(data), close=not keep) + data)

    async def _fallback(self, req: Request, writer: asyncio.StreamWriter, keep: bool) -> bool:
        if self.fallback is None:
            self._text(writer, 404, "404 page not found\n", keep)
        else:
            status, ctype, body = await self.fallback(req.method, req.target)
            data = body.encode()
            extra = b"Allow: GET\r\n" if status == 405 else b""
            writer.write(head(status, ctype, extra, length=len(data), close=not keep) + data)
        await writer.drain()
        return keep

    @staticmethod
    def metadata(req: Request) -> list[tuple[str, str]]:
        token = req.headers.get("authorization")
        return [("token", token)] if token else []

    async def _unary(self, route: Route, req: Request, writer: asyncio.StreamWriter,
                     keep: bool) -> None:
        try:
            msg = parse_one(route, req.body.decode("utf-8", errors="replace"))
        except ValueError as e:
            self._json(writer, 400, error_body(grpc.StatusCode.INVALID_ARGUMENT, str(e)), keep)
            return
        call = self.channel.unary_unary(route.full_method,
                                        request_serializer=route.request.SerializeToString,
                                        response_deserializer=route.response.FromString)
        started = time.monotonic()
        try:
            resp = await call(msg, metadata=self.metadata(req))
        except grpc.aio.AioRpcError as e:
            code = e.code()
            self._json(writer, HTTP_STATUS.get(code, 500), error_body(code, e.details() or ""),
                       keep)
            return
        log.debug("gateway call", extra={"method": route.full_method,
                                         "ms": round((time.monotonic() - started) * 1000, 1)})
        self._json(writer, 200, dumps(to_json(resp)), keep,
                   b"Grpc-Metadata-Content-Type: application/grpc\r\n")

    async def _stream(self, route: Route, req: Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        text = req.body.decode("utf-8", errors="replace")
        md = self.metadata(req)
        if route.kind == "server_stream":
            try:
                first = parse_one(route, text)
            except ValueError as e:
                self._json(writer, 400, error_body(grpc.StatusCode.INVALID_ARGUMENT, str(e)),
                           False)
                return
            call: Any = self.channel.unary_stream(
                route.full_method, request_serializer=route.request.SerializeToString,
                response_deserializer=route.response.FromString)(first, metadata=md)
        else:
            msgs = parse_many(route, text)

            async def requests() -> AsyncIterator[pbmessage.Message]:
                for m in msgs:
                    yield m
                if route.keep_sending:  # a watch stream lives until the client goes away
                    await asyncio.Event().wait()

            call = self.channel.stream_stream(
                route.full_method, request_serializer=route.request.SerializeToString,
                response_deserializer=route.response.FromString)(requests(), metadata=md)

        async def watch_eof() -> None:
            # The body was read whole; any further read returning EOF means the client left.
            with contextlib.suppress(Exception):
                while await reader.read(4096):
                    pass
            call.cancel()

        eof = asyncio.create_task(watch_eof())
        writer.write(head(200, JSON, b"Grpc-Metadata-Content-Type: application/grpc\r\n",
                          close=True))
        try:
            try:
                async for resp in call:
                    self._chunk(writer, dumps({"result": to_json(resp)}) + b"\n")
                    await writer.drain()
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED or not eof.done():
                    code = e.code()
                    status = HTTP_STATUS.get(code, 500)
                    self._chunk(writer, dumps({"error": {
                        "grpc_code": code.value[0], "http_code": status,
                        "message": e.details() or "", "http_status": PHRASES.get(status, "")}})
                        + b"\n")
            except asyncio.CancelledError:
                call.cancel()
                raise
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            eof.cancel()
            call.cancel()

    @staticmethod
    def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
