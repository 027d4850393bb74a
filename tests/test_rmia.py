"""RMIA against hand-computed values, and the attack registry."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.registry import UnknownNameError
from pipeline.privacy import rmia_scores
from pipeline.privacy.attacks import AttackInputs, attack_names, run_attack
from pipeline.privacy.metrics import roc_auc

# two challenge examples x, three population samples z, two reference models
TARGET_X = np.array([0.9, 0.5])
REF_X = np.array([[0.6, 0.5], [0.4, 0.7]])  # mean over refs: [0.5, 0.6]
TARGET_Z = np.array([0.8, 0.3, 0.6])
REF_Z = np.array([[0.8, 0.2, 0.6], [0.4, 0.4, 0.6]])  # mean: [0.6, 0.3, 0.6]


def test_rmia_offline_by_hand():
    # a = 0.5: Pr(.) = 0.5 * (1.5 * mean + 0.5)
    # Pr(x) = [0.625, 0.7];       ratio_x = [0.9/0.625, 0.5/0.7] = [1.44, 0.7143]
    # Pr(z) = [0.7, 0.475, 0.7];  ratio_z = [1.1429, 0.6316, 0.8571]
    # LR(x0, z) = [1.26, 2.28, 1.68]; LR(x1, z) = [0.625, 1.131, 0.833]
    np.testing.assert_allclose(rmia_scores(TARGET_X, REF_X, TARGET_Z, REF_Z, a=0.5, gamma=1.0), [1.0, 1 / 3])
    np.testing.assert_allclose(rmia_scores(TARGET_X, REF_X, TARGET_Z, REF_Z, a=0.5, gamma=1.3), [2 / 3, 0.0])
    np.testing.assert_allclose(rmia_scores(TARGET_X, REF_X, TARGET_Z, REF_Z, a=0.5, gamma=0.8), [1.0, 2 / 3])


def test_rmia_offline_default_a():
    # a = 0.3: Pr(x) = 0.5 * (1.3 * [0.5, 0.6] + 0.7) = [0.675, 0.74]; ratio_x = [1.3333.., 0.675675..]
    # Pr(z) = 0.5 * (1.3 * [0.6, 0.3, 0.6] + 0.7) = [0.74, 0.545, 0.74]; ratio_z = [1.081, 0.5505, 0.8108]
    # x0 dominates all 3; x1: 0.6757/1.081 < 1, 0.6757/0.5505 = 1.227 >= 1, 0.6757/0.8108 < 1 -> 1 of 3
    np.testing.assert_allclose(rmia_scores(TARGET_X, REF_X, TARGET_Z, REF_Z), [1.0, 1 / 3])


def test_rmia_online_uses_the_plain_mean_of_all_references():
    # Pr(x) = [0.5, 0.6] -> ratio_x = [1.8, 0.8333]; Pr(z) = [0.6, 0.3, 0.6] -> ratio_z = [1.3333, 1.0, 1.0]
    # x0: 1.35, 1.8, 1.8 -> 3 of 3; x1: 0.625, 0.8333, 0.8333 -> 0 of 3; gamma 0.8 -> x1: 2 of 3
    ref_in = np.array([[True, False], [False, True]])
    np.testing.assert_allclose(rmia_scores(TARGET_X, REF_X, TARGET_Z, REF_Z, ref_x_in=ref_in), [1.0, 0.0])
    np.testing.assert_allclose(rmia_scores(TARGET_X, REF_X, TARGET_Z, REF_Z, ref_x_in=ref_in, gamma=0.8),
                               [1.0, 2 / 3])


def test_rmia_ties_count_as_dominated():
    # LR exactly 1 counts (>= gamma)
    got = rmia_scores(np.array([0.5]), np.array([[0.5]]), np.array([0.5]), np.array([[0.5]]), ref_x_in=np.ones((1, 1), bool))
    assert got.tolist() == [1.0]


def test_rmia_rejects_bad_input():
    with pytest.raises(ValueError, match="ref_x"):
        rmia_scores(TARGET_X, REF_X[:, :1], TARGET_Z, REF_Z)
    with pytest.raises(ValueError, match="probabilities"):
        rmia_scores(TARGET_X * 2, REF_X, TARGET_Z, REF_Z)
    with pytest.raises(ValueError, match="ref_x_in"):
        rmia_scores(TARGET_X, REF_X, TARGET_Z, REF_Z, ref_x_in=np.ones((3, 2), bool))


def _inputs(rng: np.random.Generator, m: int = 4, n: int = 40, nz: int = 30, k: int = 3) -> AttackInputs:
    labels, z_labels = rng.integers(0, k, n), rng.integers(0, k, nz)
    shadow_in = np.zeros((m, n), bool)
    shadow_in[0::2, : n // 2] = True
    shadow_in[1::2, n // 2:] = True
    return AttackInputs(labels, rng.normal(size=(2, n, k)), rng.normal(size=(m, 2, n, k)), shadow_in,
                        z_labels, rng.normal(size=(2, nz, k)), rng.normal(size=(m, 2, nz, k)))


def test_registry_lists_attacks_and_rejects_unknown_names_and_options(memorised_attack_inputs):
    assert {"lira", "rmia", "loss"} <= set(attack_names())
    inputs = _inputs(np.random.default_rng(0))
    with pytest.raises(UnknownNameError, match="valid names: lira, loss, rmia"):
        run_attack("nope", inputs)
    with pytest.raises(ValueError, match="valid: a, gamma, temperature"):
        run_attack("rmia", inputs, {"alpha": 1})
    for name in ("lira", "rmia", "loss"):
        scores = run_attack(name, inputs)
        assert scores.shape == (40,) and np.isfinite(scores).all()
    # every attack ranks the members of a target that memorised them first (AUC 1.0 here), online and
    # offline; a target that memorised nothing gets no such ranking (AUC 0.43-0.50 here)
    is_member = np.arange(40) % 2 == 0  # each in half the shadows, like every other example
    for online in (True, False):
        for name in ("lira", "rmia", "loss"):
            caught = memorised_attack_inputs(inputs.labels, inputs.shadow_in, is_member, inputs.z_labels, 3,
                                             online=online)
            assert roc_auc(run_attack(name, caught), is_member) > 0.9, (name, online)
            blank = memorised_attack_inputs(inputs.labels, inputs.shadow_in, np.zeros(40, bool), inputs.z_labels,
                                            3, online=online)
            assert roc_auc(run_attack(name, blank), is_member) < 0.75, (name, online)


def test_rmia_attack_matches_the_pure_function_on_one_view():
    rng = np.random.default_rng(1)
    inputs = _inputs(rng)
    one = AttackInputs(inputs.labels, inputs.target[:1], inputs.shadows[:, :1], inputs.shadow_in, inputs.z_labels,
                       inputs.target_z[:1], inputs.shadows_z[:, :1], online=False)

    def p(logits, y):
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return np.take_along_axis(e / e.sum(-1, keepdims=True), np.broadcast_to(y[:, None], logits.shape[:-1] + (1,)), -1)[..., 0]

    expected = rmia_scores(p(one.target[0], one.labels), p(one.shadows[:, 0], one.labels),
                           p(one.target_z[0], one.z_labels), p(one.shadows_z[:, 0], one.z_labels))
    np.testing.assert_allclose(run_attack("rmia", one), expected)
