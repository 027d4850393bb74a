"""How responsive the studio's Captions page is on CIFAR-10's 50,000 captions (issue 12 goals: first paint
≤ 2 s, a save shown ≤ 200 ms).

    python benchmarks/studio_captions.py [--data ../shared/datasets/cifar10] [--project DIR] [--repeats 3]

Builds (or reuses) a project with store ``cifar10``: the 50k TCKR BLIP-2 captions of
``blip2_captions_by_class.json`` imported with ``formats.import_captions`` (the file is a per-class pool,
so the k-th caption of a class goes to the k-th training image of the class: right size and text, not
the image's own caption), plus a caption run that records the dataset, as the studio expects. Then, in
``--repeats`` fresh processes (nothing cached), Streamlit's AppTest measures the Captions page:

- first paint: the first script run of a new session, cold (fresh process: 60k images and 50k captions
  loaded) and warm (another session of the same server: caches filled), and a rerun;
- one save: ``CaptionStore.edit`` of one caption through the studio's cached store (the call the page's
  Save makes), and the whole rerun after pressing Save, in the viewer and in the grid (what the
  curator waits for: the new version shown); plus next image and mark reviewed in the viewer.

Prints a Markdown table of medians. AppTest times the script run on the server side; a browser adds
sending and drawing the page.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.captions.store import caption_store, caption_stores

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10"
CAPTIONS = "blip2_captions_by_class.json"
STORE = "cifar10"
WARM_RUNS = 5  # warm measurements per process
GOALS = {"paint": 2.0, "save": 0.2}  # seconds


def setup(project_dir: Path, data: Path) -> None:
    """Store 'cifar10' with 50k imported captions and a caption run recording the dataset."""
    from pipeline.caption import CaptionConfig, caption
    from pipeline.captions.formats import import_captions
    from pipeline.core.project import Project
    from pipeline.data.datasets import DatasetConfig, load_dataset

    project = Project.open(project_dir)
    if STORE in caption_stores(project):
        return
    config = DatasetConfig(source="parquet", path=str(data))
    store = caption_store(project, STORE, create=True)
    import_captions(store, data / CAPTIONS, "tckr-json", load_dataset(config), assign_in_order=True)
    # every training image has a caption, so this only records the dataset for the studio
    caption(CaptionConfig(dataset=config, store=STORE), project)


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(project_dir: Path) -> dict[str, list[float]]:
    """One fresh process: every figure of the table, in seconds."""
    os.environ["TCKR_PROJECT"] = str(project_dir)
    from streamlit.components.v2.component_manager import BidiComponentManager
    from streamlit.testing.v1 import AppTest

    from studio import shared

    app = str(ROOT / "studio" / "app.py")
    out: dict[str, list[float]] = {}
    tag = os.getpid()  # edits differ from those of earlier runs on a reused project

    def add(name: str, seconds: float) -> None:
        out.setdefault(name, []).append(seconds)

    # Streamlit scans the installed packages for components once per server, at start-up; AppTest does it
    # again for every new AppTest (every "session"): scan once here and share it, as a server does
    components = BidiComponentManager()
    add("startup", timed(lambda: components.discover_and_register_components(start_file_watching=False)))

    def session() -> AppTest:
        at = AppTest.from_file(app, default_timeout=300)
        at._bidi_component_manager = components  # private, see above
        at.session_state[shared.CURATOR] = "benchmark"
        return at

    at = session()
    add("paint_cold", timed(at.run))
    check(at)
    assert len(at.data_editor[0].value) == 24
    for _ in range(WARM_RUNS):
        add("paint_warm", timed(session().run))
        add("rerun", timed(at.run))
    # the store's edit call as the page's Save makes it
    root = str(Path(project_dir).resolve())
    store = shared.store(root, STORE)
    image_id = at.data_editor[0].value["id"].iloc[0]
    for k in range(WARM_RUNS):
        edit = {image_id: f"benchmark edit {tag}-{k}"}
        add("store_edit", timed(lambda: store.edit(edit, store.head(), author="benchmark")))  # noqa: B023
    # the whole rerun after Save, in the grid and in the viewer
    at = session().run()
    for k in range(WARM_RUNS):
        key = at.data_editor[0].key
        at.session_state[key] = {"edited_rows": {1: {"caption": f"grid edit {tag}-{k}"}}, "added_rows": [],
                                 "deleted_rows": []}
        at.run()
        at.button(key="cap_save").click()
        add("save_grid", timed(at.run))
        assert any("Saved 1 caption(s)" in s.value for s in at.success), [e.value for e in at.error]
    at.segmented_control(key="cap_mode").set_value("Viewer").run()
    for k in range(WARM_RUNS):
        (box,) = [t for t in at.text_area if t.key.startswith("cap_vtext_")]
        box.input(f"viewer edit {tag}-{k}").run()
        at.button(key="view_save").click()
        add("save_viewer", timed(at.run))
        assert any("Saved the caption" in s.value for s in at.success), [e.value for e in at.error]
        at.button(key="view_next").click()
        add("next", timed(at.run))
        at.button(key="view_review").click()
        add("review", timed(at.run))
        check(at)
    return out


def check(at: Any) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


ROWS = [  # (key, what, goal)
    ("startup", "Streamlit's component scan (once per server, at start-up; not in the paints)", None),
    ("paint_cold", "first paint, cold: new process, loads 60k images + 50k captions", "paint"),
    ("paint_warm", "first paint, warm: a new session (browser tab), caches filled", "paint"),
    ("rerun", "rerun of the page (any widget change), warm", None),
    ("store_edit", "`CaptionStore.edit` of one caption (the studio's cached store)", "save"),
    ("save_viewer", "viewer: Save pressed → new version shown (whole rerun)", "save"),
    ("save_grid", "grid: Save pressed → new version shown (whole rerun)", "save"),
    ("next", "viewer: Next image (whole rerun)", None),
    ("review", "viewer: Mark reviewed → next image shown (whole rerun)", None),
]


def table(samples: dict[str, list[float]]) -> str:
    lines = ["| measurement | median | min | max | n | goal |", "|---|---:|---:|---:|---:|---|"]
    for key, what, goal in ROWS:
        values = samples.get(key, [])
        if not values:
            continue
        median = statistics.median(values)
        verdict = ""
        if goal:
            verdict = f"≤ {GOALS[goal] * 1000:.0f} ms " + ("✓" if median <= GOALS[goal] else "✗ missed")
        lines.append(f"| {what} | {ms(median)} | {ms(min(values))} | {ms(max(values))} | {len(values)} | {verdict} |")
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 parquet folder with " + CAPTIONS)
    parser.add_argument("--project", type=Path, default=None, help="reuse this project (default: a temp folder)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes (cold first paints)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # Streamlit warns about running its caches outside a server
    if args.child:
        print(json.dumps(measure(args.project)))
        return 0
    if not (args.data / CAPTIONS).is_file():
        print(f"skipped: no CIFAR-10 captions at {args.data / CAPTIONS} (see ../shared/datasets/README.md); "
              "pass --data DIR")
        return 0
    temp = args.project is None
    project_dir = Path(tempfile.mkdtemp(prefix="tckr-bench-")) / "project" if temp else args.project
    try:
        seconds = timed(lambda: setup(project_dir, args.data))
        print(f"project {project_dir} ready in {seconds:.1f} s (50,000 captions imported)\n")
        samples: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # each in a fresh process: nothing cached
            child = subprocess.run([sys.executable, __file__, "--child", "--project", str(project_dir)],
                                   capture_output=True, text=True)
            if child.returncode:
                print(child.stderr, file=sys.stderr)
                return 1
            out = child.stdout
            for key, values in json.loads(out.strip().splitlines()[-1]).items():
                samples.setdefault(key, []).extend(values)
        load = os.getloadavg()[0]
        print(f"Captions page on 50,000 CIFAR-10 captions, {args.repeats} fresh processes × {WARM_RUNS} warm "
              f"samples, {os.cpu_count()} CPUs, load average {load:.1f}\n")
        print(table(samples))
    finally:
        if temp:
            shutil.rmtree(project_dir.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
