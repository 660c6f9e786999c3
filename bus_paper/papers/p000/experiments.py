"""The experiments behind paper 000's results chapters, as functions of a profile.

Each chapter asks for runs by name and gets :func:`~bus_paper.train.finetune` results back; every
pretraining and fine-tuning is cached (``runs/``), so chapters share them: the proposed model's
runs serve Table 1, the ablations (as "full") and the label-efficiency curve (at 100 %).

- :data:`TABLE1`: the rows of Table 1. Every baseline is pretrained on the same unlabeled pool,
  for the same epochs, batch and optimiser as the proposed model (the paper: "pretrained on the
  same unlabeled ultrasound images for the same number of epochs"). The paper names the SSL method
  of two rows only (DINO, SimCLR); the others (ConvNeXt-Tiny, EfficientNetV2-S, Swin) get SimCLR's
  NT-Xent with the proposed model's views and projection head, so that they differ from the
  proposed model in architecture only.
- :data:`ABLATIONS`: Tables 4-5, each a config change of the proposed model.
- :func:`label_fraction_runs`: the label-efficiency curve the paper claims but never shows.

>>> sorted(ABLATIONS)
['full', 'no_fusion', 'no_ssl', 'reduced_aug', 'single_scale']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...config import Profile
from ...core import MISSING
from ...core.stats import two_level_paired
from ...metrics import METRICS, interval_position
from .analysis import aligned_test_predictions, cluster_count, seed_mean_ci, test_clusters


# ----------------------------------------------------------------------------- Table 1
@dataclass(frozen=True)
class Row:
    """One model of Table 1: ``baseline`` names a :mod:`bus_paper.models.baselines` backbone
    (None: the proposed model), ``objective`` its self-supervised pretraining."""
    key: str
    label: str
    baseline: str | None
    objective: str = "simclr"   # simclr | dino


TABLE1: tuple[Row, ...] = (
    Row("convnext_tiny", "ConvNeXt-Tiny", "convnext_tiny"),
    Row("efficientnetv2_s", "EfficientNetV2-S", "efficientnetv2_s"),
    Row("swin_tiny", "Swin Transformer (SSL pre-trained)", "swin_tiny"),
    Row("dino_vit", "DINO-ViT (Self-Supervised)", "vit_small", "dino"),
    Row("simclr_resnet50", "SimCLR (SSL CNN backbone)", "resnet50"),
    Row("proposed", "Proposed Model", None),
)
ROWS = {r.key: r for r in TABLE1}


def encoder_for(profile: Profile, root: str | Path | None, row: Row | str) -> Path:
    """The (cached) pretrained ``encoder.pt`` of a Table 1 row."""
    from ...train.dino import dino_pretrain
    from ...train.pretraining import pretrain
    row = ROWS[row] if isinstance(row, str) else row
    if row.objective == "dino":
        return dino_pretrain(profile, root, name=row.baseline)
    if row.objective != "simclr":
        raise ValueError(f"{row.key}: unknown objective {row.objective!r} (simclr | dino)")
    return pretrain(pretraining_profile(profile, row.baseline), root, baseline=row.baseline)


def pretraining_summary(profile: Profile, row: Row, state: dict[str, Any]) -> dict[str, Any]:
    """One row of Table 1's pretraining table from a loaded ``encoder.pt``: epochs, first and
    last loss, and the loss of an encoder that knows nothing (``chance loss``) *for that run*:
    DINO ln K with the K it was trained with, SimCLR ln(2N - 1) with N the profile's batch, or
    the pool when smaller (:func:`~bus_paper.core.stats.ssl_chance_loss`). The claims' learning
    check reads it from here, so a later profile change cannot re-judge an old run; ``learned`` is
    that check, shown beside the losses."""
    from ...core.stats import ssl_chance_loss, ssl_loss_check
    hist = state["history"]
    chance = ssl_chance_loss(state, profile.pretrain.batch_size)
    losses = [h["train_loss"] for h in hist]
    return {"row": row.key, "model": row.label, "objective": row.objective,
            "epochs": len(hist), "first loss": losses[0], "last loss": losses[-1],
            "chance loss": chance, "learned": ssl_loss_check(losses, chance).passed,
            "pretraining minutes (when run)": state["seconds"] / 60}


def table1_runs(profile: Profile, root: str | Path | None, row: Row | str,
                datasets: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Pretrain (once) and fine-tune one Table 1 row on every dataset and seed."""
    from ...train import finetune
    row = ROWS[row] if isinstance(row, str) else row
    enc = encoder_for(profile, root, row)
    return [finetune(profile, d, s, root, encoder_path=enc,
                     baseline=row.baseline) | {"row": row.key}
            for d in datasets for s in seeds]


def table1_cv_runs(profile: Profile, root: str | Path | None, row: Row | str, dataset: str,
                   folds: Sequence[Any]) -> list[dict[str, Any]]:
    """One Table 1 row fine-tuned on every fold of a grouped cross-validation of ``dataset``
    (:class:`~bus_paper.train.data.Fold`; seed = the fold's repeat), so that every image is a test
    image once per repeat. The proposed model's runs are the SSL budget curve's at the book's
    budget (the same encoder and settings: cached once)."""
    from ...train import finetune
    row = ROWS[row] if isinstance(row, str) else row
    enc = encoder_for(profile, root, row)
    return [finetune(profile, dataset, f.repeat, root, encoder_path=enc, baseline=row.baseline,
                     fold=f) | {"row": row.key} for f in folds]


def table1_cv(profile: Profile, root: str | Path | None, rows: Sequence[Row],
              n_boot: int = 2000) -> dict[str, pd.DataFrame]:
    """Table 1 on whole data sets: every row of ``rows`` on every fold of the profile's grouped
    cross-validation (``[papers.p000] cv_datasets``, ``cv_folds``, ``cv_repeats``: the SSL budget
    curve's plan, :class:`~bus_paper.papers.p000.budget.BudgetPlan`), out of fold.

    Returns ``metrics`` (row, dataset: out-of-fold AUC in points with its two-level interval,
    repeats then clusters; images, clusters, folds, repeats; the lowest fold AUC), ``paired``
    (the proposed model minus each baseline on the same images, paired: the columns of
    :func:`table1_paired`) and ``runs`` (one row per fold model: its test AUC). The plan's data
    sets default to the fine-tuning ones, as the curve's do."""
    from .budget import BudgetPlan, cv_auc, cv_paired, out_of_fold
    plan = BudgetPlan.of(profile)
    metrics, paired, runs = [], [], []
    for d in plan.datasets:
        oofs = {}
        for row in rows:
            rs = table1_cv_runs(profile, root, row, d, plan.folds)
            oofs[row.key] = out_of_fold(rs)
            aucs = [100 * r["metrics"]["auc"] for r in rs]
            metrics.append({"row": row.key, "dataset": d, **cv_auc(oofs[row.key], n_boot),
                            "folds": plan.k, "repeats": plan.repeats, "lowest fold AUC": min(aucs)})
            runs += [{"row": row.key, "dataset": d, "repeat": r["fold"]["repeat"],
                      "fold": r["fold"]["index"], "test AUC": r["metrics"]["auc"],
                      "minutes": r["seconds"] / 60} for r in rs]
        if "proposed" in oofs:
            for row in rows:
                if row.key != "proposed":
                    p = cv_paired(oofs["proposed"], oofs[row.key], n_boot)
                    paired.append({"dataset": d, "baseline": row.label,
                                   "AUC proposed - baseline": p["diff"],
                                   "95% CI low": p["diff_low"], "95% CI high": p["diff_high"],
                                   "p": p["p"]})
    return {"metrics": pd.DataFrame(metrics, columns=[
                "row", "dataset", "auc", "ci_low", "ci_high", "images", "clusters", "folds",
                "repeats", "lowest fold AUC"]),
            "paired": pd.DataFrame(paired, columns=[
                "dataset", "baseline", "AUC proposed - baseline", "95% CI low", "95% CI high",
                "p"]),
            "runs": pd.DataFrame(runs, columns=["row", "dataset", "repeat", "fold", "test AUC",
                                                "minutes"])}


def table1_cv_readable(cv: Mapping[str, pd.DataFrame], labels: Mapping[str, str]) -> pd.DataFrame:
    """:func:`table1_cv` for reading: per data set and row, the out-of-fold AUC with its interval,
    the lowest fold AUC, and the proposed model minus the row (paired), in points."""
    m, p = cv["metrics"], cv["paired"]
    diff = {(r["dataset"], r["baseline"]): r for _, r in p.iterrows()}
    out = []
    for _, r in m.iterrows():
        d = diff.get((r["dataset"], labels[r["row"]]))
        out.append({
            "data set": r["dataset"].upper(), "model": labels[r["row"]].split(" (")[0],
            "out-of-fold AUC (95% CI)": f"{r['auc']:.1f} ({r['ci_low']:.1f}–{r['ci_high']:.1f})",
            "lowest fold AUC": f"{r['lowest fold AUC']:.1f}",
            "proposed − model (95% CI)": MISSING if d is None else
            f"{d['AUC proposed - baseline']:+.1f} ({d['95% CI low']:+.1f} to "
            f"{d['95% CI high']:+.1f})",
            "p": MISSING if d is None else ("< 0.001" if d["p"] < 0.001 else f"{d['p']:.3f}"),
            "images (clusters)": f"{int(r['images'])} ({int(r['clusters'])})",
            "folds": f"{int(r['repeats'])} x {int(r['folds'])}"})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- Tables 4-5
@dataclass(frozen=True)
class Ablation:
    """A variant of the proposed model: config ``changes`` (dotted, as :meth:`Profile.replace`).

    ``pretrain_changes`` are the changes that also alter self-supervised pretraining (the paper's
    reduced augmentation is "essential for stable contrastive pretraining"; no fusion and single
    scale change the network that is pretrained). With ``own_pretraining`` the variant pretrains
    its own encoder with them; without it (the ``cpu`` profile, for time) it fine-tunes from the
    full model's encoder and only the fine-tuning side of the change is tested.
    """
    key: str
    label: str
    changes: dict[str, Any] = field(default_factory=dict)
    pretrain_changes: dict[str, Any] = field(default_factory=dict)
    ssl: bool = True


ABLATIONS: dict[str, Ablation] = {a.key: a for a in (
    Ablation("full", "Proposed model (SSL + fusion + multiscale + full aug.)"),
    Ablation("no_ssl", "No SSL (random init)", ssl=False),
    Ablation("no_fusion", "No multiscale fusion", {"model.fusion": False},
             {"model.fusion": False}),
    Ablation("single_scale", "Single-scale input only", {"model.multiscale_input": False},
             {"model.multiscale_input": False}),
    Ablation("reduced_aug", "Reduced augmentations", {"finetune.augment": "reduced"},
             {"pretrain.augment": "reduced"}),
)}


def own_pretraining(profile: Profile) -> bool:
    """Whether each ablation pretrains with its own change (the profile's ``[papers.p000]
    ablations_own_pretraining``; the gpu profile, as the paper presumably did) or fine-tunes from
    the full model's encoder (cheaper: the other profiles)."""
    return bool(profile.section("p000").get("ablations_own_pretraining", False))


def ablation_runs(profile: Profile, root: str | Path | None, key: str, datasets: Sequence[str],
                  seeds: Sequence[int], own_pretraining: bool = False) -> list[dict[str, Any]]:
    """Fine-tune ablation ``key`` on every dataset and seed (see :class:`Ablation`)."""
    from ...train import finetune
    from ...train.pretraining import pretrain
    if key not in ABLATIONS:
        raise KeyError(f"unknown ablation {key!r}; choose one of {', '.join(ABLATIONS)}")
    a = ABLATIONS[key]
    variant = profile.replace(**a.changes) if a.changes else profile
    if not a.ssl:
        enc = None
    elif own_pretraining and a.pretrain_changes:
        enc = pretrain(variant.replace(**a.pretrain_changes), root)
    else:
        enc = pretrain(profile, root)  # the full model's encoder
    return [finetune(variant, d, s, root, encoder_path=enc) | {"row": key}
            for d in datasets for s in seeds]


# ----------------------------------------------------------------------------- label efficiency
def label_fraction_runs(profile: Profile, root: str | Path | None, fraction: float, ssl: bool,
                        datasets: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Fine-tune on ``fraction`` of the training labels (a stratified subset drawn per seed; the
    validation and test splits are unchanged), from the SSL encoder or from random init."""
    from ...train import finetune
    from ...train.pretraining import pretrain
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    enc = pretrain(profile, root) if ssl else None
    variant = profile.replace(**{"finetune.label_fraction": float(fraction)})
    return [finetune(variant, d, s, root, encoder_path=enc)
            | {"row": f"{'ssl' if ssl else 'random'}@{fraction:g}"}
            for d in datasets for s in seeds]


# ----------------------------------------------------------------------------- summaries
def seed_table(results: Sequence[dict[str, Any]], by: str = "row", n_boot: int = 1000
               ) -> pd.DataFrame:
    """One row per (``by``, dataset): every metric as mean and sd over seeds and the 95% two-level
    bootstrap CI of the seed mean (seeds, then clusters of test images) (:func:`~bus_paper.papers.p000.analysis.seed_mean_ci`), in %."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r[by], r["dataset"]), []).append(r)
    rows = []
    for (name, dataset), runs in groups.items():
        y, probs, thr = aligned_test_predictions(runs)
        clusters = test_clusters(runs)
        ci = seed_mean_ci(y, probs, thr, n_boot=n_boot, clusters=clusters)
        row = {by: name, "dataset": dataset, "seeds": len(runs), "test images": len(y),
               "clusters": cluster_count(clusters, len(y))}
        for m in METRICS:
            vals = 100 * np.array([r["metrics"][m] for r in runs], dtype=float)
            row[m] = 100 * ci[m][0]
            row[f"{m}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            row[f"{m}_lo"], row[f"{m}_hi"] = 100 * ci[m][1], 100 * ci[m][2]
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]],
                      metric: str = "auc", n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Seed-mean ``metric`` of runs ``a`` minus that of runs ``b`` on the same test images, with a
    two-level bootstrap (each replicate draws the seeds of each side, then clusters of test
    images, one draw for both sides: paired on images; :func:`~bus_paper.core.stats.two_level_paired`)
    and a two-sided p-value (share of replicates whose difference has the other sign, doubled).
    In %; ``n_images``, ``n_clusters``, ``n_seeds`` say what was resampled."""
    a, b = list(a), list(b)
    y, probs, thr = aligned_test_predictions(a + b)  # all on the same images, or an error
    d, p = two_level_paired(y, probs[:len(a)], thr[:len(a)], probs[len(a):], thr[len(a):],
                            test_clusters(a + b), metric=metric, n_boot=n_boot, seed=seed)
    return {"diff": 100 * d.estimate, "lo": 100 * d.lo, "hi": 100 * d.hi, "p": p,
            "n_boot": d.n_boot, "n_images": d.n_images, "n_clusters": d.n_clusters,
            "n_seeds": (len(a), len(b))}


def fmt_mean_sd(table: pd.DataFrame, metric: str) -> pd.Series:
    """"mean ± sd" strings of a :func:`seed_table` column (sd omitted for one seed; a dash for a
    metric that is undefined)."""
    sd = table[f"{metric}_sd"]
    return pd.Series([MISSING if not np.isfinite(m) else
                      f"{m:.1f} ± {s:.1f}" if np.isfinite(s) else f"{m:.1f}"
                      for m, s in zip(table[metric], sd)], index=table.index)


def fmt_beside_paper(table: pd.DataFrame, metric: str, paper: pd.DataFrame) -> pd.Series:
    """:func:`fmt_mean_sd` with the paper's value in brackets where it gives one (``paper``
    indexed by row key and data set, as Tables 1, 4 and 5 are): "81.1 ± 2.0 (97.3)"."""
    refs = [paper.loc[k, metric] if k in paper.index else np.nan
            for k in zip(table["row"], table["dataset"])]
    return pd.Series([v if not np.isfinite(ref) else f"{v} ({ref:.1f})"
                      for v, ref in zip(fmt_mean_sd(table, metric), refs)], index=table.index)


def fmt_ci(table: pd.DataFrame, metric: str) -> pd.Series:
    return pd.Series([f"{lo:.1f}–{hi:.1f}" if np.isfinite(lo) and np.isfinite(hi) else MISSING
                      for lo, hi in zip(table[f"{metric}_lo"], table[f"{metric}_hi"])],
                     index=table.index)


def paired_table(results: Sequence[Mapping[str, Any]], reference: str = "proposed",
                 metrics: Sequence[str] = ("auc", "accuracy"), n_boot: int = 1000
                 ) -> pd.DataFrame:
    """``reference`` minus every other model, per dataset and metric, in points: seed means on the
    same test images, paired bootstrap CI and p (:func:`paired_difference`), and where the
    interval lies against 0 (``interval``: ``above 0``, ``below 0``, ``contains 0``; a
    description: the paper's claims get their verdicts in the claims table)."""
    by: dict[tuple[str, str], list] = {}
    for r in results:
        by.setdefault((r["row"], r["dataset"]), []).append(r)
    rows = []
    for (key, d), runs in by.items():
        if key == reference or (reference, d) not in by:
            continue
        for m in metrics:
            p = paired_difference(by[reference, d], runs, m, n_boot=n_boot)
            rows.append({"dataset": d, "model": key, "metric": m, "difference": p["diff"],
                         "ci_low": p["lo"], "ci_high": p["hi"], "p": p["p"],
                         "seeds": f"{len(by[reference, d])} vs {len(runs)}",
                         "interval": interval_position(p["lo"], p["hi"])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Table 1's chapter
def table1_paired(results: Sequence[dict[str, Any]], rows: Sequence[Row],
                  datasets: Sequence[str], n_boot: int = 2000) -> pd.DataFrame:
    """The proposed model minus each other row of ``rows`` on each of ``datasets``, in AUC
    points: :func:`paired_table` under the chapter's column names (a row's label for its key);
    empty when the proposed model is not among ``rows``."""
    label = {r.key: r.label for r in rows}
    t = paired_table([r for r in results if r["row"] in label and r["dataset"] in datasets],
                     "proposed", ("auc",), n_boot=n_boot) if "proposed" in label else None
    if t is None or t.empty:
        return pd.DataFrame(columns=["dataset", "baseline", "AUC proposed - baseline",
                                     "95% CI low", "95% CI high", "p"])
    return pd.DataFrame({"dataset": t["dataset"], "baseline": t["model"].map(label),
                         "AUC proposed - baseline": t["difference"], "95% CI low": t["ci_low"],
                         "95% CI high": t["ci_high"], "p": t["p"]})


def table1_findings(table: pd.DataFrame, pairs: pd.DataFrame, paper: pd.DataFrame,
                    datasets: Sequence[str], profile: Profile, n_seeds: int,
                    cv: Mapping[str, pd.DataFrame] | None = None) -> list[str]:
    """The chapter's closing summary: per dataset, the rows ranked by our test AUC beside the
    paper's ranking, and where the proposed model's paired differences lie against 0 (a
    description; the verdicts, with the learning checks, are the claims chapter's). ``table``: a
    :func:`seed_table` with a ``label`` column; ``paper``: Table 1 as printed, indexed by (row,
    dataset); ``pairs``: :func:`table1_paired`."""

    def short(labels: pd.Series) -> str:
        return " > ".join(labels.str.replace(r" \(.*\)", "", regex=True))

    def where(p: pd.DataFrame) -> dict[str, str]:  # baselines by where their interval lies
        side = [interval_position(lo, hi) for lo, hi in zip(p["95% CI low"], p["95% CI high"])]
        return {w: ", ".join(b for b, s in zip(p["baseline"], side) if s == w) or "none"
                for w in ("above 0", "below 0", "contains 0")}
    lines = []
    for d in datasets:
        t = table[table["dataset"] == d].sort_values("auc", ascending=False)
        order = list(t["row"])
        pp = paper.xs(d, level="dataset").loc[[k for k in order if (k, d) in paper.index]]
        lines.append(f"- **{d.upper()}**, ranked by our test AUC: {short(t['label'])}. The "
                     f"paper's ranking: {short(pp.sort_values('auc', ascending=False)['label'])}.")
        if "proposed" in order and len(pairs):
            names = where(pairs[pairs["dataset"] == d])
            prop = t[t["row"] == "proposed"].iloc[0]
            lines.append(
                f"  The proposed model: AUC {prop['auc']:.1f} (95% CI {prop['auc_lo']:.1f}–"
                f"{prop['auc_hi']:.1f}; paper {paper.loc[('proposed', d), 'auc']:.2f}). Its paired "
                f"AUC difference with each baseline has an interval above 0 for "
                f"{names['above 0']}; below 0 for {names['below 0']}; containing 0 for "
                f"{names['contains 0']}. The verdicts, with the learning checks, are the claims "
                "chapter's.")
        m = cv["metrics"] if cv is not None else None
        prop_cv = None if m is None else m[(m["dataset"] == d) & (m["row"] == "proposed")]
        if prop_cv is not None and len(prop_cv):
            prop = prop_cv.iloc[0]
            names = where(cv["paired"][cv["paired"]["dataset"] == d])
            lines.append(
                f"  Used whole ({int(prop['images'])} images, {int(prop['repeats'])} x "
                f"{int(prop['folds'])} folds): the proposed model's out-of-fold AUC is "
                f"{prop['auc']:.1f} (95% CI {prop['ci_low']:.1f}–{prop['ci_high']:.1f}); the paired "
                f"difference's interval lies above 0 for {names['above 0']}; below 0 for "
                f"{names['below 0']}; contains 0 for {names['contains 0']}. The claims use these.")
    lines.append(
        f"\nProfile `{profile.name}`: {profile.data.image_size} px, {profile.pretrain.epochs} "
        f"pretraining epochs, {profile.finetune.epochs} fine-tuning epochs, {n_seeds} seed(s); "
        "the paper: 224 px, 1000 and 200 epochs. A ranking measured at this budget says which "
        "architecture learns most from little pretraining and fine-tuning, not which wins at the "
        "paper's budget (the `gpu` profile).")
    return lines


# ----------------------------------------------------------------------------- Tables 4-5
def ablation_differences(results: Sequence[dict[str, Any]], datasets: Sequence[str],
                         metrics: Sequence[str] = ("auc", "accuracy")) -> pd.DataFrame:
    """Every ablation variant in ``results`` minus the full model, per dataset and metric, in
    points: :func:`paired_difference` (same test images, paired bootstrap) beside the difference
    paper 000's Tables 4-5 give (NaN where the paper has no row)."""
    from ..literature import paper_000
    paper = paper_000("ablations").set_index(["variant", "dataset"])
    variants = list(dict.fromkeys(r["row"] for r in results if r["row"] != "full"))
    rows = []
    for d in datasets:
        full = [r for r in results if r["dataset"] == d and r["row"] == "full"]
        for v in variants:
            mine = [r for r in results if r["dataset"] == d and r["row"] == v]
            for m in metrics:
                p = paired_difference(mine, full, m)
                ref = (paper.loc[(v, d), m] - paper.loc[("full", d), m]
                       if (v, d) in paper.index else np.nan)
                rows.append({"dataset": d, "variant": v, "label": ABLATIONS[v].label,
                             "metric": m, "difference": p["diff"], "ci_low": p["lo"],
                             "ci_high": p["hi"], "p": p["p"], "paper difference": ref})
    return pd.DataFrame(rows)


def pretraining_profile(profile: Profile, name: str) -> Profile:
    """The profile to SSL-pretrain backbone ``name`` with: the profile's own, but with its epochs
    capped by ``[papers.p000] pretrain_epochs_cap`` and its learning rate replaced by
    ``[papers.p000] pretrain_lr`` where they name the backbone. The cpu profile caps VGG16 (~4x
    ResNet-50's compute) at 2 epochs, and gives MobileNetV2 lr 1e-3: at the shared 1e-4 its
    SimCLR loss stalls near chance (4.82 -> 4.70 in 5 epochs, chance 4.84). Every chapter that
    pretrains a Table 1 wrapper (Table 1, papers 001 and 004) goes through here, so they share
    one encoder per backbone.

    >>> from bus_paper.config import load_profile
    >>> cpu, gpu = load_profile("cpu"), load_profile("gpu")
    >>> pretraining_profile(cpu, "vgg16").pretrain.epochs, pretraining_profile(cpu, "resnet50") is cpu
    (2, True)
    >>> pretraining_profile(cpu, "mobilenetv2").pretrain.lr, pretraining_profile(gpu, "mobilenetv2") is gpu
    (0.001, True)
    """
    section = profile.section("p000")
    changes: dict[str, Any] = {}
    cap = section.get("pretrain_epochs_cap", {}).get(name)
    if cap is not None and profile.pretrain.epochs > cap:
        changes["pretrain.epochs"] = int(cap)
    lr = section.get("pretrain_lr", {}).get(name)
    if lr is not None and float(lr) != profile.pretrain.lr:
        changes["pretrain.lr"] = float(lr)
    return profile.replace(**changes) if changes else profile
