"""The console's pure parts: routing (read-only, bad input), watcher prefixes that never
reveal a whole key, the p99 taken from histogram buckets, and a producer that runs only
while somebody watches."""

from __future__ import annotations

import asyncio
import random

import pytest

from datastore.console.member import key_prefix, quantile
from datastore.console.web import Console, Response


async def _view() -> dict[str, object]:
    return {"x": 1}


@pytest.fixture
def console() -> Console:
    return Console("member", _view)


@pytest.mark.parametrize("method,target,status", [
    ("GET", "/dashboard", 200), ("HEAD", "/dashboard/", 200),
    ("GET", "/dashboard/static/console.js", 200), ("GET", "/dashboard/static/uPlot.min.css", 200),
    ("POST", "/dashboard", 405), ("DELETE", "/dashboard/static/console.js", 405),
    ("GET", "/dashboard/static/page.html", 404), ("GET", "/dashboard/static/..%2fweb.py", 404),
    ("GET", "/dashboard/static/../web.py", 404), ("GET", "/dashboard/x", 404),
    ("GET", "/dashboard?a", 400), ("GET", "/dashboard?", 400), ("GET", "dashboard", 400),
    ("GET", "/dashboard/api/events?x=" + "y" * 3000, 400), ("GET", "/dashboard/\x00", 404),
])
def test_routes(console: Console, method: str, target: str, status: int) -> None:
    r = console.route(method, target)
    assert isinstance(r, Response) and r.status == status, r
    assert r.allow == (status == 405)


def test_stream_and_snapshot_routes(console: Console) -> None:
    assert console.route("GET", "/dashboard/api/events") == "events"
    assert console.route("HEAD", "/dashboard/api/snapshot") == "snapshot"
    assert console.owns("/dashboard") and console.owns("/dashboard/x") and not console.owns("/dashboards")


@pytest.mark.parametrize("key,end,want", [
    (b"/registry/pods/default/web-1", None, "/registry/pods/"),
    (b"/registry/pods/", b"/registry/pods0", "/registry/pods/"),
    (b"/registry/pods", None, "/registry/pods"),
    (b"/a", None, "/a"),
    (b"config/db/password", None, "config/"),
    (b"topsecretkeyname", None, "topsecre…"),
    (b"short", None, "short"),
    (b"\0", b"", "(all keys)"),
    (b"/r/\xff\x01/x", None, "/r/\\xff\\x01/"),
])
def test_key_prefix(key: bytes, end: bytes | None, want: str) -> None:
    assert key_prefix(key, end) == want


def test_quantile_matches_a_sorted_sample() -> None:
    """Within the bucket that holds the true p99 (bucketing loses what is inside it)."""
    rng = random.Random(7)
    bounds = [0.001 * 2 ** i for i in range(14)]
    for _ in range(200):
        xs = sorted(rng.expovariate(1 / rng.choice([0.002, 0.02, 0.2])) for _ in range(rng.randint(1, 300)))
        counts = [0] * (len(bounds) + 1)
        for x in xs:
            counts[next((i for i, b in enumerate(bounds) if x <= b), len(bounds))] += 1
        q = quantile(0.99, bounds, counts)
        true = xs[max(0, -(-len(xs) * 99 // 100) - 1)]
        i = next((i for i, b in enumerate(bounds) if true <= b), len(bounds))
        lo, hi = (bounds[i - 1] if i else 0.0), (bounds[i] if i < len(bounds) else bounds[-1])
        assert q is not None and (lo <= q <= hi or (i == len(bounds) and q == bounds[-1])), (q, true)
    assert quantile(0.99, bounds, [0] * 15) is None


def test_producer_runs_only_while_watched() -> None:
    calls = 0

    async def view() -> dict[str, object]:
        nonlocal calls
        calls += 1
        return {}

    async def main() -> None:
        c = Console("member", view, period=0.01)
        c.events.subscribe()
        first = await c.events.next(None)
        second = await c.events.next(first)
        assert first is not second and second.startswith(b"data: {")
        c.events.unsubscribe()
        task = c.events._task
        assert task is not None
        await asyncio.wait_for(task, 5)  # the producer stops by itself with nobody left
        assert task.done() and c.events.latest is None and calls >= 2
        await c.close()
    asyncio.run(main())


def test_static_files_ship_with_the_package_and_nothing_is_remote() -> None:
    import re
    import tomllib
    from importlib import resources
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    data = tomllib.loads((repo / "pyproject.toml").read_text())
    assert "static/*" in data["tool"]["setuptools"]["package-data"]["datastore.console"]
    static = resources.files("datastore.console") / "static"
    names = {f.name for f in static.iterdir()}
    page = (static / "page.html").read_text()
    for view in ("member", "operator", "scheduler"):
        assert f"{view}.js" in names
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert ref.startswith("data:") or ref.removeprefix("/dashboard/static/").replace(
            "{{view}}", "member") in names, ref  # every asset is ours, none from elsewhere
    # the vendored chart library: its licence beside it, the note names the same version
    version = re.match(r"/\*! https://github.com/leeoniya/uPlot \(v([\d.]+)\)",
                       (static / "uPlot.iife.min.js").read_text())
    assert version is not None and "uPlot.LICENSE.txt" in names
    assert f"uplot@{version.group(1)}" in (static / "VENDORED.md").read_text()
