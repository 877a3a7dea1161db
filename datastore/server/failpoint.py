"""Test-only crash points: ``DATASTORE_FAILPOINT=NAME`` makes the process exit at the point
called NAME, as a kill -9 would land there (exit code 97, after flushing the logs)."""

from __future__ import annotations

import logging
import os

from datastore.logsetup import exit_now

FAILPOINT_ENV = "DATASTORE_FAILPOINT"

log = logging.getLogger("datastore.server")


def failpoint(name: str) -> None:
    """Crash the process here if the test-only env var names this point."""
    if os.environ.get(FAILPOINT_ENV) == name:
        log.warning("failpoint %s: exiting", name)
        exit_now(97)
