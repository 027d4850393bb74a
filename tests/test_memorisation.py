"""Memorisation audit (issue 11.4): nearest neighbours, copy flags and Meehan et al.'s data-copying test."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.privacy.memorisation import (
    MemorisationConfig,
    data_copying_test,
    memorisation_audit,
    nearest,
    zu_statistic,
)


def test_nearest_neighbours_by_hand():
    reference = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    d, i = nearest(np.array([[3.0, 3.0], [9.0, 0.0]]), reference)
    assert i.tolist() == [1, 2] and d == pytest.approx([1.0, 1.0])
    d, i = nearest(reference, reference, exclude_self=True)
    assert i.tolist() == [1, 0, 1] and d == pytest.approx([5.0, 5.0, np.hypot(7, 4)])


def test_zu_by_hand():
    # generated distances (1, 4) vs test distances (2, 3): U = pairs where generated is farther = 2
    # mean = n*m/2 - 0.5 = 1.5, std = sqrt(n*m*(n+m+1)/12) = sqrt(20/12)
    assert zu_statistic(np.array([2.0, 3.0]), np.array([1.0, 4.0])) == pytest.approx(0.5 / np.sqrt(20 / 12))
    # every generated sample closer than every test sample: U = 0, the most negative Z
    assert zu_statistic(np.array([5.0, 6.0]), np.array([1.0, 2.0])) == pytest.approx(-1.5 / np.sqrt(20 / 12))


def _blobs(rng, n: int) -> np.ndarray:
    centres = np.array([[0.0] * 8, [6.0] * 8, [-6.0] * 8])
    return centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 8))


def test_an_injected_exact_copy_is_flagged_and_a_fresh_sample_is_not():
    rng = np.random.default_rng(0)
    members, nonmembers = _blobs(rng, 200), _blobs(rng, 200)
    fresh = _blobs(rng, 50)
    synthetic = np.concatenate([members[[7]], fresh])  # image 0 is member 7, copied
    per_image, summary = memorisation_audit(synthetic, members, nonmembers, [f"m{i}" for i in range(200)],
                                            [f"n{i}" for i in range(200)], MemorisationConfig(copy_quantile=0.01))
    assert per_image[0]["copy"] and per_image[0]["member"] == "m7" and per_image[0]["member_distance"] == 0.0
    assert per_image[0]["ratio"] == 0.0
    assert sum(p["copy"] for p in per_image[1:]) <= 2  # fresh draws: at about the calibrated 1 % rate
    assert summary["copies"] == sum(p["copy"] for p in per_image) and summary["images"] == 51
    assert summary["nonmember_flag_rate"] < 0.05  # the threshold flags few fresh real images


def test_data_copying_test_separates_copies_from_fresh_samples():
    rng = np.random.default_rng(1)
    members, nonmembers = _blobs(rng, 300), _blobs(rng, 300)
    copied = members[rng.integers(0, 300, 300)] + 0.05 * rng.normal(size=(300, 8))
    fresh = _blobs(rng, 300)
    assert data_copying_test(members, nonmembers, copied, cells=3)["ct"] < -5
    result = data_copying_test(members, nonmembers, fresh, cells=3)
    assert abs(result["ct"]) < 3 and result["cells_used"] == result["cells"] == 3


def test_the_copy_gate_redraws_flagged_images_and_keeps_the_set_whole(project):
    """Issue 11.4: the optional copy gate regenerates images flagged as member copies before the student."""
    import json
    from dataclasses import replace

    from pipeline.classifiers.models import build_classifier
    from pipeline.data.context import DataContext
    from pipeline.data.datasets import DatasetConfig
    from pipeline.experiment import ExperimentConfig
    from pipeline.fidelity import copy_gate
    from pipeline.finetune import FinetuneConfig, finetune, load_generator
    from pipeline.generate import GenerateConfig, synthesize

    data = DatasetConfig(limit=40)
    tiny = (("block_out_channels", (8, 16)), ("norm_groups", 4), ("train_steps", 2), ("batch_size", 8),
            ("sampling_steps", 2), ("generate_batch_size", 16), ("threads", 1))
    generator = finetune(FinetuneConfig(dataset=data, options=tiny), project).generator_dir
    made = synthesize(GenerateConfig(generator=str(generator), dataset=data, num_images=20,
                                     out_dir=str(project.root / "round-0")), project)
    context = DataContext.open(data)
    config = ExperimentConfig(dataset=data, copy_gate=2,
                              memorisation=replace(ExperimentConfig().memorisation, copy_quantile=0.9))
    teacher = build_classifier(config.teacher, context.num_classes)
    before = {i.index: i for i in made.synthetic.items}
    (gated,), report = copy_gate(teacher, context, [made.synthetic], load_generator(generator),
                                 config.teacher.image_size, config.memorisation, config.copy_gate)
    first = report["rounds"][0]
    assert first["flagged"] > 0 and first["redrawn"] >= first["flagged"]  # a generous threshold flags many
    assert first["still_flagged"] <= first["flagged"] and report["attempts"] == 2
    after = {i.index: i for i in gated.items}
    assert sorted(after) == sorted(before)  # every planned image still there, once
    redrawn = [i for i in after if after[i].seed != before[i].seed]
    assert len(redrawn) >= first["flagged"] and all(after[i].prompt == before[i].prompt for i in redrawn)
    files = {str(p.relative_to(gated.root)) for p in gated.root.rglob("*.png")}
    assert files == {i.file for i in gated.items}  # redrawn files replaced the old ones, no orphan left
    lines = [json.loads(line) for line in (gated.root / "manifest.jsonl").read_text().splitlines()]
    assert sum("replaces" in line for line in lines) == first["redrawn"]


# -- issue 25 item 6: one copy count ---------------------------------------------------------------------------------
def test_one_copy_flag_an_image_flagged_in_any_space():
    from pipeline.privacy.memorisation import copy_rule, flagged_copies

    flags = flagged_copies({"features": [True, False, True, False], "pixels": [False, True, True, False]})
    assert flags.tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="no audited space"):
        flagged_copies({})
    rule = copy_rule(0.01, ["features", "pixels"])
    assert "the teacher's features or pixels" in rule and "99%" in rule


def test_round_memorisation_counts_copies_by_the_one_rule(tmp_path, monkeypatch):
    """The run's count (metrics, CLI, report) took the feature space alone while the studio and the copy
    gate took an image flagged in any space (82 vs 74 copies on the quickstart): now one count, the union,
    with each space's own beside it and the rule in words."""
    import json
    from types import SimpleNamespace

    import torch

    from pipeline import fidelity

    rng = np.random.default_rng(0)
    members = torch.from_numpy(rng.normal(size=(40, 4)).astype(np.float32))
    nonmembers = torch.from_numpy(rng.normal(size=(40, 4)).astype(np.float32))
    far = torch.full((2,), 50.0)
    synthetic = torch.stack([
        torch.cat([members[0, :2], far]),  # a copy in the first space only
        torch.cat([far, members[1, 2:]]),  # ... in the second only
        members[2],  # ... in both
        torch.cat([far, far]),  # in neither
    ])
    # two spaces: the first two coordinates ("features") and the last two ("pixels")
    monkeypatch.setattr(fidelity, "audit_spaces", lambda teacher, x, config: {
        "features": lambda x: x[:, :2].numpy(), "pixels": lambda x: x[:, 2:].numpy()})
    ids = {"members": [f"m{i}" for i in range(40)], "nonmembers": [f"n{i}" for i in range(40)]}
    data = SimpleNamespace(tensors=lambda split, size: SimpleNamespace(
        x={"members": members, "nonmembers": nonmembers}[split], ids=ids[split]))
    round_0 = SimpleNamespace(root=tmp_path, tensors=lambda size: SimpleNamespace(x=synthetic),
                              items=[SimpleNamespace(index=j, file=f"{j}.png", label=0) for j in range(4)])
    found = fidelity.round_memorisation(None, data, [round_0], None, MemorisationConfig())
    assert found["copies"] == 3 and found["copy_rate"] == pytest.approx(0.75)
    assert found["copies_by_space"] == {"features": 2, "pixels": 2}
    assert "features or pixels" in found["rule"]
    rows = [json.loads(line) for line in (tmp_path / "neighbours.jsonl").read_text().splitlines()]
    assert found["copies"] == sum(row["features"]["copy"] or row["pixels"]["copy"] for row in rows)
    assert 0.0 <= found["nonmember_flag_rate"] <= 1.0
