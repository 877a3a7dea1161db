"""The committed generated protobuf code is exactly what genproto.sh produces."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf.message import Message

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "datastore" / "api"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    import grpc_tools  # noqa: F401  (a declared test dependency: genproto.sh needs it)
    work = tmp_path / "datastore" / "api"
    shutil.copytree(API, work, ignore=shutil.ignore_patterns("*_pb2*.py", "*.pyi", "__pycache__"))
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    subprocess.run(["bash", str(work / "genproto.sh")], check=True, env={"PATH": env_path})
    generated = sorted(p.relative_to(tmp_path) for p in work.rglob("*_pb2*.py*"))
    committed = sorted(p.relative_to(ROOT) for p in API.rglob("*_pb2*.py*"))
    assert generated == committed, "run datastore/api/genproto.sh and commit the result"
    for rel in committed:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), (
            f"{rel} is stale: run datastore/api/genproto.sh")


def test_every_proto_has_generated_code() -> None:
    """A .proto left out of genproto.sh would otherwise pass the freshness check above."""
    for proto in API.rglob("*.proto"):
        assert proto.with_name(f"{proto.stem}_pb2.py").exists(), f"add {proto} to genproto.sh"


def test_lock_and_election_protos_match_etcd_names() -> None:
    """The method paths and field numbers are what etcd's clients send on the wire."""
    from datastore.api.v3electionpb import v3election_pb2 as el
    from datastore.api.v3lockpb import v3lock_pb2 as lk

    lock = lk.DESCRIPTOR.services_by_name["Lock"]
    assert lock.full_name == "v3lockpb.Lock"
    assert [m.name for m in lock.methods] == ["Lock", "Unlock"]
    election = el.DESCRIPTOR.services_by_name["Election"]
    assert election.full_name == "v3electionpb.Election"
    assert [m.name for m in election.methods] == ["Campaign", "Proclaim", "Leader", "Observe",
                                                  "Resign"]
    assert election.methods_by_name["Observe"].server_streaming

    def fields(msg: type[Message]) -> dict[str, int]:
        return {f.name: f.number for f in msg.DESCRIPTOR.fields}

    assert fields(lk.LockRequest) == {"name": 1, "lease": 2}
    assert fields(lk.LockResponse) == {"header": 1, "key": 2}
    assert fields(lk.UnlockRequest) == {"key": 1}
    assert fields(el.CampaignRequest) == {"name": 1, "lease": 2, "value": 3}
    assert fields(el.CampaignResponse) == {"header": 1, "leader": 2}
    assert fields(el.LeaderKey) == {"name": 1, "key": 2, "rev": 3, "lease": 4}
    assert fields(el.LeaderRequest) == {"name": 1}
    assert fields(el.LeaderResponse) == {"header": 1, "kv": 2}
    assert fields(el.ResignRequest) == {"leader": 1}
    assert fields(el.ProclaimRequest) == {"leader": 1, "value": 2}
    assert el.LeaderResponse.DESCRIPTOR.fields_by_name["kv"].message_type.full_name == "mvccpb.KeyValue"
