"""Pixel explanations beside Grad-CAM: gradient saliency, SmoothGrad and SHAP, and their scores.

Every method explains one logit per image (the class in ``targets``; the classifier's raw score,
before softmax, as in Simonyan et al. and Grad-CAM) of a model in eval mode, in fp32, on z-scored
inputs ``[B, 1, S, S]``, and gives a map ``[B, S, S]`` at the input's resolution:

- :func:`saliency`: ``|d logit / d x|`` (Simonyan, Vedaldi & Zisserman, 2014), max over channels
  (one here).
- :func:`smoothgrad`: the mean of that map over ``n`` copies of the input with Gaussian noise of
  standard deviation ``noise`` x (max - min) of the image (Smilkov et al., 2017; their 10-20 %),
  which averages away the speckle-scale noise of raw gradients. The absolute value is taken per
  copy, before averaging (as captum's NoiseTunnel over Saliency does).
- :func:`shap_values`: SHAP values from the ``shap`` package's ``GradientExplainer`` (expected
  gradients: integrated gradients from background images drawn at random from ``background``,
  averaged over ``nsamples`` draws; Lundberg & Lee 2017, Erion et al. 2021). Signed: positive
  pixels raise the explained logit above its average over the background, negative ones lower
  it; they add up, in expectation, to ``logit(x) - E[logit(background)]``.

:func:`explanation_maps` runs all of them (and Grad-CAM, :func:`bus_paper.explain.heatmaps`) on
uint8 images with the training normaliser and returns non-negative maps to score: Grad-CAM as it
is (already ReLU'd), the two gradient maps as they are (absolute values), and SHAP's *positive*
part (the evidence *for* the explained class, like Grad-CAM's ReLU). Every score of
:func:`bus_paper.explain.localisation_scores` applies unchanged: the share of a map's total inside
the lesion mask (:func:`mask_share`) and the pointing game, against the chance level of a uniform
map (the lesion's share of the image). The share is scale-free, so maps of different methods
(and units) compare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..metrics import interval_position

METHODS = ("Grad-CAM", "saliency", "SmoothGrad", "SHAP")


def _classes(targets: int | Sequence[int], n: int) -> torch.Tensor:
    t = (torch.full((n,), int(targets), dtype=torch.long) if np.isscalar(targets)
         else torch.tensor(np.array(targets, dtype=np.int64)))
    if t.shape != (n,):
        raise ValueError(f"{t.numel()} target classes for {n} images")
    return t


def class_gradients(model: nn.Module, x: torch.Tensor, targets: int | Sequence[int]
                    ) -> torch.Tensor:
    """``d logit[target_i](x_i) / d x_i`` for every image of the batch, ``[B, C, H, W]`` (fp32).

    Images do not interact in eval mode, so one backward pass of the summed target logits gives
    every image's own gradient."""
    model.eval()
    cls = _classes(targets, len(x)).to(x.device)
    with torch.enable_grad():
        xg = x.detach().float().clone().requires_grad_(True)
        logits = model(xg)
        if logits.ndim != 2 or (len(cls) and int(cls.max()) >= logits.shape[1]) or (cls < 0).any():
            raise ValueError(f"model gives logits {list(logits.shape)}; targets {cls.tolist()}")
        (grad,) = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), xg)
    return grad


def saliency(model: nn.Module, x: torch.Tensor, targets: int | Sequence[int] = 1) -> np.ndarray:
    """Gradient saliency ``max_c |d logit / d x|``, float32 ``[B, H, W]``."""
    return class_gradients(model, x, targets).abs().amax(dim=1).cpu().numpy().astype(np.float32)


def smoothgrad(model: nn.Module, x: torch.Tensor, targets: int | Sequence[int] = 1,
               n: int = 16, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """SmoothGrad: mean of :func:`saliency` over ``n`` noisy copies, float32 ``[B, H, W]``.

    The noise of each image has standard deviation ``noise`` times its value range; the draws are
    seeded (``seed``), so the maps are reproducible."""
    if n < 1 or noise < 0:
        raise ValueError(f"need n >= 1 and noise >= 0, got n={n}, noise={noise}")
    x = x.detach().float()
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    total = torch.zeros(x.shape[0], *x.shape[2:], device=x.device)
    for _ in range(n):
        eps = torch.randn(x.shape, generator=gen).to(x.device) * (noise * span)
        total += class_gradients(model, x + eps, targets).abs().amax(dim=1)
    return (total / n).cpu().numpy().astype(np.float32)


class TargetLogit(nn.Module):
    """``model`` reduced to one output, the logit of class ``target``, ``[B, 1]`` (what SHAP
    explains: one output, so one gradient pass per sample)."""

    def __init__(self, model: nn.Module, target: int) -> None:
        super().__init__()
        self.model, self.target = model, int(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.target:self.target + 1]


def shap_values(model: nn.Module, x: torch.Tensor, targets: int | Sequence[int],
                background: torch.Tensor, nsamples: int = 32, seed: int = 0,
                batch_size: int = 32) -> np.ndarray:
    """SHAP values (``shap.GradientExplainer``) of each image's target logit, float32
    ``[B, H, W]`` (summed over channels), signed. ``background``: z-scored images ``[K, C, H,
    W]`` the expectation is taken over (training images); ``nsamples`` draws per image.

    The images of each target class go through one explainer of :class:`TargetLogit`; the random
    draws are seeded (and numpy's global random state, which shap reseeds, is restored)."""
    import warnings
    with warnings.catch_warnings():   # shap's import warns about matplotlib colormap methods
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap
    model.eval()
    x = x.detach().float()
    cls = _classes(targets, len(x)).numpy()
    out = np.zeros((len(x), *x.shape[2:]), dtype=np.float32)
    state = np.random.get_state()
    try:
        for c in np.unique(cls):
            idx = np.flatnonzero(cls == c)
            explainer = shap.GradientExplainer(TargetLogit(model, int(c)),
                                               background.detach().float().to(x.device),
                                               batch_size=batch_size)
            vals = explainer.shap_values(x[idx], nsamples=nsamples, rseed=int(seed))
            vals = np.asarray(vals[0] if isinstance(vals, list) else vals)
            if vals.ndim == x.ndim + 1:   # [n, C, H, W, outputs=1]
                vals = vals[..., 0]
            out[idx] = vals.sum(axis=1)
    finally:
        np.random.set_state(state)
    return out


# ----------------------------------------------------------------------------- all methods
def explanation_maps(model: nn.Module, images_u8: np.ndarray | torch.Tensor, normalizer,
                     targets: int | Sequence[int], background_u8: np.ndarray | torch.Tensor,
                     methods: Sequence[str] = METHODS, smoothgrad_n: int = 16,
                     smoothgrad_noise: float = 0.15, shap_nsamples: int = 32, seed: int = 0,
                     batch_size: int = 16) -> dict[str, np.ndarray]:
    """Non-negative maps ``{method: float32 [N, S, S]}`` of uint8 images ``[N, S, S]`` (or
    ``[N, 1, S, S]``), z-scored by ``normalizer`` as in training, for the class ``targets`` (one
    for all images or one per image): Grad-CAM, saliency, SmoothGrad and the positive part of
    SHAP (see the module docstring). ``background_u8``: the training images SHAP integrates from.
    Batched, in fp32, on the model's device."""
    from . import heatmaps
    if unknown := [m for m in methods if m not in METHODS]:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    x_u8 = _as_u8(images_u8)
    n = len(x_u8)
    cls = _classes(targets, n).numpy()
    device = next(model.parameters()).device
    model.eval()
    out: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    if "Grad-CAM" in methods:
        out["Grad-CAM"] = [heatmaps(model, x_u8, normalizer, cls, batch_size).cams]
    bg = None
    if "SHAP" in methods:
        bg = normalizer(_as_u8(background_u8).to(device).float() / 255.0)
    for i in range(0, n, batch_size):
        x = normalizer(x_u8[i:i + batch_size].to(device).float() / 255.0)
        t = cls[i:i + batch_size]
        if "saliency" in methods:
            out["saliency"].append(saliency(model, x, t))
        if "SmoothGrad" in methods:
            out["SmoothGrad"].append(smoothgrad(model, x, t, smoothgrad_n, smoothgrad_noise,
                                                seed + i))
        if "SHAP" in methods:
            out["SHAP"].append(np.maximum(shap_values(model, x, t, bg, shap_nsamples,
                                                      seed + i), 0))
    return {m: np.concatenate(v).astype(np.float32) for m, v in out.items()}


def _as_u8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {x.dtype}")
    return x.unsqueeze(1) if x.ndim == 3 else x


# ----------------------------------------------------------------------------- scores, display
def mask_share(explanation: np.ndarray, mask: np.ndarray) -> float:
    """Share of a non-negative map's total inside the mask (1: all of it; NaN: an all-zero map);
    what :func:`bus_paper.explain.energy_in_mask` computes, checked to be non-negative."""
    from . import energy_in_mask
    explanation = np.asarray(explanation, dtype=np.float64)
    if (explanation < 0).any():
        raise ValueError("the share inside the mask needs a non-negative map (take |.| or the "
                         "positive part first)")
    return energy_in_mask(explanation, mask)


def method_scores(maps: Mapping[str, np.ndarray], masks: np.ndarray,
                  meta: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per method and image: :func:`bus_paper.explain.localisation_scores` (``energy`` = share
    inside the mask, ``hit`` = pointing game, ``mask_share`` = chance level) with a ``method``
    column, and the columns of ``meta`` (one row per image, e.g. path and label) in front."""
    from . import localisation_scores
    frames = []
    for method, m in maps.items():
        if (np.asarray(m) < 0).any():
            raise ValueError(f"{method}: maps must be non-negative")
        s = localisation_scores(m, masks)
        if meta is not None:
            if len(meta) != len(s):
                raise ValueError(f"{len(meta)} rows of meta for {len(s)} images")
            s = pd.concat([meta.reset_index(drop=True), s], axis=1)
        frames.append(s.assign(method=method))
    return pd.concat(frames, ignore_index=True)


def for_display(maps: np.ndarray, q: float = 99.0) -> np.ndarray:
    """Each map scaled to [0, 1] by its own ``q``-th percentile (clipped above), for overlays:
    a few extreme gradient pixels would otherwise leave the rest of the map dark. All-zero maps
    stay zero."""
    maps = np.asarray(maps, dtype=np.float32)
    top = np.percentile(maps.reshape(len(maps), -1), q, axis=1).reshape(-1, 1, 1)
    top = np.where(top > 0, top, maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1))
    return np.clip(np.divide(maps, top, out=np.zeros_like(maps), where=top > 0), 0, 1)


def summary_text(summary: pd.DataFrame, methods: Sequence[str] = METHODS) -> list[str]:
    """Sentences on a :func:`bus_paper.explain.localisation_summary` by (dataset, method): per
    data set, the methods ordered by their share inside the mask, each against chance."""
    lines: list[str] = []
    for d, t in summary.groupby("dataset", sort=False):
        t = t.set_index("method").reindex([m for m in methods if m in set(t["method"])])
        parts = []
        for m, r in t.sort_values("energy", ascending=False).iterrows():
            rel = interval_position(r["energy_lo"], r["energy_hi"], r["chance"], "chance")
            parts.append(f"{m} {r['energy']:.1f}% (95% CI {r['energy_lo']:.1f}–"
                         f"{r['energy_hi']:.1f}; interval {rel})")
        lines.append(f"- **{str(d).upper()}** ({int(t['images'].iloc[0])} images, lesion "
                     f"{t['chance'].iloc[0]:.1f}% of the image): " + "; ".join(parts) + ".")
    return lines
