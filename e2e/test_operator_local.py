"""``kvoperator local`` with real member processes, under a writer that records every ack.

The operator runs as its own process (so it can be killed -9 and restarted) and is driven
only through its manifest file, as a user would: edit ``spec.size``, then wait on
``status.yaml``. Faults: a member killed -9 (restarted with its data, same ID), a member
whose data dir is deleted before it is killed (replaced with a new ID), the operator
killed in the middle of a scale-up and started again (it converges from what it sees).
At every checkpoint: every acknowledged write is readable, HashKV is equal on all
members, and the real ``etcdctl member list`` matches ``status.yaml``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hashkv_util import wait_hashkv_equal

from datastore.testing.procs import etcdctl, free_port_block

REPO = Path(__file__).resolve().parents[1]
NAME = "e2e"
WAIT_S = 90.0  # generous: the machine is shared


def wait_for(cond: Callable[[], Any], what: str, timeout: float = WAIT_S,
             diag: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{diag()}")
        time.sleep(0.1)  # poll interval of the condition above


class Operator:
    """The operator process plus its manifest and workdir."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.workdir = tmp / "work"
        self.manifest = tmp / "cluster.yaml"
        self.base = free_port_block(range(5 * 10))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "operator.log"
        self.env: dict[str, str] = {}  # added to the operator's environment (its user)

    def set_size(self, n: int) -> None:
        doc = {"apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
               "metadata": {"name": NAME}, "spec": {"size": n}}
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc))
        os.replace(tmp, self.manifest)

    def start(self) -> None:
        env = {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join(
            [str(REPO), str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])}
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvoperator", "local", "--manifest", str(self.manifest),
                 "--workdir", str(self.workdir), "--base-port", str(self.base), "--interval", "0.5"],
                stdout=f, stderr=subprocess.STDOUT, env=env)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def endpoint(self, i: int) -> str:
        return f"127.0.0.1:{self.base + 10 * i}"

    def status(self) -> dict[str, Any]:
        try:
            return yaml.safe_load((self.workdir / "status.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}

    def generation(self) -> int:
        try:
            return int(json.loads((self.workdir / ".manifest-generation.json").read_text())["generation"])
        except (OSError, ValueError, KeyError):
            return -1

    def member_pids(self) -> dict[int, int]:
        """Ordinal -> pid of member processes, found by their --data-dir."""
        out = {}
        prefix = f"{self.workdir}/{NAME}-"
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state == b"Z":
                continue
            for a in args:
                s = a.decode(errors="replace")
                if s.startswith(prefix) and s[len(prefix):].isdigit():
                    out[int(s[len(prefix):])] = int(entry)
        return out

    def diag(self) -> str:
        tail = self.log.read_text(errors="replace").splitlines()[-25:] if self.log.exists() else []
        return "status.yaml:\n" + yaml.safe_dump(self.status()) + "\noperator log:\n" + "\n".join(tail)

    def converged(self, n: int) -> bool:
        st = self.status()
        conds = {c["type"]: c for c in st.get("conditions", [])}
        return (st.get("observedGeneration") == self.generation() and st.get("size") == n
                and st.get("readyMembers") == n and len(st.get("members", [])) == n
                and conds.get("Progressing", {}).get("status") == "False"
                and conds.get("Degraded", {}).get("status") == "False"
                and conds.get("Available", {}).get("status") == "True")

    def status_mtime(self) -> float:
        try:
            return (self.workdir / "status.yaml").stat().st_mtime
        except OSError:
            return 0.0

    def kill9_member_and_wait_restart(self, i: int, size: int) -> None:
        """kill -9 member i; wait for its restart and for a converged status written after it
        (the status before the restart also said converged)."""
        pid = self.member_pids()[i]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: self.member_pids().get(i) not in (None, pid), f"member {i} restarted",
                 diag=self.diag)
        seen = time.time()
        wait_for(lambda: self.status_mtime() > seen and self.converged(size),
                 f"a converged status after member {i} restarted", diag=self.diag)

    def wait_converged(self, n: int, what: str) -> None:
        wait_for(lambda: self.converged(n), f"convergence at size {n} ({what})", diag=self.diag)

    def scale(self, n: int) -> None:
        self.set_size(n)
        self.wait_converged(n, "scaled")


class Writer(threading.Thread):
    """Puts k<i>=v<i> in a loop; records the acknowledged ones. Pausable for checks."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        from datastore.client import SyncClient
        self.client = SyncClient([endpoint], timeout=5.0)
        self.acked: dict[str, str] = {}
        self.failed = 0
        self.stop_ev = threading.Event()
        self.run_ev = threading.Event()
        self.run_ev.set()
        self.idle = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop_ev.is_set():
            if not self.run_ev.is_set():
                self.idle.set()
                self.run_ev.wait(1.0)
                continue
            self.idle.clear()
            k, v = f"k{i:06d}", f"v{i}-{random.random()}"
            i += 1
            try:
                self.client.put(k, v)
            except Exception:  # not acknowledged: may or may not be there; not checked
                self.failed += 1
                continue
            self.acked[k] = v

    def pause(self) -> None:
        self.run_ev.clear()
        self.idle.clear()
        wait_for(self.idle.is_set, "the writer to pause")

    def resume(self) -> None:
        self.run_ev.set()

    def close(self) -> None:
        self.stop_ev.set()
        self.run_ev.set()
        self.join(30)
        self.client.close()


@pytest.fixture
def op(tmp_path: Path) -> Iterator[Operator]:
    o = Operator(tmp_path)
    o.set_size(1)
    o.start()
    yield o
    o.stop()
    for pid in o.member_pids().values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def check_cluster(op: Operator, writer: Writer) -> None:
    """All acked writes readable; HashKV equal on all members; etcdctl agrees with status.yaml."""
    from datastore.client import Client

    writer.pause()
    st = op.status()
    eps = [m["clientURL"].split("://", 1)[1] for m in st["members"]]

    async def check() -> None:
        async with Client([op.endpoint(0)], timeout=10.0) as c:
            r = await c.get("k", prefix=True)  # one linearizable read of everything written
            got = {kv.key.decode(): kv.value.decode() for kv in r.kvs}
            missing = {k: v for k, v in writer.acked.items() if got.get(k) != v}
            assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {list(missing)[:5]}"
            rev = (await c.get("k", count_only=True)).header.revision
            await wait_hashkv_equal(c, eps, rev, WAIT_S)

    asyncio.run(check())
    out = json.loads(etcdctl(op.endpoint(0), "member", "list", "-w", "json").stdout)
    listed = sorted((f"{m['ID']:x}", m.get("name", ""), m["peerURLs"][0], (m.get("clientURLs") or [""])[0],
                     bool(m.get("isLearner", False))) for m in out["members"])
    in_status = sorted((m["id"], m["name"], m["peerURL"], m["clientURL"], m["isLearner"])
                       for m in st["members"])
    assert listed == in_status
    writer.resume()


def handled(metrics_port: int, method: str, code: str = "") -> int:
    """A member's count of finished ``method`` calls (answered with ``code`` if given),
    from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("grpc_server_handled_total{")
                   and f'grpc_method="{method}"' in line
                   and (not code or f'grpc_code="{code}"' in line)))


def member_ids(op: Operator) -> dict[str, str]:
    return {m["name"]: m["id"] for m in op.status().get("members", [])}


@pytest.mark.timeout(600)  # ~1 min here; many waits on a loaded machine
def test_operator_local_scale_and_faults(op: Operator) -> None:
    wait_for(lambda: op.converged(1), "the first member", diag=op.diag)
    writer = Writer(op.endpoint(0))
    writer.start()
    try:
        op.scale(3)
        check_cluster(op, writer)

        # kill -9 a member: restarted with its data, same member ID
        ids = member_ids(op)
        op.kill9_member_and_wait_restart(2, 3)
        assert member_ids(op) == ids

        # delete a member's data and kill it: replaced with a new ID
        pid = op.member_pids()[2]
        shutil.rmtree(op.workdir / f"{NAME}-2")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: member_ids(op).get(f"{NAME}-2") not in (None, ids[f"{NAME}-2"])
                 and op.converged(3), "member 2 replaced with a new ID", diag=op.diag)
        check_cluster(op, writer)

        # a member that cannot start any more (its database is corrupt) crash-loops: after
        # CRASHLOOP_RESTARTS restarts with back-off it is replaced with a new ID
        ids = member_ids(op)
        # Corrupt first (a running RocksDB read CURRENT at open), then kill: every restart fails.
        (op.workdir / f"{NAME}-1" / "state" / "CURRENT").write_text("MANIFEST-999999\n")
        os.kill(op.member_pids()[1], signal.SIGKILL)
        wait_for(lambda: member_ids(op).get(f"{NAME}-1") not in (None, ids[f"{NAME}-1"])
                 and op.converged(3), "the crash-looping member 1 replaced", diag=op.diag)
        assert "keeps crashing" in op.log.read_text()
        check_cluster(op, writer)

        # kill the operator in the middle of a scale-up, start it again
        op.set_size(5)
        wait_for(lambda: len(op.status().get("members", [])) == 4, "the scale-up to begin", diag=op.diag)
        op.kill9()
        op.start()
        wait_for(lambda: op.converged(5), "convergence at 5 after the operator restart", diag=op.diag)
        check_cluster(op, writer)

        # the member to remove first is the leader: leadership moves away before MemberRemove
        eps = ",".join(op.endpoint(i) for i in range(5))
        etcdctl(eps, "move-leader", member_ids(op)[f"{NAME}-4"])
        wait_for(lambda: op.status().get("leaderID") == member_ids(op)[f"{NAME}-4"], "e2e-4 to lead")
        op.scale(3)
        actions = [json.loads(line) for line in op.log.read_text().splitlines() if '"action"' in line]
        moved = [a for a in actions if a.get("action") == "MoveLeader" and a.get("outcome") == "done"]
        assert moved and f"{NAME}-4 is to be removed and is the leader" in moved[0]["reason"], actions[-12:]
        check_cluster(op, writer)
        op.scale(1)
        check_cluster(op, writer)
        assert len(writer.acked) > 50, (len(writer.acked), writer.failed)
    finally:
        writer.close()


@pytest.mark.timeout(600)
def test_operator_local_with_auth_on(op: Operator) -> None:
    """Auth turned on under the operator: without a user, or with a wrong password, it
    changes nothing and says what it needs; given root's name and password (env, as from a
    Secret) it scales 1 -> 3 -> 1, logging in once rather than on every call."""
    wait_for(lambda: op.converged(1), "the first member", diag=op.diag)
    ep = op.endpoint(0)
    etcdctl(ep, "user", "add", "root:rootpw")
    etcdctl(ep, "auth", "enable")
    lines_before = len(op.log.read_text().splitlines())

    def says_it_needs_a_user() -> bool:
        c = {x["type"]: x for x in op.status().get("conditions", [])}
        return "give the operator a user" in c.get("Progressing", {}).get("message", "")

    wait_for(says_it_needs_a_user, "a condition saying the operator needs a user", diag=op.diag)
    op.set_size(3)
    wait_for(lambda: op.status().get("observedGeneration") == op.generation()
             and says_it_needs_a_user(), "the operator to see size 3, still without a user",
             diag=op.diag)
    acted = [json.loads(line) for line in op.log.read_text().splitlines()[lines_before:]
             if '"action"' in line and '"done"' in line]
    assert not acted, acted  # nothing started, added or removed while it could not see

    # a wrong password: the same wait, saying why
    op.kill9()
    op.env = {"KVOPERATOR_USER": "root", "KVOPERATOR_PASSWORD": "wrong"}
    op.start()
    wait_for(lambda: says_it_needs_a_user() and "authentication failed" in json.dumps(op.status()),
             "a condition saying the password was refused", diag=op.diag)
    op.kill9()
    op.env["KVOPERATOR_PASSWORD"] = "rootpw"
    op.start()
    op.wait_converged(3, "scaled with a user")
    # Dozens of calls so far; each login is a bcrypt check and a raft entry on the members.
    logins = sum(handled(op.base + 10 * i + 2, "Authenticate", "OK") for i in range(3))
    calls = sum(handled(op.base + 10 * i + 2, "Status") for i in range(3))
    assert 1 <= logins <= 3 and calls >= 10, (logins, calls)
    out = json.loads(etcdctl(ep, "--user", "root:rootpw", "member", "list", "-w", "json").stdout)
    assert sorted(not m.get("isLearner", False) for m in out["members"]) == [True] * 3, out
    op.scale(1)
    out = json.loads(etcdctl(ep, "--user", "root:rootpw", "member", "list", "-w", "json").stdout)
    assert len(out["members"]) == 1, out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_operator_local_soak(op: Operator) -> None:
    """Random sizes and faults for a few minutes; the same checks after every step."""
    rnd = random.Random(int(os.environ.get("KVOP_SOAK_SEED", "7")))
    wait_for(lambda: op.converged(1), "the first member", diag=op.diag)
    writer = Writer(op.endpoint(0))
    writer.start()
    size = 1
    try:
        for _ in range(int(os.environ.get("KVOP_SOAK_STEPS", "12"))):
            step = rnd.choice(["scale", "scale", "kill", "wipe", "operator"])
            if step == "scale" or size < 3:
                size = rnd.choice([n for n in (1, 3, 5) if n != size])
                op.scale(size)
            elif step == "kill":
                ids = member_ids(op)
                op.kill9_member_and_wait_restart(rnd.randrange(1, size), size)
                assert member_ids(op) == ids
            elif step == "wipe":
                victim = rnd.randrange(1, size)
                pid = op.member_pids()[victim]
                old = member_ids(op)[f"{NAME}-{victim}"]
                shutil.rmtree(op.workdir / f"{NAME}-{victim}")
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda v=victim, o=old: member_ids(op).get(f"{NAME}-{v}") not in (None, o),
                         "replacement", diag=op.diag)
                op.wait_converged(size, "replacement")
            else:
                size = 5 if size == 3 else 3
                op.set_size(size)
                op.kill9()
                op.start()
                op.wait_converged(size, "operator restarted")
            check_cluster(op, writer)
    finally:
        writer.close()


@pytest.mark.timeout(600)
def test_operator_local_quorum_loss_changes_nothing(op: Operator) -> None:
    """Two of three members frozen (SIGSTOP): Degraded/QuorumLost, nothing removed or
    restarted; once they resume, the same members converge again."""
    op.scale(3)
    ids, pids = member_ids(op), op.member_pids()
    lines_before = len(op.log.read_text().splitlines())
    for i in (1, 2):
        os.kill(pids[i], signal.SIGSTOP)
    try:
        def quorum_lost() -> bool:
            c = {x["type"]: x for x in op.status().get("conditions", [])}
            return (c.get("Available", {}).get("reason") == "QuorumLost"
                    and c.get("Degraded", {}).get("reason") == "QuorumLost")
        wait_for(quorum_lost, "Degraded/QuorumLost", diag=op.diag)
        conds = {x["type"]: x for x in op.status()["conditions"]}
        assert "snapshot" in conds["Degraded"]["message"]  # says what the user can do
    finally:
        for i in (1, 2):
            os.kill(pids[i], signal.SIGCONT)
    resumed = time.time()
    wait_for(lambda: op.status_mtime() > resumed and op.converged(3), "convergence after resume",
             diag=op.diag)
    assert member_ids(op) == ids and op.member_pids() == pids
    new = [json.loads(line) for line in op.log.read_text().splitlines()[lines_before:] if '"action"' in line]
    acted = [a for a in new if a.get("outcome") == "done"]
    assert not acted, acted  # no restart, removal or deletion while the quorum was lost
