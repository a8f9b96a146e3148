"""The app in a real browser: `make app`'s server, headless Chromium, the Gates page."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from tiny import save_tiny

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = dict(os.environ)
    # a prompt this model's tokenizer reads, and a token the redrawn chart must then show
    typed = ("Paris is cold and the weather", "Paris")
    if not (ROOT / "data" / "models" / "reference-gated" / "model.safetensors").is_file():
        env["GATESCOPE_MODEL"] = str(save_tiny(tmp_path_factory.mktemp("b") / "m", "qwen3_next"))
        typed = ("w42 w43 w44 w45", "w43")
    else:
        env.pop("GATESCOPE_MODEL", None)
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "app" / "Home.py"),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield f"http://127.0.0.1:{port}", start, typed
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_gates_page_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, started, (prompt, token) = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            deadline = time.time() + 60
            while True:  # the server needs a moment to start
                try:
                    page.goto(f"{url}/Gates", timeout=10000)
                    break
                except Exception:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            page.wait_for_selector(".js-plotly-plot", timeout=120000)
            first_chart = time.perf_counter() - started
            print(f"\nfrom server start to the Gates page's first chart: {first_chart:.1f} s")
            chart = page.locator(".js-plotly-plot").first
            before = chart.inner_html()
            box = page.locator("textarea").first
            assert token not in before
            box.fill(prompt)
            box.press("Control+Enter")
            try:
                page.wait_for_function(
                    "([old, token]) => { const c = document.querySelector('.js-plotly-plot');"
                    " return c && c.innerHTML !== old && c.innerHTML.includes(token); }",
                    arg=[before, token],
                    timeout=30000,
                )
            except Exception:
                shown = page.locator("[data-testid=stException], [data-testid=stAlert]")
                texts = [shown.nth(i).inner_text()[:800] for i in range(shown.count())]
                pytest.fail(f"the chart was not redrawn for the typed prompt; page shows {texts}")
            print(
                f"per-token chart redrawn {time.perf_counter() - started - first_chart:.1f} s "
                "after the first chart"
            )
            shot = tmp_path / "gates.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10000
        finally:
            browser.close()
