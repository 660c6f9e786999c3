"""Heatmaps (Grad-CAM via the grad-cam package) and numbers for how well they fall on the lesion.

grad-cam 1.5: no ``use_cuda`` argument, use it as a context manager, and never under
``torch.no_grad`` (it needs gradients of the target layer).

Grad-CAM (Selvaraju et al., ICCV 2017) weights the channels of the target layer's map by their
pooled gradients, sums them, applies a ReLU, min-max scales each map to [0, 1] *on its own grid*
and only then upsamples it (bilinear) to the input size. The grid is the model's: stride 8 for the
proposed model (its fused map), stride 32 for a ResNet-50; :attr:`Heatmaps.map_size` says which.

Localisation numbers, per image (:func:`localisation_scores`), against the lesion mask padded and
resized exactly like the image (:func:`load_test_with_masks`):

- *energy in mask*: share of the heatmap's total value inside the mask; a uniform map scores the
  mask's share of the image (``mask_share``, the chance level);
- *pointing game* (Zhang et al., IJCV 2018): 1 if the heatmap's maximum lies in the mask,
  0 if not (ties: the share of the tied maxima inside it, i.e. the expected hit of a random tie
  break); a random point scores ``mask_share`` on average.

An image without a lesion mask gets NaN (not scored); an all-zero heatmap (the ReLU removed
everything) points nowhere and scores 0 on both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

CAM_TARGETS = ("label", "malignant", "predicted")  # which class each image's heatmap explains


def gradcam(model: torch.nn.Module, x: torch.Tensor, target_class: int | Sequence[int] = 1,
            target_layers: list[torch.nn.Module] | None = None
            ) -> tuple[np.ndarray, torch.Tensor, tuple[int, int]]:
    """Grad-CAM of a z-scored batch for class ``target_class`` (one for all images, or one per
    image): (maps in [0, 1], [B, H, W] at the input size; logits of the same forward pass; the
    target layer's grid size before upsampling). :func:`heatmaps` batches it over uint8 images."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    layers = target_layers or model.gradcam_target_layers()
    # transformer baselines give tokens, not maps: they say how to fold them back into a grid
    reshape = getattr(model, "gradcam_reshape_transform", lambda: None)()
    classes = ([int(target_class)] * len(x) if np.isscalar(target_class)
               else [int(c) for c in target_class])
    if len(classes) != len(x):
        raise ValueError(f"{len(classes)} target classes for {len(x)} images")
    model.eval()
    with torch.enable_grad(), GradCAM(model=model, target_layers=layers,
                                      reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x.float(), targets=[ClassifierOutputTarget(c) for c in classes])
        logits = cam.outputs.detach().float().cpu()
        grid = tuple(int(v) for v in cam.activations_and_grads.activations[0].shape[-2:])
    return np.asarray(maps, dtype=np.float32), logits, grid


@dataclass(frozen=True)
class Heatmaps:
    """Grad-CAM maps of a set of images, and what they were made of."""
    cams: np.ndarray            # float32 [N, S, S] in [0, 1], at the input size
    prob: np.ndarray            # P(malignant) from the same (fp32) forward pass, [N]
    targets: np.ndarray         # the class each map explains (0 benign, 1 malignant), [N]
    map_size: tuple[int, int]   # the target layer's grid before upsampling, (h, w)

    @property
    def stride(self) -> float:
        """Input pixels per grid cell (8 for the proposed model, 32 for a ResNet-50)."""
        return self.cams.shape[-1] / self.map_size[1]


def heatmaps(model: torch.nn.Module, images_u8: np.ndarray | torch.Tensor, normalizer,
             targets: int | Sequence[int] = 1, batch_size: int = 16) -> Heatmaps:
    """Grad-CAM of uint8 images ``[N, S, S]`` (or ``[N, 1, S, S]``), z-scored by ``normalizer``
    as in training, in batches, in fp32 on the model's device; ``targets``: one class for all
    images or one per image."""
    x_u8 = torch.as_tensor(np.asarray(images_u8))
    if x_u8.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {x_u8.dtype}")
    if x_u8.ndim == 3:
        x_u8 = x_u8.unsqueeze(1)
    n = len(x_u8)
    classes = np.full(n, int(targets)) if np.isscalar(targets) else np.asarray(targets, dtype=int)
    if classes.shape != (n,):
        raise ValueError(f"{classes.size} target classes for {n} images")
    device = next(model.parameters()).device
    cams, probs, grid = [], [], None
    for i in range(0, n, batch_size):
        x = normalizer(x_u8[i:i + batch_size].to(device).float() / 255.0)
        maps, logits, grid = gradcam(model, x, classes[i:i + batch_size].tolist())
        cams.append(maps)
        probs.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    if grid is None:
        raise ValueError("no images")
    return Heatmaps(np.concatenate(cams), np.concatenate(probs).astype(np.float32), classes, grid)


def cam_targets(kind: str, labels: Sequence[int], prob: Sequence[float] | None = None,
                threshold: float | None = None) -> np.ndarray:
    """The class each image's heatmap explains: its true ``label`` (as in the pointing game), the
    ``malignant`` class for all, or the class ``predicted`` at ``threshold``."""
    labels = np.asarray(labels, dtype=int)
    if kind == "label":
        return labels
    if kind == "malignant":
        return np.ones_like(labels)
    if kind == "predicted":
        if prob is None or threshold is None:
            raise ValueError("'predicted' needs the probabilities and the threshold")
        return (np.asarray(prob, dtype=float) >= threshold).astype(int)
    raise ValueError(f"unknown heatmap target {kind!r}; choose one of {', '.join(CAM_TARGETS)}")


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total energy that lies inside the lesion mask (1 = all of it)."""
    total = float(cam.sum())
    return float(cam[mask.astype(bool)].sum() / total) if total > 0 else float("nan")


def pointing_hit(cam: np.ndarray, mask: np.ndarray, rtol: float = 1e-6) -> float:
    """Pointing game with ties: the share of the heatmap's maximal pixels that lie in the mask.

    1 or 0 for a unique maximum. An upsampled coarse map has plateaus (a ResNet-50's 3x3 grid
    gives flat corner blocks), where the first maximum (``argmax``) would always pick the top-left
    one; this is the expected hit of a random tie break instead. 0 for an all-zero map.
    """
    cam = np.asarray(cam, dtype=np.float64)
    top = cam.max()
    if not top > 0:
        return 0.0
    peak = cam >= top * (1 - rtol)
    return float(mask.astype(bool)[peak].mean())


def localisation_scores(cams: np.ndarray, masks: np.ndarray) -> pd.DataFrame:
    """Per image: ``energy`` (share of the heatmap inside the mask), ``hit`` (:func:`pointing_hit`),
    ``mask_share`` (share of the image the mask covers: both scores' chance level), ``has_mask``
    and ``empty_cam``. NaN scores for an image without a mask; 0 for an all-zero heatmap."""
    cams, masks = np.asarray(cams), np.asarray(masks).astype(bool)
    if cams.shape != masks.shape or cams.ndim != 3:
        raise ValueError(f"need heatmaps and masks of the same shape [N, H, W], got {cams.shape} "
                         f"and {masks.shape}")
    rows = []
    for cam, mask in zip(cams, masks):
        has, empty = bool(mask.any()), not float(cam.max(initial=0.0)) > 0
        rows.append({"energy": (0.0 if empty else energy_in_mask(cam, mask)) if has else np.nan,
                     "hit": pointing_hit(cam, mask) if has else np.nan,
                     "mask_share": float(mask.mean()), "has_mask": has, "empty_cam": empty})
    return pd.DataFrame(rows, columns=["energy", "hit", "mask_share", "has_mask", "empty_cam"])


def overlay(gray_u8: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image: the grayscale input with the heatmap (jet) blended on top."""
    from pytorch_grad_cam.utils.image import show_cam_on_image
    rgb = np.repeat(gray_u8[..., None], 3, axis=2).astype(np.float32) / 255.0
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=1 - alpha)


# ----------------------------------------------------------------------------- test images + masks
def load_test_with_masks(result: Mapping[str, Any], root: str | Path, image_size: int
                         ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The test images of a fine-tuning ``result`` with their lesion masks, preprocessed as in
    training (padded to a square, resized; nearest for the masks, the union of an image's masks).

    Returns (``path, label, prob`` of the run's test predictions, sorted by path, and ``cluster``
    where the predictions record it: the two-level intervals resample it; uint8 images
    ``[N, S, S]``; bool masks ``[N, S, S]``), in the same order.
    """
    from ..data.manifest import build_manifest
    from ..data.preprocess import load_images
    pred = result["predictions"]
    cols = ["path", "label", "prob", *(["cluster"] if "cluster" in pred.columns else [])]
    test = pred[pred["split"] == "test"].sort_values("path")[cols].reset_index(drop=True)
    if test.empty:
        raise ValueError(f"run {result.get('run_dir', '?')} has no test predictions")
    frame = build_manifest(root, [result["dataset"]]).frame.set_index("path")
    if missing := sorted(set(test["path"]) - set(frame.index)):
        raise ValueError(f"{len(missing)} test image(s) are not in the manifest, e.g. {missing[0]}")
    rows = frame.loc[test["path"]].reset_index()
    loaded = load_images(rows, root, int(image_size), with_masks=True)
    assert loaded.masks is not None and loaded.paths == list(test["path"])
    return test, loaded.images, loaded.masks


def pick_examples(labels: Sequence[int], masks: np.ndarray, n_per_class: int = 2) -> list[int]:
    """Positions of the first ``n_per_class`` images of each class (benign first) that have a
    lesion mask, in the given order (the caller sorts by path): chosen by rule, not by looks."""
    labels = np.asarray(labels, dtype=int)
    has = np.asarray(masks).reshape(len(labels), -1).any(axis=1)
    out: list[int] = []
    for c in (0, 1):
        out += [int(i) for i in np.flatnonzero((labels == c) & has)[:n_per_class]]
    return out


# ----------------------------------------------------------------------------- summaries
def _scored(scores: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The scored rows (an image without a mask has NaN scores), with the columns checked."""
    need = set(keys) | {"path", "energy", "hit", "mask_share"}
    if missing := need - set(scores.columns):
        raise ValueError(f"scores lack column(s) {sorted(missing)}")
    return scores[scores["energy"].notna() & scores["hit"].notna()]


def _runs_by_image(g: pd.DataFrame, paths: Sequence[str], score: str) -> np.ndarray:
    """[runs, images] of one score: a row per fine-tuning seed (one row without a seed column),
    a column per image in ``paths``; NaN where a run did not score the image."""
    run = g["seed"] if "seed" in g.columns else pd.Series(0, index=g.index)
    wide = g.assign(_run=run).pivot_table(index="_run", columns="path", values=score,
                                          aggfunc="mean", dropna=False)
    return wide.reindex(columns=list(paths)).to_numpy(dtype=float)


def _clusters(g: pd.DataFrame, paths: Sequence[str]) -> np.ndarray | None:
    """Each image's cluster (patient, lesion or duplicate group: the ``cluster`` column of the run's
    predictions), in ``paths``' order; None when the scores do not carry it (every image is then
    its own cluster)."""
    if "cluster" not in g.columns or g["cluster"].isna().any():
        return None
    ids = g.groupby("path", sort=False)["cluster"].agg(lambda c: c.astype(str).unique().tolist())
    if (ids.str.len() > 1).any():
        raise ValueError("the runs disagree on an image's cluster")
    return ids.reindex(list(paths)).str[0].to_numpy()


def localisation_summary(scores: pd.DataFrame, by: Sequence[str] = ("dataset", "model"),
                         n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Per group: mean share of heatmap energy in the mask and pointing-game hit rate (mean over
    seeds of the mean over images), in %, beside the chance level (mean mask share of the image).
    The intervals are two-level (:func:`bus_paper.core.stats.two_level_bootstrap`): each replicate
    draws the seeds, then clusters of test images (a ``cluster`` column of ``scores``; without it
    every image is its own). Unscored images (no mask) are left out.
    """
    from ..core.stats import mean_points, two_level_bootstrap
    by = list(by)
    scored = _scored(scores, by)
    rows = []
    for key, g in scored.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        paths = list(dict.fromkeys(g["path"]))
        clusters = _clusters(g, paths)
        row = dict(zip(by, key)) | {"images": len(paths)}
        for m in ("energy", "hit"):
            v = _runs_by_image(g, paths, m)
            ci = two_level_bootstrap(np.zeros(len(paths)), v, clusters=clusters,
                                     statistic=mean_points, n_boot=n_boot, seed=seed, alpha=alpha)
            row |= {m: ci.estimate, f"{m}_lo": ci.lo, f"{m}_hi": ci.hi}
        row |= {"seeds": int(ci.n_runs), "clusters": int(ci.n_clusters)}
        img = g.groupby("path", sort=False)
        row["chance"] = 100 * img["mask_share"].mean().mean()
        if "empty_cam" in g.columns:
            row["empty_cam"] = 100 * img["empty_cam"].mean().mean()
        rows.append(row)
    return pd.DataFrame(rows)


def paired_localisation(scores: pd.DataFrame, a: str, b: str, by: Sequence[str] = ("dataset",),
                        model_col: str = "model", n_boot: int = 2000, seed: int = 0,
                        paired_runs: bool = False) -> pd.DataFrame:
    """Model ``a`` minus model ``b`` on the same images, per group and score (energy, hit): the
    difference of means in percentage points, with a paired two-level 95% interval (the seeds of
    each side drawn independently, or by one draw when ``paired_runs``: two explanation methods of
    the same seeds' models; the clusters of images once for both) and a two-sided bootstrap p.
    Only images both were scored on enter."""
    from ..core.stats import mean_points, two_level_bootstrap
    by = list(by)
    scored = _scored(scores[scores[model_col].isin([a, b])], [*by, model_col])
    rows = []
    for key, g in scored.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        ga, gb = g[g[model_col] == a], g[g[model_col] == b]
        paths = [p for p in dict.fromkeys(ga["path"]) if p in set(gb["path"])]
        if not paths:
            continue
        clusters = _clusters(g, paths)
        for m in ("energy", "hit"):
            va, vb = _runs_by_image(ga, paths, m), _runs_by_image(gb, paths, m)
            if paired_runs and "seed" in g.columns and set(ga["seed"]) != set(gb["seed"]):
                raise ValueError(f"paired runs need the same seeds for {a} and {b}")
            d = two_level_bootstrap(np.zeros(len(paths)), va, vb, clusters, statistic=mean_points,
                                    n_boot=n_boot, seed=seed, paired_runs=paired_runs)
            mean = {k: float(np.nanmean(np.nanmean(v, axis=0))) for k, v in ((a, va), (b, vb))}
            rows.append(dict(zip(by, key)) | {
                "score": m, "images": len(paths), "clusters": d.n_clusters,
                a: 100 * mean[a], b: 100 * mean[b], "diff": d.estimate, "lo": d.lo, "hi": d.hi,
                "p": d.p})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figure
def plot_heatmap_grid(images_u8: np.ndarray, masks: np.ndarray, cams: Mapping[str, np.ndarray],
                      row_titles: Sequence[str], cell_titles: Mapping[str, Sequence[str]] | None = None,
                      alpha: float = 0.45, cell_inches: float = 2.1, outline: str = "lime"):
    """A grid: one row per image; the first column the image with the lesion mask's outline, then
    one column per entry of ``cams`` (name -> maps ``[N, S, S]``) with the heatmap blended on top
    and the same outline. ``cell_titles`` (name -> one title per row) go above the overlays."""
    import matplotlib.pyplot as plt
    n = len(images_u8)
    if not (len(masks) == len(row_titles) == n and all(len(c) == n for c in cams.values())):
        raise ValueError("images, masks, row titles and every set of heatmaps need one entry per row")
    cols = ["image + lesion outline", *cams]
    fig, axes = plt.subplots(n, len(cols), figsize=(cell_inches * len(cols), cell_inches * n + 0.3),
                             squeeze=False)
    for i in range(n):
        for j, name in enumerate(cols):
            ax = axes[i, j]
            if j == 0:
                ax.imshow(images_u8[i], cmap="gray", vmin=0, vmax=255)
                ax.set_title(row_titles[i], fontsize=8)
            else:
                ax.imshow(overlay(np.asarray(images_u8[i], dtype=np.uint8), cams[name][i], alpha))
                title = cell_titles[name][i] if cell_titles and name in cell_titles else name
                ax.set_title(title, fontsize=8)
            if masks[i].any():
                ax.contour(masks[i].astype(float), levels=[0.5], colors=outline, linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig
