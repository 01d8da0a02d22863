"""A minimal headless-Chromium driver over the DevTools protocol on a pipe (no websocket, no browser download).

Chromium started with ``--remote-debugging-pipe`` reads JSON commands from fd 3 and writes replies and events to fd 4,
each message ended by a NUL byte. This is enough to open a page with headers, read the DOM and take screenshots.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path
from typing import Any

__all__ = ["Chromium", "find_chromium"]


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Chromium:
    def __init__(self, binary: str, profile: Path, *, width: int = 1280, height: int = 1000) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Move Chromium's ends above 4, so that placing them on 3 and 4 never collides with themselves.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        flags = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # posix_spawn puts the pipe ends on fds 3 and 4, where Chromium looks for them (no preexec_fn: the test
        # process has threads).
        devnull = os.open(os.devnull, os.O_RDWR)
        actions = [
            (os.POSIX_SPAWN_DUP2, high[0], 3),
            (os.POSIX_SPAWN_DUP2, high[1], 4),
            (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2),
        ]
        try:
            self.pid = os.posix_spawn(binary, [binary, *flags], os.environ, file_actions=actions)
        finally:
            for fd in (*high, devnull):
                os.close(fd)
        self._next = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Network.enable", session=True)

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_chrome], [], [], remaining)[0]:
                raise TimeoutError("no message from Chromium")
            data = os.read(self._from_chrome, 1 << 20)
            if not data:
                raise RuntimeError("Chromium closed its pipe")
            self._buffer += data
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, *, session: bool = False, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        for i, seen in enumerate(self._events):
            if seen.get("method") == event:
                return self._events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(max(deadline - time.monotonic(), 0.01))
            if message.get("method") == event:
                return message
            self._events.append(message)

    def open(self, url: str, headers: dict[str, str] | None = None) -> int:
        """Navigate and wait for the load event; the HTTP status of the document."""
        self._events.clear()
        if headers is not None:
            self.call("Network.setExtraHTTPHeaders", session=True, headers=headers)
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")
        statuses = [
            e["params"]["response"]["status"]
            for e in self._events
            if e.get("method") == "Network.responseReceived" and e["params"].get("type") == "Document"
        ]
        return statuses[-1] if statuses else 0

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        self._events.clear()
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")
        self.wait_for("Page.loadEventFired")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._to_chrome)
        os.close(self._from_chrome)
