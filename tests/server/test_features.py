"""The cluster version and its feature gates, on a real state database."""

from __future__ import annotations

from pathlib import Path

import pytest

from datastore.api.internalpb.internal_pb2 import ClusterVersionSetRequest
from datastore.server import features
from datastore.server.features import (
    BASE_LEVEL,
    ClusterVersion,
    DowngradeRefused,
    parse_level,
)
from datastore.storage.backend import Backend


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    b = Backend(tmp_path / "state")
    yield b
    b.close()


def set_version(cv: ClusterVersion, b: Backend, ver: str) -> None:
    wb = b.batch()
    cv.apply(ClusterVersionSetRequest(ver=ver), wb, None)
    b.write(wb, sync=False)


@pytest.mark.parametrize(("text", "level"), [
    ("0.15", (0, 15)), ("0.15.0", (0, 15)), ("v0.15.2", (0, 15)), ("1.2.3-rc.1", (1, 2)),
    ("10.20.30+build", (10, 20))])
def test_parse_level(text: str, level: tuple[int, int]) -> None:
    assert parse_level(text) == level


@pytest.mark.parametrize("text", ["", "0", "x.y", "0.15.0.1", "3.5.x"])
def test_parse_level_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid version"):
        parse_level(text)


def test_unset_means_the_base_level(backend: Backend) -> None:
    cv = ClusterVersion(backend)
    assert cv.level is None and cv.effective == BASE_LEVEL and str(cv) == "0.14"
    assert not cv.enabled("cluster_version")
    assert cv.at_least(BASE_LEVEL)


def test_raised_through_apply_persisted_and_never_lowered(backend: Backend) -> None:
    cv = ClusterVersion(backend)
    set_version(cv, backend, "0.15")
    assert cv.level == (0, 15) and cv.enabled("cluster_version")
    set_version(cv, backend, "0.14")  # a late, older decision changes nothing
    assert cv.level == (0, 15)
    again = ClusterVersion(backend)  # as after a restart
    assert again.level == (0, 15)


def test_a_gate_opens_at_its_release(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(features.FEATURES, "future_wire", (0, 16))
    monkeypatch.setenv(features.RELEASE_ENV, "0.16.0")
    cv = ClusterVersion(backend)
    set_version(cv, backend, "0.15")
    assert not cv.enabled("future_wire")
    set_version(cv, backend, "0.16")
    assert cv.enabled("future_wire")


def test_older_release_refuses_a_higher_cluster_version(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    cv = ClusterVersion(backend)
    set_version(cv, backend, "0.15")
    monkeypatch.setenv(features.RELEASE_ENV, "0.14.3")
    with pytest.raises(DowngradeRefused) as e:
        ClusterVersion(backend).check_local("recorded in the data dir")
    assert str(e.value).startswith("invalid downgrade; server version is lower than "
                                   "determined cluster version (server version 0.14, "
                                   "cluster version 0.15, recorded in the data dir)")
    with pytest.raises(DowngradeRefused):  # nor apply an entry raising it above itself
        set_version(ClusterVersion(backend), backend, "0.16")
    monkeypatch.setenv(features.RELEASE_ENV, "0.15.9")  # a patch release is the same level
    ClusterVersion(backend).check_local("recorded in the data dir")
