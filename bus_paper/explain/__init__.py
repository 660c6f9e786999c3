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

    Returns (``path, label, prob`` of the run's test predictions, sorted by path; uint8 images
    ``[N, S, S]``; bool masks ``[N, S, S]``), in the same order.
    """
    from ..data.manifest import build_manifest
    from ..data.preprocess import load_images
    pred = result["predictions"]
    test = (pred[pred["split"] == "test"].sort_values("path")[["path", "label", "prob"]]
            .reset_index(drop=True))
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
def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, values.size, (n_boot, values.size))
    return values[idx].mean(axis=1)


def _per_image(scores: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Seed-mean of each image's scores (the split does not depend on the seed), scored images."""
    need = set(keys) | {"path", "energy", "hit", "mask_share"}
    if missing := need - set(scores.columns):
        raise ValueError(f"scores lack column(s) {sorted(missing)}")
    scored = scores[scores["energy"].notna() & scores["hit"].notna()]
    extra = [c for c in ("empty_cam",) if c in scored.columns]
    agg = {"energy": "mean", "hit": "mean", "mask_share": "mean", **{c: "mean" for c in extra}}
    if "seed" in scored.columns:
        agg["seed"] = "nunique"
    return scored.groupby([*keys, "path"], sort=False).agg(agg).reset_index()


def localisation_summary(scores: pd.DataFrame, by: Sequence[str] = ("dataset", "model"),
                         n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Per group: mean share of heatmap energy in the mask and pointing-game hit rate (each
    image's seed-mean, then the mean over images) with percentile-bootstrap CIs over images, in %,
    beside the chance level (mean mask share of the image). Unscored images (no mask) are left out.
    """
    by = list(by)
    img = _per_image(scores, by)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    rows = []
    for key, g in img.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        rng = np.random.default_rng(seed)
        row = dict(zip(by, key)) | {"images": len(g)}
        if "seed" in g.columns:
            row["seeds"] = int(g["seed"].max())
        for m in ("energy", "hit"):
            v = g[m].to_numpy(dtype=float)
            lo, hi = np.percentile(_boot_means(v, n_boot, rng), q)
            row |= {m: 100 * v.mean(), f"{m}_lo": 100 * lo, f"{m}_hi": 100 * hi}
        row["chance"] = 100 * g["mask_share"].mean()
        if "empty_cam" in g.columns:
            row["empty_cam"] = 100 * g["empty_cam"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def paired_localisation(scores: pd.DataFrame, a: str, b: str, by: Sequence[str] = ("dataset",),
                        model_col: str = "model", n_boot: int = 2000, seed: int = 0
                        ) -> pd.DataFrame:
    """Model ``a`` minus model ``b`` on the same images, per group and score (energy, hit): the
    difference of means in percentage points, a paired percentile-bootstrap 95% CI over images and
    a two-sided p-value (share of resamples on the other side of 0, doubled). Only images both
    models were scored on enter."""
    by = list(by)
    img = _per_image(scores[scores[model_col].isin([a, b])], [*by, model_col])
    wide = img.pivot_table(index=[*by, "path"], columns=model_col, values=["energy", "hit"])
    rows = []
    for key, g in wide.groupby(level=list(range(len(by))), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for m in ("energy", "hit"):
            pair = g[m].reindex(columns=[a, b]).dropna()
            if pair.empty:
                continue
            d = (pair[a] - pair[b]).to_numpy(dtype=float)
            boots = _boot_means(d, n_boot, np.random.default_rng(seed))
            lo, hi = np.percentile(boots, [2.5, 97.5])
            p = min(1.0, 2 * min((boots <= 0).mean(), (boots >= 0).mean()))
            rows.append(dict(zip(by, key)) | {
                "score": m, "images": len(d), a: 100 * pair[a].mean(), b: 100 * pair[b].mean(),
                "diff": 100 * d.mean(), "lo": 100 * lo, "hi": 100 * hi, "p": float(p)})
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
