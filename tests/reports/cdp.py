"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

Used to *interact* with a report in headless Chromium — click a sort button, type
into a filter box, press a copy button, emulate print — and read the DOM after,
which ``--dump-dom`` alone cannot do. Messages are JSON terminated by NUL on the
browser's fds 3 (commands in) and 4 (replies out). Evaluations made through the
protocol are not subject to the page's Content-Security-Policy; the page's own
script still is, so what is tested is the report's real behaviour.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.reports.browser import BASE_FLAGS, CHROMIUM


class Browser:
    """One headless Chromium with one page, driven through the DevTools pipe."""

    def __init__(self, page: Path) -> None:
        self._profile = tempfile.mkdtemp(prefix="ecap-cdp-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child must see the pipes as fds 3 and 4
        self._proc = subprocess.Popen(
            [
                CHROMIUM,
                *BASE_FLAGS,
                f"--user-data-dir={self._profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(3, 4),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: (os.dup2(to_browser_r, 3), os.dup2(from_browser_w, 4)),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._next = 0
        url = page.resolve().as_uri()
        target = self.call("Target.createTarget", url=url)["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        deadline = time.monotonic() + 30
        while self.eval("location.href + ' ' + document.readyState") != f"{url} complete":
            assert time.monotonic() < deadline, "page did not load"
            time.sleep(0.05)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._from_browser, 65536)
                assert chunk, "chromium closed the DevTools pipe"
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next:
                assert "error" not in reply, reply["error"]
                return reply.get("result", {})

    def eval(self, expression: str) -> Any:
        """Evaluate in the page and return the (JSON-serialisable) value."""
        result = self.call(
            "Runtime.evaluate",
            self._session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def page_call(self, method: str, **params: Any) -> dict:
        return self.call(method, self._session, **params)

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close")
        try:
            self._proc.wait(15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
