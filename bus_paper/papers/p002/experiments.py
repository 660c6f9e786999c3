"""Paper 002 (Guo et al. 2022, lesion recognition as a contrastive auxiliary task) on BUS-BRA: the
chapter's runs, its metrics (MCR, lesion level) and its paired comparisons.

Training lives in :mod:`bus_paper.papers.p002.train` (its code is the runs' cache key); this module only
reads predictions, so changing an analysis never retrains anything.

- :func:`run_all`: every (variant, fold) run, cached.
- :func:`fold_table`: per run, the test metrics of the paper's Table 1 (AUC, accuracy, sensitivity,
  precision, specificity, F1 at the validation-chosen threshold), MCR, and the same metrics at
  lesion level (a lesion's probability = the mean over its views; its own validation threshold).
- :func:`summary`: mean ± sd over folds, as the paper reports.
- :func:`paired_difference`: variant minus reference with a paired two-level bootstrap that
  resamples the *folds*, then the *lesions within each drawn fold* (views of a lesion are not
  independent), the statistic being
  the mean over folds of the fold-wise difference; plus the fold-wise differences themselves.
- :data:`CLAIMS` and :func:`claim_differences`: the paper's claims and the interval each is judged
  by (the verdict is the claims table's).

MCR (paper, Sec. 3.2): for a lesion L, ``MCR(L) = W_L / N_L`` (misclassified images over its
images); reported is the mean over the lesions with at least one misclassified image. On BUS-BRA a
misclassified single-view lesion always scores 1, so we also report ``discordance``: the share of
two-view lesions whose two views get different predicted classes (the inconsistency LR is meant to
reduce, free of the accuracy level).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ...config import as_list, load_profile
from ...core.stats import (  # weighted_auc: re-exported
    bootstrap_p,
    cluster_weights,
    percentile_interval,
    weighted_auc,
    weighted_metric,
)
from ...metrics import binary_metrics, choose_threshold
from ..literature import load_numbers
from .train import N_FOLDS, PAPER_SETTINGS, VARIANT_NAMES, Settings, settings_for

__all__ = [
    "CLAIMS",
    "LABELS",
    "METRICS",
    "PAPER_SETTINGS",
    "TABLE1",
    "TABLE2",
    "VARIANT_NAMES",
    "Settings",
    "claim_differences",
    "fold_table",
    "lesion_predictions",
    "mcr",
    "paired_difference",
    "paper_002",
    "parse_folds",
    "parse_variants",
    "run_all",
    "settings_for",
    "summary",
    "weighted_auc",
]

LABELS = {"baseline": "Baseline", "ir": "IR", "lr": "LR", "lr_minus_all": "LR(−)",
          "lr_minus_sc": "LR(−SC)", "lr_minus_dc": "LR(−DC)"}
TABLE1 = ("baseline", "ir", "lr")
TABLE2 = ("lr_minus_all", "lr_minus_sc", "lr_minus_dc", "lr")
#: the paper's columns, in its order (recall = sensitivity); MCR is in Table 1 only
METRICS = ("auc", "accuracy", "recall", "precision", "specificity", "f1")
METRIC_NAMES = {"auc": "AUC", "accuracy": "ACC", "recall": "Sensitivity",
                "precision": "Precision", "specificity": "Specificity", "f1": "F1",
                "mcr": "MCR", "discordance": "Discordant views"}


# ----------------------------------------------------------------------------- the paper's numbers
def paper_002(table: str) -> pd.DataFrame:
    """Paper 002's Table 1 or 2 as printed: one row per variant, ``<metric>`` (mean) and
    ``<metric>_sd`` in %, metrics as in :data:`METRICS` plus ``mcr`` (NaN in Table 2)."""
    if table not in ("table1", "table2"):
        raise KeyError(f"unknown table {table!r}; choose table1 or table2")
    raw = load_numbers("paper_002")
    rows = []
    for entry in raw[table]:
        row = {"variant": entry["variant"]}
        for m, mean, sd in zip(raw["metrics"], entry["mean"], entry["std"], strict=True):
            row[m], row[f"{m}_sd"] = float(mean), float(sd)
        rows.append(row)
    return pd.DataFrame(rows)


def paper_value(variant: str, metric: str) -> float:
    """The paper's mean of ``metric`` for ``variant`` (Table 1 first, then Table 2), in %."""
    for table in ("table1", "table2"):
        t = paper_002(table).set_index("variant")
        if variant in t.index and metric in t.columns and np.isfinite(t.loc[variant, metric]):
            return float(t.loc[variant, metric])
    return float("nan")


# ----------------------------------------------------------------------------- parameters
def parse_variants(value: Any) -> list[str]:
    """The ``variant`` parameter: None = all, a name (``lr``), ``"lr,ir"`` or a list."""
    if value is None:
        return list(VARIANT_NAMES)
    names = [str(v).strip().lower() for v in as_list(value)]
    unknown = [n for n in names if n not in VARIANT_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown variant(s) {unknown or names}; choose from "
                         f"{', '.join(VARIANT_NAMES)}")
    return [v for v in VARIANT_NAMES if v in names]   # the chapter's order


def parse_folds(value: Any, profile: Any = None) -> list[int]:
    """The ``folds`` parameter: an int, ``"0,1"`` or a list; folds are 0..4. None: the profile's
    ``[papers.p002] folds`` if it has them (smoke: two, for the plumbing), else all 5."""
    if value is None:
        value = load_profile(profile).section("p002").get("folds") if profile else None
    if value is None:
        return list(range(N_FOLDS))
    folds = sorted({int(v) for v in as_list(value)})
    if not folds or any(not 0 <= f < N_FOLDS for f in folds):
        raise ValueError(f"folds must be in 0..{N_FOLDS - 1}, got {value!r}")
    return folds


# ----------------------------------------------------------------------------- runs
def run_all(profile, root, variants: Sequence[str], folds: Sequence[int], *, alpha: float = 1.0,
            temperature: float = 1.0, init: str = "ssl", seed: int = 0) -> list[dict[str, Any]]:
    """:func:`~bus_paper.papers.p002.train.run_fold` for every variant and fold (cached runs reused)."""
    from ...train.data import resolve_root
    from .train import busbra_folds, run_fold
    root = resolve_root(profile, root)
    table = busbra_folds(root)
    return [run_fold(profile, root, v, f, alpha=alpha, temperature=temperature, init=init,
                     seed=seed, table=table)
            for v in variants for f in folds]


# ----------------------------------------------------------------------------- metrics
def mcr(y_true, pred, lesion) -> float:
    """Mean over lesions with >= 1 misclassified image of (misclassified / images), in [0, 1];
    NaN when no image is misclassified.

    >>> mcr([1, 1, 0, 0, 1], [1, 0, 0, 0, 0], ["a", "a", "b", "b", "c"])   # a: 1/2, c: 1/1
    0.75
    """
    df = pd.DataFrame({"wrong": np.asarray(y_true) != np.asarray(pred),
                       "lesion": np.asarray(lesion)})
    rate = df.groupby("lesion")["wrong"].mean()
    rate = rate[rate > 0]
    return float(rate.mean()) if len(rate) else float("nan")


def discordance(pred, lesion) -> float:
    """Share of lesions with two or more images whose images get different predicted classes."""
    df = pd.DataFrame({"pred": np.asarray(pred).astype(int), "lesion": np.asarray(lesion)})
    g = df.groupby("lesion")["pred"]
    multi = g.size() > 1
    return float((g.nunique()[multi] > 1).mean()) if multi.any() else float("nan")


def lesion_predictions(preds: pd.DataFrame) -> pd.DataFrame:
    """One row per (split, lesion): the mean probability over its views, label, image count."""
    labels = preds.groupby(["split", "lesion"])["label"].nunique()
    if (labels > 1).any():
        raise ValueError(f"lesion {labels[labels > 1].index[0]} has images of both labels")
    return (preds.groupby(["split", "lesion"], sort=True)
            .agg(label=("label", "first"), prob=("prob", "mean"), n_images=("prob", "size"))
            .reset_index())


def fold_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """Test metrics of one run: image level at its validation threshold, MCR, discordance, and
    lesion level (views averaged; threshold chosen on the validation lesions), prefixed
    ``lesion_``."""
    preds = result["predictions"]
    test = preds[preds["split"] == "test"]
    thr = float(result["threshold"])
    m = binary_metrics(test["label"], test["prob"], thr)
    pred = (test["prob"].to_numpy() >= thr).astype(int)
    row = {"variant": result["variant"], "fold": int(result["fold"]), "threshold": thr,
           **{k: m[k] for k in METRICS},
           "mcr": mcr(test["label"], pred, test["lesion"]),
           "discordance": discordance(pred, test["lesion"])}
    les = lesion_predictions(preds)
    val, tst = les[les["split"] == "val"], les[les["split"] == "test"]
    lthr = choose_threshold(val["label"], val["prob"])
    lm = binary_metrics(tst["label"], tst["prob"], lthr)
    row.update({"lesion_threshold": lthr, **{f"lesion_{k}": lm[k] for k in METRICS}})
    return row


def fold_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """:func:`fold_metrics` of every run, one row per (variant, fold), fractions (not %)."""
    return pd.DataFrame([fold_metrics(r) for r in results]).sort_values(
        ["variant", "fold"], key=lambda s: s.map(_order) if s.name == "variant" else s,
        ignore_index=True)


def _order(v: str) -> int:
    return VARIANT_NAMES.index(v) if v in VARIANT_NAMES else len(VARIANT_NAMES)


def summary(folds: pd.DataFrame, metrics: Sequence[str], prefix: str = "") -> pd.DataFrame:
    """Mean and sd (ddof 1) over folds per variant, in %: columns ``<m>`` and ``<m>_sd``."""
    rows = []
    for variant, g in folds.groupby("variant", sort=False):
        row: dict[str, Any] = {"variant": variant, "folds": len(g)}
        for m in metrics:
            v = 100 * g[prefix + m].astype(float)
            row[m] = float(v.mean())
            row[f"{m}_sd"] = float(v.std(ddof=1)) if v.notna().sum() > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- paired bootstrap
@dataclass(frozen=True)
class _FoldArrays:
    """One run's test predictions as arrays, lesions coded 0..n_lesions-1 (sorted ids)."""
    paths: np.ndarray
    y: np.ndarray
    p: np.ndarray
    code: np.ndarray
    thr: float
    y_les: np.ndarray
    p_les: np.ndarray
    thr_les: float

    @classmethod
    def of(cls, result: dict[str, Any]) -> _FoldArrays:
        preds = result["predictions"]
        test = preds[preds["split"] == "test"].sort_values("path")
        les = lesion_predictions(preds)
        val, tst = les[les["split"] == "val"], les[les["split"] == "test"]
        ids = tst["lesion"].to_numpy()                         # sorted by lesion id
        code = np.searchsorted(ids, test["lesion"].to_numpy())
        return cls(test["path"].to_numpy(), test["label"].to_numpy().astype(int),
                   test["prob"].to_numpy(float), code, float(result["threshold"]),
                   tst["label"].to_numpy().astype(int), tst["prob"].to_numpy(float),
                   choose_threshold(val["label"], val["prob"]))

    @property
    def n_lesions(self) -> int:
        return len(self.y_les)


def _stat(f: _FoldArrays, metric: str, level: str, counts: np.ndarray) -> np.ndarray:
    """``metric`` of one fold for each row of lesion multiplicities ``counts`` [B, n_lesions]."""
    if level == "lesion":
        return weighted_metric(metric, f.y_les, f.p_les, f.thr_les, counts)
    if metric in ("mcr", "discordance"):
        wrong = (f.p >= f.thr) != (f.y == 1)
        n = np.bincount(f.code, minlength=f.n_lesions)
        if metric == "mcr":
            rate = np.bincount(f.code, weights=wrong, minlength=f.n_lesions) / n
            keep = rate > 0
            value = rate
        else:
            pos = np.bincount(f.code, weights=(f.p >= f.thr), minlength=f.n_lesions)
            keep = n > 1
            value = ((pos > 0) & (pos < n)).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (counts * keep * value).sum(1) / (counts * keep).sum(1)
    return weighted_metric(metric, f.y, f.p, f.thr, counts[:, f.code])


def paired_difference(results: Sequence[dict[str, Any]], a: str, b: str, metric: str,
                      level: str = "image", n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``metric(a) - metric(b)`` in points (%), the mean over the folds both were run on.

    95% interval and two-sided p from a paired two-level bootstrap, as the book's
    :func:`~bus_paper.core.stats.two_level_bootstrap` (runs, then clusters): every resample draws
    the folds with replacement (each fold's pair of models is one training outcome: the variance
    between trainings), then each drawn fold's lesions with replacement (the same draw for both
    variants), and averages the fold-wise differences over the drawn folds. With the lesions
    alone, two executions that differed only in the SSL encoder gave LR's specificity gain
    intervals of +1.0 to +5.0 and -5.3 to -1.7. ``folds``: the fold-wise differences themselves.
    ``level``: ``image`` (MCR and discordance only here) or ``lesion`` (views averaged).
    """
    if level not in ("image", "lesion"):
        raise ValueError(f"level must be 'image' or 'lesion', got {level!r}")
    by = {(r["variant"], int(r["fold"])): r for r in results}
    folds = sorted(f for (v, f) in by if v == a and (b, f) in by)
    if not folds:
        raise ValueError(f"no fold has runs of both {a!r} and {b!r}")
    rng = np.random.default_rng(seed)
    observed, boots = [], []
    for fold in folds:
        fa, fb = _FoldArrays.of(by[(a, fold)]), _FoldArrays.of(by[(b, fold)])
        if not np.array_equal(fa.paths, fb.paths):
            raise ValueError(f"fold {fold}: {a} and {b} were tested on different images")
        ones = np.ones((1, fa.n_lesions))
        observed.append(float((_stat(fa, metric, level, ones) - _stat(fb, metric, level, ones))[0]))
        # each lesion is a cluster (its views go together): the book's one cluster draw
        counts = cluster_weights(None, fa.n_lesions, n_boot, rng)
        boots.append(_stat(fa, metric, level, counts) - _stat(fb, metric, level, counts))
    per_fold = np.vstack(boots).T                                   # [n_boot, folds]
    drawn = rng.integers(0, len(folds), size=per_fold.shape)        # the outer level: folds
    with np.errstate(invalid="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN rows: an undefined resample
            d = np.nanmean(np.take_along_axis(per_fold, drawn, axis=1), axis=1)
    d = 100 * d
    delta = 100 * float(np.nanmean(observed)) if np.isfinite(observed).any() else float("nan")
    # NaN interval and p when the metric is undefined in every resample (e.g. no errors)
    lo, hi, ok = percentile_interval(d)
    return {"a": a, "b": b, "metric": metric, "level": level, "diff": delta, "lo": lo, "hi": hi,
            "p": bootstrap_p(d), "folds": [100 * x for x in observed],
            "a_better_folds": int(sum(x > 0 for x in observed)), "n_folds": len(folds),
            "n_boot": ok}


# ----------------------------------------------------------------------------- claims and verdicts
@dataclass(frozen=True)
class Claim:
    """A difference the paper reports: ``metric(a) - metric(b)`` (its tables give the value)."""
    key: str
    text: str
    a: str
    b: str
    metric: str

    @property
    def paper(self) -> float:
        return paper_value(self.a, self.metric) - paper_value(self.b, self.metric)


CLAIMS: tuple[Claim, ...] = (
    Claim("lr_auc", "LR raises AUC over the baseline (+1.5)", "lr", "baseline", "auc"),
    Claim("lr_acc", "LR raises accuracy over the baseline (+2.8)", "lr", "baseline", "accuracy"),
    Claim("lr_spec", "LR raises specificity (+6.8)", "lr", "baseline", "specificity"),
    Claim("lr_prec", "LR raises precision (+3.9)", "lr", "baseline", "precision"),
    Claim("lr_mcr", "LR lowers MCR (−7.2)", "lr", "baseline", "mcr"),
    Claim("ir_auc", "IR lowers AUC (−0.8)", "ir", "baseline", "auc"),
    Claim("ir_acc", "IR lowers accuracy (−1.8)", "ir", "baseline", "accuracy"),
    Claim("ir_mcr", "IR raises MCR (+3.4)", "ir", "baseline", "mcr"),
    Claim("no_neg_auc", "Removing all negatives lowers LR's AUC (Table 2: −1.3; text: −1.1)",
          "lr_minus_all", "lr", "auc"),
    Claim("hard_neg_auc", "Hard (same-class) negatives beat easy ones: LR(−DC) > LR(−SC) (+0.6)",
          "lr_minus_dc", "lr_minus_sc", "auc"),
    Claim("all_neg_auc", "All negatives beat same-class ones only: LR > LR(−DC) (+0.6)",
          "lr", "lr_minus_dc", "auc"),
)


def claim_differences(results: Sequence[dict[str, Any]], n_boot: int = 2000, seed: int = 0
                      ) -> pd.DataFrame:
    """Every claim of :data:`CLAIMS` whose two variants were run: the measured paired difference,
    its 95% interval and p, the fold wins and the paper's difference. The chapter saves it as
    ``verdicts.csv``, which the claims table reads; the verdict word is the claims table's (one
    legend, with the learning checks: :mod:`bus_paper.papers.p002.claims`)."""
    have = {r["variant"] for r in results}
    rows = []
    for c in CLAIMS:
        if c.a not in have or c.b not in have:
            continue
        d = paired_difference(results, c.a, c.b, c.metric, n_boot=n_boot, seed=seed)
        rows.append({"claim": c.text, "key": c.key, "metric": c.metric,
                     "measured": d["diff"], "ci_low": d["lo"], "ci_high": d["hi"], "p": d["p"],
                     "folds a > b": f"{d['a_better_folds']}/{d['n_folds']}",
                     "paper": c.paper})
    return pd.DataFrame(rows)


#: the baseline comparisons the chapter shows: (metric, level); MCR and discordance are image-level
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("auc", "image"), ("accuracy", "image"), ("specificity", "image"), ("mcr", "image"),
    ("discordance", "image"), ("auc", "lesion"), ("accuracy", "lesion"))


def paired_vs_baseline(results: Sequence[dict[str, Any]], variants: Sequence[str],
                       comparisons: Sequence[tuple[str, str]] = COMPARISONS, n_boot: int = 2000,
                       seed: int = 0) -> pd.DataFrame:
    """Every variant minus the baseline, per (metric, level) of ``comparisons``, in points: the
    paired difference over folds (:func:`paired_difference`), the folds it wins and the paper's
    difference (image level only: the paper reports no lesion level). Empty without a baseline."""
    rows = []
    if "baseline" in variants:
        for v in variants:
            if v == "baseline":
                continue
            for metric, level in comparisons:
                d = paired_difference(results, v, "baseline", metric, level, n_boot=n_boot,
                                      seed=seed)
                ref = (paper_value(v, metric) - paper_value("baseline", metric)
                       if level == "image" else np.nan)
                rows.append({"variant": v, "method": LABELS[v], "metric": metric, "level": level,
                             "difference": d["diff"], "ci_low": d["lo"], "ci_high": d["hi"],
                             "p": d["p"],
                             "folds better than baseline": f"{d['a_better_folds']}/{d['n_folds']}",
                             "paper difference": ref})
    return pd.DataFrame(rows)


def beside_paper(summ: pd.DataFrame, table: str, names: Sequence[str], metrics: Sequence[str]
                 ) -> pd.DataFrame:
    """Paper 002's ``table`` ("table1" | "table2") as measured here: each variant of ``names``
    that ran, each metric as "mean ± sd" over folds (a :func:`summary`), the paper's mean in
    brackets where it gives one."""
    paper = paper_002(table).set_index("variant")
    t = summ.set_index("variant")
    order = [v for v in names if v in t.index]

    def cell(v: str, m: str) -> str:
        ref = paper.loc[v, m] if v in paper.index else np.nan
        sd = f" ± {t.loc[v, m + '_sd']:.1f}" if np.isfinite(t.loc[v, m + "_sd"]) else ""
        return f"{t.loc[v, m]:.1f}{sd}" + (f" ({ref:.1f})" if np.isfinite(ref) else "")
    return pd.DataFrame({METRIC_NAMES[m]: [cell(v, m) for v in order] for m in metrics},
                        index=pd.Index([LABELS[v] for v in order], name="method"))


def training_log(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The per-epoch log of every run: losses, validation AUC, learning rate, speed."""
    rows = [{"variant": r["variant"], "fold": r["fold"], **h} for r in results
            for h in r["history"]]
    return pd.DataFrame(rows)
