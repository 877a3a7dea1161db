"""The console at ``/dashboard``: its HTTP surface (read-only, bad input, no key values,
the stream cap, streams that end with their client) on a real member, and the three
views in a real headless browser (Debian's chromium over the DevTools protocol):

- a 3-member cluster: a follower's page lists the members and marks the leader; after
  the leader is killed -9 it shows the new leader without a reload;
- ``kvoperator local``: its page shows a scale-up from 1 to 3 members in progress;
- ``kvscheduler run``: its page shows the pods it bound and each node's allocation bars.

Screenshots go to ``e2e/artifacts/console/`` (gitignored); each test prints the path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from browser_util import ARTIFACTS, Browser, Page
from cluster_util import Cluster, wait_for

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc
from datastore.client import SyncClient
from datastore.testing.certs import CertAuthority
from datastore.testing.procs import ServerProc, datastore_proc, free_port, free_port_block
from kvscheduler import objects as obj

REPO = Path(__file__).resolve().parents[1]
SHOTS = ARTIFACTS / "console"
WAIT_S = 90.0  # generous: the machine is shared


def http(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One raw request; (status, headers, body) of the answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


def open_stream(port: int) -> tuple[socket.socket, bytes]:
    """A GET of the event stream, read up to its first event (or the whole refusal)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /dashboard/api/events HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while b"data: " not in first and (chunk := s.recv(65536)):
        first += chunk
    return s, first


def get(port: int, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return http(port, f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


def snapshot(port: int) -> dict[str, Any]:
    status, _, body = get(port, "/dashboard/api/snapshot")
    assert status == 200, body
    return dict(json.loads(body))


@pytest.fixture
def member(tmp_path: Path) -> Iterator[tuple[ServerProc, int]]:
    port = free_port()
    p = datastore_proc(tmp_path, "c0", extra=[f"--listen-metrics-urls=http://127.0.0.1:{port}"])
    p.start()
    yield p, port
    p.stop()


# ---- the HTTP surface ------------------------------------------------------------------------

BAD = [
    # (method, target, status)
    ("POST", "/dashboard", 405), ("PUT", "/dashboard/api/events", 405),
    ("DELETE", "/dashboard/api/snapshot", 405), ("OPTIONS", "/dashboard", 405),
    ("PATCH", "/dashboard/static/console.js", 405),
    ("GET", "/dashboard/nope", 404), ("GET", "/dashboard/static/", 404),
    ("GET", "/dashboard/static/../../../etc/passwd", 404),
    ("GET", "/dashboard/static/%2e%2e%2fweb.py", 404), ("GET", "/dashboard/static/page.html", 404),
    ("GET", "/dashboard/api", 404), ("GET", "/dashboard/api/events/x", 404),
    ("GET", "/dashboard//static/console.js", 404), ("GET", "/dashboard/%ZZ", 404),
    ("GET", "/dashboard?x=1", 400), ("GET", "/dashboard/api/events?since=0", 400),
    ("GET", "/dashboard/api/snapshot?%ZZ", 400), ("GET", "/dashboard?", 400),
    ("GET", "/dashboard/api/events?" + "a" * 3000, 400),
]


def test_console_is_read_only_and_refuses_bad_input(member: tuple[ServerProc, int]) -> None:
    _, port = member
    status, h, body = get(port, "/dashboard")
    assert status == 200 and h["content-type"].startswith("text/html"), (status, h)
    assert b"/dashboard/static/member.js" in body
    assert "default-src 'self'" in h["content-security-policy"]
    assert "access-control-allow-origin" not in h  # no other site's page may read it
    status, h2, body = get(port, "/dashboard", "HEAD")
    assert (status, body, h2["content-length"]) == (200, b"", h["content-length"])
    for name in ("console.js", "member.js", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE.txt"):
        assert get(port, f"/dashboard/static/{name}")[0] == 200, name
    for method, target, want in BAD:
        status, h, body = get(port, target, method)
        assert status == want, (method, target, status, body)
        assert b"Traceback" not in body and b"File \"" not in body, (target, body)
        if want == 405:
            assert h["allow"] == "GET, HEAD"
    # A request line that is not HTTP at all: the listener's own 400, then close.
    assert http(port, b"GET /dashboard\r\n\r\n")[0] == 400
    assert http(port, b"\x16\x03\x01garbage /dashboard HTTP/1.1\r\n\r\n")[0] in (400, 405)
    # the member still serves
    assert snapshot(port)["kind"] == "member"


def test_console_is_also_on_the_client_http_urls(tmp_path: Path) -> None:
    """Wherever /metrics is served: --listen-client-http-urls too."""
    port = free_port()
    p = datastore_proc(tmp_path, "h0", extra=[f"--listen-client-http-urls=http://127.0.0.1:{port}"])
    p.start()
    try:
        assert get(port, "/metrics")[0] == 200
        assert get(port, "/dashboard")[0] == 200 and snapshot(port)["kind"] == "member"
        assert get(port, "/dashboard", "POST")[0] == 405
    finally:
        p.stop()


def test_console_shows_prefixes_and_counts_never_values(member: tuple[ServerProc, int]) -> None:
    p, port = member
    with SyncClient([p.endpoint]) as c:
        c.put("/registry/secrets/default/topsecret-name", "s3cr3t-value")
        lease = c.lease_grant(60)
        c.put("/registry/leases/kube-node-lease/node-a", "v", lease=lease.ID)
        watches = [c.watch("/registry/secrets/default/topsecret-name", prefix=True) for _ in range(2)]
        try:
            for w in watches:
                w.wait_created()
            v = wait_for(lambda: (s := snapshot(port))["watchers"]["total"] >= 2 and s, WAIT_S,
                         "the watchers in the view")
        finally:
            for w in watches:
                w.cancel()
    text = json.dumps(v)
    assert "s3cr3t-value" not in text and "topsecret-name" not in text and "node-a" not in text
    assert dict(v["watchers"]["by_prefix"]) == {"/registry/secrets/": 2}
    assert v["leases"] == {"count": 1, "attached_keys": 1}


def test_console_streams_are_capped_and_end_with_their_client(member: tuple[ServerProc, int]) -> None:
    _, port = member
    streams = []
    try:
        for _ in range(8):
            s, first = open_stream(port)
            streams.append(s)
            assert first.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in first, first
        s, refused = open_stream(port)
        streams.append(s)
        assert refused.startswith(b"HTTP/1.1 503") and b"too many console streams" in refused, refused
        s.close()
        assert snapshot(port)["console_streams"] == 8
        for s in streams[:5]:
            s.close()
        # The server notices the closed connections on its own (nothing more is sent to them).
        wait_for(lambda: snapshot(port)["console_streams"] == 3, WAIT_S, "the closed streams to end")
        assert get(port, "/dashboard/api/events", "HEAD")[0] == 200
    finally:
        for s in streams:
            s.close()
    wait_for(lambda: snapshot(port)["console_streams"] == 0, WAIT_S, "every stream to end")


def tls_get(port: int, ctx: ssl.SSLContext) -> bytes:
    """The start of the answer to GET /dashboard over TLS; b"" when refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /dashboard HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(65536)
    except (ssl.SSLError, ConnectionError):
        return b""


def test_console_over_https_is_tls_with_the_client_certificate(tmp_path: Path) -> None:
    """An https metrics URL serves the console over TLS, with the client certificate demanded
    as for /metrics; plain HTTP gets no page."""
    ca = CertAuthority(tmp_path / "ca", "ca")
    server, client = ca.issue("server"), ca.issue("client", server=False)
    port = free_port()
    p = datastore_proc(tmp_path, "t0", extra=[*server.flags(), f"--trusted-ca-file={ca.cert}",
                                              "--client-cert-auth", f"--listen-metrics-urls=https://127.0.0.1:{port}"])
    p.start()
    try:
        ctx = ssl.create_default_context(cafile=str(ca.cert))
        ctx.load_cert_chain(str(client.cert), str(client.key))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /dashboard/api/events HTTP/1.1\r\nHost: x\r\n\r\n")
            first = b""
            while b"data: " not in first and (chunk := s.recv(65536)):
                first += chunk
        assert first.startswith(b"HTTP/1.1 200 OK") and b'"kind":"member"' in first, first
        assert tls_get(port, ctx).startswith(b"HTTP/1.1 200 OK")
        no_cert = ssl.create_default_context(cafile=str(ca.cert))
        assert not tls_get(port, no_cert).startswith(b"HTTP/1.1 200")
        try:
            plain = http(port, b"GET /dashboard HTTP/1.1\r\nHost: x\r\n\r\n")
        except (ValueError, IndexError, OSError):
            plain = None  # not an HTTP answer at all
        assert plain is None or plain[0] != 200
    finally:
        p.stop()


def test_console_shows_peers_figures_with_auth_on(tmp_path: Path) -> None:
    """With auth on, a member's client URL answers Status to users only; the console asks
    its peers on their peer port instead, so every row keeps its figures."""
    cluster = Cluster(tmp_path, 3)
    port = free_port()
    follower_name = cluster.procs[1].name
    cluster.procs[1].argv.append(f"--listen-metrics-urls=http://127.0.0.1:{port}")
    try:
        cluster.start()
        with grpc.insecure_channel(cluster.leader().endpoint) as ch:
            a = rpc_pb2_grpc.AuthStub(ch)
            a.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=10)
            a.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"), timeout=10)
            a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
            a.AuthEnable(pb.AuthEnableRequest(), timeout=10)

        def every_row_has_figures() -> Any:
            rows = snapshot(port)["members"]
            return len(rows) == 3 and all(r["health"] == "healthy" and r.get("term") for r in rows)

        try:
            wait_for(every_row_has_figures, WAIT_S, f"{follower_name}'s console to show 3 healthy members")
        except AssertionError:
            raise AssertionError(snapshot(port)["members"]) from None
    finally:
        cluster.stop()


# ---- the browser -----------------------------------------------------------------------------

def page_errors(page: Page) -> list[str]:
    """Script errors and CSP violations (a refused connection to a killed process is expected)."""
    return [e for e in page.errors if "net::ERR_" not in e and "Failed to load resource" not in e]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with Browser(tmp_path) as b:
        yield b


def leader_row_js(name: str = "") -> str:
    cond = f" && r.dataset.name === {json.dumps(name)}" if name else ""
    return ("[...document.querySelectorAll('#members tbody tr')].some(r => r.dataset.leader === 'true'"
            f"{cond})")


def test_member_page_marks_the_leader_and_follows_a_new_one(tmp_path: Path, browser: Browser) -> None:
    cluster = Cluster(tmp_path / "ds", 3)
    ports = {}
    for p in cluster.procs:
        ports[p.name] = free_port()
        p.argv.append(f"--listen-metrics-urls=http://127.0.0.1:{ports[p.name]}")
    try:
        cluster.start()
        with SyncClient([p.endpoint for p in cluster.procs]) as c:  # something to chart
            for i in range(50):
                c.put(f"/registry/configmaps/default/cm-{i}", "x")
        old = cluster.leader()
        follower = cluster.followers()[0]
        page = browser.new_page(1400, 1000)
        page.goto(f"http://127.0.0.1:{ports[follower.name]}/dashboard")
        page.wait_for("document.querySelectorAll('#members tbody tr').length === 3", WAIT_S, "3 members")
        page.wait_for(leader_row_js(old.name), WAIT_S, f"{old.name} marked as the leader")
        assert page.eval("document.querySelectorAll('#members tr.leader').length") == 1
        page.wait_for("Number(document.body.dataset.updates) >= 3", WAIT_S, "a few live updates")
        page.screenshot(SHOTS / "member.png")
        loads = page.eval("performance.getEntriesByType('navigation').length")

        # The leader's own page has the replication progress of every member, its watchers
        # by prefix, and the rates of some load.
        lpage = browser.new_page(1400, 1000)
        lpage.goto(f"http://127.0.0.1:{ports[old.name]}/dashboard")
        with SyncClient([old.endpoint]) as c:
            w = c.watch("/registry/configmaps/", prefix=True)
            w.wait_created()
            for i in range(300):
                c.put(f"/registry/configmaps/default/cm-{i % 50}", f"v{i}")
            lpage.wait_for("(rows => rows.length === 3 && rows.every(r => Number(r.dataset.match) >= 300 "
                           "&& r.dataset.state === 'replicate'))"
                           "([...document.querySelectorAll('#progress tbody tr')])",
                           WAIT_S, "the leader's progress table")
            lpage.wait_for("document.querySelector('#watch-prefixes td')?.textContent === "
                           "'/registry/configmaps/'", WAIT_S, "the watcher by its prefix")
            lpage.wait_for("Number(document.body.dataset.updates) >= 3", WAIT_S, "a few live updates")
            lpage.screenshot(SHOTS / "member-leader.png")
            w.cancel()
        assert page_errors(lpage) == []

        old.popen.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        old.popen.wait()  # type: ignore[union-attr]
        page.wait_for(f"{leader_row_js()} && !{leader_row_js(old.name)}", WAIT_S,
                      "a new leader on the page")
        new = cluster.leader()
        page.wait_for(leader_row_js(new.name), WAIT_S, f"{new.name} marked as the leader")
        page.wait_for(f"document.querySelector('#members tr[data-name={json.dumps(old.name)}]')"
                      ".dataset.health.startsWith('unreachable')", WAIT_S, "the killed member unreachable")
        assert page.eval("performance.getEntriesByType('navigation').length") == loads  # no reload
        page.screenshot(SHOTS / "member-after-failover.png")
        assert page_errors(page) == []
    finally:
        cluster.stop()


@pytest.fixture
def operator_proc(tmp_path: Path) -> Iterator[dict[str, Any]]:
    work, manifest = tmp_path / "op", tmp_path / "cluster.yaml"
    base, port = free_port_block(range(4 * 10)), free_port()

    def set_size(n: int) -> None:
        manifest.with_suffix(".tmp").write_text(yaml.safe_dump({
            "apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
            "metadata": {"name": "ui"}, "spec": {"size": n}}))
        os.replace(manifest.with_suffix(".tmp"), manifest)

    set_size(1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "operator")])}
    with open(tmp_path / "operator.log", "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "kvoperator", "local", "--manifest", str(manifest),
                                 "--workdir", str(work), "--base-port", str(base), "--interval", "0.5",
                                 "--metrics-addr", f"127.0.0.1:{port}"], stdout=f, stderr=subprocess.STDOUT,
                                env=env)
    yield {"port": port, "set_size": set_size, "work": work}
    proc.terminate()
    proc.wait(30)
    for pid in member_pids(work):  # the member processes this test's operator started
        os.kill(pid, signal.SIGKILL)


def member_pids(work: Path) -> list[int]:
    """Pids of processes whose --data-dir is under ``work``."""
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "--data-dir" in args and args.index("--data-dir") + 1 < len(args) and \
                args[args.index("--data-dir") + 1].startswith(f"{work}/"):
            out.append(int(entry))
    return out


def test_operator_page_shows_a_scale_up_in_progress(operator_proc: dict[str, Any], browser: Browser) -> None:
    port = operator_proc["port"]
    page = browser.new_page(1400, 1100)
    wait_for(lambda: get(port, "/dashboard")[0] == 200, WAIT_S, "the operator's console")
    page.goto(f"http://127.0.0.1:{port}/dashboard")
    page.wait_for("document.querySelector('#c0-ready .v')?.textContent === '1'", WAIT_S,
                  "one ready member")
    operator_proc["set_size"](3)
    page.wait_for("document.querySelector('#c0-desired .v')?.textContent === '3' && "
                  "document.querySelector('#c0-progressing')?.dataset.status === 'True' && "
                  "[...document.querySelectorAll('#c0-action-table tbody tr')].some(r => "
                  "['AddLearner', 'StartMember', 'Promote'].includes(r.dataset.kind))",
                  WAIT_S, "the scale-up in progress")
    page.screenshot(SHOTS / "operator.png")
    page.wait_for("document.querySelector('#c0-ready .v')?.textContent === '3'", WAIT_S * 2,
                  "three ready members")
    page.wait_for("document.querySelector('#c0-progressing')?.dataset.status === 'False'", WAIT_S,
                  "converged")
    assert page_errors(page) == []


def test_scheduler_page_shows_pods_and_node_bars(tmp_path: Path, browser: Browser) -> None:
    member = datastore_proc(tmp_path, "s0")
    member.start()
    port = free_port()
    sched = None
    try:
        nodes = [obj.make_node(f"node-{i}", "4", "8Gi") for i in range(3)]
        pods = [obj.make_pod(f"web-{i}", "500m", "512Mi") for i in range(12)]
        pods.append(obj.make_pod("huge-0", "64", "1Gi"))  # fits nowhere: stays pending
        with SyncClient([member.endpoint]) as c:
            for o in [*nodes, *pods]:
                c.put(obj.key_of(o), obj.encode(o))
        with open(tmp_path / "sched.log", "ab") as f:
            sched = subprocess.Popen([sys.executable, "-m", "kvscheduler", "run", "--endpoints",
                                      member.endpoint, "--identity", "ui-sched", "--metrics-addr",
                                      f"127.0.0.1:{port}"], stdout=f, stderr=subprocess.STDOUT)
        wait_for(lambda: get(port, "/dashboard")[0] == 200, WAIT_S, "the scheduler's console")
        page = browser.new_page(1400, 900)
        page.goto(f"http://127.0.0.1:{port}/dashboard")
        page.wait_for("document.querySelector('#pods-bound')?.dataset.value === '12'", WAIT_S,
                      "12 bound pods")
        page.wait_for("document.querySelectorAll('#nodes tbody tr').length === 3 && "
                      "[...document.querySelectorAll('#nodes .bar > span')]"
                      ".every(b => b.style.width !== '') && "
                      "[...document.querySelectorAll('#nodes tbody tr')].reduce((a, r) => a + "
                      "Number(r.dataset.pods), 0) === 12", WAIT_S, "per-node bars")
        page.wait_for("document.querySelector('#pending tr[data-name=\"default/huge-0\"]') !== null",
                      WAIT_S, "the pod that fits nowhere listed as pending")
        page.screenshot(SHOTS / "scheduler.png")
        assert page_errors(page) == []
    finally:
        if sched is not None:
            sched.terminate()
            sched.wait(30)
        member.stop()


def test_screenshots_dir_is_ignored_by_git() -> None:
    out = subprocess.run(["git", "check-ignore", "-q", str(SHOTS / "member.png")], cwd=REPO)
    if out.returncode == 128:
        pytest.skip("not a git checkout")
    assert out.returncode == 0
