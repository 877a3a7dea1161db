"""SyncClient, EmbeddedServer modes and the pytest plugin's fixtures."""

from __future__ import annotations

from datastore.client import SyncClient
from datastore.embed import EmbeddedServer


def test_datastore_client_fixture_from_the_plugin(datastore_client: SyncClient) -> None:
    datastore_client.put("k", "v")
    assert datastore_client.get("k").kvs[0].value == b"v"


def test_sync_client_watch_and_keep_alive(datastore_server_session: EmbeddedServer) -> None:
    with SyncClient([datastore_server_session.endpoint]) as c:
        w = c.watch("/sync/", prefix=True)
        w.wait_created()
        c.put("/sync/a", "1")
        c.delete("/sync/a")
        evs = [e.kv.key for e in w.next(20).events]
        if len(evs) < 2:
            evs += [e.kv.key for e in w.next(20).events]
        assert evs == [b"/sync/a", b"/sync/a"]
        w.cancel()
        assert list(w) == []
        lease = c.lease_grant(3).ID
        ka = c.keep_alive(lease)
        c.lease_revoke(lease)
        assert ka.lost.wait(20)


def test_embedded_server_in_process() -> None:
    with EmbeddedServer(in_process=True) as srv, SyncClient([srv.endpoint]) as c:
        c.put("k", "v")
        assert c.get("k").kvs[0].value == b"v"
        data_dir = srv.base
    assert not data_dir.exists(), "a temporary data dir is removed on stop"


def test_plugin_serves_a_project_outside_this_repo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A project that only depends on the installed package gets the fixtures from the
    ``pytest11`` entry point (no conftest, run from an unrelated directory)."""
    import subprocess
    import sys
    (tmp_path / "test_uses_fixture.py").write_text(
        "def test_it(datastore_server, datastore_client):\n"
        "    assert datastore_server.endpoint.startswith('127.0.0.1:')\n"
        "    datastore_client.put('k', 'v')\n"
        "    assert datastore_client.get('k').kvs[0].value == b'v'\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout
