"""Synthetic breast-ultrasound phantoms written in all four original dataset layouts.

The smoke profile and the end-to-end tests need data that (a) goes through exactly the same
adapters as the real downloads and (b) has a learnable benign/malignant signal, without
shipping any real image. Each phantom is a simple B-mode simulation:

- tissue: skin line, subcutaneous fat, a textured glandular layer and the chest wall, as a
  smooth echogenicity map;
- lesion: hypoechoic. Benign = a smooth, wider-than-tall ellipse with posterior acoustic
  enhancement; malignant = an irregular, taller outline with spicules and posterior shadowing
  (the BI-RADS shape cues). Normal = no lesion. The mask is exactly the region made hypoechoic;
- speckle: fully developed, i.e. the Rayleigh-distributed magnitude of a spatially correlated
  complex Gaussian field, multiplied onto the echogenicity; depth attenuation; log compression.

Everything is deterministic for a seed (one generator per image), including the xlsx bytes.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import openpyxl
from PIL import Image
from scipy.ndimage import gaussian_filter

_LABELS = ("benign", "malignant", "normal")
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip entry times in the xlsx, for byte-identical output


@dataclass(frozen=True)
class Lesion:
    """Lesion geometry in image fractions, so that several views can share one lesion."""
    kind: str                # benign | malignant
    cy: float                # centre, fractions of height / width
    cx: float
    ry: float                # semi-axes, fractions of the shorter image side
    rx: float
    rot: float               # radians
    harmonics: tuple[tuple[int, float, float], ...]  # (order, amplitude, phase) of the outline
    spicules: tuple[tuple[float, float], ...]        # (angle, relative length)


def _random_lesion(rng: np.random.Generator, kind: str) -> Lesion:
    if kind == "benign":
        ry = rng.uniform(0.08, 0.13)
        rx = ry * rng.uniform(1.3, 1.8)          # wider than tall ("parallel" orientation)
        harmonics = tuple((int(k), rng.uniform(0.0, 0.03), rng.uniform(0, 2 * np.pi))
                          for k in (2, 3))
        spicules: tuple = ()
    else:
        ry = rng.uniform(0.10, 0.15)
        rx = ry * rng.uniform(0.8, 1.1)          # taller-than-wide-ish, irregular
        harmonics = tuple((int(k), rng.uniform(0.06, 0.14), rng.uniform(0, 2 * np.pi))
                          for k in rng.choice(np.arange(3, 12), size=4, replace=False))
        n = int(rng.integers(6, 11))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        spicules = tuple((float(a), float(rng.uniform(0.5, 1.0))) for a in angles)
    return Lesion(kind, cy=rng.uniform(0.40, 0.55), cx=rng.uniform(0.3, 0.7), ry=ry, rx=rx,
                  rot=rng.uniform(-0.3, 0.3), harmonics=harmonics, spicules=spicules)


def _lesion_mask(lesion: Lesion, h: int, w: int) -> np.ndarray:
    s = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - lesion.cy * h, xx - lesion.cx * w
    c, si = np.cos(lesion.rot), np.sin(lesion.rot)
    u, v = c * dx + si * dy, -si * dx + c * dy       # lesion-aligned coordinates
    theta = np.arctan2(v, u)
    # radius of the ellipse in direction theta, then modulated by the outline harmonics
    a, b = lesion.rx * s, lesion.ry * s
    r = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    mod = np.ones_like(theta)
    for k, amp, phase in lesion.harmonics:
        mod += amp * np.sin(k * theta + phase)
    for angle, length in lesion.spicules:
        d = np.angle(np.exp(1j * (theta - angle)))   # wrapped angular distance
        mod += length * np.exp(-(d / 0.07) ** 2)     # narrow radial spike
    return np.hypot(u, v) <= r * mod


def _tissue(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    depth = np.linspace(0, 1, h)[:, None]
    fat_end = rng.uniform(0.15, 0.25)
    gland_end = rng.uniform(0.75, 0.85)
    echo = np.where(depth < fat_end, 0.45, np.where(depth < gland_end, 0.8, 0.35)) * np.ones((h, w))
    echo[: max(1, h // 40)] = 1.4                              # skin line
    texture = gaussian_filter(rng.standard_normal((h, w)), sigma=(h / 40, w / 15))
    texture /= texture.std() + 1e-9
    return np.clip(echo * (1 + 0.25 * texture), 0.05, None)


def render(rng: np.random.Generator, h: int, w: int,
           lesions: list[Lesion]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One B-mode phantom ``uint8 (h, w)`` and the exact mask of each lesion."""
    echo = _tissue(rng, h, w)
    masks = []
    for lesion in lesions:
        m = _lesion_mask(lesion, h, w)
        masks.append(m)
        cols = m.any(axis=0)
        if m.any():
            bottom = np.nonzero(m.any(axis=1))[0].max()
            below = np.zeros((h, w))
            below[bottom + 1:, :] = cols[None, :]
            below = gaussian_filter(below, sigma=max(1.0, w / 60))
            # benign: posterior enhancement; malignant: posterior shadowing
            gain = 0.5 if lesion.kind == "benign" else -0.6
            echo = echo * (1 + gain * below)
        inside = 0.12 if lesion.kind == "benign" else 0.25      # cysts/fibroadenomas darker
        echo = np.where(m, echo * inside, echo)
    field = rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))
    sig = (0.6, 1.2)  # speckle grains are longer laterally than axially
    field = gaussian_filter(field.real, sig) + 1j * gaussian_filter(field.imag, sig)
    speckle = np.abs(field) / np.sqrt(np.mean(np.abs(field) ** 2))
    attenuation = np.exp(-1.2 * np.linspace(0, 1, h))[:, None]
    amp = echo * speckle * attenuation
    img = np.log1p(8 * amp) / np.log1p(8 * np.quantile(amp, 0.995))   # log compression
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), masks


def _save(arr: np.ndarray, path: Path, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(path)


def _mask_img(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def _image(seed: int, key: tuple[int, ...], label: str, h: int, w: int,
           n_lesions: int = 1) -> tuple[np.ndarray, list[np.ndarray], list[Lesion]]:
    rng = np.random.default_rng([seed, *key])
    lesions = [] if label == "normal" else [_random_lesion(rng, label) for _ in range(n_lesions)]
    if n_lesions == 2 and lesions:  # keep two lesions apart: left and right half
        lesions = [replace(lesions[0], cx=0.27), replace(lesions[1], cx=0.73)]
    img, masks = render(rng, h, w, lesions)
    return img, masks, lesions


def _shape(size: int, rng: np.random.Generator, portrait: bool = False) -> tuple[int, int]:
    short = int(round(size * rng.uniform(0.7, 0.9)))
    return (size, short) if portrait else (short, size)


def _write_busi(out: Path, n: int, size: int, seed: int) -> None:
    base = out / "busi" / "Dataset_BUSI_with_GT"
    for li, label in enumerate(_LABELS):
        for i in range(1, n + 1):
            h, w = _shape(size, np.random.default_rng([seed, 0, li, i, 1]))
            # BUSI has a few images with two lesions (_mask_1): the first benign one here
            two = label == "benign" and i == 1
            img, masks, _ = _image(seed, (0, li, i), label, h, w, n_lesions=2 if two else 1)
            stem = f"{label} ({i})"
            _save(img, base / label / f"{stem}.png")
            if label == "normal":  # BUSI's normal masks are empty RGB images
                _save(np.zeros((h, w, 3), np.uint8), base / label / f"{stem}_mask.png")
            for k, m in enumerate(masks):
                suffix = "_mask.png" if k == 0 else f"_mask_{k}.png"
                _save(_mask_img(m), base / label / f"{stem}{suffix}", mode="1")


def _deterministic_xlsx(wb: openpyxl.Workbook, path: Path) -> None:
    """Save with fixed timestamps (openpyxl stamps 'now' into docProps and the zip entries)."""
    buf = io.BytesIO()
    wb.save(buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*",
                              rb"\g<1>2020-01-01T00:00:00Z", data)
            dst.writestr(zipfile.ZipInfo(item.filename, date_time=_FIXED_TIME), data,
                         compress_type=zipfile.ZIP_DEFLATED)


def _write_udiat(out: Path, n: int, size: int, seed: int) -> None:
    base = out / "udiat" / "BUS"
    labels = np.random.default_rng([seed, 1]).permutation(["benign"] * n + ["malignant"] * n)
    # file numbers are not contiguous in the real data (000001-000147, then 000295-000310)
    k = int(np.ceil(len(labels) * 0.75))
    ids = list(range(1, k + 1)) + list(range(295, 295 + len(labels) - k))
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Hoja1"
    ws.append(["Image", "Type", "Diagnosis", None, None, "Llegend"])
    legend = [("FA", "Fibroadenoma"), ("IDC", "Invasive Ductal Carcinoma"), ("CYST", "Cyst"),
              ("DCIS", "Ductal Carcinoma In Situ")]
    for j, (num, label) in enumerate(zip(ids, labels)):
        rng = np.random.default_rng([seed, 1, num])
        h, w = _shape(size, rng)
        img, masks, _ = _image(seed, (1, num), str(label), h, w)
        key = f"{num:06d}"
        _save(img, base / "original" / f"{key}.png")
        # most GT masks are bilevel, some 0/255 grayscale, as in the real data
        _save(_mask_img(masks[0]), base / "GT" / f"{key}.png", mode="1" if j % 4 else "L")
        diagnosis = rng.choice(["CYST", "FA"]) if label == "benign" else rng.choice(["IDC", "DCIS"])
        # a few ids stored as numbers, as spreadsheets do when a cell loses its text format
        row = [num if j % 5 == 0 else key, str(label).capitalize(), str(diagnosis), None, None]
        row += list(legend[j]) if j < len(legend) else []
        ws.append(row)
    _deterministic_xlsx(wb, base / "DatasetB.xlsx")


def _write_busbra(out: Path, n: int, size: int, seed: int) -> None:
    base = out / "busbra" / "BUSBRA"
    n_pairs = n // 3               # patients with two views (-l, -r) of one lesion
    cases = []                     # (label, views)
    for label in ("benign", "malignant"):
        cases += [(label, ("l", "r"))] * n_pairs + [(label, ("s",))] * (n - 2 * n_pairs)
    order = np.random.default_rng([seed, 2]).permutation(len(cases))
    cases = [cases[i] for i in order]
    data = ["ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX"]
    fold_rows = {5: [], 10: []}
    per_label = {"benign": 0, "malignant": 0}
    for case, (label, views) in enumerate(cases, start=1):
        rng = np.random.default_rng([seed, 2, case])
        lesion = _random_lesion(rng, label)
        histology = (rng.choice(["fibroadenoma", "cyst"]) if label == "benign"
                     else "invasive ductal carcinoma")
        birads = int(rng.integers(2, 4) if label == "benign" else rng.integers(4, 6))
        folds = {k: per_label[label] % k + 1 for k in fold_rows}  # patient-wise, stratified
        per_label[label] += 1
        for vi, view in enumerate(views):
            vrng = np.random.default_rng([seed, 2, case, vi])
            h, w = _shape(size, vrng, portrait=True)
            # the two panels of a dual display show the same lesion slightly shifted
            shown = replace(lesion, cx=lesion.cx + vrng.uniform(-0.05, 0.05))
            img, (mask,) = render(vrng, h, w, [shown])
            key = f"bus_{case:04d}-{view}"
            _save(img, base / "Images" / f"{key}.png")
            _save(_mask_img(mask), base / "Masks" / f"mask_{case:04d}-{view}.png", mode="1")
            ys, xs = np.nonzero(mask)
            bbox = f"[{xs.min()},{ys.min()},{xs.max() - xs.min() + 1},{ys.max() - ys.min() + 1}]"
            side = {"l": "left", "r": "right", "s": "single"}[view]
            data.append(f'{key},{case},{histology},{label},{birads},GE Logiq 7 @10-14MHz,'
                        f'{w},{h},{side},"{bbox}"')
            for k, rows in fold_rows.items():
                valid = ",".join("NaN" if j == folds[k] else "1" for j in range(1, k + 1))
                rows.append(f"{key},{label},{folds[k]},{valid}")
    (base / "bus_data.csv").write_text("\n".join(data) + "\n")
    for k, rows in fold_rows.items():
        header = "ID,Pathology,kFold," + ",".join(f"valid_{j}" for j in range(1, k + 1))
        (base / f"{k}-fold-cv.csv").write_text("\n".join([header, *rows]) + "\n")


def _write_busuclm(out: Path, n: int, size: int, seed: int) -> None:
    base = out / "busuclm" / "BUS-UCLM"
    rng = np.random.default_rng([seed, 3])
    labels = list(rng.permutation(["benign"] * n + ["malignant"] * n + ["normal"] * n))
    n_patients = max(2, min(38, len(labels) // 6))
    codes: list[str] = []
    while len(codes) < n_patients:
        code = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 4))
        if code not in codes:
            codes.append(code)
    colour = {"benign": (0, 255, 0), "malignant": (255, 0, 0), "normal": (0, 0, 0)}
    lines = ["Image;Resolution;Label;Doppler;Marks;Combined"]
    seen: dict[str, int] = {}
    for j, label in enumerate(labels):
        code = codes[j * n_patients // len(labels)]          # contiguous blocks per patient
        seen[code] = seen.get(code, -1) + 1
        name = f"{code}_{seen[code]:03d}.png"
        irng = np.random.default_rng([seed, 3, j])
        h, w = _shape(size, irng)
        img, masks, _ = _image(seed, (3, j), str(label), h, w)
        _save(img, base / "images" / name)
        rgb = np.zeros((h, w, 3), np.uint8)
        for m in masks:
            rgb[m] = colour[str(label)]
        _save(rgb, base / "masks" / name)
        doppler = "Y" if j == 1 else ("Yes" if j % 7 == 3 else "No")   # the real file has one "Y"
        marks = "Yes" if j % 3 == 0 else "No"
        lines.append(f"{name};856x606;{str(label).capitalize()};{doppler};{marks};No")
    base.mkdir(parents=True, exist_ok=True)
    # ';'-separated with a UTF-8 byte-order mark, as the original
    (base / "INFO.csv").write_bytes(("\n".join(lines) + "\n").encode("utf-8-sig"))


def write_phantom_root(out: str | Path, n_per_class: int = 8, size: int = 96,
                       seed: int = 0) -> Path:
    """Write a complete fake data root under ``out`` and return it.

    ``n_per_class`` images per label and dataset (BUSI and BUS-UCLM: benign, malignant, normal;
    UDIAT and BUS-BRA: benign, malignant), longer side ``size`` pixels. ``out`` must be empty or
    absent, so that a phantom never mixes with real data.
    """
    if n_per_class < 3:
        raise ValueError(f"n_per_class must be >= 3 (BUS-BRA needs paired and single views), "
                         f"got {n_per_class}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; a phantom root needs an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for write in (_write_busi, _write_udiat, _write_busbra, _write_busuclm):
        write(out, n_per_class, size, seed)
    (out / "PHANTOM.txt").write_text(
        f"Synthetic breast-ultrasound phantoms (bus_paper.data.phantom, seed={seed}, "
        f"n_per_class={n_per_class}, size={size}). Not real data.\n")
    return out


def cached_phantom_root(n_per_class: int = 8, size: int = 96, seed: int = 0) -> Path:
    """A phantom root under ``cache_dir()``, written once and shared by every later caller.

    Written into a private temporary folder and renamed into place, so concurrent processes
    (DDP ranks, parallel tests) never see half a root.
    """
    import os
    import shutil

    from ..paths import cache_dir
    out = cache_dir() / "phantom" / f"n{n_per_class}_s{size}_seed{seed}"
    if out.exists():
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_phantom_root(tmp, n_per_class=n_per_class, size=size, seed=seed)
    try:
        os.rename(tmp, out)
    except OSError:  # another process renamed its copy first: identical content, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out
