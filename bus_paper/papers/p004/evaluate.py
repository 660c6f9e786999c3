"""Metrics of section 3.12 (accuracy, precision, recall, specificity, F1, AUC) with cluster-bootstrap
confidence intervals, over one or several repeats (split seeds), and paired differences.

A *part* is one repeat's test predictions: labels ``y`` (1 = positive), scores, hard decisions
and the group of every image (woman, patient or duplicate group). Resampling draws whole groups:
two films of one woman, or two views of one lesion, are not two independent observations.
With several repeats, the point value is the mean over repeats, and each bootstrap replicate
resamples every repeat's test groups independently and averages, so the interval is that of the
repeat mean (the test sets of different split seeds overlap, so it is somewhat too narrow).

Metrics are computed for many resamples at once from integer weights (how often each image is
drawn), which keeps 1,000 resamples of ~30 configurations per task at a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...core import stats
from ...metrics import weighted_auc

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")


@dataclass(frozen=True)
class Part:
    y: np.ndarray          # int [N] 0/1
    score: np.ndarray      # float [N]
    pred: np.ndarray       # int [N] 0/1
    groups: np.ndarray     # [N] group keys

    def __post_init__(self) -> None:
        n = len(self.y)
        if not (len(self.score) == len(self.pred) == len(self.groups) == n) or n == 0:
            raise ValueError("y, score, pred and groups need one (and at least one) entry each")


def youden_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The score threshold (predict positive when ``score >= t``) with the largest Youden's J;
    for any score scale (probabilities or SVM margins), unlike
    :func:`bus_paper.metrics.choose_threshold`, which caps it at 1. Ties: the first maximum along
    decreasing thresholds (``roc_curve``'s order). One class only: the median score."""
    from sklearn.metrics import roc_curve
    y, score = np.asarray(y).astype(int), np.asarray(score, float)
    if not 0 < y.sum() < y.size:
        return float(np.median(score))
    fpr, tpr, thr = roc_curve(y, score)
    best = int(np.argmax(tpr - fpr))
    t = float(thr[best])
    return float(np.nextafter(score.max(), np.inf)) if not np.isfinite(t) else t


def weighted_metrics(part: Part, w: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for every row of weights ``w`` [B, N]."""
    y, d = part.y.astype(int), part.pred.astype(int)
    w = np.asarray(w, float)
    tp = w @ ((d == 1) & (y == 1)).astype(float)
    fp = w @ ((d == 1) & (y == 0)).astype(float)
    tn = w @ ((d == 0) & (y == 0)).astype(float)
    fn = w @ ((d == 0) & (y == 1)).astype(float)

    def ratio(a, b):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)

    return {"accuracy": ratio(tp + tn, tp + fp + tn + fn), "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "auc": weighted_auc(y, part.score, w)}


def point_metrics(part: Part) -> dict[str, float]:
    """The metrics of one part and its confusion counts."""
    out = {k: float(v[0]) for k, v in weighted_metrics(part, np.ones((1, len(part.y)))).items()}
    y, d = part.y.astype(int), part.pred.astype(int)
    out.update(tp=int(((d == 1) & (y == 1)).sum()), fp=int(((d == 1) & (y == 0)).sum()),
               tn=int(((d == 0) & (y == 0)).sum()), fn=int(((d == 0) & (y == 1)).sum()))
    return out


def cluster_weights(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, N] multiplicities of a bootstrap that draws whole groups with replacement
    (:func:`bus_paper.core.stats.cluster_weights`; groups compared as strings)."""
    g = np.asarray(groups).astype(str)
    return stats.cluster_weights(g, g.size, n_boot, rng)


def repeat_mean_ci(parts: Sequence[Part], n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> dict[str, tuple[float, float, float]]:
    """{metric: (mean over repeats, lower, upper)} with a cluster bootstrap per repeat."""
    rng = np.random.default_rng(seed)
    points = [point_metrics(p) for p in parts]
    boots = [weighted_metrics(p, cluster_weights(p.groups, n_boot, rng)) for p in parts]
    out = {}
    for m in METRICS:
        with _quiet():           # a metric undefined in every repeat (e.g. no positive call)
            mean = float(np.nanmean([pt[m] for pt in points]))
            dist = np.nanmean(np.stack([b[m] for b in boots]), axis=0)
        lo, hi, _ = stats.percentile_interval(dist, alpha)
        out[m] = (mean, lo, hi)
    return out


def paired_difference(parts_a: Sequence[Part], parts_b: Sequence[Part], metric: str = "auc",
                      n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Repeat-mean ``metric`` of a minus b on the same test images (same resample for both), with
    its 95% interval and a two-sided bootstrap p-value."""
    if len(parts_a) != len(parts_b):
        raise ValueError("a and b need the same repeats")
    rng = np.random.default_rng(seed)
    diffs, points = [], []
    for a, b in zip(parts_a, parts_b):
        if not (np.array_equal(a.y, b.y) and np.array_equal(a.groups, b.groups)):
            raise ValueError("a paired difference needs the same test images in the same order")
        w = cluster_weights(a.groups, n_boot, rng)
        diffs.append(weighted_metrics(a, w)[metric] - weighted_metrics(b, w)[metric])
        points.append(point_metrics(a)[metric] - point_metrics(b)[metric])
    with _quiet():
        d = np.nanmean(np.stack(diffs), axis=0)
    lo, hi, ok = stats.percentile_interval(d)
    return {"diff": float(np.mean(points)), "lo": lo, "hi": hi, "p": stats.bootstrap_p(d),
            "n_boot": ok}


class _quiet:
    """Silence numpy's 'mean of empty slice' for all-NaN columns (a metric undefined in every
    repeat of a resample)."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)
