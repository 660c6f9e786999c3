"""`bus-paper predict`: malignancy probability (and optional Grad-CAM overlay) for any images.

A checkpoint carries its preprocessing (input size, normaliser) and the threshold chosen on
validation, so nothing else is needed. Every input file is either predicted or listed as skipped
with its reason (unreadable, lesion mask, DICOM, not a regular file, ...); the run goes on.
Images far from what the models were trained on (tiny, huge, uniform, extreme aspect ratio) are
predicted but flagged.
"""

from __future__ import annotations

import os
import re
import stat
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
DICOM_SUFFIXES = {".dcm", ".dicom"}
# the datasets' mask names: BUSI `<image>_mask.png`, `<image>_mask_1.png`; BUS-BRA `mask_0001-l.png`
MASK_STEM = re.compile(r"(_mask(_\d+)?$)|(^mask_\d+-[lrs]$)", re.IGNORECASE)
# outside this the model has seen nothing alike (the datasets' images are ~200-1500 px a side)
MIN_SIDE, MAX_SIDE, MAX_ASPECT, MIN_STD = 32, 4096, 4.0, 1.0

Skipped = list[tuple[str, str]]  # (file, reason)


def _file_reason(p: Path, st: os.stat_result) -> str | None:
    """Why a file found (or given) cannot be predicted, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"  # a FIFO would block the reader forever
    if p.suffix.lower() in DICOM_SUFFIXES:
        return "DICOM not supported yet (convert to PNG)"
    return None


def _walk(folder: Path, files: list[Path], skipped: Skipped, seen: set[str]) -> int:
    """Image files under ``folder`` (symlinks followed, loops cut) into ``files``; every file
    that is not predicted into ``skipped``. Returns how many non-image files were ignored."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        skipped.append((str(folder), f"unreadable folder ({err.strerror or err})"))
        return 0
    ignored = 0
    for entry in entries:
        p = Path(entry.path)
        try:
            st = p.stat()  # follows symlinks: a loop or dangling link raises here
        except OSError as err:
            skipped.append((str(p), f"cannot open ({err.strerror or err})"))
            continue
        if stat.S_ISDIR(st.st_mode):
            real = os.path.realpath(p)
            if real in seen:
                skipped.append((str(p), "folder already searched (symlink loop or second link)"))
            else:
                seen.add(real)
                ignored += _walk(p, files, skipped, seen)
            continue
        suffix = p.suffix.lower()
        if suffix not in IMAGE_SUFFIXES and suffix not in DICOM_SUFFIXES:
            ignored += 1
        elif suffix in IMAGE_SUFFIXES and MASK_STEM.search(p.stem):
            skipped.append((str(p), "lesion mask"))
        elif reason := _file_reason(p, st):
            skipped.append((str(p), reason))
        else:
            files.append(p)
    return ignored


def collect_images(inputs: list[str | Path]) -> tuple[list[Path], Skipped, int]:
    """(files to predict, skipped (file, reason), number of non-image files ignored).

    Files given by name are all tried (a mask too: it was asked for); folders are searched
    recursively for image files, skipping the datasets' lesion masks."""
    files: list[Path] = []
    skipped: Skipped = []
    ignored = 0
    for item in map(Path, inputs):
        try:
            st = item.stat()
        except OSError as err:
            skipped.append((str(item), f"cannot open ({err.strerror or err})"))
            continue
        if stat.S_ISDIR(st.st_mode):
            ignored += _walk(item, files, skipped, {os.path.realpath(item)})
        elif reason := _file_reason(item, st):
            skipped.append((str(item), reason))
        else:
            files.append(item)
    return files, skipped, ignored


def image_flags(img: np.ndarray) -> str:
    """Why an image is far outside the training range ("" if it is not)."""
    h, w = img.shape
    flags = []
    if min(h, w) < MIN_SIDE:
        flags.append(f"tiny ({w}x{h} px)")
    if max(h, w) > MAX_SIDE:
        flags.append(f"very large ({w}x{h} px)")
    if max(h, w) / max(1, min(h, w)) > MAX_ASPECT:
        flags.append(f"extreme aspect ratio ({w}x{h} px)")
    if float(img.std()) < MIN_STD:
        flags.append(f"nearly uniform intensity (std {img.std():.2f} grey levels)")
    return "; ".join(flags)


def describe_model(path: str | Path, state: dict) -> str:
    """One line: which model, which recipe, which threshold."""
    recipe = state.get("recipe")
    what = (recipe["summary"] if recipe else
            f"{state.get('profile', '?')} {state.get('dataset', '?')}, recipe not recorded")
    return f"model: {path} ({what}); threshold {float(state['threshold']):.3f}"


def predict_paths(checkpoint: str | Path, inputs: list[str | Path], heatmaps: str | Path | None = None,
                  batch_size: int = 32) -> tuple[pd.DataFrame, Skipped]:
    """Returns (predictions, skipped) where skipped lists (file, reason) for every input file
    that was not predicted. Raises ``ModelFileError`` for a file that is not a usable model."""
    model, state = load_deployable(checkpoint)
    print(describe_model(checkpoint, state), file=sys.stderr)
    size, threshold = int(state["image_size"]), float(state["threshold"])
    normalizer = Normalizer(**state["normalizer"])
    from ..config import RunConfig, _build
    run = _build(RunConfig, state["run"], "run")
    model = to_model_memory_format(model, run)  # as in training, so probabilities match the run's
    files, skipped, ignored = collect_images(inputs)
    if ignored:
        print(f"{ignored} non-image file(s) in the folders ignored", file=sys.stderr)
    paths, arrays, flags = [], [], []
    for p in files:
        try:
            img = read_image(p)
        except (ImageReadError, OSError) as err:
            skipped.append((str(p), getattr(err, "reason", None) or str(err)))
            continue
        flags.append(image_flags(img))
        arrays.append(square_resize(img, size))
        paths.append(p)
    for p, reason in skipped:
        print(f"skipped {p}: {reason}", file=sys.stderr)
    columns = ["path", "prob_malignant", "prediction", "threshold", "flag"]
    if not arrays:
        return pd.DataFrame(columns=columns), skipped
    x = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
    prob = predict_proba(model, x, normalizer, run, batch_size)
    df = pd.DataFrame({"path": [str(p) for p in paths], "prob_malignant": prob,
                       "prediction": np.where(prob >= threshold, "malignant", "benign"),
                       "threshold": threshold, "flag": flags})
    if heatmaps is not None:
        from ..explain import save_gradcam_overlays
        df["heatmap"] = save_gradcam_overlays(model, x, normalizer, paths, Path(heatmaps))
    return df, skipped
