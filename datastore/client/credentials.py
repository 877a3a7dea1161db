"""A user and password from the command line, as etcdctl takes them.

``--user NAME:PASSWORD`` carries both (etcdctl's form); ``--user NAME`` takes the password
from an environment variable, which ``ps`` does not show (a Kubernetes Secret mounted as
env). Programs name their own variable: ``KVOPERATOR_PASSWORD``, ``KVSCHEDULER_PASSWORD``.
"""

from __future__ import annotations

import os


def credentials(user: str | None, password_env: str) -> tuple[str | None, str | None]:
    """(user, password) for ``Client``; (None, None) without a user. Raises ValueError,
    worded for the person at the command line, when the password is missing."""
    if not user:
        return None, None
    name, sep, password = user.partition(":")
    if not name:
        raise ValueError(f"--user {user!r}: the user name is empty (use NAME or NAME:PASSWORD)")
    if sep:
        return name, password
    password = os.environ.get(password_env, "")
    if not password:
        raise ValueError(f"--user {name}: no password; give --user {name}:PASSWORD or set "
                         f"{password_env}")
    return name, password
