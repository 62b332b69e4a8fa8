"""Headless Chromium for tests, driven over the Chrome DevTools Protocol.

Debian's ``chromium`` runs with ``--headless=new`` (``--no-sandbox`` as
root, where its sandbox cannot start), a profile in a temporary directory,
and its DevTools endpoint on loopback only (``--remote-debugging-port=0``:
Chromium picks a free port and writes it to ``DevToolsActivePort`` in the
profile). The protocol runs over the ``websockets`` synchronous client, a
dependency stockade already has: no WebDriver, no Selenium, no browser
download (docs/adr/0021-web-status-page.md). One browser serves a test
module; each test gets a fresh tab (``/json/new``), closed after it; the
browser gets SIGTERM at the end, SIGKILL to its process group 5 s later.

Protocol reference: https://chromedevtools.github.io/devtools-protocol/
(Page.navigate, Runtime.evaluate, Input.insertText, Page.captureScreenshot,
Emulation.setDeviceMetricsOverride; Log.entryAdded reports
Content-Security-Policy violations).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

#: Seconds one protocol call may take, and the browser to start.
CALL_TIMEOUT_S = 30.0
START_TIMEOUT_S = 30.0


def chromium_missing() -> str | None:
    """Why headless Chromium cannot run here, or None."""
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


class BrowserError(AssertionError):
    pass


class Chromium:
    """One headless Chromium process; :meth:`page` opens a fresh tab (its
    own sessionStorage). Use as a context manager."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900) -> None:
        self.profile = profile
        self.width = width
        self.height = height
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Chromium:
        self.profile.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("chromium") or "chromium",
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]
        if os.geteuid() == 0:
            argv.insert(2, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self._log = open(self.profile.parent / f"{self.profile.name}.log", "wb")
        self._proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self.port = self._devtools_port()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _devtools_port(self) -> int:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise BrowserError("chromium did not open its DevTools port")
            time.sleep(0.05)
        return int(port_file.read_text().split()[0])

    def _endpoint(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=CALL_TIMEOUT_S) as resp:
            body = resp.read()
        return json.loads(body) if body.startswith((b"{", b"[")) else body

    @contextlib.contextmanager
    def page(self) -> Iterator[Page]:
        """A new tab, closed after use (/json/new needs PUT since Chromium 111)."""
        target = self._endpoint("/json/new?about:blank", "PUT")
        try:
            with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=CALL_TIMEOUT_S) as ws:
                page = Page(ws, self.width, self.height)
                for domain in ("Page", "Runtime", "Log"):
                    page.call(f"{domain}.enable")
                page.call(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
                )
                yield page
        finally:
            with contextlib.suppress(OSError):
                self._endpoint(f"/json/close/{target['id']}")

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait(5)
            self._proc = None
            self._log.close()


class Page:
    """One tab, driven over its DevTools WebSocket."""

    def __init__(self, ws: ClientConnection, width: int, height: int) -> None:
        self._ws = ws
        self.width = width
        self.height = height
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    # -- protocol -----------------------------------------------------------------

    def _send(self, method: str, params: dict[str, Any]) -> int:
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        return self._next_id

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command and return its result; events that arrive
        meanwhile are kept in ``events``."""
        assert self._ws is not None
        call_id = self._send(method, params or {})
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"{method}: no answer within {CALL_TIMEOUT_S} s")
            msg = json.loads(self._ws.recv(timeout=remaining))
            if msg.get("id") == call_id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; its value (True for a DOM node)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(f"(() => {{ const v = ({expression}); return v instanceof Node || v; }})()")
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}; page text:\n{self.text()}")
            time.sleep(0.1)

    # -- page helpers ----------------------------------------------------------------

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''"))

    def html(self) -> str:
        return str(self.evaluate("document.documentElement.outerHTML"))

    def type_into(self, selector: str, text: str) -> None:
        """Focus ``selector`` and type ``text`` as keyboard input would."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", {"text": text})

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, path: Path) -> None:
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": max(height, 200), "deviceScaleFactor": 1, "mobile": False},
        )
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def problems(self) -> list[str]:
        """Script exceptions and console or security errors seen so far
        (a Content-Security-Policy violation is one)."""
        out = []
        for ev in self.events:
            if ev["method"] == "Runtime.exceptionThrown":
                out.append(str(ev["params"]["exceptionDetails"]))
            elif ev["method"] == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error":
                entry = ev["params"]["entry"]
                out.append(f"{entry.get('source')}: {entry.get('text')} ({entry.get('url', '')})")
        return out
