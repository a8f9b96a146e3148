"""The app in a real browser: `make app`'s server, headless Chromium, every page at 1400 and
800 px wide. Prints each page's first render and widget-change times; with
``GATESCOPE_SCREENSHOTS=DIR`` saves a screenshot of every page there (docs/ holds them)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, needs_reference
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


PAGES = ["Gates", "Patching", "Circuits", "Steering", "Concepts"]
RUN_FIRST = {"Concepts", "Circuits"}
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"
)


def _open(page, url: str) -> None:
    deadline = time.time() + 60
    while True:  # the server needs a moment to start
        try:
            page.goto(url, timeout=10000)
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def _idle(page, timeout: float = 240000) -> None:
    """Wait until the script run is over (Streamlit's status widget gone)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=timeout
    )


def _no_exception(page) -> None:
    shown = page.locator("[data-testid=stException]")
    assert shown.count() == 0, shown.first.inner_text()[:800]


def _shot(page, name: str) -> None:
    where = os.environ.get("GATESCOPE_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("width", [1400, 800])
def test_every_page_in_chromium(server, width):
    from playwright.sync_api import sync_playwright

    url, _, (prompt, token) = server
    times = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            _open(page, f"{url}/Gates")
            page.wait_for_selector(".js-plotly-plot", timeout=240000)
            _idle(page)
            for name in PAGES:  # warm the caches, then time a fresh load of each page
                start = time.perf_counter()
                page.goto(f"{url}/{name}")
                if name in RUN_FIRST:  # long computations wait for their Run button
                    run = page.get_by_role("button", name="Run", exact=True)
                    run.wait_for(timeout=120000)
                    run.click()
                _idle(page)
                if name != "Steering":  # its chart waits for a button; its text is the figure
                    page.wait_for_selector(".js-plotly-plot", timeout=240000)
                else:
                    page.wait_for_selector("[data-testid=stText]", timeout=240000)
                _idle(page)
                _no_exception(page)
                times[name] = [time.perf_counter() - start]
                print(f"\n{width} px {name}: first render {times[name][0]:.2f} s", flush=True)
                _shot(page, f"{name.lower()}_{width}")
            # a widget change that needs no new computation: the Gates layer slider
            page.goto(f"{url}/Gates")
            _idle(page)
            chart = page.locator(".js-plotly-plot").first.inner_html()
            start = time.perf_counter()
            page.get_by_role("slider").first.press("ArrowRight")
            page.wait_for_function(
                "old => document.querySelector('.js-plotly-plot').innerHTML !== old",
                arg=chart,
                timeout=30000,
            )
            _idle(page)
            times["Gates"].append(time.perf_counter() - start)
            print(f"\n{width} px Gates layer slider: {times['Gates'][1]:.2f} s", flush=True)
            # the prompt typed here is the prompt on the next page, and in the URL
            box = page.locator("textarea").first
            box.fill(prompt)
            box.press("Control+Enter")
            page.wait_for_function(
                "t => document.querySelector('.js-plotly-plot').innerHTML.includes(t)",
                arg=token,
                timeout=60000,
            )
            _idle(page)
            from urllib.parse import parse_qs, urlparse

            model = parse_qs(urlparse(page.url).query)["model"]
            page.locator("[data-testid=stSidebarNav] a", has_text="Steering").click()
            _idle(page)
            page.get_by_role("textbox", name="prompt").wait_for(timeout=60000)
            assert page.get_by_role("textbox", name="prompt").input_value() == prompt
            assert parse_qs(urlparse(page.url).query)["model"] == model
            assert "prompt=" in page.url and "model=" in page.url
        finally:
            browser.close()


@pytest.mark.slow
@needs_chromium
@needs_reference
def test_patching_each_position_and_a_custom_pair_in_chromium(server):
    from playwright.sync_api import sync_playwright

    url, _, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            _open(page, f"{url}/Patching?model=reference&task=ioi")
            page.wait_for_selector(".js-plotly-plot", timeout=240000)
            _idle(page)
            page.get_by_text("each position").click()
            _idle(page)
            _no_exception(page)
            body = page.locator("[data-testid=stMain]").inner_text()
            assert "prompts used" in body or "left out" in body
            _open(page, f"{url}/Patching?model=reference&task=your own pair")
            page.wait_for_selector(".js-plotly-plot", timeout=240000)
            _idle(page)
            _no_exception(page)
            assert "all 1 prompts used" in page.locator("[data-testid=stMain]").inner_text()
        finally:
            browser.close()
