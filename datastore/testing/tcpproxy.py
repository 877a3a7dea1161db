"""A small TCP proxy on 127.0.0.1 that a test controls, for network fault injection.

Each :class:`TcpProxy` listens on its own (free) port and forwards every accepted
connection to a target port. Faults:

``block(mode)``
    Nobody reaches the target any more. ``mode="reset"`` aborts existing connections
    (the peer sees a reset) and closes new ones as soon as they are accepted (the dialer
    sees the connection close, i.e. a fast failure much like "connection refused").
    ``mode="blackhole"`` keeps connections open but silently discards every byte in both
    directions (the dialer sees a hang, until its keepalive or deadline fires); because
    discarding bytes breaks any framing on the stream, blackholed connections are cut
    when the block is lifted.
``block_from(sources, mode)``
    The same, but only for connections whose *dialing process* is one of ``sources``
    (names given by the ``identify`` callback, see below): a one-way cut of the links
    source -> target. Blocking ``i -> j`` on j's proxy and ``j -> i`` on i's proxy is a
    full partition between i and j even though each member has one inbound proxy.
``unblock()`` / ``unblock_from(sources)``
    Lift the corresponding blocks.
``set_delay(seconds)``
    Every chunk forwarded (either direction) is held back this long; order is kept.

Identifying the dialer: a peer URL is cluster-wide, so every member dials member j
through the same proxy j. To tell who dialed, the proxy looks the connection's source
port up in ``/proc/net/tcp{,6}`` (the dialer's socket inode) and then finds which of
the processes named by ``identify()`` (``{pid: name}``) holds that inode among its file
descriptors. Linux only; a connection whose owner is not found is labelled ``None`` and
only whole-proxy blocks apply to it.

The proxy runs its own asyncio loop on a daemon thread; every control method is
thread-safe and returns once the change is in effect (existing connections cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["TcpProxy", "owner_of_connection"]

CHUNK = 65536


def _inodes_for_local_port(port: int, remote_port: int) -> set[str]:
    """Socket inodes whose local port is ``port`` and remote port ``remote_port``."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 10:
                        continue
                    lport = int(parts[1].rsplit(":", 1)[1], 16)
                    rport = int(parts[2].rsplit(":", 1)[1], 16)
                    if lport == port and rport == remote_port:
                        found.add(parts[9])
        except OSError:
            continue
    return found


def owner_of_connection(src_port: int, dst_port: int, candidates: dict[int, str]) -> str | None:
    """Name (from ``candidates``: pid -> name) of the process owning the socket
    127.0.0.1:src_port -> 127.0.0.1:dst_port, or None."""
    inodes = _inodes_for_local_port(src_port, dst_port)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for pid, name in candidates.items():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in wanted:
                    return name
            except OSError:
                continue
    return None


@dataclass(eq=False)
class _Conn:
    source: str | None
    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    blackholed: bool = False

    def abort(self) -> None:
        for t in self.transports:
            with contextlib.suppress(Exception):
                sock = t.get_extra_info("socket")
                if sock is not None:  # linger 0: close with a RST, like a cut cable's reset
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            t.abort()


class TcpProxy:
    """Forward 127.0.0.1:<port> to 127.0.0.1:<target_port>; see the module docstring."""

    def __init__(self, target_port: int, name: str = "",
                 identify: Callable[[], dict[int, str]] | None = None) -> None:
        self.target_port = target_port
        self.name = name or f"proxy->{target_port}"
        self.identify = identify
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self._blocked: str | None = None  # None, "reset" or "blackhole": everyone
        self._blocked_from: dict[str, str] = {}  # source name -> mode
        self._delay = 0.0
        self._conns: set[_Conn] = set()
        self.accepted = 0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._sock)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.abort()
        self._conns.clear()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- faults (thread-safe) --------------------------------------------------------------

    def block(self, mode: str = "reset") -> None:
        self._check_mode(mode)
        self._call(self._set(lambda: setattr(self, "_blocked", mode)))

    def unblock(self) -> None:
        self._call(self._set(lambda: setattr(self, "_blocked", None)))

    def block_from(self, sources: Iterable[str], mode: str = "reset") -> None:
        self._check_mode(mode)
        srcs = list(sources)
        self._call(self._set(lambda: self._blocked_from.update(dict.fromkeys(srcs, mode))))

    def unblock_from(self, sources: Iterable[str] | None = None) -> None:
        """Lift per-source blocks (all of them when ``sources`` is None)."""
        srcs = None if sources is None else list(sources)

        def change() -> None:
            if srcs is None:
                self._blocked_from.clear()
            for s in srcs or ():
                self._blocked_from.pop(s, None)
        self._call(self._set(change))

    def heal(self) -> None:
        """Lift every block and delay."""
        def change() -> None:
            self._blocked = None
            self._blocked_from.clear()
            self._delay = 0.0
        self._call(self._set(change))

    def set_delay(self, seconds: float) -> None:
        self._call(self._set(lambda: setattr(self, "_delay", max(0.0, seconds))))

    def connections(self) -> list[str | None]:
        """Sources of the currently open connections (for diagnostics and tests)."""
        return self._call(self._sources())

    async def _sources(self) -> list[str | None]:
        return [c.source for c in self._conns]

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"mode must be 'reset' or 'blackhole', not {mode!r}")

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _set(self, change: Callable[[], object]) -> None:
        change()
        for c in list(self._conns):
            mode = self._mode_for(c.source)
            if mode == "reset":
                c.abort()
                self._conns.discard(c)
            elif mode == "blackhole":
                c.blackholed = True
            elif c.blackholed:  # lifted: the stream lost bytes, so it cannot continue
                c.abort()
                self._conns.discard(c)

    def _mode_for(self, source: str | None) -> str | None:
        if self._blocked is not None:
            return self._blocked
        if source is not None:
            return self._blocked_from.get(source)
        return None

    # -- forwarding ------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = None
        if self.identify is not None:
            peer = writer.get_extra_info("peername")
            with contextlib.suppress(Exception):
                source = owner_of_connection(peer[1], self.port, self.identify())
        conn = _Conn(source, [writer.transport])
        mode = self._mode_for(source)
        if mode == "reset":
            self.refused += 1
            conn.abort()
            return
        self.accepted += 1
        self._conns.add(conn)
        if mode == "blackhole":
            conn.blackholed = True
            await self._pump(conn, reader, None)
            return
        try:
            t_reader, t_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            conn.abort()
            self._conns.discard(conn)
            return
        conn.transports.append(t_writer.transport)
        if self._mode_for(source) == "reset":  # blocked while we were connecting
            conn.abort()
            self._conns.discard(conn)
            return
        await asyncio.gather(self._pump(conn, reader, t_writer), self._pump(conn, t_reader, writer))
        self._conns.discard(conn)

    async def _pump(self, conn: _Conn, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                if conn.blackholed or dst is None:
                    continue
                if self._delay:
                    await asyncio.sleep(self._delay)  # the injected latency itself
                    if conn.blackholed:
                        continue
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError, RuntimeError):
            pass
        finally:
            conn.abort()
