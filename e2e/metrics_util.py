"""Scraping /metrics and checking it with the real promtool, for the metrics e2e tests."""

from __future__ import annotations

import queue
import re
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from datastore.api.etcdserverpb import rpc_pb2 as pb
from datastore.api.etcdserverpb import rpc_pb2_grpc

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian: prometheus) missing")


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def http_get(url: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` as it is and return the whole answer (for requests that are not HTTP)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def scrape(base: str) -> str:
    code, text = http_get(base + "/metrics")
    assert code == 200, (code, text[:500])
    return text


def families(text: str) -> dict[str, tuple[str, list[Sample]]]:
    """family name -> (type, samples), as Prometheus' text parser reads them."""
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = (fam.type, [Sample(s.name, dict(s.labels), s.value) for s in fam.samples])
    return out


def samples(text: str) -> list[Sample]:
    return [s for _, ss in families(text).values() for s in ss]


def value(text: str, name: str, **labels: str) -> float:
    """The one sample named ``name`` whose labels include ``labels``."""
    got = [s.value for s in samples(text) if s.name == name
           and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) == 1, f"{name}{labels}: {len(got)} samples"
    return got[0]


def promtool_findings(text: str) -> set[str]:
    """promtool check metrics: the lint findings (metric name and problem); parse errors
    fail the test."""
    assert PROMTOOL is not None
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=60)
    out = (r.stdout + r.stderr).decode()
    assert r.returncode in (0, 3), f"promtool exit {r.returncode}: {out}"  # 3: lint findings
    assert "error" not in out.lower(), out
    return {line.strip() for line in out.splitlines() if line.strip()}


def finding_names(findings: set[str]) -> set[str]:
    return {re.split(r"\s", f, maxsplit=1)[0] for f in findings}


@dataclass
class Streams:
    """A Watch and a LeaseKeepAlive stream held open on a channel (bidi streams)."""

    channel: grpc.Channel
    watch_q: queue.Queue[pb.WatchRequest | None]
    keep_q: queue.Queue[pb.LeaseKeepAliveRequest | None]
    watch_resp: Iterator[pb.WatchResponse]
    keep_resp: Iterator[pb.LeaseKeepAliveResponse]

    def close(self) -> None:
        self.watch_q.put(None)
        self.keep_q.put(None)
        self.watch_resp.cancel()  # type: ignore[attr-defined]
        self.keep_resp.cancel()  # type: ignore[attr-defined]


def _requests(q: queue.Queue) -> Iterator:  # type: ignore[type-arg]
    while (item := q.get()) is not None:
        yield item


def open_streams(channel: grpc.Channel, key: bytes = b"w") -> Streams:
    """Open both streams and wait for their first answers (so the server has them)."""
    lease = rpc_pb2_grpc.LeaseStub(channel).LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=10)
    wq: queue.Queue[pb.WatchRequest | None] = queue.Queue()
    kq: queue.Queue[pb.LeaseKeepAliveRequest | None] = queue.Queue()
    watch_resp = rpc_pb2_grpc.WatchStub(channel).Watch(_requests(wq))
    keep_resp = rpc_pb2_grpc.LeaseStub(channel).LeaseKeepAlive(_requests(kq))
    wq.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key)))
    kq.put(pb.LeaseKeepAliveRequest(ID=lease.ID))
    got: queue.Queue[object] = queue.Queue()
    threading.Thread(target=lambda: got.put(next(watch_resp)), daemon=True).start()
    threading.Thread(target=lambda: got.put(next(keep_resp)), daemon=True).start()
    for _ in range(2):
        got.get(timeout=30)
    return Streams(channel, wq, kq, watch_resp, keep_resp)
