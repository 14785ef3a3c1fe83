"""Headless Chromium driven over the Chrome DevTools Protocol, for tests of real UI pages.

    with Chromium(tmp_path / "chromium") as browser:
        page = browser.new_page()
        page.navigate("http://127.0.0.1:8080/auth/login")
        page.insert_text("input[name=username]", "admin")
        page.click("button[type=submit]")
        page.wait_for("document.querySelector('[data-job=user_events]') !== null")
        page.screenshot(tmp_path / "page.png")

The browser is Debian's `chromium` with its own throwaway profile, started detached in a process
group of its own (`tributary.stack.processes.spawn`) that `close()` stops by PID. It picks its
DevTools port itself (`--remote-debugging-port=0`) and reports it in `<profile>/DevToolsActivePort`,
so there is no free-port race. Only the few CDP methods the tests need are wrapped; `Page.call`
reaches any other.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tributary.stack.processes import PidFile, PidRecord, spawn, stop, tail

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--lang=en-US",  # numbers and dates render the same on every machine
)
START_TIMEOUT = 30.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BrowserError(RuntimeError):
    """Chromium did not start, a CDP call failed, or a page never reached the awaited state."""


def chromium_executable() -> str | None:
    """Path of the Chromium binary on PATH (Debian: /usr/bin/chromium), or None."""
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium process with a profile in `profile_dir`; a context manager."""

    def __init__(
        self, profile_dir: Path, *, window_size: tuple[int, int] = (1400, 900), executable: str | None = None
    ) -> None:
        self.profile_dir = profile_dir
        self.window_size = window_size
        self.executable = executable or chromium_executable()
        self.log_path = profile_dir.with_name(profile_dir.name + ".log")
        self.pid_path = profile_dir.with_name(profile_dir.name + ".pid")
        self.process: PidRecord | None = None
        self.port: int | None = None
        self._pages: list[Page] = []

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        if self.executable is None:
            raise BrowserError(
                f"no Chromium found (looked for {', '.join(CHROMIUM_CANDIDATES)} on PATH); "
                "install Debian's `chromium` package (scripts/system_deps.sh)"
            )
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.profile_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        width, height = self.window_size
        argv = [
            self.executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile_dir}",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.process = spawn(argv, log_path=self.log_path, pid_file=PidFile(self.pid_path))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.process.is_alive():
                self.close()
                raise BrowserError(f"chromium exited at start; last lines of {self.log_path}:\n{tail(self.log_path)}")
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if lines and lines[0].isdigit():
                self.port = int(lines[0])
                return
            time.sleep(0.1)
        self.close()
        raise BrowserError(
            f"chromium did not open its DevTools port within {START_TIMEOUT:.0f}s; "
            f"last lines of {self.log_path}:\n{tail(self.log_path)}"
        )

    def new_page(self, timeout: float = 30.0) -> Page:
        """A new tab, with the Page and Runtime domains enabled."""
        if self.port is None:
            raise BrowserError("chromium is not running; use it as a context manager or call start()")
        # Chromium wants PUT for /json/new; proxies from the environment must not get in the way.
        with httpx.Client(trust_env=False, timeout=10) as http:
            response = http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank")
            response.raise_for_status()
        page = Page(response.json()["webSocketDebuggerUrl"], timeout=timeout)
        self._pages.append(page)
        return page

    def close(self) -> None:
        """Close the DevTools connections and stop the browser's process group (ours alone)."""
        for page in self._pages:
            page.close()
        self._pages.clear()
        record, self.process = self.process, None
        if record is not None:
            stop(record, timeout=10.0)  # SIGTERM, then SIGKILL, to the group spawn() created
            PidFile(self.pid_path).remove()


class Page:
    """One tab over its own DevTools WebSocket: calls, buffered events, and a few page helpers."""

    def __init__(self, ws_url: str, timeout: float = 30.0) -> None:
        self.timeout = timeout
        # Entered by hand: the connection lives as long as the Page (websockets 17 warns otherwise).
        self._ws: ClientConnection = connect(ws_url, max_size=None, proxy=None, open_timeout=10).__enter__()
        self._ids = itertools.count(1)
        self._events: deque[dict[str, Any]] = deque(maxlen=2000)
        self.exceptions: list[str] = []  # uncaught JavaScript exceptions of the page, in order
        self.call("Page.enable")
        self.call("Runtime.enable")

    def close(self) -> None:
        self._ws.close()

    # ------------------------------------------------------------------ protocol
    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result; events that arrive meanwhile are kept."""
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._receive(deadline, f"the answer to {method}")
            if message.get("id") == message_id:
                if "error" in message:
                    raise BrowserError(f"{method} failed: {message['error'].get('message')} ({message['error']})")
                result: dict[str, Any] = message.get("result", {})
                return result

    def wait_event(self, method: str, timeout: float | None = None) -> dict[str, Any]:
        """The params of the next event `method` (one already received counts)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for event in self._events:
                if event["method"] == method:
                    self._events.remove(event)
                    params: dict[str, Any] = event.get("params", {})
                    return params
            self._receive(deadline, f"the event {method}")

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrowserError(f"no {waiting_for} from chromium within {self.timeout:.0f}s")
        try:
            message: dict[str, Any] = json.loads(self._ws.recv(timeout=remaining))
        except TimeoutError:
            raise BrowserError(f"no {waiting_for} from chromium within {self.timeout:.0f}s") from None
        if "method" in message:
            if message["method"] == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
            self._events.append(message)
        return message

    # ------------------------------------------------------------------ page helpers
    def navigate(self, url: str) -> None:
        """Open `url` and wait for its load event; a network failure raises (an HTTP error does not)."""
        self._events = deque((e for e in self._events if e["method"] != "Page.loadEventFired"), maxlen=2000)
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url} failed: {result['errorText']}")
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(
                f"{expression!r} threw: {details.get('exception', {}).get('description') or details.get('text')}"
            )
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0, interval: float = 0.2) -> Any:
        """Poll `expression` until it is truthy and return its value; on timeout say what the page shows."""
        deadline = time.monotonic() + timeout
        last_error: BrowserError | None = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError as exc:  # e.g. the context was replaced by a navigation meanwhile
                last_error = exc
            else:
                if value:
                    return value
            time.sleep(interval)
        shown = self.evaluate("`${location.href}: ${(document.body?.innerText ?? '').slice(0, 600)}`")
        raise BrowserError(
            f"waited {timeout:.0f}s for {expression!r}; the page is {shown}"
            + (f"; last error: {last_error}" if last_error else "")
        )

    @property
    def url(self) -> str:
        return str(self.evaluate("location.href"))

    def insert_text(self, selector: str, text: str) -> None:
        """Focus the element and type `text` into it as the keyboard would (frameworks see input events)."""
        self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            f" if (!el) throw new Error('no element matches ' + {json.dumps(selector)}); el.focus(); }})()"
        )
        self.call("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        """A real left click in the middle of the element (scrolled into view first)."""
        box = self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            f" if (!el) throw new Error('no element matches ' + {json.dumps(selector)});"
            " el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
        )
        x, y = box["x"], box["y"]
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", clickCount=1)

    def cookies(self) -> dict[str, str]:
        """Name -> value of the cookies the page's URL would send."""
        return {c["name"]: c["value"] for c in self.call("Network.getCookies")["cookies"]}

    def screenshot(self, path: Path) -> Path:
        """Save the viewport as a PNG."""
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        if not data.startswith(PNG_SIGNATURE):
            raise BrowserError(f"Page.captureScreenshot returned {len(data)} bytes that are not a PNG")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path
