"""Headless Chromium driven over the DevTools protocol: open a page, collect console errors, check images, take a
screenshot. Chromium comes from Debian's ``chromium`` package, installed here when missing (as root, like
``tests/scheduler`` installs PostgreSQL)."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-port=0",
)


def chromium() -> str:
    """The Chromium binary, installed with apt when missing."""
    found = shutil.which("chromium")
    if found:
        return found
    subprocess.run(["apt-get", "update"], check=True, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "chromium"],
        check=True,
        capture_output=True,
        env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError("apt-get installed chromium, but no chromium binary is on PATH")
    return found


@dataclass
class PageCheck:
    """What the browser saw."""

    console_errors: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)  # src prefix, complete, naturalWidth
    tables: int = 0
    screenshot: bytes = b""


def open_page(url: str, screenshot_width: int = 1280, timeout: float = 60) -> PageCheck:
    """Load ``url`` in a fresh headless Chromium profile and report console errors, images and a full-page PNG."""
    from websockets.sync.client import connect

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    process = subprocess.Popen(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        check = PageCheck()
        ids = itertools.count(1)
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout) as ws:

            def call(method: str, **params: Any) -> dict[str, Any]:
                call_id = next(ids)
                ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
                while True:
                    message = json.loads(ws.recv(timeout=timeout))
                    _event(message, check)
                    if message.get("id") == call_id:
                        if "error" in message:
                            raise RuntimeError(f"{method}: {message['error']}")
                        return message.get("result", {})

            for domain in ("Page", "Runtime", "Log"):
                call(f"{domain}.enable")
            call("Page.navigate", url=url)
            loaded = False
            while not loaded:  # until the load event: every image decoded or failed
                message = json.loads(ws.recv(timeout=timeout))
                _event(message, check)
                loaded = message.get("method") == "Page.loadEventFired"
            result = call(
                "Runtime.evaluate",
                returnByValue=True,
                expression=(
                    "JSON.stringify({images: Array.from(document.images).map(i => ({src: i.src.slice(0, 30), "
                    "complete: i.complete, naturalWidth: i.naturalWidth})), "
                    "tables: document.querySelectorAll('table').length, height: document.documentElement.scrollHeight})"
                ),
            )
            seen = json.loads(result["result"]["value"])
            check.images, check.tables = seen["images"], seen["tables"]
            call(
                "Emulation.setDeviceMetricsOverride",
                width=screenshot_width,
                height=min(seen["height"], 6000),
                deviceScaleFactor=1,
                mobile=False,
            )
            shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            check.screenshot = base64.b64decode(shot["data"])
        return check
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _event(message: dict[str, Any], check: PageCheck) -> None:
    method, params = message.get("method"), message.get("params", {})
    if method == "Runtime.exceptionThrown":
        check.console_errors.append(str(params.get("exceptionDetails", {}).get("text")))
    elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        check.console_errors.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
    elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        check.console_errors.append(str(params["entry"].get("text")))
