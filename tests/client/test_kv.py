"""KV, txn builders, compaction and error mapping against a real member."""

from __future__ import annotations

import grpc
import pytest

from datastore.client import Client
from datastore.client.errors import ClientError, CompactedError, LeaseNotFoundError
from datastore.client.txn import Compare, op_delete, op_get, op_put, op_txn
from datastore.embed import EmbeddedServer
from tests.client.conftest import run


def test_put_get_delete_prefix_and_range(datastore_server_session: EmbeddedServer, prefix: str) -> None:
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c:
            r = await c.put(prefix + "a", "1")
            first = r.header.revision
            await c.put(prefix + "b", b"\xff\x00")
            await c.put(prefix + "c", "3")
            got = await c.get(prefix + "a")
            assert [(kv.key, kv.value) for kv in got.kvs] == [((prefix + "a").encode(), b"1")]
            assert (await c.get(prefix + "b")).kvs[0].value == b"\xff\x00"
            assert len((await c.get(prefix, prefix=True)).kvs) == 3
            ranged = await c.get(prefix + "a", range_end=prefix + "c")
            assert [kv.key[-1:] for kv in ranged.kvs] == [b"a", b"b"]
            assert (await c.get(prefix, prefix=True, count_only=True)).count == 3
            assert (await c.get(prefix, prefix=True, keys_only=True)).kvs[0].value == b""
            desc = await c.get(prefix, prefix=True, sort_order="descend", sort_target="key", limit=2)
            assert [kv.key[-1:] for kv in desc.kvs] == [b"c", b"b"] and desc.more
            old = await c.get(prefix + "a", revision=first)
            assert old.kvs[0].mod_revision == first
            p = await c.put(prefix + "a", "2", prev_kv=True)
            assert p.prev_kv.value == b"1"
            d = await c.delete(prefix, prefix=True, prev_kv=True)
            assert d.deleted == 3 and len(d.prev_kvs) == 3
            assert not (await c.get(prefix, prefix=True)).kvs
    run(body())


def test_txn_builders(datastore_server_session: EmbeddedServer, prefix: str) -> None:
    async def body() -> None:
        async with Client([datastore_server_session.endpoint]) as c:
            k = prefix + "k"
            # create-if-absent
            r = await c.txn([Compare.create_revision(k) == 0], [op_put(k, "v1")], [op_get(k)])
            assert r.succeeded
            rev = r.header.revision
            r = await c.txn([Compare.create_revision(k) == 0], [op_put(k, "v2")], [op_get(k)])
            assert not r.succeeded and r.responses[0].response_range.kvs[0].value == b"v1"
            checks = [
                (Compare.value(k) == "v1", True), (Compare.value(k) != "v1", False),
                (Compare.value(k) > "v0", True), (Compare.value(k) < "v0", False),
                (Compare.mod_revision(k) == rev, True), (Compare.mod_revision(k) < rev, False),
                (Compare.version(k) == 1, True), (Compare.version(k) > 1, False),
                (Compare.create_revision(k) != 0, True), (Compare.lease(k) == 0, True),
                (Compare.version(prefix, prefix=True) > 0, True),
            ]
            for cmp, want in checks:
                assert (await c.txn([cmp])).succeeded is want, cmp
            r = await c.txn([Compare.value(k) == "v1"],
                            [op_put(prefix + "x", "1"), op_delete(k, prev_kv=True),
                             # nested compares see the state before the txn (etcd evaluates them first)
                             op_txn([Compare.version(prefix + "x") == 0], [op_get(prefix + "x")])])
            assert r.succeeded
            assert r.responses[1].response_delete_range.prev_kvs[0].value == b"v1"
            assert r.responses[2].response_txn.responses[0].response_range.kvs[0].value == b"1"
    run(body())


def test_compaction_and_error_mapping(datastore_server: EmbeddedServer) -> None:
    async def body() -> None:
        async with Client([datastore_server.endpoint]) as c:
            first = (await c.put("k", "1")).header.revision
            last = (await c.put("k", "2")).header.revision
            await c.compact(last)
            with pytest.raises(CompactedError) as ei:
                await c.get("k", revision=first)
            assert ei.value.code == grpc.StatusCode.OUT_OF_RANGE
            with pytest.raises(LeaseNotFoundError):
                await c.put("k", "v", lease=12345)
            with pytest.raises(ClientError) as ce:
                await c.put("", "v")
            assert ce.value.details == "etcdserver: key is not provided"
            assert ce.value.code == grpc.StatusCode.INVALID_ARGUMENT
    run(body())


def test_cluster_and_maintenance_calls(datastore_server_session: EmbeddedServer) -> None:
    async def body() -> None:
        ep = datastore_server_session.endpoint
        async with Client([ep]) as c:
            members = (await c.member_list()).members
            assert len(members) == 1 and members[0].name == datastore_server_session.name
            st = await c.status(ep)
            assert st.leader == st.header.member_id == members[0].ID
            assert await c.leader_endpoint() == ep
            assert (await c.hash_kv()).hash_revision >= 0
            assert list((await c.alarm_list()).alarms) == []
            await c.defragment(ep)
            lease = await c.lease_grant(30)
            assert lease.ID in [le.ID for le in (await c.lease_leases()).leases]
            ttl = await c.lease_time_to_live(lease.ID, keys=True)
            assert 0 < ttl.TTL <= 30
            await c.lease_revoke(lease.ID)
            assert (await c.lease_time_to_live(lease.ID)).TTL == -1
    run(body())
