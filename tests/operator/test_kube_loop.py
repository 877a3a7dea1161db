"""``kvoperator run``'s loop itself: the watch threads, the wake-up, back-off and relist
after an error, 410 on a re-watch, ``/healthz``, and the command's error without an API.

Against the stand-in (``FakeKube``), whose watches stream changes as they happen. The
members' Cluster API is unreachable (no member runs), so the planner sees pods and PVCs
only: enough to see every reaction of the loop.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kvoperator.etcdapi import ClusterAPIError
from kvoperator.kube import KubeOperator, ListWatch, serve_health
from kvoperator.planner import ActionKind
from kvoperator.testing import ApiError, FakeKube

NS = "prod"
WAIT_S = 60.0


def cr(size: int = 1) -> dict[str, Any]:
    return {"apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
            "metadata": {"name": "db", "namespace": NS, "uid": "u-1", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"size": size}}


class Unreachable:
    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise ClusterAPIError("unreachable", "connection refused")
        return fail


def wait_until(cond: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # poll interval of the condition above


class Running:
    """KubeOperator.run(stop) in its own thread and event loop, as ``kvoperator run`` runs it."""

    def __init__(self, op: KubeOperator) -> None:
        self.op = op
        self.ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.thread.start()
        assert self.ready.wait(30)

    async def _main(self) -> None:
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        self.ready.set()
        await self.op.run(self.stop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        assert not self.thread.is_alive(), "the loop did not stop"


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    k = FakeKube()
    k.store["cr"][(NS, "db")] = cr()
    yield k
    k.close()  # ends the watch threads' streams


def pods_created(kube: FakeKube) -> int:
    return len(kube.made("create_namespaced_pod"))


def test_a_watch_event_wakes_the_loop(kube: FakeKube) -> None:
    """With a resync interval far beyond the test, only the watch can bring the next pass."""
    op = KubeOperator(kube.clients(), Unreachable(), interval=3600)
    run = Running(op)
    try:
        wait_until(lambda: pods_created(kube) == 1, "the bootstrap pod")
        # then idle: the pod is Pending, the planner waits, the loop sleeps for the interval
        wait_until(lambda: (rec := op.reconcilers.get((NS, "db"))) is not None and rec.last_action is not None
                   and rec.last_action.kind is ActionKind.WAIT, "an idle pass")
        kube.admin.core.delete_namespaced_pod("db-0", NS)  # the DELETED event must wake it
        wait_until(lambda: pods_created(kube) == 2, "the pod recreated on its PVC")
        assert [m for m, _, _ in kube.calls if m == "watch"]  # it watched, never relisted per pass
        assert op.crs.relists == 1 and op.pods.relists == 1
    finally:
        run.close()


def test_watch_errors_back_off_and_relist(kube: FakeKube) -> None:
    lists: list[float] = []

    def list_pods(**kw: Any) -> Any:
        lists.append(time.monotonic())
        return kube.core.list_pod_for_all_namespaces(**kw)
    list_pods.__name__ = "list_pod_for_all_namespaces"
    kube.fail("watch", ApiError(500, message="etcdserver: request timed out"),
              ApiError(500, message="etcdserver: request timed out"))
    lw = ListWatch("Pod", list_pods, kube.watch, kube.clients().to_dict)
    stop = threading.Event()
    t = threading.Thread(target=lw.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_until(lambda: len(lists) == 3, "two relists after the two failed watches")
        # 1 s, then 2 s: the back-off doubles (lower bounds only: a loaded machine is slower)
        assert lists[1] - lists[0] >= 0.95 and lists[2] - lists[1] >= 1.9, lists
        assert lw.synced.is_set()
        kube.admin.core.create_namespaced_pod(NS, {"metadata": {"name": "p"}, "spec": {}})
        wait_until(lambda: lw.get(NS, "p") is not None, "the watch to deliver a new pod")
        assert len(lists) == 3  # delivered by the watch, not by another list
    finally:
        stop.set()
        kube.close()
        t.join(30)


def watches(kube: FakeKube) -> list[dict[str, Any]]:
    return [kw for m, _, kw in kube.calls if m == "watch"]


def test_a_410_on_rewatch_relists_and_resumes(kube: FakeKube) -> None:
    lw = ListWatch("DatastoreCluster", kube.custom.list_cluster_custom_object, kube.watch,
                   kube.clients().to_dict, group="datastore.dev", version="v1alpha1",
                   plural="datastoreclusters")
    stop = threading.Event()
    t = threading.Thread(target=lw.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_until(lambda: lw.relists == 1 and watches(kube), "the first watch")
        kube.admin.custom.create_namespaced_custom_object(
            "datastore.dev", "v1alpha1", NS, "datastoreclusters",
            {**cr(), "metadata": {"name": "db2", "namespace": NS}})
        wait_until(lambda: lw.get(NS, "db2") is not None, "db2 through the watch")
        kube.admin.core.create_namespaced_pod(NS, {"metadata": {"name": "p"}, "spec": {}})  # not watched
        kube.compact()  # history gone past our version: re-watching from it is 410 Gone
        kube.end_watches()
        wait_until(lambda: lw.relists == 2, "a relist after 410")
        wait_until(lambda: len(watches(kube)) >= 3, "the watch after the relist")
        assert watches(kube)[-1]["resource_version"] == lw.resource_version == str(kube.log_from)
        assert {k[1] for k in lw.cache} == {"db", "db2"}
    finally:
        stop.set()
        kube.close()
        t.join(30)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await r.read()
        w.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body
    return asyncio.run(go())


def test_healthz_follows_the_passes(kube: FakeKube) -> None:
    op = KubeOperator(kube.clients(), Unreachable(), interval=1.0)

    async def main() -> list[tuple[int, bytes]]:
        server = await serve_health(op, 0, host="127.0.0.1")
        port = server.sockets[0].getsockname()[1]
        try:
            out = [await asyncio.to_thread(http_get, port, "/healthz")]  # no pass yet
            op.crs.relist()
            op.pods.relist()
            await op.pass_once()
            out.append(await asyncio.to_thread(http_get, port, "/healthz"))
            op.last_pass -= 3600  # passes stopped an hour ago (a loop that hangs)
            out.append(await asyncio.to_thread(http_get, port, "/healthz"))
            return out
        finally:
            server.close()
    assert asyncio.run(main()) == [(503, b"no reconcile pass lately\n"), (200, b"ok\n"),
                                   (503, b"no reconcile pass lately\n")]


def test_run_without_an_api_says_what_to_do(tmp_path: Any) -> None:
    p = subprocess.run([sys.executable, "-m", "kvoperator", "run", "--kubeconfig", str(tmp_path / "none"),
                        "--health-port", "0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "kvoperator: no Kubernetes API to talk to" in p.stderr and "--kubeconfig FILE" in p.stderr
    assert "Traceback" not in p.stderr


def test_metrics_on_the_health_port(kube: FakeKube) -> None:
    """/metrics next to /healthz: a pass's duration, the bootstrap action, members by state."""
    from prometheus_client.parser import text_string_to_metric_families

    op = KubeOperator(kube.clients(), Unreachable(), interval=1.0)

    async def main() -> tuple[int, bytes, int]:
        server = await serve_health(op, 0, host="127.0.0.1")
        port = server.sockets[0].getsockname()[1]
        try:
            op.crs.relist()
            op.pods.relist()
            await op.pass_once()  # bootstraps db-0
            code, body = await asyncio.to_thread(http_get, port, "/metrics")
            missing, _ = await asyncio.to_thread(http_get, port, "/nope")
            return code, body, missing
        finally:
            server.close()
    code, body, missing = asyncio.run(main())
    assert code == 200 and missing == 404
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    c = ("cluster", f"{NS}/db")
    assert got[("kvoperator_reconcile_duration_seconds_count", (c,))] == 1
    assert got[("kvoperator_actions_total", (c, ("kind", "Bootstrap"), ("result", "done")))] == 1
    assert got[("kvoperator_members", (c, ("state", "missing")))] == 1  # nothing answers yet
    assert got[("kvoperator_quorum_healthy", (c,))] == 0
    assert got[("kvoperator_desired_members", (c,))] == 1
