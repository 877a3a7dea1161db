"""``datastore gateway start``: etcd's L4 gateway, a round-robin TCP proxy.

Each accepted connection goes to the next endpoint in turn; an endpoint that refuses
the connection (or does not answer within the dial timeout) is skipped and left out for
``--retry-delay`` (etcd's default: one minute), unless every endpoint is out, in which
case all are tried again. Bytes are copied both ways until either side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("datastore.gateway.tcp")

CHUNK = 64 * 1024


@dataclass
class Remote:
    addr: str
    inactive_until: float = 0.0

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.addr.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass
class TcpGateway:
    endpoints: list[str]
    listen_addr: str = "127.0.0.1:23790"
    retry_delay: float = 60.0
    dial_timeout: float = 1.0
    remotes: list[Remote] = field(default_factory=list)
    _next: int = 0
    server: asyncio.Server | None = None
    connections: int = 0

    def __post_init__(self) -> None:
        for e in self.endpoints:
            for scheme in ("http://", "https://"):
                e = e.removeprefix(scheme)
            self.remotes.append(Remote(e))
        if not self.remotes:
            raise ValueError("gateway: give at least one endpoint with --endpoints")

    async def start(self) -> int:
        host, _, port = self.listen_addr.rpartition(":")
        self.server = await asyncio.start_server(self._serve, host.strip("[]") or "127.0.0.1",
                                                 int(port))
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def _order(self) -> list[Remote]:
        n = len(self.remotes)
        start = self._next
        self._next = (self._next + 1) % n
        order = [self.remotes[(start + i) % n] for i in range(n)]
        now = time.monotonic()
        active = [r for r in order if r.inactive_until <= now]
        return active or order

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for r in self._order():
            try:
                return await asyncio.wait_for(asyncio.open_connection(*r.host_port),
                                              self.dial_timeout)
            except (OSError, TimeoutError) as e:
                r.inactive_until = time.monotonic() + self.retry_delay
                log.warning("gateway: endpoint unreachable, skipping it",
                            extra={"endpoint": r.addr, "error": str(e),
                                   "retry_after_s": self.retry_delay})
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up = await self._dial()
        if up is None:
            log.error("gateway: no endpoint accepts connections",
                      extra={"endpoints": [r.addr for r in self.remotes]})
            writer.close()
            return
        self.connections += 1
        ur, uw = up
        try:
            await asyncio.gather(_pipe(reader, uw), _pipe(ur, writer))
        finally:
            self.connections -= 1
            uw.close()
            writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
