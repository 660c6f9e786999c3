"""Any image a clinician may give `bus-paper predict`, as ``uint8 (H, W)`` gray, or a clear reason.

Ordinary formats (PNG, JPEG, BMP, TIFF, GIF, PGM, WebP) go through Pillow with the rules of
:mod:`bus_paper.data.imageio`, except one: 16-bit data is scaled from the bit depth it actually
uses (``[0, 2**b - 1]``, ``b`` >= 8), so a 10- or 12-bit scan stored in 16 bits is not rendered
nearly black; a file that uses all 16 bits is scaled as in training.

DICOM (``pydicom``): the modality LUT (rescale slope/intercept) is applied, then the first VOI
window (centre/width) if the file has one, a VOI LUT if it has that instead, else min-max of the
pixel values; MONOCHROME1 is inverted (its 0 is white). Colour (RGB, YBR, palette) is converted to
luminance and flagged.

Files with several frames (cine loops, multi-page TIFFs, animations) are refused, not predicted
from their first frame: the models were trained on single still frames chosen by a sonographer,
and a loop's first frame need not show the lesion. Export the frame to assess as an image.

Every failure raises :class:`ImageReadError` whose ``reason`` says what to do; a compressed DICOM
whose decoder plugin is not installed names the plugins that would decode it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .imageio import ImageReadError, _scale, to_gray8

DICOM_SUFFIXES = {".dcm", ".dicom"}
MULTI_FRAME = ("{n} frames (a cine loop?): export the frame to assess as a single image; the "
               "model was trained on single still frames")
# a pixel whose channels differ by more than this is coloured (Doppler, annotations), not gray
# stored as RGB (as BUSI's PNGs are); JPEG chroma noise on gray stays well below it
COLOUR_SPREAD, COLOUR_SHARE = 32, 0.01


def is_dicom(path: str | os.PathLike) -> bool:
    """A DICOM Part 10 file ('DICM' after the 128-byte preamble), whatever its name."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_any(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """(``uint8 (H, W)`` gray image, flags: what the conversion changed that a reader must know)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES or is_dicom(p):
        return _read_dicom(p)
    return _read_pillow(p)


def _colour_flags(rgb: np.ndarray) -> list[str]:
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    if (spread > COLOUR_SPREAD).mean() > COLOUR_SHARE:
        return ["colour content (Doppler or annotations?) converted to grayscale"]
    return []


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as Pillow's convert('L') (used for the training images)."""
    y = rgb[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]
    return np.rint(y).clip(0, 255).astype(np.uint8)


def _bit_range(a: np.ndarray) -> float:
    """Top of the range of non-negative integer data: 2**b - 1 for the bits it uses (b >= 8)."""
    return float(2 ** max(8, int(a.max()).bit_length()) - 1) if a.size else 255.0


def _read_pillow(p: Path) -> tuple[np.ndarray, list[str]]:
    try:
        with Image.open(p) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise ImageReadError(p, MULTI_FRAME.format(n=frames))
            im.load()
    except ImageReadError:
        raise
    except Exception as e:  # Pillow's zoo of exception types for broken files: all "unreadable"
        raise ImageReadError(p, f"unreadable image ({type(e).__name__}: {e})") from e
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if a.size and a.min() >= 0 and a.max() <= 65535:
            return _scale(a, 0.0, _bit_range(a)), []
    if im.mode in ("RGB", "RGBA", "P", "PA", "LA", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(im.convert("RGB"))
        return to_gray8(im), _colour_flags(rgb)
    return to_gray8(im), []


def _read_dicom(p: Path) -> tuple[np.ndarray, list[str]]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.multival import MultiValue
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
    try:
        try:  # pixel data larger than 1 MB is read only when decoded (not at all if refused)
            ds = pydicom.dcmread(p, defer_size="1 MB")
        except InvalidDicomError:  # some exports drop the preamble: read it as a bare data set
            ds = pydicom.dcmread(p, defer_size="1 MB", force=True)
    except Exception as e:
        raise ImageReadError(p, f"unreadable DICOM ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        raise ImageReadError(p, "not a DICOM image (no pixel data: a report, a DICOMDIR index or "
                             "not DICOM at all)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(p, f"multi-frame DICOM: {MULTI_FRAME.format(n=frames)}")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            plugins = "; ".join(decoder.missing_dependencies) if decoder else "none known"
            raise ImageReadError(p, f"compressed DICOM ({syntax.name}) that cannot be decoded "
                                 f"here: install a decoder ({plugins}) or export it uncompressed "
                                 f"or as PNG")
    try:
        a = ds.pixel_array  # YBR is converted to RGB by pydicom
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric == "PALETTE COLOR":
            a = apply_color_lut(a, ds)
    except Exception as e:
        why = f"{type(e).__name__}: {e}"
        raise ImageReadError(p, f"DICOM pixel data cannot be decoded ({why})") from e
    if a.ndim == 3 and a.shape[2] in (3, 4):
        rgb = a if a.dtype == np.uint8 else _scale(a, float(a.min()), float(a.max()))
        return _luminance(rgb), [f"colour DICOM ({photometric}) converted to grayscale"]
    if a.ndim != 2:
        raise ImageReadError(p, f"DICOM pixel array of shape {a.shape}: not a single 2-D image")
    v = np.asarray(apply_modality_lut(a, ds), dtype=np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:  # the display window the scanner chose
        c, w = (float(x[0] if isinstance(x, MultiValue) else x)
                for x in (ds.WindowCenter, ds.WindowWidth))
        g = _scale(v, c - w / 2, c + w / 2) if w > 0 else _scale(v, float(v.min()), float(v.max()))
    else:
        if "VOILUTSequence" in ds:
            v = np.asarray(apply_voi_lut(v, ds), dtype=np.float64)
        g = _scale(v, float(v.min()), float(v.max()))
    return (255 - g if photometric == "MONOCHROME1" else g), []
