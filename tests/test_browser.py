"""The whole studio in a real headless Chromium (Playwright): every page opens, a caption edited in the
grid lands in the store, and a tiny run started from the Runs page finishes and shows up on the other
pages. Screenshots of each page go to test-artifacts/screenshots/<page>.png.

Needs Debian's chromium at /usr/bin/chromium (``.ci/run`` installs it); skipped without it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from itertools import combinations
from pathlib import Path

import pytest

from pipeline.caption import CaptionConfig, caption
from pipeline.captions.captioners import CaptionerConfig
from pipeline.captions.store import caption_store
from pipeline.core.launch import child_env, studio_command
from pipeline.data.datasets import DatasetConfig
from tests.conftest import write_image_folder

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


def wait_for_run_end(page, message: str) -> None:
    """Until the Runs page's Status metric says the run ended (done, failed or cancelled)."""
    status = page.locator('[data-testid="stMetric"]').filter(has_text="Status").first
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not any(s in status.inner_text() for s in ("done", "failed", "cancelled")):
        assert time.monotonic() < deadline, message
        page.wait_for_timeout(500)


def segment(page, text: str):
    """A segmented control's option (a radio button; a rerun may briefly keep a stale copy of the control)."""
    return page.get_by_role("radio", name=text, exact=True).first


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    wait_idle(page)


def test_edit_a_caption_in_the_grid(studio, page):
    url, project = studio
    open_page(page, url, "Captions")
    curator = page.get_by_label("Curator", exact=True)  # saves are credited to a named curator
    curator.fill("dr. grid")
    curator.press("Enter")
    wait_idle(page)
    grid = page.locator('[data-testid="stDataFrame"] canvas').first
    grid.wait_for()
    shoot(page, "captions")
    # double-click the caption of the second row (header 36 px, rows 136 px for 128-px thumbnails)
    box = grid.bounding_box()
    page.mouse.dblclick(box["x"] + 450, box["y"] + 36 + 136 + 68)
    editor = page.locator("textarea.gdg-input").first
    assert editor.input_value().startswith("a handwritten digit")
    editor.fill("typed in a real browser")
    editor.press("Enter")
    page.get_by_role("button", name="Save 1 edit(s)").click()
    page.get_by_text("Saved 1 caption(s) as version 2.").wait_for()
    store = caption_store(project, "digits")
    assert store.head() == 2
    assert [r.caption for r in store.records().values() if r.edited_by_hand] == ["typed in a real browser"]
    assert store.history()[-1].author == "dr. grid"


def test_the_curator_name_survives_a_reload(studio, page):
    """Issue 25 item 4: a reload (F5) lost the curator's name; the browser now keeps it in a cookie."""
    url, _ = studio
    open_page(page, url, "Captions")
    curator = page.get_by_label("Curator", exact=True)
    curator.fill("dr. reload")
    curator.press("Enter")
    wait_idle(page)
    page.wait_for_function("document.cookie.includes('tckr_curator=dr.%20reload')")
    page.reload()
    page.get_by_role("heading", name="Captions", level=1).wait_for()
    wait_idle(page)
    assert page.get_by_label("Curator", exact=True).input_value() == "dr. reload"
    assert not page.get_by_text("Type your name under").count()


def overlap(a: dict, b: dict) -> bool:
    """Whether two bounding boxes (Playwright's x, y, width, height) share any area; touching is no overlap."""
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


@pytest.mark.parametrize("width, height", [(1280, 900), (1400, 900), (1920, 1080)])
def test_the_viewer_fits_its_column_and_the_window(studio, page, width, height, tmp_path):
    """Issue 25 item 3: at 1,400 px the enlarged image ran under the caption column (its 'Image N of M' line
    and key hints drawn over it); at 1,920 px it ran below the fold. Choosing the viewer shows the image and
    its caption whole, left of the caption column and overlapping none of its lines (screenshot: tmp_path)."""
    url, _ = studio
    size = page.viewport_size
    page.set_viewport_size({"width": width, "height": height})
    try:
        open_page(page, url, "Captions")
        segment(page, "Viewer").click()
        page.locator('[class*="st-key-cap_vtext_"] textarea').wait_for()
        wait_idle(page)
        image = page.locator('[data-testid="stImage"] img').first
        page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=image.element_handle())
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        page.screenshot(path=str(tmp_path / f"viewer-{width}.png"))
        column = page.locator('[data-testid="stColumn"]').filter(has=page.locator('[class*="st-key-cap_vtext_"]'))
        boxes = {"image": image.bounding_box(),
                 "image caption": page.locator('[data-testid="stImageCaption"]').first.bounding_box(),
                 "Image N of M": page.get_by_text(re.compile(r"^Image 1 of 40 ")).bounding_box(),
                 "key hints": page.get_by_text(re.compile(r"^Keys: ")).bounding_box()}
        caption_column = column.bounding_box()  # holds the two lines: they are checked against the image
        overlapping = [(a, b) for a, b in combinations(boxes, 2) if overlap(boxes[a], boxes[b])]
        assert not overlapping, (overlapping, boxes)
        header = page.locator('[data-testid="stHeader"]').bounding_box()
        for name in ("image", "image caption"):  # left of the caption column, on screen below Streamlit's header
            box = boxes[name]
            assert box["x"] + box["width"] <= caption_column["x"], (name, box, caption_column)
            assert header["y"] + header["height"] <= box["y"], (name, box, header)
            assert box["y"] + box["height"] <= height, (name, box, height)
    finally:
        page.set_viewport_size(size)


def test_curator_walks_20_captions_with_the_keyboard_and_approves_a_class(studio, page):
    url, project = studio
    store = caption_store(project, "digits")
    start = store.head()
    open_page(page, url, "Captions")
    curator = page.get_by_label("Curator", exact=True)
    curator.fill("dr. keys")
    curator.press("Enter")
    wait_idle(page)
    segment(page, "Viewer").click()
    page.locator('[class*="st-key-cap_vtext_"] textarea').wait_for()  # the viewer's caption box
    page.wait_for_function("window.tckrCaptionKeys === true")  # and its key script
    wait_idle(page)
    page.get_by_role("heading", name="Captions", level=1).click()  # focus off text fields: plain keys work
    for k in range(20):
        page.keyboard.press("e")  # cursor into the caption box
        page.keyboard.press("Control+a")
        page.keyboard.type(f"keyboard caption {k}")
        page.keyboard.press("Control+s")  # commits the box and saves
        page.get_by_text(re.compile(rf"as version {start + k + 1}\.")).wait_for()
        wait_idle(page)
        page.keyboard.press("n")  # next image
        page.get_by_text(re.compile(rf"^Image {k + 2} of 40 ")).wait_for()
        wait_idle(page)
    shoot(page, "captions-viewer")
    typed = [r for r in store.records().values() if r.caption.startswith("keyboard caption")]
    assert len(typed) == 20 and store.head() == start + 20
    assert {r.curator for r in typed} == {"dr. keys"} and store.history()[-1].author == "dr. keys"

    segment(page, "Review").click()
    wait_idle(page)
    page.get_by_label("Class to approve").click()
    page.keyboard.type("3")  # the select filters its options as one types
    page.keyboard.press("Enter")
    wait_idle(page)
    page.get_by_text("I checked this class").click()
    wait_idle(page)
    page.get_by_role("button", name=re.compile(r"^Approve \d+ caption\(s\) of class 3")).click()
    page.get_by_text(re.compile(r"Approved \d+ caption\(s\) of class 3 as reviewed by dr\. keys")).wait_for()
    shoot(page, "captions-review")
    assert all(r.reviewed for r in store.records().values() if r.label == "3")


def test_register_own_data_and_start_a_tiny_run_on_it(studio, page):
    """A new user's first hour: their data lives outside the project; the form registers it (a confirmation
    naming the folder), fills the preset for it with the time per stage, and a run started on it finishes
    (the later tests open it on every page)."""
    from playwright.sync_api import expect

    url, project = studio
    outside = write_image_folder(project.root.parent / "hospital" / "scans", classes=("effusion", "nodule", "normal"),
                                 per_class=20)
    open_page(page, url + "/runs", "Runs")
    # 1. the folder outside the project is not opened as a typed path: it is offered for registration
    page.get_by_label("Dataset", exact=True).click()
    page.get_by_role("option", name="another dataset (a folder or file of yours)...").click()
    wait_idle(page)
    field = page.get_by_label("Folder or file", exact=True)
    field.fill(str(outside))
    field.press("Enter")
    wait_idle(page)
    page.get_by_text(f"Read images from {outside} in this project").click()
    wait_idle(page)
    page.get_by_role("button", name="Register scans").click()
    page.get_by_text("Registered 'scans'").wait_for()
    wait_idle(page)
    # 2. picked, with its preset (the reasons) and the time per stage, before Start
    expect(page.get_by_text("Starting from the standard preset for imagefolder:scans")).to_be_visible()
    expect(page.get_by_label("Class template (classname captioner)")).to_have_value("a photo of a {label}")
    page.get_by_text("Estimated time").wait_for(timeout=120_000)
    views = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Query views")
    expect(views).to_contain_text("orig")
    expect(views).to_contain_text("shift")
    for label, value in (("Images per split (0: all)", 40), ("Rounds", 1), ("Generator training steps", 10),
                         ("Sampling steps", 3), ("Teacher epochs", 1), ("Student epochs", 1), ("Floor of steps", 0),
                         ("Transfer shadows", 4), ("Pipeline shadows", 1)):
        set_number(page, label, value)
    page.get_by_label("Model size").click()
    page.get_by_role("option", name="tiny (smoke test)").click()
    wait_idle(page)
    start = page.get_by_role("button", name="Start run")
    try:
        page.wait_for_function("b => !b.disabled", arg=start.element_handle(), timeout=30_000)
    except Exception as err:  # the form refused the settings: say why
        shoot(page, "runs-form-refused")
        alerts = page.locator('[data-testid="stAlert"]').all_inner_texts()
        raise AssertionError(f"Start run stays disabled; the page says: {alerts}") from err
    start.click()
    page.get_by_text("Started run").wait_for()
    wait_for_run_end(page, "the run did not finish in time")
    [run] = project.registry().list(kind="experiment")
    assert run.status == "done", f"{run.error}\n{(run.run_dir / 'log.txt').read_text()[-3000:]}"
    assert run.config["dataset"]["path"] == str(outside)
    page.get_by_text("See it on the trade-off plot").wait_for()
    wait_idle(page)
    shoot(page, "runs")


def test_tradeoffs_and_generations_show_the_run(studio, page):
    url, project = studio
    if not project.registry().list(kind="experiment", status="done"):
        pytest.skip("needs the run of test_register_own_data_and_start_a_tiny_run_on_it")
    open_page(page, url + "/tradeoffs", "Trade-offs")
    # trade-off, ROC, per-class: drawn one after the other, the last below a table that wraps (issue 25)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length === 3")
    shoot(page, "tradeoffs")
    open_page(page, url + "/generations", "Generations")
    page.get_by_role("button", name="Generate", exact=True).click()
    # the first row: the real image and one image per compared version
    page.locator('[data-testid="stImage"]').nth(3).wait_for(timeout=300_000)
    wait_idle(page, 60_000)
    assert page.get_by_text("real image", exact=True).is_visible()
    shoot(page, "generations")


def test_leak_explorer_and_synthetic_set_show_images(studio, page):
    url, project = studio
    if not project.registry().list(kind="experiment", status="done"):
        pytest.skip("needs the run of test_register_own_data_and_start_a_tiny_run_on_it")
    open_page(page, url + "/leaks", "Leak explorer")
    page.locator('[data-testid="stImage"]').nth(1).wait_for(timeout=120_000)  # a member and a synthetic image
    page.locator(".js-plotly-plot").nth(1).wait_for()  # histogram and per-class chart
    wait_idle(page, 60_000)
    assert page.get_by_text("#1 real (member)").is_visible()
    assert page.locator('[data-testid="stImage"] img').first.evaluate("e => e.naturalWidth") >= 128
    shoot(page, "leaks")
    open_page(page, url + "/synthetic", "Synthetic set")
    page.locator('[data-testid="stImage"]').nth(3).wait_for(timeout=120_000)
    wait_idle(page, 60_000)
    assert page.get_by_text("real (member)").first.is_visible()
    assert page.get_by_text("teacher:").count() > 0
    shoot(page, "synthetic")


def test_tradeoffs_axes_toggle_and_offline_report(studio, page):
    url, project = studio
    if not project.registry().list(kind="experiment", status="done"):
        pytest.skip("needs the run of test_register_own_data_and_start_a_tiny_run_on_it")
    open_page(page, url + "/tradeoffs", "Trade-offs")
    page.locator(".js-plotly-plot").first.wait_for()
    x_range = "document.querySelector('.js-plotly-plot')._fullLayout.xaxis.range"
    zoomed = page.evaluate(x_range)
    assert zoomed[1] - zoomed[0] < 1, zoomed  # zoomed to the data
    page.get_by_text("Zoom to the data").click()
    wait_idle(page)
    page.wait_for_function(f"{x_range}[1] - {x_range}[0] >= 0.99")
    assert page.evaluate(x_range) == [0, 1]
    page.get_by_text("Zoom to the data").click()
    wait_idle(page)
    page.get_by_role("button", name="Build report").click()
    page.get_by_role("button", name="Report (HTML)").wait_for(timeout=120_000)  # kaleido renders the PDF's plot
    wait_idle(page)
    shoot(page, "tradeoffs-report")
    saved = {}
    for label in ("Report (HTML)", "Report (PDF)"):
        with page.expect_download() as info:
            page.get_by_role("button", name=label).click()
        saved[label] = project.root / "downloads" / info.value.suggested_filename  # keeps the .html suffix
        info.value.save_as(saved[label])
    assert saved["Report (PDF)"].read_bytes().startswith(b"%PDF-")
    # the HTML opens with the network cut: the plot draws, the images load, nothing is fetched
    offline = page.context.browser.new_context(offline=True)
    tab = offline.new_page()
    fetched = []
    tab.on("request", lambda r: fetched.append(r.url) if r.url.startswith("http") else None)
    tab.goto(saved["Report (HTML)"].as_uri())
    tab.wait_for_function("document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length > 0")
    assert tab.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert tab.get_by_text("What the numbers say").is_visible()
    assert not fetched, fetched
    offline.close()


def test_clone_compare_and_archive_runs(studio, page):
    url, project = studio
    registry = project.registry()
    done = registry.list(kind="experiment", status="done")
    if not done:
        pytest.skip("needs the run of test_register_own_data_and_start_a_tiny_run_on_it")
    first = done[0]
    open_page(page, url + "/runs", "Runs")
    # 1. clone the finished run into the form (it opens, filled from its config), change one field, start;
    # then cancel it (a second run to the end would only repeat the first test)
    page.get_by_role("button", name="Clone into form").click()
    page.get_by_text(f"Cloned run {first.id} into the form").wait_for()
    wait_idle(page)
    if not page.get_by_label("Student epochs", exact=True).is_visible():
        page.get_by_text("Start a run").click()
    set_number(page, "Student epochs", 2)
    page.get_by_role("button", name="Start run").click()
    page.get_by_text("Started run").wait_for()
    clone = next(r for r in registry.list(kind="experiment") if r.id != first.id)
    assert clone.config["distill"]["student"]["epochs"] == 2
    assert {**clone.config, "distill": first.config["distill"]} == first.config  # the rest is the clone's
    page.get_by_role("button", name="Cancel run").click()
    wait_for_run_end(page, "the cloned run was not cancelled")
    wait_idle(page)
    # 2. compare the two: the config difference and the metrics side by side
    page.get_by_text("distill.student.epochs", exact=True).wait_for()
    page.get_by_text("MIA AUC [95% CI]").first.wait_for()
    shoot(page, "runs-compare")
    # 3. archive the first run: it leaves the list (Show archived brings it back)
    page.get_by_label("Run", exact=True).click()
    page.keyboard.type(first.id)  # the select filters its options as one types
    page.keyboard.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Archive", exact=True).click()
    page.get_by_text(f"Archived run {first.id}").wait_for()
    assert registry.get(first.id).archived
    wait_idle(page)


def test_tradeoffs_table_fits_the_page_and_names_models_in_words(studio, page, fake_metrics, add_finished_run):
    """Issue 25 item 5: the table was cut off on the right. Two hand-made runs of every method (so the run and
    cardinality columns are shown too) in a 1280-px window: nothing in the table scrolls sideways."""
    url, project = studio
    for cardinality in (1.0, 2.0):
        metrics = fake_metrics(cardinality=cardinality)
        metrics["methods"] = {"am": {**metrics["student"], "accuracy": 0.7},
                              "gkd+bss": {**metrics["student"], "accuracy": 0.91},
                              "bss": {**metrics["teacher"], "reads_real_training_images": True},
                              "dp-sgd ε=8": {**metrics["teacher"], "accuracy": 0.6, "epsilon": 7.99}}
        add_finished_run(project, metrics)
    size = page.viewport_size
    page.set_viewport_size({"width": 1280, "height": 900})
    try:
        open_page(page, url + "/tradeoffs", "Trade-offs")
        table = page.locator('[data-testid="stTable"], [data-testid="stDataFrame"]').first
        table.wait_for()
        page.wait_for_timeout(500)
        shoot(page, "tradeoffs-table")
        sideways = table.evaluate("""el => [el, ...el.querySelectorAll('*')].filter(e =>
            e.scrollWidth > e.clientWidth + 1 && ['auto', 'scroll'].includes(getComputedStyle(e).overflowX)).length""")
        assert sideways == 0
        main = page.locator('[data-testid="stMain"]').bounding_box()
        box = table.bounding_box()
        assert box["x"] + box["width"] <= main["x"] + main["width"]
        assert table.get_by_text("data-free student (activation maximisation)").first.is_visible()
    finally:
        page.set_viewport_size(size)
