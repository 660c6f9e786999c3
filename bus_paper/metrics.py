"""Binary classification metrics with bootstrap confidence intervals.

Malignant is the positive class. Thresholds are chosen on validation data only
(:func:`choose_threshold`) and then applied unchanged to the test split.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.6, 0.4, 0.9])
>>> round(binary_metrics(y, p, 0.5)["accuracy"], 2)
0.5
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from .core.stats import weighted_auc  # noqa: F401 (re-exported; the exact rank-sum AUC lives in core)

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")


def _check(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} entries but prob has {p.size}")
    if y.size == 0:
        raise ValueError("no samples")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError("y_true must be 0 (benign) / 1 (malignant)")
    return y, p


def auc_score(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (ties count one half): what sklearn's ``roc_auc_score`` returns, without its input
    checks, which dominated the bootstraps (each CI scores thousands of resamples). NaN with one
    class only. ``y`` must be 0/1 ints."""
    return weighted_auc(y, p, np.ones(len(y)))


def confusion(y_true, pred) -> dict[str, int]:
    y, d = np.asarray(y_true).astype(int), np.asarray(pred).astype(int)
    return {"tp": int(((d == 1) & (y == 1)).sum()), "fp": int(((d == 1) & (y == 0)).sum()),
            "tn": int(((d == 0) & (y == 0)).sum()), "fn": int(((d == 0) & (y == 1)).sum())}


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity), specificity, F1 and AUC, plus the confusion counts."""
    y, p = _check(y_true, prob)
    c = confusion(y, p >= threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    out = {
        "accuracy": _ratio(tp + tn, y.size),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        # AUC is undefined with a single class present (a tiny bootstrap resample, say)
        "auc": auc_score(y, p),
    }
    out.update({k: float(v) for k, v in c.items()})
    out["threshold"] = float(threshold)
    return out


def choose_threshold(y_val, prob_val, criterion: str = "youden") -> float:
    """Decision threshold picked on validation data: max Youden's J (sens + spec - 1) or max F1."""
    y, p = _check(y_val, prob_val)
    if not 0 < y.sum() < y.size:
        return 0.5  # one class only: nothing to tune, keep the natural threshold
    if criterion == "youden":
        fpr, tpr, thr = roc_curve(y, p)
        j = tpr - fpr
        best = int(np.argmax(j))
        t = float(thr[best])
        return min(t, 1.0)  # roc_curve's first threshold is +inf
    if criterion == "f1":
        cands = np.unique(p)
        f1 = [binary_metrics(y, p, t)["f1"] for t in cands]
        return float(cands[int(np.nanargmax(f1))])
    raise ValueError(f"unknown criterion {criterion!r}: youden | f1")


def interval_side(lo: float, hi: float) -> int | None:
    """Where a 95% interval ``[lo, hi]`` of a difference lies against 0: ``1`` above, ``-1`` below,
    ``0`` when it contains 0, ``None`` when it is undefined. Every verdict in the book starts here.

    >>> interval_side(0.2, 1.0), interval_side(-1.0, 2.0), interval_side(-3.0, -0.1)
    (1, 0, -1)
    """
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return 1 if lo > 0 else -1 if hi < 0 else 0


#: how an interval lies against a reference value (0 for a difference), in words: a description
#: for comparisons that are not a paper's claim (those get a word of
#: :data:`bus_paper.core.stats.LEGEND`)
POSITION_WORDS = {1: "above {}", -1: "below {}", 0: "contains {}", None: "undefined"}


def interval_position(lo: float, hi: float, reference: float = 0.0, name: str = "0") -> str:
    """``above 0``, ``below 0``, ``contains 0`` or ``undefined`` for the interval ``[lo, hi]``
    (against ``reference``, called ``name``: ``interval_position(lo, hi, 12.0, "chance")``).

    >>> interval_position(0.2, 1.0), interval_position(-1.0, 2.0), interval_position(-3.0, -0.1)
    ('above 0', 'contains 0', 'below 0')
    >>> interval_position(10.0, 14.0, reference=15.0, name="chance")
    'below chance'
    """
    return POSITION_WORDS[interval_side(lo - reference, hi - reference)].format(name)


def position_counts(lo, hi) -> str:
    """How many intervals ``[lo[i], hi[i]]`` lie above 0, below 0 or contain it, in words.

    >>> position_counts([0.5, -2.0, -1.0, 0.1], [2.0, -0.5, 1.0, 3.0])
    '2 above 0, 1 below 0, 1 contains 0'
    """
    sides = [interval_position(a, b) for a, b in zip(lo, hi)]
    words = [w.format("0") for w in POSITION_WORDS.values()]
    return ", ".join(f"{sides.count(w)} {w}" for w in words if w in sides)


def bootstrap_ci(y_true, prob, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, clusters=None) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (1 - alpha) intervals of every metric of one run, as fractions,
    resampling clusters of images (``clusters``: one id per image, e.g. the split group; None:
    every image its own): :func:`bus_paper.core.stats.two_level_metrics` with a single run (the
    same draws, and numbers, as the image loop this function once was)."""
    from .core.stats import two_level_metrics
    y, p = _check(y_true, prob)
    iv = two_level_metrics(y, p[None], [threshold], clusters, metrics=METRICS, n_boot=n_boot,
                           seed=seed, alpha=alpha)
    return {m: (iv[m].lo, iv[m].hi) for m in METRICS}


def summarize_runs(rows: list[dict[str, float]], metrics=METRICS) -> dict[str, tuple[float, float]]:
    """Mean and sample sd of each metric over runs (fine-tuning seeds or folds)."""
    out = {}
    for m in metrics:
        v = np.array([r[m] for r in rows], dtype=float)
        out[m] = (float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if v.size > 1 else float("nan"))
    return out
