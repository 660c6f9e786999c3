"""Robust image and mask reading: every file becomes an 8-bit grayscale array or a clear error.

Public datasets ship PNGs in many modes (bilevel masks, RGB screenshots, RGBA, palette, 16-bit)
and now and then a truncated or mislabelled file. Everything downstream wants ``uint8 (H, W)``,
so all conversions happen here, once, with one rule per mode:

- ``L``: as is. ``1``, ``P``, ``LA``, ``RGB``, ``RGBA`` and other colour modes: ``convert('L')``
  (luminance; the alpha channel is ignored).
- 16-bit (``I;16*``): mapped linearly from [0, 65535] onto [0, 255]. ``convert('L')`` would clip
  everything above 255 to white instead.
- 32-bit ``I`` holding 8-bit values (max <= 255): as is; holding 16-bit values: as 16-bit;
  anything else in ``I`` and float ``F``: min-max scaled, since such images have no fixed range.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from ..core.atomic import atomic_write_text
from ..paths import cache_dir

ColourLabel = Literal["benign", "malignant", "normal", "mixed"]


class ImageReadError(OSError):
    """A file that cannot be decoded as an image; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: unreadable image ({reason}) [{self.path}]")


def _open(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode; any decoder failure becomes an :class:`ImageReadError`."""
    try:
        with Image.open(path) as im:
            im.load()
            return im
    # Pillow raises a zoo of types for broken files (OSError, SyntaxError, ValueError, EOFError,
    # struct.error, zlib.error, DecompressionBombError): all of them mean "unreadable".
    except Exception as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from e


def probe_image(path: str | os.PathLike) -> tuple[int, int, str]:
    """(width, height, PIL mode) from the header, after a cheap integrity check.

    ``verify()`` walks the file's chunks and checksums without decoding pixels, so it catches
    truncated and corrupt PNGs at a fraction of the cost of a full decode.
    """
    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
            im.verify()
    except Exception as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from e
    return size[0], size[1], mode


def decode_probe(path: str | os.PathLike) -> tuple[int, int, str]:
    """(width, height, PIL mode) after a full decode.

    Unlike :func:`probe_image` this also catches files whose header and chunk checksums are fine
    but whose pixel data is not (e.g. a cut zlib stream inside an intact IDAT chunk).
    """
    im = _open(path)
    return im.width, im.height, im.mode


class DecodeCache:
    """:func:`decode_probe` verdicts kept in ``cache_dir()``, keyed by path, size and mtime.

    Fully decoding the ~7,000 PNGs of the four datasets takes ~6 s (the header check ~0.8 s) and
    every training run builds the manifest, so each file is decoded once per edit and afterwards
    only stat'ed. Only successes are stored: a broken file is decoded, and reported, every time.
    """

    NAME = "decoded_images.json"   # {absolute path: [size, mtime_ns, width, height, mode]}

    def __init__(self) -> None:
        self.path = cache_dir() / self.NAME
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):  # no cache yet, or a damaged one: start afresh
            self.entries = {}
        self.dirty = False

    def probe(self, path: str | os.PathLike) -> tuple[int, int, str]:
        """As :func:`decode_probe`, from the cache when the file is unchanged."""
        key = os.path.abspath(path)
        try:
            st = os.stat(key)
        except OSError:
            return decode_probe(path)  # raises ImageReadError naming the file
        hit = self.entries.get(key)
        if hit is not None and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return hit[2], hit[3], hit[4]
        w, h, mode = decode_probe(path)
        self.entries[key] = [st.st_size, st.st_mtime_ns, w, h, mode]
        self.dirty = True
        return w, h, mode

    def save(self) -> None:
        """Write the cache atomically (dropping deleted files); a failure only costs speed."""
        if not self.dirty:
            return
        self.entries = {k: v for k, v in self.entries.items() if os.path.exists(k)}
        try:
            atomic_write_text(self.path, json.dumps(self.entries))  # readers see old or new
        except OSError:
            pass
        self.dirty = False


def to_gray8(im: Image.Image) -> np.ndarray:
    """A decoded PIL image as ``uint8 (H, W)`` following the rules in the module docstring."""
    if im.mode == "L":
        return np.asarray(im, dtype=np.uint8).copy()
    if im.mode.startswith("I;16"):
        return _scale(np.asarray(im).astype(np.float64), 0.0, 65535.0)
    if im.mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode == "I" and a.size and a.min() >= 0 and a.max() <= 255:
            return a.astype(np.uint8)
        if im.mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535:
            return _scale(a, 0.0, 65535.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
        return _scale(a, lo, hi)
    return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def _scale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not hi > lo:  # constant (or NaN-bounded) data carries no contrast: black, not 0/0
        return np.zeros(a.shape, dtype=np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as ``uint8 (H, W)`` gray; :class:`ImageReadError` if unreadable."""
    return to_gray8(_open(path))


def _mask_array(path: str | os.PathLike) -> np.ndarray:
    im = _open(path)
    # Integer modes: any non-zero label is foreground. Going through to_gray8 would rescale a
    # 16-bit mask holding 1s to 0 and lose it; convert('L') handles 1/L/P/RGB/RGBA correctly.
    if im.mode.startswith("I") or im.mode == "F":
        return np.asarray(im) > 0
    return np.asarray(im.convert("L")) > 0


def read_mask(paths: Sequence[str | os.PathLike],
              shape: tuple[int, int] | None = None) -> np.ndarray:
    """Union of the masks in ``paths`` as ``bool (H, W)``.

    Masks of another size than ``shape`` are resized with nearest neighbour (which keeps them
    binary); whether that is acceptable is the caller's decision. With no paths, an all-False
    mask of ``shape``.
    """
    if shape is not None and (len(shape) != 2 or min(shape) <= 0):
        raise ValueError(f"shape must be (height, width) with positive sides, got {shape}")
    if not paths and shape is None:
        raise ValueError("read_mask needs at least one path or a shape")
    out = np.zeros(shape, dtype=bool) if shape is not None else None
    for p in paths:
        m = _mask_array(p)
        if out is None:
            out = m.copy()
            continue
        if m.shape != out.shape:
            m = np.asarray(Image.fromarray(m).resize((out.shape[1], out.shape[0]), Image.NEAREST))
        out |= m
    assert out is not None
    return out


def mask_colour_label(path: str | os.PathLike) -> ColourLabel | None:
    """The label a BUS-UCLM-style colour-coded mask encodes: green benign, red malignant.

    All black is ``"normal"``; red and green together ``"mixed"``. ``None`` where the colour says
    nothing: a grayscale mask, or foreground of another colour.
    """
    im = _open(path)
    if im.mode not in ("RGB", "RGBA", "P"):
        return None
    a = np.asarray(im.convert("RGB"))
    r, g = a[..., 0] > 127, a[..., 1] > 127
    red, green = (r & ~g).any(), (g & ~r).any()
    if red and green:
        return "mixed"
    if red:
        return "malignant"
    if green:
        return "benign"
    return "normal" if not a.any() else None
