"""The whole studio in a real headless Chromium (Playwright): every page opens, a caption edited in the
grid lands in the store, and a tiny run started from the Runs page finishes and shows up on the other
pages. Screenshots of each page go to test-artifacts/screenshots/<page>.png.

Needs Debian's chromium at /usr/bin/chromium (``.ci/run`` installs it); skipped without it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.caption import CaptionConfig, caption
from pipeline.captions.captioners import CaptionerConfig
from pipeline.core.launch import child_env, studio_command
from pipeline.data.datasets import DatasetConfig

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-artifacts" / "screenshots"
RUN_TIMEOUT_S = 600  # a ceiling for a wedged run; the loop ends when the run finishes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """(base url, project) of a studio server on a free localhost port, over a 40-digit caption store."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does it)")
    pytest.importorskip("playwright.sync_api")
    from pipeline.core.project import Project

    project = Project.open(tmp_path_factory.mktemp("browser") / "project")
    caption(CaptionConfig(dataset=DatasetConfig(limit=40),
                          captioner=CaptionerConfig(class_template="a handwritten digit {label}")), project)
    port = free_port()
    log = open(project.root / "studio.log", "wb")
    server = subprocess.Popen(studio_command(project.root, port=port), cwd=REPO, env=child_env(),
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # ends at health or a dead server; the ceiling is for a wedge
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((project.root / "studio.log").read_text()) from None
                time.sleep(0.3)
        yield url, project
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def page(studio):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(30_000)
        yield tab
        browser.close()


def open_page(page, url: str, title: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name=title, level=1).wait_for()  # the page title (a section may share its name)
    wait_idle(page)


def wait_idle(page, timeout_ms: int = 30_000) -> None:
    """Until the script run finishes (Streamlit shows a 'running' widget meanwhile)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=timeout_ms)


def shoot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main block, so the window is made that tall first."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 5000)})
    page.wait_for_timeout(500)  # charts re-lay out at the new size
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size(size)


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    wait_idle(page)


def test_edit_a_caption_in_the_grid(studio, page):
    url, project = studio
    open_page(page, url, "Captions")
    grid = page.locator('[data-testid="stDataFrame"] canvas').first
    grid.wait_for()
    shoot(page, "captions")
    # double-click the caption of the second row (header 36 px, rows 56 px, caption column mid-grid)
    box = grid.bounding_box()
    page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + 36 + 56 + 28)
    editor = page.locator("textarea.gdg-input").first
    assert editor.input_value().startswith("a handwritten digit")
    editor.fill("typed in a real browser")
    editor.press("Enter")
    page.get_by_role("button", name="Save 1 edit(s)").click()
    page.get_by_text("Saved 1 caption(s) as version 2.").wait_for()
    store = project.caption_store("digits")
    assert store.head() == 2
    assert [r.caption for r in store.records().values() if r.edited_by_hand] == ["typed in a real browser"]


def test_start_a_tiny_run_and_see_it_finish(studio, page):
    url, project = studio
    open_page(page, url + "/runs", "Runs")
    for label, value in (("Images per split (0: all)", 40), ("Rounds", 1), ("Generator training steps", 10),
                         ("Sampling steps", 3), ("Teacher epochs", 1), ("Student epochs", 1), ("Transfer shadows", 4),
                         ("Pipeline shadows", 1)):
        set_number(page, label, value)
    page.get_by_label("Model size").click()
    page.get_by_role("option", name="tiny (smoke test)").click()
    wait_idle(page)
    page.get_by_role("button", name="Start run").click()
    page.get_by_text("Started run").wait_for()
    status = page.locator('[data-testid="stMetric"]').filter(has_text="Status").first
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not any(s in status.inner_text() for s in ("done", "failed", "cancelled")):
        assert time.monotonic() < deadline, "the run did not finish in time"
        page.wait_for_timeout(1000)
    [run] = project.registry().list(kind="experiment")
    assert run.status == "done", f"{run.error}\n{(run.run_dir / 'log.txt').read_text()[-3000:]}"
    page.get_by_text("See it on the trade-off plot").wait_for()
    wait_idle(page)
    shoot(page, "runs")


def test_tradeoffs_and_generations_show_the_run(studio, page):
    url, project = studio
    if not project.registry().list(kind="experiment", status="done"):
        pytest.skip("needs the run of test_start_a_tiny_run_and_see_it_finish")
    open_page(page, url + "/tradeoffs", "Trade-offs")
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.locator(".js-plotly-plot").count() == 3
    shoot(page, "tradeoffs")
    open_page(page, url + "/generations", "Generations")
    page.get_by_role("button", name="Generate", exact=True).click()
    # the first row: the real image and one image per compared version
    page.locator('[data-testid="stImage"]').nth(3).wait_for(timeout=300_000)
    wait_idle(page, 60_000)
    assert page.get_by_text("real image", exact=True).is_visible()
    shoot(page, "generations")
