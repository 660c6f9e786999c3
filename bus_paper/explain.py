"""Heatmaps (Grad-CAM via the grad-cam package) and numbers for how well they fall on the lesion.

grad-cam 1.5: no ``use_cuda`` argument, use it as a context manager, and never under
``torch.no_grad`` (it needs gradients of the target layer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def gradcam(model: torch.nn.Module, x: torch.Tensor, target_class: int = 1,
            target_layers: list[torch.nn.Module] | None = None) -> np.ndarray:
    """Grad-CAM maps in [0, 1], shape [B, H, W] at the input size, for class ``target_class``."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    layers = target_layers or model.gradcam_target_layers()
    # transformer baselines give tokens, not maps: they say how to fold them back into a grid
    reshape = getattr(model, "gradcam_reshape_transform", lambda: None)()
    model.eval()
    with torch.enable_grad(), GradCAM(model=model, target_layers=layers,
                                      reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x.float(), targets=[ClassifierOutputTarget(target_class)] * len(x))
    return np.asarray(maps, dtype=np.float32)


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total energy that lies inside the lesion mask (1 = all of it)."""
    total = float(cam.sum())
    return float(cam[mask.astype(bool)].sum() / total) if total > 0 else float("nan")


def pointing_game(cam: np.ndarray, mask: np.ndarray) -> bool:
    """Hit if the heatmap's maximum falls inside the lesion mask."""
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(mask.astype(bool)[r, c])


def overlay(gray_u8: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image: the grayscale input with the heatmap (jet) blended on top."""
    from pytorch_grad_cam.utils.image import show_cam_on_image
    rgb = np.repeat(gray_u8[..., None], 3, axis=2).astype(np.float32) / 255.0
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=1 - alpha)


def save_gradcam_overlays(model: torch.nn.Module, x_u8: torch.Tensor, normalizer, paths: list[Path],
                          out_dir: Path, batch_size: int = 16) -> list[str]:
    """Write one PNG overlay per image to ``out_dir``; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(0, len(x_u8), batch_size):
        chunk = x_u8[i:i + batch_size]
        maps = gradcam(model, normalizer(chunk.float() / 255.0))
        for j, cam in enumerate(maps):
            src = Path(paths[i + j])
            dest = out_dir / f"{i + j:05d}_{src.stem}_gradcam.png"  # index: same stems never clash
            Image.fromarray(overlay(chunk[j, 0].numpy(), cam)).save(dest)
            written.append(str(dest))
    return written
