"""Watch a dashboard page in headless Chromium over the DevTools protocol until its panels swap.

Usage: chromium_watch.py <url> <panel> <min series> <deadline seconds>

Opens <url> in headless Chromium (Debian `chromium`) with remote debugging on, waits for the page to load, marks the
page's `window` (a full reload would drop the mark), and prints one JSON line "ready" with every chart's panel,
version and series count. Then it polls the live DOM until the chart of <panel> has another version than at load and
at least <min series> series, and prints one JSON line "done" with the charts, whether the mark survived (no reload)
and how many times the document was loaded. Exits 1 with a JSON "timeout" line when the deadline passes first.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

CHARTS = """JSON.stringify(Array.from(document.querySelectorAll('svg.chart')).map(s => ({
  panel: s.dataset.panel, version: s.dataset.version, series: Number(s.dataset.series), state: s.dataset.state})))"""


def poll(deadline, what, check, every=0.1):
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            print(json.dumps({"event": "timeout", "waiting_for": what}), flush=True)
            sys.exit(1)
        time.sleep(every)


class Page:
    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def eval(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


def main():
    url, panel, min_series, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    deadline = time.monotonic() + seconds
    profile = tempfile.mkdtemp(prefix="freshet-chromium-")
    browser = subprocess.Popen(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        port = poll(
            deadline,
            "DevToolsActivePort",
            lambda: os.path.exists(port_file) and open(port_file).read().split("\n")[0].strip(),
        )

        def page_target():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.load(r)
            return next((t for t in targets if t.get("type") == "page" and t.get("url") == url), None)

        page = Page(poll(deadline, "the page target", page_target)["webSocketDebuggerUrl"])
        # The target starts on about:blank (also "complete"): wait for the dashboard's own document.
        loaded = f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
        poll(deadline, "the page to load", lambda: page.eval(loaded))
        # Counts loads of this document: a reload would run the page afresh and lose both marks.
        page.eval("window.__freshetMark = 'kept'; window.__freshetLoads = (window.__freshetLoads || 0) + 1")
        before = json.loads(page.eval(CHARTS))
        print(json.dumps({"event": "ready", "charts": before}), flush=True)
        at_load = next((c["version"] for c in before if c["panel"] == panel), None)
        if at_load is None:
            raise SystemExit(f"no chart of panel {panel} in the page: {before}")

        def swapped():
            charts = json.loads(page.eval(CHARTS))
            chart = next((c for c in charts if c["panel"] == panel), None)
            if chart and chart["version"] != at_load and chart["series"] >= min_series:
                return charts
            return None

        after = poll(deadline, f"panel {panel} to swap", swapped, every=0.2)
        print(
            json.dumps(
                {
                    "event": "done",
                    "charts": after,
                    "mark": page.eval("window.__freshetMark || null"),
                    "loads": page.eval("window.__freshetLoads || 0"),
                    "panel_text": page.eval(
                        f"(document.querySelector('svg.chart[data-panel=\"{panel}\"]') || {{}}).textContent || ''"
                    ),
                }
            ),
            flush=True,
        )
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
