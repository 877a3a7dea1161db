"""A real headless browser for page tests: Debian's ``chromium`` driven over the Chrome
DevTools protocol (CDP) with the ``websockets`` package; no Node, no browser download.

    with Browser(tmp_path) as b:
        page = b.new_page(1280, 900)
        page.goto("http://127.0.0.1:2381/dashboard")
        page.wait_for("document.querySelectorAll('#members tbody tr').length === 3")
        page.screenshot(tmp_path / "member.png")

``wait_for`` polls a JavaScript condition with a deadline; the page's console errors,
uncaught exceptions and Content-Security-Policy violations are collected in ``errors``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # gitignored: screenshots of e2e runs


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("needs Debian's chromium (scripts/test.sh installs it)")
    return path


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.b = browser
        self.session = session
        self.errors: list[str] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self.b.send(method, params, self.session)

    def goto(self, url: str, timeout: float = 30.0) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", timeout, what=f"{url} to load")

    def eval(self, expr: str) -> Any:
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"page script failed: {r['exceptionDetails'].get('text')}: {expr}")
        return r["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 60.0, what: str = "", interval: float = 0.1) -> Any:
        """Poll a JavaScript condition until truthy; fail with the page's text after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.eval(expr)
            if v:
                return v
            if time.monotonic() > deadline:
                text = self.eval("document.body ? document.body.innerText : ''")
                raise AssertionError(f"timed out after {timeout}s waiting for {what or expr}\n"
                                     f"page errors: {self.errors}\npage text:\n{text}")
            time.sleep(interval)  # poll interval of the condition above

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG."""
        h = self.eval("Math.ceil(document.documentElement.scrollHeight)")
        w = self.eval("Math.ceil(document.documentElement.scrollWidth)")
        r = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                      clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(r["data"]))
        print(f"screenshot: {path}")
        return path


class Browser:
    def __init__(self, tmp: Path | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
        self.proc: subprocess.Popen[str] | None = None
        self.ws: ClientConnection | None = None
        self.ids = itertools.count(1)
        self.pages: dict[str, Page] = {}

    def __enter__(self) -> Browser:
        argv = [chromium(), "--headless=new", "--remote-debugging-port=0",
                f"--user-data-dir={self.tmp / 'profile'}", "--no-first-run", "--disable-gpu",
                "--disable-dev-shm-usage", "--disable-extensions", "--no-default-browser-check",
                "--hide-scrollbars", "--font-render-hinting=none", "about:blank"]
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # chromium's sandbox refuses to run as root
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert self.proc.stderr is not None
        url = None
        deadline = time.monotonic() + 60
        seen = []
        while url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            url = m.group(1) if m else None
        if url is None:
            self.close()
            raise AssertionError("chromium did not start:\n" + "".join(seen[-20:]))
        self.ws = connect(url, max_size=None, open_timeout=30).__enter__()  # closed in close()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        assert self.ws is not None
        msg_id = next(self.ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer to {method} within {timeout}s")
            reply = json.loads(self.ws.recv(timeout=left))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self._event(reply)

    def _event(self, ev: dict[str, Any]) -> None:
        page = self.pages.get(ev.get("sessionId", ""))
        if page is None:
            return
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            page.errors.append(p["exceptionDetails"].get("exception", {}).get("description")
                               or p["exceptionDetails"].get("text", ""))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            page.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            page.errors.append(p["entry"].get("text", ""))

    def new_page(self, width: int = 1280, height: int = 900) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = self.pages[session] = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        return page
