"""The dashboard in a real headless Chromium (the distribution's chromium and chromedriver, driven over
the W3C WebDriver protocol with plain HTTP), on a real `agentsleep serve` with an API key: log in,
search an episode, sleep now with live progress, open the latest report and find its plot, forget
an episode and see it gone. Skips, saying why, only where no browser is installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli_helpers import run_cli
from test_cli_fast import KEY, fast_sleep_config, start_server, stop_server
from tiny import tiny_model_dir

pytestmark = pytest.mark.timeout(400)
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C web element reference key
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


class Browser:
    """The few WebDriver commands the test needs."""

    def __init__(self, driver_url: str, user_dir: Path):
        self.http = httpx.Client(base_url=driver_url, timeout=60)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={user_dir}"]}}}}
        self.sid = self._ok(self.http.post("/session", json=caps))["sessionId"]

    def _ok(self, r: httpx.Response) -> Any:
        body = r.json()
        assert r.status_code == 200, body
        return body["value"]

    def cmd(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._ok(self.http.request(method, f"/session/{self.sid}{path}", json=body if method != "GET" else None))

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> dict:
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})

    def click(self, css: str) -> None:
        for _ in range(20):  # a list re-rendered between finding and clicking: find it again
            r = self.http.post(f"/session/{self.sid}/element/{self.find(css)[ELEMENT]}/click", json={})
            if r.status_code != 404 or r.json()["value"].get("error") != "stale element reference":
                self._ok(r)
                return
            time.sleep(0.2)
        raise AssertionError(f"{css} kept going stale")

    def type(self, css: str, text: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)[ELEMENT]}/value", {"text": text})

    def wait(self, script: str, timeout: float = 30, what: str = "") -> Any:
        deadline = time.time() + timeout
        while True:
            v = self.js(script)
            if v:
                return v
            assert time.time() < deadline, f"timed out waiting for {what or script}"
            time.sleep(0.2)

    def quit(self) -> None:
        try:
            self.http.delete(f"/session/{self.sid}")
        finally:
            self.http.close()


@pytest.fixture()
def browser(tmp_path):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
        pytest.skip("no Chromium here: install the distribution's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; scripts/setup.sh does where apt exists)")
    from conftest import free_port

    port = free_port()
    drv = subprocess.Popen([DRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/status", timeout=2).json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            assert drv.poll() is None and time.time() < deadline, "chromedriver did not start"
            time.sleep(0.1)
        b = Browser(f"http://127.0.0.1:{port}", tmp_path / "chromium-profile")
        try:
            yield b
        finally:
            b.quit()
    finally:
        drv.terminate()
        drv.wait(timeout=30)


def test_dashboard_search_sleep_report_forget(tmp_path, browser):
    from conftest import free_port

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(fast_sleep_config(str(tiny_model_dir(tmp_path / "models"))))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("AGENTSLEEP_HOME", None)
    port = free_port()
    proc = start_server(home, env, port)
    try:
        ids = {}
        for fact in ("The spare key to the garden shed is under the blue flower pot.",
                     "The wifi password at the cabin is heron-42."):
            r = run_cli("remember", fact, "--json", home=home, env={"HF_HUB_OFFLINE": "1"})
            assert r.code == 0, r.err
            ids[fact.split()[1]] = r.json()["id"]
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/ui").status_code == 401  # the key guards the page itself

        browser.get(url + "/ui")
        browser.type("#key", KEY)
        browser.click("#login")
        browser.wait("return document.body.dataset.ready === '1'", what="the dashboard")
        assert browser.js("return document.querySelectorAll('tr.episode').length") == 2

        # search by meaning
        browser.type("#search", "where is the key to the shed")
        browser.click("#search-btn")
        first = browser.wait("const r = document.querySelector('tr.episode'); "
                             "return r && document.getElementById('ep-count').textContent.includes('search') && r.dataset.id",
                             what="search results")
        assert first == ids["spare"]

        # sleep now, with live progress, then the latest report and its plot
        browser.click("button[data-tab=sleeps]")
        browser.click("#sleep-now")
        done = browser.wait("const t = document.getElementById('sleep-progress').textContent; "
                            "return t.startsWith('done') && t", timeout=240, what="the sleep")
        assert "failed" not in done
        browser.wait("return !document.getElementById('sleep-now').disabled "
                     "&& document.querySelectorAll('button.open-report').length > 0", what="the report link")
        browser.click("button.open-report")
        frame = browser.find("#report-frame")
        browser.wait("const f = document.getElementById('report-frame'); "
                     "return !!(f.contentDocument && f.contentDocument.querySelector('img.plot'))", what="the report's plot")
        browser.cmd("POST", "/frame", {"id": frame})
        size = browser.wait("const i = document.querySelector('img.plot'); "
                            "return i && i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight]", what="a drawn plot")
        assert size[0] > 100 and size[1] > 50
        assert browser.js("return document.getElementById('verdict').textContent") in ("promoted", "rejected")
        browser.cmd("POST", "/frame/parent", {})

        # forget an episode: confirm, and it is gone from the list and from the store
        browser.click("button[data-tab=episodes]")
        browser.js("document.getElementById('search').value = ''")
        browser.click("#search-btn")
        browser.wait("return document.querySelectorAll('tr.episode').length === 2", what="the full list")
        browser.click(f"tr.episode[data-id='{ids['wifi']}'] button.forget")
        browser.cmd("POST", "/alert/accept", {})
        browser.wait(f"return !document.querySelector(\"tr.episode[data-id='{ids['wifi']}']\") "
                     "&& document.querySelectorAll('tr.episode').length === 1", what="the forgotten row to go")
        left = run_cli("recall", "wifi password", "--json", home=home).json()
        assert ids["wifi"] not in [h["id"] for h in left]
    finally:
        stop_server(proc)
