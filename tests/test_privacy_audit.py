"""Shadows: who trains on what, recipes that imitate the target, the logits cache and its mismatch
error, attacks re-scored from the cache, a memoriser caught."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.audit import AuditConfig
from pipeline.classifiers.train import TensorData, TrainConfig
from pipeline.privacy import shadows as sh
from pipeline.privacy.attacks import AttackInputs, run_attack
from pipeline.privacy.metrics import roc_auc
from pipeline.privacy.shadows import (
    ShadowMismatchError,
    assign_shadows,
    carve_validation,
    check_shadow_recipe,
    load_or_train_shadows,
    query_views,
    train_classifier_shadows,
)


def test_every_example_is_in_exactly_half_of_the_shadows():
    shadow_in = assign_shadows(n_examples=500, n_shadows=8, seed=0)
    assert shadow_in.shape == (8, 500)
    assert (shadow_in.sum(0) == 4).all() and (shadow_in.sum(1) == 250).all()
    assert not np.array_equal(shadow_in, assign_shadows(500, 8, seed=1))
    np.testing.assert_array_equal(shadow_in, assign_shadows(500, 8, seed=0))
    # more shadows keep the first ones, so a cache can grow
    np.testing.assert_array_equal(assign_shadows(500, 4, seed=0), shadow_in[:4])


def test_shadow_sets_have_the_member_set_size_and_stay_balanced():
    # member_fraction 0.8: the target trained on 400 of a population of 500
    shadow_in = assign_shadows(500, 10, size=400, seed=3)
    assert (shadow_in.sum(1) == 400).all()
    assert set(np.unique(shadow_in.sum(0))) == {8}  # 10 * 400 / 500 each
    counts = assign_shadows(501, 6, size=300, seed=0).sum(0)
    assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError, match="between 1 and 499"):
        assign_shadows(500, 2, size=500)


def test_validation_carve_out_comes_from_what_a_shadow_does_not_train_on():
    shadow_in = assign_shadows(100, 4, size=50, seed=0)
    val = carve_validation(shadow_in, 12, seed=0)
    assert (val.sum(1) == 12).all() and not (val & shadow_in).any()


def test_query_views_shift_and_flip():
    x = torch.arange(4.0).reshape(1, 1, 1, 4)
    orig, flip, shift = query_views(x, ("orig", "flip", "shift"))
    assert flip.flatten().tolist() == [3, 2, 1, 0] and shift.flatten().tolist() == [0, 0, 1, 2]


def _toy(n: int = 64) -> TensorData:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 6, 6, generator=gen) * 0.3
    x[y == 1, :, :3] += 0.6
    return TensorData(x, y, ids=[f"img-{i}" for i in range(n)])


RECIPE = TrainConfig(epochs=2, batch_size=16, augment=("crop",))
VIEWS = ("orig", "shift")


def _trainer(data: TensorData, z: TensorData, shadow_in: np.ndarray, recipe: TrainConfig = RECIPE, calls=None):
    def train(indices):
        if calls is not None:
            calls.append(list(indices))
        return train_classifier_shadows(indices, data, z, shadow_in, None, recipe, VIEWS, 2, audit_seed=0)
    return train


def test_shadow_logits_are_cached_per_shadow_and_grown_on_demand(tmp_path: Path):
    data, z = _toy(), _toy(10)
    manifest = {"population": "p", "recipe": RECIPE, "views": list(VIEWS), "seed": 0}
    calls: list = []
    four = assign_shadows(64, 4, seed=0)
    first = load_or_train_shadows(tmp_path, manifest, four, _trainer(data, z, four, calls=calls))
    assert first.logits.shape == (4, 2, 64, 2) and first.z_logits.shape == (4, 2, 10, 2) and first.trained == 4
    assert np.isfinite(first.logits).all()
    again = load_or_train_shadows(tmp_path, manifest, four, _trainer(data, z, four, calls=calls))
    assert again.trained == 0 and again.directory == first.directory and len(calls) == 1
    np.testing.assert_array_equal(again.logits, first.logits)
    six = assign_shadows(64, 6, seed=0)
    grown = load_or_train_shadows(tmp_path, manifest, six, _trainer(data, z, six, calls=calls))
    assert calls[-1] == [4, 5] and grown.trained == 2
    np.testing.assert_array_equal(grown.logits[:4], first.logits)


def test_attacks_rescore_from_the_cache_without_training(tmp_path: Path, memorised_attack_inputs):
    data, z = _toy(), _toy(10)
    manifest = {"population": "p", "recipe": RECIPE, "seed": 0}
    shadow_in = assign_shadows(64, 4, seed=0)
    made = load_or_train_shadows(tmp_path, manifest, shadow_in, _trainer(data, z, shadow_in))

    def refuse(_):
        raise AssertionError("re-scoring must not train")

    cached = load_or_train_shadows(tmp_path, manifest, shadow_in, refuse)
    inputs = AttackInputs(data.y.numpy(), made.logits[0], cached.logits, cached.shadow_in, z.y.numpy(),
                          made.z_logits[0], cached.z_logits)
    for attack in ("lira", "rmia", "loss"):
        assert run_attack(attack, inputs).shape == (64,)
    # on the cache's shadow assignment, with a target and shadows that memorised what they trained on, the
    # scores rank the target's members first (AUC 0.99-1.0 here)
    is_member = np.arange(64) < 32
    caught = memorised_attack_inputs(inputs.labels, cached.shadow_in, is_member, inputs.z_labels, 2)
    for attack in ("lira", "rmia", "loss"):
        assert roc_auc(run_attack(attack, caught), is_member) > 0.9, attack


def test_pinned_cache_with_another_recipe_names_the_differing_fields(tmp_path: Path):
    data, z = _toy(), _toy(10)
    shadow_in = assign_shadows(64, 2, seed=0)
    made = load_or_train_shadows(tmp_path, {"recipe": RECIPE, "seed": 0}, shadow_in, _trainer(data, z, shadow_in))
    wrong = {"recipe": replace(RECIPE, epochs=3, pretrained=True), "seed": 0}
    with pytest.raises(ShadowMismatchError, match=r"recipe\.epochs, recipe\.pretrained"):
        load_or_train_shadows(tmp_path, wrong, shadow_in, _trainer(data, z, shadow_in), cache_dir=made.directory)


def test_a_shadow_recipe_that_differs_from_the_target_is_an_error():
    check_shadow_recipe(RECIPE, replace(RECIPE, seed=7))  # its own seed is allowed
    with pytest.raises(ShadowMismatchError, match="patience, pretrained"):
        check_shadow_recipe(RECIPE, replace(RECIPE, pretrained=True, patience=3))


def test_shadows_train_with_the_targets_recipe_size_and_early_stopping(monkeypatch):
    """Pretrained weights, early stopping on a carve-out of the shadow's own out-data, the member-set size."""
    seen = []

    def fake_fit(model, data, objective, config, *, val=None, **kwargs):
        seen.append((config, len(data), None if val is None else len(val)))

    import pipeline.classifiers.models as models

    built = []
    monkeypatch.setattr(sh, "fit", fake_fit)
    real_create = models.create_classifier
    monkeypatch.setattr(models, "create_classifier",
                        lambda spec: built.append(spec) or real_create(replace(spec, pretrained=False)))
    target = replace(RECIPE, pretrained=True, patience=2, image_size=None)
    data, z = _toy(), _toy(10)
    shadow_in = assign_shadows(64, 2, size=40, seed=0)
    val_in = carve_validation(shadow_in, 8, seed=0)
    out = train_classifier_shadows([0, 1], data, z, shadow_in, val_in, target, VIEWS, 2, audit_seed=0)
    assert sorted(out) == [0, 1]
    assert all(spec.pretrained for spec in built)
    for i, (config, n_train, n_val) in enumerate(seen):
        assert (n_train, n_val) == (40, 8)
        assert replace(config, seed=target.seed) == target and config.seed == sh.shadow_seed(target, 0, i)
    # stacked only on a GPU (one at a time is faster on a CPU), and never with pretrained weights
    on_gpu = replace(RECIPE, device="cuda")
    assert sh.stackable(on_gpu, True, 2) and not sh.stackable(replace(on_gpu, pretrained=True), True, 2)
    assert not sh.stackable(replace(RECIPE, device="cpu"), True, 2) and not sh.stackable(on_gpu, False, 2)


def test_audit_config_rejects_bad_values():
    with pytest.raises(ValueError, match="valid: lira, loss, rmia"):
        AuditConfig(attacks=("lira", "nope"))
    with pytest.raises(ValueError, match="headline attack 'rmia'"):
        AuditConfig(attacks=("lira",))
    with pytest.raises(ValueError, match="valid: orig, flip, shift"):
        AuditConfig(views=("rotate",))
    with pytest.raises(ValueError, match="valid: transfer, pipeline"):
        AuditConfig(modes=("both",))
    with pytest.raises(ValueError, match="unknown method mode"):
        AuditConfig(method_modes=("both",))


def test_a_model_that_memorised_its_members_is_caught(tmp_path: Path):
    data, z = _toy(48), _toy(10)
    is_member = np.arange(48) < 24
    shadow_in = assign_shadows(48, 4, seed=0)
    shadows = load_or_train_shadows(tmp_path, {"seed": 0}, shadow_in, _trainer(data, z, shadow_in))
    # very confident on members, unsure elsewhere
    target = np.zeros((2, 48, 2))
    target[:, np.arange(48), data.y.numpy()] = np.where(is_member, 12.0, 0.5)
    target_z = np.zeros((2, 10, 2))
    target_z[:, np.arange(10), z.y.numpy()] = 0.5
    inputs = AttackInputs(data.y.numpy(), target, shadows.logits, shadow_in, z.y.numpy(), target_z, shadows.z_logits,
                          online=False)
    # offline LiRA is monotone in the target's score, so a memoriser far outside the shadows' range is caught
    assert roc_auc(run_attack("lira", inputs), is_member) > 0.9
    assert roc_auc(run_attack("rmia", inputs), is_member) > 0.9
    assert roc_auc(run_attack("loss", inputs), is_member) > 0.9
