"""Probability calibration: temperature scaling of a two-class model, and its error (ECE).

Lives in the core library because both the generalisation chapter (calibration across sites) and
the deployable model (``bus-paper predict`` applies the temperature stored in the model file) use
it. numpy and scipy only.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.2, 0.8, 0.9])
>>> round(expected_calibration_error(y, p, bins=2), 3)
0.15
>>> bool(np.allclose(scale(p, 1.0), p))
True
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def scale(p, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities. The models' P(malignant) is a two-class softmax, i.e.
    sigmoid(z1 - z0), so dividing that logit by T is exactly temperature scaling of the logits."""
    return 1.0 / (1.0 + np.exp(-logit(p) / float(temperature)))


def fit_temperature(y, p, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising the negative log-likelihood of ``y`` (fit on validation)."""
    from scipy.optimize import minimize_scalar
    y, z = np.asarray(y, float), logit(p)
    if y.size == 0 or len(np.unique(y)) < 2:
        raise ValueError("fitting a temperature needs validation labels of both classes")

    def nll(log_t: float) -> float:
        q = np.clip(1.0 / (1.0 + np.exp(-z / np.exp(log_t))), EPS, 1 - EPS)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))

    res = minimize_scalar(nll, bounds=tuple(np.log(bounds)), method="bounded")
    return float(np.exp(res.x))


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """ECE: the count-weighted mean |observed frequency - mean prediction| over equal-width bins
    of predicted probability (numpy only: a chapter bootstraps it thousands of times)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"y and p must be non-empty and of one shape, got {y.shape}, {p.shape}")
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    gap = np.bincount(idx, weights=y - p, minlength=bins)   # per bin: count * (observed - mean_p)
    return float(np.abs(gap).sum() / y.size)
