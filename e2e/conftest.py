"""Fixtures for end-to-end tests (see e2e_util for DS_TARGET and process start-up)."""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from e2e_util import PairFactory, ServerFactory, make_proc

from datastore.testing.procs import ServerProc


@pytest.fixture
def started() -> Iterator[list[ServerProc]]:
    """Members a test starts itself (append them); each gets SIGTERM at teardown, all at
    once, then up to 5 s to exit."""
    procs: list[ServerProc] = []
    yield procs
    for p in procs:
        p.signal(signal.SIGTERM)
    for p in procs:
        p.stop(timeout=5.0)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """``make(kind="target", extra=[...], start=True) -> ServerProc``; stopped at teardown."""
    procs: list[ServerProc] = []

    def make(kind: str = "target", extra: Sequence[str] = (), start_it: bool = True) -> ServerProc:
        proc = make_proc(kind, tmp_path / f"{kind}{len(procs)}", extra)
        procs.append(proc)
        return proc.start() if start_it else proc

    yield make
    for p in procs:
        p.stop()


@pytest.fixture
def pair_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PairFactory]:
    """``make(extra=[...]) -> (etcd, target)``, started in parallel; stopped at teardown.
    The etcd is the release the test module's ``ORACLE`` names, else DS_ORACLE's."""
    procs: list[ServerProc] = []
    version = getattr(request.module, "ORACLE", None)

    def make(extra: Sequence[str] = ()) -> tuple[ServerProc, ServerProc]:
        n = len(procs)
        oracle = make_proc("etcd", tmp_path / f"oracle{n}", extra, oracle=version)
        target = make_proc("target", tmp_path / f"target{n}", extra)
        procs.extend((oracle, target))
        oracle.launch()
        target.launch()
        oracle.wait_ready()
        target.wait_ready()
        return oracle, target

    yield make
    for p in procs:
        p.stop()


@pytest.fixture
def etcd_server(server_factory: ServerFactory) -> ServerProc:
    """A fresh real etcd."""
    return server_factory("etcd")


@pytest.fixture
def ds_server(server_factory: ServerFactory) -> ServerProc:
    """A fresh server under test (datastore; etcd when DS_TARGET=etcd)."""
    return server_factory("target")


@pytest.fixture
def pair(pair_factory: PairFactory) -> tuple[ServerProc, ServerProc]:
    """(fresh real etcd, fresh server under test), started in parallel."""
    return pair_factory()
