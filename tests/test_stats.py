"""The verdict legend (one case per word), the learning checks, and the two-level bootstrap
against a literal loop and against scipy's bootstrap."""

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from bus_paper.core import stats as S


# ----------------------------------------------------------------------------- legend
@pytest.mark.parametrize("kind, value, lo, hi, word", [
    ("difference", -7.5, -9.0, -2.0, S.REPRODUCED),       # excludes 0 on the paper's side, reaches
    ("difference", -7.5, -12.0, -9.0, S.REPRODUCED),      # beyond the paper's value still reaches
    ("difference", 4.0, 0.5, 2.0, S.SMALLER),             # right side, short of the value
    ("difference", -7.5, -3.6, 4.1, S.ABSENT),            # contains 0, excludes -7.5 (issue's case)
    ("difference", 3.0, -1.0, 5.0, S.NOT_RESOLVED),       # contains both
    ("difference", -2.0, 0.3, 1.0, S.CONTRADICTED),       # excludes 0 on the other side
    ("level", 97.25, 90.0, 98.0, S.REPRODUCED),
    ("level", 90.0, 92.0, 96.0, S.REPRODUCED),            # lies above the paper's value
    ("level", 97.25, 75.0, 85.0, S.SMALLER),
])
def test_legend_one_case_per_word(kind, value, lo, hi, word):
    assert S.verdict(kind, value, lo, hi) == word
    assert word in S.LEGEND


def test_mechanism_and_setting_override_the_interval():
    assert S.verdict("difference", -7.5, -9.0, -2.0, learned=False) == S.NOT_TESTED
    assert S.verdict("level", 97.0, None, None, testable=False) == S.NOT_TESTABLE
    with pytest.raises(ValueError, match="no interval"):
        S.verdict("level", 97.0, math.nan, 1.0)
    with pytest.raises(ValueError, match="non-zero"):
        S.Claim("000", "x", "difference", 0.0)


def test_every_word_is_in_the_legend_and_nothing_else():
    assert len(S.LEGEND) == 7
    rng = np.random.default_rng(0)
    for _ in range(500):
        lo, hi = np.sort(rng.normal(0, 5, 2))
        value = rng.normal(0, 5)
        assert S.verdict("difference", value, lo, hi) in S.LEGEND
        assert S.verdict("level", value, lo, hi) in (S.REPRODUCED, S.SMALLER)


# ----------------------------------------------------------------------------- learning checks
def test_learning_checks_on_the_issue_numbers():
    # DINO at K = 65536: 10.920 -> 10.892, uniform output is ln K = 11.09: not learned
    assert not S.ssl_loss_check([10.920, 10.892], math.log(65536)).passed
    # the proposed model's NT-Xent at batch 64: 2.92 -> 0.75 against ln 127 = 4.84: learned
    assert S.ssl_loss_check([2.92, 0.75], S.nt_xent_chance(64)).passed
    assert not S.moved_check([12.135, 12.029]).passed          # paper 002's L_con
    assert S.moved_check([12.1, 9.0]).passed
    assert not S.attention_check([[0.335, 0.337, 0.328]]).passed  # paper 004's attention
    assert S.attention_check([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]).passed
    assert not S.spread_check(np.linspace(0.45, 0.56, 50)).passed
    assert S.spread_check(np.linspace(0.05, 0.95, 50)).passed
    assert not S.auc_above_chance_check(48.7).passed and S.auc_above_chance_check(0.61).passed
    checks = [S.auc_above_chance_check(0.6), S.moved_check([12.135, 12.029])]
    assert S.mechanism(checks) == "failed: auxiliary loss moved"
    assert S.mechanism(checks[:1]) == "passed" and S.mechanism([]) == "n/a"


def test_the_chance_loss_is_the_saved_runs_own():
    """One rule for every pretraining table: DINO's ln K with the K the run used; NT-Xent's
    ln(2N - 1) with N the batch, or the image pool when smaller (mini-MIAS: 64 ROIs, batch 128)."""
    assert S.ssl_chance_loss({"dino": {"out_dim": 4096}}, 64) == pytest.approx(math.log(4096))
    assert S.ssl_chance_loss({}, 64) == pytest.approx(math.log(127))
    assert S.ssl_chance_loss({"n_images": 5000}, 64) == pytest.approx(math.log(127))
    assert S.ssl_chance_loss({"n_images": 64}, 128) == pytest.approx(math.log(127))
    assert S.ssl_chance_loss({"n_images": None}, 32) == pytest.approx(math.log(63))


# ----------------------------------------------------------------------------- bootstrap
def _data(n=120, runs=3, seed=1):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    p = np.stack([np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2 + 0.1 * r, n), 0, 1)
                  for r in range(runs)])
    return y, p


def test_two_level_bootstrap_equals_a_literal_loop():
    y, pa = _data()
    _, pb = _data(seed=7)
    clusters = np.arange(y.size) // 3            # groups of three images
    B, seed = 200, 3
    got = S.two_level_bootstrap(y, pa, pb, clusters, n_boot=B, seed=seed)

    # the same resampling, written out: draw clusters, then runs; expand the drawn clusters into
    # images and score each drawn run with sklearn
    rng = np.random.default_rng(seed)
    ids = np.unique(clusters, return_inverse=True)[1]
    C = ids.max() + 1
    draws = rng.integers(0, C, size=(B, C))
    ra = rng.integers(0, len(pa), size=(B, len(pa)))
    rb = rng.integers(0, len(pb), size=(B, len(pb)))
    members = [np.flatnonzero(ids == c) for c in range(C)]
    ref = []
    for b in range(B):
        idx = np.concatenate([members[c] for c in draws[b]])
        a = np.mean([roc_auc_score(y[idx], pa[r][idx]) for r in ra[b]])
        bb = np.mean([roc_auc_score(y[idx], pb[r][idx]) for r in rb[b]])
        ref.append(100 * (a - bb))
    lo, hi = np.percentile(ref, [2.5, 97.5])
    assert got.lo == pytest.approx(lo, abs=1e-9) and got.hi == pytest.approx(hi, abs=1e-9)
    whole = 100 * (np.mean([roc_auc_score(y, p) for p in pa]) - np.mean([roc_auc_score(y, p) for p in pb]))
    assert got.estimate == pytest.approx(whole, abs=1e-9)
    assert (got.n_images, got.n_clusters, got.n_runs, got.n_boot) == (120, 40, 3, B)


def test_one_run_no_clusters_matches_scipy_bootstrap():
    y, p = _data(n=200, runs=1)
    got = S.two_level_bootstrap(y, p, n_boot=4000, seed=0)
    ref = sps.bootstrap((y, p[0]), lambda a, b: 100 * roc_auc_score(a, b), paired=True,
                        vectorized=False, n_resamples=4000, method="percentile",
                        random_state=np.random.default_rng(1)).confidence_interval
    assert got.lo == pytest.approx(ref.low, abs=1.0)
    assert got.hi == pytest.approx(ref.high, abs=1.0)


def test_clusters_and_seeds_widen_the_interval():
    y, p = _data(n=60, runs=1)
    # every image four times: as independent images the interval is too narrow by about 2x
    y4, p4 = np.repeat(y, 4), np.repeat(p, 4, axis=1)
    naive = S.two_level_bootstrap(y4, p4, n_boot=1000)
    clustered = S.two_level_bootstrap(y4, p4, clusters=np.repeat(np.arange(60), 4), n_boot=1000)
    assert clustered.hi - clustered.lo > 1.5 * (naive.hi - naive.lo)
    # three seeds that disagree (one below chance) must widen it too
    bad = np.stack([p[0], p[0], 1 - p[0]])
    seeds = S.two_level_bootstrap(y, bad, n_boot=1000)
    fixed = S.two_level_bootstrap(y, bad[:1], n_boot=1000)
    assert seeds.hi - seeds.lo > 3 * (fixed.hi - fixed.lo)


def test_paired_runs_use_one_draw():
    y, pa = _data()
    same = S.two_level_bootstrap(y, pa, pa, paired_runs=True, n_boot=100)
    assert same.lo == same.hi == same.estimate == 0.0
    with pytest.raises(ValueError, match="as many runs"):
        S.two_level_bootstrap(y, pa, pa[:2], paired_runs=True)


def test_mean_points_two_level_equals_a_literal_loop():
    """Scores that are not predictions (a heatmap's share in the lesion): the two-level interval of
    their mean is the loop that draws clusters, then runs, and averages the drawn images' scores,
    leaving out the unscored (NaN) ones."""
    rng = np.random.default_rng(4)
    n, runs, B, seed = 30, 3, 150, 5
    va, vb = rng.random((runs, n)), rng.random((2, n)) * 0.5
    va[:, 7] = vb[:, 7] = np.nan                       # an image without a mask
    clusters = np.arange(n) // 2
    got = S.two_level_bootstrap(np.zeros(n), va, vb, clusters, statistic=S.mean_points,
                                n_boot=B, seed=seed)
    rng = np.random.default_rng(seed)
    C = n // 2
    draws = rng.integers(0, C, size=(B, C))
    ra, rb = rng.integers(0, runs, size=(B, runs)), rng.integers(0, 2, size=(B, 2))
    ref = []
    for b in range(B):
        idx = np.concatenate([np.flatnonzero(clusters == c) for c in draws[b]])
        ref.append(100 * (np.mean([np.nanmean(va[r][idx]) for r in ra[b]])
                          - np.mean([np.nanmean(vb[r][idx]) for r in rb[b]])))
    assert got.lo == pytest.approx(np.percentile(ref, 2.5), abs=1e-9)
    assert got.hi == pytest.approx(np.percentile(ref, 97.5), abs=1e-9)
    assert got.estimate == pytest.approx(100 * (np.nanmean(va) - np.nanmean(vb)), abs=1e-9)
    assert got.p == pytest.approx(S.bootstrap_p(ref)) and got.p < 0.01
    assert math.isnan(S.two_level_bootstrap(np.zeros(n), va, statistic=S.mean_points, n_boot=10).p)


def test_ece_points_is_the_calibration_error_of_the_drawn_images():
    from bus_paper.core.calibration import expected_calibration_error
    y, p = _data(n=90, runs=2)
    w = np.random.default_rng(0).multinomial(90, np.full(90, 1 / 90), size=5)
    got = S.ece_points(10)(y, p[0], w)
    for b in range(5):
        idx = np.repeat(np.arange(90), w[b])
        assert got[b] == pytest.approx(100 * expected_calibration_error(y[idx], p[0][idx], 10))
    assert S.ece_points(10)(y, p[0], np.ones((1, 90)))[0] == pytest.approx(
        100 * expected_calibration_error(y, p[0], 10))


def test_core_doctests():
    """The examples in the core library's docstrings are true (they once went stale unseen)."""
    import doctest

    from bus_paper import metrics
    from bus_paper.core import calibration, runs, stats
    for module in (stats, runs, calibration, metrics):
        assert doctest.testmod(module).failed == 0, module.__name__


# ----------------------------------------------------------------------------- metrics, two levels
def test_weighted_metrics_equal_the_metrics_of_the_resample_they_weight():
    from bus_paper.metrics import binary_metrics
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    p = np.round(rng.random(40), 2)              # ties, and probabilities on the threshold
    w = rng.integers(0, 4, size=(25, 40))
    for metric in (*S.THRESHOLD_METRICS, "auc"):
        got = S.weighted_metric(metric, y, p, 0.5, w)
        for b in range(len(w)):
            idx = np.repeat(np.arange(40), w[b])   # the resample the weights stand for
            want = binary_metrics(y[idx], p[idx], 0.5)[metric]
            assert got[b] == pytest.approx(want, nan_ok=True), (metric, b)


def test_two_level_metrics_and_paired_are_the_tested_bootstrap_for_the_auc():
    """Same draws as two_level_bootstrap (runs, then clusters): the AUC intervals coincide."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    a = np.clip(y * 0.4 + rng.random((3, 60)) * 0.7, 0, 1)
    b = rng.random((2, 60))
    groups = np.arange(60) // 4
    got = S.two_level_metrics(y, a, [0.5, 0.4, 0.6], groups, n_boot=300, seed=2)["auc"]
    ref = S.two_level_bootstrap(y, a, clusters=groups, n_boot=300, seed=2)
    assert (100 * got.estimate, 100 * got.lo, 100 * got.hi) == pytest.approx(
        (ref.estimate, ref.lo, ref.hi))
    assert (got.n_clusters, got.n_runs) == (15, 3)
    d, p = S.two_level_paired(y, a, [0.5] * 3, b, [0.5] * 2, groups, n_boot=300, seed=2)
    ref = S.two_level_bootstrap(y, a, b, groups, n_boot=300, seed=2)
    assert (100 * d.estimate, 100 * d.lo, 100 * d.hi) == pytest.approx((ref.estimate, ref.lo, ref.hi))
    assert d.lo > 0 and p < 0.05


def test_duplicates_do_not_narrow_a_cluster_interval():
    """Three identical copies of every test image carry no more information than one: resampled
    by cluster, the interval is that of the unduplicated set; resampled by image it would shrink
    by about sqrt(3) (what BUSI's duplicate groups did to the book's intervals)."""
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 80)
    p = np.clip(y * 0.3 + rng.random(80) * 0.8, 0, 1)
    one = S.two_level_metrics(y, p, [0.5], n_boot=2000, seed=1)
    y3, p3, groups = np.repeat(y, 3), np.repeat(p, 3), np.repeat(np.arange(80), 3)
    clustered = S.two_level_metrics(y3, p3, [0.5], groups, n_boot=2000, seed=1)
    naive = S.two_level_metrics(y3, p3, [0.5], n_boot=2000, seed=1)
    for m in ("auc", "accuracy", "recall"):
        width = one[m].hi - one[m].lo
        assert clustered[m].hi - clustered[m].lo == pytest.approx(width, rel=0.15), m
        assert naive[m].hi - naive[m].lo < 0.75 * width, m


def test_the_one_cluster_draw_and_what_the_papers_take_from_it():
    # cluster_weights: each image weighs as often as its cluster was drawn (a plain loop)
    clusters = np.array(["b", "a", "b", "c", "a", "d"])
    w = S.cluster_weights(clusters, 6, 50, np.random.default_rng(4))
    rng = np.random.default_rng(4)
    ids = np.unique(clusters, return_inverse=True)[1]
    for row in w:
        draw = rng.integers(0, 4, 4)
        assert row.tolist() == [float((draw == ids[i]).sum()) for i in range(6)]
    # paper 004's weights are this draw, on the same generator: its numbers did not move
    from bus_paper.papers.p004.evaluate import cluster_weights
    old_rng, new_rng = np.random.default_rng(9), np.random.default_rng(9)
    g = np.array([3, 1, 3, 10, 2, 10])
    _, inverse = np.unique(g.astype(str), return_inverse=True)   # the code it replaced
    counts = np.zeros((40, inverse.max() + 1))
    draws = old_rng.integers(0, inverse.max() + 1, size=(40, inverse.max() + 1))
    np.add.at(counts, (np.repeat(np.arange(40), inverse.max() + 1), draws.ravel()), 1)
    assert (cluster_weights(g, 40, new_rng) == counts[:, inverse]).all()
    # the interval and p of a difference
    d = np.r_[np.linspace(-1, 3, 99), np.nan]
    lo, hi, ok = S.percentile_interval(d)
    assert ok == 99 and (lo, hi) == tuple(np.percentile(d[:-1], [2.5, 97.5]))
    assert S.bootstrap_p(d) == pytest.approx(2 * (d[:-1] <= 0).mean())
    assert math.isnan(S.bootstrap_p([np.nan])) and S.bootstrap_p([1.0, 2.0]) == 0.0
