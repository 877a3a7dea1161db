"""Apply committed log entries to the state machine: MVCC, leases, alarms, members.

One call applies a run of committed entries as ONE RocksDB WriteBatch that also records
the applied index, so a crash at any point replays exactly the entries that are missing
(etcd keeps ``consistent_index`` in the same backend transaction for the same reason).
Apply is deterministic: no clocks, no randomness, only the entry and the current state.
Request semantics follow etcd's applierV3backend (Put/DeleteRange/Txn/Compact, lease
grant/revoke/checkpoint, alarms), including its quirks: txn compares (and those of
nested txns) are evaluated before any write; a NOSPACE alarm caps all writes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rocksdict import WriteBatch

from datastore import errors
from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.internalpb.internal_pb2 import InternalRaftRequest, RequestHeader
from datastore.api.mvccpb.kv_pb2 import Event, KeyValue
from datastore.auth.store import AuthStore
from datastore.lease.lessor import Lessor
from datastore.mvcc.kvstore import KVStore, WriteTxn
from datastore.mvcc.watchable import WatchHub
from datastore.server.alarms import AlarmStore
from datastore.storage.backend import Backend
from datastore.util.protowire import varint

META_APPLIED = b"applied_index"


def applied_index(backend: Backend) -> int:
    """The last log index the state has applied (0: a new or restored state)."""
    raw = backend.get("meta", META_APPLIED)
    return int.from_bytes(raw, "big") if raw else 0
META_APPLIED_TERM = b"applied_term"

Result = object  # a response message, or an errors.EtcdError


def range_end(end: bytes) -> bytes | None:
    """Wire range_end -> index convention: b"" single key, b"\\0" every key >= key."""
    if not end:
        return None
    if end == b"\x00":
        return b""
    return end


@dataclass
class Applied:
    """What one apply run produced: results for waiting proposers, events for watchers."""

    results: list[tuple[int, Result]] = field(default_factory=list)
    events: list[tuple[int, list[Event]]] = field(default_factory=list)


# Auth requests only root may make (etcd's needAdminPermission); UserGet and RoleGet are
# also allowed for the user itself / a holder of the role, and Authenticate for anyone.
ADMIN_REQUESTS = frozenset({
    "auth_enable", "auth_disable", "auth_status", "auth_user_add", "auth_user_delete",
    "auth_user_change_password", "auth_user_grant_role", "auth_user_revoke_role",
    "auth_role_add", "auth_role_grant_permission", "auth_role_revoke_permission",
    "auth_role_delete", "auth_user_list", "auth_role_list"})


class Applier:
    def __init__(self, backend: Backend, kv: KVStore, lessor: Lessor, hub: WatchHub,
                 alarms: AlarmStore, auth: AuthStore) -> None:
        self.backend = backend
        self.kv = kv
        self.lessor = lessor
        self.hub = hub
        self.alarms = alarms
        self.auth = auth
        # Who the request being applied comes from, when auth is enabled and the request
        # came through the API (internal requests such as lease expiry carry no header).
        self._ai: RequestHeader | None = None
        self._index = 0  # log index of the entry being applied (simple tokens name it)
        self._meta = backend.handle("meta")
        self.applied_index = applied_index(backend)
        self._dispatch: dict[str, Callable[[object, WriteBatch, Applied], Result]] = {
            "put": self._put,
            "delete_range": self._delete_range,
            "txn": self._txn,
            "compaction": self._compaction,
            "lease_grant": self._lease_grant,
            "lease_revoke": self._lease_revoke,
            "lease_checkpoint": self._lease_checkpoint,
            "alarm": self._alarm,
        }
        for name in ("authenticate", "auth_enable", "auth_disable", "auth_status",
                     "auth_user_add", "auth_user_delete", "auth_user_get",
                     "auth_user_change_password", "auth_user_grant_role",
                     "auth_user_revoke_role", "auth_user_list", "auth_role_list",
                     "auth_role_add", "auth_role_delete", "auth_role_get",
                     "auth_role_grant_permission", "auth_role_revoke_permission"):
            self._dispatch[name] = functools.partial(self._auth_request, name)

    def register(self, name: str, fn: Callable[[object, WriteBatch, Applied], Result]) -> None:
        """Apply ``InternalRaftRequest.<name>`` with ``fn`` (e.g. membership attributes)."""
        self._dispatch[name] = fn

    # ---- one batch ---------------------------------------------------------------------
    def begin(self) -> tuple[WriteBatch, Applied]:
        return self.backend.batch(), Applied()

    def apply_request(self, data: bytes, wb: WriteBatch, out: Applied, index: int = 0) -> None:
        req = InternalRaftRequest.FromString(data)
        if req.noop:
            return
        self._ai = req.header if self.auth.enabled and req.HasField("header") else None
        self._index = index
        result: Result
        for name, fn in self._dispatch.items():
            if req.HasField(name):
                try:
                    result = fn(getattr(req, name), wb, out)
                except errors.EtcdError as e:
                    result = e
                break
        else:
            result = errors.ErrNotCapable()
        self._ai = None
        if req.ID:
            out.results.append((req.ID, result))

    def finish(self, wb: WriteBatch, out: Applied, index: int, term: int) -> None:
        """Record the applied index in the same batch, write it, then feed watchers."""
        wb.put(META_APPLIED, index.to_bytes(8, "big"), self._meta)
        wb.put(META_APPLIED_TERM, term.to_bytes(8, "big"), self._meta)
        self.backend.write(wb, sync=False)
        self.kv.flushed()
        self.applied_index = index
        for rev, evs in out.events:
            self.hub.notify(rev, evs)

    # ---- KV ------------------------------------------------------------------------------
    def _header(self, rev: int) -> rpc.ResponseHeader:
        return rpc.ResponseHeader(revision=rev)

    def _end_txn(self, txn: WriteTxn, out: Applied) -> None:
        evs = txn.end()
        if evs:
            out.events.append((txn.begin_rev + 1, evs))

    def _check_capped(self) -> None:
        if self.alarms.nospace:
            raise errors.ErrNoSpace()

    def _lease_keys(self, lease_id: int) -> list[bytes]:
        """The keys attached to the lease (sorted; none for an unknown lease)."""
        le = self.lessor.lookup(lease_id) if lease_id else None
        return sorted(le.keys) if le is not None else []

    def _check_lease_puts(self, lease_id: int) -> None:
        """Writing every key attached to the lease (etcd: revoking it deletes them)."""
        for k in self._lease_keys(lease_id):
            self.auth.check_put(self._ai, k)

    def _put(self, p: rpc.PutRequest, wb: WriteBatch, out: Applied) -> rpc.PutResponse:
        if self._ai is not None:
            self.auth.check_put(self._ai, p.key)
            self._check_lease_puts(p.lease)
            if p.prev_kv:
                self.auth.check_range(self._ai, p.key, b"")
        self._check_capped()
        if p.lease and self.lessor.lookup(p.lease) is None:
            raise errors.ErrLeaseNotFound()
        txn = self.kv.write(wb)
        resp = self.put(txn, p)
        self._end_txn(txn, out)
        return resp

    def put(self, txn: WriteTxn, p: rpc.PutRequest) -> rpc.PutResponse:
        resp = rpc.PutResponse(header=self._header(0))
        value, lease = p.value, p.lease
        prev: KeyValue | None = None
        if p.ignore_value or p.ignore_lease or p.prev_kv:
            rr = txn.range(p.key, None)
            prev = rr.kvs[0] if rr.kvs else None
        if (p.ignore_value or p.ignore_lease) and prev is None:
            raise errors.ErrKeyNotFound()
        if p.ignore_value:
            value = prev.value  # type: ignore[union-attr]
        if p.ignore_lease:
            lease = prev.lease  # type: ignore[union-attr]
        if p.prev_kv and prev is not None:
            resp.prev_kv.CopyFrom(prev)
        resp.header.revision = txn.put(p.key, value, lease)
        return resp

    def _delete_range(self, d: rpc.DeleteRangeRequest, wb: WriteBatch,
                      out: Applied) -> rpc.DeleteRangeResponse:
        if self._ai is not None:
            self.auth.check_delete(self._ai, d.key, d.range_end)
            if d.prev_kv:
                self.auth.check_range(self._ai, d.key, d.range_end)
        txn = self.kv.write(wb)
        resp = self.delete_range(txn, d)
        self._end_txn(txn, out)
        return resp

    def delete_range(self, txn: WriteTxn, d: rpc.DeleteRangeRequest) -> rpc.DeleteRangeResponse:
        resp = rpc.DeleteRangeResponse(header=self._header(0))
        end = range_end(d.range_end)
        if d.prev_kv:
            resp.prev_kvs.extend(txn.range(d.key, end).kvs)
        resp.deleted, resp.header.revision = txn.delete_range(d.key, end)
        return resp

    def _compaction(self, c: rpc.CompactionRequest, wb: WriteBatch,
                    out: Applied) -> rpc.CompactionResponse:
        self.kv.compact(c.revision, wb)
        return rpc.CompactionResponse(header=self._header(self.kv.current_rev))

    # ---- Txn -----------------------------------------------------------------------------
    def read_only_txn(self, rt: rpc.TxnRequest) -> rpc.TxnResponse:
        """A txn without writes, run on local state outside the log (as etcd does)."""
        wb, out = self.begin()
        return self._txn(rt, wb, out)

    def _txn(self, rt: rpc.TxnRequest, wb: WriteBatch, out: Applied) -> rpc.TxnResponse:
        if self._ai is not None:
            self.auth.check_txn(self._ai, rt, self._lease_keys)
        path = self._compare_to_path(rt)
        writes = not is_txn_readonly(rt)
        if writes:
            self._check_capped()
            self._check_requests(rt, path, self._check_put)
        self._check_requests(rt, path, self._check_range)
        kv = self.kv
        ops_before = kv.ranges + kv.puts + kv.deletes - len(rt.compare)  # compares ran above
        txn = kv.write(wb)
        resp, _ = new_txn_resp(rt, path)
        self._apply_txn(txn, rt, path, resp)
        if kv.ranges + kv.puts + kv.deletes - ops_before > 1:
            kv.txns += 1  # etcd counts a txn of more than one operation (compares included)
        rev = txn.read_rev
        self._end_txn(txn, out)
        resp.header.revision = rev
        return resp

    def _compare_to_path(self, rt: rpc.TxnRequest) -> list[bool]:
        ok = all(self._compare(c) for c in rt.compare)
        path = [ok]
        for op in rt.success if ok else rt.failure:
            if op.WhichOneof("request") == "request_txn":
                path.extend(self._compare_to_path(op.request_txn))
        return path

    def _compare(self, c: rpc.Compare) -> bool:
        try:
            rr = self.kv.range(c.key, range_end(c.range_end))
        except errors.EtcdError:
            return False
        if not rr.kvs:
            if c.target == rpc.Compare.VALUE:
                return False  # a missing key has no value to compare (etcd)
            return compare_kv(c, KeyValue())
        return all(compare_kv(c, kv) for kv in rr.kvs)

    def _check_requests(self, rt: rpc.TxnRequest, path: list[bool],
                        check: Callable[[rpc.RequestOp], None]) -> int:
        ops = rt.success if path[0] else rt.failure
        consumed = 1
        for op in ops:
            if op.WhichOneof("request") == "request_txn":
                consumed += self._check_requests(op.request_txn, path[consumed:], check)
            else:
                check(op)
        return consumed

    def _check_put(self, op: rpc.RequestOp) -> None:
        if op.WhichOneof("request") != "request_put":
            return
        p = op.request_put
        if (p.ignore_value or p.ignore_lease) and not self.kv.range(p.key, None).kvs:
            raise errors.ErrKeyNotFound()
        if p.lease and self.lessor.lookup(p.lease) is None:
            raise errors.ErrLeaseNotFound()

    def _check_range(self, op: rpc.RequestOp) -> None:
        if op.WhichOneof("request") != "request_range":
            return
        r = op.request_range
        if r.revision > self.kv.current_rev:
            raise errors.ErrFutureRev()
        if r.revision and r.revision < self.kv.compact_rev:
            raise errors.ErrCompacted()

    def _apply_txn(self, txn: WriteTxn, rt: rpc.TxnRequest, path: list[bool],
                   resp: rpc.TxnResponse) -> int:
        ops = rt.success if path[0] else rt.failure
        consumed = 1
        for op, r in zip(ops, resp.responses, strict=True):
            kind = op.WhichOneof("request")
            if kind == "request_range":
                r.response_range.CopyFrom(range_in(txn, op.request_range))
            elif kind == "request_put":
                r.response_put.CopyFrom(self.put(txn, op.request_put))
            elif kind == "request_delete_range":
                r.response_delete_range.CopyFrom(self.delete_range(txn, op.request_delete_range))
            elif kind == "request_txn":
                consumed += self._apply_txn(txn, op.request_txn, path[consumed:], r.response_txn)
        return consumed

    # ---- leases --------------------------------------------------------------------------
    def _lease_grant(self, g: rpc.LeaseGrantRequest, wb: WriteBatch,
                     out: Applied) -> rpc.LeaseGrantResponse:
        self._check_capped()
        le = self.lessor.grant(g.ID, g.TTL, wb)
        return rpc.LeaseGrantResponse(header=self._header(self.kv.current_rev), ID=le.id, TTL=le.ttl)

    def _lease_revoke(self, r: rpc.LeaseRevokeRequest, wb: WriteBatch,
                      out: Applied) -> rpc.LeaseRevokeResponse:
        if self._ai is not None:
            self._check_lease_puts(r.ID)
        keys = self.lessor.revoke(r.ID, wb)
        if keys:
            txn = self.kv.write(wb)
            for k in keys:
                txn.delete_range(k, None)
            self._end_txn(txn, out)
        return rpc.LeaseRevokeResponse(header=self._header(self.kv.current_rev))

    def _lease_checkpoint(self, c: rpc.LeaseCheckpointRequest, wb: WriteBatch,
                          out: Applied) -> rpc.LeaseCheckpointResponse:
        for cp in c.checkpoints:
            self.lessor.checkpoint(cp.ID, cp.remaining_TTL, wb)
        return rpc.LeaseCheckpointResponse(header=self._header(self.kv.current_rev))

    # ---- auth ----------------------------------------------------------------------------
    def _auth_request(self, name: str, r: object, wb: WriteBatch, out: Applied) -> Result:
        a = self.auth
        ai = self._ai
        if ai is not None:
            if name in ADMIN_REQUESTS:
                a.check_admin(ai)
            elif name == "auth_user_get":
                try:
                    a.check_admin(ai)
                except errors.EtcdError:
                    if r.name != ai.username:  # type: ignore[attr-defined]
                        raise
            elif name == "auth_role_get":
                try:
                    a.check_admin(ai)
                except errors.EtcdError:
                    if not a.has_role(ai.username, r.role):  # type: ignore[attr-defined]
                        raise
        h = self._header(self.kv.current_rev)
        if name == "authenticate":
            return rpc.AuthenticateResponse(header=h, token=a.authenticate(r, self._index))  # type: ignore[arg-type]
        if name == "auth_enable":
            a.auth_enable(wb)
            return rpc.AuthEnableResponse(header=h)
        if name == "auth_disable":
            a.auth_disable(wb)
            return rpc.AuthDisableResponse(header=h)
        if name == "auth_status":
            return rpc.AuthStatusResponse(header=h, enabled=a.enabled, authRevision=a.revision)
        if name == "auth_user_get":
            return rpc.AuthUserGetResponse(header=h, roles=a.user_get(r))  # type: ignore[arg-type]
        if name == "auth_user_list":
            return rpc.AuthUserListResponse(header=h, users=a.user_list())
        if name == "auth_role_get":
            return rpc.AuthRoleGetResponse(header=h, perm=a.role_get(r))  # type: ignore[arg-type]
        if name == "auth_role_list":
            return rpc.AuthRoleListResponse(header=h, roles=a.role_list())
        change, resp_type = _AUTH_CHANGES[name]
        getattr(a, change)(r, wb)
        return resp_type(header=h)

    # ---- alarms --------------------------------------------------------------------------
    def _alarm(self, a: rpc.AlarmRequest, wb: WriteBatch, out: Applied) -> rpc.AlarmResponse:
        resp = rpc.AlarmResponse(header=self._header(self.kv.current_rev))
        if a.action == rpc.AlarmRequest.GET:
            resp.alarms.extend(self.alarms.list())
        elif a.action == rpc.AlarmRequest.ACTIVATE:
            changed = a.alarm != rpc.NONE and self.alarms.activate(a.memberID, a.alarm, wb)
            if changed:
                resp.alarms.add(memberID=a.memberID, alarm=a.alarm)
        elif a.action == rpc.AlarmRequest.DEACTIVATE and self.alarms.deactivate(a.memberID, a.alarm, wb):
            resp.alarms.add(memberID=a.memberID, alarm=a.alarm)
        return resp


_AUTH_CHANGES: dict[str, tuple[str, type]] = {
    "auth_user_add": ("user_add", rpc.AuthUserAddResponse),
    "auth_user_delete": ("user_delete", rpc.AuthUserDeleteResponse),
    "auth_user_change_password": ("user_change_password", rpc.AuthUserChangePasswordResponse),
    "auth_user_grant_role": ("user_grant_role", rpc.AuthUserGrantRoleResponse),
    "auth_user_revoke_role": ("user_revoke_role", rpc.AuthUserRevokeRoleResponse),
    "auth_role_add": ("role_add", rpc.AuthRoleAddResponse),
    "auth_role_delete": ("role_delete", rpc.AuthRoleDeleteResponse),
    "auth_role_grant_permission": ("role_grant_permission", rpc.AuthRoleGrantPermissionResponse),
    "auth_role_revoke_permission": ("role_revoke_permission", rpc.AuthRoleRevokePermissionResponse),
}


def txn_ops(rt: rpc.TxnRequest) -> Iterator[rpc.RequestOp]:
    """Every op of both branches, nested txns included (depth first)."""
    for op in (*rt.success, *rt.failure):
        yield op
        if op.WhichOneof("request") == "request_txn":
            yield from txn_ops(op.request_txn)


def is_txn_readonly(rt: rpc.TxnRequest) -> bool:
    return not any(op.WhichOneof("request") in ("request_put", "request_delete_range")
                   for op in txn_ops(rt))


def new_txn_resp(rt: rpc.TxnRequest, path: list[bool]) -> tuple[rpc.TxnResponse, int]:
    """Pre-shape the response for the branch taken (nested headers stay empty, as etcd's)."""
    resp = rpc.TxnResponse(succeeded=path[0])
    resp.header.SetInParent()
    consumed = 1
    for op in rt.success if path[0] else rt.failure:
        r = resp.responses.add()
        if op.WhichOneof("request") == "request_txn":
            inner, n = new_txn_resp(op.request_txn, path[consumed:])
            r.response_txn.CopyFrom(inner)
            consumed += n
    return resp, consumed


def compare_kv(c: rpc.Compare, kv: KeyValue) -> bool:
    t = c.target
    which = c.WhichOneof("target_union")
    if t == rpc.Compare.VALUE:
        want = c.value if which == "value" else b""
        have = kv.value
        result = (have > want) - (have < want)
    else:
        field_name, attr = {
            rpc.Compare.VERSION: ("version", "version"),
            rpc.Compare.CREATE: ("create_revision", "create_revision"),
            rpc.Compare.MOD: ("mod_revision", "mod_revision"),
            rpc.Compare.LEASE: ("lease", "lease"),
        }[t]
        want_i = getattr(c, field_name) if which == field_name else 0
        have_i = getattr(kv, attr)
        result = (have_i > want_i) - (have_i < want_i)
    r = c.result
    if r == rpc.Compare.EQUAL:
        return result == 0
    if r == rpc.Compare.NOT_EQUAL:
        return result != 0
    if r == rpc.Compare.GREATER:
        return result > 0
    if r == rpc.Compare.LESS:
        return result < 0
    return True


_SORT_KEYS: dict[int, Callable[[KeyValue], object]] = {
    rpc.RangeRequest.KEY: lambda kv: kv.key,
    rpc.RangeRequest.VERSION: lambda kv: kv.version,
    rpc.RangeRequest.CREATE: lambda kv: kv.create_revision,
    rpc.RangeRequest.MOD: lambda kv: kv.mod_revision,
    rpc.RangeRequest.VALUE: lambda kv: kv.value,
}


_KVS_HEADS: dict[int, bytes] = {}


def _kvs_head(n: int) -> bytes:
    """The tag and length that make ``n`` bytes of KeyValue one ``kvs`` entry of a
    RangeResponse (cached: a list's values mostly share a few lengths)."""
    head = _KVS_HEADS.get(n)
    if head is None:
        head = b"\x12" + varint(n)
        if len(_KVS_HEADS) < 65536:
            _KVS_HEADS[n] = head
    return head


def _key_order_parts(view: KVStore | WriteTxn,
                     r: rpc.RangeRequest) -> tuple[list[bytes], int, int, bool]:
    """The plain (key-ordered, unfiltered) Range as ``kvs`` wire entries: each stored
    KeyValue framed as field 2 of a RangeResponse. Returns (parts, rev, count, more)."""
    limit = r.limit + 1 if r.limit > 0 else 0  # one extra to know whether there is more
    rr = view.range_raw(r.key, range_end(r.range_end), r.revision, limit, r.count_only)
    raws = rr.kvs
    more = r.limit > 0 and len(raws) > r.limit
    if more:
        del raws[r.limit:]
    heads, parts = _KVS_HEADS, []
    add = parts.append
    for raw in raws:
        add(heads.get(len(raw)) or _kvs_head(len(raw)))
        add(raw)
    return parts, rr.rev, rr.count, more


def _range_in_key_order(view: KVStore | WriteTxn, r: rpc.RangeRequest) -> rpc.RangeResponse:
    """range_in without sorting or filters: the stored KeyValue bytes are concatenated
    into the response's wire form and parsed once (protobuf messages concatenate), so no
    KeyValue object is built per key in Python."""
    parts, rev, count, more = _key_order_parts(view, r)
    resp = rpc.RangeResponse.FromString(b"".join(parts)) if parts else rpc.RangeResponse()
    resp.header.revision = rev
    resp.count = count
    resp.more = more
    if r.keys_only:
        for kv in resp.kvs:
            kv.value = b""
    return resp


def is_plain_range(r: rpc.RangeRequest) -> bool:
    """No sorting, filters or keys_only: the stored KeyValue bytes are the answer."""
    return (r.sort_target == rpc.RangeRequest.KEY and r.sort_order == rpc.RangeRequest.NONE
            and not (r.keys_only or r.min_mod_revision or r.max_mod_revision
                     or r.min_create_revision or r.max_create_revision))


def range_wire(view: KVStore | WriteTxn, r: rpc.RangeRequest,
               header: rpc.ResponseHeader) -> bytes:
    """A plain Range (``is_plain_range``) answered as RangeResponse wire bytes, sent
    as they are: no response message is built, parsed or serialized again (for a large
    list that was two whole copies and a parse). ``header`` gets the read's revision."""
    parts, rev, count, more = _key_order_parts(view, r)
    header.revision = rev
    h = header.SerializeToString()
    tail = (b"\x18\x01" if more else b"") + (b"\x20" + varint(count) if count else b"")
    return b"".join((b"\x0a", varint(len(h)), h, *parts, tail))


def range_in(view: KVStore | WriteTxn, r: rpc.RangeRequest) -> rpc.RangeResponse:
    """etcd's Range on a read view: limits, filters, sorting, keys_only, count_only."""
    limit = r.limit
    if (r.sort_order != rpc.RangeRequest.NONE or r.min_mod_revision or r.max_mod_revision
            or r.min_create_revision or r.max_create_revision):
        limit = 0  # fetch everything: sorting and filtering happen after the fetch
    elif r.sort_target == rpc.RangeRequest.KEY:
        return _range_in_key_order(view, r)
    if limit > 0:
        limit += 1  # one extra to know whether there is more
    rr = view.range(r.key, range_end(r.range_end), r.revision, limit, r.count_only)
    kvs = rr.kvs
    if r.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= r.max_mod_revision]
    if r.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= r.min_mod_revision]
    if r.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= r.max_create_revision]
    if r.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= r.min_create_revision]
    order = r.sort_order
    if r.sort_target != rpc.RangeRequest.KEY and order == rpc.RangeRequest.NONE:
        order = rpc.RangeRequest.ASCEND
    if order != rpc.RangeRequest.NONE and not (
            r.sort_target == rpc.RangeRequest.KEY and order == rpc.RangeRequest.ASCEND):
        kvs.sort(key=_SORT_KEYS[r.sort_target], reverse=order == rpc.RangeRequest.DESCEND)
    resp = rpc.RangeResponse(header=rpc.ResponseHeader(revision=rr.rev), count=rr.count)
    if r.limit > 0 and len(kvs) > r.limit:
        kvs = kvs[:r.limit]
        resp.more = True
    if r.keys_only:
        for kv in kvs:
            kv.value = b""
    resp.kvs.extend(kvs)
    return resp
