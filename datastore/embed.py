"""An embedded datastore member for tests and tools.

    with EmbeddedServer() as srv:
        with SyncClient([srv.endpoint]) as c:
            c.put("k", "v")

By default the member runs as a child process (``python -m datastore serve``) on free
127.0.0.1 ports with a temporary data directory that is removed on stop. With
``in_process=True`` it runs in this process instead, on an event loop in a daemon thread
(quicker to start; shares the GIL with the caller, so prefer the child for load).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from datastore.testing.procs import ServerProc, datastore_proc, free_port

__all__ = ["EmbeddedServer"]
# Fast elections keep start-up short; a single member elects itself immediately anyway.
DEFAULT_FLAGS = ("--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "warn")


class EmbeddedServer:
    """One datastore member on a free port. Use as a context manager or start()/stop()."""

    def __init__(self, data_dir: str | Path | None = None, name: str = "embedded",
                 extra_flags: Sequence[str] = (), in_process: bool = False,
                 start_timeout: float = 60.0) -> None:
        self._own_dir = data_dir is None
        self.base = Path(tempfile.mkdtemp(prefix="datastore-embed-")) if data_dir is None \
            else Path(data_dir)
        self.name = name
        self.flags = [*DEFAULT_FLAGS, *extra_flags]
        self.in_process = in_process
        self.start_timeout = start_timeout
        self.proc: ServerProc = datastore_proc(self.base, name, extra=self.flags)
        self._thread: _InProcess | None = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the client port (what ``Client([...])`` takes)."""
        return self.proc.endpoint

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint]

    @property
    def client_url(self) -> str:
        return self.proc.client_url

    @property
    def data_dir(self) -> Path:
        return self.proc.data_dir

    @property
    def log_path(self) -> Path:
        return self.proc.log_path

    def start(self) -> EmbeddedServer:
        if self.in_process:
            # argv is "python -m datastore serve --flags...": the server parses the flags.
            self._thread = _InProcess(self.proc.argv[4:])
            self._thread.start_and_wait(self.start_timeout)
            self.proc.wait_ready(self.start_timeout)
        else:
            self.proc.start(self.start_timeout)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        else:
            self.proc.stop()
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the child (crash it); ``restart()`` brings it back on the same data."""
        if self.in_process:
            raise RuntimeError("kill() needs a child process: use EmbeddedServer(in_process=False)")
        self.proc.kill()

    def restart(self) -> EmbeddedServer:
        if self._thread is not None:
            self._thread.stop()
        else:
            self.proc.stop()
        return self.start()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        mode = "in-process" if self.in_process else "child"
        return f"EmbeddedServer({self.endpoint}, {mode}, data={self.data_dir})"


class _InProcess:
    """Runs the member's servers on a private event loop in a daemon thread."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, name="datastore-embedded", daemon=True)

    def start_and_wait(self, timeout: float) -> None:
        self.thread.start()
        if not self.ready.wait(timeout):
            raise TimeoutError(f"embedded server did not start within {timeout}s")
        if self.error is not None:
            raise RuntimeError(f"embedded server failed to start: {self.error}") from self.error

    def stop(self) -> None:
        if self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as e:
            self.error = e
            self.ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        from datastore.member import start_member
        from datastore.server.config import add_serve_arguments, config_from_args

        parser = argparse.ArgumentParser()
        add_serve_arguments(parser)
        member = await start_member(config_from_args(parser.parse_args(self.argv)))
        self._stop = asyncio.Event()
        self.ready.set()
        await self._stop.wait()
        await member.stop()


def free_endpoint() -> str:
    """A free ``127.0.0.1:PORT`` (for tools that start their own member)."""
    return f"127.0.0.1:{free_port()}"
