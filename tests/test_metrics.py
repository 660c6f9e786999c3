import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from bus_paper.metrics import (
    auc_score,
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    interval_position,
    interval_side,
    paired_bootstrap,
)


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    m = binary_metrics(y, p, 0.5)
    d = p >= 0.5
    assert m["accuracy"] == pytest.approx(accuracy_score(y, d))
    assert m["precision"] == pytest.approx(precision_score(y, d))
    assert m["recall"] == pytest.approx(recall_score(y, d))
    assert m["f1"] == pytest.approx(f1_score(y, d))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - d))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == 200


def test_auc_equals_sklearn_with_ties_float32_and_tiny_sets():
    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(2, 150))
        y = rng.integers(0, 2, n)
        if not 0 < y.sum() < n:
            assert np.isnan(auc_score(y, rng.random(n)))
            continue
        p = rng.random(n)
        if trial % 3 == 0:
            p = np.round(p, 1)                     # many ties
        if trial % 3 == 1:
            p = p.astype(np.float32).astype(float)  # what predictions.csv holds
        assert auc_score(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="entries"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 \\(benign\\)"):
        binary_metrics([0, 2], [0.1, 0.2])


def test_threshold_separates_perfectly_separable_validation():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35])  # separable, but not at 0.5
    t = choose_threshold(y, p)
    assert binary_metrics(y, p, t)["accuracy"] == 1.0
    assert binary_metrics(y, p, choose_threshold(y, p, "f1"))["f1"] == 1.0


def test_bootstrap_ci_brackets_point_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)

    def width(n):
        y = rng.integers(0, 2, n)
        p = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
        ci = bootstrap_ci(y, p, 0.5, n_boot=300)
        point = binary_metrics(y, p, 0.5)["auc"]
        assert ci["auc"][0] <= point <= ci["auc"][1]
        return ci["auc"][1] - ci["auc"][0]

    assert width(1000) < width(60)


def test_paired_bootstrap_detects_real_difference_only():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    good = np.clip(0.5 * y + 0.5 * rng.random(300), 0, 1)
    bad = rng.random(300)
    res = paired_bootstrap(y, good, bad, n_boot=300)
    assert res["delta"] > 0.2 and res["lo"] > 0 and res["p"] < 0.01
    same = paired_bootstrap(y, good, good, n_boot=100)
    assert same["delta"] == 0 and same["p"] == 1.0


def test_paired_bootstrap_of_seed_sets_is_the_difference_of_seed_means():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    a = [np.clip(0.4 * y + 0.6 * rng.random(120), 0, 1) for _ in range(3)]
    b = [rng.random(120) for _ in range(2)]
    res = paired_bootstrap(y, a, b, "accuracy", [0.4, 0.5, 0.6], 0.5, n_boot=200)
    expect = (np.mean([binary_metrics(y, p, t)["accuracy"] for p, t in zip(a, [0.4, 0.5, 0.6])])
              - np.mean([binary_metrics(y, p, 0.5)["accuracy"] for p in b]))
    assert res["delta"] == pytest.approx(expect) and res["n_boot"] == 200
    one = paired_bootstrap(y, a[:1], b[:1], n_boot=100)   # a list of one run = that run
    assert one == paired_bootstrap(y, a[0], b[0], n_boot=100)
    with pytest.raises(ValueError, match="2 thresholds for 3 runs"):
        paired_bootstrap(y, a, b, threshold_a=[0.5, 0.5])


def test_every_interval_reads_the_same_side_of_zero():
    nan = float("nan")
    assert [interval_side(*ci) for ci in [(0.1, 2), (-2, -0.1), (-1, 1), (0, 1), (nan, 1)]] == \
        [1, -1, 0, 0, None]
    assert [interval_position(*ci) for ci in [(0.1, 2), (-2, -0.1), (-1, 1), (nan, nan)]] == \
        ["above 0", "below 0", "contains 0", "undefined"]
    # the legend agrees: a claim that the difference is positive, with no size
    from bus_paper.core import stats
    assert [stats.verdict("difference", nan, lo, hi, sign=+1)
            for lo, hi in [(0.1, 2), (-2, -0.1), (-1, 1)]] == \
        [stats.REPRODUCED, stats.CONTRADICTED, stats.NOT_RESOLVED]