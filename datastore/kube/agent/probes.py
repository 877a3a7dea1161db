"""Startup, liveness and readiness probes (httpGet, tcpSocket, exec), with the kubelet's
timing: initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold and
failureThreshold (defaults 0, 10, 1, 1, 3)."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any


def port_number(port: int | str, container: dict[str, Any]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"port {port!r} is not a named port of container {container['name']!r}")


def check(probe: dict[str, Any], container: dict[str, Any], pod_ip: str,
          run_exec: Callable[[list[str], float], int]) -> tuple[bool, str]:
    """One probe attempt: (success, what failed)."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            h = probe["httpGet"]
            port = port_number(h["port"], container)
            host = h.get("host") or pod_ip
            if h.get("scheme", "HTTP").upper() == "HTTPS":
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                headers.setdefault("User-Agent", "kube-probe/1.37")
                conn.request("GET", h.get("path") or "/", headers=headers)
                status = conn.getresponse().status
            finally:
                conn.close()
            if 200 <= status < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {status}"
        if "tcpSocket" in probe:
            port = port_number(probe["tcpSocket"]["port"], container)
            with socket.create_connection((probe["tcpSocket"].get("host") or pod_ip, port),
                                          timeout=timeout):
                return True, ""
        if "exec" in probe:
            code = run_exec(list(probe["exec"]["command"]), timeout)
            return (code == 0), (f"command exited with {code}" if code else "")
        return False, "probe has no handler"
    except (OSError, ValueError, http.client.HTTPException, subprocess.SubprocessError) as e:
        return False, f"probe failed: {e}"


class Prober(threading.Thread):
    """Runs one probe of one container run until stopped; ``ok`` is the verdict so far
    (None until the first threshold is crossed)."""

    def __init__(self, kind: str, probe: dict[str, Any], container: dict[str, Any], pod_ip: str,
                 run_exec: Callable[[list[str], float], int], on_change: Callable[[], None]) -> None:
        super().__init__(name=f"probe {kind} {container['name']}", daemon=True)
        self.kind, self.probe, self.container, self.pod_ip = kind, probe, container, pod_ip
        self.run_exec, self.on_change = run_exec, on_change
        self.stopped = threading.Event()
        self.ok: bool | None = None
        self.message = ""

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        p = self.probe
        period = float(p.get("periodSeconds") or 10)
        succ_need = int(p.get("successThreshold") or 1)
        fail_need = int(p.get("failureThreshold") or 3)
        successes = failures = 0
        if self.stopped.wait(float(p.get("initialDelaySeconds") or 0)):
            return
        while not self.stopped.is_set():
            started = time.monotonic()
            ok, msg = check(p, self.container, self.pod_ip, self.run_exec)
            if self.stopped.is_set():
                return
            if ok:
                successes, failures = successes + 1, 0
                if successes >= succ_need and self.ok is not True:
                    self.ok, self.message = True, ""
                    self.on_change()
            else:
                successes, failures = 0, failures + 1
                self.message = msg
                if failures >= fail_need and self.ok is not False:
                    self.ok = False
                    self.on_change()
                    if self.kind != "readiness":
                        failures = 0
            self.stopped.wait(max(0.0, period - (time.monotonic() - started)))
