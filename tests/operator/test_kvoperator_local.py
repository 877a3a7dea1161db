"""LocalPlatform without processes: manifest edits, generations, slots and URLs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kvoperator.local import LocalPlatform
from kvoperator.planner import Phase


def write(path: Path, size: object) -> None:
    path.write_text("apiVersion: datastore.dev/v1alpha1\nkind: DatastoreCluster\n"
                    f"metadata:\n  name: demo\nspec:\n  size: {size}\n")


def test_manifest_edits_generations_and_bad_edits(tmp_path: Path) -> None:
    m = tmp_path / "cluster.yaml"
    write(m, 1)
    p = LocalPlatform(m, tmp_path / "w", 40000, crd=tmp_path / "no-crd.yaml")
    s = asyncio.run(p.load_spec())
    assert s is not None and (s.size, s.generation) == (1, 1)
    write(m, 3)
    s = asyncio.run(p.load_spec())
    assert s is not None and (s.size, s.generation) == (3, 2)
    write(m, 0)  # invalid: the last good spec stays
    s = asyncio.run(p.load_spec())
    assert s is not None and (s.size, s.generation) == (3, 2)
    write(m, 3)
    again = LocalPlatform(m, tmp_path / "w", 40000, crd=tmp_path / "no-crd.yaml")  # a restarted operator
    s = asyncio.run(again.load_spec())
    assert s is not None and (s.size, s.generation) == (3, 2)  # same content: same generation


def test_slots_urls_and_workloads_from_the_workdir(tmp_path: Path) -> None:
    m = tmp_path / "cluster.yaml"
    write(m, 3)
    p = LocalPlatform(m, tmp_path / "w", 40000, crd=tmp_path / "no-crd.yaml")
    asyncio.run(p.load_spec())
    assert p.client_url(2) == "http://127.0.0.1:40020" and p.peer_url(2) == "http://127.0.0.1:40021"
    assert p.metrics_url(2) == "http://127.0.0.1:40022"
    assert [p.ordinal_of(p.peer_url(i)) for i in range(3)] == [0, 1, 2]
    assert p.ordinal_of("http://127.0.0.1:40020") is None  # a client port is not a peer URL
    assert p.ordinal_of("http://10.0.0.1:40001") is None
    (tmp_path / "w" / "demo-1").mkdir()  # data, no process: restart it with its data
    (tmp_path / "w" / "demo-4.json").write_text('{"started": 1, "restarts": 0}')  # exited, no data
    (tmp_path / "w" / "demo-4.log").write_text("")
    ws = asyncio.run(p.workloads())
    assert set(ws) == {1, 4}
    assert (ws[1].phase, ws[1].has_data) == (Phase.MISSING, True)
    assert (ws[4].phase, ws[4].has_data) == (Phase.EXITED, False)
    args = p.argv(1, "demo-0=http://127.0.0.1:40001", "existing")
    assert args[args.index("--data-dir") + 1] == str(tmp_path / "w" / "demo-1")
    assert args[args.index("--initial-cluster-state") + 1] == "existing"
