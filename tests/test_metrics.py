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


def test_bootstrap_ci_is_the_image_loop_and_counts_clusters():
    """Without clusters: the same numbers as the loop that resampled images and scored each
    resample with binary_metrics (what this function was). With clusters of duplicates: wider."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.3 * y + 0.7 * rng.random(60), 0, 1)
    got = bootstrap_ci(y, p, 0.5, n_boot=400, seed=7)
    draw = np.random.default_rng(7)
    loop = {m: [] for m in got}
    for _ in range(400):
        idx = draw.integers(0, 60, 60)
        for m, v in binary_metrics(y[idx], p[idx], 0.5).items():
            if m in loop:
                loop[m].append(v)
    for m, (lo, hi) in got.items():
        assert (lo, hi) == pytest.approx(tuple(np.nanpercentile(loop[m], [2.5, 97.5])), abs=1e-12)
    y4, p4 = np.repeat(y, 4), np.repeat(p, 4)
    naive = bootstrap_ci(y4, p4, 0.5, n_boot=400)["auc"]
    grouped = bootstrap_ci(y4, p4, 0.5, n_boot=400, clusters=np.repeat(np.arange(60), 4))["auc"]
    assert grouped[1] - grouped[0] > 1.5 * (naive[1] - naive[0])


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