"""Would more pretraining change the SSL verdicts? The SSL budget curve (issue 18).

The proposed model is pretrained once for the longest budget; the encoders after fewer epochs are
snapshots of that run (:func:`~bus_paper.train.pretraining.pretrain_snapshots`: constant learning
rate and per-epoch seeds make them the encoders shorter runs would give). Each encoder, and random
initialisation, is fine-tuned the same way on every fold of a grouped, stratified k-fold
cross-validation (:class:`~bus_paper.train.data.Fold`), so every image of the data set is a test
image once per repeat and a small set such as UDIAT's 163 images is used whole.

Each repeat's out-of-fold probabilities form one prediction per image; the AUC of those and its
interval come from :func:`~bus_paper.core.stats.two_level_metrics` (repeats, then clusters: the
split groups, so duplicates and a patient's images are drawn together), and SSL - random from
:func:`~bus_paper.core.stats.two_level_paired` on the same images. Beside each encoder: its
last pretraining loss against chance and a label-free kNN probe of its features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...config import Profile
from ...core import MISSING
from ...core.stats import nt_xent_chance, ssl_loss_check, two_level_metrics, two_level_paired
from ...data.preprocess import Normalizer
from ...train import finetune
from ...train.data import Fold, load_labelled, resolve_root
from ...train.pretraining import load_pretrained, pretrain_snapshots
from .analysis import embed, encoder_from_pretrained, knn_label_agreement, random_encoder

RANDOM = 0  # the curve's "SSL epochs" of random initialisation


@dataclass(frozen=True)
class BudgetPlan:
    """What the curve runs, from the profile's ``[papers.p000]``: ``ssl_budgets`` (pretraining
    epochs; default the profile's own), ``cv_datasets`` (default the fine-tuning data sets),
    ``cv_folds`` (k, default 5) and ``cv_repeats`` (default 1)."""
    budgets: tuple[int, ...]
    datasets: tuple[str, ...]
    k: int = 5
    repeats: int = 1

    @classmethod
    def of(cls, profile: Profile) -> BudgetPlan:
        s = profile.section("p000")
        budgets = tuple(sorted({int(e) for e in s.get("ssl_budgets", [profile.pretrain.epochs])}))
        plan = cls(budgets, tuple(s.get("cv_datasets", profile.finetune.datasets)),
                   int(s.get("cv_folds", 5)), int(s.get("cv_repeats", 1)))
        if not budgets or budgets[0] < 1 or plan.k < 2 or plan.repeats < 1 or not plan.datasets:
            raise ValueError(f"[papers.p000] budget settings make no curve: {plan}")
        return plan

    @property
    def folds(self) -> list[Fold]:
        return [Fold(self.k, i, r) for r in range(self.repeats) for i in range(self.k)]


def book_encoder(profile: Profile, root: str | Path | None = None) -> Path:
    """The proposed model's encoder (the profile's pretraining epochs: the same run, and cache
    key, as :func:`~bus_paper.train.pretraining.pretrain`), trained with the curve's shorter
    budgets saved on the way, so that from an empty cache the pretraining chapter's one run also
    gives this chapter its snapshots (a plain run would leave them to a second, shorter run)."""
    epochs = profile.pretrain.epochs
    shorter = [b for b in BudgetPlan.of(profile).budgets if b < epochs]
    return pretrain_snapshots(profile, [*shorter, epochs], root)[epochs]


def encoders(profile: Profile, plan: BudgetPlan, root: str | Path | None = None
             ) -> dict[int, Path | None]:
    """``{ssl epochs: encoder.pt}`` for every budget, and ``{0: None}`` (random init)."""
    return {RANDOM: None, **pretrain_snapshots(profile, plan.budgets, root)}


def cv_runs(profile: Profile, dataset: str, encoder: Path | None, plan: BudgetPlan,
            root: str | Path | None = None) -> list[dict[str, Any]]:
    """One fine-tuning per fold of ``plan`` (seed = the repeat), from ``encoder`` (None: random
    init); each is cached like any fine-tuning run."""
    return [finetune(profile, dataset, fold.repeat, root, encoder_path=encoder, fold=fold)
            for fold in plan.folds]


def out_of_fold(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Each repeat's test predictions of its k fold models, one row per (repeat, image):
    ``repeat, fold, path, label, prob, cluster``, sorted by repeat then path. Raises unless
    every repeat tests the same images exactly once."""
    parts = []
    for r in runs:
        fold = r["fold"]
        t = r["predictions"]
        parts.append(t[t["split"] == "test"].assign(repeat=fold["repeat"], fold=fold["index"]))
    oof = pd.concat(parts, ignore_index=True).sort_values(["repeat", "path"], ignore_index=True)
    per_repeat = [g["path"].tolist() for _, g in oof.groupby("repeat")]
    if any(len(set(p)) != len(p) for p in per_repeat):
        raise ValueError("an image is tested twice within a repeat: not one cross-validation")
    if any(p != per_repeat[0] for p in per_repeat):
        raise ValueError("the repeats tested different images")
    return oof[["repeat", "fold", "path", "label", "prob", "cluster"]]


def _matrix(oof: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(labels [n], probabilities [repeats, n], clusters [n], paths [n]) of :func:`out_of_fold`."""
    first = oof[oof["repeat"] == oof["repeat"].min()]
    probs = np.stack([g["prob"].to_numpy(float) for _, g in oof.groupby("repeat")])
    return (first["label"].to_numpy(int), probs, first["cluster"].astype(str).to_numpy(),
            first["path"].tolist())


def cv_auc(oof: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Out-of-fold AUC (points, mean over repeats) with its two-level 95 % interval."""
    y, p, c, _ = _matrix(oof)
    iv = two_level_metrics(y, p, [0.5] * len(p), c, metrics=("auc",), n_boot=n_boot,
                           seed=seed)["auc"]
    return {"auc": 100 * iv.estimate, "ci_low": 100 * iv.lo, "ci_high": 100 * iv.hi,
            "images": iv.n_images, "clusters": iv.n_clusters}


def cv_paired(oof_a: pd.DataFrame, oof_b: pd.DataFrame, n_boot: int = 2000, seed: int = 0
              ) -> dict[str, float]:
    """Out-of-fold AUC of a minus b on the same images (points), paired two-level interval, p."""
    ya, pa, c, paths_a = _matrix(oof_a)
    yb, pb, _, paths_b = _matrix(oof_b)
    if paths_a != paths_b or not np.array_equal(ya, yb):
        raise ValueError("the two cross-validations tested different images")
    iv, p = two_level_paired(ya, pa, [0.5] * len(pa), pb, [0.5] * len(pb), c, n_boot=n_boot,
                             seed=seed)
    return {"diff": 100 * iv.estimate, "diff_low": 100 * iv.lo, "diff_high": 100 * iv.hi, "p": p}


def probe_images(profile: Profile, dataset: str, root: str | Path | None = None
                 ) -> tuple[Any, np.ndarray, list[str]]:
    """Every labelled image of ``dataset`` for the kNN probe: (uint8 images, benign/malignant
    labels, split groups)."""
    import torch
    data = load_labelled(profile, resolve_root(profile, root), dataset,
                         fold=Fold(2, 0))  # any fold: all images, with their groups
    parts = ("train", "val", "test")
    y = np.concatenate([data.y[s].numpy() for s in parts])
    return (torch.cat([data.x[s] for s in parts]), np.where(y == 1, "malignant", "benign"),
            [g for s in parts for g in data.clusters(s)])


def knn_probe(model, images: tuple[Any, np.ndarray, list[str]], normalizer, run,
              k: int = 5) -> float:
    """Label-free probe of an encoder: leave-one-group-out kNN AUC (points) over ``images``
    (:func:`probe_images`; :func:`~bus_paper.papers.p000.analysis.knn_label_agreement`,
    features centred on the data set)."""
    x, labels, groups = images
    e = embed(model, x, normalizer, run)
    return 100 * knn_label_agreement(e - e.mean(axis=0), labels, groups, k=k)["auc"]


def budget_curve(profile: Profile, root: str | Path | None = None, n_boot: int = 2000
                 ) -> tuple[pd.DataFrame, dict[tuple[str, int], pd.DataFrame], list[dict[str, Any]]]:
    """The curve, the out-of-fold predictions per (data set, SSL epochs) and every run.

    The curve has one row per data set and SSL budget (``ssl_epochs`` 0: random init):
    ``ssl_epochs, dataset, init, auc, ci_low, ci_high`` (out-of-fold AUC, points, two-level
    interval), ``diff, diff_low, diff_high, p`` (AUC minus random init's, paired; NaN for random
    init itself), ``fold_auc`` (the mean of the fold models' own test AUCs), ``knn_auc`` (the
    encoder's kNN probe), ``ssl_loss`` and ``ssl_loss_chance``
    (its last pretraining loss; NaN for random init), ``ssl_learned`` (the loss check), and the
    counts ``images, clusters, folds, repeats``.
    """
    plan = BudgetPlan.of(profile)
    enc = encoders(profile, plan, root)
    states = {e: load_pretrained(p) for e, p in enc.items() if p is not None}
    like = states[plan.budgets[-1]]   # random init: the same architecture and normaliser
    normalizer = Normalizer.from_dict(like["normalizer"])
    chance = nt_xent_chance(profile.pretrain.batch_size)
    rows, oofs, runs = [], {}, []
    for dataset in plan.datasets:
        images = probe_images(profile, dataset, root)
        for epochs, path in enc.items():   # random init first: the others are paired with it
            rs = cv_runs(profile, dataset, path, plan, root)
            runs += [r | {"ssl_epochs": epochs} for r in rs]
            oofs[dataset, epochs] = oof = out_of_fold(rs)
            state = states.get(epochs)
            model = (encoder_from_pretrained(state) if state
                     else random_encoder(like["model_config"]))
            row: dict[str, Any] = {"ssl_epochs": epochs, "dataset": dataset,
                                   "init": "ssl" if state else "random", **cv_auc(oof, n_boot)}
            row.update(cv_paired(oof, oofs[dataset, RANDOM], n_boot) if state else
                       {"diff": math.nan, "diff_low": math.nan, "diff_high": math.nan,
                        "p": math.nan})
            # beside the pooled AUC: the mean of the folds' own test AUCs, which does not
            # penalise fold models whose probabilities sit on different scales
            row["fold_auc"] = 100 * float(np.mean([r["metrics"]["auc"] for r in rs]))
            row["knn_auc"] = knn_probe(model, images, normalizer, profile.run)
            if state:
                losses = [h["train_loss"] for h in state["history"]]
                row.update(ssl_loss=losses[-1], ssl_loss_chance=chance,
                           ssl_learned=ssl_loss_check(losses, chance).passed)
            else:
                row.update(ssl_loss=math.nan, ssl_loss_chance=chance, ssl_learned=math.nan)
            row.update(folds=plan.k, repeats=plan.repeats)
            rows.append(row)
    return pd.DataFrame(rows), oofs, runs


def log_trend(curve: pd.DataFrame, dataset: str, column: str = "diff",
              at: float = 1000.0) -> dict[str, float]:
    """Least-squares line of ``column`` against log10(SSL epochs) over the SSL budgets of
    ``dataset``: ``slope`` (points per tenfold budget) and ``at`` (the line read at ``at``
    epochs). An extrapolation, not a measurement; NaN with fewer than 2 budgets."""
    t = curve[(curve["dataset"] == dataset) & (curve["ssl_epochs"] > RANDOM)]
    t = t[np.isfinite(t[column])]
    if len(t) < 2:
        return {"slope": math.nan, "at": math.nan, "epochs": at}
    slope, intercept = np.polyfit(np.log10(t["ssl_epochs"].to_numpy(float)),
                                  t[column].to_numpy(float), 1)
    return {"slope": float(slope), "at": float(intercept + slope * math.log10(at)),
            "epochs": at}


def describe(curve: pd.DataFrame, paper_epochs: int = 1000) -> list[str]:
    """One plain-language line per data set: the AUCs along the budget, the kNN probe, the
    SSL - random difference at the longest budget with its interval, and the log-linear trend
    read at the paper's ``paper_epochs`` (said to be an extrapolation). No verdict word: the
    verdicts are the claims table's (:func:`bus_paper.papers.table.claims_table`)."""
    lines = []
    for d, t in curve.groupby("dataset", sort=False):
        t = t.sort_values("ssl_epochs")
        rnd, ssl = t[t["ssl_epochs"] == RANDOM].iloc[0], t[t["ssl_epochs"] > RANDOM]
        top = ssl.iloc[-1]
        aucs = ", ".join(f"{r.auc:.1f} after {r.ssl_epochs}" for r in ssl.itertuples())
        knn = " -> ".join(f"{x:.1f}" for x in t["knn_auc"])
        tr = log_trend(curve, d, at=paper_epochs)
        room = 100 - rnd.auc   # the most SSL can add to random init's AUC
        trend = "" if not math.isfinite(tr["slope"]) else (
            f" Fitted against log(epochs), the difference changes by {tr['slope']:+.1f} points "
            f"per tenfold budget. " + (
                f"Read at the paper's {paper_epochs} epochs the line gives {tr['at']:+.1f} points. "
                if tr["at"] <= room else
                f"Read at the paper's {paper_epochs} epochs the line would pass the "
                f"{room:.1f} points left above random init, so the trend cannot go on that far: "
                "it says that more epochs still helped at this scale, not how much they would "
                "help at the paper's. ") +
            f"The fit is an extrapolation from {len(ssl)} budgets of at most "
            f"{int(top.ssl_epochs)} epochs, not a measurement.")
        lines.append(
            f"- **{d.upper()}** ({int(rnd.images)} images in {int(rnd.clusters)} clusters, each "
            f"tested once per repeat; {int(rnd.repeats)} x {int(rnd.folds)} folds): out-of-fold "
            f"AUC {rnd.auc:.1f} from random init, {aucs} SSL epochs (mean of the folds' own "
            f"AUCs: {', '.join(f'{x:.1f}' for x in t['fold_auc'])}). SSL - random at "
            f"{int(top.ssl_epochs)} epochs: {top['diff']:+.1f} points (95 % CI {top.diff_low:+.1f} "
            f"to {top.diff_high:+.1f}). The label-free kNN probe of the features goes "
            f"{knn} (random init first).{trend}")
    return lines


# ----------------------------------------------------------------------------- for the chapter
def stack_out_of_fold(oofs: Mapping[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """Every out-of-fold prediction in one table: ``dataset, ssl_epochs`` + :func:`out_of_fold`."""
    return pd.concat([o.assign(dataset=d, ssl_epochs=e)[["dataset", "ssl_epochs", *o.columns]]
                      for (d, e), o in oofs.items()], ignore_index=True)


def runs_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per fine-tuning run of the curve: where it sits, its sizes, its selected epoch,
    its test AUC (the fold's own) and its minutes when it ran (cached runs keep theirs)."""
    rows = []
    for r in runs:
        h = pd.DataFrame(r["history"])
        best = int(h["score"].idxmax()) + 1 if "score" in h and len(h) else math.nan
        rows.append({"dataset": r["dataset"], "ssl_epochs": r["ssl_epochs"],
                     "repeat": r["fold"]["repeat"], "fold": r["fold"]["index"],
                     "train": r["n"]["train"], "val": r["n"]["val"], "test": r["n"]["test"],
                     "selected epoch": best, "threshold": r["threshold"],
                     "test AUC": r["metrics"]["auc"], "minutes": r["seconds"] / 60})
    return pd.DataFrame(rows)


def paper_difference(dataset: str) -> float:
    """The paper's SSL - random AUC difference on ``dataset`` (its Tables 4-5), as its claim."""
    from .claims import CLAIMS
    return next(c.paper_value for c in CLAIMS if c.measure == f"ssl_budget {dataset}")


def readable(curve: pd.DataFrame) -> pd.DataFrame:
    """The curve for reading: one row per data set and budget, numbers in points with one
    decimal and intervals in words (random init has no difference: a dash)."""
    def ci(v, lo, hi, signed=False):
        f = "{:+.1f}" if signed else "{:.1f}"
        return MISSING if not math.isfinite(v) else f"{f.format(v)} ({f.format(lo)} to {f.format(hi)})"
    return pd.DataFrame({
        "data set": curve["dataset"].str.upper(),
        "SSL epochs": [("random init" if e == RANDOM else str(e)) for e in curve["ssl_epochs"]],
        "out-of-fold AUC (95% CI)": [ci(r.auc, r.ci_low, r.ci_high) for r in curve.itertuples()],
        "mean fold AUC": curve["fold_auc"].map("{:.1f}".format),
        "SSL − random (95% CI)": [ci(r.diff, r.diff_low, r.diff_high, True)
                                  for r in curve.itertuples()],
        "p": [(MISSING if not math.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}")
              for p in curve["p"]],
        "kNN probe AUC": curve["knn_auc"].map("{:.1f}".format),
        "last SSL loss (chance)": [(MISSING if not math.isfinite(r.ssl_loss) else
                                    f"{r.ssl_loss:.2f} ({r.ssl_loss_chance:.2f})")
                                   for r in curve.itertuples()],
        "images (clusters)": [f"{r.images} ({r.clusters})" for r in curve.itertuples()],
    })


def plot_curve(curve: pd.DataFrame):
    """AUC and kNN probe against the budget (left), SSL - random with the paper's value (right)."""
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    x_of = {e: (e if e > RANDOM else 0.5) for e in curve["ssl_epochs"].unique()}  # log axis
    for i, (d, t) in enumerate(curve.groupby("dataset", sort=False)):
        t = t.sort_values("ssl_epochs")
        x = t["ssl_epochs"].map(x_of)
        c = f"C{i}"
        a.errorbar(x, t["auc"], yerr=[t["auc"] - t["ci_low"], t["ci_high"] - t["auc"]], fmt="o-",
                   color=c, capsize=3, label=f"{d.upper()} fine-tuned")
        a.plot(x, t["knn_auc"], "o--", color=c, mfc="none", label=f"{d.upper()} kNN probe")
        s = t[t["ssl_epochs"] > RANDOM]
        xs = s["ssl_epochs"] * (1 + 0.04 * i)
        b.errorbar(xs, s["diff"], yerr=[s["diff"] - s["diff_low"], s["diff_high"] - s["diff"]],
                   fmt="o-", color=c, capsize=3, label=d.upper())
        b.axhline(paper_difference(d), color=c, ls="--", lw=1,
                  label=f"paper, {d.upper()}: {paper_difference(d):+.1f}")
    ticks = sorted(x_of.values())
    labels = ["random" if v == 0.5 else f"{v:g}" for v in ticks]
    a.set(xscale="log", xlabel="SSL epochs", ylabel="AUC (%)", ylim=(30, 100),
          title="out-of-fold AUC and kNN probe")
    a.set_xticks(ticks, labels)
    a.minorticks_off()
    a.axhline(50, color="0.6", lw=0.8)
    a.legend(fontsize=7, loc="lower right")
    b.axhline(0, color="0.3", lw=0.8)
    b.set(xscale="log", xlabel="SSL epochs", ylabel="AUC SSL - random (points)",
          title="SSL - random init, paired")
    b.set_xticks(ticks[1:], labels[1:])
    b.minorticks_off()
    b.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
