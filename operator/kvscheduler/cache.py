"""The scheduler's view of the cluster: nodes and what is placed on each, pure.

Fed by the informers' events (``set_pod`` / ``remove_pod`` / ``set_node`` / ``remove_node``)
and by the scheduler's own decisions: ``assume`` accounts a pod on its chosen node the moment
the decision is made, before the bind Txn commits, so the next decision already sees it
(as kube-scheduler's cache does). The bind's watch event later confirms the assumption;
a failed bind ``forget``s it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client as k8s

from kvscheduler.algorithm import NodeInfo, nonzero
from kvscheduler.objects import ZERO, Resources, is_terminal, pod_requests


@dataclass
class PodState:
    pod: k8s.V1Pod
    mod_revision: int
    requests: Resources
    assumed: str | None = None  # node chosen by us, bind not yet observed
    raw: bytes = b""  # the stored JSON: our writes patch it, keeping fields the model lacks

    @property
    def node_name(self) -> str | None:
        return self.pod.spec.node_name or None

    @property
    def placed_on(self) -> str | None:
        """The node whose resources this pod holds in our accounting."""
        if is_terminal(self.pod):
            return None
        return self.node_name or self.assumed


@dataclass
class _Usage:
    requested: Resources = ZERO
    nonzero: Resources = ZERO
    pods: int = 0


class Cache:
    """Nodes and pods by key, with per-node usage kept incrementally."""

    def __init__(self) -> None:
        self.pods: dict[str, PodState] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self._usage: dict[str, _Usage] = {}  # by node name; may name a node we have not seen yet

    # -- nodes ---------------------------------------------------------------------------------

    def set_node(self, node: k8s.V1Node) -> None:
        name = node.metadata.name
        u = self._usage.get(name, _Usage())
        ni = NodeInfo(node, requested=u.requested, pods=u.pods, nonzero=u.nonzero)
        self.nodes[name] = ni

    def remove_node(self, name: str) -> None:
        self.nodes.pop(name, None)

    def node_infos(self) -> list[NodeInfo]:
        return [self.nodes[n] for n in sorted(self.nodes)]

    # -- pods ----------------------------------------------------------------------------------

    def _account(self, node: str | None, req: Resources, sign: int) -> None:
        if node is None:
            return
        u = self._usage.setdefault(node, _Usage())
        if sign > 0:
            u.requested += req
            u.nonzero += nonzero(req)
            u.pods += 1
        else:
            u.requested -= req
            u.nonzero -= nonzero(req)
            u.pods -= 1
        ni = self.nodes.get(node)
        if ni is not None:
            if sign > 0:
                ni.add(req)
            else:
                ni.remove(req)

    def set_pod(self, key: str, pod: k8s.V1Pod, mod_revision: int, raw: bytes = b"") -> PodState:
        old = self.pods.get(key)
        st = PodState(pod, mod_revision, pod_requests(pod), raw=raw)
        if old is not None:
            self._account(old.placed_on, old.requests, -1)
            if st.node_name is None:
                st.assumed = old.assumed  # bind still in flight
        self._account(st.placed_on, st.requests, +1)
        self.pods[key] = st
        return st

    def remove_pod(self, key: str) -> PodState | None:
        old = self.pods.pop(key, None)
        if old is not None:
            self._account(old.placed_on, old.requests, -1)
        return old

    def assume(self, key: str, node: str) -> None:
        st = self.pods[key]
        if st.placed_on is not None:
            raise ValueError(f"pod {key} is already placed on {st.placed_on}")
        st.assumed = node
        self._account(node, st.requests, +1)

    def forget(self, key: str) -> None:
        """Undo ``assume`` after a failed bind (no-op if the pod got bound meanwhile)."""
        st = self.pods.get(key)
        if st is None or st.assumed is None:
            return
        if st.node_name is None:
            self._account(st.assumed, st.requests, -1)
        st.assumed = None

    def forget_all(self) -> None:
        for key in list(self.pods):
            self.forget(key)

    def usage(self, node: str) -> tuple[Resources, int]:
        u = self._usage.get(node, _Usage())
        return u.requested, u.pods
