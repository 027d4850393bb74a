"""Empirical ε (issue 24, item 3): the lower bound an attack's ROC implies, the one-run audit of Steinke,
Nasr & Jagielski 2023, and the check that a DP-SGD run's empirical ε stays under its claim -- a check
that a deliberately broken accountant (no noise, the same claim) fails."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from pipeline.privacy.metrics import attack_metrics, clopper_pearson, empirical_epsilon
from pipeline.privacy.one_run import draw_canaries, epsilon_bound, guess_counts, one_run_epsilon, p_value


def _labels(n: int = 1000) -> np.ndarray:
    return np.r_[np.ones(n // 2, bool), np.zeros(n - n // 2, bool)]


# -- Clopper-Pearson -------------------------------------------------------------------------------------
def test_clopper_pearson_matches_scipy_binomtest_and_narrows_with_n():
    k, n = np.array([0, 3, 10, 7]), np.array([10, 10, 10, 50])
    low, high = clopper_pearson(k, n)
    for ki, ni, lo, hi in zip(k, n, low, high):
        ci = stats.binomtest(int(ki), int(ni)).proportion_ci(0.95, method="exact")
        assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)
    assert low[0] == 0.0 and high[2] == 1.0
    # the same observed rate 0.3 at growing n: the interval shrinks around it, monotonically
    ns = np.array([10, 100, 1000, 10000])
    low, high = clopper_pearson(0.3 * ns, ns)
    assert np.all(np.diff(low) > 0) and np.all(np.diff(high) < 0) and np.all((low < 0.3) & (high > 0.3))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson(np.array([11]), 10)


# -- the ROC bound -----------------------------------------------------------------------------------------
def test_roc_bound_is_zero_without_information_and_large_for_perfect_separation():
    y = _labels()
    rng = np.random.default_rng(0)
    noise = [empirical_epsilon(rng.normal(size=y.size), y) for _ in range(5)]
    assert max(noise) < 0.3
    # perfect separation, 500 vs 500: TPR_lo = 0.025^(1/500), FPR_hi = 1 - 0.025^(1/500)
    perfect = empirical_epsilon(y.astype(float), y, delta=0.0)
    q = 0.025 ** (1 / 500)
    assert perfect == pytest.approx(math.log(q / (1 - q)), rel=1e-9) and perfect > 4.5
    # more data, a tighter interval, a larger bound; a larger δ, a smaller one
    assert empirical_epsilon(_labels(4000).astype(float), _labels(4000), 0.0) > perfect
    assert empirical_epsilon(y.astype(float), y, delta=0.1) < perfect
    # reversed scores: the symmetric bound (TNR <= e^ε FNR + δ) does not see them either way round; the
    # forward one needs "higher = member", so an anti-correlated attack is read as no evidence
    assert empirical_epsilon(-y.astype(float), y) == 0.0


def test_attack_metrics_store_the_empirical_epsilon_beside_the_auc():
    y = _labels(400)
    scores = np.random.default_rng(1).normal(size=y.size) + 1.5 * y
    out = attack_metrics(scores, y, n_boot=0, delta=1e-6)
    assert out["empirical_epsilon"] == pytest.approx(empirical_epsilon(scores, y, 1e-6))
    assert out["empirical_epsilon_delta"] == 1e-6 and 0.5 < out["empirical_epsilon"] < 3


# -- the one-run audit -------------------------------------------------------------------------------------
def test_one_run_p_value_and_bound_by_hand():
    # all r = 100 guesses right, pure ε: the bound solves q^100 = 0.05, q = e^ε / (1 + e^ε)
    q = 0.05 ** (1 / 100)
    assert epsilon_bound(1000, 100, 100) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert p_value(1000, 10, 7, 0.0) == pytest.approx(stats.binom.sf(6, 10, 0.5))
    assert p_value(1000, 10, 7, 1.0, delta=1e-5) > p_value(1000, 10, 7, 1.0)  # δ only loosens
    assert epsilon_bound(1000, 10, 5) == 0.0  # a coin's score
    assert guess_counts(np.array([3.0, 2.0, 1.0, 0.0]), np.array([True, False, True, False]), 1, 1) == (2, 2)


def test_one_run_bound_is_zero_for_noise_and_large_for_perfect_scores():
    included = draw_canaries(1000, seed=0)
    assert 400 < included.sum() < 600
    rng = np.random.default_rng(0)
    assert one_run_epsilon(rng.normal(size=1000), included).epsilon == 0.0
    perfect = one_run_epsilon(included.astype(float), included, delta=1e-5)
    assert perfect.epsilon > 4 and perfect.correct == perfect.guesses
    # the δ term 2 m δ: a δ near 1 / m leaves nothing to bound
    assert one_run_epsilon(included.astype(float), included, delta=1e-3).epsilon < perfect.epsilon


# -- a DP-SGD run against its claim ------------------------------------------------------------------------
SHAPE = (3, 6, 6)


def _noise_images(n: int, seed: int, classes: int = 4):
    from pipeline.data.tensors import TensorData

    gen = torch.Generator().manual_seed(seed)
    return TensorData(torch.rand((n, *SHAPE), generator=gen), torch.randint(0, classes, (n,), generator=gen))


def _broken_method():
    """DP-SGD whose noise is switched off after Opacus calibrated it, while its accountant still claims
    the target ε: the bug a privacy audit exists to catch."""
    import pipeline.methods.dp as dp

    class NoNoise(dp.OpacusPrivacy):
        def wrap(self, *args, **kwargs):
            wrapped = super().wrap(*args, **kwargs)
            self.optimizer.noise_multiplier = 0.0
            return wrapped

        def spent(self):
            return self.config.epsilon

    class BrokenDPSGD(dp.DPSGD):
        def train(self, context, out_dir, progress):
            original, dp.OpacusPrivacy = dp.OpacusPrivacy, NoNoise
            try:
                return super().train(context, out_dir, progress)
            finally:
                dp.OpacusPrivacy = original

    return BrokenDPSGD


def test_dp_sgd_empirical_epsilon_stays_under_the_claim_and_a_broken_accountant_fails(tmp_path: Path,
                                                                                         monkeypatch):
    """200 random-label canaries (each in w.p. 1/2) beside 32 members; an MLP that memorises what it trains
    on without noise. At a claimed ε = 1 both bounds stay under the claim; with the noise off (same claim)
    the canaries' losses give both bounds above it."""
    pytest.importorskip("opacus")
    import pipeline.methods.dp as dp
    from pipeline.classifiers.train import TrainConfig
    from pipeline.methods import MethodContext, RealData

    def mlp(recipe, num_classes):
        torch.manual_seed(recipe.seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), 256), nn.ReLU(), nn.Linear(256, num_classes))

    monkeypatch.setattr(dp, "build_classifier", mlp)
    recipe = TrainConfig(epochs=40, batch_size=16, lr=0.03, device="cpu", augment=())
    context = MethodContext(nn.Identity(), recipe, recipe, 4.0, 1.0, 4, SHAPE, (), 1,
                            RealData(_noise_images(32, 1), None), 0)
    config = dp.DPConfig(epsilon=1.0, delta=1e-5, epochs=40, batch_size=16, lr=0.03, accountant="rdp")
    pool = _noise_images(200, 2)
    private = dp.one_run_audit(config, context, pool, tmp_path / "dp")
    broken = dp.one_run_audit(config, context, pool, tmp_path / "broken", method=_broken_method())
    assert private.claimed_epsilon <= 1.0 + 1e-3 and private.train["noise_multiplier"] > 1
    assert max(private.one_run.epsilon, private.roc_epsilon) <= private.claimed_epsilon
    assert broken.claimed_epsilon == 1.0 and broken.train["noise_multiplier"] == 0.0
    assert broken.one_run.epsilon > broken.claimed_epsilon and broken.roc_epsilon > broken.claimed_epsilon


def test_an_audit_entry_names_the_formal_epsilon_or_none():
    from pipeline.audit import AuditedModel, _model_entry
    from pipeline.experiment import epsilon_figures

    y = _labels(200)
    scores = np.random.default_rng(2).normal(size=y.size) + y
    mode = {"attack": "loss", "loss": {**attack_metrics(scores, y, n_boot=0, delta=1e-6), "scores": scores}}
    dp = AuditedModel("dp-sgd ε=2", nn.Identity(), None, 0.8, ("transfer",), epsilon=1.99, delta=1e-6)
    entry = _model_entry(0.8, {"transfer": mode}, dp)
    assert (entry["formal_epsilon"], entry["formal_delta"]) == (1.99, 1e-6)
    assert entry["mia"]["empirical_epsilon_delta"] == 1e-6 and entry["mia"]["empirical_epsilon"] > 0
    plain = _model_entry(0.8, {"transfer": mode}, AuditedModel("teacher", nn.Identity(), None, 0.8, ("transfer",)))
    assert plain["formal_epsilon"] is None and plain["formal_delta"] is None
    assert epsilon_figures(plain) == {"formal_epsilon": "none", "empirical_epsilon": entry["mia"]["empirical_epsilon"]}
