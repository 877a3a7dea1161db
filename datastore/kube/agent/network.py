"""Pod addresses on loopback, and the cluster's names as a hosts file.

Every pod gets its own address in 127.64.0.0/10 (Linux routes all of 127.0.0.0/8 to the
loopback interface, so nothing needs configuring): its processes can listen on the ports
its spec names without clashing with other pods. An address is taken only when each of
the pod's TCP ports can be bound on it, so agents of other clusters on the same machine
do not collide.

Names are what the cluster DNS would answer, written to one hosts file that each
container sees as ``/etc/hosts`` (see enter.py):
- ``<hostname>.<subdomain>.<ns>.svc[.cluster.local]`` for a pod with both set, when a
  headless Service of that name selects it (ready, or any if the Service publishes
  not-ready addresses);
- ``<service>.<ns>.svc[.cluster.local]``: the address of one pod the Service selects (the
  first by name; ready, unless a headless Service publishes not-ready addresses). There is
  no kube-proxy: clients reach that pod directly, so the Service's port must equal the
  target port. One address per name, never several: resolvers that read hosts files
  disagree about several lines for one name (c-ares, which gRPC uses, merges every line
  that shares a name or an address into one entry, so one pod's name would answer with
  its neighbours' addresses too);
- ``kubernetes.default.svc[...]``: 127.0.0.1, the API server (in-cluster clients use the
  KUBERNETES_SERVICE_HOST/PORT variables, which name its real port).
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import threading
from pathlib import Path
from typing import Any

POD_NETWORK = ipaddress.ip_network("127.64.0.0/10")
DOMAIN = "cluster.local"


class AddressPool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: set[str] = set()

    def allocate(self, tcp_ports: list[int], preferred: str = "") -> str:
        """A free address whose ``tcp_ports`` are all free to bind: ``preferred`` if it is
        (a pod keeps its address across restarts of the agent), else a random one."""
        size = POD_NETWORK.num_addresses
        for attempt in range(200):
            ip = str(POD_NETWORK[random.randrange(1, size - 1)])
            if attempt == 0 and preferred and ipaddress.ip_address(preferred) in POD_NETWORK:
                ip = preferred
            with self._lock:
                if ip in self._taken:
                    continue
                if all(_bindable(ip, p) for p in tcp_ports):
                    self._taken.add(ip)
                    return ip
        raise OSError("no free pod address in 127.64.0.0/10 after 200 tries")

    def release(self, ip: str) -> None:
        with self._lock:
            self._taken.discard(ip)


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def _matches(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _names(*parts: str) -> list[str]:
    base = ".".join(parts) + ".svc"
    return [base, f"{base}.{DOMAIN}"]


def hosts_file(pods: list[dict[str, Any]], services: list[dict[str, Any]]) -> str:
    """The hosts file for ``pods`` (those with a loopback pod address) and ``services``."""
    lines = ["# managed by `datastore kube agent`: the cluster's DNS names", "127.0.0.1 localhost",
             *(f"127.0.0.1 {n}" for n in _names("kubernetes", "default"))]
    live = []
    for p in pods:
        ip = (p.get("status") or {}).get("podIP") or ""
        if ip.startswith("127."):
            live.append((p, ip))
    for svc in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        md, spec = svc["metadata"], svc.get("spec") or {}
        ns, name = md["namespace"], md["name"]
        headless = spec.get("clusterIP") == "None"
        publish_all = headless and spec.get("publishNotReadyAddresses")
        chosen = [(p, ip) for p, ip in live if p["metadata"]["namespace"] == ns
                  and _matches(spec.get("selector"), p["metadata"].get("labels") or {})
                  and (publish_all or (_is_ready(p) and not p["metadata"].get("deletionTimestamp")))]
        chosen.sort(key=lambda x: x[0]["metadata"]["name"])
        if chosen:  # one address per name: see the module's docstring
            lines.append(f"{chosen[0][1]} {' '.join(_names(name, ns))}")
        for p, ip in chosen:
            ps = p.get("spec") or {}
            if headless and ps.get("hostname") and ps.get("subdomain") == name:
                lines.append(f"{ip} {' '.join(_names(ps['hostname'], name, ns))}")
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> bool:
    """Rewrite ``path`` keeping its inode (a bind mount of it shows the new text); False
    when it already says that."""
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    return True
