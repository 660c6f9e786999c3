"""One place for the book's statistics: the verdict legend, learning checks, two-level bootstrap.

A *claim* is a paper's number and what kind of number it is (:class:`Claim`); a *measurement* is
our interval for the same quantity. :func:`verdict` turns the pair into exactly one word of
:data:`LEGEND`, and nothing else in the book writes a verdict word. A claim that rests on a model
that did not learn (see :func:`learning_checks`) is ``not tested at this budget``: untested, not
refuted.

Intervals come from :func:`two_level_bootstrap`: each replicate draws runs (fine-tuning seeds or
folds) with replacement, then clusters (patients, lesions, duplicate groups) with replacement, so
both the model's and the sample's variance are counted. Two models seen on the same images are
compared *paired*: one cluster draw serves both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# ----------------------------------------------------------------------------- the legend
REPRODUCED = "reproduced"
SMALLER = "smaller than claimed"
NOT_RESOLVED = "not resolved"
ABSENT = "absent"
CONTRADICTED = "contradicted"
NOT_TESTED = "not tested at this budget"
NOT_TESTABLE = "not testable here"

LEGEND: dict[str, str] = {
    REPRODUCED: "difference: the interval excludes 0 on the paper's side and reaches the paper's "
                "value; level: the interval reaches the paper's value (contains it or lies above)",
    SMALLER: "difference: the interval excludes 0 on the paper's side but lies short of the "
             "paper's value; level: the interval lies entirely below the paper's value",
    NOT_RESOLVED: "the interval contains both 0 and the paper's value",
    ABSENT: "the interval contains 0 but excludes the paper's value",
    CONTRADICTED: "the interval excludes 0 on the other side",
    NOT_TESTED: "a model the claim rests on failed its learning check: untested, not refuted",
    NOT_TESTABLE: "the data or the setting does not exist publicly",
}

Kind = Literal["level", "difference"]


@dataclass(frozen=True)
class Claim:
    """A paper's claim as data. ``paper_value`` in percentage points (a level such as AUC 97.25,
    or a difference such as -7.5 points); ``measure`` says how we measure it (free text or a key
    the paper's module understands)."""
    paper: str
    claim: str
    kind: Kind
    paper_value: float
    measure: str = ""
    sign: int = 0   # a difference stated without a size ("beats", "helps"): paper_value NaN, +1/-1

    def __post_init__(self) -> None:
        if self.kind not in ("level", "difference"):
            raise ValueError(f"claim kind {self.kind!r}: level | difference")
        if self.kind == "difference" and not _direction_only(self.paper_value, self.sign) and not (
                math.isfinite(self.paper_value) and self.paper_value != 0):
            raise ValueError(f"a difference claim needs a non-zero paper value, or NaN and a "
                             f"sign ({self.claim!r})")



def weighted_auc(y, p, w) -> np.ndarray | float:
    """ROC AUC with case weights (ties count 1/2), for one weight vector ``[n]`` or many
    ``[B, n]`` at once (bootstrap resamples as multiplicities); NaN where a class has weight 0.
    With integer weights the numerator and denominator are exact, so equal AUCs are equal floats.

    >>> float(weighted_auc([0, 1, 1], [0.1, 0.4, 0.4], [1, 1, 1]))
    1.0
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    w = np.asarray(w, dtype=float)
    one = w.ndim == 1
    w = np.atleast_2d(w)
    order = np.argsort(p, kind="mergesort")
    ps, ys, ws = p[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pos = np.add.reduceat(ws * (ys == 1), starts, axis=1)
    neg = np.add.reduceat(ws * (ys == 0), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(1)
    den = pos.sum(1) * neg.sum(1)
    out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return float(out[0]) if one else out


def _direction_only(paper_value: float, sign: int) -> bool:
    return math.isnan(paper_value) and sign in (1, -1)


def verdict(kind: Kind, paper_value: float, lo: float | None, hi: float | None, *,
            learned: bool = True, testable: bool = True, sign: int = 0) -> str:
    """The one word of :data:`LEGEND` for a paper's value against our 95% interval ``[lo, hi]``.

    A difference the paper states without a size (``paper_value`` NaN, ``sign`` +1 or -1) is
    reached by any value on its side: ``reproduced`` when the interval excludes 0 there,
    ``not resolved`` when it contains 0, ``contradicted`` when it excludes 0 on the other side.

    >>> verdict("difference", -7.5, -9.0, -2.0), verdict("difference", -7.5, -8.0, 4.1)
    ('reproduced', 'not resolved')
    >>> verdict("difference", -7.5, -1.0, 1.0), verdict("level", 97.25, 80.0, 88.0)
    ('absent', 'smaller than claimed')
    """
    if not testable:
        return NOT_TESTABLE
    if not learned:
        return NOT_TESTED
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"no interval to judge ({lo}, {hi}): mark the claim not testable or "
                         "not tested instead")
    if kind == "level":
        return REPRODUCED if hi >= paper_value else SMALLER
    if kind != "difference":
        raise ValueError(f"claim kind {kind!r}: level | difference")
    if _direction_only(paper_value, sign):
        if lo <= 0 <= hi:
            return NOT_RESOLVED
        return REPRODUCED if (lo > 0) == (sign > 0) else CONTRADICTED
    if not (math.isfinite(paper_value) and paper_value != 0):
        raise ValueError("a difference claim needs a non-zero paper value")
    if lo <= 0 <= hi:
        return NOT_RESOLVED if lo <= paper_value <= hi else ABSENT
    side = 1 if lo > 0 else -1
    if side != (1 if paper_value > 0 else -1):
        return CONTRADICTED
    # on the paper's side: does the interval reach the paper's value (contain it or go beyond)?
    reaches = hi >= paper_value if side > 0 else lo <= paper_value
    return REPRODUCED if reaches else SMALLER


# ----------------------------------------------------------------------------- learning checks
@dataclass(frozen=True)
class Check:
    """One learning check of one model: its name, whether it passed, and the numbers behind it."""
    name: str
    passed: bool
    detail: str


def nt_xent_chance(batch_size: int) -> float:
    """NT-Xent of an encoder that knows nothing: each view's positive is one of 2N-1 candidates."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return math.log(2 * batch_size - 1)


def ssl_chance_loss(state: Mapping[str, Any], batch_size: int) -> float:
    """The loss of an encoder that knows nothing, for the run saved in ``state`` (a loaded
    ``encoder.pt``): DINO ln K with the K it trained with; NT-Xent ln(2N - 1) with N the batch,
    or the image pool when smaller (a batch never holds more images than the pool)."""
    if "dino" in state:
        return math.log(int(state["dino"]["out_dim"]))
    pool = int(state.get("n_images") or batch_size)
    return nt_xent_chance(min(batch_size, pool))


def ssl_loss_check(losses: Sequence[float], chance: float, margin: float = 0.10) -> Check:
    """Self-supervised loss clearly below its chance value: the last epoch's loss at most
    ``(1 - margin) * chance`` (NT-Xent: ln(2N-1), :func:`nt_xent_chance`; DINO: ln K)."""
    last = float(losses[-1]) if len(losses) else math.nan
    ok = math.isfinite(last) and last <= (1 - margin) * chance
    return Check("ssl loss below chance", ok,
                 f"last loss {last:.3f} vs chance {chance:.3f} (needs <= {(1 - margin) * chance:.3f})")


def auc_above_chance_check(ci_low: float, where: str = "validation") -> Check:
    """The AUC interval lies above 0.5 (AUC as a fraction or in points: 50 is read as 0.5)."""
    lo = ci_low / 100 if ci_low > 1 else ci_low
    ok = math.isfinite(lo) and lo > 0.5
    return Check(f"{where} AUC above 0.5", ok, f"{where} AUC interval starts at {lo:.3f}")


def seed_auc_check(aucs: Sequence[float], where: str = "test", unit: str = "seed") -> Check:
    """Every run's AUC above 0.5 (fractions or points): the per-run record the result files keep
    when no validation interval is stored. One run at or below chance fails it."""
    a = np.asarray(aucs, dtype=float)
    a = np.where(a > 1, a / 100, a)
    ok = a.size > 0 and bool(np.all(a > 0.5))
    return Check(f"{unit} AUCs above 0.5 ({where})", ok,
                 f"{where} AUC per {unit}: " + ", ".join(f"{x:.3f}" for x in a))


def moved_check(losses: Sequence[float], rel: float = 0.05, name: str = "auxiliary loss") -> Check:
    """A loss that moved: it fell by at least ``rel`` of its first value."""
    first, last = (float(losses[0]), float(losses[-1])) if len(losses) else (math.nan, math.nan)
    drop = (first - last) / abs(first) if first else math.nan
    ok = math.isfinite(drop) and drop >= rel
    return Check(f"{name} moved", ok, f"{first:.3f} -> {last:.3f} ({100 * drop:.1f} % drop, "
                 f"needs {100 * rel:.0f} %)")


def attention_check(weights: np.ndarray, min_tv: float = 0.05) -> Check:
    """Attention weights away from uniform: mean total-variation distance of each row of
    ``weights`` (samples x branches, rows summing to 1) from the uniform vector."""
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    tv = float(0.5 * np.abs(w - 1.0 / w.shape[1]).sum(1).mean())
    return Check("attention not uniform", tv >= min_tv,
                 f"mean distance from uniform {tv:.3f} (needs {min_tv})")


def spread_check(prob: np.ndarray, min_iqr: float = 0.10) -> Check:
    """Output probabilities with real spread: interquartile range of at least ``min_iqr``."""
    p = np.asarray(prob, dtype=float)
    iqr = float(np.subtract(*np.percentile(p, [75, 25]))) if p.size else math.nan
    return Check("outputs spread", math.isfinite(iqr) and iqr >= min_iqr,
                 f"probability IQR {iqr:.3f} (needs {min_iqr})")


def mechanism(checks: Sequence[Check]) -> str:
    """The claims table's ``mechanism`` column: ``passed``, ``failed: <check>; ...`` or ``n/a``."""
    if not checks:
        return "n/a"
    failed = [c.name for c in checks if not c.passed]
    return "failed: " + "; ".join(failed) if failed else "passed"


# ----------------------------------------------------------------------------- bootstrap
Statistic = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def auc_points(y: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC in percentage points for ``weights`` of shape [B, n] (one row per replicate)."""
    return 100 * np.asarray(weighted_auc(y, prob, weights))


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float
    n_images: int
    n_clusters: int
    n_runs: int
    n_boot: int   # replicates where the statistic was defined
    p: float = math.nan   # two-sided bootstrap p of a difference (NaN for a single side)


def _as_runs(prob, n: int) -> np.ndarray:
    p = np.atleast_2d(np.asarray(prob, dtype=float))
    if p.shape[1] != n:
        raise ValueError(f"{p.shape[1]} probabilities per run for {n} labels")
    return p


def _cluster_draws(n_clusters: int, ids: np.ndarray, n_boot: int,
                   rng: np.random.Generator) -> np.ndarray:
    draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    counts = np.stack([np.bincount(d, minlength=n_clusters) for d in draws]) if n_boot else \
        np.zeros((0, n_clusters), dtype=int)
    return counts[:, ids].astype(float)


def cluster_weights(clusters, n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] weights of the n images in ``n_boot`` resamples that draw whole clusters with
    replacement (``clusters``: n ids, e.g. patient, lesion or duplicate group; None: every image its
    own): each image weighs as often as its cluster was drawn. The one cluster draw of the book:
    :func:`two_level_bootstrap`, :func:`two_level_metrics` and the papers' own statistics use it."""
    ids, n_clusters = _cluster_ids(clusters, n)
    return _cluster_draws(n_clusters, ids, n_boot, rng)


def percentile_interval(values, alpha: float = 0.05) -> tuple[float, float, int]:
    """(lower, upper, replicates used) of the finite bootstrap ``values``; NaN when none is."""
    return _percentiles(np.asarray(values, dtype=float).ravel(), alpha)


def bootstrap_p(values) -> float:
    """Two-sided bootstrap p of a difference: the share of finite replicates on the other side of
    0, doubled (at most 1; NaN when no replicate is finite)."""
    d = np.asarray(values, dtype=float).ravel()
    d = d[np.isfinite(d)]
    return float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()))) if d.size else math.nan


def _replicates(n_clusters: int, ids: np.ndarray, runs: Sequence[int], n_boot: int,
                rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Image weights [B, n] from cluster draws, and per side a [B, runs] draw of run indices."""
    weights = _cluster_draws(n_clusters, ids, n_boot, rng)
    return weights, [rng.integers(0, r, size=(n_boot, r)) for r in runs]


def _check_runs(y, probs, thresholds) -> tuple[np.ndarray, np.ndarray, list[float]]:
    y = np.asarray(y).astype(int).ravel()
    p = _as_runs(probs, y.size)
    t = [float(x) for x in np.atleast_1d(thresholds)]
    if len(t) != len(p):
        raise ValueError(f"need one threshold per run: {len(p)} runs, {len(t)} thresholds")
    return y, p, t


def _cluster_ids(clusters, n: int) -> tuple[np.ndarray, int]:
    if clusters is None:
        return np.arange(n), n
    c = np.asarray(clusters)
    if c.shape != (n,):
        raise ValueError(f"{c.size} cluster ids for {n} images")
    ids = np.unique(c, return_inverse=True)[1]
    return ids, int(ids.max()) + 1 if n else 0


def _drawn_mean(per_run: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Per replicate, the mean of the per-run statistics ``[B, runs]`` over its drawn runs."""
    return np.take_along_axis(per_run, draws, axis=1).mean(1)


def _mean_of_drawn(y, p, t, metric, weights, draws) -> np.ndarray:
    return _drawn_mean(np.stack([weighted_metric(metric, y, p[r], t[r], weights)
                                 for r in range(len(p))], axis=1), draws)


def _whole(y, p, t, metric) -> float:
    return float(np.mean([weighted_metric(metric, y, p[r], t[r], np.ones((1, y.size)))[0]
                          for r in range(len(p))]))


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float, int]:
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan, 0
    lo, hi = np.percentile(values, 100 * np.array([alpha / 2, 1 - alpha / 2]))
    return float(lo), float(hi), int(values.size)


def two_level_bootstrap(y, prob_a, prob_b=None, clusters=None, *, statistic: Statistic = auc_points,
                        n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                        paired_runs: bool = False) -> Interval:
    """Percentile interval of ``statistic`` (or of its paired difference a - b) that resamples
    runs, then clusters.

    ``prob_a`` / ``prob_b``: [runs, n] probabilities (one row per seed or fold) on the same n
    images with labels ``y``; ``clusters``: n cluster ids (None: every image its own cluster).
    Each replicate draws runs with replacement (for a and b independently, or the same draw when
    ``paired_runs``: seed k of a and of b share something, e.g. a split), draws clusters with
    replacement (one draw for both sides: the comparison is paired on images), weights each image
    by how often its cluster was drawn, and takes the mean of ``statistic`` over the drawn runs.
    """
    y = np.asarray(y).astype(int).ravel()
    n = y.size
    pa = _as_runs(prob_a, n)
    pb = None if prob_b is None else _as_runs(prob_b, n)
    if paired_runs and pb is not None and len(pb) != len(pa):
        raise ValueError("paired runs need as many runs on both sides")
    ids, n_clusters = _cluster_ids(clusters, n)
    sides = [len(pa)] + ([len(pb)] if pb is not None and not paired_runs else [])
    weights, draws = _replicates(n_clusters, ids, sides, n_boot, np.random.default_rng(seed))
    runs_a = draws[0]
    runs_b = (runs_a if paired_runs else draws[1]) if pb is not None else None

    def side(p: np.ndarray, draws_r: np.ndarray) -> np.ndarray:
        # statistic of every run under every replicate's weights, then the mean over drawn runs
        return _drawn_mean(np.stack([statistic(y, p[r], weights) for r in range(len(p))], axis=1),
                           draws_r)

    def whole(p: np.ndarray) -> float:
        return float(np.mean([statistic(y, r, np.ones((1, n)))[0] for r in p]))

    values = side(pa, runs_a)
    estimate = whole(pa)
    if pb is not None:
        values = values - side(pb, runs_b)
        estimate -= whole(pb)
    lo, hi, ok = _percentiles(values, alpha)
    return Interval(estimate, lo, hi, n, n_clusters, len(pa), ok,
                    bootstrap_p(values) if pb is not None else math.nan)


def mean_points(y: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A :data:`Statistic` for per-image scores that are not predictions (a heatmap's share of
    energy in the lesion, a pointing-game hit): 100 x their weighted mean for each row of
    ``weights`` [B, n]; NaN scores (an image without a mask) count with weight 0. ``y`` is unused.

    >>> mean_points(None, np.array([0.2, np.nan, 0.6]), np.array([[1, 1, 1], [0, 5, 3]])).round(6).tolist()
    [40.0, 60.0]
    """
    v = np.asarray(values, dtype=float)
    w = np.atleast_2d(np.asarray(weights, dtype=float)) * np.isfinite(v)
    total = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * np.where(total > 0, (w * np.nan_to_num(v)).sum(1) / total, np.nan)


def ece_points(bins: int = 10) -> Statistic:
    """A :data:`Statistic`: the expected calibration error (count-weighted mean |observed
    frequency - mean prediction| over ``bins`` equal-width bins of predicted probability, as
    :func:`bus_paper.core.calibration.expected_calibration_error`) in percentage points, for each
    row of case weights [B, n]."""
    def ece(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
        y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
        w = np.atleast_2d(np.asarray(weights, dtype=float))
        onehot = np.eye(bins)[np.clip((p * bins).astype(int), 0, bins - 1)]   # [n, bins]
        gap = w @ (onehot * (y - p)[:, None])                                # [B, bins]
        total = w.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100 * np.where(total > 0, np.abs(gap).sum(1) / total, np.nan)
    return ece


# ----------------------------------------------------------------------------- metrics, two levels
THRESHOLD_METRICS = ("accuracy", "precision", "recall", "specificity", "f1")


def weighted_metric(metric: str, y, p, threshold: float, w) -> np.ndarray:
    """``metric`` (a fraction; ``auc`` or one of :data:`THRESHOLD_METRICS` at ``threshold``) for
    each row of case weights ``w`` [B, n]; NaN where it is undefined (no positive, say).

    >>> weighted_metric("recall", [1, 1, 0], [0.9, 0.2, 0.7], 0.5, [[1, 1, 1], [2, 0, 1]]).tolist()
    [0.5, 1.0]
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    w = np.atleast_2d(np.asarray(w, dtype=float))
    if metric == "auc":
        return np.atleast_1d(weighted_auc(y, p, w))
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: auc, {', '.join(THRESHOLD_METRICS)}")
    d = p >= threshold
    tp = (w * (d & (y == 1))).sum(1)
    fp = (w * (d & (y == 0))).sum(1)
    tn = (w * (~d & (y == 0))).sum(1)
    fn = (w * (~d & (y == 1))).sum(1)
    num, den = {"accuracy": (tp + tn, tp + tn + fp + fn), "recall": (tp, tp + fn),
                "precision": (tp, tp + fp), "specificity": (tn, tn + fp),
                "f1": (2 * tp, 2 * tp + fp + fn)}[metric]
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def two_level_metrics(y, probs, thresholds, clusters=None, *,
                      metrics: Sequence[str] = (*THRESHOLD_METRICS, "auc"), n_boot: int = 2000,
                      seed: int = 0, alpha: float = 0.05) -> dict[str, Interval]:
    """Each metric of several runs (seeds or folds: rows of ``probs``, each at its own threshold)
    on the same n images: the mean over runs, with a percentile interval whose replicates draw
    runs with replacement and then clusters (``clusters``: n ids, e.g. patient or duplicate group;
    None: every image its own), weighting each image by its cluster's draws. One draw serves all
    metrics. Fractions, not percentage points."""
    y, p, t = _check_runs(y, probs, thresholds)
    ids, n_clusters = _cluster_ids(clusters, y.size)
    weights, (draws,) = _replicates(n_clusters, ids, [len(p)], n_boot, np.random.default_rng(seed))
    out = {}
    for m in metrics:
        lo, hi, ok = _percentiles(_mean_of_drawn(y, p, t, m, weights, draws), alpha)
        out[m] = Interval(_whole(y, p, t, m), lo, hi, y.size, n_clusters, len(p), ok)
    return out


def two_level_paired(y, probs_a, thresholds_a, probs_b, thresholds_b, clusters=None, *,
                     metric: str = "auc", n_boot: int = 2000, seed: int = 0,
                     alpha: float = 0.05) -> tuple[Interval, float]:
    """``metric`` of runs a minus that of runs b on the same images (means over runs), with the
    two-level interval (runs of each side drawn independently, clusters drawn once for both: the
    comparison is paired on images) and a two-sided p (the share of replicates on the other side
    of 0, doubled). Fractions."""
    y, pa, ta = _check_runs(y, probs_a, thresholds_a)
    _, pb, tb = _check_runs(y, probs_b, thresholds_b)
    ids, n_clusters = _cluster_ids(clusters, y.size)
    weights, (da, db) = _replicates(n_clusters, ids, [len(pa), len(pb)], n_boot,
                                    np.random.default_rng(seed))
    d = (_mean_of_drawn(y, pa, ta, metric, weights, da)
         - _mean_of_drawn(y, pb, tb, metric, weights, db))
    lo, hi, ok = _percentiles(d, alpha)
    p = bootstrap_p(d)
    estimate = _whole(y, pa, ta, metric) - _whole(y, pb, tb, metric)
    return Interval(estimate, lo, hi, y.size, n_clusters, len(pa) + len(pb), ok), p
