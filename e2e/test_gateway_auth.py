"""Auth through the JSON gateway, vs etcd 3.4: the ``Authorization`` header carries the
token, and auth errors come back with etcd's code, message and HTTP status (400 for a
missing user or a failed login, 401 for a bad token, 403 for a denied request)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_gateway import normalise, post

from datastore.testing.procs import datastore_proc, etcd_proc, free_port


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    e = etcd_proc(tmp_path, "etcdauth")
    d = datastore_proc(tmp_path, "dsauth", extra=[f"--listen-client-http-urls=http://127.0.0.1:{port}"])
    e.launch()
    d.launch()
    try:
        e.wait_ready()
        d.wait_ready()
        yield f"http://127.0.0.1:{e.client_port}", f"http://127.0.0.1:{port}"
    finally:
        e.stop()
        d.stop()


def run(base: str) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []

    def call(path: str, body: dict[str, Any], token: str | None = None) -> Any:
        status, resp = post(base, path, body, headers={"Authorization": token} if token else None)
        if isinstance(resp, dict):
            resp.pop("token", None)  # differs by nature
        out.append((status, normalise(resp)))
        return resp

    call("/v3/auth/role/add", {"name": "root"})
    call("/v3/auth/user/add", {"name": "root", "password": "rootpw"})
    call("/v3/auth/user/grant", {"user": "root", "role": "root"})
    call("/v3/auth/role/add", {"name": "a-only"})
    call("/v3/auth/role/grant", {"name": "a-only", "perm": {
        "permType": "READWRITE", "key": b64("/a/"), "range_end": b64("/a0")}})
    call("/v3/auth/user/add", {"name": "alice", "password": "alicepw"})
    call("/v3/auth/user/grant", {"user": "alice", "role": "a-only"})
    call("/v3/auth/enable", {})
    call("/v3/auth/authenticate", {"name": "root", "password": "wrong"})
    status, resp = post(base, "/v3/auth/authenticate", {"name": "alice", "password": "alicepw"})
    assert status == 200, resp
    alice = resp["token"]
    status, resp = post(base, "/v3/auth/authenticate", {"name": "root", "password": "rootpw"})
    root = resp["token"]
    call("/v3/kv/put", {"key": b64("/a/1"), "value": b64("x")})  # no token: no user
    call("/v3/kv/put", {"key": b64("/a/1"), "value": b64("x")}, token="forged.1")
    call("/v3/kv/put", {"key": b64("/a/1"), "value": b64("x")}, token=alice)
    call("/v3/kv/put", {"key": b64("/b/1"), "value": b64("x")}, token=alice)
    call("/v3/kv/range", {"key": b64("/a/"), "range_end": b64("/a0")}, token=alice)
    call("/v3/kv/range", {"key": b64("/"), "range_end": b64("0")}, token=alice)
    call("/v3/auth/user/list", {}, token=alice)
    call("/v3/auth/user/list", {}, token=root)
    call("/v3/auth/disable", {}, token=root)
    call("/v3/kv/range", {"key": b64("/a/1")})
    return out


def test_auth_through_gateway_vs_etcd(pair: tuple[str, str]) -> None:
    etcd, ds = pair
    a, b = run(etcd), run(ds)
    diffs = [(i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    assert not diffs, "\n".join(f"step {i}:\n  etcd: {x}\n  ours: {y}" for i, x, y in diffs)
    statuses = [s for s, _ in b]
    assert {400, 401, 403} <= set(statuses), statuses
