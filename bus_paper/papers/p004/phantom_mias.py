"""Synthetic mini-MIAS phantoms in the original layout (``mias/all-mias/mdbNNN.png`` + ``Info.txt``).

For the smoke profile and the tests only: no real mammogram is shipped. Each film is a square,
black frame with one breast (a half-disc of textured fibroglandular tissue against the left or
right edge, as right and left films face opposite ways), a bright burnt-in label, and, for
abnormal films, one lesion listed in ``Info.txt`` with its centre and radius in 1024-px units
(origin bottom-left, as the real file): benign = a smooth round mass, malignant = a brighter mass
with spicules plus a few calcification specks. Pairs of films share a woman, as in MIAS
(odd = right, even = left). A film without a location, a film with two lesions of different
severity and lines with trailing spaces are included, as in the real file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .mias import ORIGINAL_SIDE

_HEADER = """              MAMMOGRAPHIC IMAGE ANALYSIS SOCIETY (PHANTOM)
Synthetic films written by bus_paper.papers.p004.phantom_mias. Not real data.

1st column: MIAS database reference number.
2nd column: Character of background tissue: F, G, D
3rd column: Class of abnormality present: CALC CIRC SPIC MISC ARCH ASYM NORM
4th column: Severity of abnormality; B - Benign, M - Malignant
5th,6th columns: x,y image-coordinates of centre of abnormality.
7th column: Approximate radius (in pixels) of a circle enclosing the abnormality.
=================================================================

"""


def _film(rng: np.random.Generator, side: int, right: bool, lesion: tuple | None) -> np.ndarray:
    """One film (uint8 [side, side]); ``lesion`` = (kind, row, col, radius) in film pixels."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    cx = side - 1 if right else 0.0           # breast against one edge
    ry, rx = side * rng.uniform(0.38, 0.45), side * rng.uniform(0.55, 0.7)
    inside = ((yy - side / 2) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    texture = gaussian_filter(rng.standard_normal((side, side)), side / 40)
    texture /= texture.std() + 1e-9
    tissue = 0.45 + 0.12 * texture
    img = np.where(inside, tissue, 0.0)
    if lesion is not None:
        kind, r0, c0, rad = lesion
        d = np.hypot(yy - r0, xx - c0)
        if kind == "benign":
            img = img + 0.25 * (d <= rad) * inside
        else:
            theta = np.arctan2(yy - r0, xx - c0)
            spiky = rad * (1 + 0.35 * np.abs(np.sin(4 * theta + rng.uniform(0, np.pi))) ** 4)
            img = img + 0.35 * (d <= spiky) * inside
            for _ in range(6):          # calcification specks
                a, b = rng.normal(r0, rad / 2), rng.normal(c0, rad / 2)
                img = img + 0.5 * (np.hypot(yy - a, xx - b) <= max(1.0, side / 256)) * inside
    img = gaussian_filter(img, 0.8) + 0.02 * rng.standard_normal((side, side))
    lab_r, lab_c = int(side * 0.05), (int(side * 0.05) if right else int(side * 0.8))
    img[lab_r:lab_r + side // 25, lab_c:lab_c + side // 8] = 1.0      # burnt-in label
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_mias_phantom(root: str | Path, n_women: int = 24, side: int = 256, seed: int = 0) -> Path:
    """Write ``<root>/mias/all-mias/`` with ``2 * n_women`` films of ``side`` px; returns root.

    Women cycle through: both films normal, one benign film, one malignant film. The first
    abnormal film has no location (like mdb059), one malignant film also lists a benign lesion
    (like mdb144).
    """
    if n_women < 6:
        raise ValueError(f"n_women must be >= 6 (every kind of woman twice), got {n_women}")
    base = Path(root) / "mias" / "all-mias"
    if base.exists():
        raise FileExistsError(f"{base} exists; a phantom never mixes with other files")
    base.mkdir(parents=True)
    scale = side / ORIGINAL_SIDE
    lines: list[str] = []
    mixed_done = no_location_done = False
    for w in range(1, n_women + 1):
        kind = ("normal", "benign", "malignant")[(w - 1) % 3]
        abnormal_side = w % 2                     # which film of the pair carries the lesion
        for k in (0, 1):
            n = 2 * w - 1 + k                     # odd: right, even: left
            ref = f"mdb{n:03d}"
            rng = np.random.default_rng([seed, n])
            tissue = "FGD"[n % 3]
            lesion = None
            if kind != "normal" and k == abnormal_side:
                right = n % 2 == 1
                rad = rng.uniform(30, 70) * scale      # pixels of this film
                col = (side - 1 - rng.uniform(0.2, 0.45) * side) if right else rng.uniform(0.2, 0.45) * side
                row = side / 2 + rng.uniform(-0.2, 0.2) * side
                lesion = (kind, row, col, rad)
                sev = "B" if kind == "benign" else "M"
                cls = "CIRC" if kind == "benign" else "SPIC"
                x, y, r = col / scale, ORIGINAL_SIDE - row / scale, rad / scale
                if not no_location_done:
                    lines.append(f"{ref} {tissue} {cls} {sev}")
                    no_location_done = True
                else:
                    lines.append(f"{ref} {tissue} {cls} {sev} {x:.0f} {y:.0f} {r:.0f}")
                if kind == "malignant" and not mixed_done:
                    lines.append(f"{ref} {tissue} CIRC B {x + 40:.0f} {y + 40:.0f} 20 ")
                    mixed_done = True
            else:
                lines.append(f"{ref} {tissue} NORM " if n % 4 == 0 else f"{ref} {tissue} NORM")
            Image.fromarray(_film(rng, side, n % 2 == 1, lesion)).save(base / f"{ref}.png")
    (base / "Info.txt").write_text(_HEADER + "\n".join(lines) + "\n")
    (base / "Licence.txt").write_text("Synthetic phantom: no licence restrictions.\n")
    return Path(root)


def cached_mias_phantom(n_women: int = 48, side: int = 256, seed: int = 0) -> Path:
    """A data root holding only a MIAS phantom, under ``cache_dir()``, written once (atomically)
    and shared: a synthetic profile reads mini-MIAS from here when its data root has none, so the
    data root itself (and with it every chapter's data checksum) is never changed."""
    from ...paths import cache_dir
    out = cache_dir() / "phantom" / f"mias_n{n_women}_s{side}_seed{seed}"
    if out.exists():
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_mias_phantom(tmp, n_women, side, seed)
    try:
        os.rename(tmp, out)
    except OSError:      # another process was first: identical content, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def mias_root(root: str | Path, synthetic: bool) -> Path:
    """Where mini-MIAS is read: ``root`` when it holds it, else (synthetic profiles only) the
    cached phantom of :func:`cached_mias_phantom`; otherwise :class:`DatasetNotFound`."""
    from ...data.registry import DatasetNotFound, get_info
    root = Path(root)
    if (root / get_info("mias").layout).is_dir():
        return root
    if synthetic:
        return cached_mias_phantom()
    raise DatasetNotFound("mias", [root])
