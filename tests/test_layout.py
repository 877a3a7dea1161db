"""Guards for the project's shape."""

import operator
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_operator_folder_does_not_shadow_stdlib() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(operator.__file__).resolve().is_relative_to(stdlib)


def test_generated_code_matches_runtime_pins() -> None:
    text = (ROOT / "datastore/api/etcdserverpb/rpc_pb2_grpc.py").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    generated = text.split("GRPC_GENERATED_VERSION = '")[1].split("'")[0]
    assert f'"grpcio>={generated}"' in pyproject
