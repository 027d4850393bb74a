"""Audit stage: shadow in/out bookkeeping, the shadow cache and its mismatch error, an audit run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.classifiers.train import TensorData, TrainConfig
from pipeline.privacy.shadows import (
    AuditConfig,
    ShadowCacheMismatch,
    assign_shadows,
    audit_model,
    load_or_train_shadows,
    query_views,
    shadow_manifest,
)


def test_every_example_is_in_exactly_half_of_the_shadows():
    shadow_in = assign_shadows(n_examples=501, n_shadows=8, seed=0)
    assert shadow_in.shape == (8, 501)
    assert (shadow_in.sum(0) == 4).all()
    # each shadow trains on about half the population
    assert np.all(np.abs(shadow_in.sum(1) / 501 - 0.5) < 0.1)
    assert not np.array_equal(shadow_in, assign_shadows(501, 8, seed=1))
    np.testing.assert_array_equal(shadow_in, assign_shadows(501, 8, seed=0))


def test_audit_config_rejects_bad_values():
    with pytest.raises(ValueError, match="even"):
        AuditConfig(n_shadows=5)
    with pytest.raises(ValueError, match="valid: orig, flip, shift"):
        AuditConfig(views=("rotate",))


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
AUDIT = AuditConfig(n_shadows=4, views=("orig", "shift"), bootstrap=50)


def test_shadows_are_cached_and_reused(tmp_path: Path):
    data = _toy()
    manifest = shadow_manifest("fp", data.ids, RECIPE, AUDIT, 2)
    first = load_or_train_shadows(tmp_path, manifest, data, RECIPE, AUDIT)
    assert not first.cached and first.scores.shape == (4, 64, 2) and np.isfinite(first.scores).all()
    again = load_or_train_shadows(tmp_path, manifest, data, RECIPE, AUDIT)
    assert again.cached and again.directory == first.directory
    np.testing.assert_array_equal(again.scores, first.scores)
    # a different recipe is a different cache entry, not a reuse
    other = shadow_manifest("fp", data.ids, replace(RECIPE, epochs=3), AUDIT, 2)
    assert load_or_train_shadows(tmp_path, other, data, replace(RECIPE, epochs=3), AUDIT).directory != first.directory


def test_pinned_cache_with_another_recipe_is_an_error(tmp_path: Path):
    data = _toy()
    manifest = shadow_manifest("fp", data.ids, RECIPE, AUDIT, 2)
    made = load_or_train_shadows(tmp_path, manifest, data, RECIPE, AUDIT)
    wrong = shadow_manifest("fp", data.ids[:-1], replace(RECIPE, lr=0.1), AUDIT, 2)
    with pytest.raises(ShadowCacheMismatch, match="population, population_size, recipe"):
        load_or_train_shadows(tmp_path, wrong, data, RECIPE, AUDIT, cache_dir=made.directory)


def test_audit_of_a_model_that_memorised_its_members(tmp_path: Path):
    data = _toy(48)
    is_member = np.arange(48) < 24
    # offline LiRA on the plain view is monotone in the target's score, so a memoriser far outside
    # the shadows' score range must be caught (online LiRA's likelihood ratio need not be monotone there)
    audit = replace(AUDIT, views=("orig",), online=False)
    manifest = shadow_manifest("fp", data.ids, RECIPE, audit, 2)
    shadows = load_or_train_shadows(tmp_path, manifest, data, RECIPE, audit)

    class Memoriser(torch.nn.Module):
        """Very confident on members, unsure elsewhere: LiRA must find the members."""

        def forward(self, x):
            key = x.flatten(1).sum(1, keepdim=True)
            member = (key[:, None, :] - self.keys[None]).abs().min(1).values < 1e-4
            logits = torch.zeros(len(x), 2)
            logits[torch.arange(len(x)), self.labels_of(key)] = torch.where(member.flatten(), 12.0, 0.5)
            return logits

        def __init__(self):
            super().__init__()
            self.keys = data.x[:24].flatten(1).sum(1, keepdim=True)
            self.all_keys = data.x.flatten(1).sum(1)

        def labels_of(self, key):
            return data.y[(key - self.all_keys[None]).abs().argmin(1)]

    metrics = audit_model(Memoriser(), data, is_member, shadows, audit, accuracy=0.9)
    assert metrics["auc"] > 0.9
    assert metrics["aop"] == pytest.approx(0.9 / (2 * metrics["auc"]) ** 2)
    assert set(metrics["loss_attack"]) == {"auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr"}
