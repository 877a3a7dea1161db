"""List + watch one resource into a cache: relist on 410 Gone, back off on errors.

The agent acts on the caches (level-triggered); watch events only wake its loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from datastore.kube.agent.client import ApiError, Client, Gone

log = logging.getLogger("datastore.kube.agent")

Key = tuple[str, str]


def key_of(obj: dict[str, Any]) -> Key:
    md = obj.get("metadata") or {}
    return (md.get("namespace") or "", md.get("name") or "")


class Informer(threading.Thread):
    def __init__(self, client: Client, path: str, on_change: Callable[[], None],
                 stop: threading.Event) -> None:
        super().__init__(name=f"informer {path}", daemon=True)
        self.client, self.path, self.on_change, self.stop = client, path, on_change, stop
        self._lock = threading.Lock()
        self._cache: dict[Key, dict[str, Any]] = {}
        self.synced = threading.Event()

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._cache.values())

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._cache.get((namespace, name))

    def _relist(self) -> str:
        lst = self.client.get(self.path)
        with self._lock:
            self._cache = {key_of(o): o for o in lst.get("items") or []}
        self.synced.set()
        self.on_change()
        return str(lst["metadata"]["resourceVersion"])

    def run(self) -> None:
        rv, delay = "", 1.0
        while not self.stop.is_set():
            try:
                if not rv:
                    rv = self._relist()
                for event in self.client.watch(self.path, rv):
                    obj = event["object"]
                    rv = str(obj["metadata"].get("resourceVersion") or rv)
                    if event["type"] == "BOOKMARK":
                        continue
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._cache.pop(key_of(obj), None)
                        else:
                            self._cache[key_of(obj)] = obj
                    self.on_change()
                    if self.stop.is_set():
                        return
                delay = 1.0
            except Gone:
                rv = ""  # compacted: list again
            except (OSError, ApiError, ValueError) as e:
                log.warning("watch failed; retrying", extra={"path": self.path, "error": str(e)})
                rv = ""
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)
