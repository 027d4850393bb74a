"""Membership-inference maths against hand-computed values (arithmetic written out in comments)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.privacy import metrics as pm
from pipeline.privacy.attacks import lira, loss

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log_normal(s: float, mu: float, var: float) -> float:
    """log N(s; mu, sqrt(var)) by the textbook formula."""
    return -0.5 * (s - mu) ** 2 / var - 0.5 * math.log(var) - LOG_SQRT_2PI


def log_phi(z: float) -> float:
    """log of the standard normal CDF, via erf."""
    return math.log(0.5 * (1.0 + math.erf(z / math.sqrt(2.0))))


# Seven shadows, two examples. Example 0 was in shadows 0-2, example 1 in shadows 3-6.
#   example 0: in  [1, 2, 4]      -> median 2, mean 7/3, var ((4/3)^2 + (1/3)^2 + (5/3)^2)/3 = 14/9
#              out [-1, 0, 0, 3]  -> median 0, mean 1/2, var (9/4 + 1/4 + 1/4 + 25/4)/4 = 9/4
#   example 1: in  [0, 2, 2, 4]   -> median 2, mean 2,   var (4 + 0 + 0 + 4)/4 = 2
#              out [-3, -1, 1]    -> median -1, mean -1, var (4 + 0 + 4)/3 = 8/3
# Targets: example 0 scores 3, example 1 scores 1.
SHADOW = np.array([[1.0, -3.0], [2.0, -1.0], [4.0, 1.0],
                   [-1.0, 0.0], [0.0, 2.0], [0.0, 2.0], [3.0, 4.0]])
SHADOW_IN = np.array([[True, False]] * 3 + [[False, True]] * 4)
TARGET = np.array([3.0, 1.0])


def test_lira_online_matches_hand_computation():
    # ex 0: log N(3; 2, 14/9) - log N(3; 0, 9/4)
    #     = [-9/28 - log(14/9)/2] - [-2 - log(9/4)/2] = 47/28 - log(14/9)/2 + log(3/2)
    # ex 1: log N(1; 2, 2) - log N(1; -1, 8/3) = [-1/4 - log(2)/2] - [-3/4 - log(8/3)/2]
    #     = 1/2 + log(4/3)/2
    expected = [47 / 28 - 0.5 * math.log(14 / 9) + math.log(1.5), 0.5 + 0.5 * math.log(4 / 3)]
    assert expected[0] == pytest.approx(log_normal(3, 2, 14 / 9) - log_normal(3, 0, 9 / 4))
    got = lira.lira_scores(TARGET, SHADOW, SHADOW_IN, online=True)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_lira_offline_matches_hand_computation():
    # ex 0: log Phi((3 - 0) / 1.5) = log Phi(2);  ex 1: log Phi((1 + 1) / sqrt(8/3)) = log Phi(sqrt(3/2))
    expected = [log_phi(2.0), log_phi(math.sqrt(1.5))]
    assert expected[0] == pytest.approx(math.log(0.9772498680518208))
    got = lira.lira_scores(TARGET, SHADOW, SHADOW_IN, online=False)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_lira_fixed_variance_pools_median_residuals():
    # in residuals (score - own median): ex 0 [-1, 0, 2], ex 1 [-2, 0, 0, 2]
    #   7 values, sum 1, sum of squares 13 -> var = 13/7 - (1/7)^2 = 90/49
    # out residuals: ex 0 [-1, 0, 0, 3], ex 1 [-2, 0, 2]
    #   7 values, sum 2, sum of squares 18 -> var = 18/7 - (2/7)^2 = 122/49
    var_in, var_out = 90 / 49, 122 / 49
    online = [log_normal(3, 2, var_in) - log_normal(3, 0, var_out),
              log_normal(1, 2, var_in) - log_normal(1, -1, var_out)]
    offline = [log_phi(3 / math.sqrt(var_out)), log_phi(2 / math.sqrt(var_out))]
    np.testing.assert_allclose(lira.lira_scores(TARGET, SHADOW, SHADOW_IN, fixed_variance=True), online,
                               rtol=1e-12)
    np.testing.assert_allclose(lira.lira_scores(TARGET, SHADOW, SHADOW_IN, online=False, fixed_variance=True),
                               offline, rtol=1e-12)


def test_lira_averages_over_augmentations():
    # view 0 is the data above; view 1 shifts every shadow score by +1 and keeps the targets,
    # so its medians move by +1 and its variances stay put:
    #   ex 0 view 1: log N(3; 3, 14/9) - log N(3; 1, 9/4);  ex 1 view 1: log N(1; 3, 2) - log N(1; 0, 8/3)
    shadow = np.stack([SHADOW, SHADOW + 1.0], axis=-1)  # (7, 2, 2)
    target = np.stack([TARGET, TARGET], axis=-1)  # (2, 2)
    view0 = [log_normal(3, 2, 14 / 9) - log_normal(3, 0, 9 / 4), log_normal(1, 2, 2) - log_normal(1, -1, 8 / 3)]
    view1 = [log_normal(3, 3, 14 / 9) - log_normal(3, 1, 9 / 4), log_normal(1, 3, 2) - log_normal(1, 0, 8 / 3)]
    expected = [(a + b) / 2 for a, b in zip(view0, view1)]
    np.testing.assert_allclose(lira.lira_scores(target, shadow, SHADOW_IN), expected, rtol=1e-12)
    # offline: ex 0 views z = 2 and (3-1)/1.5 = 4/3; ex 1 views z = 2/sqrt(8/3) and 1/sqrt(8/3)
    offline = [(log_phi(2.0) + log_phi(4 / 3)) / 2,
               (log_phi(2 / math.sqrt(8 / 3)) + log_phi(1 / math.sqrt(8 / 3))) / 2]
    np.testing.assert_allclose(lira.lira_scores(target, shadow, SHADOW_IN, online=False), offline, rtol=1e-12)
    # fixed variance with two views: the view-1 residuals equal the view-0 ones, so the pooled
    # variances are unchanged (90/49, 122/49) and only the medians move.
    var_in, var_out = 90 / 49, 122 / 49
    fixed = [(log_normal(3, 2, var_in) - log_normal(3, 0, var_out)
              + log_normal(3, 3, var_in) - log_normal(3, 1, var_out)) / 2,
             (log_normal(1, 2, var_in) - log_normal(1, -1, var_out)
              + log_normal(1, 3, var_in) - log_normal(1, 0, var_out)) / 2]
    np.testing.assert_allclose(lira.lira_scores(target, shadow, SHADOW_IN, fixed_variance=True), fixed,
                               rtol=1e-12)


def test_lira_members_score_higher_on_synthetic_data():
    # Shadows: in-scores ~ N(2, 1), out-scores ~ N(0, 1); the target is a member for half.
    rng = np.random.default_rng(0)
    m, n = 64, 400
    shadow_in = rng.random((m, n)) < 0.5
    shadow = rng.normal(size=(m, n)) + 2.0 * shadow_in
    member = rng.random(n) < 0.5
    target = rng.normal(size=n) + 2.0 * member
    for online in (True, False):
        assert pm.roc_auc(lira.lira_scores(target, shadow, shadow_in, online=online), member) > 0.8


def test_lira_too_few_shadows_names_the_example():
    shadow_in = SHADOW_IN.copy()
    shadow_in[4:, 1] = False  # example 1 is now in shadows 3 only: 1 in, 6 out
    with pytest.raises(ValueError, match=r"fewer than 2 in shadows.*indices \[1\]"):
        lira.lira_scores(TARGET, SHADOW, shadow_in, online=True)
    assert lira.lira_scores(TARGET, SHADOW, shadow_in, online=False).shape == (2,)  # offline needs no in
    shadow_in = SHADOW_IN.copy()
    shadow_in[1:, 0] = True  # example 0 is now in 7 shadows: 0 out
    with pytest.raises(ValueError, match=r"fewer than 2 out shadows.*indices \[0\]"):
        lira.lira_scores(TARGET, SHADOW, shadow_in, online=False)
    # one global variance needs only one score per example on each side
    shadow_in = SHADOW_IN.copy()
    shadow_in[1:-1, 0] = True  # example 0: 7 in, 1 out
    assert np.isfinite(lira.lira_scores(TARGET, SHADOW, shadow_in, fixed_variance=True)).all()
    shadow_in[-1, 0] = True  # 0 out
    with pytest.raises(ValueError, match=r"fewer than 1 out shadows.*indices \[0\]"):
        lira.lira_scores(TARGET, SHADOW, shadow_in, fixed_variance=True)


def test_lira_zero_spread_is_floored_not_nan():
    # All in-shadows agree (std 0): the floor keeps the score finite, and a target equal to
    # the in-median then gets an enormous positive score.
    shadow = np.array([[2.0], [2.0], [-1.0], [1.0]])
    shadow_in = np.array([[True], [True], [False], [False]])
    got = lira.lira_scores(np.array([2.0]), shadow, shadow_in)
    assert np.isfinite(got).all() and got[0] > 60.0  # -log(1e-30) ~ 69


def test_lira_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shadow_in must have shape"):
        lira.lira_scores(TARGET, SHADOW, SHADOW_IN[:, :1])
    with pytest.raises(ValueError, match="does not match target"):
        lira.lira_scores(TARGET[:1], SHADOW, SHADOW_IN)
    with pytest.raises(ValueError, match=r"\(m, n, a\)"):
        lira.lira_scores(TARGET, SHADOW[..., None], SHADOW_IN)
    with pytest.raises(ValueError, match="bool"):
        lira.lira_scores(TARGET, SHADOW, SHADOW_IN.astype(int))


def test_logit_scaled_confidence_small_and_huge_logits():
    # logits [2, 1, 0], label 0: p = e^z / Z, so log p0 - log(p1 + p2) = 2 - log(e + 1)
    logits = np.array([[2.0, 1.0, 0.0], [1000.0, 0.0, 0.0], [1000.0, 0.0, 0.0], [0.0, 1000.0, 999.0]])
    labels = np.array([0, 0, 1, 2])
    expected = [2 - math.log(math.e + 1),  # as above
                1000 - math.log(2),  # 1000 - log(e^0 + e^0)
                -1000.0,  # 0 - log(e^1000 + 1) = -1000 - log(1 + e^-1000), and e^-1000 underflows
                999 - 1000.0]  # 999 - log(e^0 + e^1000) = -1 - log(1 + e^-1000)
    got = lira.logit_scaled_confidence(logits, labels)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    # the probability-space formula agrees where it does not overflow
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert got[0] == pytest.approx(math.log(p[0]) - math.log(1 - p[0]))


def test_logit_scaled_confidence_batch_shape_and_errors():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 4)) * 50
    labels = rng.integers(0, 4, size=(2, 5))
    got = lira.logit_scaled_confidence(logits, labels)
    assert got.shape == (2, 5) and np.isfinite(got).all()
    z = logits[1, 3]
    others = np.delete(z, labels[1, 3])
    assert got[1, 3] == pytest.approx(z[labels[1, 3]] - (others.max() + math.log(np.exp(others - others.max()).sum())))
    with pytest.raises(ValueError, match="labels must lie in"):
        lira.logit_scaled_confidence(logits, np.full((2, 5), 4))
    with pytest.raises(ValueError, match="labels shape"):
        lira.logit_scaled_confidence(logits, labels[0])


# Hand ROC example: scores sorted 0.9(member) 0.8(member) 0.8(non) 0.3(non) 0.1(member);
# 3 members, 2 non-members. Points: inf -> (0, 0); 0.9 -> (0, 1/3); 0.8 (tie) -> (1/2, 2/3);
# 0.3 -> (1, 2/3); 0.1 -> (1, 1).
# AUC: 0.5 * (1/3 + 2/3)/2 + 0.5 * 2/3 = 1/4 + 1/3 = 7/12.
# Mann-Whitney: pairs (0.9,0.8) 1, (0.9,0.3) 1, (0.8,0.8) 1/2, (0.8,0.3) 1, (0.1,.) 0 -> 3.5/6 = 7/12.
ROC_SCORES = np.array([0.1, 0.8, 0.3, 0.9, 0.8])
ROC_MEMBER = np.array([True, False, False, True, True])


def test_roc_curve_hand_example_with_tie():
    fpr, tpr, thr = pm.roc_curve(ROC_SCORES, ROC_MEMBER)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.8, 0.3, 0.1])
    assert pm.auc(fpr, tpr) == pytest.approx(7 / 12)
    assert pm.roc_auc(ROC_SCORES, ROC_MEMBER) == pytest.approx(7 / 12)


def test_tpr_at_fpr_and_balanced_accuracy_hand_example():
    fpr, tpr, _ = pm.roc_curve(ROC_SCORES, ROC_MEMBER)
    assert pm.tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(1 / 3)  # (0, 1/3) is the best at FPR 0
    assert pm.tpr_at_fpr(fpr, tpr, 0.4) == pytest.approx(1 / 3)  # (1/2, 2/3) is over budget
    assert pm.tpr_at_fpr(fpr, tpr, 0.5) == pytest.approx(2 / 3)
    # balanced accuracy (1 + tpr - fpr)/2 per point: 1/2, 2/3, 7/12, 1/3, 1/2 -> max 2/3
    assert pm.balanced_attack_accuracy(fpr, tpr) == pytest.approx(2 / 3)


def test_roc_auc_equals_mann_whitney_with_many_ties():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 6, size=300).astype(float)  # six values: ties everywhere
    member = rng.random(300) < 0.4
    scores += 0.7 * member  # make the task non-trivial
    pos, neg = scores[member][:, None], scores[~member][None, :]
    mann_whitney = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
    assert pm.roc_auc(scores, member) == pytest.approx(mann_whitney, abs=1e-12)
    fpr, tpr, _ = pm.roc_curve(scores, member)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_roc_rejects_one_class_and_nan():
    with pytest.raises(ValueError, match="both members and non-members"):
        pm.roc_curve(np.array([1.0, 2.0]), np.array([True, True]))
    with pytest.raises(ValueError, match="NaN"):
        pm.roc_curve(np.array([1.0, np.nan]), np.array([True, False]))


def test_bootstrap_ci_width_matches_null_standard_error():
    # Under no signal with P = N = 500 and no ties, Var(AUC) = (P + N + 1) / (12 P N)
    # = 1001 / 3e6, SE = 0.01827, so a 95% interval is about 2 * 1.96 * SE = 0.0716 wide.
    rng = np.random.default_rng(3)
    scores = rng.normal(size=1000)
    member = np.arange(1000) < 500
    low, high = pm.bootstrap_auc_ci(scores, member, n_boot=1000, seed=0)
    assert low < pm.roc_auc(scores, member) < high
    assert 0.06 < high - low < 0.085
    assert (low, high) == pm.bootstrap_auc_ci(scores, member, n_boot=1000, seed=0)  # seeded


def test_aop_paper_example_and_no_leak_identity():
    # 0.9752 / (2 * 0.5389)^2 = 0.9752 / 1.16165284 = 0.83949...
    assert round(pm.aop(0.9752, 0.5389), 4) == 0.8395
    assert pm.aop(0.8, 0.5) == pytest.approx(0.8)  # AUC 1/2: (2 * 1/2)^2 = 1
    with pytest.raises(ValueError, match="auc"):
        pm.aop(0.9, 0.0)


def test_loss_threshold_scores():
    np.testing.assert_array_equal(loss.loss_threshold_scores(np.array([0.1, 2.0])), [-0.1, -2.0])


def test_attack_metrics_json_and_exact_low_fpr_end():
    rng = np.random.default_rng(4)
    n = 20000
    member = rng.random(n) < 0.5
    scores = rng.normal(size=n) + 0.5 * member
    fpr, tpr, _ = pm.roc_curve(scores, member)
    metrics = pm.attack_metrics(scores, member, accuracy=0.9, n_boot=50)
    json.dumps(metrics)  # plain Python types only
    roc = metrics["roc"]
    assert len(roc["fpr"]) <= 520 < len(fpr)
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    for target, key in ((0.001, "tpr_at_0.1pct_fpr"), (0.01, "tpr_at_1pct_fpr")):
        exact = pm.tpr_at_fpr(fpr, tpr, target)
        assert metrics[key] == exact == pm.tpr_at_fpr(np.array(roc["fpr"]), np.array(roc["tpr"]), target)
    assert metrics["auc"] == pytest.approx(pm.auc(fpr, tpr))
    assert metrics["auc_ci95"][0] < metrics["auc"] < metrics["auc_ci95"][1]
    assert metrics["aop"] == pytest.approx(0.9 / (2 * metrics["auc"]) ** 2)
    assert metrics["balanced_accuracy"] == pytest.approx(pm.balanced_attack_accuracy(fpr, tpr))
    assert "aop" not in pm.attack_metrics(scores, member, n_boot=0)


def test_attack_metrics_small_curve_kept_whole():
    metrics = pm.attack_metrics(ROC_SCORES, ROC_MEMBER, n_boot=0)
    assert metrics["roc"]["fpr"] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert metrics["auc_ci95"] is None and metrics["n_members"] == 3 and metrics["n_nonmembers"] == 2


def test_tpr_below_the_fpr_floor_is_not_measurable():
    # 2 non-members: the smallest non-zero FPR is 1/2, so neither 0.1 % nor 1 % FPR can be measured
    metrics = pm.attack_metrics(ROC_SCORES, ROC_MEMBER, n_boot=0)
    assert metrics["fpr_floor"] == 0.5
    assert metrics["tpr_at_0.1pct_fpr"] is None and metrics["tpr_at_1pct_fpr"] is None
    # 500 non-members: 1 % is measurable (floor 0.002), 0.1 % is not
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    metrics = pm.attack_metrics(rng.normal(size=1000) + member, member, n_boot=0)
    assert metrics["fpr_floor"] == pytest.approx(0.002)
    assert metrics["tpr_at_0.1pct_fpr"] is None and 0 <= metrics["tpr_at_1pct_fpr"] <= 1
