"""The committed generated protobuf code is exactly what genproto.sh produces."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "datastore" / "api"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
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
