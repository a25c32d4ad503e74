"""Headless Chromium driven over the Chrome DevTools protocol (for the web page test)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0"]


def chromium_binary() -> str | None:
    """Path of an installed Chromium, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """One headless Chromium with a fresh profile and one page."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._debug_port(profile / "DevToolsActivePort")
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        self._stack = ExitStack()
        self.socket: ClientConnection = self._stack.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=None))
        self._ids = itertools.count(1)

    def _debug_port(self, file: Path, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if file.exists() and (lines := file.read_text().split("\n")) and lines[0].isdigit():
                return int(lines[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            time.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; returns its result (events on the way are dropped)."""
        call_id = next(self._ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]  # type: ignore[no-any-return]

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(0.05)
        raise TimeoutError(f"still false after {timeout} s: {expression}; status: {self.js(STATUS)}")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the page as it looks now."""
        import base64

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        """Emulate a screen of this size (a phone when `mobile`)."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)

    def press(self, key: str, modifiers: int = 0) -> None:
        """A real key press (keydown, char, keyup) on the focused element; modifiers: 2 = Ctrl."""
        codes = {"Enter": 13}
        text = "\r" if key == "Enter" else key
        for kind in ("rawKeyDown", "char", "keyUp"):
            if kind == "char" and modifiers:
                continue
            self.send("Input.dispatchKeyEvent", type=kind, key=key, code=key, modifiers=modifiers,
                      windowsVirtualKeyCode=codes.get(key, 0), **({"text": text} if kind == "char" else {}))

    def close(self) -> None:
        self._stack.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


STATUS = "[...document.querySelectorAll('.msg')].map(m => m.id + ': ' + m.textContent).join('; ')"
