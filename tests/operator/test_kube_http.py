"""The real ``kubernetes`` client, pointed at a tiny recording HTTP stand-in of the API server.

``FakeKube`` checks what the operator asks for; this checks that the real client turns
those calls into the right HTTP requests (paths, verbs, merge-patch content type) and
that its watch stream hands a ``410 Gone`` to the ListWatch, which then relists.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes.client import ApiClient, Configuration

from kvoperator.kube import KubeOperator, ListWatch, clients_from

NS = "prod"
CR = {"apiVersion": "datastore.dev/v1alpha1", "kind": "DatastoreCluster",
      "metadata": {"name": "db", "namespace": NS, "uid": "u-1", "generation": 2, "resourceVersion": "5"},
      "spec": {"size": 1}}


class APIServer:
    """Records every request; serves lists, scripted watch streams, and echoes writes."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lists: dict[str, list[dict[str, Any]]] = {
            "/apis/datastore.dev/v1alpha1/datastoreclusters": [CR], "/api/v1/pods": [],
            f"/api/v1/namespaces/{NS}/persistentvolumeclaims": [], f"/api/v1/namespaces/{NS}/services": [],
            f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets": []}
        self.watches: dict[str, list[dict[str, Any]]] = {}
        self.rv = 40
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                u = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                server.requests.append({"method": self.command, "path": u.path, "query": q, "body": body,
                                        "content_type": self.headers.get("Content-Type", "")})
                if self.command == "GET" and q.get("watch") == "true":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    for ev in server.watches.pop(u.path, []):
                        self.wfile.write(json.dumps(ev).encode() + b"\n")
                    self.close_connection = True
                    return
                if self.command == "GET":
                    items = server.lists.get(u.path)
                    if items is None:
                        return self._reply(404, {"kind": "Status", "code": 404})
                    return self._reply(200, {"kind": "List", "apiVersion": "v1", "items": items,
                                             "metadata": {"resourceVersion": str(server.rv)}})
                server.rv += 1
                if body is None:
                    body = {}
                md = body.setdefault("metadata", {})
                md.setdefault("name", md.get("generateName", "x") + str(server.rv))
                md["resourceVersion"] = str(server.rv)
                return self._reply(201 if self.command == "POST" else 200, body)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def client(self) -> ApiClient:
        cfg = Configuration()
        cfg.host = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return ApiClient(cfg)

    def made(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[APIServer]:
    s = APIServer()
    yield s
    s.close()


class Unreachable:
    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            from kvoperator.etcdapi import ClusterAPIError
            raise ClusterAPIError("unreachable", "connection refused")
        return fail


def test_real_client_watch_410_relists_from_the_new_version(server: APIServer) -> None:
    k = clients_from(server.client())
    lw = ListWatch("Pod", k.core.list_pod_for_all_namespaces, k.watch_fn, k.to_dict,
                   label_selector="app.kubernetes.io/managed-by=kvoperator")
    lw.relist()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0", "namespace": NS,
                                                            "resourceVersion": "41"}}
    server.watches["/api/v1/pods"] = [
        {"type": "ADDED", "object": pod},
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                     "message": "too old resource version"}},
    ]
    server.rv = 77
    lw.watch_once()
    gets = server.made("GET", "/api/v1/pods")
    assert [g["query"].get("watch") for g in gets] == [None, "true", None]  # list, watch, relist
    assert gets[1]["query"]["resourceVersion"] == "40"  # watched from the first list's version
    assert gets[1]["query"]["labelSelector"] == "app.kubernetes.io/managed-by=kvoperator"
    assert lw.relists == 2 and lw.resource_version == "77"
    assert lw.get(NS, "db-0") is None  # the relist (empty) replaced what the watch had added


def test_real_client_bootstrap_requests(server: APIServer) -> None:
    op = KubeOperator(clients_from(server.client()), Unreachable())  # type: ignore[arg-type]
    op.crs.relist()
    op.pods.relist()
    asyncio.run(op.pass_once())
    (pvc,) = server.made("POST", f"/api/v1/namespaces/{NS}/persistentvolumeclaims")
    assert pvc["body"]["metadata"]["name"] == "data-db-0"
    (pod,) = server.made("POST", f"/api/v1/namespaces/{NS}/pods")
    assert pod["body"]["spec"]["subdomain"] == "db-headless"
    assert "--initial-cluster-state=new" in pod["body"]["spec"]["containers"][0]["args"]
    assert sorted(r["body"]["metadata"]["name"]
                  for r in server.made("POST", f"/api/v1/namespaces/{NS}/services")) == ["db", "db-headless"]
    (st,) = server.made("PATCH", f"/apis/datastore.dev/v1alpha1/namespaces/{NS}/datastoreclusters/db/status")
    assert st["content_type"] == "application/merge-patch+json"
    assert st["body"]["status"]["observedGeneration"] == 2
    (ev,) = server.made("POST", f"/api/v1/namespaces/{NS}/events")
    assert ev["body"]["reason"] == "Bootstrap" and ev["body"]["involvedObject"]["name"] == "db"
    lists = server.made("GET", "/apis/datastore.dev/v1alpha1/datastoreclusters")
    assert lists and lists[0]["query"].get("watch") is None
