"""Issue 12, trade-offs for stakeholders: the report (pipeline.views.stakeholder) on a hand-made run folder.

The run is experiment-shaped but written by hand (metrics.json, one synthetic round of known PNGs, a
memorisation audit that flags one near-copy), so no experiment runs here. The near-copy is a real digit
planted in the synthetic folder: the report must leave it out, and no image it embeds may equal a real one.
"""

from __future__ import annotations

import base64
import io
import json
import re
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from pipeline.core.common import write_json
from pipeline.data.datasets import DatasetConfig, load_dataset
from pipeline.views import stakeholder
from pipeline.views.legend import model_name
from pipeline.views.report import points_from_metrics

APP = str(Path(__file__).resolve().parents[1] / "studio" / "app.py")
CLASSES = [str(d) for d in range(10)]
PLANTED = "digit-0042"  # the real image planted in the synthetic round as a flagged near-copy
GKD, AM, BSS, DP8 = (model_name(k) for k in ("student", "am", "bss", "dp-sgd ε=8"))  # the models in words


def model(acc: float, auc: float, ci: tuple[float, float], mode: str = "transfer", n_nonmembers: int = 50,
          tpr1: float | None = None, empirical_epsilon: float = 0.25, **extra) -> dict:
    mia = {"auc": auc, "auc_ci95": list(ci), "attack": "rmia", "mia_mode": mode, "n_members": 60,
           "empirical_epsilon": empirical_epsilon, "empirical_epsilon_delta": 1e-5,
           "n_nonmembers": n_nonmembers, "fpr_floor": 1 / n_nonmembers, "tpr_at_1pct_fpr": tpr1,
           "tpr_at_0.1pct_fpr": None, "roc": {"fpr": [0.0, 0.02, 0.5, 1.0], "tpr": [0.0, 1 / 60, 0.6, 1.0]}}
    return {"accuracy": acc, "aop": acc / (2 * auc) ** 2, "per_class_accuracy": [acc] * 10, "mia": mia,
            "mia_modes": {mode: mia}, **extra}


def run_metrics(student_acc: float = 0.9424, student_ci: tuple[float, float] = (0.565, 0.605),
                dp_acc: float = 0.8, copies: int = 1) -> dict:
    """A compare-methods run: teacher, GKD student (pipeline mode), am, bss (reads real), DP-SGD ε=8."""
    method = {"history": [], "train": {}}
    return {
        "teacher": model(0.95, 0.634, (0.61, 0.658), n_nonmembers=200, tpr1=0.0731),
        "student": model(student_acc, 0.588, student_ci, mode="pipeline"),
        "methods": {
            "am": model(0.6, 0.51, (0.47, 0.55), "pipeline", method="am", epsilon=None,
                        reads_real_training_images=False, **method),
            "bss": model(0.93, 0.62, (0.59, 0.65), "pipeline", method="bss", epsilon=None,
                         reads_real_training_images=True, **method),
            "dp-sgd ε=8": model(dp_acc, 0.52, (0.49, 0.55), "pipeline", method="dp-sgd", epsilon=7.9987,
                                reads_real_training_images=True, **method)},
        "audit": {"headline_attack": "rmia", "shadows": {"transfer": {"n": 4}, "pipeline": {"n": 2}}},
        "dataset": {"name": "digits", "members": 60, "nonmembers": 50, "test": 40},
        "synthetic": {"rounds": 1, "images_per_round": 12, "cardinality": 0.2},
        "generator": {"backend": "scratch", "steps": 6},
        "memorisation": {"copies": copies, "copy_rate": copies / 12},
    }


def synthetic_png(seed: int) -> bytes:
    """An 8x8 colour-noise image: nothing like a grey digit scan."""
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_round(run_dir: Path, n: int = 12) -> dict[str, bytes]:
    """synthetic/round-0 as generate.py leaves it (plan, manifest, images/<class>/) with a memorisation
    audit whose first image is a planted real digit flagged as a near-copy (first: a report that did not
    skip it would show it). Returns file -> bytes of the n synthetic images."""
    folder = run_dir / "synthetic" / "round-0"
    files, manifest, neighbours = {}, [], []
    real = load_dataset(DatasetConfig()).load_image(PLANTED)
    for i in range(n + 1):
        label = i % 10
        name = f"images/{label}/r00-{i:06d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if i:
            files[name] = synthetic_png(i)
            (folder / name).write_bytes(files[name])
        else:
            real.save(folder / name)
        manifest.append({"index": i, "label": label, "prompt": f"{label}: a handwritten digit {label}",
                         "file": name, "class": CLASSES[label], "round": 0})
        neighbours.append({"index": i, "file": name, "label": label,
                           "features": {"member": PLANTED, "member_distance": 0.3 if i else 0.0, "copy": not i},
                           "pixels": {"member": PLANTED, "member_distance": 6.0 if i else 0.0, "copy": not i}})
    write_json(folder / "plan.json", {"class_names": CLASSES, "items": manifest})
    for name, rows in (("manifest.jsonl", manifest), ("neighbours.jsonl", neighbours)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return files


def add_run(project, metrics: dict | None = None) -> tuple[str, dict[str, bytes]]:
    registry = project.registry()
    run = registry.create("experiment", {"dataset": {"source": "digits"}})
    registry.start(run.id)
    write_json(run.run_dir / "metrics.json", metrics or run_metrics())
    files = write_round(run.run_dir)
    registry.finish(run.id, teacher_accuracy=0.95)
    return run.id, files


def fake_png(*_, **__) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), "white").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def built(project, tmp_path, monkeypatch):
    """(report, synthetic files) of one run; kaleido replaced by a fixed PNG (the real one takes seconds)."""
    monkeypatch.setattr(stakeholder, "plot_png", fake_png)
    run_id, files = add_run(project)
    return stakeholder.build_report(stakeholder.ReportConfig((run_id,), out_dir=tmp_path / "out"), project), files


class _Resources(HTMLParser):
    """Tags and attributes of a page outside <script> / <style> text, and the text of <style> blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_style = tag == "style"

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)
            self._in_style = False


def embedded_images(page: str) -> list[bytes]:
    """Every base64 data-URI image anywhere in the page (plotly.js's own included)."""
    return [base64.b64decode(m.group(1)) for m in re.finditer(r"data:image/(?:png|jpeg|gif|webp);base64,([A-Za-z0-9+/=]+)", page)]


def is_real(data: bytes, real: set[bytes]) -> bool:
    """Whether an encoded image has the pixels of a real 8x8 image, as it is or enlarged / shrunk."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if np.asarray(image).tobytes() in real:
        return True
    return image.width % 8 == 0 and image.height % 8 == 0 and \
        np.asarray(image.resize((8, 8), Image.Resampling.NEAREST)).tobytes() in real


# -- the HTML ------------------------------------------------------------------------------------------------
def test_html_loads_nothing_from_the_network(built):
    report, _ = built
    page = report.html.read_text(encoding="utf-8")
    parser = _Resources()
    parser.feed(page)
    assert parser.tags, "the page did not parse"
    external = re.compile(r"^\s*(https?:)?//", re.I)
    for tag, attrs in parser.tags:
        assert tag not in ("link", "iframe", "object", "embed"), tag
        assert not (tag == "script" and "src" in attrs), attrs
        for name in ("src", "href", "srcset", "data", "poster", "action"):
            assert not external.match(attrs.get(name, "")), (tag, attrs)
    assert not any("@import" in s or re.search(r"url\(\s*['\"]?(https?:)?//", s) for s in parser.styles)
    # plotly.js itself is inline, so the plot draws offline
    assert "plotly.js v" in page and "Plotly.newPlot" in page


def test_html_has_the_table_values_setup_and_conclusions_of_the_metrics(built):
    report, _ = built
    page = report.html.read_text(encoding="utf-8")
    metrics = run_metrics()
    for m in [metrics["teacher"], metrics["student"], *metrics["methods"].values()]:
        assert f"<td>{round(m['accuracy'], 4)}</td>" in page
        assert f"<td>{round(m['mia']['auc'], 4)}</td>" in page
        lo, hi = m["mia"]["auc_ci95"]
        assert f"[{lo:.3f}, {hi:.3f}]" in page
        assert f"<td>{round(m['aop'], 4)}</td>" in page
    assert "<td>0.0731</td>" in page  # the teacher's audit has 200 non-members: 1% FPR is measurable
    assert page.count("<td>n/a</td>") == 4  # 50 non-members: one false positive is already 2% FPR
    assert "<td>8.00</td>" in page and f"<td>{GKD}</td>" in page and "<td>pipeline</td>" in page
    for text in ("60 members (training images), 50 non-members", "scratch, 6 training steps", "transfer: 4, pipeline: 2",
                 "keeps 99.2 % of the teacher", "lowers the RMIA AUC from 0.634 to 0.588", "do not overlap",
                 f"The {DP8} has the best accuracy–privacy trade-off (AOP 0.740",
                 f"The {DP8} gives up more accuracy than the {GKD}",
                 f"Formal ε, a guarantee proven by differential privacy: the {DP8} has ε = 8.00",
                 "Empirical ε is an attack's lower bound, not a guarantee", "Empirical ε: an attack's lower bound",
                 "GKD: generative knowledge distillation", "MIA AUC: how well", "0.5 = a coin flip"):
        assert text in page.replace("&#x27;", "'"), text


def test_html_shows_synthetic_examples_and_never_a_real_image(built):
    report, files = built
    images = embedded_images(report.html.read_text(encoding="utf-8"))
    # no embedded image is a real one: not the planted near-copy, not any image of the dataset
    dataset = load_dataset(DatasetConfig())
    real = {np.asarray(image).tobytes() for _, image in dataset.iter_images()}
    assert np.asarray(dataset.load_image(PLANTED)).tobytes() in real
    leaked = [i for i, data in enumerate(images) if is_real(data, real)]
    assert not leaked, f"embedded images {leaked} (of {len(images)}) are real dataset images"
    # the synthetic ones are there, one class after another
    shown = [b for b in images if b in set(files.values())]
    assert len(shown) == 6 == len(report.examples)  # ReportConfig.examples
    assert {e.class_name for e in report.examples} == {"0", "1", "2", "3", "4", "5"}


def test_examples_skip_near_copies_and_files_outside_the_round(project, tmp_path):
    run_id, _ = add_run(project)
    run_dir = project.registry().get(run_id).run_dir
    manifest = run_dir / "synthetic" / "round-0" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(synthetic_png(99))
    rows.append({**rows[0], "index": 99, "file": "../../../../elsewhere.png"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    picked = stakeholder.synthetic_examples(run_id, run_dir, 100)
    assert len(picked) == 12  # 13 listed images and one escaping path: the near-copy and the escape left out
    assert all((run_dir / "synthetic" / "round-0" / "images") in e.path.parents for e in picked)


# -- conclusions ---------------------------------------------------------------------------------------------
def test_conclusions_follow_the_numbers():
    base = " ".join(stakeholder.conclusions(points_from_metrics("r", run_metrics()), run_metrics()["memorisation"]))
    assert "keeps 99.2 % of the teacher's accuracy (0.942 against 0.950)" in base
    assert "the 95% intervals do not overlap" in base
    assert f"The {DP8} has the best accuracy–privacy trade-off (AOP 0.740; the teacher's is 0.591)" in base
    assert f"The {DP8} gives up more accuracy than the {GKD}: accuracy 0.800 against 0.942" in base
    assert f"Like the teacher, the {BSS} and the {DP8} read the real training images; the {GKD} and the {AM} never" in base
    assert "1 synthetic image (8.3 %) was flagged as a near-copy" in base
    other = run_metrics(student_acc=0.90, student_ci=(0.55, 0.62), dp_acc=0.97, copies=0)
    changed = " ".join(stakeholder.conclusions(points_from_metrics("r", other), other["memorisation"]))
    assert "keeps 94.7 % of the teacher's accuracy" in changed and "the 95% intervals overlap" in changed
    assert f"The {DP8} gives up less accuracy than the {GKD}: accuracy 0.970 against 0.900" in changed
    assert "No synthetic image was flagged" in changed
    best = max(points_from_metrics("r", other), key=lambda p: p.aop)
    assert f"The {best.name} has the best accuracy–privacy trade-off (AOP {best.aop:.3f}" in changed


def test_epsilon_findings_say_which_figure_is_a_guarantee_and_flag_a_broken_claim():
    metrics = run_metrics()
    found = stakeholder.epsilon_findings(points_from_metrics("r", metrics))
    assert found[0] == (f"Formal ε, a guarantee proven by differential privacy: the {DP8} has ε = 8.00. No guarantee "
                        f"for the teacher (real data), the {GKD}, the {AM} and the {BSS}.")
    assert found[1].startswith("Empirical ε is an attack's lower bound, not a guarantee") and len(found) == 2
    metrics["methods"]["dp-sgd ε=8"]["mia"]["empirical_epsilon"] = 9.1  # the attack proves more than the claim
    found = stakeholder.epsilon_findings(points_from_metrics("r", metrics))
    assert f"exceeds the claimed guarantee of the {DP8} (9.10 > 8.00): its DP training" in found[2]
    metrics["methods"] = {}
    assert stakeholder.epsilon_findings(points_from_metrics("r", metrics))[0].startswith("No model here has a privacy")


def test_best_trade_off_and_chance_findings():
    metrics = run_metrics()
    metrics["methods"] = {}
    metrics["student"] = model(0.5, 0.70, (0.68, 0.72))  # worse on both counts: the teacher stays best
    found = stakeholder.conclusions(points_from_metrics("r", metrics))
    assert any(f.startswith("The teacher itself has the best") for f in found)
    assert "The attack beats a coin flip on every model" in " ".join(found)
    assert "raises the RMIA AUC from 0.634 to 0.700" in found[0]
    metrics["student"] = model(0.9, 0.5, (0.45, 0.55))
    found = stakeholder.conclusions(points_from_metrics("r", metrics))
    assert f"Against the {GKD}, the attack does no better than a coin flip: its AUC's 95% interval includes 0.5." \
        in found


# -- the PDF -------------------------------------------------------------------------------------------------
def pdf_text(data: bytes) -> str:
    """The text of an fpdf2 PDF set in Helvetica (Latin-1 strings inside its zlib content streams)."""
    out = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            out.append(zlib.decompress(stream).decode("latin-1"))
        except zlib.error:
            continue
    return "\n".join(out)


def test_pdf_has_the_plot_table_and_examples(built):
    report, _ = built
    data = report.pdf.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert report.plot_in_pdf and not report.notes
    assert data.count(b"/Subtype /Image") == 1 + len(report.examples)  # the plot and the synthetic examples


def test_pdf_without_a_browser_keeps_the_table_and_says_so(project, tmp_path, monkeypatch):
    def no_browser(*_, **__):
        raise RuntimeError("Kaleido requires Google Chrome to be installed.")

    monkeypatch.setattr(stakeholder, "plot_png", no_browser)
    monkeypatch.setattr(stakeholder, "unicode_font", lambda: None)  # Helvetica: the text is readable below
    run_id, _ = add_run(project)
    report = stakeholder.build_report(stakeholder.ReportConfig((run_id,), out_dir=tmp_path / "out"), project)
    assert not report.plot_in_pdf and "Chrome" in report.notes[0]
    data = report.pdf.read_bytes()
    assert data.count(b"/Subtype /Image") == len(report.examples)
    text = pdf_text(data)
    assert "The plot is not in this PDF" in text and "0.9424" in text and "[0.565, 0.605]" in text
    assert r"DP-SGD classifier on real data \(eps=8\) gives up" in text  # ε spelt out in Latin-1; ( ) escaped
    assert report.html.exists() and "Plotly.newPlot" in report.html.read_text(encoding="utf-8")


def test_report_refuses_runs_that_are_not_finished_experiments(project, tmp_path):
    running = project.registry().create("experiment", {})
    with pytest.raises(ValueError, match="finished experiment"):
        stakeholder.build_report(stakeholder.ReportConfig((running.id,), out_dir=tmp_path), project)
    with pytest.raises(ValueError, match="at least one"):
        stakeholder.build_report(stakeholder.ReportConfig(()), project)


def test_cli_report_writes_both_files(project, tmp_path, capsys):
    from pipeline.cli.main import main

    run_id, _ = add_run(project)
    out = tmp_path / "cli"
    assert main(["report", "--project", str(project.root), "--run", run_id, "--out", str(out), "--no-plot-image"]) == 0
    assert (out / "report.html").exists() and (out / "report.pdf").exists()
    assert json.loads((out / "report.json").read_text())["runs"] == [run_id]
    assert "opens offline" in capsys.readouterr().out


# -- the Trade-offs page ---------------------------------------------------------------------------------------
def test_tradeoffs_page_zooms_and_builds_the_report(project, monkeypatch):
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    monkeypatch.setattr(stakeholder, "plot_png", fake_png)
    run_id, _ = add_run(project)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/tradeoffs.py").run()
    assert not at.exception, [e.message for e in at.exception]

    def x_range() -> list[float]:
        return json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]["range"]

    lo, hi = x_range()
    assert 0.4 < lo < 0.47 and 0.66 < hi < 0.72  # the AUCs and their intervals (0.47 .. 0.658), padded
    at.toggle(key="to_zoom").set_value(False).run()
    assert x_range() == [0.0, 1.0]
    table = at.table[0].value
    assert {"audit", "AUC 95% CI", "TPR@1%FPR", "formal ε", "empirical ε"} <= set(table.columns)
    assert table.loc[table["model"] == DP8, "formal ε"].item() == "8.00"
    assert table.loc[table["model"] == "teacher (real data)", "formal ε"].item() == "none"
    assert table.loc[table["model"] == "teacher (real data)", "empirical ε"].item() == "0.25"

    assert not [d for d in at.get("download_button") if d.proto.label.startswith("Report")]
    at.button(key="to_report").click().run()
    assert not at.exception, [e.message for e in at.exception]
    labels = [d.proto.label for d in at.get("download_button")]
    assert "Report (HTML)" in labels and "Report (PDF)" in labels
    built = at.session_state["to_report_built"]
    assert built.run_ids == (run_id,) and built.html.exists() and built.pdf.exists()
    assert built.html.parent.parent == project.root / "reports"

    def no_browser(*_, **__):
        raise RuntimeError("no Chrome")

    monkeypatch.setattr(stakeholder, "plot_png", no_browser)
    at.button(key="to_report").click().run()
    assert any("The PDF has no plot" in w.value for w in at.warning)


# -- issue 25 item 5: no unexplained term, models named in words --------------------------------------------------
def test_the_coin_flip_finding_names_one_or_several_models_in_words():
    metrics = run_metrics()
    metrics["methods"] = {"am": metrics["methods"]["am"]}  # the only interval that includes 0.5
    one = stakeholder.chance_finding(points_from_metrics("r", metrics))
    assert one == f"Against the {AM}, the attack does no better than a coin flip: its AUC's 95% interval includes 0.5."
    several = stakeholder.chance_finding(points_from_metrics("r", run_metrics()))
    assert several == (f"Against the {AM} and the {DP8}, the attack does no better than a coin flip: each AUC's 95% "
                       "interval includes 0.5.")
    found = " ".join(stakeholder.conclusions(points_from_metrics("r", run_metrics())))
    assert not re.search(r"\b(am|bss|gkd|dp-sgd)\b", found)  # no method's key in a sentence


def test_tradeoffs_page_explains_its_terms_and_names_every_model_in_words(project, monkeypatch):
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    add_run(project)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/tradeoffs.py").run()
    assert not at.exception, [e.message for e in at.exception]
    glossary = next(e for e in at.expander if e.label == "What the terms mean")
    text = " ".join(m.value for m in glossary.markdown)
    for term in ("GKD", "Activation maximisation", "Cardinality", "AOP", "0.5 = a coin flip", "transfer", "pipeline",
                 "Formal ε", "Empirical ε", "TPR@1%FPR", "Pareto front", "RMIA", "ROC curve", "Shadow models"):
        assert term in text, term
    # the table: every model in words, no method's key, no column that says the same for every row
    table = at.table[0].value
    assert list(table["model"]) == ["teacher (real data)", GKD, AM, BSS, DP8]
    assert not {"run", "dataset", "generator", "cardinality", "attack"} & set(table.columns)
    # the plot's legend and the ROC picker: the same words
    plot = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["name"] for t in plot["data"] if t.get("mode") == "markers"} == set(table["model"])
    assert at.multiselect(key="to_roc_models").options == ["teacher (real data)", GKD, AM, BSS, DP8]
    assert "synthetic images per member" in at.multiselect(key="to_cards").label


def test_report_without_chromium_falls_back_and_says_how_to_get_one(project, tmp_path, monkeypatch):
    """kaleido itself, pointed at no browser: the HTML has the plot, the PDF the rest, the note how to get one."""
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium"))
    run_id, _ = add_run(project)
    report = stakeholder.build_report(stakeholder.ReportConfig((run_id,), out_dir=tmp_path / "out"), project)
    assert not report.plot_in_pdf and report.pdf.read_bytes().startswith(b"%PDF-")
    assert "Plotly.newPlot" in report.html.read_text(encoding="utf-8")
    assert "`apt install chromium`" in report.notes[0] and "plotly_get_chrome" in report.notes[0]
