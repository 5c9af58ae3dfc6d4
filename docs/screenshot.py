"""Take the README's screenshots of the demo page: ``python docs/screenshot.py``.

Starts a relay on the bundled sample at 5x pace on a free port, lets tweets flow, and
photographs the page at a desktop and a phone size into ``docs/img/``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = ROOT / "docs" / "img" / "screenshot.db"
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "run",
            "--port",
            str(port),
            "--db",
            str(db),
            "--speed",
            "5",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "healthz", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            for name, size in (("desktop", (1200, 800)), ("phone", (390, 780))):
                page = browser.new_page(viewport={"width": size[0], "height": size[1]})
                page.goto(url)
                page.wait_for_function("window.relayDemo.seqs.length >= 12", timeout=60_000)
                page.wait_for_timeout(1500)  # let the sparkline draw a few points
                page.screenshot(path=str(ROOT / "docs" / "img" / f"{name}.png"))
                page.close()
            browser.close()
    finally:
        relay.terminate()
        relay.wait()
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
