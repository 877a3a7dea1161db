"""Undecodable and malformed requests: etcd's answer, a quiet log, nothing written.

Random and mutated payloads go to every unary method of every service over a raw channel
(identity serializers, so the bytes reach the server as they are), and malformed JSON to
every route of the JSON gateway. Afterwards the server still serves, its revision has not
moved, and its log holds no traceback and stays small (before the fix, 12,000 such
requests wrote 9 MB of tracebacks).
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf import message as pbmessage

from datastore.api.etcdserverpb import rpc_pb2 as rpc
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.api.v3electionpb import v3election_pb2
from datastore.api.v3lockpb import v3lock_pb2
from datastore.gateway.routes import ROUTES
from datastore.testing.procs import ServerProc, datastore_proc, free_port

SEED = 20261202
READ_ONLY = {"/etcdserverpb.KV/Range", "/etcdserverpb.Lease/LeaseTimeToLive",
             "/etcdserverpb.Lease/LeaseLeases", "/etcdserverpb.Cluster/MemberList",
             "/etcdserverpb.Maintenance/Status", "/etcdserverpb.Maintenance/Hash",
             "/etcdserverpb.Maintenance/HashKV", "/etcdserverpb.Auth/AuthStatus",
             "/etcdserverpb.Auth/UserGet", "/etcdserverpb.Auth/UserList",
             "/etcdserverpb.Auth/RoleGet", "/etcdserverpb.Auth/RoleList",
             "/v3electionpb.Election/Leader"}


def unary_methods() -> list[tuple[str, type[pbmessage.Message]]]:
    out = []
    for module in (rpc, v3lock_pb2, v3election_pb2):
        for sd in module.DESCRIPTOR.services_by_name.values():
            for md in sd.methods:
                if not md.client_streaming and not md.server_streaming:
                    out.append((f"/{sd.full_name}/{md.name}", getattr(module, md.input_type.name)))
    return out


def sample(t: type[pbmessage.Message]) -> bytes:
    """A plausible valid request of type t, to mutate."""
    m = t()
    for f in m.DESCRIPTOR.fields:
        if f.is_repeated or f.message_type is not None:
            continue
        if f.type == f.TYPE_BYTES:
            setattr(m, f.name, b"fuzz-key")
        elif f.type == f.TYPE_STRING:
            setattr(m, f.name, "fuzz")
        elif f.type == f.TYPE_BOOL:
            setattr(m, f.name, True)
        elif f.enum_type is None and f.cpp_type in (f.CPPTYPE_INT64, f.CPPTYPE_UINT64,
                                                     f.CPPTYPE_INT32, f.CPPTYPE_UINT32):
            setattr(m, f.name, 7)
    return m.SerializeToString()


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data or b"\x0a")
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        i = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        elif op == 2 and b:
            del b[i:]
        else:
            b[i:i] = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # an overlong varint
    return bytes(b)


def payloads(rng: random.Random, t: type[pbmessage.Message], n: int) -> Iterator[bytes]:
    base = sample(t)
    for k in range(n):
        yield (bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) if k % 2
               else mutate(rng, base))


def decodes(t: type[pbmessage.Message], raw: bytes) -> bool:
    try:
        t.FromString(raw)
        return True
    except Exception:
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProc, str]]:
    port = free_port()
    p = datastore_proc(tmp_path, "fz", extra=[f"--listen-client-http-urls=http://127.0.0.1:{port}"])
    p.start()
    yield p, f"http://127.0.0.1:{port}"
    p.stop()


def revision(ch: grpc.Channel) -> int:
    return rpc_pb2_grpc.KVStub(ch).Range(rpc.RangeRequest(key=b"x"), timeout=30).header.revision


def test_fuzz_unary_methods(server: tuple[ServerProc, str]) -> None:
    p, _ = server
    rng = random.Random(SEED)
    ident = lambda b: b  # noqa: E731
    with p.channel() as ch:
        rpc_pb2_grpc.KVStub(ch).Put(rpc.PutRequest(key=b"before", value=b"v"), timeout=30)
        rev0 = revision(ch)
        log0 = p.log_path.stat().st_size
        sent = refused = 0
        for method, t in unary_methods():
            call = ch.unary_unary(method, request_serializer=ident, response_deserializer=ident)
            for raw in payloads(rng, t, 60):
                ok = decodes(t, raw)
                if ok and method not in READ_ONLY:
                    continue  # a well-formed request would really run: only garbage here
                sent += 1
                try:
                    call(raw, timeout=30)
                    assert ok, f"{method} accepted undecodable {raw!r}"
                except grpc.RpcError as e:
                    if ok:
                        continue  # a read with odd fields may be refused on its merits
                    refused += 1
                    assert e.code() == grpc.StatusCode.INTERNAL, (method, raw, e)
                    assert e.details().startswith("grpc: error unmarshalling request: ")
        assert revision(ch) == rev0, "an undecodable request wrote something"
        # Alarm with an unknown action or alarm type: refused, nothing stored, no crash
        m = rpc_pb2_grpc.MaintenanceStub(ch)
        for req in (rpc.AlarmRequest(action=99), rpc.AlarmRequest(action=1, alarm=42)):
            with pytest.raises(grpc.RpcError) as ei:
                m.Alarm(req, timeout=30)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(m.Alarm(rpc.AlarmRequest(action=rpc.AlarmRequest.GET), timeout=30).alarms) == []
        assert m.Status(rpc.StatusRequest(), timeout=30).errors == []
        # a client stream: the garbage message ends that stream only
        w = ch.stream_stream("/etcdserverpb.Watch/Watch", request_serializer=ident,
                             response_deserializer=ident)
        with pytest.raises(grpc.RpcError) as ei:
            list(w(iter([b"\xff\xff\xff"]), timeout=30))
        assert ei.value.code() == grpc.StatusCode.INTERNAL
        assert ei.value.details().startswith("grpc: failed to unmarshal the received message")
        assert revision(ch) == rev0
    log = p.log_path.read_text(errors="replace")[log0:]
    print(f"{sent} fuzzed requests, {refused} refused as undecodable; log grew "
          f"{len(log)} bytes")
    assert refused > 1000
    assert "Traceback" not in log
    assert '"level": "error"' not in log
    assert len(log) < 20_000, "undecodable requests must not flood the log"


def parses(t: type[pbmessage.Message], body: bytes) -> bool:
    try:
        json_format.Parse(body.decode(), t(), ignore_unknown_fields=True)
        return True
    except Exception:
        return False


def _post(url: str, data: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_fuzz_gateway_json(server: tuple[ServerProc, str]) -> None:
    p, base = server
    rng = random.Random(SEED)
    bad_bodies = [b"{", b"[]", b"null", b'"x"', b"{\"key\": 5}", b"{\"key\": \"!!!\", \"limit\": \"x\"}",
                  b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b"{\"ID\": \"1e400\"}",
                  b"{\"TTL\": {\"a\": 1}}", b"{\"key\": [1, 2]}"]
    for _ in range(40):
        good = json.dumps({"key": "Zm9v", "value": "YmFy", "TTL": 5, "ID": 1}).encode()
        cut = rng.randrange(1, len(good))
        bad_bodies.append(good[:cut] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 4))))
    with p.channel() as ch:
        rev0 = revision(ch)
        log0 = p.log_path.stat().st_size
        answered = 0
        for path, route in ROUTES.items():
            if path == "watch":
                continue  # an undecodable watch body leaves an open, empty stream (as etcd's)
            for body in bad_bodies:
                if parses(route.request, body):
                    continue  # it would be a real request: only malformed ones here
                status, out = _post(f"{base}/v3/{path}", body)
                answered += 1
                if route.kind == "bidi":  # a stream whose first message does not decode ends
                    assert status == 200 and out == b"", (path, body[:40], out)
                else:
                    assert status == 400 and json.loads(out)["code"] == 3, (path, body[:40], out)
        assert revision(ch) == rev0, "a malformed JSON request wrote something"
        rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc.StatusRequest(), timeout=30)
    log = p.log_path.read_text(errors="replace")[log0:]
    print(f"{answered} malformed gateway requests; log grew {len(log)} bytes")
    assert "Traceback" not in log
    assert len(log) < 5_000, "malformed requests must not flood the log"


def test_fuzz_through_the_proxy(server: tuple[ServerProc, str], tmp_path: Path) -> None:
    """The gRPC proxy refuses undecodable payloads as the cluster would, forwards nothing."""
    from test_proxy import our_proxy

    p, _ = server
    started: list = []
    proxy, _metrics = our_proxy(tmp_path, p.endpoint, started)
    try:
        rng = random.Random(SEED + 1)
        ident = lambda b: b  # noqa: E731
        with p.channel() as ch, grpc.insecure_channel(proxy.endpoint) as pch:
            rev0 = revision(ch)
            refused = 0
            for method, t in unary_methods():
                call = pch.unary_unary(method, request_serializer=ident, response_deserializer=ident)
                for raw in payloads(rng, t, 20):
                    if decodes(t, raw):
                        continue
                    with pytest.raises(grpc.RpcError) as ei:
                        call(raw, timeout=30)
                    assert ei.value.code() == grpc.StatusCode.INTERNAL, (method, ei.value)
                    refused += 1
            assert refused > 300
            assert revision(ch) == rev0
            assert revision(pch) == rev0  # the proxy still serves
        log = proxy.log.read_text(errors="replace")
        assert "Traceback" not in log and len(log) < 5_000
    finally:
        for s in started:
            s.stop()
