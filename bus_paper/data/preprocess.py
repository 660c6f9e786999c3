"""Decode once, train many times: square, resized uint8 arrays cached on disk, plus z-scoring.

Every image is padded to a square (black, centred; the aspect ratio and so the lesion's shape are
kept) and resized to ``size`` (bilinear with antialiasing for images, nearest for masks, which
stay binary). :func:`load_images` caches the result per dataset and size as an ``.npz`` in
``cache_dir()/images``, keyed by the paths, their file sizes and mtimes and the size, so a
training run never decodes a PNG per epoch and an edited file is noticed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..core.atomic import atomic_path
from ..paths import cache_dir
from .imageio import read_image, read_mask

log = logging.getLogger(__name__)

_VERSION = 1      # bump when the preprocessing changes, so caches are rebuilt


@dataclass(frozen=True)
class ImageSet:
    """Images in the order of the manifest rows asked for."""
    paths: list[str]               # relative to the data root
    images: np.ndarray             # uint8 [N, S, S]
    masks: np.ndarray | None       # bool [N, S, S] (union of a row's masks), or None

    def __len__(self) -> int:
        return len(self.paths)


def pad_to_square(img: np.ndarray) -> np.ndarray:
    """Pad a [H, W] array with zeros (black / background) to [M, M], M = max(H, W), centred."""
    if img.ndim != 2:
        raise ValueError(f"pad_to_square expects a 2-D [H, W] array, got shape {img.shape}")
    h, w = img.shape
    side = max(h, w)
    out = np.zeros((side, side), dtype=img.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = img
    return out


def square_resize(img: np.ndarray, size: int, *, mask: bool = False) -> np.ndarray:
    """:func:`pad_to_square`, then resize to [size, size] (bilinear; nearest for a mask)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    sq = pad_to_square(img)
    if mask:
        im = Image.fromarray(sq.astype(np.uint8) * 255)
        return np.asarray(im.resize((size, size), Image.Resampling.NEAREST)) > 0
    if sq.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {sq.dtype}")
    # PIL's bilinear widens its kernel when shrinking, i.e. it averages like an area filter
    return np.asarray(Image.fromarray(sq).resize((size, size), Image.Resampling.BILINEAR))


def _stamps(root: Path, paths: list[str]) -> np.ndarray:
    """[N, 2] (file size, mtime in ns): an edited or replaced file gets another stamp."""
    out = np.empty((len(paths), 2), dtype=np.int64)
    for i, p in enumerate(paths):
        st = (root / p).stat()
        out[i] = st.st_size, st.st_mtime_ns
    return out


def _from_cache(prefix: str, paths: list[str], stamps: np.ndarray, with_masks: bool
                ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The rows for ``paths`` from any cache file of this dataset and size that holds all of
    them with unchanged stamps (so a split or a label subset reuses the whole dataset's file)."""
    for file in sorted((cache_dir() / "images").glob(f"{prefix}-*.npz")):
        try:
            with np.load(file) as z:
                if with_masks and "masks" not in z.files:
                    continue
                where = pd.Index(z["paths"]).get_indexer(paths)
                if (where < 0).any() or not np.array_equal(z["stamps"][where], stamps):
                    continue
                return z["images"][where], (z["masks"][where] if with_masks else None)
        except FileNotFoundError:
            continue  # deleted meanwhile by another process
        except (ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            # written atomically, so only a crash of the machine or a cut copy truncates one:
            # delete it, and the caller decodes the images again
            log.warning("bus-paper: image cache %s is corrupt or truncated (%s: %s); deleted, "
                        "rebuilding it", file, type(err).__name__, err)
            file.unlink(missing_ok=True)
    return None


def _decode(paths: list[str], mask_paths: list[str] | None, root: Path, size: int
            ) -> tuple[np.ndarray, np.ndarray | None]:
    images = np.zeros((len(paths), size, size), dtype=np.uint8)
    masks = np.zeros((len(paths), size, size), dtype=bool) if mask_paths is not None else None
    for i, path in enumerate(paths):
        img = read_image(root / path)
        images[i] = square_resize(img, size)
        if masks is not None:
            parts = [root / p for p in str(mask_paths[i]).split(";") if p]
            masks[i] = square_resize(read_mask(parts, img.shape), size, mask=True)
    return images, masks


def load_images(manifest_rows: pd.DataFrame, root: str | os.PathLike, size: int,
                with_masks: bool = False) -> ImageSet:
    """Padded, resized images (and masks) of ``manifest_rows``, decoded once and then cached.

    The cache holds one file per dataset, size and set of paths, and any request whose paths a
    file already holds is served from it: load a whole dataset once and later subsets (splits,
    label fractions) decode nothing.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    need = {"dataset", "path"} | ({"mask_paths"} if with_masks else set())
    if missing := need - set(manifest_rows.columns):
        raise ValueError(f"manifest rows lack column(s) {sorted(missing)}")
    if manifest_rows["path"].duplicated().any():
        raise ValueError("manifest rows repeat a path; pass each image once")
    root, rows = Path(root), manifest_rows
    images = np.zeros((len(rows), size, size), dtype=np.uint8)
    masks = np.zeros((len(rows), size, size), dtype=bool) if with_masks else None
    position = pd.Series(np.arange(len(rows)), index=rows["path"].to_numpy())
    for dataset, part in rows.groupby("dataset", sort=True):
        part = part.sort_values("path")
        paths = list(part["path"])
        stamps = _stamps(root, paths)
        prefix = f"{dataset}-{size}-v{_VERSION}"
        hit = _from_cache(prefix, paths, stamps, with_masks)
        if hit is None:
            hit = _decode(paths, list(part["mask_paths"]) if with_masks else None, root, size)
            key = hashlib.sha256(repr((paths, stamps.tolist(), with_masks)).encode()).hexdigest()
            file = cache_dir() / "images" / f"{prefix}-{key[:16]}.npz"
            # concurrent runs never read half a file; ".<name>.<random>.tmp" escapes the glob
            with atomic_path(file) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, images=hit[0], paths=np.array(paths), stamps=stamps,
                         **({"masks": hit[1]} if with_masks else {}))
        idx = position.loc[paths].to_numpy()
        images[idx] = hit[0]
        if masks is not None:
            masks[idx] = hit[1]
    return ImageSet(list(rows["path"]), images, masks)


def zscore_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of uint8 images on the [0, 1] scale.

    Call it on the *training* images only, so nothing about val/test leaks into the input
    scaling. Exact and memory-light: a 256-bin histogram instead of a float copy of the stack.
    """
    if images.dtype != np.uint8 or images.size == 0:
        raise ValueError(f"need a non-empty uint8 array, got {images.dtype} "
                         f"with {images.size} values")
    hist = np.zeros(256, dtype=np.int64)
    flat = images.reshape(-1)
    for start in range(0, flat.size, 1 << 22):       # bounded temporary memory
        hist += np.bincount(flat[start:start + (1 << 22)], minlength=256)
    values = np.arange(256) / 255.0
    mean = float(hist @ values / hist.sum())
    std = float(np.sqrt(hist @ (values - mean) ** 2 / hist.sum()))
    return mean, std


@dataclass(frozen=True)
class Normalizer:
    """``(x / 255 - mean) / std`` for uint8 input, ``(x - mean) / std`` for float input in [0, 1].

    Works on numpy arrays and torch tensors alike; travels in checkpoints via :meth:`to_dict`.
    """
    mean: float
    std: float

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise ValueError(f"std must be > 0, got {self.std} (a constant training set?)")

    @classmethod
    def fit(cls, images: np.ndarray) -> Normalizer:
        return cls(*zscore_stats(images))

    def __call__(self, x: Any) -> Any:
        if getattr(x, "dtype", None) is not None and str(x.dtype).endswith("uint8"):
            x = x / 255.0     # numpy -> float64, torch -> float32
        return (x - self.mean) / self.std

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Normalizer:
        return cls(float(d["mean"]), float(d["std"]))
