"""pipeline.views.synthetic_set and the Synthetic set page: an experiment's actual synthetic training
images with their prompts, the teacher's labels and confidences, copy flags and filters.

The run is the shared tiny audited experiment of conftest's ``audited_run`` (built once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from pipeline.classifiers.models import build_classifier
from pipeline.classifiers.train import TrainConfig, images_to_tensor
from pipeline.core.common import from_dict
from pipeline.data.datasets import load_dataset
from pipeline.views import synthetic_set
from pipeline.views.synthetic_set import Neighbour, SyntheticFilter, SyntheticImage

APP = str(Path(__file__).resolve().parents[1] / "studio" / "app.py")


@pytest.fixture(scope="module")
def run(audited_run):
    """(project, experiment run id, its synthetic set view)."""
    project, run_id = audited_run
    return project, run_id, synthetic_set.load_synthetic_set(project, run_id)


def manifest(run_dir: Path, k: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "synthetic" / f"round-{k}" / "manifest.jsonl").read_text().splitlines()]


# -- pure filters -----------------------------------------------------------------------------------------------------
def _image(k: int, label: int, teacher: int, copy: bool) -> SyntheticImage:
    audit = {"features": Neighbour("m", 0.1, "n", 0.2, copy)}
    return SyntheticImage(k, 0, Path("x.png"), label, str(label), "p", audit, teacher, 0.9)


def test_filters_and_class_fidelity():
    images = [_image(0, 0, 0, False), _image(0, 1, 0, True), _image(1, 1, 1, False), _image(1, 2, 0, True)]
    pick = synthetic_set.filter_images
    assert pick(images, SyntheticFilter()) == images
    assert pick(images, SyntheticFilter(rounds=(1,))) == images[2:]
    assert pick(images, SyntheticFilter(classes=(1, 2))) == images[1:]
    assert pick(images, SyntheticFilter(only_misclassified=True)) == [images[1], images[3]]
    assert pick(images, SyntheticFilter(only_flagged=True, rounds=(0,))) == [images[1]]
    assert synthetic_set.class_fidelity(images) == pytest.approx(0.5)
    assert synthetic_set.summary(images) == {"images": 4, "class_fidelity": 0.5, "confidence": pytest.approx(0.9),
                                             "flagged": 2}
    assert synthetic_set.class_fidelity([SyntheticImage(0, 0, Path("x"), 0, "0", "p")]) is None


# -- the run ------------------------------------------------------------------------------------------------------------
def test_every_synthetic_training_image_with_its_prompt_and_audit(run):
    project, run_id, view = run
    run_dir = project.runs_dir / run_id
    assert view.rounds() == [0, 1] and view.class_names == [str(i) for i in range(10)]
    lines = manifest(run_dir, 0) + manifest(run_dir, 1)
    assert len(view.images) == len(lines)
    for image, line in zip(view.images, lines):
        assert image.path == run_dir / "synthetic" / f"round-{line['round']}" / line["file"] and image.path.exists()
        assert (image.prompt, image.label, image.class_name) == (line["prompt"], line["label"], line["class"])
    # the memorisation audit's nearest member and copy flag, joined by index
    for k in (0, 1):
        rows = [json.loads(line) for line in (run_dir / "synthetic" / f"round-{k}" / "neighbours.jsonl").read_text()
                .splitlines()]
        mine = {im.index: im for im in view.images if im.round == k}
        for row in rows:
            for space in ("features", "pixels"):
                n = mine[row["index"]].neighbours[space]
                assert (n.member, n.copy) == (row[space]["member"], row[space]["copy"])
    members = json.loads((run_dir / "membership.json").read_text())["members"]
    dataset = load_dataset(view.dataset)
    assert sorted(i for ids in view.members_by_class.values() for i in ids) == sorted(members)
    assert all(dataset.record(i).label == label for label, ids in view.members_by_class.items() for i in ids)


def test_teacher_labels_are_the_teachers_argmax(run):
    project, run_id, view = run
    run_dir = project.runs_dir / run_id
    recipe = from_dict(TrainConfig, project.registry().get(run_id).config["teacher"])
    teacher = build_classifier(recipe, 10)
    teacher.load_state_dict(torch.load(run_dir / "teacher.pt", map_location="cpu"))
    x = images_to_tensor([Image.open(im.path) for im in view.images], recipe.image_size)
    with torch.no_grad():
        probs = torch.softmax(teacher.eval()(x), dim=1).numpy()
    assert [im.teacher_label for im in view.images] == probs.argmax(1).tolist()
    assert np.allclose([im.teacher_confidence for im in view.images], probs.max(1), atol=1e-5)
    # and the class fidelity the experiment recorded for each round
    for k in view.rounds():
        recorded = json.loads((run_dir / "synthetic" / f"round-{k}" / "fidelity.json").read_text())["class_fidelity"]
        assert synthetic_set.class_fidelity([im for im in view.images if im.round == k]) == pytest.approx(recorded)
    assert view.features.shape[0] == len(view.images) == view.pixels.shape[0]


def test_a_run_without_a_teacher_is_refused(project):
    record = project.registry().create("experiment", {"dataset": {}})
    with pytest.raises(ValueError, match="no teacher.pt"):
        synthetic_set.load_synthetic_set(project, record.id)
    assert record.id not in [r.id for r in synthetic_set.browsable_runs(project)]


# -- the page --------------------------------------------------------------------------------------------------------------
def test_synthetic_set_page_filters_and_shows_teacher_labels(run, monkeypatch):
    project, run_id, view = run
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("views/synthetic.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="syn_run").value == run_id
    at.multiselect(key="syn_rounds").set_value([1])
    at.multiselect(key="syn_classes").set_value([3])
    at.number_input(key="syn_per_class").set_value(6)
    at.number_input(key="syn_real").set_value(2).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    expected = [im for im in view.images if im.round == 1 and im.label == 3][:6]
    labels = [c.value for c in at.caption if "teacher:" in c.value]
    assert len(labels) == len(expected) and all("round 1" in c for c in labels)
    for caption, image in zip(labels, expected):
        assert caption.startswith(f"{'✓' if image.faithful else '✗'} teacher: {view.class_names[image.teacher_label]} "
                                  f"({image.teacher_confidence:.0%})")
        assert f"#{image.index}" in caption
    assert any(c.value == f"“{expected[0].prompt}”" for c in at.caption)
    real = [c.value for c in at.caption if c.value.startswith("real (member) ")]
    assert real == [f"real (member) {i}" for i in view.members_by_class[3][:2]]
    assert len(at.get("image")) == len(expected) + 2
    # only misclassified: every shown image is one the teacher labels as another class
    at.toggle(key="syn_wrong").set_value(True).run()
    wrong = [c.value for c in at.caption if "teacher:" in c.value]
    assert all(c.startswith("✗") for c in wrong)
    assert len(wrong) == min(6, sum(1 for im in view.images if im.round == 1 and im.label == 3 and not im.faithful))
    # only flagged copies
    at.toggle(key="syn_wrong").set_value(False)
    at.toggle(key="syn_flagged").set_value(True).run()
    flagged = [im for im in view.images if im.round == 1 and im.label == 3 and im.copied]
    if flagged:
        assert all("**copy**" in c.value for c in at.caption if "teacher:" in c.value)
    else:
        assert any("No synthetic image matches" in i.value for i in at.info)


def test_the_page_counts_copies_as_the_run_and_says_what_a_copy_is(run, monkeypatch):
    """Issue 25 item 6: the page's flagged copies are the run's (metrics.json: what the CLI and the report
    print), and the page states the rule."""
    project, run_id, view = run
    memorisation = json.loads((project.runs_dir / run_id / "metrics.json").read_text())["memorisation"]
    assert memorisation["copies"] == sum(im.copied for im in view.images)
    assert view.copy_rule == memorisation["rule"] and "pixels" in view.copy_rule
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("views/synthetic.py").run()
    assert not at.exception, [e.message for e in at.exception]
    flagged = next(m for m in at.metric if m.label == "Flagged copies")
    assert flagged.value == str(memorisation["copies"]) and view.copy_rule in flagged.help
    assert any(view.copy_rule in c.value for c in at.caption)
