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


def test_embedded_server_in_process_and_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with EmbeddedServer(in_process=True) as srv, SyncClient([srv.endpoint]) as c:
        c.put("k", "v")
        assert c.get("k").kvs[0].value == b"v"
    # a child with a caller-owned data dir keeps its data across restarts
    srv = EmbeddedServer(data_dir=tmp_path).start()
    try:
        with SyncClient([srv.endpoint]) as c:
            c.put("k", "kept")
            srv.kill()
            srv.restart()
            assert c.get("k").kvs[0].value == b"kept"
    finally:
        srv.stop()
    assert tmp_path.exists()
