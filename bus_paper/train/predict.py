"""`bus-paper predict`: malignancy probability (and optional Grad-CAM overlay) for any images.

A checkpoint carries its preprocessing (input size, normaliser) and the threshold chosen on
validation, so nothing else is needed. Unreadable files are reported and skipped; the run goes on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.imageio import ImageReadError, read_image
from ..data.preprocess import square_resize
from .data import Normalizer
from .engine import to_model_memory_format
from .finetuning import load_deployable, predict_proba

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".webp"}


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image files (masks skipped)."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                          and "_mask" not in p.stem and p.is_file())
        else:
            out.append(item)  # a missing file is reported by the reader, not here
    return out


def predict_paths(checkpoint: str | Path, inputs: list[str | Path], heatmaps: str | Path | None = None,
                  batch_size: int = 32) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Returns (predictions, skipped) where skipped lists (file, reason) for unreadable inputs."""
    model, state = load_deployable(checkpoint)
    size, threshold = int(state["image_size"]), float(state["threshold"])
    normalizer = Normalizer(**state["normalizer"])
    from ..config import RunConfig, _build
    run = _build(RunConfig, state["run"], "run")
    model = to_model_memory_format(model, run)  # as in training, so probabilities match the run's
    paths, arrays, skipped = [], [], []
    for p in collect_images(inputs):
        try:
            arrays.append(square_resize(read_image(p), size))
            paths.append(p)
        except (ImageReadError, FileNotFoundError, OSError) as err:
            skipped.append((str(p), str(err)))
            print(f"skipped {p}: {err}", file=sys.stderr)
    if not arrays:
        return pd.DataFrame(columns=["path", "prob_malignant", "prediction", "threshold"]), skipped
    x = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
    prob = predict_proba(model, x, normalizer, run, batch_size)
    df = pd.DataFrame({"path": [str(p) for p in paths], "prob_malignant": prob,
                       "prediction": np.where(prob >= threshold, "malignant", "benign"),
                       "threshold": threshold})
    if heatmaps is not None:
        from ..explain import save_gradcam_overlays
        df["heatmap"] = save_gradcam_overlays(model, x, normalizer, paths, Path(heatmaps))
    return df, skipped
