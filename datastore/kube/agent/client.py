"""The agent's API client: JSON over HTTPS with a client certificate, and watch streams."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from datastore.kube.apiclient import KubeAPI


class ApiError(Exception):
    def __init__(self, status: int, body: Any, what: str) -> None:
        msg = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{what}: HTTP {status}: {msg}")
        self.status, self.body = status, body


class Gone(ApiError):
    """410: the resourceVersion a watch asked for was compacted; list again."""


class Client:
    """Raises ApiError (Gone for 410) instead of returning a status, and watches."""

    def __init__(self, host: str, port: int, ca: Path, cert: Path, key: Path,
                 timeout: float = 15.0) -> None:
        self._api = KubeAPI(host, port, ca, cert, key, timeout)

    def _conn(self, timeout: float | None) -> http.client.HTTPSConnection:
        return self._api.connection(timeout)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str = "application/json", ok: tuple[int, ...] = (200, 201, 202)) -> Any:
        """The decoded JSON answer; an ApiError for any status outside ``ok``."""
        url = path + ("?" + urlencode(query) if query else "")
        status, decoded = self._api.request(method, url, body, content_type)
        if status not in ok:
            cls = Gone if status == 410 else ApiError
            raise cls(status, decoded, f"{method} {path}")
        return decoded

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, kind: str = "merge") -> Any:
        return self.request("PATCH", path, body, content_type=f"application/{kind}-patch+json")

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, timeout_s: int = 300) -> Iterator[dict[str, Any]]:
        """Watch events from ``resource_version`` (bookmarks included) until the server ends
        the stream; a 410, as a status or as an ERROR event, raises Gone."""
        query = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_s)}
        conn = self._conn(timeout_s + 30)
        try:
            conn.request("GET", f"{path}?{urlencode(query)}", headers={"Accept": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raw = resp.read()
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                raise (Gone if resp.status == 410 else ApiError)(resp.status, body, f"watch {path}")
            while True:
                line = resp.readline()
                if not line:
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object") or {}
                    code = int(obj.get("code") or 0)
                    raise (Gone if code == 410 else ApiError)(code, obj, f"watch {path}")
                yield event
        finally:
            conn.close()


def path_of(kind: str, namespace: str | None = None, name: str | None = None,
            sub: str | None = None) -> str:
    """The REST path of a core (v1) or grouped resource, e.g. ``pods`` or
    ``storage.k8s.io/v1/storageclasses``."""
    if "/" in kind:
        group_version, resource = kind.rsplit("/", 1)
        base = f"/apis/{group_version}"
    else:
        base, resource = "/api/v1", kind
    out = base + (f"/namespaces/{quote(namespace)}" if namespace else "") + f"/{resource}"
    if name:
        out += f"/{quote(name)}"
    if sub:
        out += f"/{sub}"
    return out
