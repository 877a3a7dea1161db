"""The real etcdctl 3.4 against the server under test.

Where output is deterministic the same command sequence runs on a fresh real etcd and on a
fresh target, and the stdout is compared after normalising cluster/member ids, raft terms,
endpoints and lease ids. Hand-written expectations pin the important values as well, so the
tests still assert something when DS_TARGET=etcd makes both sides etcd.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import PairFactory
from e2e_util import TARGET, ctl, ctl_out

from datastore.testing.procs import ETCDCTL_BIN, ServerProc

Pair = tuple[ServerProc, ServerProc]

_ID_FIELDS = re.compile(
    r'"(cluster_id|member_id|raft_term|ClusterID|MemberID|RaftTerm|leader|raftTerm|ID)"'
    r"(\s*:\s*)\d+")


_MEMBER_LINE = re.compile(r"(?m)^[0-9a-f]+, started,")


def normalise(out: str, proc: ServerProc) -> str:
    out = _ID_FIELDS.sub(r'"\1"\g<2>0', out)
    out = _MEMBER_LINE.sub("<id>, started,", out)
    out = out.replace(proc.peer_url, "<peer>").replace(proc.client_url, "<client>")
    return out.replace(proc.endpoint, "<endpoint>")


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def both(pair: Pair, *args: str, stdin: str | None = None) -> str:
    """Run one etcdctl command on etcd and on the target; their outputs must match."""
    etcd, target = pair
    a = normalise(ctl_out(etcd, *args, stdin=stdin), etcd)
    b = normalise(ctl_out(target, *args, stdin=stdin), target)
    assert b == a, f"etcdctl {' '.join(args)}: target output differs from etcd"
    return a


def both_fail(pair: Pair, *args: str, stdin: str | None = None) -> str:
    """Run a failing command on both; the final stderr lines must match. Returns it."""
    lines = []
    for proc in pair:
        r = ctl(proc, *args, stdin=stdin, check=False)
        assert r.returncode != 0, f"etcdctl {' '.join(args)} unexpectedly succeeded on {proc.kind}"
        lines.append(r.stderr.decode(errors="replace").strip().splitlines()[-1])
    assert lines[1] == lines[0]
    return lines[0]


def put_all(pair: Pair, *kvs: tuple[str, str]) -> None:
    for k, v in kvs:
        assert both(pair, "put", k, v) == "OK\n"


# --------------------------------------------------------------------------- put / get

def test_get_flags(pair: Pair) -> None:
    # revisions: a=2, b=3, c=4, a=5 (v2), d=6 (empty value), b/x=7
    put_all(pair, ("a", "1"), ("b", "22"), ("c", "3"), ("a", "11"), ("d", ""), ("b/x", "bx"))
    assert both(pair, "get", "a") == "a\n11\n"
    assert both(pair, "get", "a", "--print-value-only") == "11\n"
    assert both(pair, "get", "a", "--rev=2") == "a\n1\n"
    assert both(pair, "get", "a", "--rev=4") == "a\n1\n"
    assert both(pair, "get", "b", "--prefix") == "b\n22\nb/x\nbx\n"
    assert both(pair, "get", "b", "--from-key") == "b\n22\nb/x\nbx\nc\n3\nd\n\n"
    assert both(pair, "get", "b", "--from-key", "--keys-only") == "b\n\nb/x\n\nc\n\nd\n\n"
    assert both(pair, "get", "", "--prefix", "--limit=2") == "a\n11\nb\n22\n"
    assert both(pair, "get", "a", "e") == "a\n11\nb\n22\nb/x\nbx\nc\n3\nd\n\n"
    assert both(pair, "get", "zz") == ""
    assert both(pair, "get", "", "--prefix", "--rev=3", "--keys-only") == "a\n\nb\n\n"
    assert both(pair, "get", "a", "--consistency=s") == "a\n11\n"
    assert both(pair, "get", "a", "--consistency=l") == "a\n11\n"

    expect_order = {
        ("KEY", "ASCEND"): "a b b/x c d", ("KEY", "DESCEND"): "d c b/x b a",
        ("CREATE", "ASCEND"): "a b c d b/x", ("CREATE", "DESCEND"): "b/x d c b a",
        ("MODIFY", "ASCEND"): "b c a d b/x", ("MODIFY", "DESCEND"): "b/x d a c b",
        ("VALUE", "ASCEND"): "d a b c b/x", ("VALUE", "DESCEND"): "b/x c b a d",
        ("VERSION", "DESCEND"): "a b b/x c d",  # ties keep key order
        ("VERSION", "ASCEND"): "b b/x c d a",
    }
    for (target, order), keys in expect_order.items():
        out = both(pair, "get", "", "--prefix", f"--sort-by={target}", f"--order={order}",
                   "--keys-only")
        assert out.split() == keys.split(), (target, order, out)
    out = both(pair, "get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "--limit=2")
    assert out == "b/x\nbx\nd\n\n"


def test_get_json(pair: Pair) -> None:
    put_all(pair, ("k1", "v1"), ("k2", "v2"), ("k1", "v1b"))
    out = both(pair, "get", "k", "--prefix", "-w", "json", "--limit=1")
    doc = json.loads(ctl_out(pair[1], "get", "k", "--prefix", "-w", "json", "--limit=1"))
    assert doc["header"]["revision"] == 4
    assert doc["header"]["raft_term"] >= 1 and doc["header"]["member_id"] != 0
    assert doc["count"] == 2 and doc["more"] is True
    assert doc["kvs"] == [{"key": b64("k1"), "create_revision": 2, "mod_revision": 4,
                           "version": 2, "value": b64("v1b")}]
    assert '"kvs"' in out
    doc = json.loads(ctl_out(pair[1], "get", "k2", "-w", "json", "--rev=3"))
    assert doc["kvs"][0]["mod_revision"] == 3 and doc["header"]["revision"] == 4
    doc = json.loads(both(pair, "get", "nope", "-w", "json"))
    assert "kvs" not in doc and "count" not in doc and doc["header"]["revision"] == 4
    doc = json.loads(both(pair, "get", "k", "--prefix", "--keys-only", "-w", "json"))
    assert [kv.get("value") for kv in doc["kvs"]] == [None, None]
    doc = json.loads(both(pair, "put", "k3", "v3", "-w", "json"))
    assert doc["header"]["revision"] == 5
    both(pair, "get", "k1", "-w", "fields")
    raw = ctl(pair[1], "get", "k1", "-w", "protobuf").stdout
    assert b"k1" in raw and b"v1b" in raw


def test_put_flags(pair: Pair) -> None:
    assert both(pair, "put", "p", "one") == "OK\n"
    assert both(pair, "put", "p", "two", "--prev-kv") == "OK\np\none\n"
    assert both(pair, "put", "p", "--ignore-value") == "OK\n"
    assert both(pair, "get", "p", "--print-value-only") == "two\n"
    assert both_fail(pair, "put", "missing", "--ignore-value") == \
        "Error: etcdserver: key not found"
    assert both_fail(pair, "put", "p", "x", "--lease=1234abcd") == \
        "Error: etcdserver: requested lease not found"


def test_del(pair: Pair) -> None:
    put_all(pair, ("a", "1"), ("a/b", "2"), ("a/c", "3"), ("b", "4"))
    assert both(pair, "del", "zz") == "0\n"
    assert both(pair, "del", "b", "--prev-kv") == "1\nb\n4\n"
    assert both(pair, "del", "a/", "--prefix") == "2\n"
    assert both(pair, "get", "", "--prefix") == "a\n1\n"
    put_all(pair, ("x", "1"), ("y", "2"))
    assert both(pair, "del", "a", "--from-key", "--prev-kv") == "3\na\n1\nx\n1\ny\n2\n"
    doc = json.loads(ctl_out(pair[1], "get", "", "--prefix", "-w", "json"))
    assert doc["header"]["revision"] == 10 and "kvs" not in doc


def test_txn_interactive(pair: Pair) -> None:
    put_all(pair, ("k1", "v1"))
    ok = both(pair, "txn", "-i",
              stdin='value("k1") = "v1"\n\nput k2 yes\nget k1\n\nput k3 no\n\n')
    assert ok.endswith("SUCCESS\n\nOK\n\nk1\nv1\n"), ok
    assert both(pair, "get", "k2", "--print-value-only") == "yes\n"
    fail = both(pair, "txn", "-i",
                stdin='mod("k1") > "100"\nversion("k2") = "1"\n\nput k2 again\n\n'
                      'put k3 no\ndel k1\nget k2\n\n')
    assert fail.endswith("FAILURE\n\nOK\n\n1\n\nk2\nyes\n"), fail
    assert both(pair, "get", "k", "--prefix") == "k2\nyes\nk3\nno\n"
    doc = json.loads(both(pair, "txn", "-w", "json",
                          stdin='create("k3") = "4"\n\nput k4 v\n\n\n'))
    assert doc["succeeded"] is True and doc["header"]["revision"] == 5
    # sub-responses carry a header with only the revision set
    assert doc["responses"] == [{"Response": {"ResponsePut": {"header": {"revision": 5}}}}]
    assert both(pair, "txn", stdin='value("k9") = "x"\n\n\n\n').strip() == "FAILURE"
    assert both_fail(pair, "txn", stdin="\nput d 1\nput d 2\n\n\n") == \
        "Error: etcdserver: duplicate key given in txn request"


# --------------------------------------------------------------------------- watch

class WatchProc:
    """`etcdctl watch ...` as a subprocess whose stdout lines are collected by a thread."""

    def __init__(self, proc: ServerProc, *args: str) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.popen = subprocess.Popen(
            [ETCDCTL_BIN, f"--endpoints={proc.endpoint}", "watch", *args],
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()

    def wait_lines(self, n: int, timeout: float = 15.0) -> list[str]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.lines) >= n or self.popen.poll() is not None,
                               timeout)
            return list(self.lines)

    def stop(self) -> str:
        self.popen.terminate()
        _, err = self.popen.communicate(timeout=10)
        self.thread.join(5)
        return err.decode(errors="replace")


def _history(pair: Pair) -> None:
    for args in (["put", "w/a", "1"], ["put", "w/b", "2"], ["put", "w/a", "3"], ["del", "w/a"],
                 ["put", "other", "x"], ["put", "w/c", ""], ["del", "w/", "--prefix"]):
        both(pair, *args)


# revisions: w/a=2 w/b=3 w/a=4 del w/a=5 other=6 w/c=7 del(w/b,w/c)=8
HIST_PREFIX_PREV = [
    "PUT", "w/a", "1",
    "PUT", "w/b", "2",
    "PUT", "w/a", "1", "w/a", "3",
    "DELETE", "w/a", "3", "w/a", "",
    "PUT", "w/c", "",
    "DELETE", "w/b", "2", "w/b", "",
    "DELETE", "w/c", "", "w/c", "",
]


def test_watch_history_prefix_prev_kv(pair: Pair) -> None:
    _history(pair)
    outs = []
    for proc in pair:
        w = WatchProc(proc, "w/", "--prefix", "--rev=1", "--prev-kv")
        lines = w.wait_lines(len(HIST_PREFIX_PREV))
        w.stop()
        outs.append(lines)
    assert outs[0] == HIST_PREFIX_PREV
    assert outs[1] == outs[0]


def test_watch_single_key_rev(pair: Pair) -> None:
    _history(pair)
    expected = ["PUT", "w/a", "3", "DELETE", "w/a", ""]
    outs = []
    for proc in pair:
        w = WatchProc(proc, "w/a", "--rev=3")
        outs.append(w.wait_lines(len(expected)))
        w.stop()
    assert outs == [expected, expected]


def test_watch_live_prefix(pair: Pair) -> None:
    """A watch from the next revision sees writes made after it starts, in order."""
    put_all(pair, ("seed", "0"))  # revision 2
    watchers = [WatchProc(p, "live/", "--prefix", "--rev=3") for p in pair]
    both(pair, "put", "live/1", "a")
    both(pair, "put", "elsewhere", "b")
    both(pair, "txn", stdin='\nput live/2 b\nput live/3 c\n\n\n')
    both(pair, "del", "live/1")
    expected = ["PUT", "live/1", "a", "PUT", "live/2", "b", "PUT", "live/3", "c",
                "DELETE", "live/1", ""]
    outs = [w.wait_lines(len(expected)) for w in watchers]
    for w in watchers:
        w.stop()
    assert outs == [expected, expected]


def test_watch_compacted_rev(pair: Pair) -> None:
    _history(pair)
    both(pair, "compaction", "5")
    for proc in pair:
        w = WatchProc(proc, "w/", "--prefix", "--rev=2")
        deadline = time.monotonic() + 15
        while w.popen.poll() is None and time.monotonic() < deadline:
            w.wait_lines(1, timeout=0.1)  # waits on the process exiting by itself
        assert w.popen.poll() is not None, "watch on a compacted revision did not end"
        err = w.stop()
        assert "required revision has been compacted" in err, err
        assert w.lines == []


# --------------------------------------------------------------------------- leases

def _lease_id(out: str) -> str:
    m = re.fullmatch(r"lease ([0-9a-f]+) granted with TTL\((\d+)s\)\n", out)
    assert m, out
    return m.group(1)


def test_lease_lifecycle(pair: Pair) -> None:
    for proc in pair:
        def run(*args: str, p: ServerProc = proc) -> str:
            return ctl_out(p, *args)

        lid = _lease_id(run("lease", "grant", "600"))
        assert run("put", "--lease=" + lid, "lk1", "x") == "OK\n"
        assert run("put", f"--lease={lid}", "lk2", "y") == "OK\n"
        assert run("put", "plain", "z") == "OK\n"
        assert run("lease", "keep-alive", "--once", lid) == \
            f"lease {lid} keepalived with TTL(600)\n"
        out = run("lease", "timetolive", lid, "--keys")
        m = re.fullmatch(rf"lease {lid} granted with TTL\(600s\), remaining\((\d+)s\), "
                         r"attached keys\(\[(.*)\]\)\n", out)
        assert m, out
        assert 595 <= int(m.group(1)) <= 600
        assert sorted(m.group(2).split()) == ["lk1", "lk2"]
        doc = json.loads(run("lease", "timetolive", lid, "--keys", "-w", "json"))
        assert doc["id"] == int(lid, 16) and doc["granted-ttl"] == 600
        assert sorted(doc["keys"]) == [b64("lk1"), b64("lk2")]
        other = _lease_id(run("lease", "grant", "100"))
        out = run("lease", "list")
        assert out.splitlines()[0] == "found 2 leases"
        assert sorted(out.splitlines()[1:]) == sorted([lid, other])
        doc = json.loads(run("get", "lk1", "-w", "json"))
        assert doc["kvs"][0]["lease"] == int(lid, 16)
        assert run("lease", "revoke", lid) == f"lease {lid} revoked\n"
        assert run("get", "", "--prefix", "--keys-only") == "plain\n\n"
        assert run("lease", "timetolive", lid) == f"lease {lid} already expired\n"
        r = ctl(proc, "lease", "revoke", lid, check=False)
        assert r.returncode != 0
        assert r.stderr.decode().strip().splitlines()[-1] == \
            "Error: failed to revoke lease (etcdserver: requested lease not found)"
        r = ctl(proc, "lease", "keep-alive", "--once", lid, check=False)
        assert r.returncode != 0
        assert r.stderr.decode().strip().splitlines()[-1] == \
            "Error: etcdserver: requested lease not found"
        assert run("lease", "list") == f"found 1 leases\n{other}\n"
        # revision: 4 puts/revokes that touched keys -> lk1=2 lk2=3 plain=4 revoke=5
        assert json.loads(run("get", "plain", "-w", "json"))["header"]["revision"] == 5


# --------------------------------------------------------------------------- compaction

def test_compaction(pair: Pair) -> None:
    for i in range(6):
        both(pair, "put", "ck", f"v{i}")  # revisions 2..7
    assert both(pair, "compaction", "4") == "compacted revision 4\n"
    assert both(pair, "get", "ck", "--rev=4") == "ck\nv2\n"
    assert both_fail(pair, "get", "ck", "--rev=3") == \
        "Error: etcdserver: mvcc: required revision has been compacted"
    assert both_fail(pair, "compaction", "4") == \
        "Error: etcdserver: mvcc: required revision has been compacted"
    assert both_fail(pair, "compaction", "100") == \
        "Error: etcdserver: mvcc: required revision is a future revision"
    assert both_fail(pair, "get", "ck", "--rev=100") == \
        "Error: etcdserver: mvcc: required revision is a future revision"
    assert both(pair, "compaction", "--physical", "7") == "compacted revision 7\n"
    assert both(pair, "get", "ck", "--rev=7") == "ck\nv5\n"
    doc = json.loads(ctl_out(pair[1], "endpoint", "hashkv", "-w", "json"))
    assert doc[0]["HashKV"]["compact_revision"] == 7


# --------------------------------------------------------------------------- maintenance

def test_endpoint_status_health_hashkv(ds_server: ServerProc) -> None:
    ctl_out(ds_server, "put", "a", "1")
    doc = json.loads(ctl_out(ds_server, "endpoint", "status", "-w", "json"))
    assert len(doc) == 1 and doc[0]["Endpoint"] == ds_server.endpoint
    st = doc[0]["Status"]
    if TARGET == "etcd":
        assert st["version"].startswith("3.4.")
    else:
        assert st["version"].startswith("3.5"), st["version"]
    assert st["header"]["revision"] == 2
    assert st["leader"] == st["header"]["member_id"] != 0
    assert st["dbSize"] > 0 and st["raftTerm"] >= 1
    assert st["raftIndex"] >= st["header"]["revision"] and st["raftAppliedIndex"] >= 1
    table = ctl_out(ds_server, "endpoint", "status")
    cells = [c.strip() for c in table.strip().split(",")]
    assert cells[0] == ds_server.endpoint and cells[1] == f"{st['header']['member_id']:x}"
    assert cells[2] == st["version"] and cells[4:6] == ["true", "false"]

    health = ctl(ds_server, "endpoint", "health").stderr.decode()  # 3.4 prints it on stderr
    assert health.startswith(f"{ds_server.endpoint} is healthy: successfully committed proposal")
    doc = json.loads(ctl_out(ds_server, "endpoint", "health", "-w", "json"))
    assert doc[0]["endpoint"] == ds_server.endpoint and doc[0]["health"] is True

    h1 = json.loads(ctl_out(ds_server, "endpoint", "hashkv", "-w", "json"))[0]
    h2 = json.loads(ctl_out(ds_server, "endpoint", "hashkv", "-w", "json"))[0]
    assert h1["Endpoint"] == ds_server.endpoint
    assert h1["HashKV"]["hash"] == h2["HashKV"]["hash"] != 0
    assert h1["HashKV"]["header"]["revision"] == 2
    assert h1["HashKV"]["compact_revision"] == -1  # etcd reports -1 when never compacted
    ctl_out(ds_server, "put", "a", "2")
    h3 = json.loads(ctl_out(ds_server, "endpoint", "hashkv", "-w", "json"))[0]
    assert h3["HashKV"]["hash"] != h1["HashKV"]["hash"]
    line = ctl_out(ds_server, "endpoint", "hashkv")
    assert line == f"{ds_server.endpoint}, {h3['HashKV']['hash']}\n"


def test_snapshot_alarm_defrag_member(pair: Pair, tmp_path: Path) -> None:
    put_all(pair, ("s1", "v1"), ("s2", "v2"))
    for proc in pair:
        snap = tmp_path / f"{proc.kind}-{proc.client_port}.db"
        r = ctl(proc, "snapshot", "save", str(snap))
        assert f"Snapshot saved at {snap}" in r.stdout.decode()
        assert snap.is_file() and snap.stat().st_size > 0
        assert ctl_out(proc, "defrag") == \
            f"Finished defragmenting etcd member[{proc.endpoint}]\n"
    assert both(pair, "alarm", "list") == ""
    assert both(pair, "member", "list") == "<id>, started, node0, <peer>, <client>, false\n"
    target = pair[1]
    doc = json.loads(ctl_out(target, "member", "list", "-w", "json"))
    assert len(doc["members"]) == 1
    m = doc["members"][0]
    assert m["ID"] == doc["header"]["member_id"] and m["name"] == "node0"
    assert m["peerURLs"] == [target.peer_url] and m["clientURLs"] == [target.client_url]
    line = ctl_out(target, "member", "list")
    assert line == (f"{m['ID']:x}, started, node0, {target.peer_url}, {target.client_url}, "
                    "false\n")
    assert both(pair, "get", "s", "--prefix") == "s1\nv1\ns2\nv2\n"


# --------------------------------------------------------------------------- server flags

def test_server_limits(pair_factory: PairFactory) -> None:
    pair = pair_factory(["--max-txn-ops=2", "--max-request-bytes=4096"])
    assert both(pair, "txn", stdin="\nput a 1\nput b 2\n\n\n").strip() == "SUCCESS\n\nOK\n\nOK"
    assert both_fail(pair, "txn", stdin="\nput a 1\nput b 2\nput c 3\n\n\n") == \
        "Error: etcdserver: too many operations in txn request"
    assert both_fail(pair, "put", "big", "x" * 5000) == \
        "Error: etcdserver: request is too large"
    both(pair, "put", "small", "x" * 1000)


@pytest.mark.parametrize("quota", ["--quota-backend-bytes=16777216"])
def test_quota_flag_accepted(pair_factory: PairFactory, quota: str) -> None:
    pair = pair_factory([quota, "--auto-compaction-mode=revision",
                         "--auto-compaction-retention=1000"])
    put_all(pair, ("q", "1"))
    assert both(pair, "alarm", "list") == ""
