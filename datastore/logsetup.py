"""Structured log lines: one JSON object per line, with any ``extra=`` fields included."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import NoReturn

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STD})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def text_field(key: str, value: object) -> str:
    """``key=value`` for a text log line; a string with a space, or empty, JSON-quoted."""
    shown = json.dumps(value) if isinstance(value, str) and (" " in value or not value) else value
    return f"{key}={shown}"


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER message key=value ...``: a line for people, with the fields that
    ``extra=`` carries (which logging's own format drops)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(text_field(k, v) for k, v in record.__dict__.items() if k not in _STD)
        line = super().format(record)
        return f"{line} {fields}" if fields else line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))


def exit_now(code: int) -> NoReturn:
    """Flush the log handlers (so the last line is read), then end the process at once:
    no cleanup, no traceback."""
    for h in logging.getLogger().handlers:
        h.flush()
    os._exit(code)
