"""What the paper-004 chapter shows besides the tables: the preprocessing figure, the Grad-CAM
comparison of a CNN, a ViT and the fusion model on the same test images (section 4.4), and the
verdict on the paper's claims (section 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...config import Profile
from ...metrics import interval_position
from .evaluate import METRICS
from .features import load_encoder
from .fusion import FeatureClassifier, MLPHead
from .prep import ImageZ, Prep, RoiSet, augmented_copies, clahe, crop_square, denoise, resize
from .run import TaskResult, paired_table

#: Section 4.1's "typical performance" of the fused model (in %; F1 given as 0.91-0.95) and the
#: conclusion's MIAS accuracy of the neural-network classifier.
PAPER_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (93.0, 97.0), "recall": (90.0, 95.0), "specificity": (92.0, 96.0),
    "f1": (91.0, 95.0), "auc": (95.0, 98.0)}
PAPER_MIAS_NN_ACCURACY = 94.5
METRIC_NAMES = {"accuracy": "accuracy", "precision": "precision", "recall": "sensitivity",
                "specificity": "specificity", "f1": "F1", "auc": "AUC"}


# ----------------------------------------------------------------------------- preprocessing
def prep_figure(examples: Sequence[tuple[str, RoiSet, Path, int]], prep: Prep, size: int,
                cell: float = 1.45):
    """One row per example ``(title, roi set, data root, row index)``: the stored image, after the
    median and Gaussian filters, after CLAHE, the ROI on it, the ROI at ``size`` px (z-scored for
    display), and one augmented version."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from ...data.imageio import read_image
    cols = ["stored image", "median + Gaussian", "CLAHE", "region of interest",
            f"ROI, {size} px, z-scored", "augmented (training)"]
    fig, axes = plt.subplots(len(examples), len(cols), figsize=(cell * len(cols),
                                                               cell * len(examples) + 0.3),
                             squeeze=False)
    for i, (title, roi, root, k) in enumerate(examples):
        row = roi.frame.iloc[k]
        img = read_image(Path(root) / row["path"])
        den = denoise(img, prep)
        enh = clahe(den, prep.clahe, prep.clahe_tiles)
        crop = resize(crop_square(enh, row["row"], row["col"], row["side"]), size)
        z = ImageZ(prep.zscore)(crop[None].astype(np.float32) / 255.0)
        aug = augmented_copies(crop[None], 1, seed=i)[0, 0]
        shown = [img, den, enh, enh, z[0], aug]
        for j, (ax, im) in enumerate(zip(axes[i], shown)):
            ax.imshow(im, cmap="gray", vmin=None if j == 4 else 0, vmax=None if j == 4 else 255)
            if j == 3:
                s = row["side"]
                ax.add_patch(Rectangle((row["col"] - s / 2, row["row"] - s / 2), s, s,
                                       fill=False, color="red", lw=1))
            if j == 4 and roi.masks[k].any():
                ax.contour(roi.masks[k].astype(float), levels=[0.5], colors="lime", linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
        axes[i, 0].set_ylabel(f"{title}\n{Path(row['path']).name}\n({row['source']})", fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Grad-CAM
def gradcam_models(result: TaskResult, profile: Profile) -> dict[str, FeatureClassifier]:
    """Differentiable versions of the first repeat's models: ``cnn`` (the first backbone + the
    NN classifier), ``vit`` (the ViT + the NN classifier, ultrasound only) and ``fusion`` (the
    three backbones + the attention fusion module and its own head)."""
    rep = result.repeats[0]
    encs = {(b, i): e for (seed, b, i), e in result.encoders.items() if seed == rep.seed}
    out = {}
    cnn = result.settings.backbones[0]
    for key, name in ((cnn, "cnn"), ("vit", "vit")):
        if f"nn:{key}" in result.models:
            fitted, backbones, init = result.models[f"nn:{key}"]
            nets = [load_encoder(profile, encs[b, init]) for b in backbones]
            out[name] = FeatureClassifier(nets, fitted.reducer, MLPHead(fitted.model), "concat")
    if "fusion" in result.models:
        red, module, backbones = result.models["fusion"]
        nets = [load_encoder(profile, encs[b, "ssl"]) for b in backbones]
        out["fusion"] = FeatureClassifier(nets, red, module, "list").eval()
    return out


def gradcam_task(result: TaskResult, profile: Profile, batch_size: int = 16,
                 max_images: int | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray],
                                                         pd.DataFrame]:
    """Grad-CAM of every model of :func:`gradcam_models` on the first repeat's test ROIs, for the
    true class: (per-image scores with energy in the lesion outline and pointing game; the maps per
    model; one row per model with its grid and the agreement with the stored NN scores)."""
    from ... import explain
    rep = result.repeats[0]
    test = rep.test[:max_images] if max_images else rep.test
    images, masks = result.roi.images[test], result.roi.masks[test]
    paths = np.asarray(result.roi.paths)[test]
    y = result.y[test]
    norm = ImageZ(result.settings.prep.zscore)
    # each ROI's group (woman, patient or duplicate group): the localisation intervals draw groups
    group = result.predictions.drop_duplicates("path").set_index("path")["group"].reindex(paths)
    scores, cams, info = [], {}, []
    for name, model in gradcam_models(result, profile).items():
        hm = explain.heatmaps(model, images, norm, targets=y, batch_size=batch_size)
        s = explain.localisation_scores(hm.cams, masks)
        scores.append(s.assign(task=result.task.key, model=name, path=paths, label=y,
                               prob=hm.prob, cluster=group.to_numpy()))
        cams[name] = hm.cams
        row = {"task": result.task.key, "model": name, "images": len(test),
               "grid": f"{hm.map_size[0]} x {hm.map_size[1]}", "with outline": int(s.has_mask.sum()),
               "empty maps": int(s.empty_cam.sum())}
        key = {"cnn": result.settings.backbones[0], "vit": "vit"}.get(name)
        if key is not None:       # the torch copy must reproduce the NN classifier's scores
            p = result.predictions
            stored = p[(p["repeat"] == rep.seed) & (p["set"] == key) & (p["classifier"] == "nn")]
            stored = stored.set_index("path").loc[paths, "score"].to_numpy(float)
            row["max |p - NN p|"] = float(np.abs(stored - hm.prob).max())
        info.append(row)
    return pd.concat(scores, ignore_index=True), cams, pd.DataFrame(info)


# ----------------------------------------------------------------------------- verdicts
def range_claims(tables: Mapping[str, pd.DataFrame], fused: str = "attention",
                 classifier: str = "nn") -> pd.DataFrame:
    """The paper's model (``fused`` features + ``classifier``) measured for section 4.1's ranges,
    and the NN's MIAS accuracy for the conclusion's 94.5 %, per task (the verdicts are the claims
    table's: :mod:`bus_paper.papers.p004.claims`)."""
    rows = []
    for task, t in tables.items():
        sel = t[(t["set"] == fused) & (t["classifier"] == classifier)]
        if sel.empty:
            continue
        r = sel.iloc[0]
        for m, claim in PAPER_RANGES.items():
            rows.append({"task": task, "claim": f"{METRIC_NAMES[m]} {claim[0]:g}–{claim[1]:g} %",
                         "measured": r[m], "lo": r[f"{m}_lo"], "hi": r[f"{m}_hi"]})
        if task.startswith("mias"):
            v = PAPER_MIAS_NN_ACCURACY
            rows.append({"task": task, "claim": f"MIAS accuracy of the NN classifier {v} %",
                         "measured": r["accuracy"], "lo": r["accuracy_lo"],
                         "hi": r["accuracy_hi"]})
    return pd.DataFrame(rows)


def fusion_claims(results: Mapping[str, TaskResult], metric: str = "auc",
                  n_boot: int | None = None) -> pd.DataFrame:
    """Paired differences: each fused set minus each single backbone, and SSL minus random init,
    per classifier (same test images and repeats), with where the interval lies against 0
    (``interval``: a description; the paper's claims get their verdicts in the claims table)."""
    rows = []
    for task, res in results.items():
        keys = {fs.key for fs in res.sets}
        singles = [b for b in res.settings.backbones if b in keys]
        pairs = [(f, b) for f in ("attention", "concat") if f in keys for b in singles]
        pairs += [("attention", "concat")] if {"attention", "concat"} <= keys else []
        pairs += [("concat", "random_concat")] if {"concat", "random_concat"} <= keys else []
        pairs += [("image_metadata", "metadata"), ("image_metadata", "image"),
                  ("metadata", "birads_rule"), ("image_metadata", "birads_rule")] \
            if "image_metadata" in keys else []
        if not pairs:
            continue
        t = paired_table(res, pairs, metric, n_boot)
        t.insert(0, "task", task)
        t["interval"] = [interval_position(lo, hi) for lo, hi in zip(t["lo"], t["hi"])]
        rows.append(t)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def best_classifier(tables: Mapping[str, pd.DataFrame], metric: str = "auc") -> pd.DataFrame:
    """For every task and feature set: the classifier with the highest ``metric``, and whether the
    NN's interval overlaps the best one's (the paper: "the NN classifier demonstrated the highest
    performance")."""
    rows = []
    for task, t in tables.items():
        for key, g in t.groupby("set", sort=False):
            g = g.set_index("classifier")
            best = g[metric].idxmax()
            nn = g.loc["nn"] if "nn" in g.index else None
            rows.append({"task": task, "set": key, "features": g["features"].iloc[0],
                         "best classifier": best, f"best {metric}": g.loc[best, metric],
                         f"NN {metric}": nn[metric] if nn is not None else np.nan,
                         "NN best": best == "nn",
                         "NN within best CI": (nn is not None and
                                                 nn[metric] >= g.loc[best, f"{metric}_lo"])})
    return pd.DataFrame(rows)


def confusion_figure(tables: Mapping[str, pd.DataFrame], sets: Sequence[str],
                     classifier: str = "nn", names: Mapping[str, tuple[str, str]] | None = None,
                     cell: float = 1.7):
    """Confusion matrices (summed over repeats) of ``classifier`` on each of ``sets``, one row
    per task. ``names``: task -> (negative, positive) class names."""
    import matplotlib.pyplot as plt
    tasks = list(tables)
    fig, axes = plt.subplots(len(tasks), len(sets), figsize=(cell * len(sets) + 0.5,
                                                             cell * len(tasks) + 0.3),
                             squeeze=False)
    for i, task in enumerate(tasks):
        t = tables[task]
        for j, key in enumerate(sets):
            ax = axes[i, j]
            sel = t[(t["set"] == key) & (t["classifier"] == classifier)]
            ax.set_xticks([])
            ax.set_yticks([])
            if sel.empty:
                ax.axis("off")
                continue
            r = sel.iloc[0]
            m = np.array([[r["tn"], r["fp"]], [r["fn"], r["tp"]]], dtype=float)
            ax.imshow(m / m.sum(axis=1, keepdims=True).clip(1), cmap="Blues", vmin=0, vmax=1)
            share = m / m.sum(axis=1, keepdims=True).clip(1)
            for (a, b), v in np.ndenumerate(m):
                ax.text(b, a, f"{int(v)}", ha="center", va="center", fontsize=9,
                        color="white" if share[a, b] > 0.5 else "black")
            neg, pos = (names or {}).get(task, ("neg.", "pos."))
            ax.set_xticks([0, 1], [neg, pos], fontsize=7)
            ax.set_yticks([0, 1], [neg, pos], fontsize=7)
            ax.set_title(f"{task}: {r['features']}, {classifier.upper()}", fontsize=7)
            if j == 0:
                ax.set_ylabel("true", fontsize=7)
            ax.set_xlabel("predicted", fontsize=7)
    fig.tight_layout()
    return fig


def summary_metrics(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """All tasks' tables stacked (for saving)."""
    return pd.concat([t.assign(task=k) for k, t in tables.items()], ignore_index=True)


__all__ = ["METRICS", "PAPER_MIAS_NN_ACCURACY", "PAPER_RANGES", "best_classifier",
           "confusion_figure", "fusion_claims", "gradcam_models", "gradcam_task",
           "prep_figure", "range_claims", "summary_metrics"]
