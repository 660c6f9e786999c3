"""Section 3.5 of paper 004: kNN, SVM, random forest and a small neural network on reduced
features, with hyperparameters and the decision threshold chosen by cross-validation inside the
training part only.

- *Reduction* (:class:`BlockReducer`): every feature block (one backbone's pooled embedding, or
  clinical variables) is standardised and, for image blocks, reduced by PCA to ``n_components``;
  the blocks are then concatenated (the paper's "concatenate embeddings", section 3.4). Fitted on
  the training folds only.
- *Selection* (:func:`select_and_fit`): grouped, stratified inner folds (a patient, woman or
  duplicate group never spans a training and a validation fold; augmented copies of an image go
  with their original, and validation folds hold originals only). The reduction is fitted once
  per fold and shared by all classifiers and grid points. The grid point with the best mean
  validation AUC wins; its out-of-fold scores give the decision threshold (max Youden's J); the
  model is then refitted on the whole training part. The test part is never passed in.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ...metrics import auc_score
from .evaluate import youden_threshold

CLASSIFIERS = ("knn", "svm", "rf", "nn")
LABELS = {"knn": "kNN", "svm": "SVM", "rf": "Random forest", "nn": "Neural network"}


def make_classifier(name: str, seed: int = 0, rf_trees: int = 100,
                    nn_max_iter: int = 200) -> tuple[Any, dict[str, list]]:
    """A classifier (scaled input for the NN) and its grid. Small grids: the training parts have
    92 to 1,500 images, and the chapter must run on two CPU cores."""
    if name == "knn":
        return KNeighborsClassifier(weights="distance"), {"n_neighbors": [5, 11, 21]}
    if name == "svm":
        return (SVC(kernel="rbf", gamma="scale", class_weight="balanced"),
                {"C": [0.3, 1.0, 3.0, 10.0]})
    if name == "rf":
        return (RandomForestClassifier(n_estimators=rf_trees, max_features="sqrt",
                                       class_weight="balanced_subsample", random_state=seed,
                                       n_jobs=-1),     # trees in parallel: same forest
                {"min_samples_leaf": [1, 4]})
    if name == "nn":
        mlp = MLPClassifier(hidden_layer_sizes=(128, 32), activation="relu", max_iter=nn_max_iter,
                            learning_rate_init=1e-3, random_state=seed)
        return (Pipeline([("scale", StandardScaler()), ("mlp", mlp)]),
                {"mlp__alpha": [1e-3, 1e-1]})
    raise KeyError(f"unknown classifier {name!r}; choose from {', '.join(CLASSIFIERS)}")


def decision_scores(model, X: np.ndarray) -> np.ndarray:
    """Higher = more likely positive: P(positive) where the model has it, else the SVM margin."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(X)[:, 1]
    return model.decision_function(X)


# ----------------------------------------------------------------------------- reduction
class BlockReducer(TransformerMixin, BaseEstimator):
    """Standardise each column block ``(start, stop, pca)`` and reduce the image blocks by PCA to
    ``min(n_components, n_samples - 1, width)`` components; concatenate."""

    def __init__(self, blocks: Sequence[tuple[int, int, bool]] = (), n_components: int = 64):
        self.blocks = blocks
        self.n_components = n_components

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        self.parts_ = []
        for a, b, pca in self.blocks:
            sc = StandardScaler().fit(X[:, a:b])
            p = None
            if pca:
                n = max(1, min(self.n_components, X.shape[0] - 1, b - a))
                p = PCA(n_components=n, random_state=0).fit(sc.transform(X[:, a:b]))
            self.parts_.append((sc, p))
        return self

    def transform_blocks(self, X) -> list[np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        out = []
        for (a, b, _), (sc, p) in zip(self.blocks, self.parts_):
            z = sc.transform(X[:, a:b])
            out.append(p.transform(z) if p is not None else z)
        return out

    def transform(self, X):
        return np.concatenate(self.transform_blocks(X), axis=1)


# ----------------------------------------------------------------------------- folds
def inner_folds(y: np.ndarray, groups: np.ndarray, is_copy: np.ndarray, k: int = 3,
                seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, stratified folds of a training part: ``(fit rows, validation rows)``. Validation
    rows are originals only; an augmented copy is used for fitting when its group is."""
    y, groups, is_copy = np.asarray(y), np.asarray(groups), np.asarray(is_copy, bool)
    orig = np.flatnonzero(~is_copy)
    n_groups = len(np.unique(groups[orig]))
    k = max(2, min(k, n_groups, int(np.bincount(y[orig]).min())))
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    out = []
    for _, val in cv.split(np.zeros(len(orig)), y[orig], groups[orig]):
        val_rows = orig[val]
        held = np.isin(groups, groups[val_rows])
        out.append((np.flatnonzero(~held), val_rows))
    return out


# ----------------------------------------------------------------------------- selection
@dataclass
class Fitted:
    """A classifier chosen and refitted on a training part, with its decision threshold."""
    name: str
    params: dict[str, Any]
    cv_auc: float
    threshold: float
    reducer: BlockReducer
    model: Any
    grid: list[dict[str, Any]] = field(default_factory=list)   # (params, mean validation AUC)
    seconds: float = 0.0

    def score(self, X: np.ndarray, reduced: bool = False) -> np.ndarray:
        return decision_scores(self.model, X if reduced else self.reducer.transform(X))

    def predict(self, X: np.ndarray, reduced: bool = False) -> np.ndarray:
        return (self.score(X, reduced) >= self.threshold).astype(int)


def _grid(grid: dict[str, list]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in product(*(grid[k] for k in keys))]


def _fit(base, params: dict[str, Any], X: np.ndarray, y: np.ndarray):
    """A fresh copy of ``base`` with ``params`` fitted on (X, y); kNN's k is capped at the number
    of fitting rows (tiny training parts under the smoke profile)."""
    params = dict(params)
    if "n_neighbors" in params:
        params["n_neighbors"] = min(params["n_neighbors"], len(y))
    return clone(base).set_params(**params).fit(X, y)


def select_and_fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray, is_copy: np.ndarray | None,
                   blocks: Sequence[tuple[int, int, bool]], classifiers: Sequence[str] = CLASSIFIERS,
                   n_components: int = 64, k: int = 3, seed: int = 0,
                   **options: int) -> dict[str, Fitted]:
    """Choose each classifier's hyperparameters and threshold by inner cross-validation on the
    training part ``X, y`` (rows of one training part only) and refit it on all of it.
    ``options``: :func:`make_classifier`'s ``rf_trees`` and ``nn_max_iter``."""
    X, y, groups = np.asarray(X), np.asarray(y).astype(int), np.asarray(groups)
    is_copy = np.zeros(len(y), bool) if is_copy is None else np.asarray(is_copy, bool)
    if len(np.unique(y[~is_copy])) < 2:
        raise ValueError("the training part holds one class only")
    folds = inner_folds(y, groups, is_copy, k, seed)
    reduced = []
    for fit_rows, val_rows in folds:
        red = BlockReducer(blocks, n_components).fit(X[fit_rows])
        reduced.append((red.transform(X[fit_rows]), red.transform(X[val_rows])))
    full = BlockReducer(blocks, n_components).fit(X)
    Z = full.transform(X)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name in classifiers:
            t0 = time.perf_counter()
            base, grid = make_classifier(name, seed, **options)
            results = []
            for params in _grid(grid):
                oof = np.full(len(y), np.nan)
                aucs = []
                for (fit_rows, val_rows), (z_fit, z_val) in zip(folds, reduced):
                    m = _fit(base, params, z_fit, y[fit_rows])
                    oof[val_rows] = decision_scores(m, z_val)
                    aucs.append(auc_score(y[val_rows], oof[val_rows]))
                results.append((params, float(np.nanmean(aucs)), oof))
            best = max(range(len(results)), key=lambda i: (np.nan_to_num(results[i][1], nan=-1), -i))
            params, cv_auc, oof = results[best]
            seen = ~np.isnan(oof)
            threshold = youden_threshold(y[seen], oof[seen])
            model = _fit(base, params, Z, y)
            out[name] = Fitted(name, params, cv_auc, float(threshold), full, model,
                               [{"params": p, "cv_auc": a} for p, a, _ in results],
                               time.perf_counter() - t0)
    return out
