"""Fidelity of synthetic sets: hand-computed class fidelity, Fréchet distance and PRDC, teacher features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.classifiers.models import TinyCNN
from pipeline.generators.fidelity import (
    class_fidelity,
    frechet_distance,
    penultimate_features,
    prdc,
    synthetic_fidelity,
)


def test_class_fidelity_by_hand():
    out = class_fidelity(np.array([0, 1, 1, 2, 0]), np.array([0, 1, 2, 2, 2]), num_classes=4)
    assert out["class_fidelity"] == pytest.approx(3 / 5)
    assert out["per_class"] == [1.0, 1.0, pytest.approx(1 / 3), None]  # class 3: no image
    with pytest.raises(ValueError, match="equal non-empty"):
        class_fidelity(np.array([0]), np.array([0, 1]), 2)


def test_frechet_distance_by_hand():
    # 1-D: var (ddof 1) of [0, 2] is 2, of [4, 8] is 8; FD = (1-6)^2 + 2 + 8 - 2*sqrt(16) = 27
    assert frechet_distance(np.array([[0.0], [2.0]]), np.array([[4.0], [8.0]])) == pytest.approx(27.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # a pure shift by (1, 2, 2) adds its squared length, 9
    assert frechet_distance(x, x + np.array([1.0, 2.0, 2.0])) == pytest.approx(9.0, abs=1e-6)


def test_frechet_distance_with_fewer_images_than_features_is_the_exact_formula():
    """Fewer images than features (a small run with a MobileNetV3 teacher): the trace of the matrix square
    root from an n x n eigenproblem equals scipy's d x d ``sqrtm`` where that one is accurate."""
    from scipy import linalg

    rng = np.random.default_rng(1)
    for n, m, d in [(7, 14, 64), (30, 5, 40), (2, 3, 6)]:
        real, fake = np.maximum(rng.normal(size=(n, d)), 0), np.maximum(rng.normal(size=(m, d)), 0) + 0.3
        s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
        want = (((real.mean(0) - fake.mean(0)) ** 2).sum() + np.trace(s_r) + np.trace(s_f)
                - 2 * np.trace(np.real(linalg.sqrtm(s_r @ s_f))))
        assert frechet_distance(real, fake) == pytest.approx(want, rel=1e-6)
        assert frechet_distance(fake, real) == pytest.approx(want, rel=1e-6)
    few = rng.normal(size=(4, 10))
    assert frechet_distance(few, few.copy()) == pytest.approx(0.0, abs=1e-8)


def test_prdc_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 4))
    same = prdc(real, real.copy(), nearest_k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0 and same["density"] > 0.9
    far = prdc(real, real + 100.0, nearest_k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    with pytest.raises(ValueError, match="more than 5"):
        prdc(real[:5], real[:5], nearest_k=5)


def test_teacher_features_are_the_input_of_its_last_linear_layer():
    torch.manual_seed(0)
    model = TinyCNN(num_classes=3, in_chans=3, width=8)
    x = torch.rand(10, 3, 8, 8)
    features, logits = penultimate_features(model, x, batch_size=4)
    assert features.shape == (10, 16) and logits.shape == (10, 3)
    expected = model.features(x).flatten(1)
    np.testing.assert_allclose(features, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, model.head(expected).detach().numpy(), rtol=1e-5, atol=1e-5)
    figures = synthetic_fidelity(model, x, torch.tensor(logits.argmax(1)), torch.rand(12, 3, 8, 8), 3)
    assert figures["class_fidelity"] == 1.0 and figures["frechet_distance"] >= 0.0
    assert {"precision", "recall", "density", "coverage"} <= set(figures)
