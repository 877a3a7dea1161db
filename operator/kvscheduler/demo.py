"""``kvscheduler demo``: the list-watch flow end to end in one command.

Starts an embedded datastore (or uses ``--endpoints``), creates a few nodes of mixed sizes,
labels and taints and a batch of pods, runs one scheduler in this process with a progress
bar fed by its informer cache, and prints where each pod landed and why the unschedulable
ones did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator

from kubernetes import client as k8s
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from datastore.client import Client
from kvscheduler import objects as obj
from kvscheduler.kvctl import prepare_for_create
from kvscheduler.scheduler import Scheduler

DEMO_NS = "demo"


# On a control plane from `datastore kube up`, kwok keeps nodes with this annotation alive
# (their Leases), so the node lifecycle controller does not taint them unreachable; it also
# marks their pods Running. Elsewhere it means nothing.
KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}


def demo_nodes() -> list[k8s.V1Node]:
    nodes = _demo_nodes()
    for n in nodes:
        n.metadata.annotations = dict(KWOK_ANNOTATION)
    return nodes


def _demo_nodes() -> list[k8s.V1Node]:
    return [
        obj.make_node("small-1", "2", "4Gi", labels={"zone": "a"}),
        obj.make_node("small-2", "2", "4Gi", labels={"zone": "b"}),
        obj.make_node("large-1", "8", "32Gi", labels={"zone": "a", "disk": "ssd"}),
        obj.make_node("large-2", "8", "32Gi", labels={"zone": "b", "disk": "ssd"}),
        obj.make_node("gpu-1", "8", "16Gi", labels={"zone": "a", "accelerator": "gpu"},
                      taints=[("dedicated", "gpu", "NoSchedule")]),
        obj.make_node("cordoned-1", "8", "16Gi", labels={"zone": "b"}, unschedulable=True),
        obj.make_node("notready-1", "8", "16Gi", labels={"zone": "a"}, ready=False),
    ]


def demo_pods(n_web: int) -> list[k8s.V1Pod]:
    # Constrained pods first, so the web pods do not take the room they need.
    pods = [obj.make_pod(f"db-{i}", "1", "4Gi", namespace=DEMO_NS, node_selector={"disk": "ssd"})
            for i in range(4)]
    pods += [obj.make_pod(f"train-{i}", "2", "4Gi", namespace=DEMO_NS, node_selector={"accelerator": "gpu"},
                          tolerations=[("dedicated", "Equal", "gpu", "NoSchedule")]) for i in range(3)]
    pods += [obj.make_pod(f"web-{i}", "250m", "256Mi", namespace=DEMO_NS) for i in range(n_web)]
    # These cannot go anywhere: too big, a zone that does not exist, a GPU pod without toleration.
    pods.append(obj.make_pod("huge-0", "16", "8Gi", namespace=DEMO_NS))
    pods.append(obj.make_pod("zone-c-0", "100m", "64Mi", namespace=DEMO_NS, node_selector={"zone": "c"}))
    pods.append(obj.make_pod("gpu-no-toleration-0", "1", "1Gi", namespace=DEMO_NS,
                             node_selector={"accelerator": "gpu"}))
    return pods


@contextlib.contextmanager
def _store(endpoints: str | None) -> Iterator[list[str]]:
    if endpoints:
        yield [e.strip() for e in endpoints.split(",") if e.strip()]
        return
    from datastore.embed import EmbeddedServer
    with EmbeddedServer() as srv:
        yield [srv.endpoint]


def _decided(s: Scheduler, keys: set[str]) -> tuple[int, int]:
    bound = unsched = 0
    for k in keys:
        st = s.cache.pods.get(k)
        if st is None:
            continue
        if st.pod.spec.node_name:
            bound += 1
        else:
            c = obj.pod_condition(st.pod, "PodScheduled")
            if c is not None and c.status == "False":
                unsched += 1
    return bound, unsched


async def _demo(endpoints: list[str], n_web: int, console: Console,
                scheduler_name: str = obj.DEFAULT_SCHEDULER) -> int:
    nodes, pods = demo_nodes(), demo_pods(n_web)
    for p in pods:  # on a real control plane, a name kube-scheduler leaves alone
        p.spec.scheduler_name = scheduler_name
    keys = {obj.key_of(p) for p in pods}
    async with Client(endpoints) as c:
        await c.delete(obj.POD_PREFIX + DEMO_NS + "/", prefix=True)  # a rerun starts clean
        for n in nodes:
            await c.put(obj.key_of(n), obj.encode(prepare_for_create(n)))
        console.print(f"[bold]datastore[/] {','.join(endpoints)}: {len(nodes)} nodes under {obj.NODE_PREFIX}")
        sched = Scheduler(c, scheduler_name=scheduler_name, identity="demo", lease_ttl=5)
        stop = asyncio.Event()
        runner = asyncio.ensure_future(sched.run(stop))
        t0 = time.monotonic()
        for p in pods:
            await c.put(obj.key_of(p), obj.encode(prepare_for_create(p)))
        console.print(f"created {len(pods)} pods under {obj.POD_PREFIX}{DEMO_NS}/; "
                      "the scheduler list-watches them")
        cols = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
        with Progress(*cols, console=console, transient=False) as bar:
            task = bar.add_task("scheduling", total=len(pods), detail="")
            while True:
                bound, unsched = _decided(sched, keys)
                bar.update(task, completed=bound + unsched, detail=f"bound {bound}, unschedulable {unsched}")
                if bound + unsched >= len(pods) or runner.done():
                    break
                await asyncio.sleep(0.05)  # refresh rate of the progress bar
        elapsed = time.monotonic() - t0
        stop.set()
        await runner
        resp = await c.get(obj.POD_PREFIX + DEMO_NS + "/", prefix=True)
    final = [obj.decode_pod(kv.value) for kv in resp.kvs]
    placed = Counter(p.spec.node_name for p in final if p.spec.node_name)
    table = Table(title="where the pods landed")
    for col in ("node", "pods", "examples"):
        table.add_column(col)
    for n in nodes:
        names = sorted((p.metadata.name for p in final if p.spec.node_name == n.metadata.name),
                       key=lambda s: (s.split("-")[0], int(s.rsplit("-", 1)[1])))
        examples = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
        table.add_row(n.metadata.name, str(placed.get(n.metadata.name, 0)), examples or "-")
    console.print(table)
    un = Table(title="unschedulable pods (PodScheduled=False, reason Unschedulable)")
    un.add_column("pod")
    un.add_column("message")
    for p in final:
        cond = obj.pod_condition(p, "PodScheduled")
        if not p.spec.node_name and cond is not None and cond.status == "False":
            un.add_row(p.metadata.name, cond.message or "")
    console.print(un)
    console.print(f"{sum(placed.values())} bound, {un.row_count} unschedulable in {elapsed:.2f}s "
                  f"({sched.stats.binds} bind txns, {sched.stats.bind_conflicts} conflicts)")
    return 0 if sum(placed.values()) + un.row_count == len(pods) else 1


def demo(endpoints: str | None, n_web: int = 60, scheduler_name: str = obj.DEFAULT_SCHEDULER) -> int:
    console = Console()
    with _store(endpoints) as eps:
        return asyncio.run(_demo(eps, n_web, console, scheduler_name))
