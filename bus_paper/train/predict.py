"""`bus-paper predict`: malignancy probability (and optional Grad-CAM gallery) for any images.

A checkpoint carries its preprocessing (input size, normaliser) and the threshold chosen on
validation, so nothing else is needed. PNG, JPEG, BMP, TIFF (8/16-bit, float), GIF, PGM, WebP and
DICOM are read (:mod:`bus_paper.data.imageio_any`: any bit depth to 8 bits, colour to gray; in a
folder, DICOM files are also found by content, as PACS exports often have no suffix). Every input
file is either predicted or listed as skipped with its reason (unreadable, lesion mask, several
frames, compressed DICOM without a decoder, not a regular file, ...); the run goes on.
Images far from what the models were trained on (tiny, huge, uniform, extreme aspect ratio, mean
intensity or contrast unlike the training images' as recorded in the checkpoint's normaliser,
colour) are predicted but flagged.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.imageio import ImageReadError
from ..data.imageio_any import DICOM_SUFFIXES, is_dicom, read_any
from ..data.preprocess import Normalizer, square_resize
from .engine import to_model_memory_format
from .finetuning import load_deployable, predict_proba
from .gallery import panel_side, write_gallery

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".webp"}
# the datasets' mask names: BUSI `<image>_mask.png`, `<image>_mask_1.png`; BUS-BRA `mask_0001-l.png`
MASK_STEM = re.compile(r"(_mask(_\d+)?$)|(^mask_\d+-[lrs]$)", re.IGNORECASE)
# outside this the model has seen nothing alike (the datasets' images are ~200-1500 px a side)
MIN_SIDE, MAX_SIDE, MAX_ASPECT, MIN_STD = 32, 4096, 4.0, 1.0
# against the checkpoint's normaliser (the training pixels' mean and SD, at model resolution):
# a mean this many SDs away, or a contrast below this share of the SD, is unlike the training set
MAX_MEAN_Z, MIN_CONTRAST = 2.0, 0.2

Skipped = list[tuple[str, str]]  # (file, reason)


def _file_reason(p: Path, st: os.stat_result) -> str | None:
    """Why a file found (or given) cannot be predicted, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"  # a FIFO would block the reader forever
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
            # DICOM exports are often named IM0001 or by UID (1.2.840...): known by content
            if stat.S_ISREG(st.st_mode) and is_dicom(p):
                files.append(p)
            else:
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


def image_flags(img: np.ndarray, normalizer: Normalizer | None = None,
                image_size: int | None = None) -> str:
    """Why an image is far outside the training range ("" if it is not). With the checkpoint's
    ``normalizer`` and ``image_size``, also its intensity as the model sees it (padded, resized)
    against the training images' and how much it is upsampled."""
    h, w = img.shape
    flags = []
    if min(h, w) < MIN_SIDE:
        flags.append(f"tiny ({w}x{h} px)")
    if max(h, w) > MAX_SIDE:
        flags.append(f"very large ({w}x{h} px)")
    if max(h, w) / max(1, min(h, w)) > MAX_ASPECT:
        flags.append(f"extreme aspect ratio ({w}x{h} px)")
    uniform = float(img.std()) < MIN_STD
    if uniform:
        flags.append(f"nearly uniform intensity (std {img.std():.2f} grey levels)")
    if image_size is not None and 2 * max(h, w) < image_size and min(h, w) >= MIN_SIDE:
        flags.append(f"small for this model ({w}x{h} px upsampled to {image_size} px)")
    if normalizer is not None and image_size is not None:
        x = square_resize(img, image_size) / 255.0
        mean, sd = normalizer.mean, normalizer.std
        if abs(x.mean() - mean) > MAX_MEAN_Z * sd:
            flags.append(f"mean intensity {x.mean():.2f} far from the training images' "
                         f"{mean:.2f} (SD {sd:.2f})")
        if not uniform and x.std() < MIN_CONTRAST * sd:
            flags.append(f"low contrast (SD {x.std():.3f} vs {sd:.2f} in training)")
    return "; ".join(flags)


def describe_model(path: str | Path, state: dict) -> str:
    """One line: which model, which recipe, which threshold."""
    recipe = state.get("recipe")
    what = (recipe["summary"] if recipe else
            f"{state.get('profile', '?')} {state.get('dataset', '?')}, recipe not recorded")
    cal = (f", calibrated (temperature {float(state['temperature']):.2f})"
           if "temperature" in state else "")
    return f"model: {path} ({what}); threshold {float(state['threshold']):.3f}{cal}"


def predict_paths(checkpoint: str | Path, inputs: list[str | Path],
                  heatmaps: str | Path | None = None, batch_size: int = 32
                  ) -> tuple[pd.DataFrame, Skipped]:
    """Returns (predictions, skipped) where skipped lists (file, reason) for every input file
    that was not predicted. Raises ``ModelFileError`` for a file that is not a usable model."""
    model, state = load_deployable(checkpoint)
    described = describe_model(checkpoint, state)
    log.info("%s", described)
    size, threshold = int(state["image_size"]), float(state["threshold"])
    normalizer = Normalizer(**state["normalizer"])
    from ..config import RunConfig, _build
    run = _build(RunConfig, state["run"], "run")
    model = to_model_memory_format(model, run)  # as in training, so probabilities match the run's
    files, skipped, ignored = collect_images(inputs)
    if ignored:
        log.info("%d non-image file(s) in the folders ignored", ignored)
    paths, arrays, flags, views = [], [], [], []
    for p in files:
        try:
            img, notes = read_any(p)
            flag = "; ".join(filter(None, [image_flags(img, normalizer, size), *notes]))
            array = square_resize(img, size)
            # kept at the figure's size, not the original's: a folder of large scans must fit
            view = square_resize(img, panel_side(size)) if heatmaps is not None else None
        except (ImageReadError, OSError) as err:
            skipped.append((str(p), getattr(err, "reason", None) or str(err)))
            continue
        except Exception as err:  # noqa: BLE001 -- whatever one odd file raises, the run goes on
            skipped.append((str(p), f"cannot be read or converted ({type(err).__name__}: {err})"))
            continue
        flags.append(flag)
        arrays.append(array)
        if view is not None:
            views.append(view)
        paths.append(p)
    for p, reason in skipped:
        log.warning("skipped %s: %s", p, reason)
    columns = ["path", "prob_malignant", "prediction", "threshold", "flag"]
    if not arrays:
        return pd.DataFrame(columns=columns), skipped
    x = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
    prob = predict_proba(model, x, normalizer, run, batch_size)
    if "temperature" in state:  # a calibrated model (train --dataset all): its threshold is too
        from ..core.calibration import scale
        prob = scale(prob, float(state["temperature"]))
    df = pd.DataFrame({"path": [str(p) for p in paths], "prob_malignant": prob,
                       "prediction": np.where(prob >= threshold, "malignant", "benign"),
                       "threshold": threshold, "flag": flags})
    if heatmaps is not None:
        df["heatmap"] = write_gallery(heatmaps, model, x, normalizer, views, df, skipped,
                                      described)
    return df, skipped
