"""pipeline.views.leaks and the Leak explorer page: the most vulnerable members of an audited model,
their synthetic neighbours, score histograms and per-class vulnerability.

The run is the shared tiny audited experiment of conftest's ``audited_run`` (built once per session)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pipeline.classifiers.train import images_to_tensor
from pipeline.data.datasets import load_dataset
from pipeline.views import leaks
from pipeline.views.legend import model_name
from pipeline.views.synthetic_set import SyntheticImage, load_synthetic_set

APP = str(Path(__file__).resolve().parents[1] / "studio" / "app.py")


@pytest.fixture(scope="module")
def audited(audited_run):
    """(project, experiment run id, its audit folder, the synthetic set view)."""
    project, run_id = audited_run
    [entry] = leaks.audited_experiments(project)
    return project, run_id, entry.audit.run_dir, load_synthetic_set(project, run_id)


def neighbour_rows(run_dir: Path) -> dict[tuple[int, str], dict]:
    """(round, file) -> the memorisation audit's row in neighbours.jsonl."""
    rows = {}
    for folder in sorted((run_dir / "synthetic").glob("round-*")):
        for line in (folder / "neighbours.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows[(int(folder.name.split("-")[1]), row["file"])] = row
    return rows


# -- pure maths, hand-computed --------------------------------------------------------------------------------------
def test_threshold_at_fpr_lets_at_most_fpr_of_nonmembers_above():
    scores = np.array([0.3, 0.1, 1.0, 0.5, 0.2, 0.9, 0.7, 0.4, 0.8, 0.6])
    assert leaks.threshold_at_fpr(scores, 0.1) == pytest.approx(0.9)  # only 1.0 above: 10%
    assert leaks.threshold_at_fpr(scores, 0.25) == pytest.approx(0.8)  # 0.9 and 1.0: 20% <= 25%
    assert leaks.threshold_at_fpr(scores, 0.01) == pytest.approx(1.0)  # nothing above
    with pytest.raises(ValueError, match="non-members"):
        leaks.threshold_at_fpr(np.array([]), 0.1)


def test_per_class_vulnerability_by_hand():
    scores = np.array([0.9, 0.25, 0.2, 0.8, 0.1, 0.3])
    is_member = np.array([True, True, False, True, False, False])
    labels = np.array([0, 0, 0, 1, 1, 1])
    rows, threshold = leaks.per_class_vulnerability(scores, is_member, labels, ["a", "b", "c"], fpr=0.01)
    assert threshold == pytest.approx(0.3)  # the largest non-member score
    a, b, c = rows
    assert (a.members, a.member_mean, a.nonmember_mean, a.tpr) == (2, pytest.approx(0.575), pytest.approx(0.2), 0.5)
    assert (b.members, b.member_mean, b.nonmember_mean, b.tpr) == (1, pytest.approx(0.8), pytest.approx(0.2), 1.0)
    assert c.members == 0 and math.isnan(c.tpr) and math.isnan(c.member_mean)


def test_rank_members_highest_first_ties_stable_nan_last_nonmembers_out():
    ids = ["a", "b", "c", "d", "e"]
    scores = np.array([0.5, np.nan, 0.9, 0.5, 0.95])
    is_member = np.array([True, True, True, True, False])
    assert leaks.rank_members(ids, scores, is_member, 4) == [("c", 0.9), ("a", 0.5), ("d", 0.5), ("b", pytest.approx(np.nan, nan_ok=True))]
    assert [i for i, _ in leaks.rank_members(ids, scores, is_member, 2)] == ["c", "a"]


def test_closest_matches_sorts_by_distance_and_flags_copies_by_round_threshold():
    images = [SyntheticImage(k, j, Path(f"{k}-{j}.png"), 0, "a", "p") for k, j in ((0, 0), (0, 1), (1, 2))]
    synthetic = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 0.5]])
    found = leaks.closest_matches(np.zeros(2), synthetic, images, {(0, "pixels"): 1.0, (1, "pixels"): 0.1},
                                  "pixels", 2)
    assert [(m.image.index, m.distance, m.copy, m.nearest) for m in found] == [(2, 0.5, False, False),
                                                                              (1, 1.0, True, False)]


def test_config_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="valid: features, pixels"):
        leaks.LeakConfig(experiment="x", space="latent")
    with pytest.raises(ValueError, match="fpr"):
        leaks.LeakConfig(experiment="x", fpr=0.0)


# -- the audited run ----------------------------------------------------------------------------------------------------
def test_audited_experiments_lists_every_audited_model_and_mode(audited):
    project, run_id, audit_dir, _ = audited
    [entry] = leaks.audited_experiments(project)
    assert entry.experiment.id == run_id and entry.audit.kind == "audit"
    assert list(entry.targets)[:2] == ["teacher", "student"] and "am" in entry.targets
    assert entry.targets["teacher"] == {"transfer": "rmia"}  # the teacher has no pipeline mode
    assert list(entry.targets["student"]) == ["transfer", "pipeline"]
    with pytest.raises(ValueError, match="no 'teacher' in 'pipeline' mode"):
        leaks.explore_leaks(leaks.LeakConfig(experiment=run_id, model="teacher", mode="pipeline"), project)
    with pytest.raises(FileNotFoundError, match="student-pipeline"):
        leaks.load_scores(audit_dir, "nobody", "transfer")


def test_top_members_are_the_highest_scores_of_the_audit(audited):
    project, run_id, audit_dir, view = audited
    report = leaks.explore_leaks(leaks.LeakConfig(experiment=run_id, model="student", mode="pipeline", top=5),
                                 project, synthetic=view)
    with np.load(audit_dir / "vulnerability" / "student-pipeline.npz") as data:
        ids, is_member, rmia = data["ids"], data["is_member"], data["rmia"]
    assert report.attack == "rmia" and set(report.attacks) == {"rmia", "loss"}
    assert report.members[0].score == pytest.approx(rmia[is_member].max())
    assert report.members[0].id in set(ids[is_member & (rmia == rmia[is_member].max())])
    # the same members, in the same order, as the audit's own list of the most vulnerable
    vulnerable = json.loads((audit_dir / "vulnerable.json").read_text())["student"]["pipeline"]["members"]
    assert [m.id for m in report.members] == [v["id"] for v in vulnerable[:5]]
    assert [m.rank for m in report.members] == [1, 2, 3, 4, 5]
    assert len(report.member_scores) == is_member.sum() and len(report.nonmember_scores) == (~is_member).sum()
    assert sum(c.members for c in report.per_class) == is_member.sum()


def test_nearest_synthetic_images_are_the_ones_the_memorisation_audit_names(audited):
    project, run_id, _, view = audited
    rows = neighbour_rows(project.runs_dir / run_id)
    named = {}
    for (k, file), row in rows.items():
        named.setdefault(row["pixels"]["member"], []).append((row["pixels"]["member_distance"], k, file))
    member, images = max(named.items(), key=lambda kv: len(kv[1]))  # the member most synthetic images are near
    found = leaks.audit_matches(member, view.images, "pixels", 100)
    assert sorted((m.image.round, m.image.path.name) for m in found) == sorted((k, Path(f).name) for _, k, f in images)
    assert [m.distance for m in found] == sorted(d for d, _, _ in images)
    assert all(m.nearest and m.copy == rows[(m.image.round, m.image.path.relative_to(
        project.runs_dir / run_id / "synthetic" / f"round-{m.image.round}").as_posix())]["pixels"]["copy"]
        for m in found)


def test_each_listed_neighbour_matches_neighbours_jsonl(audited):
    project, run_id, _, view = audited
    rows = neighbour_rows(project.runs_dir / run_id)
    report = leaks.explore_leaks(leaks.LeakConfig(experiment=run_id, model="teacher", mode="transfer", top=20,
                                                  space="pixels"), project, synthetic=view)
    named = {row["pixels"]["member"] for row in rows.values()}
    dataset = load_dataset(view.dataset)
    kinds = set()
    for member in report.members:
        assert member.matches
        # every synthetic image at the teacher's input size (native here), flattened: the audit's pixel space
        real = images_to_tensor([dataset.load_image(member.id)], view.recipe.image_size).flatten(1).numpy()[0]
        distances = np.sort(np.linalg.norm(view.pixels - real, axis=1))
        for j, match in enumerate(member.matches):
            folder = project.runs_dir / run_id / "synthetic" / f"round-{match.image.round}"
            row = rows[(match.image.round, match.image.path.relative_to(folder).as_posix())]
            assert match.image.prompt and match.image.label == row["label"]
            if match.nearest:  # the audit names this member as the image's nearest one
                assert row["pixels"]["member"] == member.id
                assert match.distance == pytest.approx(row["pixels"]["member_distance"], rel=1e-5)
            else:  # no synthetic image names it: the j-th closest of all, by brute force
                assert member.id not in named
                assert match.distance == pytest.approx(distances[j], rel=1e-5)
            kinds.add(match.nearest)
    assert kinds == {True, False}  # both cases occur among the teacher's 20 most vulnerable members


# -- the page --------------------------------------------------------------------------------------------------------------
def test_leak_explorer_page_shows_the_top_member_with_its_neighbours_and_charts(audited, monkeypatch):
    project, run_id, audit_dir, view = audited
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("views/leaks.py").run()
    assert not at.exception, [e.message for e in at.exception]
    # the student in pipeline mode (the honest audit) by default
    assert (at.selectbox(key="leak_model").value, at.selectbox(key="leak_mode").value) == ("student", "pipeline")
    keys = list(next(a for a in leaks.audited_experiments(project) if a.experiment.id == run_id).targets)
    assert at.selectbox(key="leak_model").options == [model_name(k) for k in keys]  # models named in words
    assert "teacher" not in at.selectbox(key="leak_model").options and len(keys) >= 2
    at.number_input(key="leak_top").set_value(3).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    report = leaks.explore_leaks(leaks.LeakConfig(experiment=run_id, model="student", mode="pipeline", top=3),
                                 project, synthetic=view)
    members = [c.value for c in at.caption if "real (member)" in c.value]
    assert len(members) == 3 and members[0].startswith(f"#1 real (member) {report.members[0].id} ")
    assert len(at.get("image")) == sum(1 + len(m.matches) for m in report.members)
    first = report.members[0].matches[0]
    assert any(first.image.prompt in c.value and f"distance {first.distance:.3g}" in c.value for c in at.caption)
    # histogram of members vs non-members, and per-class bars
    hist, classes = (json.loads(chart.proto.spec) for chart in at.get("plotly_chart"))
    with np.load(audit_dir / "vulnerability" / "student-pipeline.npz") as data:
        is_member = data["is_member"]
    assert [len(t["x"]) for t in hist["data"]] == [is_member.sum(), (~is_member).sum()]
    assert hist["data"][0]["name"].startswith("members")
    assert classes["data"][0]["x"] == view.class_names and len(classes["data"]) == 3
    # the teacher has only the transfer mode: switching resets the mode
    at.selectbox(key="leak_model").set_value("teacher").run()
    assert at.selectbox(key="leak_mode").value == "transfer" and not at.exception
