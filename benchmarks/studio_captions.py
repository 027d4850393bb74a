"""How responsive the studio's Captions page is on CIFAR-10's 50,000 captions.

    python benchmarks/studio_captions.py [--project DIR] [--data /work/shared/datasets/cifar10]

Builds (or reuses) a project with store ``cifar10``: the 50k BLIP-2 captions of
``blip2_captions_by_class.json`` imported with ``caption_io.import_captions``, plus a caption run that
records the dataset, as the studio expects. Then prints:

(a) the page's data-loading calls (store, its dataset from the registry, records, dataset, filter, thumbnails of
    one page), cold (first call in a fresh process) and warm (cached, as on every rerun);
(b) ``CaptionStore.edit`` of one caption on the 50k store, median of 20: through the studio's cached
    store object, and through a freshly opened store (which replays the versions first);
(c) Streamlit AppTest: first run of the app (Captions is the default page) in a fresh process, a
    rerun, a page change, a status filter, and saving one edited caption (click to new version shown);
(d) when Chromium is installed: a real browser on a freshly started studio server, time from
    navigation to the title and to the caption grid (first and second visit).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10"
STORE = "cifar10"


def setup(project_dir: Path, data: Path) -> None:
    """Store 'cifar10' with 50k imported captions and a caption run recording the dataset."""
    from pipeline.caption import CaptionConfig, caption
    from pipeline.captions.formats import import_captions
    from pipeline.core.project import Project
    from pipeline.data.datasets import DatasetConfig, load_dataset

    project = Project.open(project_dir)
    if STORE in project.caption_stores():
        return
    config = DatasetConfig(source="parquet", path=str(data))
    store = project.caption_store(STORE, create=True)
    import_captions(store, data / "blip2_captions_by_class.json", "tckr-json", load_dataset(config))
    # every training image has a caption, so this only records the dataset for the studio
    caption(CaptionConfig(dataset=config, store=STORE), project)


def timed(fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started


def page_data(project_dir: Path) -> list[tuple[str, float, float]]:
    """(a): the calls studio/views/captions.py makes to show the first page, cold then warm."""
    from pipeline.views.report import dataset_config_for_store
    from studio import shared

    root = str(Path(project_dir).resolve())
    project = shared._open_project(root)
    rows = []

    def both(name, fn, *args):
        value, cold = timed(fn, *args)
        _, warm = timed(fn, *args)
        rows.append((name, cold, warm))
        return value

    store = both("open store + head", lambda: shared.store(root, STORE).head())
    config = both("dataset of the store (registry)", dataset_config_for_store, project, STORE)
    records = both("records (50k captions)", shared.records, root, STORE, store)
    both("load dataset (60k images, encoded)", shared.dataset, config)
    ids = both("filter: all", shared.filtered_ids, root, STORE, store, (), "", "all")
    both("filter: needs review", shared.filtered_ids, root, STORE, store, (), "", "needs review")
    both("filter: text 'red'", shared.filtered_ids, root, STORE, store, (), "red", "all")
    both("thumbnails of one page (24)", shared.thumbnails, shared.dataset_key(config), tuple(ids[:24]))
    assert len(records) == 50_000
    return rows


def edit_latency(project_dir: Path, n: int = 20) -> dict[str, list[float]]:
    """(b): one-caption edits, median of ``n``."""
    from pipeline.captions.store import CaptionStore

    path = Path(project_dir) / "captions" / STORE
    store = CaptionStore.open(path, create=False)
    image_id = sorted(store.records())[0]
    warm, cold = [], []
    for k in range(n):
        _, seconds = timed(store.edit, {image_id: f"benchmark edit {k}"}, store.head())
        warm.append(seconds)
    for k in range(5):
        fresh = CaptionStore.open(path, create=False)  # a new process / a store nobody cached
        _, seconds = timed(fresh.edit, {image_id: f"benchmark cold edit {k}"}, fresh.head())
        cold.append(seconds)
    return {"warm": warm, "cold": cold}


def apptest(project_dir: Path) -> dict[str, float]:
    """(c), run in a fresh process so that no cache is warm."""
    os.environ["TCKR_PROJECT"] = str(project_dir)
    from streamlit.testing.v1 import AppTest

    # Streamlit's own first-run cost (scanning installed packages for components) is paid once per
    # process, at server start in real use: pay it on a trivial script so it is reported apart
    _, overhead = timed(AppTest.from_string("import streamlit as st\nst.write('warm-up')").run)
    at = AppTest.from_file(str(ROOT / "studio" / "app.py"), default_timeout=120)
    _, first = timed(at.run)
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.data_editor[0].value) == 24
    _, rerun = timed(at.run)
    page = next(w for w in at.number_input if w.label.startswith("Page"))
    page.set_value(2)
    _, next_page = timed(at.run)
    save = save_one(at, "a benchmark edit")
    at.radio(key="cap_status").set_value("needs review")
    _, review = timed(at.run)
    save_filtered = save_one(at, "another benchmark edit")
    return {"AppTest warm-up (trivial script, once per process)": overhead, "first run (cold caches)": first,
            "rerun (warm)": rerun, "next page": next_page,
            "save one edit (click -> new version shown)": save,
            "status filter 'needs review'": review,
            "save one edit, 'needs review' filter on": save_filtered}


def save_one(at, text: str) -> float:
    """Type one caption into the grid, press Save; seconds until the page shows the new version."""
    key = at.data_editor[0].key
    at.session_state[key] = {"edited_rows": {0: {"caption": text}}, "added_rows": [], "deleted_rows": []}
    at.run()
    at.button(key="cap_save").click()
    _, seconds = timed(at.run)
    assert "Saved 1 caption(s)" in at.success[0].value
    return seconds


def browser_paint(project_dir: Path) -> dict[str, float] | None:
    """(d): seconds from page.goto to the title and to the grid, in headless Chromium."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        return None
    import socket
    import urllib.request

    from playwright.sync_api import sync_playwright

    from pipeline.core.launch import child_env, studio_command

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(studio_command(project_dir, port=port), env=child_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    out = {}
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=args)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for visit in ("first visit (cold server)", "second visit"):
                started = time.perf_counter()
                page.goto(url)
                page.get_by_role("heading", name="Captions").wait_for(timeout=60_000)
                out[f"{visit}: title"] = time.perf_counter() - started
                page.locator('[data-testid="stDataFrame"] canvas').first.wait_for(timeout=60_000)
                out[f"{visit}: caption grid"] = time.perf_counter() - started
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=10)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=None, help="reuse this project (default: a temp folder)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 parquet folder")
    parser.add_argument("--apptest-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # Streamlit warns about running its caches outside a server
    if args.apptest_only:
        print(json.dumps(apptest(args.project)))
        return 0
    if not args.data.is_dir():
        print(f"no CIFAR-10 at {args.data}; pass --data", file=sys.stderr)
        return 1
    temp = args.project is None
    project_dir = Path(tempfile.mkdtemp(prefix="tckr-bench-")) if temp else args.project
    try:
        _, seconds = timed(setup, project_dir, args.data)
        print(f"project {project_dir} ready in {seconds:.1f} s\n")
        # (c) first, in its own process: nothing cached yet
        out = subprocess.run([sys.executable, __file__, "--apptest-only", "--project", str(project_dir)],
                             check=True, capture_output=True, text=True).stdout
        app = json.loads(out.strip().splitlines()[-1])
        print("(a) Captions page data path, 50,000 captions    cold s   warm s")
        for name, cold, warm in page_data(project_dir):
            print(f"    {name:<42} {cold:7.3f}  {warm:7.4f}")
        edits = edit_latency(project_dir)
        print("\n(b) CaptionStore.edit, one caption, 50k store     median s   max s")
        print(f"    studio's cached store (n={len(edits['warm'])})               "
              f"{statistics.median(edits['warm']):8.4f}  {max(edits['warm']):6.3f}")
        print(f"    freshly opened store (n={len(edits['cold'])})                 "
              f"{statistics.median(edits['cold']):8.4f}  {max(edits['cold']):6.3f}")
        print("\n(c) AppTest, Captions page on the 50k store      s")
        for name, seconds in app.items():
            print(f"    {name:<52} {seconds:6.3f}")
        paint = browser_paint(project_dir)
        if paint:
            print("\n(d) headless Chromium, Captions page on the 50k store   s")
            for name, seconds in paint.items():
                print(f"    {name:<52} {seconds:6.3f}")
    finally:
        if temp:
            shutil.rmtree(project_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
