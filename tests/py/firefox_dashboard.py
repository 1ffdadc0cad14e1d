"""Drives the dashboard in headless Firefox over WebDriver BiDi (built into Firefox; no
geckodriver), as tests/dashboard.rs does Chromium over WebDriver.

Usage: firefox_dashboard.py FIREFOX PORT URL ENDPOINT SCREENSHOT
Loads URL (an admin listener without tokens), waits for the first refresh, reads the
numbers shown, clicks "Drain" on ENDPOINT (confirming), waits until the page shows it
drained, saves a screenshot, and prints what it read as one JSON line."""

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time

import websockets

firefox, port, url, endpoint, screenshot = sys.argv[1:6]


async def main():
    profile = tempfile.mkdtemp(prefix="sluice-firefox-")
    proc = subprocess.Popen(
        [firefox, "--headless", "--no-remote", "--profile", profile,
         "--remote-debugging-port", port, "--window-size", "1440,1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ws = await websockets.connect(f"ws://127.0.0.1:{port}/session", max_size=2**26)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("firefox did not open its WebDriver BiDi port")
                await asyncio.sleep(0.2)
        ids = iter(range(1, 1_000_000))

        async def cmd(method, **params):
            n = next(ids)
            await ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg.get("id") == n:
                    if msg.get("type") == "error":
                        raise SystemExit(f"{method}: {msg}")
                    return msg["result"]

        await cmd("session.new", capabilities={})
        tree = await cmd("browsingContext.getTree")
        ctx = tree["contexts"][0]["context"]
        await cmd("browsingContext.navigate", context=ctx, url=url, wait="complete")

        async def js(expression):
            r = await cmd("script.evaluate", expression=expression,
                          target={"context": ctx}, awaitPromise=True)
            if r.get("type") == "exception":
                raise SystemExit(f"{expression}: {r}")
            return r["result"].get("value")

        async def until(expression, what):
            deadline = time.monotonic() + 20
            while not await js(expression):
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {what}")
                await asyncio.sleep(0.2)

        await until("document.body.dataset.loaded === 'yes'", "the first refresh")
        row = f'tr[data-endpoint="{endpoint}"]'
        seen = {
            "routes": await js("JSON.stringify([...document.querySelectorAll('#routes tbody tr')]"
                               ".map(r => [r.dataset.route, r.querySelector('.total').textContent]))"),
            "endpoints": await js("document.querySelectorAll('#upstreams tbody tr').length"),
            "events": await js("document.querySelectorAll('#events tr[data-event]').length"),
            "status": await js("document.querySelector('#status').textContent"),
        }
        # The confirmation is the page's window.confirm: answer yes, then click.
        await js("window.confirm = () => true; "
                 f"document.querySelector('{row} button.drain').click(); true")
        await until(f"document.querySelector('{row} .state')?.textContent === 'drain (override)'",
                    "the drain to show")
        seen["state"] = await js(f"document.querySelector('{row} .state').textContent")
        shot = await cmd("browsingContext.captureScreenshot", context=ctx)
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        seen["routes"] = json.loads(seen["routes"])
        print(json.dumps(seen))
        await ws.close()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


asyncio.run(main())
