"""Screenshot a notebook executed in a real JupyterLab by headless Chromium (how docs/images/jupyterlab-*.png
were taken).

Needs Debian's ``chromium`` and JupyterLab beside this package (not project dependencies)::

    uv venv /tmp/jl && uv pip install --python /tmp/jl/bin/python -e . jupyterlab ipywidgets websocket-client
    /tmp/jl/bin/jupyter lab --no-browser --allow-root --port 8899 --IdentityProvider.token='' &
    /tmp/jl/bin/python scripts/jupyterlab_screenshot.py http://127.0.0.1:8899/lab/tree/x.ipynb out.png

It opens the page through Chromium's DevTools protocol, selects the first cell, presses Shift+Enter once
per cell (``--cells``, ``--wait`` seconds apart) and saves a screenshot; crop it with Pillow. Keys sent
before the kernel is ready are lost: if nothing ran, raise ``--load``.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import subprocess
import time
import urllib.request
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("output")
    parser.add_argument("--size", default="1280x1100")
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--wait", type=float, default=5.0, help="seconds between cells")
    parser.add_argument("--load", type=float, default=12.0, help="seconds for the page and kernel to load")
    args = parser.parse_args()
    import websocket  # websocket-client (comes with jupyter_server)

    width, height = (int(v) for v in args.size.split("x"))
    chrome = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={width},{height}", "--remote-debugging-port=9333", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        page = None
        for _ in range(50):
            try:
                tabs = json.load(urllib.request.urlopen("http://127.0.0.1:9333/json"))
                page = next(t for t in tabs if t["type"] == "page")
                break
            except Exception:
                time.sleep(0.2)
        assert page is not None, "chromium did not start"
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True)
        counter = iter(range(1, 1_000_000))

        def call(method: str, **params: Any) -> Any:
            n = next(counter)
            ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == n:
                    return msg.get("result")

        def key(name: str, code: str, vk: int, modifiers: int = 0) -> None:
            for kind in ("rawKeyDown", "keyUp"):
                call("Input.dispatchKeyEvent", type=kind, key=name, code=code, windowsVirtualKeyCode=vk,
                     modifiers=modifiers)  # fmt: skip

        call("Page.enable")
        call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        call("Page.navigate", url=args.url)
        time.sleep(args.load)
        for kind in ("mousePressed", "mouseReleased"):  # select the first cell (command mode)
            call("Input.dispatchMouseEvent", type=kind, x=320, y=130, button="left", clickCount=1)
        key("Escape", "Escape", 27)
        for _ in range(args.cells):
            key("Enter", "Enter", 13, modifiers=8)  # Shift+Enter
            time.sleep(args.wait)
        shot = call("Page.captureScreenshot", format="png")
        with open(args.output, "wb") as out:
            out.write(base64.b64decode(shot["data"]))
    finally:
        chrome.send_signal(signal.SIGTERM)
        chrome.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
