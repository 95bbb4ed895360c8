"""Metrics, confidence intervals and fidelity, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from edgeopt.errors import ConfigError, DataError
from edgeopt.evaluation import fidelity, paired_difference, score, wilson_interval


def test_top1_top5_and_wilson_interval():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((400, 10))
    labels = rng.integers(0, 10, 400)
    logits[np.arange(300), labels[:300]] += 10  # first 300 right
    top1 = score("top1", logits, labels)
    assert math.isclose(top1.value, (logits.argmax(1) == labels).mean())
    lo, hi = wilson_interval(top1.value * 400, 400)
    assert (top1.ci_low, top1.ci_high) == (lo, hi) and lo < top1.value < hi
    assert score("top5", logits, labels).value >= top1.value
    # Wilson interval for 0/10 still has a positive upper bound (normal approximation would give 0)
    assert wilson_interval(0, 10)[1] > 0.2


def test_auc_from_reconstruction_error_matches_sklearn():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    labels = np.r_[np.zeros(100), np.ones(100)]
    recon = x + rng.standard_normal(x.shape).astype(np.float32) * np.where(labels[:, None] == 1, 1.0, 0.3)
    result = score("auc", recon, labels, inputs=x)
    expected = roc_auc_score(labels, ((recon - x) ** 2).mean(1))
    assert math.isclose(result.value, expected, rel_tol=1e-9)
    assert result.ci_low <= result.value <= result.ci_high


def test_spearman_and_mse():
    y = np.arange(50, dtype=float)
    out = (y ** 2)[:, None]
    assert math.isclose(score("spearman", out, y).value, spearmanr(out[:, 0], y).statistic)
    assert math.isclose(score("mse", np.ones((4, 1)), np.zeros(4)).value, 1.0)


def test_fidelity_against_reference():
    ref = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    noisy = ref + 0.1
    f = fidelity(noisy, ref)
    assert f["top1_agreement"] == 1.0
    expected_sqnr = 10 * math.log10((ref ** 2).sum() / (0.01 * ref.size))
    assert math.isclose(f["sqnr_db"], expected_sqnr)
    assert fidelity(ref, ref)["sqnr_db"] == math.inf
    flipped = ref[:, ::-1]
    assert score("agreement", flipped, None, reference=ref).value == 0.0


def test_paired_difference_interval_covers_the_truth():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 1000)
    base = np.eye(3)[labels]
    cand = base.copy()
    cand[:30] = np.roll(cand[:30], 1, axis=1)  # 30 of 1000 now wrong
    d = paired_difference(score("top1", cand, labels), score("top1", base, labels))
    assert math.isclose(d.value, -0.03)
    assert d.ci_low < -0.03 < d.ci_high and d.ci_high < 0


def test_metric_errors():
    with pytest.raises(ConfigError, match="unknown metric"):
        score("accuracy-ish", np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(DataError, match="needs labels"):
        score("top1", np.zeros((2, 2)), None)
    with pytest.raises(DataError, match="output classes"):
        score("top1", np.zeros((2, 2)), np.array([0, 5]))


def test_custom_callable_metric():
    r = score(lambda out, y: float((out[:, 0] > 0).mean()), np.array([[1.0], [-1.0]]), None)
    assert r.value == 0.5 and r.metric == "<lambda>"
