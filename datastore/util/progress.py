"""Progress for commands people wait on, and their last line.

On a terminal, stderr shows a live display (rich): a spinner, a bar when the total is
known, a detail text and the elapsed time; it is cleared when the work ends, so the
screen keeps only the summary. When stderr is not a terminal (a log file, CI, a pipe), a
plain line every ``interval`` seconds instead, with no control characters, or nothing.
Either way the command ends with one summary line on stderr, saying what it did.
Standard output is left to the command's data (``--json``), unchanged.

``mode``: ``auto`` (a live display if the stream is a terminal, else lines), ``tty``,
``lines`` or ``none`` (no progress; the summary is still printed).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TextIO

MODES = ("auto", "tty", "lines", "none")
REFRESH_S = 0.1  # at most this often to rich: callers may update per item


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class Progress:
    """One long step: ``with Progress("restoring", total=n) as p: p.update(done, detail)``,
    then ``p.summary("restored ...")``."""

    def __init__(self, description: str, total: float | None = None, *,
                 stream: TextIO | None = None, mode: str = "auto", interval: float = 5.0) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: one of {', '.join(MODES)}")
        self.description = description
        self.total = total
        self.out = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "tty" if is_tty(self.out) else "lines"
        self.mode = mode
        self.interval = interval
        self.start = time.monotonic()
        self._last_line = self.start
        self._last_draw = 0.0
        self._live: object = None  # rich.progress.Progress while drawn
        self._task: int | None = None

    # ---- the display ----------------------------------------------------------------
    def __enter__(self) -> Progress:
        return self.begin()

    def begin(self, at: float | None = None) -> Progress:
        """Start the display (``with`` does); elapsed time counts from ``at`` (now)."""
        self.start = self._last_line = time.monotonic() if at is None else at
        if self.mode == "tty" and self._live is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress

            console = Console(file=self.out, force_terminal=True)
            # the bar pulses until a total is known; the percentage shows only then
            cols = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                    TaskProgressColumn(), TextColumn("{task.fields[detail]}"), TimeElapsedColumn()]
            live = RichProgress(*cols, console=console, transient=True)
            self._task = live.add_task(self.description, total=self.total, detail="")
            live.start()
            self._live = live
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            with contextlib.suppress(OSError):  # a terminal that went away
                live.stop()  # type: ignore[attr-defined]

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def update(self, completed: float, detail: str = "", *, total: float | None = None,
               description: str | None = None, force: bool = False) -> None:
        """Where the work is: ``completed`` of ``total`` (or of the total given before),
        with a short ``detail`` ("1,234 keys"); a new ``description`` starts the next
        phase of the work. Cheap to call often."""
        if total is not None:
            self.total = total
        phase = description is not None and description != self.description
        if description is not None:
            self.description = description
        now = time.monotonic()
        if self.mode == "tty" and self._live is not None:
            if force or phase or now - self._last_draw >= REFRESH_S:
                self._last_draw = now
                self._live.update(self._task, completed=completed,  # type: ignore[attr-defined]
                                  total=self.total, detail=detail, description=self.description)
        elif self.mode == "lines" and (force or now - self._last_line >= self.interval):
            self._last_line = now
            pct = f" {completed / self.total * 100:.0f}%" if self.total else ""
            self._write(f"[{self.description}]{pct} {detail} ({now - self.start:.1f} s)")

    def summary(self, line: str) -> None:
        """The command's last line: what it did (printed in every mode)."""
        self.close()
        self._write(line)

    def _write(self, line: str) -> None:
        self.out.write(line.rstrip() + "\n")
        self.out.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """A reader that went away (``| head``) ends the command quietly, as for any Unix
    tool: no traceback, exit status 141 (128 + SIGPIPE), and the interpreter's final
    flush pointed at /dev/null so it cannot raise again."""
    try:
        yield
        for s in (sys.stdout, sys.stderr):
            s.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, s.fileno())
        raise SystemExit(141) from None


def run_quietly(main: Callable[[], int]) -> int:
    """``main()``, with :func:`quiet_broken_pipe` around it."""
    with quiet_broken_pipe():
        return main()
    return 141  # pragma: no cover (quiet_broken_pipe raised SystemExit)
