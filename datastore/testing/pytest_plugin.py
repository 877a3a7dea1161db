"""pytest plugin (entry point ``pytest11``): fixtures that run a real datastore member.

Installed with the ``datastore`` package, so a project depending on it can write

    def test_put(datastore_server):
        with SyncClient([datastore_server.endpoint]) as c:
            c.put("k", "v")

``datastore_server`` is a fresh member per test (a child process on a free port with a
temporary data dir, about 0.2 s to start); ``datastore_server_session`` is one member
shared by the whole session (use distinct key prefixes per test); ``datastore_client`` is
a SyncClient connected to ``datastore_server``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datastore.client.sync import SyncClient
from datastore.embed import EmbeddedServer


def _serve(base: Path) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(data_dir=base)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def datastore_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A fresh datastore member for this test; ``.endpoint`` is its ``127.0.0.1:PORT``."""
    yield from _serve(tmp_path_factory.mktemp("datastore"))


@pytest.fixture(scope="session")
def datastore_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One datastore member shared by every test of the session."""
    yield from _serve(tmp_path_factory.mktemp("datastore-session"))


@pytest.fixture
def datastore_client(datastore_server: EmbeddedServer) -> Iterator[SyncClient]:
    """A blocking client connected to ``datastore_server``."""
    with SyncClient([datastore_server.endpoint]) as c:
        yield c
